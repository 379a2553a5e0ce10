"""Turn a detector's (expected, scale) into the shared anomaly score and band.

Kept apart from detectors so every model's output means the same thing: `anomaly_score` 0 = as expected,
1 = exactly at the rule's threshold (the band edge), higher = further out. NaN in = NaN out: unknown is
never reported as normal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from exporter.detectors.base import Prediction


@dataclass(frozen=True)
class Scored:
    score: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.score, self.expected, self.lower, self.upper))


def calibrate(
    values: np.ndarray,
    prediction: Prediction,
    *,
    threshold: float,
    direction: str = "both",
    min_abs_deviation: float = 0.0,
    min_rel_deviation: float = 0.0,
) -> Scored:
    """Score `values` against the prediction.

    The band half-width is `threshold` robust standard deviations, widened to at least the rule's minimum
    absolute and relative deviation, so small wiggles on a quiet series never reach score 1. `direction`
    "up" only scores values above the band, "down" only below; the band itself is published either way.

    >>> p = Prediction(expected=np.array([[10.0]]), scale=np.array([[1.0]]))
    >>> calibrate(np.array([[14.0]]), p, threshold=4).score.tolist()
    [[1.0]]
    >>> calibrate(np.array([[6.0]]), p, threshold=4, direction="up").score.tolist()
    [[0.0]]
    """
    expected = prediction.expected
    with np.errstate(invalid="ignore", over="ignore"):
        half = np.maximum(threshold * prediction.scale, min_abs_deviation)
        half = np.maximum(half, min_rel_deviation * np.abs(expected))
        dev = values - expected
        if direction == "up":
            out = np.maximum(dev, 0.0)
        elif direction == "down":
            out = np.maximum(-dev, 0.0)
        elif direction == "both":
            out = np.abs(dev)
        else:
            raise ValueError(f"direction must be up, down or both (got {direction!r})")
        with np.errstate(divide="ignore"):
            score = out / half
    # 0/0 (a perfectly flat series exactly on its value) is "as expected"
    score = np.where((out == 0) & (half == 0), 0.0, score)
    if prediction.raw is not None:
        score = np.fmax(score, _raw_score(prediction, dev, direction, min_abs_deviation, min_rel_deviation))
    score = np.where(np.isnan(values) | np.isnan(half), np.nan, score)
    return Scored(score=score, expected=expected, lower=expected - half, upper=expected + half)


def _raw_score(p: Prediction, dev: np.ndarray, direction: str, min_abs: float, min_rel: float) -> np.ndarray:
    """A detector's own measure on the shared scale: 0 at its typical value, 1 at its threshold.

    Gated like the band: zero when the deviation points the wrong way for `direction`, and scaled down
    below the rule's minimum deviation so a quiet series cannot reach 1 on a tiny wiggle.
    """
    assert p.raw is not None and p.raw_center is not None and p.raw_threshold is not None
    center, threshold = p.raw_center[:, None], p.raw_threshold[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.maximum(p.raw - center, 0.0) / (threshold - center)
        if direction == "up":
            s = np.where(dev < 0, 0.0, s)
        elif direction == "down":
            s = np.where(dev > 0, 0.0, s)
        floor = np.maximum(min_abs, min_rel * np.abs(p.expected))
        s = np.where(floor > 0, s * np.minimum(np.abs(dev) / floor, 1.0), s)
    return s


def firing(score: np.ndarray, step: float, for_: float = 0.0, keep_firing_for: float = 0.0) -> np.ndarray:
    """Alert state per point, as Prometheus evaluates `anomaly_score >= 1` with `for` and `keep_firing_for`.

    `score` is (series, time) on a step grid. A point fires once the score has been >= 1 for at least
    `for_` seconds (the first breaching point counts as 0 s, like Prometheus' pending state), and keeps
    firing for `keep_firing_for` seconds after the score drops back (a missing score ends nothing early:
    it counts as not breaching). Vectorized over series; one pass over time.

    >>> firing(np.array([[0, 1, 1, 1, 0, 0.0]]), step=60, for_=60).astype(int).tolist()
    [[0, 0, 1, 1, 0, 0]]
    >>> firing(np.array([[0, 1, 0, 0, 0.0]]), step=60, keep_firing_for=120).astype(int).tolist()
    [[0, 1, 1, 1, 0]]
    """
    breach = np.nan_to_num(score, nan=0.0) >= 1.0
    n, n_t = breach.shape
    need = int(np.ceil(for_ / step - 1e-9))  # consecutive breaching points before firing, beyond the first
    keep = int(np.floor(keep_firing_for / step + 1e-9))
    run = np.zeros(n, dtype=np.int64)  # consecutive breaching points so far
    since = np.full(n, 1 << 40, dtype=np.int64)  # points since the alert last fired while breaching
    out = np.zeros((n, n_t), dtype=bool)
    for j in range(n_t):
        run = np.where(breach[:, j], run + 1, 0)
        active = run > need
        since = np.where(active, 0, since + 1)
        out[:, j] = active | (since <= keep)
    return out
