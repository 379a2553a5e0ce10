"""Fitted rule models saved under `--storage.path`, so a restarted exporter scores at once instead of
waiting for a full history load and refit.

One file per rule, `models/<rule>-<hash>.npz`: numpy's .npz (a zip of .npy arrays) read with
`allow_pickle=False`, so a file on a writable volume can never run code (sklearn forests, which only pickle
can save, are not kept: a restored IsolationForest rule judges by its band until its next fit). A JSON
header inside the file carries the format version, the rule's fingerprint (query, step, history and model
settings: change any and the saved model no longer applies), when it was fitted, and the series it knows.
Written atomically (see statefile); anything unreadable, torn, from another version or for other settings
is logged and ignored, and the rule refits as if no file were there.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from exporter.config import RuleConfig
from exporter.detectors import build_detector
from exporter.model import RuleModel
from exporter.statefile import write_atomic

log = logging.getLogger(__name__)

FORMAT = "prometheus-anomaly-exporter-model"
VERSION = 1
MAX_BYTES = 2 << 30  # larger files are not read (10,000 series with a weekly profile take ~170 MB)


def fingerprint(rule: RuleConfig) -> str:
    """What a fitted model depends on: a saved model is used only while these settings are unchanged."""
    basis = {
        "query": rule.query,
        "step": rule.step,
        "history": rule.history,
        "model": asdict(rule.model),
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()


class ModelStore:
    """Saves and restores RuleModels in `directory` (created on first save)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, rule: RuleConfig) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", rule.name)[:64]
        digest = hashlib.sha256(rule.name.encode()).hexdigest()[:12]  # distinct names never share a file
        return self.directory / f"{safe}-{digest}.npz"

    def save(self, rule: RuleConfig, model: RuleModel) -> Path:
        """Write `model` for `rule` atomically. Raises OSError, or NotImplementedError for a detector that
        cannot be saved."""
        if model.detector is None:
            raise ValueError("cannot save an unfitted model")
        scalars, arrays = model.detector.fitted_state()
        keys = sorted(model.detector.keys_.items(), key=lambda kv: kv[1])
        header = {
            "format": FORMAT,
            "version": VERSION,
            "rule": rule.name,
            "fingerprint": fingerprint(rule),
            "fitted_at": model.fitted_at,
            "scalars": scalars,
            "keys": [[list(pair) for pair in key] for key, _ in keys],
        }
        buf = io.BytesIO()
        blob = np.frombuffer(json.dumps(header, allow_nan=False).encode(), dtype=np.uint8)
        named: dict[str, Any] = {f"a_{k}": np.ascontiguousarray(v) for k, v in arrays.items()}
        np.savez(buf, header=blob, allow_pickle=False, **named)
        target = self.path(rule)
        write_atomic(target, buf.getvalue())
        return target

    def load(self, rule: RuleConfig) -> RuleModel | None:
        """The saved model for `rule` if there is one that fits its current settings; None otherwise
        (logged, except when there is simply no file)."""
        target = self.path(rule)
        try:
            size = target.stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("rule %s: ignoring saved model %s (%s); refitting", rule.name, target, exc)
            return None
        try:
            if size > MAX_BYTES:
                raise ValueError(f"{size} bytes is larger than the {MAX_BYTES}-byte limit")
            return self._read(rule, target)
        except _Stale as exc:
            log.info("rule %s: saved model %s does not apply (%s); refitting", rule.name, target, exc)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
            log.warning(
                "rule %s: ignoring saved model %s (unreadable: %s); refitting", rule.name, target, exc
            )
        return None

    def remove(self, rule: RuleConfig) -> None:
        self.path(rule).unlink(missing_ok=True)

    def _read(self, rule: RuleConfig, target: Path) -> RuleModel:
        with np.load(target, allow_pickle=False) as npz:
            header = json.loads(bytes(npz["header"]).decode())
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ValueError("not a saved model")
            if header.get("version") != VERSION:
                raise _Stale(f"format version {header.get('version')!r}, this exporter reads {VERSION}")
            if header.get("rule") != rule.name or header.get("fingerprint") != fingerprint(rule):
                raise _Stale("the rule's query, step, history or model settings changed since it was saved")
            arrays = {name[2:]: npz[name] for name in npz.files if name.startswith("a_")}
        keys = [tuple((str(n), str(v)) for n, v in key) for key in _list(header, "keys")]
        scalars = header.get("scalars")
        if not isinstance(scalars, dict) or not all(isinstance(v, int) for v in scalars.values()):
            raise ValueError("bad scalars")
        fitted_at = header.get("fitted_at")
        if not isinstance(fitted_at, int | float):
            raise ValueError("bad fitted_at")
        model = RuleModel(rule)
        model.detector = build_detector(rule.model).restore_state(keys, scalars, arrays)
        model.fitted_at = float(fitted_at)
        return model


class _Stale(Exception):
    """A well-formed saved model that does not apply any more."""


def _list(header: dict[str, Any], name: str) -> list[Any]:
    value = header.get(name)
    if not isinstance(value, list):
        raise ValueError(f"bad {name}")
    return value
