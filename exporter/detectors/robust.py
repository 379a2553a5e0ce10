"""Vectorized robust statistics over the last axis, NaN-aware (NaN = missing, ignored).

Each row (1-D slice along the last axis) gives what numpy gives for that row alone: `nanmedian` is
`np.nanmedian(row)` and `nanquantile` is `np.nanquantile(row, q)` (method "linear", numpy's interpolation
formula), bit for bit apart from the sign of a zero. A row with no data (all NaN, or an empty last axis)
gives NaN, silently. float32 and float64 input keep their dtype, as numpy does with a Python float `q`
(nanquantile and robust_sigma used to return float64 for float32 input); any other dtype is computed as
float64. Compared with the sort-based versions before, medians are identical except that a single middle
value is taken as is rather than as (x + x) / 2, which overflowed beyond half the float range; quantiles
may differ in the last bit where the interpolation weight is >= 0.5 (numpy's lerp, now followed exactly).

numpy's own functions are slow here: nanmedian/nanquantile loop in Python over rows (or use masked arrays)
when the last axis is short or the array has more than two dimensions. These sort every row once (NaN
sorts last), count each row's valid values (only rows that end in NaN need counting) and gather the
order statistics at per-row ranks.

Arrays laid out with their last axis not contiguous (the seasonal fit's cubes, gathered by fancy indexing,
have the series axis fastest) are first copied into rows in memory order (_rows), which numpy's sort
along such an axis does not do.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD × this estimates the standard deviation of normal data
_FALLBACKS = ((0.75, 1.1503), (0.9, 1.6449), (0.99, 2.5758))  # robust_sigma's (quantile, its z for normal)


def nanmedian(a: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN; NaN where a row has no data.

    Per row exactly numpy's median of the valid values: the middle one, or the mean of the middle two
    ((x + y) / 2, so two values over half the float range overflow to ±inf as in numpy).

    >>> nanmedian(np.array([[1.0, np.nan, 3.0, 2.0], [np.nan, np.nan, np.nan, np.nan]])).tolist()
    [2.0, nan]
    >>> m = nanmedian(np.array([[4.0, 1.0, np.nan, 2.0], [np.inf, 0.0, np.nan, np.nan]], dtype=np.float32))
    >>> m.dtype.name, m.tolist()
    ('float32', [2.0, inf])
    >>> nanmedian(np.empty((2, 0))).tolist()
    [nan, nan]
    """
    x, owned, restore = _rows(a)
    return restore(_median_rows(x, owned))


def nanquantile(a: np.ndarray, q: float) -> np.ndarray:
    """Quantile over the last axis ignoring NaN (linear interpolation); NaN where a row has no data.

    Per row exactly `np.nanquantile(row, q, method="linear")`: with v the sorted valid values and
    q·(len(v) - 1) = i + g, the result is v[i] + (v[i+1] - v[i])·g, computed as
    v[i+1] - (v[i+1] - v[i])·(1 - g) when g >= 0.5 (numpy's lerp). Like numpy, an interpolation that
    touches ±inf can give NaN (inf - inf, or inf·0), and an integer q (0 or 1) takes the smallest or
    largest value without interpolating.

    >>> nanquantile(np.array([[1.0, 2.0, np.nan, 3.0, 5.0]]), 0.5).tolist()
    [2.5]
    >>> nanquantile(np.array([[0.0, 10.0, np.nan], [np.nan, np.nan, np.nan]]), 0.99).tolist()
    [9.9, nan]
    """
    exact = isinstance(q, int | np.integer)  # 0 or 1: numpy takes that value, no interpolation
    q = float(q)  # a Python float: numpy's weak-scalar rules keep float32 input float32
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1] (got {q})")
    x, owned, restore = _rows(a)
    return restore(_quantile_rows(x, q, owned, exact))


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
    x, _, restore = _rows(a)
    center = _median_rows(x, owned=False)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN where x is (or is ±inf at a center of that inf)
        sigma = MAD_TO_SIGMA * _median_rows(np.abs(x - center[:, None]), owned=True)
    # A NaN MAD means no deviation at all in the row: every quantile would be NaN too.
    need = np.flatnonzero(sigma == 0)
    for q, z in _FALLBACKS:
        if not need.size:
            break
        with np.errstate(invalid="ignore"):
            dev = np.abs(x[need] - center[need, None])
        fallback = _quantile_rows(dev, q, owned=True) / z
        sigma[need] = fallback
        need = need[~(fallback > 0)]
    return restore(sigma)


# -- per-row order statistics on (rows, n) arrays ---------------------------------------------------------
Ranks = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # valid count per row -> the two ranks wanted


