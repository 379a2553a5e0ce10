"""Soak: thousands of scoring cycles through the exporter's real code paths, with churn, reloads and faults.

    python benchmarks/soak.py [--cycles 3000] [--series 1000] [--tracemalloc 10]

A fake clock advances one interval (60 s) per cycle. Everything the exporter does runs for real, in this
process and on this thread (the harness calls the jobs in the order the scheduler would):
- `Scheduler.apply()` builds the rule runners (the APScheduler is never started: its jobs are the calls
  below) and re-applies reloaded rules files read by `load_config`, as `exporter run` does on SIGHUP;
- every cycle each runner's `score_job`; `fit_job` when a runner starts and every `retrain` after;
- queries go through `PrometheusReader` to `FakePrometheus` (benchmarks/soak_fakes.py), which answers
  with Prometheus' JSON and injects faults per HTTP attempt (timeouts, 5xx, 429, garbage, truncated or
  malformed JSON, 400s, partial answers, 10x the series) plus outages where every attempt fails;
- `World` churns the series (a share vanish each hour, as many new ones appear) past `max_series`;
- alerts: `Alerting` with its state file, over `FakeOutbox` (acknowledges at the end of a cycle, some
  deliveries fail); fitted models saved by `ModelStore` after every fit, under a temporary directory;
- a scrape of the `WebApp` (/metrics, sometimes gzip or OpenMetrics, sometimes / and /-/ready) every
  cycle, checked against the published snapshots.

Reports RSS (VmRSS, after gc.collect()) after the warm-up and at the end with a table over the run,
errors recorded per stage (the store's health, summed over runner generations), unhandled exceptions
(a job that raised, a scrape that failed), and a verdict: RSS growth after warm-up < 5 % (from the
reading after the warm-up to the last one, and between the medians of the first and last tenth of the
cycles after it), zero unhandled exceptions and every scrape consistent with the published snapshots.
`--tracemalloc N` also names the allocation sites that grew most since the warm-up (N frames per trace;
slows the run ~2x). Linux only (reads /proc/self/status). Figures: docs/soak.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import gzip
import json
import logging
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.soak_fakes import DAY, FakeOutbox, FakePrometheus, World
from exporter.alert_registry import STATE_KIND, STATE_VERSION, Alerting
from exporter.collector import AnomalyCollector
from exporter.config import ConfigError, PrometheusConfig, load_config
from exporter.modelstate import ModelStore
from exporter.pipeline import RuleRunner
from exporter.reader import PrometheusReader
from exporter.scheduler import Scheduler
from exporter.server import WebApp
from exporter.statefile import read_state
from exporter.store import Store

MAIN, SMALL = "soak", "soak_small"  # rule names; their queries are the metric names below
MAIN_METRIC, SMALL_METRIC = "soak_metric", "soak_small_metric"
START = 1_760_000_000 // DAY * DAY + 9 * 3600  # a fixed day, 09:00 UTC
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
# Reloads cycle through these. retune: the main rule's z_threshold changes (its runner is rebuilt; the saved
# model still applies: restored, recent data loaded, scored, the rest of the history backfilled); same: the
# file unchanged; garbage: rejected; add / remove: a second, small rule; remodel: the main rule's
# min_history changes (the saved model no longer applies: full history load and refit from scratch).
RELOADS = ("retune", "same", "garbage", "add", "remodel", "remove")


@dataclass
class Options:
    cycles: int = 3000
    series: int = 1000
    interval: int = 60  # seconds per cycle, also the step
    history: float = 2 * DAY  # two days: enough for a daily profile, a history load takes seconds
    retrain_cycles: int = 60  # hourly
    churn: float = 0.02  # share of the series replaced per hour
    max_series_extra: float = 0.05  # max_series = series * (1 + this): room for a few hours of churn
    fault_rate: float = 0.03  # per HTTP attempt
    outage_every: int = 500  # cycles; 0: no outages
    outage_cycles: int = 10
    outage_first: int = 200
    reload_every: int = 250  # cycles; 0: no reloads
    scrape_every: int = 1
    warmup: int = 300  # cycles; RSS growth is measured from the end of the warm-up
    samples: int = 10  # rows of the RSS table
    seed: int = 1
    tracemalloc_frames: int = 0
    small_series: int = 20
    quiet: bool = True
    # State files (alerts.json, models/) go here; tmpfs by default, so fsync costs no disk time
    workdir: str | None = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@dataclass
class Sample:
    cycle: int
    rss_mb: float
    objects: int
    frame_rows: int
    exported: int
    firing: int
    errors: int
    cycles_per_s: float
    segment_max_mb: float  # the highest VmRSS seen after a cycle since the previous sample
    heap_free_mb: float  # free memory held by glibc's malloc


@dataclass
class Report:
    options: Options
    wall: float = 0.0
    rss_start: float = 0.0  # after the warm-up
    rss_end: float = 0.0
    peak_mb: float = 0.0  # VmHWM
    samples: list[Sample] = field(default_factory=list)
    rss_trace: list[float] = field(default_factory=list)  # VmRSS after every cycle (no gc.collect())
    heap_free_trace: list[float] = field(default_factory=list)  # glibc's free heap after every cycle
    errors: Counter[str] = field(default_factory=Counter)  # stage -> errors recorded in the store's health
    unhandled: list[str] = field(default_factory=list)  # "where: traceback"
    log_records: Counter[str] = field(default_factory=Counter)  # level -> count
    log_messages: Counter[str] = field(default_factory=Counter)  # "LEVEL template" -> count (exporter.*)
    faults: Counter[str] = field(default_factory=Counter)
    long_range_faults: Counter[str] = field(default_factory=Counter)  # on history loads and backfills
    requests: int = 0
    points: int = 0
    reloads: Counter[str] = field(default_factory=Counter)
    runners_built: int = 0
    scrapes: int = 0
    scrape_mismatches: int = 0
    withdrawn_scrapes: int = 0  # scrapes without the main rule's series (withdrawn during an outage)
    recovery_cycles: list[int] = field(default_factory=list)  # per outage: cycles until up again
    pending_jobs: int = 0  # APScheduler jobs at the end (2 per rule)
    low_coverage: list[int] = field(default_factory=list)  # cycles: < 90 % of live series scored (_coverage)
    alerts: Counter[str] = field(default_factory=Counter)
    churn: tuple[int, int] = (0, 0)  # series appeared, vanished
    dropped_max: int = 0  # most series a query returned beyond max_series
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per kind of call
    top_growth: list[str] = field(default_factory=list)  # tracemalloc

    @property
    def growth(self) -> float:
        """RSS at the end against RSS after the warm-up (both right after gc.collect())."""
        return (self.rss_end - self.rss_start) / self.rss_start if self.rss_start else float("nan")

    def _after_warmup(self) -> np.ndarray:
        return np.asarray(self.rss_trace[min(self.options.warmup, len(self.rss_trace)) :])

    @property
    def median_growth(self) -> tuple[float, float, float]:
        """Median RSS over the first and the last tenth of the cycles after the warm-up, and its growth:
        a single reading can land on a passing spike (a refit, a history load) or a trough."""
        rss = self._after_warmup()
        if len(rss) == 0:
            return float("nan"), float("nan"), float("nan")
        w = max(1, len(rss) // 10)
        first, last = float(np.median(rss[:w])), float(np.median(rss[-w:]))
        return first, last, (last - first) / first

    @property
    def slope(self) -> float:
        """Least-squares trend of RSS after the warm-up, MB per 1,000 cycles."""
        rss = self._after_warmup()
        return float(np.polyfit(np.arange(len(rss)), rss, 1)[0] * 1000) if len(rss) > 1 else float("nan")

    @property
    def passed(self) -> bool:
        """Flat RSS (not judged under tracemalloc, whose tables grow with the traces), no unhandled
        exceptions, every scrape consistent with the published snapshots."""
        flat = self.growth < 0.05 and self.median_growth[2] < 0.05
        judged = flat or bool(self.options.tracemalloc_frames)
        return judged and not self.unhandled and not self.scrape_mismatches


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",  # free bytes in the heap
            "keepcost",
        ]
    ]


def _mallinfo2() -> Callable[[], float]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return lambda: float("nan")
    return lambda: libc.mallinfo2().fordblks / 2**20


heap_free_mb = _mallinfo2()  # free memory glibc's malloc holds (part of RSS where it was touched)


def rss_mb(field_name: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _CountingHandler(logging.Handler):
    """Counts the exporter's log records by level (printing them only without --quiet)."""

    def __init__(self, counts: Counter[str], messages: Counter[str], echo: bool) -> None:
        super().__init__(logging.DEBUG)
        self.counts, self.messages, self.echo = counts, messages, echo
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        if record.name.startswith("exporter"):  # by message template: what happened how often
            self.messages[f"{record.levelname} {record.msg}"] += 1
        if self.echo:
            print(self.format(record), file=sys.stderr)


