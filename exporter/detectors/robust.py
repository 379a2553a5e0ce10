"""Vectorized robust statistics over the last axis, NaN-aware (NaN = missing, ignored)."""

from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD × this estimates the standard deviation of normal data


def nanmedian(a: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN; NaN where a row has no data.

    Sort-based (NaN sorts last), so it stays one C-level pass even for (series, slot, sample) cubes where
    np.nanmedian falls back to slow masked-array code.

    >>> nanmedian(np.array([[1.0, np.nan, 3.0, 2.0], [np.nan, np.nan, np.nan, np.nan]])).tolist()
    [2.0, nan]
    """
    s = np.sort(a, axis=-1)
    count = (~np.isnan(s)).sum(axis=-1)
    lo = np.clip((count - 1) // 2, 0, None)[..., None]
    hi = np.clip(count // 2, 0, None)[..., None]
    with np.errstate(invalid="ignore"):
        med = 0.5 * (np.take_along_axis(s, lo, axis=-1) + np.take_along_axis(s, hi, axis=-1))[..., 0]
    return np.where(count > 0, med, np.nan)


def nanmad(a: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Median absolute deviation over the last axis (not scaled), ignoring NaN."""
    if center is None:
        center = nanmedian(a)
    return nanmedian(np.abs(a - center[..., None]))


def robust_sigma(a: np.ndarray) -> np.ndarray:
    """A standard-deviation estimate that a minority of outliers cannot inflate.

    MAD-based; where MAD is 0 (mostly-constant or integer series) falls back to the mean absolute deviation
    from the median, so a series that is flat except for rare steps still gets a finite, non-zero scale.
    """
    center = nanmedian(a)
    dev = np.abs(a - center[..., None])
    sigma = MAD_TO_SIGMA * nanmedian(dev)
    count = (~np.isnan(dev)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # E|x - mu| = sigma * sqrt(2/pi) for normal data
        mean_abs = 1.2533 * np.where(np.isnan(dev), 0.0, dev).sum(axis=-1) / count
    return np.where(sigma > 0, sigma, mean_abs)