def _rows(a: np.ndarray) -> tuple[np.ndarray, bool, Callable[[np.ndarray], np.ndarray]]:
    """`a` as a (rows, n) float32/float64 array with contiguous rows, whether that is a fresh C-ordered
    copy the caller may overwrite, and the function that puts one value per row back into a's shape.

    Rows are enumerated in a's memory order (its leading axes by decreasing stride), so the copy of a
    (series, slot, sample) cube whose series axis varies fastest, as the seasonal fit builds them, reads
    memory in order; a last axis that is not contiguous is transposed tile by tile. Either way is several
    times faster than numpy's copy (or sort) in C order."""
    arr = np.asarray(a)
    if arr.ndim == 0:
        raise ValueError("need at least one dimension (the axis reduced)")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    lead = sorted(range(arr.ndim - 1), key=lambda i: -abs(arr.strides[i]))
    view = arr.transpose(*lead, arr.ndim - 1)
    x = view.reshape(math.prod(view.shape[:-1]), view.shape[-1])
    if x.size and x.shape[1] > 1 and x.strides[1] != x.itemsize:
        x = _tiled_copy(x)
    owned = not np.may_share_memory(x, a)
    if owned and not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    shape, back = view.shape[:-1], np.argsort(lead)

    def restore(values: np.ndarray) -> np.ndarray:
        values = values.reshape(shape)
        return values if lead == sorted(lead) else values.transpose(back).copy()

    return x, owned, restore


def _tiled_copy(x: np.ndarray) -> np.ndarray:
    """C-ordered copy of a 2-D array whose rows are strided, column tiles of about 1 MiB at a time."""
    out = np.empty(x.shape, dtype=x.dtype)
    step = max(1, (1 << 20) // (x.shape[0] * x.itemsize))
    for j in range(0, x.shape[1], step):
        out[:, j : j + step] = x[:, j : j + step]
    return out


def _median_ranks(count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum((count - 1) // 2, 0), count // 2


def _median_rows(x: np.ndarray, owned: bool) -> np.ndarray:
    if not x.shape[1]:
        return np.full(x.shape[0], np.nan, dtype=x.dtype)
    low, high, count = _select(x, owned, _median_ranks)
    lo, hi = _median_ranks(count)
    with np.errstate(invalid="ignore", over="ignore"):  # -inf + inf, or two huge values
        med = np.where(hi > lo, (low + high) * 0.5, low)
    med[count == 0] = np.nan
    return med


def _quantile_rows(x: np.ndarray, q: float, owned: bool, exact: bool = False) -> np.ndarray:
    if not x.shape[1]:
        return np.full(x.shape[0], np.nan, dtype=x.dtype)
    if exact:  # q is 0 or 1: the lower rank is the wanted one
        low, _, count = _select(x, owned, lambda c: (_linear_ranks(c, q)[0],) * 2)
        low[count == 0] = np.nan
        return low
    low, high, count = _select(x, owned, lambda c: _linear_ranks(c, q)[:2])
    gamma = _linear_ranks(count, q)[2]
    # numpy's _lerp with a weak (Python float) gamma: the products are done in the data's dtype
    g, one_minus_g = gamma.astype(x.dtype), (1.0 - gamma).astype(x.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = high - low
        out = np.where(gamma >= 0.5, high - diff * one_minus_g, low + diff * g)
    out[count == 0] = np.nan
    return out


def _linear_ranks(count: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy's "linear" method (_get_indexes/_get_gamma) per row of `count` valid values: the ranks of the
    two values interpolated between and the weight of the upper one. At or past the last value numpy takes
    the last value twice with gamma = index + 1 (its index -1 subtracted); that is kept, as it decides
    between a + d·g and b - d·(1 - g)."""
    last = np.maximum(count - 1, 0)
    virtual = (count - 1) * q
    floor = np.floor(virtual)
    above = virtual >= count - 1
    lo = np.where(above, last, floor.astype(np.int64))
    hi = np.where(above, last, lo + 1)
    gamma = np.where(above, virtual + 1.0, virtual - floor)
    return np.maximum(lo, 0), np.maximum(hi, 0), gamma


def _select(x: np.ndarray, owned: bool, ranks: Ranks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of x (n >= 1), the valid values of the two ranks `ranks` gives for the row's valid count
    (0-based, ascending), and that count. Garbage where the count is 0. `owned`: x may be overwritten."""
    s = x if owned else x.copy()
    s.sort(axis=1)  # NaN last, so the valid values come first in every row
    count = _sorted_counts(s)
    lo, hi = ranks(count)
    return _gather(s, lo), _gather(s, hi), count


def _sorted_counts(s: np.ndarray) -> np.ndarray:
    """Valid values per row of a row-sorted (NaN last) C-ordered array. Only rows that end in NaN need
    counting: short rows count their NaNs (a uint8 einsum, several times faster than a sum or
    count_nonzero along a short axis), long rows bisect for their first NaN."""
    rows, n = s.shape
    count = np.full(rows, n, dtype=np.int64)
    ends_nan = np.flatnonzero(np.isnan(s[:, -1]))
    if not ends_nan.size:
        return count
    if n <= 255:  # the uint8 count cannot wrap
        return n - np.einsum("ij->i", np.isnan(s).view(np.uint8)).astype(np.int64)
    flat, base = s.reshape(-1), ends_nan * n
    lo, hi = np.zeros(ends_nan.size, dtype=np.int64), np.full(ends_nan.size, n - 1, dtype=np.int64)
    while (lo < hi).any():  # the first NaN is within [lo, hi]
        mid = (lo + hi) // 2
        nan = np.isnan(flat[base + mid])
        lo, hi = np.where(nan, lo, mid + 1), np.where(nan, mid, hi)
    count[ends_nan] = lo
    return count


def _gather(s: np.ndarray, rank: np.ndarray) -> np.ndarray:
    rows, n = s.shape
    return s.reshape(-1)[np.arange(rows) * n + np.minimum(rank, n - 1)]
