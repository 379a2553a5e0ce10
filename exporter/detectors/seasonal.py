"""Seasonal baseline: per series, expected value = seasonal profile + recent level, with a robust scale.

Vectorized over every series of a rule: profiles are per-slot medians of (series × slot × sample) cubes, so
a rule with thousands of series is a few array passes, never a Python loop per series or per point.
Robust to outliers in its own training window (medians and MAD, not means), to gaps (NaN is ignored) and
to flat series (the scale falls back to the mean absolute deviation, then to a tiny floor).

A week of history cannot support a weekly profile (that needs two), yet quieter weekends would page at
every weekend start and end until the trailing level caught up. So a series with a daily (or no) profile
also learns, per weekday, the step of its level at the UTC midnight starting that day — seen once in a
week of history, trusted only where it stands out from the series' ordinary level changes — and the
expected value takes that step at the next such midnight. Weekly patterns are assumed aligned to UTC days.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Self

import numpy as np

from exporter.detectors.base import Detector, Prediction
from exporter.detectors.robust import MAD_TO_SIGMA, nanmedian, nanquantile, robust_sigma
from exporter.frame import Window

if TYPE_CHECKING:
    from exporter.reader import SeriesKey

DAY = 86400
WEEK = 7 * DAY
PERIODS = {"none": 0, "daily": DAY, "weekly": WEEK}
_CHUNK_CELLS = 1_000_000  # series rows × columns processed at once, to bound peak memory while fitting
SCALE_SLOT = 3600  # the noise level is learned per hour of the day (or week): busy hours are noisier
TAIL_Q, TAIL_Z = 0.99, 2.576  # the 99th percentile of |residual| is 2.576 σ for normal noise
JUMP_SPAN = 7200  # seconds of data either side of a UTC midnight compared to learn a weekday's jump
JUMP_Z, JUMP_Q = 6.0, 0.95  # it counts beyond 6 robust σ and the 95th percentile of the other span changes

_STATE_SCALARS = ("step_", "bucket_", "level_cols_", "slot_period_", "scale_period_", "ref_day_")
_STATE_ARRAYS: dict[str, tuple[str, str | int | None]] = {  # fitted array: (dtype kind, columns; None = 1-D)
    "profile_": ("f", "slots"),
    "scale_": ("f", "hours"),
    "sigma_": ("f", None),
    "level_": ("f", None),
    "period_": ("i", None),
    "jumps_": ("f", 7),
}


class SeasonalBaseline(Detector):
    """Per-series seasonal profile (none / daily / weekly), weekday level jumps at UTC midnight (when the
    profile is not weekly) and a trailing robust level.

    Parameters
    ----------
    seasonality : "auto" picks, per series, the longest period that the series' own data spans twice and
        that lowers the residual spread by at least `min_gain`; or force "none", "daily" or "weekly".
    level_window : seconds of recent data whose median residual shifts the profile (follows level changes).
    min_history : seconds of data a series needs in the training window before it is scored.
    bucket : seconds per profile slot (the profile is kept at this resolution, at least the step).
    min_gain : relative reduction of the residual spread a seasonal profile must bring to be chosen.
    """

    def __init__(
        self,
        seasonality: str = "auto",
        level_window: float = 3600.0,
        min_history: float = 3600.0,
        bucket: float = 300.0,
        min_gain: float = 0.1,
    ) -> None:
        self.seasonality = seasonality
        self.level_window = level_window
        self.min_history = min_history
        self.bucket = bucket
        self.min_gain = min_gain

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, window: Window, previous: SeasonalBaseline | None = None) -> Self:
        """Learn from the window; `previous` (the model fitted before on the same rule, if any) lends the
        weekday jumps this window cannot measure, such as the midnight at its very start."""
        if self.seasonality not in ("auto", *PERIODS):
            raise ValueError(f"seasonality must be auto, none, daily or weekly (got {self.seasonality!r})")
        step = window.step or 1
        n, n_t = window.shape
        self.step_ = step
        self.bucket_ = _bucket(step, self.bucket)
        self.level_cols_ = max(1, round(self.level_window / step))
        candidates = self._candidates(n_t * step)
        self.slot_period_ = max(candidates) or self.bucket_  # profile storage covers the longest period
        n_slots = self.slot_period_ // self.bucket_
        self.profile_ = np.full((n, n_slots), np.nan)  # float64: a 1e10 gauge with noise 4 needs it
        self.scale_period_ = self.slot_period_ if self.slot_period_ in (DAY, WEEK) else 0
        self.scale_ = np.full((n, max(1, self.scale_period_ // SCALE_SLOT)), np.nan)
        self.sigma_ = np.full(n, np.nan)
        self.level_ = np.full(n, np.nan)
        self.period_ = np.zeros(n, dtype=np.int64)
        self.jumps_ = np.zeros((n, 7))  # level step entering each weekday (Monday = 0) at UTC midnight
        self.ref_day_ = int(window.timestamps[-1]) // DAY if n_t else 0  # day where the summed jumps are 0
        carried = np.full((n, 7), np.nan)
        if previous is not None and hasattr(previous, "jumps_") and len(previous.jumps_):
            before = previous._fitted_rows(window.keys)
            carried = np.where((before >= 0)[:, None], previous.jumps_[np.maximum(before, 0)], np.nan)
        counts = np.zeros(n, dtype=np.int64)
        rows_per_chunk = max(1, _CHUNK_CELLS // max(n_t, 1))
        for lo in range(0, n if n_t else 0, rows_per_chunk):  # no columns: nothing learnt, all unknown
            rows = slice(lo, min(n, lo + rows_per_chunk))
            counts[rows] = self._fit_rows(window, rows, candidates, carried[rows])
        warm = counts * step >= self.min_history
        self.sigma_[~warm] = np.nan  # not enough history yet: unknown, never "normal"
        self.scale_[~warm] = np.nan
        self.keys_ = {key: i for i, key in enumerate(window.keys)}
        return self

    # -- saving ----------------------------------------------------------------------------------
    def fitted_state(self) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        if not hasattr(self, "keys_"):
            raise RuntimeError("SeasonalBaseline is not fitted yet")
        return {k: int(getattr(self, k)) for k in _STATE_SCALARS}, {
            k: getattr(self, k) for k in _STATE_ARRAYS
        }

    def restore_state(
        self, keys: Sequence[SeriesKey], scalars: dict[str, int], arrays: dict[str, np.ndarray]
    ) -> Self:
        if set(scalars) != set(_STATE_SCALARS) or set(arrays) != set(_STATE_ARRAYS):
            raise ValueError(f"expected scalars {_STATE_SCALARS} and arrays {sorted(_STATE_ARRAYS)}")
        values = {k: int(v) for k, v in scalars.items()}
        if values["bucket_"] < 1 or values["slot_period_"] % values["bucket_"] or values["step_"] < 1:
            raise ValueError(f"inconsistent step/bucket/period: {values}")
        width = {
            "slots": values["slot_period_"] // values["bucket_"],
            "hours": max(1, values["scale_period_"] // SCALE_SLOT),
            7: 7,
            None: None,
        }
        n = len(keys)
        for name, (kind, cols) in _STATE_ARRAYS.items():
            a = arrays[name]
            want = (n,) if width[cols] is None else (n, width[cols])
            if a.dtype.kind != kind or a.shape != want:
                raise ValueError(f"{name}: {a.dtype} {a.shape}, expected kind {kind!r} {want}")
        for k, v in values.items():
            setattr(self, k, v)
        for k in _STATE_ARRAYS:
            setattr(self, k, np.array(arrays[k], dtype=np.int64 if k == "period_" else np.float64))
        self.keys_ = {key: i for i, key in enumerate(keys)}
        return self

    def _candidates(self, span: int) -> list[int]:
        if self.seasonality != "auto":
            return [PERIODS[self.seasonality]]
        return [p for p in (0, DAY, WEEK) if p == 0 or span >= 2 * p]

    def _fit_rows(
        self, window: Window, rows: slice, candidates: list[int], carried: np.ndarray
    ) -> np.ndarray:
        """Fit the series `rows`; returns how many points each has."""
        x = finite(window.rows(rows))
        t = window.timestamps
        valid = ~np.isnan(x)
        covered = _covered(valid, self.step_)
        best_sigma = None
        for period in candidates:  # shortest first: a longer period must beat the best so far
            profile = self._profile(x, t, period)
            season = profile[:, self._slots(t, period)]
            deseason = x - season
            resid = deseason - self._block_level(deseason)
            sigma = robust_sigma(resid)
            if best_sigma is None:
                better = np.ones(len(sigma), dtype=bool)
            else:
                better = sigma < (1.0 - self.min_gain) * best_sigma
                if self.seasonality != "auto":
                    better[:] = True
                else:
                    # as for the window (_candidates), a series must itself span the period twice: a
                    # series younger than that would otherwise learn a "profile" of the slots it has seen
                    # once (fitting its own noise, so a tiny sigma) and meet unseen slots every hour
                    better &= covered >= 2 * period
            idx = np.flatnonzero(better)
            n_slots = self.profile_.shape[1]
            tiled = np.tile(profile, (1, n_slots // profile.shape[1]))
            # rows is a slice, so these are views into the fitted arrays
            self.profile_[rows][idx] = tiled[idx, :n_slots]
            self.sigma_[rows][idx] = sigma[idx]
            self.period_[rows][idx] = period
            best_sigma = sigma if best_sigma is None else np.where(better, sigma, best_sigma)
        deseason = x - self.profile_[rows][:, self._slots(t, self.slot_period_)]
        jumps = _midnight_jumps(deseason, t, self.step_)
        jumps = np.where(np.isnan(jumps), carried, jumps)  # e.g. the midnight at the window's very start
        jumps[self.period_[rows] == WEEK] = 0.0  # a weekly profile already holds the weekday pattern
        self.jumps_[rows] = np.nan_to_num(jumps)
        deseason -= self._offsets(self.jumps_[rows], t)
        self.level_[rows] = nanmedian(deseason[:, -self.level_cols_ :])
        floor = 1e-9 + 1e-9 * np.abs(np.nan_to_num(self.level_[rows]))
        self.sigma_[rows] = np.maximum(self.sigma_[rows], floor)
        self.scale_[rows] = self._scale(deseason, t, self.sigma_[rows])
        return valid.sum(axis=1)

    def _scale(self, deseason: np.ndarray, t: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Noise scale per series and hour slot: robust σ of the residual in that hour of the day/week
        (at least half the series-wide σ), inflated where the residual's tail is heavier than normal so
        a burst-prone series does not page on its ordinary bursts."""
        resid = deseason - self._block_level(deseason)
        n_scale = max(1, self.scale_period_ // SCALE_SLOT)
        hour = self._hours(t)
        cube, valid = _cube(resid, hour, n_scale)
        center = nanmedian(cube)
        slot_sigma = MAD_TO_SIGMA * nanmedian(np.abs(cube - center[..., None]))
        slot_sigma = np.where((valid >= 10) & (slot_sigma > 0), slot_sigma, sigma[:, None])
        slot_sigma = np.maximum(slot_sigma, 0.5 * sigma[:, None])
        ratio = np.abs(resid) / slot_sigma[:, hour]
        tail = np.fmax(nanquantile(ratio, TAIL_Q) / TAIL_Z, _typical_daily_max(ratio, t, self.step_))
        return slot_sigma * np.fmax(tail, 1.0)[:, None]

    def _offsets(self, jumps: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Per series and timestamp, the weekday jumps summed from the reference day to the timestamp's day:
        the level the weekly pattern adds on that day, 0 on the reference day."""
        if not len(t):
            return np.zeros((len(jumps), 0))
        days = t // DAY
        lo, hi = min(int(days.min()), self.ref_day_), max(int(days.max()), self.ref_day_)
        k = np.arange(lo, hi + 1)
        steps = jumps[:, (k + 3) % 7]  # the jump entering day k (1970-01-01 was a Thursday; Monday = 0)
        steps[:, 0] = 0.0
        c = np.cumsum(steps, axis=1)
        c -= c[:, self.ref_day_ - lo][:, None]
        return c[:, days - lo]

    def _hours(self, t: np.ndarray) -> np.ndarray:
        """Scale slot (hour of the day or week) of each timestamp."""
        if not self.scale_period_:
            return np.zeros(len(t), dtype=np.int64)
        return (t % self.scale_period_) // SCALE_SLOT

    def _slots(self, t: np.ndarray, period: int) -> np.ndarray:
        if period == 0:
            return np.zeros(len(t), dtype=np.int64)
        return (t % period) // self.bucket_

    def _profile(self, x: np.ndarray, t: np.ndarray, period: int) -> np.ndarray:
        """Per-slot medians, shape (series, slots); slots with under 2 samples take the series median."""
        slots = self._slots(t, period)
        n_slots = max(1, period // self.bucket_) if period else 1
        cube, valid = _cube(x, slots, n_slots)
        prof = nanmedian(cube)
        overall = nanmedian(x)
        return np.where(valid >= 2, prof, overall[:, None])

    def _block_level(self, deseason: np.ndarray) -> np.ndarray:
        """Per point, the median of the previous block of `level_cols_` columns (the first block uses its
        own): a level known before the point, like the trailing level used live, at a fraction of its cost."""
        n, n_t = deseason.shape
        w = min(self.level_cols_, n_t)
        head = n_t % w
        medians = [nanmedian(deseason[:, :head])[:, None]] if head else []
        if n_t > head:
            medians.append(nanmedian(deseason[:, head:].reshape(n, -1, w)))
        blocks = np.concatenate(medians, axis=1)  # one column per block, oldest first
        lagged = np.concatenate([blocks[:, :1], blocks[:, :-1]], axis=1)
        lagged = np.where(np.isnan(lagged), blocks, lagged)
        widths = ([head] if head else []) + [w] * ((n_t - head) // w)
        return np.repeat(lagged, widths, axis=1)

    # -- prediction ------------------------------------------------------------------------------
    def predict(self, window: Window, columns: np.ndarray) -> Prediction:
        rows = self._fitted_rows(window.keys)
        columns = np.asarray(columns, dtype=np.int64)
        k = len(columns)
        if not len(self.level_):  # fitted on no series (the query returned none yet): all unknown
            return Prediction(expected=np.full((len(rows), k), np.nan), scale=np.full((len(rows), k), np.nan))
        known = rows >= 0
        r = np.where(known, rows, 0)
        t = window.timestamps
        slot_of = self._slots(t, self.slot_period_) if self.slot_period_ else np.zeros(len(t), np.int64)
        # deseasonalised values over the span the trailing windows need
        lo = max(0, int(columns.min()) - self.level_cols_) if k else 0
        hi = int(columns.max()) if k else 0
        span = np.arange(lo, hi)
        jumps = self.jumps_[r]
        season_span = self.profile_[r][:, slot_of[span]] + self._offsets(jumps, t[span])
        deseason = finite(window.cols(slice(lo, hi))) - season_span
        level = np.empty((len(rows), k))
        for i, col in enumerate(columns):  # one vectorized median per predicted column (few per cycle)
            a, b = max(lo, col - self.level_cols_) - lo, col - lo
            trailing = deseason[:, a:b]
            enough = (~np.isnan(trailing)).sum(axis=1) >= max(1, (b - a) // 4)
            level[:, i] = np.where(enough, nanmedian(trailing) if b > a else np.nan, self.level_[r])
        expected = self.profile_[r][:, slot_of[columns]] + self._offsets(jumps, t[columns]) + level
        scale = self.scale_[r][:, self._hours(t[columns])]
        expected[~known] = np.nan
        scale[~known] = np.nan
        # near the float range's ends (±1e308) sums overflow: such a point is unknown, never ±Inf
        expected[np.isinf(expected)] = np.nan
        scale[np.isinf(scale)] = np.nan
        return Prediction(expected=expected, scale=scale)


def finite(x: np.ndarray) -> np.ndarray:
    """`x` with ±Inf read as missing, as the live frame stores them: x/0 or histogram_quantile's +Inf
    carries no level (a backtest and direct callers pass raw values). A copy only if there is an Inf."""
    inf = np.isinf(x)
    return np.where(inf, np.nan, x) if inf.any() else x


def _cube(x: np.ndarray, slots: np.ndarray, n_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Group columns by slot: a (series, slot, sample) cube padded with NaN, and the valid count per cell."""
    order = np.argsort(slots, kind="stable")
    counts = np.bincount(slots, minlength=n_slots)
    width = int(counts.max()) if len(counts) else 0
    # index matrix (slot, sample) into x's columns; -1 padding points at an all-NaN extra column
    idx = np.full((n_slots, max(width, 1)), -1, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    within = np.arange(len(order)) - np.repeat(starts, counts)
    idx[slots[order], within] = order
    padded = np.concatenate([x, np.full((x.shape[0], 1), np.nan)], axis=1)
    cube = padded.take(idx, axis=1)  # C-ordered (series, slot, sample): 5x faster than padded[:, idx] here
    return cube, (~np.isnan(cube)).sum(axis=-1)


def _covered(valid: np.ndarray, step: int) -> np.ndarray:
    """Per series (row of the `valid` mask), the seconds from its first to its last point (gaps included);
    0 without data."""
    n_t = valid.shape[1]
    first = np.argmax(valid, axis=1)
    last = n_t - 1 - np.argmax(valid[:, ::-1], axis=1)
    return np.where(valid.any(axis=1), (last - first + 1) * step, 0)


def _bucket(step: int, wanted: float) -> int:
    """Profile slot width: a divisor of a day (so slots line up with days and weeks) near `wanted`
    seconds, and at least one step."""
    target = max(step, wanted)
    if target >= DAY:
        return int(target)
    return next(d for d in range(math.ceil(target), DAY + 1) if DAY % d == 0)  # smallest such divisor


def _typical_daily_max(ratio: np.ndarray, t: np.ndarray, step: int) -> np.ndarray:
    """How much larger the typical day's largest |residual| is than normal noise would make it.

    Bursts that recur most days (a load balancer's spikes, a nightly job) are normal for the series, so
    they should widen its band; one incident in the history shouldn't, hence the median over days. Needs
    three days with data; 1.0 (no widening) otherwise.
    """
    per_day = DAY // max(1, step)
    if per_day < 2:
        return np.ones(ratio.shape[0])
    day = (t - t[0]) // DAY
    n_days = int(day[-1]) + 1 if len(day) else 0
    if n_days < 3:
        return np.ones(ratio.shape[0])
    cube, valid = _cube(ratio, day, n_days)
    daily_max = np.where(
        valid >= per_day // 2, np.nanmax(np.where(np.isnan(cube), -np.inf, cube), axis=-1), np.nan
    )
    typical = nanmedian(daily_max)
    expected = NormalDist().inv_cdf(
        1.0 - 1.0 / (2.0 * per_day)
    )  # the usual max of |z| over a day of normal noise
    return np.where(np.isnan(typical), 1.0, typical / expected)


def _midnight_jumps(deseason: np.ndarray, t: np.ndarray, step: int) -> np.ndarray:
    """Per series and weekday (Monday = 0), the step of the deseasonalised level at the UTC midnight that
    starts that day: the median of the JUMP_SPAN after it minus the median of the JUMP_SPAN before it.

    Only a step at midnight counts, so a level shift or an incident at any other hour teaches nothing.
    NaN where the window holds no such midnight with enough data on both sides (the caller keeps what it
    knew); 0 where the step does not stand out from the series' ordinary level changes between consecutive
    spans (more than JUMP_Z robust σ of them and more than their JUMP_Q quantile), so noisy, wandering or
    bursty series learn no jumps.
    """
    jumps = np.full((len(deseason), 7), np.nan)
    if step >= DAY or len(t) < 2:
        return jumps
    span = _bucket(step, JUMP_SPAN)  # divides a day, so spans start at midnight
    block = t // span - t[0] // span
    cube, valid = _cube(deseason, block, int(block[-1]) + 1)
    level = np.where(valid >= max(1, span // step // 4), nanmedian(cube), np.nan)
    change = level[:, 1:] - level[:, :-1]  # change[:, i] happens at the start of block i + 1
    if not change.shape[1]:
        return jumps
    starts = (t[0] // span + 1 + np.arange(change.shape[1])) * span
    midnight = starts % DAY == 0
    weekday = (starts[midnight] // DAY + 3) % 7  # 1970-01-01 was a Thursday
    jumps = nanmedian(_cube(change[:, midnight], weekday, 7)[0])  # NaN for a weekday with no midnight
    ordinary = np.where(midnight, np.nan, change)
    bar = np.fmax(JUMP_Z * robust_sigma(ordinary), nanquantile(np.abs(ordinary), JUMP_Q))
    with np.errstate(invalid="ignore"):
        stands_out = np.abs(jumps) > bar[:, None]
    return np.where(np.isnan(jumps) | stands_out, jumps, 0.0)
