"""Micro-benchmark of /metrics: a synthetic N-series snapshot published into a Store, then scraped.

    python benchmarks/scrape.py [--series 10000] [--repeats 7]

No Prometheus needed. Times, as medians of --repeats runs:
- publish: Store.publish of one rule's snapshot (what the scoring thread pays per cycle), the first one
  (no label text cached yet) and later ones (same series, new values);
- generate_latest: prometheus_client's own rendering of the registry (the reference, and the old scrape);
- the WebApp's /metrics response for the Accept headers that matter: none (text 0.0.4, e.g. curl) and
  Prometheus 2.x's (OpenMetrics 1.0.0), each plain and with gzip; called in-process, and over HTTP from a
  WebServer on 127.0.0.1 (what a scraper waits for, body read but not decompressed).
Labels look like the cycle benchmark's series (instance, job, metric_name, rule); values have full precision.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import requests
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from exporter.collector import AnomalyCollector
from exporter.server import WebApp, WebServer
from exporter.store import RuleSnapshot, Store

RULE = "bench"
PROMETHEUS_ACCEPT = (  # what Prometheus 2.x (the 2.42 on these machines) sends: OpenMetrics 1.0.0 is chosen
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
ACCEPT = {"none (text 0.0.4)": None, "Prometheus 2.x (OpenMetrics 1.0.0)": PROMETHEUS_ACCEPT}


def synthetic(n: int, timestamp: float, seed: int) -> RuleSnapshot:
    rng = np.random.default_rng(seed)
    base = 50 + 450 * rng.random(n)
    expected = base * (1 + 0.4 * rng.random(n))
    spread = 0.1 * base * rng.random(n)
    observed = np.round(expected + rng.normal(0, 1, n) * spread, 2)
    return RuleSnapshot(
        labels=tuple(
            (
                ("instance", f"i{k}"),
                ("job", "bench"),
                ("metric_name", "bench_requests_per_second"),
                ("rule", RULE),
            )
            for k in range(n)
        ),
        score=np.abs(observed - expected) / spread,
        expected=expected,
        lower=expected - spread,
        upper=expected + spread,
        timestamp=timestamp,
        value=observed,
    )


def exporter_registry(store: Store) -> CollectorRegistry:
    """What `exporter run` serves: our collector, then prometheus_client's process, platform and GC ones."""
    registry = CollectorRegistry()
    registry.register(AnomalyCollector(store))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def scrape(app: WebApp, accept: str | None, encoding: str | None) -> bytes:
    """The body of GET /metrics, called in-process (no socket)."""
    environ = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    if accept is not None:
        environ["HTTP_ACCEPT"] = accept
    if encoding is not None:
        environ["HTTP_ACCEPT_ENCODING"] = encoding
    return b"".join(app(environ, lambda status, headers: None))


def ours(text: bytes) -> bytes:
    """The text up to the process collector's, whose values change from one call to the next."""
    return text.partition(b"# HELP process_")[0]


def over_http(url: str, accept: str | None, encoding: str | None) -> bytes:
    """The raw (still compressed) body of GET /metrics through a real socket and WebServer."""
    headers = {"Accept": accept or "*/*", "Accept-Encoding": encoding or "identity"}
    with requests.get(url, headers=headers, timeout=60, stream=True) as response:
        return response.raw.read(decode_content=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    store = Store()
    writer = store.add_rule(RULE)
    snaps = [synthetic(args.series, float(60 * i), seed=i) for i in range(args.repeats + 1)]
    started = time.perf_counter()
    writer.publish(snaps[0])  # the first cycle: every series' label text is new
    rows: list[tuple[str, float, int | None]] = [
        ("first publish", (time.perf_counter() - started) * 1e3, None)
    ]
    publishes = []
    for snap in snaps[1:]:  # later cycles: same series, new values (as in the live loop)
        started = time.perf_counter()
        writer.publish(snap)
        publishes.append(time.perf_counter() - started)
    rows.append(("publish (each later cycle)", statistics.median(publishes) * 1e3, None))
    registry = exporter_registry(store)
    app = WebApp(store, registry)
    reference = generate_latest(registry)
    rows.append(
        (
            "generate_latest(registry)",
            median_ms(partial(generate_latest, registry), args.repeats),
            len(reference),
        )
    )
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        for name, accept in ACCEPT.items():
            plain = ours(scrape(app, accept, None))
            if accept is None and plain != ours(reference):
                raise RuntimeError("the /metrics text differs from generate_latest()")
            for encoding in (None, "gzip"):
                body = scrape(app, accept, encoding)
                if encoding and ours(gzip.decompress(body)) != plain:
                    raise RuntimeError("the gzip body does not decompress to the text")
                how = f"Accept {name}" + (", gzip" if encoding else "")
                ms = median_ms(partial(scrape, app, accept, encoding), args.repeats)
                rows.append((f"/metrics in-process, {how}", ms, len(body)))
                ms = median_ms(partial(over_http, url, accept, encoding), args.repeats)
                rows.append((f"/metrics over HTTP, {how}", ms, len(over_http(url, accept, encoding))))
    finally:
        server.stop()
    print(f"{args.series:,} series, medians of {args.repeats} runs")
    print("| what | ms | bytes |")
    print("| --- | --- | --- |")
    for label, ms, size in rows:
        print(f"| {label} | {ms:.1f} | {'' if size is None else f'{size:,}'} |")


if __name__ == "__main__":
    main()