def rules_yaml(options: Options, tune: int, model: int, small: bool) -> str:
    """The rules file: `tune` and `model` toggle settings of the main rule (see RELOADS), `small` adds
    a second rule."""
    o = options
    rules = f"""\
  - name: {MAIN}
    query: {MAIN_METRIC}
    max_series: {int(o.series * (1 + o.max_series_extra))}
    z_threshold: {4 + 0.5 * (tune % 2)}
    labels: {{team: "soak"}}
    model: {{min_history: {60 + 5 * (model % 2)}m}}
    alert:
      receivers: [am, hook]
      labels: {{instance: "{{{{ $labels.instance }}}}"}}
"""
    if small:
        rules += f"""\
  - name: {SMALL}
    query: {SMALL_METRIC}
    direction: up
    alert: {{receivers: [hook]}}
"""
    return f"""\
prometheus:
  url: http://prometheus.soak.invalid:9090
defaults:
  interval: {o.interval}s
  step: {o.interval}s
  retrain: {o.retrain_cycles * o.interval}s
  history: {int(o.history)}s
receivers:
  am: {{type: alertmanager, urls: ["http://alertmanager.soak.invalid:9093"]}}
  hook: {{type: webhook, url: "http://hooks.soak.invalid/alert"}}
rules:
{rules}"""


