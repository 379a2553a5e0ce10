"""Pending / firing / resolved state of one rule's alerts, one row per series, vectorized over series.

The same class judges the live loop (a few new columns per cycle) and the backtest (every column of a
replay), so a backtest's `alert` column is exactly what the exporter would have sent. It is Prometheus'
alerting-rule semantics applied to `anomaly_score`:

- a point is *anomalous* when its score is >= `threshold`; with `min_points` > 1 the condition is "at least
  `min_points` anomalous points within the last `window`" (count-in-window, for noisy metrics);
- while the condition holds the alert is *pending*; once it has held for `for` it *fires* (the first
  breaching point counts as 0 s, like Prometheus' pending state);
- a firing alert counts as still bad while the condition holds or the score stays >= `recovery_threshold`
  (hysteresis); it *resolves* once it has not been bad for more than `keep_firing_for`.

A missing score (gap, warm-up, series gone) is not anomalous: it ends a pending alert and lets a firing
one resolve after `keep_firing_for`, as a vanished series does in Prometheus. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from exporter.config import AlertConfig
from exporter.reader import SeriesKey

_EPS = 1e-6  # seconds: timestamps are whole seconds; this keeps `for` / `keep_firing_for` edges exact


@dataclass(frozen=True)
class Transition:
    """A series' alert started or stopped firing at `at` (epoch seconds)."""

    key: SeriesKey
    firing: bool
    at: float
    since: float  # when the alert started firing (equal to `at` when it starts)


