"""Labelled synthetic Prometheus-style series for the detection-quality harness.

Each scenario is one 1-minute series with daily and weekly seasonality and noise shaped like a real metric
(request rate, CPU ratio, latency, low-count error rate), with at most one injected anomaly, always in the
last 40 % so detectors get clean history first. A window is an inclusive [start, end] in epoch seconds
covering the anomaly plus MARGIN either side. Missing data is NaN and never labelled: unknown ≠ anomalous.
Everything is a pure function of (seed, days, start); generation is vectorized numpy.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

STEP = 60
DAY = 86400
MARGIN = 300  # seconds of slack either side of a labelled anomaly
DEFAULT_START = 1_700_000_000 // DAY * DAY  # Tuesday 2023-11-14 00:00 UTC
NO_ANOMALY_KINDS = ("gaps", "no_anomaly", "pure_noise", "weekly_pattern")


@dataclass(frozen=True)
class Scenario:
    name: str  # "<kind>/<shape>", e.g. "spike/requests"
    timestamps: np.ndarray  # int64 epoch seconds, 1-minute step
    values: np.ndarray  # float64, NaN for missing data
    windows: list[tuple[int, int]]  # inclusive [start, end] epoch seconds; [] = no anomaly
    description: str

    @property
    def kind(self) -> str:
        return self.name.split("/")[0]


@dataclass(frozen=True)
class _Shape:
    what: str
    mean: Callable[[np.ndarray], np.ndarray]  # relative load in (0, 1] -> expected value
    sigma: Callable[[np.ndarray], np.ndarray]  # expected value -> local noise standard deviation
    noise: Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]  # (mean, σ factor, rng)


_T8_STD = np.sqrt(8 / 6)  # standard deviation of Student's t with 8 degrees of freedom
_SHAPES = {
    "requests": _Shape(
        "request rate (req/s), multiplicative 4 % noise",
        lambda load: 200.0 * load,
        lambda mu: 0.04 * mu,
        lambda mu, m, rng: mu * (1 + 0.04 * m * rng.standard_normal(mu.size)),
    ),
    "cpu": _Shape(
        "CPU usage ratio in [0, 1], additive noise σ=0.02",
        lambda load: 0.15 + 0.35 * load,
        lambda mu: np.full_like(mu, 0.02),
        lambda mu, m, rng: np.clip(mu + 0.02 * m * rng.standard_normal(mu.size), 0.0, 1.0),
    ),
    "latency": _Shape(
        "latency (s), log-Student-t(8) noise: heavy-ish right tail",
        lambda load: 0.08 + 0.07 * load,
        lambda mu: 0.1 * _T8_STD * mu,
        # t clipped at ±6 so single-minute blips stay under 1.8x: heavy tails, but not anomalies themselves
        lambda mu, m, rng: mu * np.exp(0.1 * m * np.clip(rng.standard_t(8, mu.size), -6, 6)),
    ),
    "errors": _Shape(
        "error counter rate (1/s) from ~2-12 events a minute, Poisson noise",
        lambda load: 0.2 * load,
        lambda mu: np.sqrt(mu * STEP) / STEP,
        lambda mu, m, rng: np.maximum(mu + m * (rng.poisson(mu * STEP) - mu * STEP) / STEP, 0.0),
    ),
}

# (kind, shape, load pattern); several shapes per anomaly kind.
_SPECS = [
    *[("spike", s, "seasonal") for s in ("requests", "cpu", "latency", "errors")],
    *[("dip", s, "seasonal") for s in ("requests", "cpu", "latency")],
    *[("level_shift", s, "seasonal") for s in ("requests", "cpu", "latency")],
    *[("drop_to_zero", s, "seasonal") for s in ("requests", "cpu", "errors")],
    *[("variance_change", s, "seasonal") for s in ("requests", "cpu", "latency")],
    *[("slow_drift", s, "seasonal") for s in ("requests", "latency", "errors")],
    *[("gaps", s, "seasonal") for s in ("requests", "cpu", "errors")],
    *[("no_anomaly", s, "seasonal") for s in ("requests", "cpu", "latency", "errors")],
    ("pure_noise", "cpu", "flat"),
    ("weekly_pattern", "requests", "weekly"),
]


def _grid(days: int, start: int) -> np.ndarray:
    t = start + STEP * np.arange(days * DAY // STEP, dtype=np.int64)
    t.flags.writeable = False  # shared by every scenario of a call
    return t


def _load(t: np.ndarray, rng: np.random.Generator, pattern: str) -> np.ndarray:
    """Relative load in (0, 1]: a daytime peak (hour drawn per series) and quieter weekends."""
    peak, floor, weekend = rng.uniform(12, 17), rng.uniform(0.25, 0.4), rng.uniform(0.25, 0.45)
    daily = 0.5 + 0.5 * np.cos(2 * np.pi * ((t % DAY) / 3600 - peak) / 24)
    day = floor + (1 - floor) * daily if pattern == "seasonal" else np.full(t.size, 0.8)
    weekday = (t // DAY + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    week = np.where(weekday >= 5, 1 - weekend, 1.0) if pattern != "flat" else 1.0
    return day * week


def _place(n: int, length: int, rng: np.random.Generator) -> int:
    """A start index such that the anomaly and its margins lie inside the last 40 % of the series."""
    lo, hi = int(np.ceil(0.6 * n)) + MARGIN // STEP, n - length - MARGIN // STEP
    if hi <= lo:
        raise ValueError(f"series of {n} points is too short for a {length}-minute anomaly")
    return int(rng.integers(lo, hi))


_Injected = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int] | None, str]


def _inject(kind: str, rng: np.random.Generator, mu: np.ndarray, sigma: np.ndarray) -> _Injected:
    """Change the clean mean / noise factor for one anomaly kind.

    Returns (mean, noise factor, zero mask, NaN mask, labelled index span or None, text). Magnitudes are
    in units of the local noise σ at that time of day, so every kind is visible on every shape.
    """
    n = mu.size
    mu, mult = mu.copy(), np.ones(n)
    zero, gap = np.zeros(n, bool), np.zeros(n, bool)
    span, text = None, "no anomaly"
    if kind == "spike":
        length, k = int(rng.integers(3, 11)), rng.uniform(8, 12)
        s = _place(n, length, rng)
        mu[s : s + length] += k * sigma[s : s + length]
        span, text = (s, s + length - 1), f"+{k:.1f}σ spike for {length} min"
    elif kind == "dip":
        length, k = int(rng.integers(15, 46)), rng.uniform(10, 14)
        s = _place(n, length, rng)
        mu[s : s + length] -= np.minimum(k * sigma[s : s + length], 0.6 * mu[s : s + length])
        span, text = (s, s + length - 1), f"-{k:.1f}σ dip (at most -60 %) for {length} min"
    elif kind == "level_shift":
        length, k, sign = int(rng.integers(30, 61)), rng.uniform(8, 12), int(rng.choice([-1, 1]))
        s = _place(n, length, rng)
        mu[s:] += sign * np.minimum(k * sigma[s:], 0.5 * mu[s:])  # lasting: the new normal after the window
        way = "up" if sign > 0 else "down"
        span, text = (s, s + length - 1), f"lasting {k:.1f}σ step {way} (≤50 %), first {length} min labelled"
    elif kind == "drop_to_zero":
        length = int(rng.integers(20, 61))
        s = _place(n, length, rng)
        zero[s : s + length] = True
        span, text = (s, s + length - 1), f"drop to 0 for {length} min"
    elif kind == "variance_change":
        s = _place(n, 60, rng)
        mult[s : s + 60] = 4.0
        span, text = (s, s + 59), "noise ×4 for 60 min"
    elif kind == "slow_drift":
        length, g = int(rng.integers(4 * 60, 8 * 60 + 1)), rng.uniform(2, 3)
        s = _place(n, length, rng)
        mu[s : s + length] *= 1 + (g - 1) * np.linspace(0, 1, length)  # leak, then a restart resets it
        span = (s + length // 2, s + length - 1)  # the first half is hard to tell from a busy day
        text = f"linear ramp over {length} min to {g:.1f}× normal, labelled from {(1 + g) / 2:.1f}× on"
    elif kind == "gaps":
        count = int(rng.integers(2, 5))
        edges = np.linspace(0.05 * n, n, count + 1).astype(int)
        lengths = rng.integers(10, 121, count)
        for a, b, length in zip(edges[:-1], edges[1:], lengths, strict=True):  # one gap per segment
            g0 = int(rng.integers(a, b - length))
            gap[g0 : g0 + length] = True
        text = f"{count} NaN gaps of {', '.join(map(str, lengths))} min, not anomalies"
    return mu, mult, zero, gap, span, text


def _stamp(ts: int) -> str:
    return time.strftime("%a %Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _scenario(kind: str, shape_name: str, pattern: str, seed: int, t: np.ndarray) -> Scenario:
    name = f"{kind}/{shape_name}"
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])  # independent of list order
    shape = _SHAPES[shape_name]
    clean = shape.mean(_load(t, rng, pattern))
    mu, mult, zero, gap, span, text = _inject(kind, rng, clean, shape.sigma(clean))
    values = shape.noise(mu, mult, rng)
    values[zero] = 0.0
    values[gap] = np.nan
    values.flags.writeable = False
    windows = [] if span is None else [(int(t[span[0]]) - MARGIN, int(t[span[1]]) + MARGIN)]
    where = f" from {_stamp(int(t[span[0]]))}" if span else ""
    return Scenario(name, t, values, windows, f"{shape.what}, {pattern}; {text}{where}")


def scenarios(seed: int = 0, days: int = 14, start: int = DEFAULT_START) -> list[Scenario]:
    """All labelled scenarios for one seed (deterministic): ~3-4 series per anomaly kind plus clean ones."""
    t = _grid(days, start)
    return [_scenario(kind, shape, pattern, seed, t) for kind, shape, pattern in _SPECS]


def seed_scenario(seed: int = 0) -> Scenario:
    """The seed pipeline's case: 7 days of CPU % (40-70, σ=3), a 10-min +45 spike and a 50-min drop to 0."""
    rng = np.random.default_rng(seed)
    t = _grid(7, DEFAULT_START)
    per_day = DAY // STEP
    values = 55 + 15 * np.cos(2 * np.pi * ((t % DAY) / 3600 - 15) / 24) + rng.normal(0, 3, t.size)
    pad = MARGIN // STEP
    spike = int(rng.integers(5 * per_day + pad, 6 * per_day - 10 - pad))  # day 6 of 7
    drop = int(rng.integers(6 * per_day + pad, 7 * per_day - 50 - pad))  # day 7 of 7
    values[spike : spike + 10] += 45
    values[drop : drop + 50] = 0.0
    values.flags.writeable = False
    windows = [(int(t[i]) - MARGIN, int(t[i + n - 1]) + MARGIN) for i, n in ((spike, 10), (drop, 50))]
    text = f"CPU %, daily cycle, σ=3; +45 spike {_stamp(int(t[spike]))}, drop to 0 {_stamp(int(t[drop]))}"
    return Scenario("seed/cpu", t, values, windows, text)
