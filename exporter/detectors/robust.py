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
when the last axis is short or the array has more than two dimensions. These select the order statistics
every row needs in a few C-level passes instead:

* rows of at least PARTITION_MIN values: one np.partition with a single kth (numpy's SIMD quickselect;
  several kth fall back to a scalar introselect several times slower). The NaNs of a row are replaced by
  -inf and +inf in the proportion that puts the wanted value at the same position P in every row (a row
  with k NaNs whose lower value has rank r among its valid values gets P - r of its NaNs as -inf, the rest
  +inf), and the next value up, where interpolation needs it, is the minimum to the right of P. Rows with
  many NaNs or ties, where that loses to sorting, are sorted instead (_worth_partitioning);
* shorter rows: np.sort (NaN sorts last), as fast as the selection there, and a gather at per-row ranks.

Arrays laid out with their last axis not contiguous (the seasonal fit's cubes, gathered by fancy indexing,
have the series axis fastest) are first copied into rows in memory order (_rows), which numpy's sort
along such an axis does not do.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD × this estimates the standard deviation of normal data
# Last-axis length from which partitioning beats sorting (benchmarks/robust_stats.py --sweep): both are
# SIMD in numpy 2 (x86-simd-sort), so with its NaN handling the selection only wins on long rows.
PARTITION_MIN = 4096
TIE_SAMPLE = 128  # columns sampled per row to spot NaNs and ties (see _worth_partitioning)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
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
    (0-based, ascending; the second equal to the first or one more), and that count. Garbage where the
    count is 0. `owned`: x may be overwritten."""
    rows, n = x.shape
    low, high = np.empty(rows, x.dtype), np.empty(rows, x.dtype)
    count = np.empty(rows, dtype=np.int64)
    fast = _worth_partitioning(x) if n >= PARTITION_MIN and rows else np.zeros(rows, dtype=bool)
    part = np.flatnonzero(fast)
    if part.size:
        sub = x if part.size == rows else x[part]
        nan_at = np.flatnonzero(np.isnan(sub))  # few: rows with many NaNs are sorted
        nan_row = nan_at // n
        k = np.bincount(nan_row, minlength=part.size)
        lo, hi = ranks(n - k)
        p = int(ranks(np.array([n]))[0][0])  # the lower rank in a row without NaN: the one kth
        minus = p - lo  # NaNs of the row to fill with -inf; in [0, k] as ranks grow with the count
        if ((minus >= 0) & (minus <= k)).all():  # (float rounding of q·(count - 1) could break that)
            owns = owned or part.size < rows
            low[part], high[part] = _by_partition(sub, owns, (nan_at, nan_row, k), minus, hi > lo, p)
            count[part] = n - k
        else:
            part = part[:0]
    if part.size < rows:
        rest = np.flatnonzero(~fast) if part.size else np.arange(rows)
        s = (x if owned else x.copy()) if rest.size == rows else x[rest]
        s.sort(axis=1)  # NaN last, so the valid values come first in every row
        count[rest] = c = _sorted_counts(s)
        lo, hi = ranks(c)
        low[rest], high[rest] = _gather(s, lo), _gather(s, hi)
    return low, high, count


def _worth_partitioning(x: np.ndarray) -> np.ndarray:
    """Rows where a partition should beat a sort, judged on a sample of TIE_SAMPLE columns: at most 1/32
    NaN (each NaN to fill costs several values partitioned) and under 1/16 ties (numpy's SIMD quickselect
    slows down several-fold when many values equal the one selected, as in a mostly-flat series or a MAD
    of 0, while sorting gets faster with ties)."""
    n = x.shape[1]
    # golden-ratio (Weyl) spaced columns: spread over the row yet aligned with no period of the data
    cols = np.unique((np.arange(min(n, TIE_SAMPLE)) * _GOLDEN % 1.0 * n).astype(np.intp))
    sample = np.sort(np.take(x, cols, axis=1), axis=1)
    size = len(cols)
    nans = np.count_nonzero(np.isnan(sample), axis=1)
    ties = np.count_nonzero(sample[:, 1:] == sample[:, :-1], axis=1)
    return (32 * nans <= size) & (16 * ties < size)


def _by_partition(
    x: np.ndarray,
    owned: bool,
    nans: tuple[np.ndarray, np.ndarray, np.ndarray],
    minus: np.ndarray,
    step_up: np.ndarray,
    p: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Values of sorted rank p and p + 1 (where step_up; else p again) of every row once `minus` of the
    row's NaNs are -inf and the others +inf. `nans`: the NaNs' flat indices, their rows, the count per row."""
    filled = x if owned else np.array(x, order="C")
    nan_at, nan_row, k = nans
    if nan_at.size:
        rank = np.arange(nan_at.size) - (np.cumsum(k) - k)[nan_row]  # of each NaN within its row
        filled.reshape(-1)[nan_at] = np.where(rank < minus[nan_row], -np.inf, np.inf)
    filled.partition(p, axis=1)
    low = filled[:, p].copy()
    if p + 1 < x.shape[1] and step_up.any():
        # the next value up is the smallest right of p: a real value wherever step_up (a +inf fill only
        # in rows whose wanted ranks are both p)
        return low, np.where(step_up, filled[:, p + 1 :].min(axis=1), low)
    return low, low


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