class AlertStates:
    """Alert state of every series of one rule, keyed by series.

    `update(keys, timestamps, score)` advances the state over new columns in time order and returns, per
    series and column, whether the alert fires there, plus the start/stop transitions it saw.

    >>> from exporter.config import AlertConfig
    >>> s = AlertStates(AlertConfig(for_=60, keep_firing_for=60))
    >>> fires, changes = s.update([("a",)], np.arange(7) * 60, np.array([[0, 1, 1, 1, 0, 0, 0.0]]))
    >>> fires.astype(int).tolist(), [(c.firing, c.at) for c in changes]
    ([[0, 0, 1, 1, 1, 0, 0]], [(True, 120.0), (False, 300.0)])
    """

    def __init__(self, alert: AlertConfig) -> None:
        self.alert = alert
        self.keys: list[SeriesKey] = []
        self._row: dict[SeriesKey, int] = {}
        m = alert.min_points
        self.active_since = np.empty(0)  # condition holding since (NaN: not holding)
        self.firing_since = np.empty(0)  # NaN: not firing
        self.last_bad = np.empty(0)  # last time a firing alert was still bad
        self._recent = np.empty((0, m))  # times of the last `min_points` anomalous points (ring buffer)
        self._pos = np.empty(0, dtype=np.int64)
        self.last_time = -np.inf

    # -- rows ----------------------------------------------------------------------------------------
    def _rows(self, keys: Sequence[SeriesKey]) -> np.ndarray:
        new = [k for k in dict.fromkeys(keys) if k not in self._row]
        if new:
            for k in new:
                self._row[k] = len(self.keys)
                self.keys.append(k)
            extra = len(new)
            nan = np.full(extra, np.nan)
            self.active_since = np.concatenate([self.active_since, nan])
            self.firing_since = np.concatenate([self.firing_since, nan])
            self.last_bad = np.concatenate([self.last_bad, nan])
            self._recent = np.concatenate([self._recent, np.full((extra, self._recent.shape[1]), np.nan)])
            self._pos = np.concatenate([self._pos, np.zeros(extra, dtype=np.int64)])
        return np.fromiter((self._row[k] for k in keys), dtype=np.int64, count=len(keys))

    def forget(self, keep: set[SeriesKey]) -> None:
        """Drop the state of series not in `keep` that are neither pending nor firing (bounds memory)."""
        idle = np.isnan(self.active_since) & np.isnan(self.firing_since)
        stay = np.array([(k in keep) or not idle[i] for i, k in enumerate(self.keys)], dtype=bool)
        if stay.all():
            return
        self.keys = [k for k, s in zip(self.keys, stay, strict=True) if s]
        self._row = {k: i for i, k in enumerate(self.keys)}
        self.active_since, self.firing_since = self.active_since[stay], self.firing_since[stay]
        self.last_bad, self._recent, self._pos = self.last_bad[stay], self._recent[stay], self._pos[stay]

    # -- evaluation ----------------------------------------------------------------------------------
    def update(
        self, keys: Sequence[SeriesKey], timestamps: np.ndarray, score: np.ndarray
    ) -> tuple[np.ndarray, list[Transition]]:
        """Advance over `score` (series of `keys` × `timestamps`, in time order, after any earlier update).

        Series known from earlier updates but missing from `keys` are evaluated with unknown scores, so
        their firing alerts resolve after `keep_firing_for`. Columns at or before the last evaluated time
        are skipped (an overlapping re-fetch judges nothing twice); their `fires` entries are False.
        """
        a = self.alert
        rows = self._rows(keys)
        n_all = len(self.keys)
        t_all = np.asarray(timestamps, dtype=np.float64)
        fires = np.zeros((len(rows), len(t_all)), dtype=bool)
        full = np.full((n_all, len(t_all)), np.nan)
        full[rows] = score
        changes: list[Transition] = []
        # a column where no score reaches the lower threshold changes nothing while no alert is pending
        # or firing: skip those (most of a backtest), keeping last_time as if they had been evaluated
        with np.errstate(invalid="ignore"):
            hot: np.ndarray = np.any(full >= min(a.threshold, a.recovery), axis=0)
        busy = self._busy()
        for j in np.flatnonzero(t_all > self.last_time):
            t = float(t_all[j])
            if not hot[j] and not busy:
                self.last_time = t
                continue
            fired, started, stopped, stopped_since = self._step(t, full[:, j], a)
            busy = self._busy()
            fires[:, j] = fired[rows]
            changes += [Transition(self.keys[i], True, t, t) for i in np.flatnonzero(started)]
            changes += [
                Transition(self.keys[i], False, t, float(since))
                for i, since in zip(np.flatnonzero(stopped), stopped_since, strict=True)
            ]
            self.last_time = t
        return fires, changes

    def _busy(self) -> bool:
        return bool((~np.isnan(self.active_since)).any() or (~np.isnan(self.firing_since)).any())

    def _step(
        self, t: float, s: np.ndarray, a: AlertConfig
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        score = np.nan_to_num(s, nan=-np.inf)
        anomalous = score >= a.threshold
        if a.min_points > 1 or a.window > 0:
            hit = np.flatnonzero(anomalous)
            self._recent[hit, self._pos[hit]] = t
            self._pos[hit] = (self._pos[hit] + 1) % self._recent.shape[1]
            in_window = (self._recent > t - a.window - _EPS).sum(axis=1)
            holds = in_window >= a.min_points
        else:
            holds = anomalous
        self.active_since = np.where(holds, np.fmin(self.active_since, t), np.nan)
        was_firing = ~np.isnan(self.firing_since)
        ready = holds & (t - self.active_since >= a.for_ - _EPS)
        started = ready & ~was_firing
        self.firing_since = np.where(started, t, self.firing_since)
        bad = ready | (was_firing & (holds | (score >= a.recovery)))
        self.last_bad = np.where(bad, t, self.last_bad)
        stopped = was_firing & ~bad & (t - self.last_bad > a.keep_firing_for + _EPS)
        stopped_since = self.firing_since[stopped]
        self.firing_since = np.where(stopped, np.nan, self.firing_since)
        self.last_bad = np.where(stopped, np.nan, self.last_bad)
        return ~np.isnan(self.firing_since), started, stopped, stopped_since

    # -- persistence (plain values only) ---------------------------------------------------------------
    def firing(self) -> dict[SeriesKey, float]:
        """Series whose alert fires now, with the time it started firing."""
        return {
            self.keys[i]: float(self.firing_since[i]) for i in np.flatnonzero(~np.isnan(self.firing_since))
        }

    def to_dict(self) -> dict[str, object]:
        """State as JSON-safe values (times as floats, NaN as None) for the state file."""

        def col(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(x) else float(x) for x in a]

        return {
            "last_time": None if np.isinf(self.last_time) else self.last_time,
            "series": [
                {
                    "key": [list(p) for p in k],
                    "active_since": a,
                    "firing_since": f,
                    "last_bad": b,
                    "recent": [x for x in r if x is not None],
                }
                for k, a, f, b, r in zip(
                    self.keys,
                    col(self.active_since),
                    col(self.firing_since),
                    col(self.last_bad),
                    (col(r) for r in self._recent),
                    strict=True,
                )
                if a is not None or f is not None or r.count(None) < len(r)
            ],
        }

    @classmethod
    def from_dict(cls, alert: AlertConfig, data: object) -> AlertStates:
        """Inverse of to_dict; raises ValueError on anything malformed (the caller then starts afresh)."""
        if not isinstance(data, dict) or not isinstance(data.get("series"), list):
            raise ValueError("alert state: expected a mapping with a `series` list")
        states = cls(alert)
        items = data["series"]
        if not all(isinstance(item, dict) for item in items):
            raise ValueError("alert state: every series must be a mapping")
        keys = [series_key(item.get("key")) for item in items]
        rows = states._rows(keys)

        def number(item: dict[str, object], name: str) -> float:
            v = item.get(name)
            if v is None:
                return np.nan
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                raise ValueError(f"alert state: {name} must be a finite number or null (got {v!r})")
            return float(v)

        for row, item in zip(rows, items, strict=True):
            states.active_since[row] = number(item, "active_since")
            states.firing_since[row] = number(item, "firing_since")
            states.last_bad[row] = number(item, "last_bad")
            recent = item.get("recent", [])
            if not isinstance(recent, list) or not all(isinstance(x, int | float) for x in recent):
                raise ValueError("alert state: recent must be a list of numbers")
            m = states._recent.shape[1]
            for x in sorted(recent)[-m:]:
                states._recent[row, states._pos[row]] = x
                states._pos[row] = (states._pos[row] + 1) % m
        last = data.get("last_time")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int | float)):
            raise ValueError(f"alert state: last_time must be a number or null (got {last!r})")
        states.last_time = -np.inf if last is None else float(last)
        return states


def series_key(value: object) -> SeriesKey:
    """A series key saved as JSON (a list of [label, value] pairs) back as a SeriesKey; ValueError if not."""
    if not isinstance(value, list):
        raise ValueError("alert state: every series needs a `key` list")
    pairs = []
    for p in value:
        if not (isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)):
            raise ValueError(f"alert state: bad label pair {p!r}")
        pairs.append((p[0], p[1]))
    return tuple(pairs)


def alert_matrix(alert: AlertConfig, timestamps: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Firing state per point of a (series × time) score matrix: the backtest's `alert` column.

    >>> from exporter.config import AlertConfig
    >>> alert_matrix(AlertConfig(for_=0, keep_firing_for=0), np.arange(4) * 60, np.array([[0, 2, 0.5, 0]]))
    array([[False,  True, False, False]])
    """
    keys: list[SeriesKey] = [(("row", str(i)),) for i in range(score.shape[0])]
    fires, _ = AlertStates(alert).update(keys, timestamps, score)
    return fires
