"""Time one rule's cycle against a real Prometheus: history load, refit, scoring cycle, /metrics scrape.

    python benchmarks/cycle.py --series 100 1000 [--days 7] [--repeats 3]

For each N: N seasonal gauges at 1-minute resolution are written as OpenMetrics, backfilled with promtool
and served by a real Prometheus on 127.0.0.1. The exporter's own objects (PrometheusReader, RuleRunner,
Store, AnomalyCollector, WebApp) then run against it. The runner's clock is pinned to just after the newest
sample, so every scoring cycle asks for the same 5 minutes however long the run takes. Linux only (reads
/proc/self). See docs/performance.md for what each number means.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import multiprocessing
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import requests
import sklearn
from sklearn.ensemble import IsolationForest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.scrape import PROMETHEUS_ACCEPT, exporter_registry, scrape
from exporter.config import ModelConfig, PrometheusConfig, RuleConfig
from exporter.frame import Window
from exporter.pipeline import RuleRunner
from exporter.reader import MAX_POINTS_PER_SERIES, PrometheusReader
from exporter.server import WebApp
from exporter.store import Store
from tests.realservers import PrometheusServer, backfill, write_openmetrics

STEP = 60
METRIC = "bench_requests_per_second"
QUERY = f'{METRIC}{{job="bench"}}'
RULE = "bench"
NAIVE_SERIES = 20
# PrometheusReader's default budget per request, read from its signature so the floor is chunked exactly
# like the reader (a hard-coded 2,000,000 here went stale when the reader's default became 500,000).
POINTS_PER_REQUEST = inspect.signature(PrometheusReader).parameters["points_per_request"].default


def write_history(path: Path, n: int, days: int, end: int) -> None:
    """N gauges: daily cycle + noise, an old incident in every 50th series, every 100th anomalous now."""
    rng = np.random.default_rng(n)
    t = np.arange(end - days * 86400 + STEP, end + 1, STEP, dtype=np.int64)
    angle = 2 * np.pi * (t % 86400) / 86400

    def series():
        for k in range(n):
            base = 50 + 450 * rng.random()
            v = base * (1 + 0.4 * np.sin(angle + rng.uniform(0, 0.5))) + rng.normal(0, 0.03 * base, len(t))
            if k % 50 == 0:
                at = int(rng.integers(len(t) // 4, len(t) // 2))
                v[at : at + 30] *= 3
            if k % 100 == 1:
                v[-3:] *= 2.5
            yield METRIC, {"instance": f"i{k}", "job": "bench"}, t, np.round(v, 2)  # short floats: small file

    write_openmetrics(path, series())


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def check(store: Store) -> None:
    """The runner swallows and records errors (by design); a benchmark must not time a failure."""
    h = store.health()[RULE]
    if h.last_error is not None or any(h.errors.values()):
        raise RuntimeError(f"rule failed: {h.last_error} (errors {dict(h.errors)})")


def raw_fetch(session: requests.Session, url: str, start: int, end: int, per: int) -> None:
    """GET + json.loads of a range query, in requests of `per` columns (like the reader), nothing else."""
    for a in range(start, end + 1, per * STEP):
        params = {"query": QUERY, "start": a, "end": min(end, a + (per - 1) * STEP), "step": STEP}
        resp = session.get(f"{url}/api/v1/query_range", params=params, timeout=600)
        resp.raise_for_status()
        if json.loads(resp.content)["status"] != "success":  # bytes in, as the reader does
            raise RuntimeError(f"floor query failed: {resp.text[:200]}")


def memory(reset: bool = True) -> tuple[float, float]:
    """(RSS now, peak RSS since the last reset) in MB, from /proc/self/status; then restart the peak."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    rss, peak = (int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))  # kB
    if reset:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from the current RSS
    return rss, peak


def naive_iforest(window: Window, k: int, repeats: int) -> float:
    """Seconds per series for one sklearn IsolationForest per series, fitted on its values (one feature)."""
    rows = [v[~np.isnan(v)].reshape(-1, 1) for v in window.rows(slice(0, k))]

    def run() -> None:
        for x in rows:
            IsolationForest(random_state=0).fit(x)

    return statistics.median(timed(run) for _ in range(repeats)) / len(rows)


