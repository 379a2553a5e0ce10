"""A built-in synthetic Prometheus, so the whole pipeline runs with no Prometheus at hand.

A week of per-minute history for a few Prometheus-style series with daily seasonality and noise, with a
spike and a drop to zero in the past; then a live stream where a new anomaly starts a few minutes after
start-up and every ten minutes after that. Values are a pure function of (series, time), so overlapping
queries agree with each other just like a real TSDB.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from exporter.reader import BadQueryError, RangeResult, SeriesKey

DAY = 86400.0


@dataclass(frozen=True)
class DemoSeries:
    metric: str
    labels: dict[str, str]
    base: float
    amplitude: float  # relative daily swing
    noise: float  # standard deviation, in the series' units
    phase: float  # hours by which the daily peak is shifted
    upper: float | None = None  # e.g. 1.0 for ratios

    @property
    def key(self) -> SeriesKey:
        return tuple(sorted({"__name__": self.metric, **self.labels}.items()))


def default_series() -> list[DemoSeries]:
    web = [
        DemoSeries(
            "demo_http_requests_per_second",
            {"job": "web", "instance": f"web-{i}:8080"},
            120 + 40 * i,
            0.6,
            4.0 + i,
            14.0 + i,
        )
        for i in range(4)
    ]
    cpu = [
        DemoSeries(
            "demo_cpu_usage_ratio",
            {"job": "node", "instance": f"node-{i}:9100"},
            0.35 + 0.05 * i,
            0.5,
            0.015,
            15.0,
            upper=1.0,
        )
        for i in range(3)
    ]
    queues = [
        DemoSeries("demo_queue_depth", {"job": "worker", "queue": q}, base, 0.3, noise, 11.0)
        for q, base, noise in (("orders", 40.0, 3.0), ("emails", 15.0, 1.5))
    ]
    return web + cpu + queues


@dataclass(frozen=True)
class Anomaly:
    series: int  # index into the source's series
    start: float
    end: float
    kind: str  # "spike" or "drop"


class DemoSource:
    """Answers range queries for the demo metrics: a bare metric name, optionally with `{label="value"}`."""

    live_every = 600.0  # seconds between injected live anomalies
    live_first = 180.0  # the first one starts this long after start-up
    live_length = 300.0

    def __init__(self, started_at: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.started_at = clock() if started_at is None else started_at
        self.series = default_series()
        t0 = self.started_at
        self.history_anomalies = [
            Anomaly(0, t0 - 2 * DAY - 1800, t0 - 2 * DAY, "spike"),
            Anomaly(len(self.series) - 2, t0 - DAY - 2700, t0 - DAY, "drop"),
        ]

    def anomalies_between(self, start: float, end: float) -> list[Anomaly]:
        """Every anomaly overlapping [start, end]: the two historical ones and the live ones."""
        found = [a for a in self.history_anomalies if a.end >= start and a.start <= end]
        first = max(
            0, int(np.floor((start - self.started_at - self.live_first - self.live_length) / self.live_every))
        )
        k = first
        while True:
            a_start = self.started_at + self.live_first + k * self.live_every
            if a_start > end:
                break
            kind = "spike" if k % 2 == 0 else "drop"
            a = Anomaly(k % len(self.series), a_start, a_start + self.live_length, kind)
            if a.end >= start:
                found.append(a)
            k += 1
        return found

    def values(self, index: int, t: np.ndarray) -> np.ndarray:
        s = self.series[index]
        hours = (t % DAY) / 3600.0
        daily = 1.0 + s.amplitude * np.sin(2 * np.pi * (hours - s.phase + 6.0) / 24.0)
        v = s.base * daily + s.noise * _noise(index, t)
        for a in self.anomalies_between(float(t.min()), float(t.max())) if len(t) else []:
            if a.series != index:
                continue
            inside = (t >= a.start) & (t < a.end)
            v = np.where(inside, 0.0 if a.kind == "drop" else v * 2.5 + 8 * s.noise, v)
        v = np.maximum(v, 0.0)
        return np.minimum(v, s.upper) if s.upper is not None else v

    def query_range(
        self,
        query: str,
        start: float,
        end: float,
        step: float,
        *,
        keep: Callable[[SeriesKey], bool] | None = None,
        series_hint: int = 1,
    ) -> RangeResult:
        metric, matchers = _parse_selector(query)
        if not any(s.metric == metric for s in self.series):
            known = ", ".join(sorted({s.metric for s in self.series}))
            raise BadQueryError(f"demo source has no metric {metric!r} (it knows: {known})")
        step_i = int(step)
        end = min(end, self._clock())
        grid = np.arange(
            int(start) // step_i * step_i, int(end) // step_i * step_i + 1, step_i, dtype=np.int64
        )
        keys: list[SeriesKey] = []
        rows: list[np.ndarray] = []
        dropped = 0
        for i, s in enumerate(self.series):
            if s.metric != metric or any(s.labels.get(k) != v for k, v in matchers.items()):
                continue
            if keep is not None and not keep(s.key):
                dropped += 1
                continue
            keys.append(s.key)
            rows.append(self.values(i, grid.astype(np.float64)))
        values = np.vstack(rows) if rows else np.empty((0, len(grid)))
        return RangeResult(keys=keys, timestamps=grid, values=values, dropped=dropped, warnings=())


def _noise(index: int, t: np.ndarray) -> np.ndarray:
    """Deterministic, roughly standard-normal noise per (series, time): the same query always agrees."""
    total = np.zeros(len(t))
    for c in (12.9898, 78.233, 37.719):
        x = np.sin((t / 60.0) * c * 0.001 + index * c) * 43758.5453
        total += x - np.floor(x)
    return (total - 1.5) * 2.0  # sum of 3 uniforms: mean 1.5, sd 0.5


_SELECTOR = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*$")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"\s*,?')


def _parse_selector(query: str) -> tuple[str, dict[str, str]]:
    m = _SELECTOR.match(query)
    if not m:
        raise BadQueryError(
            f'demo source understands only `metric` or `metric{{label="value"}}`, not {query!r}'
        )
    matchers = dict(_MATCHER.findall(m.group(2) or ""))
    return m.group(1), matchers


DEMO_RULES = """\
# The rules `anomaly-exporter demo` runs against its built-in synthetic source.
prometheus:
  url: http://demo.invalid
defaults:
  interval: 30s
  retrain: 30m
  history: 7d
  step: 1m
rules:
  - name: web_requests
    query: demo_http_requests_per_second
    labels: {team: web}
  - name: node_cpu
    query: demo_cpu_usage_ratio
    direction: up
    min_abs_deviation: 0.05
  - name: queue_depth
    query: demo_queue_depth
"""
