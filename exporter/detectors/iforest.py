"""IsolationForest over the seasonal baseline's residual and its recent context.

The baseline says what is expected; the forest judges how unusual the recent shape of the deviation is
(a burst of small deviations, a variance change, a drift) — things a per-point band misses. By default one
forest per rule, pooled over all its series on normalized features, so a series that appears later is
scored at once without a refit of its own. Scores keep scikit-learn's sign convention flipped once, here:
`raw` is higher for more anomalous points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Self

import numpy as np
from sklearn.ensemble import IsolationForest

from exporter.detectors.base import Detector, Prediction
from exporter.detectors.seasonal import SeasonalBaseline, finite
from exporter.frame import Window

if TYPE_CHECKING:
    from exporter.reader import SeriesKey

DAY = 86400
_FIT_CELLS = 2_000_000  # series × columns whose features a pooled forest is fitted on (bounds memory)
# Residuals are capped here before the running sums of the rolling statistics: one residual of 1e9σ (a
# bad sample on a quiet series) left ~1e18 in the running sum of squares, whose rounding spoiled the
# spread of every later window (1e160 made it NaN). One capped value still puts any window's mean and
# spread beyond the features' clip of 50 (1e4 / 60 points > 50), with sums small enough to stay exact.
_Z_CAP = 1e4


def _trailing(z: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the last `w` columns (inclusive) per column, ignoring NaN."""
    valid = ~np.isnan(z)
    z0 = np.where(valid, z, 0.0)
    pad = np.zeros((z.shape[0], 1))
    s1 = np.concatenate([pad, np.cumsum(z0, axis=1)], axis=1)
    s2 = np.concatenate([pad, np.cumsum(z0 * z0, axis=1)], axis=1)
    cnt = np.concatenate([pad, np.cumsum(valid, axis=1)], axis=1)
    hi = np.arange(1, z.shape[1] + 1)
    lo = np.maximum(0, hi - w)
    n = cnt[:, hi] - cnt[:, lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (s1[:, hi] - s1[:, lo]) / n
        var = (s2[:, hi] - s2[:, lo]) / n - mean * mean
    enough = n >= max(1, w // 3)
    return np.where(enough, mean, np.nan), np.where(enough, np.sqrt(np.maximum(var, 0.0)), np.nan)


def features(z: np.ndarray, t: np.ndarray, windows: tuple[int, ...]) -> np.ndarray:
    """Per (series, column) feature vectors, shape (n, T, F): the residual, its trailing means and spreads,
    its change since the previous point, and the time of day."""
    n, n_t = z.shape
    cols = [np.clip(z, -50, 50)]
    capped = np.clip(z, -_Z_CAP, _Z_CAP)
    for w in windows:
        mean, std = _trailing(capped, w)
        cols += [np.clip(mean, -50, 50), np.clip(std, 0, 50)]
    diff = np.full_like(z, np.nan)
    diff[:, 1:] = z[:, 1:] - z[:, :-1]
    cols.append(np.clip(diff, -50, 50))
    # Time of day only: a forest trained on recent days has never seen most positions in the week, and
    # would call every new weekday anomalous.
    angle = 2 * np.pi * (t % DAY) / DAY
    cols += [np.broadcast_to(np.sin(angle), (n, n_t)), np.broadcast_to(np.cos(angle), (n, n_t))]
    return np.stack(cols, axis=-1)


class IsolationForestDetector(Detector):
    """Seasonal baseline for expected value and band, plus an IsolationForest score of the residual context.

    Parameters
    ----------
    baseline : the SeasonalBaseline (unfitted) that provides expected values and residuals.
    contamination : share of calibration points whose forest score reaches `raw_threshold` before the
        margin; with the margin, far fewer live points reach anomaly score 1.
    margin : how far beyond that quantile score 1 lies, in units of the quantile's distance from the
        median forest score (0 = at the quantile).
    per_series : fit one forest per series instead of one pooled forest.
    windows : trailing window lengths (in points) for the residual's rolling statistics.
    n_estimators, max_samples, train_rows, random_state : forest size, and how many training rows are
        sampled (fixed seed: the same data gives the same scores).
    """

    baseline_: SeasonalBaseline
    forests_: list[IsolationForest | None]
    forest_time_: int
    center_: np.ndarray
    threshold_: np.ndarray

    def __init__(
        self,
        baseline: SeasonalBaseline | None = None,
        contamination: float = 0.001,
        margin: float = 0.5,
        per_series: bool = False,
        windows: tuple[int, ...] = (5, 15, 60),
        n_estimators: int = 100,
        max_samples: int = 256,
        train_rows: int = 50_000,
        random_state: int = 0,
    ) -> None:
        self.baseline = baseline
        self.contamination = contamination
        self.margin = margin
        self.per_series = per_series
        self.windows = windows
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.train_rows = train_rows
        self.random_state = random_state

    def fit(
        self,
        window: Window,
        reuse: IsolationForestDetector | None = None,
        previous: IsolationForestDetector | None = None,
    ) -> Self:
        """Fit the baseline, then the forest — or, with `reuse` (a fitted pooled detector), keep its forest
        and calibration and refit only the cheap baseline: the forest judges residual shapes, which change
        far more slowly than levels and profiles. `previous` (the detector fitted before) lends its
        baseline what this window cannot show (see SeasonalBaseline.fit)."""
        base = self.baseline if self.baseline is not None else SeasonalBaseline()
        self.baseline_ = base.fit(window, previous=previous.baseline_ if previous is not None else None)
        self.keys_ = self.baseline_.keys_
        n = len(window.keys)
        if reuse is not None and not self.per_series and not reuse.per_series:
            self.forests_ = reuse.forests_
            self.forest_time_ = reuse.forest_time_
            self.center_ = np.full(n, reuse.center_[0] if len(reuse.center_) else np.nan)
            self.threshold_ = np.full(n, reuse.threshold_[0] if len(reuse.threshold_) else np.nan)
            return self
        self.forest_time_ = int(window.timestamps[-1]) if len(window.timestamps) else 0
        # Residuals computed exactly as they will be when scoring (trailing level, per-hour scale), over
        # the last two days of the window. The forest learns from the older day and is calibrated on the
        # newest one, which it has not seen: live points come from a day it has not seen either, and a
        # forest scores its own training trajectory (each point next to its neighbouring minutes) as more
        # normal than any other day.
        n_t = len(window.timestamps)
        ctx = max(self.windows)
        per_day = DAY // max(1, window.step)
        span = np.arange(max(0, n_t - ctx - 2 * per_day), n_t)
        rng = np.random.default_rng(self.random_state)
        if not self.per_series and n * len(span) > _FIT_CELLS:  # a pooled forest needs a sample, not all
            sample = np.sort(rng.choice(n, max(1, _FIT_CELLS // len(span)), replace=False))
            window = window.subset(sample)
        p = self.baseline_.predict(window, span)
        z = (finite(window.cols(span)) - p.expected) / p.scale
        feats = features(z, window.timestamps[span], self.windows)[:, ctx:]
        split = max(feats.shape[1] - per_day, feats.shape[1] // 2)
        self.center_ = np.full(n, np.nan)
        self.threshold_ = np.full(n, np.nan)
        if self.per_series:
            self.forests_ = []
            for i in range(n):
                forest, center, thr = self._fit_rows(feats[i, :split], feats[i, split:], rng)
                self.forests_.append(forest)
                self.center_[i], self.threshold_[i] = center, thr
        else:
            width = feats.shape[-1]
            forest, center, thr = self._fit_rows(
                feats[:, :split].reshape(-1, width), feats[:, split:].reshape(-1, width), rng
            )
            self.forests_ = [forest]
            self.center_[:], self.threshold_[:] = center, thr
        return self

    def fitted_state(self) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        """The baseline's state only: a forest cannot be saved without pickle. A restored detector judges by
        the band until its next fit grows new forests."""
        return self.baseline_.fitted_state()

    def restore_state(
        self, keys: Sequence[SeriesKey], scalars: dict[str, int], arrays: dict[str, np.ndarray]
    ) -> Self:
        base = self.baseline if self.baseline is not None else SeasonalBaseline()
        self.baseline_ = base.restore_state(keys, scalars, arrays)
        self.keys_ = self.baseline_.keys_
        n = len(keys)
        self.forests_ = [None] * (n if self.per_series else 1)
        self.forest_time_ = -(1 << 62)  # long ago: the next fit grows forests
        self.center_ = np.full(n, np.nan)
        self.threshold_ = np.full(n, np.nan)
        return self

    def _fit_rows(
        self, train: np.ndarray, calib: np.ndarray, rng: np.random.Generator
    ) -> tuple[IsolationForest | None, float, float]:
        train = self._usable(train, rng)
        calib = self._usable(calib, rng)
        if len(train) < 50 or len(calib) < 50:  # too little history for a forest: the band alone judges
            return None, np.nan, np.nan
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(train)),
            random_state=self.random_state,
        ).fit(train)
        raw = -forest.score_samples(calib)
        center = float(np.median(raw))
        # The (1 - contamination) quantile of one day is noisy, and a new day is always a little more
        # novel to the forest than the calibration day: widen by `margin` times its distance from typical.
        quantile = float(np.quantile(raw, 1.0 - self.contamination))
        threshold = quantile + self.margin * (quantile - center)
        return forest, center, max(threshold, center + 1e-6)

    def _usable(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Complete feature rows, at most `train_rows` of them (a fixed-seed sample)."""
        rows = rows[np.isfinite(rows).all(axis=1)]
        if len(rows) > self.train_rows:
            rows = rows[rng.choice(len(rows), self.train_rows, replace=False)]
        return rows

    def predict(self, window: Window, columns: np.ndarray) -> Prediction:
        columns = np.asarray(columns, dtype=np.int64)
        rows = self._fitted_rows(window.keys)
        n, k = len(window.keys), len(columns)
        if k == 0 or not len(self.center_):  # nothing asked, or fitted on no series: the baseline's NaN
            return self.baseline_.predict(window, columns)
        # one baseline prediction over the asked columns and the trailing context their features need
        ctx = max(self.windows)
        lo = max(0, int(columns.min()) - ctx + 1)
        span = np.arange(lo, int(columns.max()) + 1)
        p = self.baseline_.predict(window, span)
        z = (finite(window.cols(span)) - p.expected) / p.scale
        feats = features(z, window.timestamps[span], self.windows)[:, columns - lo]
        raw = np.full((n, k), np.nan)
        for i, forest in enumerate(self.forests_):
            if forest is None:
                continue
            which = np.arange(n) if not self.per_series else np.flatnonzero(rows == i)
            block = feats[which].reshape(-1, feats.shape[-1])
            ok = np.isfinite(block).all(axis=1)
            scores = np.full(len(block), np.nan)
            if ok.any():
                scores[ok] = -forest.score_samples(block[ok])
            raw[which] = scores.reshape(len(which), k)
        expected, scale = p.expected[:, columns - lo], p.scale[:, columns - lo]
        known = rows >= 0
        r = np.where(known, rows, 0)
        center = np.where(known, self.center_[r], np.nan)
        threshold = np.where(known, self.threshold_[r], np.nan)
        return Prediction(expected, scale, raw=raw, raw_center=center, raw_threshold=threshold)
