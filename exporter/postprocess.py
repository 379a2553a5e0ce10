"""Turn a detector's (expected, scale) into the shared anomaly score and band.

Kept apart from detectors so every model's output means the same thing: `anomaly_score` 0 = as expected,
1 = exactly at the rule's threshold (the band edge), higher = further out. NaN in = NaN out: unknown is
never reported as normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exporter.detectors.base import Prediction


@dataclass(frozen=True)
class Scored:
    score: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


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
    score = np.where(np.isnan(values) | np.isnan(half), np.nan, score)
    return Scored(score=score, expected=expected, lower=expected - half, upper=expected + half)