class Soak:
    """The exporter's objects wired as `exporter run` wires them, driven cycle by cycle on a fake clock."""

    def __init__(self, options: Options, workdir: Path) -> None:
        self.o = o = options
        self.report = Report(options)
        self.now = float(START)
        self.cycle = 0
        forget = max(o.history, 2 * DAY)
        self.world = World(MAIN_METRIC, o.series, self.now, churn=o.churn, seed=o.seed)
        self.small = World(SMALL_METRIC, o.small_series, self.now, seed=o.seed + 1)
        self._forget = forget
        self.prometheus = FakePrometheus(
            {MAIN_METRIC: self.world, SMALL_METRIC: self.small}, fault_rate=o.fault_rate, seed=o.seed
        )
        self.slept = 0.0
        self.outbox = FakeOutbox(seed=o.seed)
        self.store = Store(clock=self.clock)
        self.workdir = workdir
        self.rules_file = workdir / "rules.yaml"
        self.alerting = Alerting(self.outbox, workdir / "alerts.json", external_url="", clock=self.clock)
        registry = CollectorRegistry()
        registry.register(AnomalyCollector(self.store, self.alerting))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.app = WebApp(self.store, registry)
        self.scheduler = Scheduler(
            self.store,
            self._source,
            workers=2,
            clock=self.clock,
            alerting=self.alerting,
            models=ModelStore(workdir / "models"),
        )
        self._tune, self._model, self._small = 0, 0, False
        self._born: weakref.WeakKeyDictionary[RuleRunner, int] = weakref.WeakKeyDictionary()  # -> cycle
        self._outage_end: int | None = None
        self._reload_index = 0
        self._pending_errors: dict[str, tuple[RuleRunner, dict[str, int]]] = {}  # see _bank_errors

    def clock(self) -> float:
        return self.now

    def _source(self, config: PrometheusConfig) -> PrometheusReader:
        return PrometheusReader(
            config,
            session=self.prometheus,  # type: ignore[arg-type]
            sleep=self._sleep,
            rng=random.Random(self.o.seed),
        )

    def _sleep(self, seconds: float) -> None:
        self.slept += seconds  # the reader's backoff: fake time, nothing waits

    # -- one call into the exporter; anything it raises is a bug the run reports ---------------------
    def call(self, where: str, fn: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        try:
            return fn()
        except Exception:
            self.report.unhandled.append(f"cycle {self.cycle} {where}: {traceback.format_exc()}")
            return None
        finally:
            kind = where.split(" ")[0]
            self.report.seconds[kind] = self.report.seconds.get(kind, 0.0) + time.perf_counter() - began

    # -- reloads ---------------------------------------------------------------------------------------
    def write_rules(self, garbage: bool = False) -> None:
        text = (
            "rules: [this is: not, a rules file\n"
            if garbage
            else rules_yaml(self.o, self._tune, self._model, self._small)
        )
        self.rules_file.write_text(text)

    def reload(self, action: str) -> None:
        """What `exporter run` does on SIGHUP: read the file, reject it or apply it."""
        if action == "retune":
            self._tune += 1
        elif action == "remodel":
            self._model += 1
        elif action in ("add", "remove"):
            self._small = action == "add"
        self.write_rules(garbage=action == "garbage")
        self._bank_errors()
        try:
            config = load_config(self.rules_file)
        except ConfigError as exc:
            self.store.record_reload(False, "; ".join(exc.errors))
            self.report.reloads["rejected"] += 1
            self.write_rules()  # the file is fixed again, as an operator would
            return
        self.scheduler.apply(config)
        self.store.record_reload(True)
        self.report.reloads[action] += 1

    def _bank_errors(self) -> None:
        """Runners about to be replaced or removed take their health (and error counts) with them."""
        health = self.store.health()
        for name, runner in self.scheduler.runners.items():
            h = health.get(name)
            if h is not None:
                self._pending_errors[name] = (runner, dict(h.errors))

    def _settle_errors(self) -> None:
        current = self.scheduler.runners
        for name, (runner, errors) in list(self._pending_errors.items()):
            if current.get(name) is not runner:
                self.report.errors.update(errors)
            del self._pending_errors[name]

    # -- the loop --------------------------------------------------------------------------------------
    def start(self) -> None:
        self.write_rules()
        self.scheduler.apply(load_config(self.rules_file))
        self._pending_errors = {}

    def step(self) -> None:
        o, r = self.o, self.report
        self.cycle += 1
        self.now += o.interval
        self.world.advance(self.now, o.interval, self.now - self._forget)
        self.prometheus.cycle = self.cycle
        self._outages()
        if o.reload_every and self.cycle % o.reload_every == 0:
            action = RELOADS[self._reload_index % len(RELOADS)]
            self._reload_index += 1
            self.call(f"reload {action}", lambda: self.reload(action))
            self._settle_errors()
        for name, runner in self.scheduler.runners.items():
            born = self._born.get(runner)
            if born is None:  # the scheduler's fit job runs at once for a new runner
                self._born[runner] = self.cycle
                r.runners_built += 1
                self.call(f"fit_job {name}", runner.fit_job)
                self._note_dropped()
                continue
            if (self.cycle - born) % o.retrain_cycles == 0:
                self.call(f"fit_job {name}", runner.fit_job)
                self._note_dropped()
            self.call(f"score_job {name}", runner.score_job)
            self._note_dropped()
        self.call("alerting.tick", self.alerting.tick)  # retired rules' retries
        self.call("deliveries", self.outbox.flush)
        if o.scrape_every and self.cycle % o.scrape_every == 0:
            self.call("scrape", self.scrape)
        self._coverage()

    def _coverage(self) -> None:
        """Note cycles where the main rule scores too few of its series, outside outages and a new
        runner's first cycles: a sign of lost history or of series crowded out by others."""
        runner = self.scheduler.runners.get(MAIN)
        born = None if runner is None else self._born.get(runner)
        if born is None or self.cycle - born < 3 or self._outage_end is not None:
            return
        snap = self.store.snapshots().get(MAIN)
        if (0 if snap is None else len(snap.labels)) < 0.9 * self.world.alive:
            self.report.low_coverage.append(self.cycle)

    def _note_dropped(self) -> None:
        health = self.store.health().get(MAIN)
        if health is not None:
            self.report.dropped_max = max(self.report.dropped_max, health.dropped)

    def _outages(self) -> None:
        o = self.o
        if self._outage_end is not None and self.cycle >= self._outage_end:
            self.prometheus.down = False
            health = self.store.health().get(MAIN)
            if health is not None and health.up:
                self.report.recovery_cycles.append(self.cycle - self._outage_end)
                self._outage_end = None
        elif (
            o.outage_every
            and self.cycle >= o.outage_first
            and (self.cycle - o.outage_first) % o.outage_every == 0
        ):
            self.prometheus.down = True
            self._outage_end = self.cycle + o.outage_cycles

    def scrape(self) -> None:
        r = self.report
        r.scrapes += 1
        n = r.scrapes
        gz = n % 3 == 0
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/metrics",
            "QUERY_STRING": "",
            "HTTP_ACCEPT": OPENMETRICS if n % 2 else "",
            "HTTP_ACCEPT_ENCODING": "gzip" if gz else "",
        }
        status: list[str] = []
        body = b"".join(self.app(environ, lambda s, h, *a: status.append(s)))
        if gz:
            body = gzip.decompress(body)
        expected = sum(int((~np.isnan(s.score)).sum()) for s in self.store.snapshots().values())
        if status != ["200 OK"] or body.count(b"\nanomaly_score{") != expected:
            r.scrape_mismatches += 1
        if MAIN not in self.store.snapshots():
            r.withdrawn_scrapes += 1
        if n % 50 == 0:  # the landing page and readiness, now and then
            for path in ("/", "/-/ready", "/-/healthy"):
                b"".join(self.app({"REQUEST_METHOD": "GET", "PATH_INFO": path}, lambda s, h, *a: None))

    def sample(self, cycles_before: int, t_before: float) -> Sample:
        gc.collect()
        runner = self.scheduler.runners.get(MAIN)
        frame_rows = len(runner._frame) if runner is not None else 0
        snap = self.store.snapshots().get(MAIN)
        pending_firing = self.alerting.counts().get(MAIN, (0, 0))
        errors = sum(self.report.errors.values()) + sum(
            sum(h.errors.values()) for h in self.store.health().values()
        )
        now = time.perf_counter()
        return Sample(
            cycle=self.cycle,
            rss_mb=rss_mb(),
            objects=len(gc.get_objects()),
            frame_rows=frame_rows,
            exported=0 if snap is None else len(snap.labels),
            firing=pending_firing[1],
            errors=errors,
            cycles_per_s=(self.cycle - cycles_before) / max(1e-9, now - t_before),
            segment_max_mb=max(self.report.rss_trace[cycles_before : self.cycle], default=float("nan")),
            heap_free_mb=heap_free_mb(),
        )

    def finish(self) -> None:
        r = self.report
        self._bank_errors()
        for _, errors in self._pending_errors.values():
            r.errors.update(errors)
        r.faults, r.long_range_faults = self.prometheus.faults, self.prometheus.long_range_faults
        r.requests, r.points = self.prometheus.requests, self.prometheus.points
        r.churn = (self.world.appeared, self.world.vanished)
        r.alerts = Counter(
            {
                "batches delivered": self.outbox.batches,
                "deliveries failed": self.outbox.failed,
                "firing notifications": self.outbox.notifications["firing"],
                "resolved notifications": self.outbox.notifications["resolved"],
            }
        )
        firing = self.alerting.counts().get(MAIN, (0, 0))[1]
        young = sum(  # series that appeared during the run: their history is shorter than the daily cycle
            1
            for labels in self._firing_labels()
            if int(labels.get("instance", "x-0").split("-")[1]) >= self.o.series
        )
        r.alerts["firing at the end"] = firing
        r.alerts["of them on series that appeared during the run"] = young
        # the APScheduler is never started: its jobs stay pending, and must not pile up across reloads
        r.pending_jobs = len(self.scheduler._scheduler.get_jobs())
        self.scheduler.shutdown(wait=False)

    def _firing_labels(self) -> list[dict[str, str]]:
        """Labels of the main rule's firing alerts, from the alert state file (saved after every change)."""
        self.alerting.save()
        data = read_state(self.workdir / "alerts.json", STATE_KIND, STATE_VERSION) or {}
        return [i["labels"] for i in data.get("rules", {}).get(MAIN, {}).get("firing", [])]


