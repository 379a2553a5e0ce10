"""Small JSON state files, written atomically and read defensively.

A state file lives on a writable volume, so it is plain JSON (never pickle: unpickling runs code). It is
written to a temporary file in the same directory, fsynced, renamed over the old one and the directory
fsynced, so a crash at any moment leaves either the old or the new file, never a torn one. Reading
checks a format name and version; anything unreadable, torn or from another version is reported and
ignored (the caller starts afresh) — never a crash.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = "prometheus-anomaly-exporter-state"
MAX_BYTES = 64 << 20  # a state file larger than this is not read (it cannot be ours)


def write_state(path: str | os.PathLike[str], kind: str, version: int, data: dict[str, Any]) -> None:
    """Atomically replace `path` with {format, kind, version, saved_at, data}."""
    body = {"format": FORMAT, "kind": kind, "version": version, "saved_at": time.time(), "data": data}
    write_atomic(path, json.dumps(body, separators=(",", ":"), allow_nan=False).encode())


def write_atomic(path: str | os.PathLike[str], content: bytes) -> None:
    """Replace `path` with `content` so that a crash leaves either the old or the new file, never a mix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):  # left by a crash mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_state(path: str | os.PathLike[str], kind: str, version: int) -> dict[str, Any] | None:
    """The `data` of a state file written by write_state, or None (logged) when missing or unusable."""
    target = Path(path)
    try:
        size = target.stat().st_size
        if size > MAX_BYTES:
            raise ValueError(f"{size} bytes is larger than the {MAX_BYTES}-byte limit")
        body = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("ignoring state file %s: unreadable (%s); starting afresh", target, exc)
        return None
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("kind") != kind:
        log.warning("ignoring state file %s: not a %s state file; starting afresh", target, kind)
        return None
    if body.get("version") != version:
        log.warning(
            "ignoring state file %s: version %r, this exporter reads version %d; starting afresh",
            target,
            body.get("version"),
            version,
        )
        return None
    data = body.get("data")
    if not isinstance(data, dict):
        log.warning("ignoring state file %s: no data; starting afresh", target)
        return None
    return data
