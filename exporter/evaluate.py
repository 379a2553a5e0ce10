"""Score alerts against labelled anomaly windows: NAB's benchmark score and on-call event metrics.

Used by `backtest --labels` and the quality benchmark. Windows are `(start, end)` timestamp pairs, both ends
inclusive, sorted and non-overlapping, as in NAB's `labels/combined_windows.json`.

The NAB part follows numenta/NAB v1.1: `nab/sweeper.py` (`scaledSigmoid`, `Sweeper.calcSweepScore`,
`Sweeper.calcScoreByThreshold`, `_getProbationaryLength`), `nab/util.py` (`getProbationPeriod`) and
`nab/runner.py` (`Runner.normalize`). It is our own vectorized code, checked against NAB's unit-test values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Window = tuple[np.datetime64, np.datetime64]
_WEEK_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Profile:
    """One NAB application profile (`config/profiles.json` CostMatrix). NAB never uses `tn`."""

    name: str
    tp: float
    fp: float
    fn: float
    tn: float


@dataclass(frozen=True)
class FileScore:
    """NAB raw score of one file, with the null and perfect detectors' scores needed to normalise it.

    `tp`/`fn` count windows (detected / missed), `fp` counts scored detections outside every window.
    """

    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class EventMetrics:
    """What an on-call person sees: windows caught or missed, alert episodes true or false, delays.

    Ratios that would be 0/0 are NaN (unknown is not 0); `mean_delay_s` is None when no window was detected.
    """

    tp_events: int
    fn_events: int
    fp_alerts: int
    alerts: int
    precision: float
    recall: float
    f1: float
    mean_delay_s: float | None
    false_alerts_per_week: float
    weeks: float


def load_profiles(path: str | Path) -> dict[str, Profile]:
    """Read NAB's `profiles.json` ({name: {"CostMatrix": {"tpWeight": ...}}})."""
    raw = json.loads(Path(path).read_text())
    profiles = {}
    for name, body in raw.items():
        m = body["CostMatrix"]
        weights = (float(m[k]) for k in ("tpWeight", "fpWeight", "fnWeight", "tnWeight"))
        profiles[name] = Profile(name, *weights)
    return profiles


def load_windows(path: str | Path) -> dict[str, list[Window]]:
    """Read NAB's `combined_windows.json` ({"folder/file.csv": [[start, end], ...]}), sorted by start."""
    raw = json.loads(Path(path).read_text())
    return {
        key: sorted((np.datetime64(s, "s"), np.datetime64(e, "s")) for s, e in pairs)
        for key, pairs in raw.items()
    }


def probationary_rows(n_rows: int, percent: float = 0.15) -> int:
    """NAB's probationary period: min(floor(percent × rows), percent × 5000) rows, i.e. at most 750.

    From `nab/util.py getProbationPeriod` / `Sweeper._getProbationaryLength`; these rows are not scored.
    """
    return int(min(math.floor(percent * n_rows), percent * 5000))


def scaled_sigmoid(x: np.ndarray | float) -> np.ndarray:
    """NAB's `scaledSigmoid`: 2/(1+e^{5x}) − 1, and exactly −1 for x > 3 (0.9866 at x = −1, 0 at x = 0)."""
    x = np.asarray(x, dtype=float)
    return np.where(x > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * np.minimum(x, 3.0))) - 1.0)


def rising_edges(alert: np.ndarray) -> np.ndarray:
    """True at the first row of every firing episode: one NAB detection per alert, not one per firing row."""
    a = np.asarray(alert, dtype=bool)
    edges = a.copy()
    edges[1:] &= ~a[:-1]
    return edges