def run(options: Options, *, progress: Callable[[str], None] | None = None) -> Report:
    """The soak loop; returns its report (also used by tests/test_soak_smoke.py with a few cycles)."""
    o = options
    counts: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    handler = _CountingHandler(counts, messages, echo=not o.quiet)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    unraisable: list[str] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(f"unraisable: {u.exc_type.__name__}: {u.exc_value}")
    if o.tracemalloc_frames:
        tracemalloc.start(o.tracemalloc_frames)
    try:
        with tempfile.TemporaryDirectory(prefix="soak-", dir=o.workdir) as tmp:
            soak = Soak(o, Path(tmp))
            report = soak.report
            began = time.perf_counter()
            soak.call("start", soak.start)
            marks = sorted({max(1, round(o.cycles * k / o.samples)) for k in range(1, o.samples + 1)})
            warm_snapshot = None
            last_cycle, last_t = 0, began
            warmup = min(o.warmup, o.cycles)
            while soak.cycle < o.cycles:
                soak.step()
                report.rss_trace.append(rss_mb())
                report.heap_free_trace.append(heap_free_mb())
                if soak.cycle != warmup and soak.cycle not in marks:
                    continue
                s = soak.sample(last_cycle, last_t)
                report.samples.append(s)
                last_cycle, last_t = soak.cycle, time.perf_counter()
                if soak.cycle == warmup:
                    report.rss_start = s.rss_mb
                    if o.tracemalloc_frames:
                        warm_snapshot = tracemalloc.take_snapshot()
                if progress:
                    progress(
                        f"cycle {s.cycle}{' (end of warm-up)' if s.cycle == warmup else ''}: RSS "
                        f"{s.rss_mb:.1f} MB, {s.cycles_per_s:.1f} cycles/s, errors {s.errors}, "
                        f"unhandled {len(report.unhandled)}"
                    )
            report.wall = time.perf_counter() - began
            report.rss_end = report.samples[-1].rss_mb if report.samples else rss_mb()
            report.peak_mb = rss_mb("VmHWM")
            if warm_snapshot is not None:
                end = tracemalloc.take_snapshot()
                report.top_growth = _top_growth(warm_snapshot, end)
            soak.finish()
            report.log_records, report.log_messages = counts, messages
            report.unhandled += unraisable
            return report
    finally:
        if o.tracemalloc_frames:
            tracemalloc.stop()
        sys.unraisablehook = old_hook
        root.removeHandler(handler)
        root.setLevel(old_level)