def measure(n: int, days: int, repeats: int, end: int, url: str) -> dict[str, float]:
    def clock() -> float:
        return float(end + 30)  # grid end = the newest sample, on every cycle

    rule = RuleConfig(name=RULE, query=QUERY, history=days * 86400.0, step=STEP, max_series=n)
    out: dict[str, float] = {}
    with PrometheusReader(PrometheusConfig(url=url, timeout=600)) as reader:
        # 1. initial history load: probe + chunked query + parse + merge, fresh runner each time
        memory()
        loads, runner = [], None
        for _ in range(repeats):
            runner = None  # free the previous frame first: the peak should be one rule's, not two
            store = Store(clock)
            runner = RuleRunner(rule, reader, store, clock)
            loads.append(timed(runner._fetch))
            check(store)
        out["rss_loaded"], out["peak_load"] = memory()  # before anything below reads the frame
        window = runner._frame.window()
        if len(window.keys) != n:
            raise RuntimeError(f"loaded {len(window.keys)} series, expected {n}")
        out["points"] = float(window.counts().sum())  # read in blocks of rows
        out["load"] = statistics.median(loads)
        out["matrix_mb"] = runner._frame.nbytes / 2**20
        memory()  # the counting above must not count towards the refit's peak

        # 2. refit: the runner's own "fit" stage timer inside fit_job (drop_absent + window + fit)
        fits = []
        for _ in range(repeats):
            runner.fit_job()
            check(store)
            fits.append(store.health()[RULE].durations["fit"])
        out["refit"] = statistics.median(fits)
        out["peak_refit"] = memory()[1]

        # 3. one scoring cycle: incremental query + parse + merge + predict + calibrate + snapshot + publish
        cycles, queries, scores = [], [], []
        for _ in range(repeats):
            cycles.append(timed(runner.score_job))
            check(store)
            h = store.health()[RULE]
            queries.append(h.durations["query"])
            scores.append(h.durations["score"])
        out["cycle"] = statistics.median(cycles)
        out["cycle_query"] = statistics.median(queries)
        out["cycle_score"] = statistics.median(scores)
        snap = store.snapshots()[RULE]
        out["exported"] = float(len(snap.labels))
        out["anomalous"] = float(np.count_nonzero(snap.score >= 1))

    # 4. one /metrics scrape: the WebApp's response to Prometheus' own Accept header, plain and gzipped
    registry = exporter_registry(store)
    app = WebApp(store, registry)
    for key, encoding in (("scrape", None), ("scrape_gzip", "gzip")):
        get = functools.partial(scrape, app, PROMETHEUS_ACCEPT, encoding)
        out[key] = statistics.median(timed(get) for _ in range(repeats))
        out[f"{key}_bytes"] = float(len(get()))

    # 5. the floor: the same queries with plain requests + json.loads, nothing else
    last = int(clock()) // STEP * STEP
    history_start = last - days * 86400 + STEP  # what _load_history asks for (plus its small probe)
    per = min(MAX_POINTS_PER_SERIES, POINTS_PER_REQUEST // n)  # columns per request, as the reader splits
    with requests.Session() as session:
        raw_fetch(session, url, last - 300, last, per)  # warm the connection, as the reader's session is
        incremental = [timed(lambda: raw_fetch(session, url, last - 300, last, per)) for _ in range(repeats)]
        history = [timed(lambda: raw_fetch(session, url, history_start, last, per)) for _ in range(repeats)]
    out["floor"], out["history_floor"] = statistics.median(incremental), statistics.median(history)

    # naive comparison: one IsolationForest per series, on a small subset
    out["naive_per_series"] = naive_iforest(window, min(NAIVE_SERIES, n), repeats)
    out["rss_mb"] = max(out["peak_load"], out["peak_refit"], memory()[1])
    return out


def bench(n: int, days: int, repeats: int) -> dict[str, float]:
    end = int(time.time()) // STEP * STEP - STEP  # newest sample: one minute before now
    with tempfile.TemporaryDirectory(prefix="bench-cycle-") as tmp:
        om, tsdb = Path(tmp) / "history.om", Path(tmp) / "tsdb"
        # Written in a child process so generating the data does not count in this process's peak RSS.
        started = time.perf_counter()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            pool.submit(write_history, om, n, days, end).result()
        write_s = time.perf_counter() - started
        om_mb = om.stat().st_size / 2**20
        backfill_s = timed(lambda: backfill(om, tsdb, timeout=3600))
        om.unlink()
        print(
            f"N={n}: wrote {om_mb:.0f} MB OpenMetrics in {write_s:.1f} s, backfilled in {backfill_s:.1f} s",
            file=sys.stderr,
        )
        with PrometheusServer(tsdb) as prom:
            out = measure(n, days, repeats, end, prom.url)
    return {**out, "n": n, "write": write_s, "backfill": backfill_s, "om_mb": om_mb}


def machine() -> list[str]:
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    prom = subprocess.run(["prometheus", "--version"], capture_output=True, text=True).stdout
    git = ["git", "-C", str(Path(__file__).resolve().parents[1]), "describe", "--always", "--dirty"]
    rev = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    return [
        f"- cores: {os.cpu_count()} ({cpu.group(1).strip() if cpu else 'unknown CPU'})",
        f"- memory: {mem_kb / 2**20:.1f} GiB",
        f"- Python {platform.python_version()}, numpy {np.__version__}, scikit-learn {sklearn.__version__}",
        f"- {prom.splitlines()[0].strip() if prom else 'prometheus: unknown version'} (same machine)",
        f"- exporter code: git {rev} (-dirty = uncommitted changes)"
        if rev
        else "- exporter code: not in git",
    ]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows]]