def _window_rows(ts: np.ndarray, windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row bounds (left, right; inclusive) of each window, and whether it holds any row at all.

    NAB enters a window at the row equal to its start and leaves at the FIRST row equal to its end
    (`timestamps.index(end)`); for timestamps that fall between rows we take the rows inside [start, end].
    """
    wins = sorted(windows)
    starts = np.array([s for s, _ in wins], dtype="datetime64[ms]")
    ends = np.array([e for _, e in wins], dtype="datetime64[ms]")
    if len(wins) > 1 and np.any(starts[1:] <= ends[:-1]):
        raise ValueError("windows overlap")
    left = np.searchsorted(ts, starts, side="left")
    right = np.searchsorted(ts, ends, side="left")
    exact = (right < len(ts)) & (ts[np.minimum(right, len(ts) - 1)] == ends)
    right = np.where(exact, right, right - 1)
    has_rows = right >= left
    return left, right, has_rows


def _as_ts(timestamps: np.ndarray) -> np.ndarray:
    ts = np.asarray(timestamps).astype("datetime64[ms]")
    if len(ts) > 1 and np.any(ts[1:] < ts[:-1]):
        raise ValueError("timestamps must be non-decreasing")
    return ts


def nab_file_score(
    timestamps: np.ndarray,
    detections: np.ndarray,
    windows: Sequence[Window],
    profile: Profile,
    *,
    probation: float = 0.15,
) -> FileScore:
    """NAB score of one file's detections (True = a detection at that row), as `Sweeper.calcSweepScore`.

    - Rows before `probationary_rows(n, probation)` are ignored, detections and window rows alike; a window
      with no row after it does not count at all (NAB gives it no score part).
    - In a window only the first scored detection counts: tp × S(−(right − i + 1)/width) / S(−1), width =
      right − left + 1 rows, so a detection at the window's first row earns exactly `tp` (NAB divides by
      maxTP = S(−1) = 0.9866). A window with no detection costs −`fn`.
    - A detection outside windows costs fp × S(|i − prev_right| / (prev_width − 1)) after the previous
      window, and −`fp` before the first (S(x) < 0 for x > 0, so this is a penalty that grows with distance).
    - null = the never-detecting detector; perfect = `tp` per counted window (`Runner.normalize`: tpCount ×
      tpWeight; for every file of NAB's corpus no window lies inside the probationary period).
    """
    ts = _as_ts(timestamps)
    det = np.asarray(detections, dtype=bool)
    if det.shape != ts.shape:
        raise ValueError(f"detections has shape {det.shape}, timestamps {ts.shape}")
    prob = probationary_rows(len(ts), probation)
    rows = np.flatnonzero(det)
    rows = rows[rows >= prob]
    left, right, has_rows = _window_rows(ts, windows)
    left, right = left[has_rows], right[has_rows]
    counted = right >= prob  # probationary windows still count as "previous window" for FPs, as in NAB
    width = (right - left + 1).astype(float)

    hit, first = _overlaps(left, right, rows, rows)  # first scored detection at or after each window's start
    hit &= counted
    tp_score = (
        profile.tp * scaled_sigmoid(-(right[hit] - rows[first[hit]] + 1) / width[hit]) / scaled_sigmoid(-1)
    )

    inside, nxt = _overlaps(rows, rows, left, right)
    fp_rows, prev = rows[~inside], nxt[~inside] - 1  # prev: the last window ending before the detection
    prev_right = np.append(right, -1)[prev]  # prev == -1 (no earlier window) picks a sentinel whose zero
    prev_width = np.append(width, 1.0)[prev]  # span puts the detection infinitely far: S = -1, as in NAB
    with np.errstate(divide="ignore"):  # NAB divides by zero after a one-row window: treat it the same
        fp_score = profile.fp * scaled_sigmoid((fp_rows - prev_right) / (prev_width - 1.0))

    n_tp, n_win = int(hit.sum()), int(counted.sum())
    raw = float(tp_score.sum() + fp_score.sum()) - profile.fn * (n_win - n_tp)
    return FileScore(raw, -profile.fn * n_win, profile.tp * n_win, tp=n_tp, fp=len(fp_rows), fn=n_win - n_tp)


def nab_normalized(scores: Iterable[FileScore]) -> float:
    """Corpus score 100 × (Σraw − Σnull) / (Σperfect − Σnull), as `Runner.normalize`; NaN without windows."""
    s = list(scores)
    raw, null, perfect = (math.fsum(getattr(f, k) for f in s) for k in ("raw", "null", "perfect"))
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan


def _overlaps(
    lo: np.ndarray, hi: np.ndarray, other_lo: np.ndarray, other_hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each interval [lo, hi]: does it overlap a sorted disjoint [other_lo, other_hi], and the first one.

    The first `other` ending at/after `lo` is the only candidate: it overlaps iff it begins at/before `hi`.
    """
    first = np.searchsorted(other_hi, lo, side="left")
    if not len(other_hi):
        return np.zeros(len(lo), dtype=bool), first
    return (first < len(other_hi)) & (other_lo[np.minimum(first, len(other_lo) - 1)] <= hi), first


def _metrics(tp: int, fn: int, fp: int, alerts: int, delay_sum: float, weeks: float) -> EventMetrics:
    precision, recall = _ratio(alerts - fp, alerts), _ratio(tp, tp + fn)
    return EventMetrics(
        tp_events=tp,
        fn_events=fn,
        fp_alerts=fp,
        alerts=alerts,
        precision=precision,
        recall=recall,
        f1=_f1(precision, recall),
        mean_delay_s=delay_sum / tp if tp else None,
        false_alerts_per_week=_ratio(fp, weeks),
        weeks=weeks,
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _f1(p: float, r: float) -> float:
    """Harmonic mean; 0 if either is 0 (no alerts but missed windows is a plain miss), else NaN if unknown."""
    if p == 0 or r == 0:
        return 0.0
    return math.nan if math.isnan(p) or math.isnan(r) else 2 * p * r / (p + r)


def event_metrics(
    timestamps: np.ndarray, alert: np.ndarray, windows: Sequence[Window], *, skip_rows: int = 0
) -> EventMetrics:
    """Alert episodes (runs of firing rows) against windows, the way an on-call person counts them.

    An episode that overlaps a window detects it, with delay max(0, episode start − window start); the
    earliest such episode sets the delay. An episode overlapping no window is a false alert. Episodes
    starting in the first `skip_rows` rows and windows ending there are ignored — pass
    `probationary_rows(len(timestamps))` to mirror NAB's probationary period, when detectors are warming up.
    """
    ts = _as_ts(timestamps)
    a = np.asarray(alert, dtype=bool)
    if a.shape != ts.shape:
        raise ValueError(f"alert has shape {a.shape}, timestamps {ts.shape}")
    starts = np.flatnonzero(rising_edges(a))
    ends = np.flatnonzero(a & ~np.append(a[1:], False))  # last firing row of each episode
    keep = starts >= skip_rows
    starts, ends = starts[keep], ends[keep]

    wins = sorted(windows)
    left, right, has_rows = _window_rows(ts, wins)
    counted = has_rows & (right >= skip_rows)
    win_start = np.array([s for s, _ in wins], dtype="datetime64[ms]")[counted]
    left, right = left[counted], right[counted]

    true_alert, _ = _overlaps(starts, ends, left, right)
    detected, first = _overlaps(left, right, starts, ends)
    delays = np.maximum((ts[starts[first[detected]]] - win_start[detected]) / np.timedelta64(1, "s"), 0.0)

    lo = min(skip_rows, max(len(ts) - 1, 0))
    weeks = float((ts[-1] - ts[lo]) / np.timedelta64(1, "s")) / _WEEK_S if len(ts) else 0.0
    n_true, tp = int(true_alert.sum()), int(detected.sum())
    return _metrics(tp, len(left) - tp, len(starts) - n_true, len(starts), float(delays.sum()), weeks)


def combine(metrics: Iterable[EventMetrics]) -> EventMetrics:
    """Corpus totals: counts summed, ratios recomputed from totals, delay averaged over detected windows."""
    ms = list(metrics)
    delay_sum = math.fsum(m.mean_delay_s * m.tp_events for m in ms if m.mean_delay_s is not None)
    tp, fn = sum(m.tp_events for m in ms), sum(m.fn_events for m in ms)
    fp, alerts = sum(m.fp_alerts for m in ms), sum(m.alerts for m in ms)
    return _metrics(tp, fn, fp, alerts, delay_sum, math.fsum(m.weeks for m in ms))
