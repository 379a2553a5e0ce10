"""Memory and time of one rule's own work at scale, without Prometheus or JSON in the way.

    python benchmarks/rule_memory.py [--series 10000] [--days 7] [--cycles 5]

A `RuleRunner` (default rule settings: seasonal model, step 1m) runs against an in-process source that
computes a deterministic seasonal series for any (series, timestamp) on demand, so the process holds no
copy of the data besides the exporter's own. Prints the process's peak RSS (VmHWM, reset per stage through
/proc/self/clear_refs) and wall time for: the history load (merge into the frame), the first refit,
scoring cycles, and a second refit while the frame is live. `benchmarks/cycle.py` measures the same
against a real Prometheus, where fetching and decoding JSON add their own memory and time.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from exporter.config import RuleConfig
from exporter.frame import SeriesFrame
from exporter.modelstate import ModelStore
from exporter.pipeline import RuleRunner
from exporter.reader import RangeResult, SeriesKey
from exporter.store import RuleSnapshot, Store

DAY = 86400


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


class SyntheticSource:
    """Seasonal gauges computed on demand: series i at time t (no stored matrix)."""

    def __init__(self, n: int) -> None:
        self.keys: list[SeriesKey] = [
            (("__name__", "bench_metric"), ("instance", f"host-{i:05d}"), ("job", "bench")) for i in range(n)
        ]
        i = np.arange(n, dtype=np.float64)[:, None]
        self.level, self.amp, self.phase = 100 + 10 * (i % 7), 5 + (i % 11), (i % 24) / 24 * 2 * np.pi

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
        t = np.arange(int(start) // int(step) * int(step), int(end) + 1, int(step), dtype=np.int64)
        rows = [i for i, k in enumerate(self.keys) if keep is None or keep(k)]
        idx = np.asarray(rows, dtype=np.int64)[:, None]
        tf = t.astype(np.float64)[None, :]
        noise = np.sin(tf * 12.9898 + idx * 78.233) * 43758.5453
        noise = (noise - np.floor(noise)) - 0.5  # deterministic per (series, t): overlaps re-read the same
        values = self.level[idx[:, 0]] + self.amp[idx[:, 0]] * np.sin(
            2 * np.pi * (tf % DAY) / DAY + self.phase[idx[:, 0]]
        )
        values += 2 * noise
        return RangeResult([self.keys[i] for i in rows], t, values, 0, ())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--cycles", type=int, default=5)
    args = ap.parse_args()
    n = args.series
    rule = RuleConfig(
        name="bench", query="bench_metric", step=60, interval=60, history=args.days * DAY, max_series=n
    )
    now = [1_760_000_000.0 // DAY * DAY + 0.5 * DAY]
    source = SyntheticSource(n)
    store = Store()
    runner = RuleRunner(rule, source, store, clock=lambda: now[0])
    rows: list[tuple[str, float, float, float]] = []
    print(f"after imports: RSS {rss_mb('VmRSS'):.0f} MB", flush=True)

    def stage(name: str, fn: Callable[[], None]) -> None:
        reset_peak()
        began = time.perf_counter()
        fn()
        took = time.perf_counter() - began
        rows.append((name, took, rss_mb("VmHWM"), rss_mb("VmRSS")))
        print(f"{name}: {took:.2f} s, peak {rows[-1][2]:.0f} MB, RSS after {rows[-1][3]:.0f} MB", flush=True)

    def fit() -> None:
        runner.fit_job()
        h = store.health()[rule.name]
        if h.last_error:
            raise SystemExit(f"fit failed: {h.last_error}")
        print(f"  fit stage {h.durations['fit']:.2f} s, {h.series} series", flush=True)

    def cycles() -> None:
        for _ in range(args.cycles):
            now[0] += 60
            runner.score_job()

    stage("history load", runner._fetch)
    stage("refit (fit_job)", fit)
    stage(f"{args.cycles} scoring cycles", cycles)
    stage("second refit (fit_job)", fit)
    snap = store.snapshots()[rule.name]
    with tempfile.TemporaryDirectory() as tmp:
        models = ModelStore(tmp)
        saved: dict[str, Path] = {}
        model = runner._model
        assert model is not None

        def save() -> None:
            saved["path"] = models.save(rule, model)

        stage("save the model", save)
        size = saved["path"].stat().st_size
        print(f"  saved model: {size / 2**20:.1f} MB, {size / n / 1024:.2f} KiB per series", flush=True)
        runner._frame = SeriesFrame(60, 2, 1)  # let the old runner's history go: one rule's peak, not two
        restarted = RuleRunner(rule, source, Store(), clock=lambda: now[0], models=models)
        first_score: list[float] = []
        publish = restarted._out.publish

        def timed_publish(snapshot: RuleSnapshot) -> None:
            if not first_score:
                first_score.append(time.perf_counter())
            publish(snapshot)

        restarted._out.publish = timed_publish  # type: ignore[method-assign]
        began = time.perf_counter()
        stage("restart: restore, recent data, score, backfill", restarted.fit_job)
        print(f"  restart: first scores published after {first_score[0] - began:.2f} s", flush=True)
    print(f"exported {len(snap.labels)} series; score >= 1: {int((snap.score >= 1).sum())}")
    print()
    print("| stage | s | peak RSS MB | RSS after MB |")
    print("| --- | --- | --- | --- |")
    for name, took, peak, after in rows:
        print(f"| {name} | {took:.2f} | {peak:.0f} | {after:.0f} |")
    cmd = f"python benchmarks/rule_memory.py --series {n} --days {args.days:g} --cycles {args.cycles}"
    print(f"\nCommand: {cmd}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
