"""Time exporter.detectors.robust against the sort-based implementation it replaced, and the seasonal fit.

    python benchmarks/robust_stats.py [--runs 7] [--series 1000] [--no-fit]

The shapes are those the seasonal fit hands these functions for 7 days at 1 minute (10,080 columns), in its
chunks of about 400 series: rows (400, 10080) and (series, slot, sample) cubes (400, 288, 35) for the
daily profile, (400, 24, 420) for the hourly noise scale, (400, 84, 120) for the midnight jumps, each cube
both as the fit lays it out in memory ("fit": built by seasonal._cube, series axis fastest) and C-ordered.
Data: N(0, 1) with 1 % NaN, as float64 (and float32 for the rows). Each cell is the median of --runs runs.
"before" is the old implementation, kept below verbatim for the comparison; the table also checks that
old and new agree (medians exactly; quantiles to a few ulp, as the old interpolation rounded differently).

The last part times SeasonalBaseline().fit on --series synthetic daily-seasonal series (7 days at 1
minute), once with the old functions patched in and once with the new ones, runs alternating.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from exporter.detectors import robust, seasonal
from exporter.frame import Window

DAY, STEP = 86400, 60


# -- the implementation before (commit 2f3e627), verbatim apart from the names -----------------------------
def old_nanmedian(a: np.ndarray) -> np.ndarray:
    s = np.sort(a, axis=-1)
    count = (~np.isnan(s)).sum(axis=-1)
    lo = np.clip((count - 1) // 2, 0, None)[..., None]
    hi = np.clip(count // 2, 0, None)[..., None]
    with np.errstate(invalid="ignore"):
        med = 0.5 * (np.take_along_axis(s, lo, axis=-1) + np.take_along_axis(s, hi, axis=-1))[..., 0]
    return np.where(count > 0, med, np.nan)


def old_robust_sigma(a: np.ndarray) -> np.ndarray:
    center = old_nanmedian(a)
    dev = np.abs(a - center[..., None])
    sigma = robust.MAD_TO_SIGMA * old_nanmedian(dev)
    for q, z in ((0.75, 1.1503), (0.9, 1.6449), (0.99, 2.5758)):
        sigma = np.where(sigma > 0, sigma, old_nanquantile(dev, q) / z)
    return sigma


def old_nanquantile(a: np.ndarray, q: float) -> np.ndarray:
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


# -- timing --------------------------------------------------------------------------------------------
def best_of(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of `runs` calls, in milliseconds."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def data(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a: np.ndarray = rng.normal(size=shape).astype(dtype)
    a[rng.random(shape) < 0.01] = np.nan
    return a


def fit_cube(values: np.ndarray, slot_seconds: int, period: int) -> np.ndarray:
    """A (series, slot, sample) cube built the way the seasonal fit builds them (seasonal._cube: fancy
    indexing, so the series axis varies fastest in memory), from 1-minute columns."""
    t = STEP * np.arange(values.shape[1], dtype=np.int64)
    slots = (t % period) // slot_seconds
    return seasonal._cube(values, slots, int(slots.max()) + 1)[0]


def micro(runs: int) -> None:
    rows64 = data((400, 10080), np.float64)
    cases = [
        ("400x10080", rows64),
        ("400x10080", data((400, 10080), np.float32)),
        ("400x288x35 fit", fit_cube(rows64, 300, DAY)),  # 5-minute profile slots of the day
        ("400x288x35 C", data((400, 288, 35), np.float64)),
        ("400x24x420 fit", fit_cube(rows64, 3600, DAY)),  # hour of the day (noise scale)
        ("400x24x420 C", data((400, 24, 420), np.float64)),
        ("400x84x120 fit", fit_cube(rows64, 7200, 7 * DAY)),  # 2-hour spans (midnight jumps)
        ("400x84x120 C", data((400, 84, 120), np.float64)),
    ]
    funcs: list[tuple[str, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = [
        ("nanmedian", old_nanmedian, robust.nanmedian),
        ("nanquantile 0.99", lambda a: old_nanquantile(a, 0.99), lambda a: robust.nanquantile(a, 0.99)),
        ("robust_sigma", old_robust_sigma, robust.robust_sigma),
    ]
    print(f"{'function':<18} {'shape, layout':<16} {'dtype':<8} {'before ms':>10} {'after ms':>9}", end="")
    print(f" {'speed-up':>8}  agree")
    for label, a in cases:
        for name, old, new in funcs:
            with np.errstate(all="ignore"):
                before, after = old(a), new(a)
                exact = np.array_equal(before, after, equal_nan=True)
                agree = "exact" if exact else f"max rel diff {np.nanmax(np.abs(after / before - 1)):.1e}"
            t_old, t_new = best_of(partial(old, a), runs), best_of(partial(new, a), runs)
            print(
                f"{name:<18} {label:<16} {a.dtype.name:<8} "
                f"{t_old:>10.1f} {t_new:>9.1f} {t_old / t_new:>7.2f}x  {agree}"
            )


# -- end to end ----------------------------------------------------------------------------------------
def synthetic_window(n: int, seed: int = 0) -> Window:
    """n daily-seasonal series, 7 days at 1 minute, amplitudes and noise differing per series, 0.5 % NaN."""
    rng = np.random.default_rng(seed)
    t = 1_750_000_000 // DAY * DAY + STEP * np.arange(7 * DAY // STEP, dtype=np.int64)
    daily = np.sin(2 * np.pi * (t % DAY) / DAY)
    x = rng.uniform(10, 1000, (n, 1)) * (1 + rng.uniform(0.1, 0.8, (n, 1)) * daily)
    x += rng.normal(0, 1, x.shape) * rng.uniform(0.5, 20, (n, 1))
    x[rng.random(x.shape) < 0.005] = np.nan
    return Window([(("series", str(i)),) for i in range(n)], t, x)


@contextmanager
def patched(old: bool) -> Iterator[None]:
    """Point the seasonal module at the old functions (or leave the new ones)."""
    saved = (seasonal.nanmedian, seasonal.nanquantile, seasonal.robust_sigma)
    if old:
        seasonal.nanmedian, seasonal.nanquantile, seasonal.robust_sigma = (
            old_nanmedian,
            old_nanquantile,
            old_robust_sigma,
        )
    try:
        yield
    finally:
        seasonal.nanmedian, seasonal.nanquantile, seasonal.robust_sigma = saved


def end_to_end(series: int, runs: int) -> None:
    window = synthetic_window(series)
    times: dict[bool, list[float]] = {True: [], False: []}
    models = {}
    for _ in range(runs):
        for old in (True, False):
            with patched(old):
                started = time.perf_counter()
                models[old] = seasonal.SeasonalBaseline().fit(window)
                times[old].append(time.perf_counter() - started)
    before, after = statistics.median(times[True]), statistics.median(times[False])
    same = all(
        np.array_equal(getattr(models[True], f), getattr(models[False], f), equal_nan=True)
        for f in ("profile_", "sigma_", "scale_", "level_", "jumps_", "period_")
    )
    print(
        f"\nSeasonalBaseline().fit, {series} series x {window.values.shape[1]} points, median of {runs}: "
        f"before {before:.2f} s, after {after:.2f} s ({before / after:.2f}x); fitted state identical: {same}"
    )
    if not same:
        for f in ("profile_", "sigma_", "scale_", "level_", "jumps_", "period_"):
            b, a = getattr(models[True], f), getattr(models[False], f)
            if not np.array_equal(b, a, equal_nan=True):
                with np.errstate(all="ignore"):
                    rel = np.nanmax(np.abs(a / b - 1)) if b.dtype.kind == "f" else float("nan")
                print(f"  {f}: {int((b != a).sum())} cells differ, max relative difference {rel:.1e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--no-fit", action="store_true", help="skip the end-to-end SeasonalBaseline fit")
    args = parser.parse_args()
    print(f"numpy {np.__version__}, median of {args.runs} runs")
    micro(args.runs)
    if not args.no_fit:
        end_to_end(args.series, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
