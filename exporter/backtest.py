"""Replay history through a rule's model exactly as the live loop would have scored it.

Refit every `retrain` on the `history` before that moment (leaving out points that had scored >= 1, as
live), then score each point until the next refit using only the data before it — with the same
RuleModel (detector + calibration) the exporter runs, and alerts evaluated with the rule's `for` and
`keep_firing_for`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from exporter.config import RuleConfig
from exporter.frame import Window
from exporter.model import RuleModel
from exporter.postprocess import firing
from exporter.reader import SeriesKey

Progress = Callable[[float], None]


@dataclass(frozen=True)
class BacktestResult:
    """Per series (rows) and grid point: the inputs and what the exporter would have published."""

    keys: Sequence[SeriesKey]
    timestamps: np.ndarray  # int64 seconds
    values: np.ndarray
    score: np.ndarray  # NaN where no score would have been published (warm-up, no data)
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    alert: np.ndarray  # bool: the rule's alert would be firing


def replay(
    rule: RuleConfig,
    keys: Sequence[SeriesKey],
    timestamps: np.ndarray,
    values: np.ndarray,
    *,
    progress: Progress | None = None,
) -> BacktestResult:
    """Score every point of `values` (series × time on the step grid `timestamps`) as the live loop would."""
    step = int(rule.step)
    n, n_t = values.shape
    history = max(2, int(rule.history // step))
    every = max(1, int(rule.retrain // step))
    out = {name: np.full((n, n_t), np.nan) for name in ("score", "expected", "lower", "upper")}
    flagged = np.zeros((n, n_t), dtype=bool)
    first = min(n_t, max(1, math.ceil(rule.model.min_history / step)))
    model = RuleModel(rule)
    for b in range(first, n_t, every):
        lo = max(0, b - history)
        train = Window(keys, timestamps[lo:b], values[:, lo:b], flagged[:, lo:b])
        model = model.fit(train)  # as live: the next fit may reuse this one (a pooled forest, daily)
        e = min(n_t, b + every)
        scored = model.score(Window(keys, timestamps[lo:e], values[:, lo:e]), np.arange(b - lo, e - lo))
        for name, arr in zip(("score", "expected", "lower", "upper"), scored, strict=True):
            out[name][:, b:e] = arr
        if rule.model.exclude_anomalies:
            flagged[:, b:e] = scored.score >= 1
        if progress is not None:
            progress(e / n_t)
    # nothing is published for a point with no value, nor before the model can judge the series
    unknown = np.isnan(values) | np.isnan(out["expected"]) | np.isnan(out["upper"])
    for arr in out.values():
        arr[unknown] = np.nan
    alert = firing(out["score"], step, rule.alert_for, rule.keep_firing_for)
    return BacktestResult(keys, timestamps, values, alert=alert, **out)


# -- CSV in and out -------------------------------------------------------------------------------------


def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """`timestamp,value` CSV (ISO timestamps or epoch seconds) → (grid timestamps, values, step).

    The step is the most common spacing; points are placed on that grid (missing points become NaN,
    a later duplicate wins). Raises ValueError naming the file and the problem.
    """
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read CSV: {exc}") from None
    if list(frame.columns[:2]) != ["timestamp", "value"]:
        raise ValueError(
            f"{path}: expected a header 'timestamp,value' (got {','.join(map(str, frame.columns))})"
        )
    if frame.empty:
        raise ValueError(f"{path}: no rows")
    raw = frame["timestamp"]
    if pd.api.types.is_numeric_dtype(raw):
        seconds = raw.to_numpy(dtype=np.float64)
    else:
        parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
        if parsed.isna().any():
            bad = raw[parsed.isna()].iloc[0]
            raise ValueError(f"{path}: unparseable timestamp {bad!r}")
        seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=np.float64)
    order = np.argsort(seconds, kind="stable")
    seconds, values = seconds[order], values[order]
    diffs = np.diff(seconds)
    diffs = diffs[diffs > 0]
    if len(diffs) == 0:
        raise ValueError(f"{path}: need at least two distinct timestamps")
    uniq, counts = np.unique(np.round(diffs), return_counts=True)
    step = max(1, int(uniq[np.argmax(counts)]))
    start = int(seconds[0]) // step * step
    cols = np.round((seconds - start) / step).astype(np.int64)
    grid = start + step * np.arange(int(cols[-1]) + 1, dtype=np.int64)
    out = np.full(len(grid), np.nan)
    out[cols] = values  # later duplicates overwrite earlier ones
    return grid, out, step


def write_csv(path: str | Path, result: BacktestResult, iso: bool = True) -> None:
    """One row per series and point: series labels (when there are several), value, score, band, alert."""
    many = len(result.keys) > 1 or any(result.keys)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            (["series"] if many else [])
            + ["timestamp", "value", "score", "expected", "lower", "upper", "alert"]
        )
        stamps = (
            pd.to_datetime(result.timestamps, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
            if iso
            else result.timestamps.tolist()
        )
        for i, key in enumerate(result.keys):
            series = ["{" + ",".join(f'{k}="{v}"' for k, v in key) + "}"] if many else []
            cols = [result.values[i], result.score[i], result.expected[i], result.lower[i], result.upper[i]]
            for j, ts in enumerate(stamps):
                cells = ["" if math.isnan(c[j]) else f"{c[j]:.6g}" for c in cols]
                w.writerow([*series, ts, *cells, int(result.alert[i, j])])


def for_csv(rule: RuleConfig, step: int) -> RuleConfig:
    """A rule's settings adapted to a CSV's step: queries are not run, the grid comes from the file."""
    interval = max(rule.interval, float(step))
    return replace(rule, step=float(step), interval=interval, retrain=max(rule.retrain, interval))