def _top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int = 12) -> list[str]:
    """The allocation sites that grew most, the harness's own (benchmarks/soak*.py) left out."""
    filters = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen *>"),
        tracemalloc.Filter(False, str(Path(__file__).with_name("soak*.py"))),
    ]
    before, after = before.filter_traces(filters), after.filter_traces(filters)
    stats = after.compare_to(before, "traceback")
    total_before = sum(t.size for t in before.traces) / 2**20
    total_after = sum(t.size for t in after.traces) / 2**20
    lines = [
        f"Traced memory (numpy arrays included) after warm-up {total_before:.1f} MB, at the end "
        f"{total_after:.1f} MB ({total_after - total_before:+.2f} MB); top growing sites:"
    ]
    for stat in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:top]:
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback)
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB ({stat.count_diff:+d} blocks): {where}")
    return lines


def _ranges(cycles: list[int]) -> str:
    """[3, 4, 5, 9] -> "(3-5, 9)"."""
    spans: list[list[int]] = []
    for c in cycles:
        if spans and c == spans[-1][1] + 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans[:12])
    return f"({text}{', ...' if len(spans) > 12 else ''})" if spans else ""


def machine() -> str:
    mem = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem} RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return rev.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def format_report(r: Report, command: str) -> str:
    o = r.options
    out = [
        f"Command: {command}",
        f"Machine: {machine()}",
        f"Commit: {git_commit()}",
        "",
        f"{o.cycles} cycles of {o.interval} s ({o.cycles * o.interval / 3600:.1f} h of fake time) on "
        f"{o.series} series (max_series {int(o.series * (1 + o.max_series_extra))}), history "
        f"{o.history / 3600:g} h, refit every {o.retrain_cycles} cycles, churn {o.churn:.0%} per hour, "
        f"faults {o.fault_rate:.0%} of HTTP attempts, outages of {o.outage_cycles} cycles every "
        f"{o.outage_every}, reloads every {o.reload_every} cycles, a scrape every {o.scrape_every}.",
        f"Run time {r.wall:.0f} s: {o.cycles / r.wall:.2f} cycles/s. "
        f"Warm-up: {min(o.warmup, o.cycles)} cycles.",
        "",
        "| cycle | fake time | RSS MB | max RSS since the row above | malloc free MB | Python objects "
        "| frame rows | exported series | firing alerts | errors so far | cycles/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in r.samples:
        out.append(
            f"| {s.cycle}{' (warm-up)' if s.cycle == min(o.warmup, o.cycles) else ''} "
            f"| {s.cycle * o.interval / 3600:.1f} h | {s.rss_mb:.1f} | {s.segment_max_mb:.1f} "
            f"| {s.heap_free_mb:.1f} "
            f"| {s.objects:,} | {s.frame_rows} | {s.exported} | {s.firing} | {s.errors} "
            f"| {s.cycles_per_s:.2f} |"
        )
    verdict = "PASS" if r.passed else "FAIL"
    first, last, median_growth = r.median_growth
    out += [
        "",
        f"RSS after warm-up {r.rss_start:.1f} MB, at the end {r.rss_end:.1f} MB: {r.growth:+.1%} "
        f"(target < +5 %); peak (VmHWM) {r.peak_mb:.1f} MB.",
        f"Median RSS over the first tenth of the cycles after warm-up {first:.1f} MB, over the last tenth "
        f"{last:.1f} MB: {median_growth:+.1%} (target < +5 %); trend {r.slope:+.2f} MB per 1,000 cycles.",
        f"Unhandled exceptions: {len(r.unhandled)} (target 0). Scrape mismatches: {r.scrape_mismatches} of "
        f"{r.scrapes} scrapes.",
        f"Verdict: {verdict}" + (" (RSS not judged: tracemalloc on)" if o.tracemalloc_frames else ""),
        "",
        "Errors recorded per stage (store health, all runner generations): "
        + (", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "none"),
        f"Faults injected ({r.requests} HTTP attempts, {r.points:,} points served): "
        + ", ".join(f"{k} {v}" for k, v in sorted(r.faults.items())),
        "    of them on requests over more than an hour (history loads, backfills): "
        + (", ".join(f"{k} {v}" for k, v in sorted(r.long_range_faults.items())) or "none"),
        "Log records: " + ", ".join(f"{k} {v}" for k, v in sorted(r.log_records.items())),
        *(f"    {v} x {k[:100]!r}" for k, v in r.log_messages.most_common(12)),
        "Reloads: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r.reloads.items()))
        + f"; rule runners built: {r.runners_built}",
        f"Churn: {r.churn[0]} series appeared, {r.churn[1]} vanished; most series beyond max_series in one "
        f"query: {r.dropped_max}",
        f"Outages: recovered after {r.recovery_cycles} cycle(s); scrapes without the main rule's series "
        f"(withdrawn while down, or before its first fit): {r.withdrawn_scrapes}",
        f"Cycles where the main rule scored < 90 % of its live series (outside outages and a new runner's "
        f"first 3 cycles): {len(r.low_coverage)} {_ranges(r.low_coverage)}",
        "Alerts: " + ", ".join(f"{k} {v}" for k, v in r.alerts.items()),
        f"Scheduler jobs at the end: {r.pending_jobs} (a fit and a score job per rule)",
        "Harness time by call (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.seconds.items(), key=lambda kv: -kv[1])),
    ]
    if r.top_growth:
        out += [
            "",
            "Allocation growth since the warm-up (tracemalloc; its own tables inflate RSS, which is "
            "therefore not judged; the harness's allocations left out):",
            *r.top_growth,
        ]
    if r.unhandled:
        out += ["", "Unhandled exceptions (first 5):", *r.unhandled[:5]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Options()
    ap.add_argument("--cycles", type=int, default=d.cycles)
    ap.add_argument("--series", type=int, default=d.series)
    ap.add_argument("--warmup", type=int, default=d.warmup, help="cycles before the RSS baseline")
    ap.add_argument("--history-hours", type=float, default=d.history / 3600)
    ap.add_argument("--retrain-cycles", type=int, default=d.retrain_cycles)
    ap.add_argument("--churn", type=float, default=d.churn, help="share of the series replaced per hour")
    ap.add_argument("--fault-rate", type=float, default=d.fault_rate, help="per HTTP attempt")
    ap.add_argument("--outage-every", type=int, default=d.outage_every)
    ap.add_argument("--outage-cycles", type=int, default=d.outage_cycles)
    ap.add_argument("--outage-first", type=int, default=d.outage_first)
    ap.add_argument("--reload-every", type=int, default=d.reload_every)
    ap.add_argument("--scrape-every", type=int, default=d.scrape_every)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES", help="0: off")
    ap.add_argument("--verbose", action="store_true", help="print the exporter's log records")
    ap.add_argument("--rss-trace", metavar="FILE", help="write VmRSS and malloc's free heap per cycle (JSON)")
    args = ap.parse_args(argv)
    options = Options(
        cycles=args.cycles,
        series=args.series,
        warmup=args.warmup,
        history=args.history_hours * 3600,
        retrain_cycles=args.retrain_cycles,
        churn=args.churn,
        fault_rate=args.fault_rate,
        outage_every=args.outage_every,
        outage_cycles=args.outage_cycles,
        outage_first=args.outage_first,
        reload_every=args.reload_every,
        scrape_every=args.scrape_every,
        seed=args.seed,
        tracemalloc_frames=args.tracemalloc,
        quiet=not args.verbose,
    )
    report = run(options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    command = "python benchmarks/soak.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(format_report(report, command.strip()))
    if args.rss_trace:
        trace = {"rss_mb": report.rss_trace, "malloc_free_mb": report.heap_free_trace}
        Path(args.rss_trace).write_text(json.dumps(trace))
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