def report(rows: list[dict[str, float]], args: argparse.Namespace, total: float) -> str:
    main_cols = "series,history points,load s,refit s,score cycle s,scrape ms,scrape KB,floor fetch+parse s"
    lines = table(
        [*main_cols.split(","), "cycle/floor", "peak RSS MB"],
        [
            [f"{r['n']:,.0f}", f"{r['points']:,.0f}", f"{r['load']:.2f}", f"{r['refit']:.2f}",
             f"{r['cycle']:.3f}", f"{r['scrape'] * 1e3:.1f}", f"{r['scrape_bytes'] / 1024:.0f}",
             f"{r['floor']:.4f}", f"{r['cycle'] / r['floor']:.1f}", f"{r['rss_mb']:.0f}"]
            for r in rows
        ],
    )  # fmt: skip
    detail_cols = "series,history floor s,load/history floor,cycle: query stage s,score stage s,exported"
    lines += ["", *table(
        [*detail_cols.split(","), "score ≥ 1", "gzip scrape ms", "gzip KB", "OpenMetrics MB", "write s",
         "backfill s"],
        [
            [f"{r['n']:,.0f}", f"{r['history_floor']:.2f}", f"{r['load'] / r['history_floor']:.2f}",
             f"{r['cycle_query']:.3f}", f"{r['cycle_score']:.3f}", f"{r['exported']:.0f}",
             f"{r['anomalous']:.0f}", f"{r['scrape_gzip'] * 1e3:.1f}", f"{r['scrape_gzip_bytes'] / 1024:.0f}",
             f"{r['om_mb']:.0f}", f"{r['write']:.1f}", f"{r['backfill']:.1f}"]
            for r in rows
        ],
    )]  # fmt: skip
    lines += ["", *table(
        ["series", "history storage MB", "RSS after load MB", "peak during load MB", "peak during refit MB"],
        [
            [f"{r['n']:,.0f}", f"{r['matrix_mb']:.0f}", f"{r['rss_loaded']:.0f}", f"{r['peak_load']:.0f}",
             f"{r['peak_refit']:.0f}"]
            for r in rows
        ],
    )]  # fmt: skip
    lines += [
        "",
        f"Naive: one sklearn IsolationForest per series, timed on the first {NAIVE_SERIES} (extrapolated).",
        "",
    ]
    lines += table(
        ["series", "IsolationForest fit per series s", "our refit per series s", "ratio"],
        [
            [f"{r['n']:,.0f}", f"{r['naive_per_series']:.4f}", f"{r['refit'] / r['n']:.6f}",
             f"{r['naive_per_series'] * r['n'] / r['refit']:,.0f}×"]
            for r in rows
        ],
    )  # fmt: skip
    lines += ["", f"Peak RSS: the process's high-water mark (VmHWM) while measuring that N, reset before its "
              f"first load; right after imports it was {rows[0]['rss_base']:.0f} MB."]  # fmt: skip
    lines += ["", f"Rule: step {STEP} s, history {args.days} d, default model settings: {ModelConfig()}."]
    lines += ["", "Machine:", *machine(), "", f"Command: `python {shlex.join(sys.argv)}`"]
    lines.append(f"Medians of {args.repeats} runs; total wall time {total / 60:.1f} min.")
    before, after = args.loadavg, os.getloadavg()[0]
    lines.append(
        f"1-minute load average at start / end: {before:.2f} / {after:.2f} "
        "(at start, anything much above 0 is other work sharing the cores)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, nargs="+", default=[100, 1000], help="series counts N")
    parser.add_argument("--days", type=int, default=7, help="days of 1-minute history")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median reported)")
    args = parser.parse_args()
    args.loadavg = os.getloadavg()[0]
    started = time.perf_counter()
    rss_base = memory()[1]
    rows = [{**bench(n, args.days, args.repeats), "rss_base": rss_base} for n in sorted(args.series)]
    print(report(rows, args, time.perf_counter() - started))


if __name__ == "__main__":
    main()
