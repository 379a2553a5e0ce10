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


def robust_sigma(a: np.ndarray) -> np.ndarray:
    """A standard-deviation estimate that a minority of outliers cannot inflate.

    MAD-based. Where the MAD is 0 (a mostly-constant or integer series) it falls back to ever higher
    quantiles of the absolute deviation (75th, 90th, 99th), each scaled to σ for normal data, so a series
    that is flat except for rare steps still gets a finite, non-zero scale that one huge value can't blow up.
    The fallbacks are computed only for the rows that still need them.

    >>> robust_sigma(np.array([[1.0, 2.0, 3.0, 4.0, 100.0], [5.0, 5.0, 5.0, 5.0, 9.0]])).round(4).tolist()
    [1.4826, 1.4591]

    (the second row's deviations are 0, 0, 0, 0, 4: MAD and 75th percentile 0, 90th 2.4 → 2.4 / 1.6449)
    """
    center = nanmedian(a)
    dev = np.abs(a - center[..., None])
    sigma = np.asarray(MAD_TO_SIGMA * nanmedian(dev))
    rows, flat = dev.reshape(-1, dev.shape[-1]), sigma.reshape(-1)  # views
    # A NaN MAD means no deviation at all in the row: every quantile would be NaN too.
    need = np.flatnonzero(flat == 0)
    for q, z in ((0.75, 1.1503), (0.9, 1.6449), (0.99, 2.5758)):
        if not need.size:
            break
        fallback = nanquantile(rows[need], q) / z
        flat[need] = fallback
        need = need[~(fallback > 0)]
    return sigma


def nanquantile(a: np.ndarray, q: float) -> np.ndarray:
    """Quantile over the last axis ignoring NaN (linear interpolation); NaN where a row has no data.

    >>> nanquantile(np.array([[1.0, 2.0, np.nan, 3.0, 5.0]]), 0.5).tolist()
    [2.5]
    """
    s = np.sort(a, axis=-1)
    count = (~np.isnan(s)).sum(axis=-1)
    pos = q * np.clip(count - 1, 0, None)
    lo = np.floor(pos).astype(np.int64)[..., None]
    hi = np.ceil(pos).astype(np.int64)[..., None]
    frac = pos - np.floor(pos)
    with np.errstate(invalid="ignore"):
        low = np.take_along_axis(s, lo, axis=-1)[..., 0]
        high = np.take_along_axis(s, hi, axis=-1)[..., 0]
        out = low + frac * (high - low)
    return np.where(count > 0, out, np.nan)
