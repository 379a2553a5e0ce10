"""The shipped rules files (rules.yaml, deploy/compose/rules.yaml) query what they say they query.

A real Prometheus is given 40 minutes of synthetic node-exporter and HTTP metrics shaped like the real ones
(idle CPU counters per mode, loopback and container interfaces, loop devices, 5xx and non-5xx codes, a
classic histogram), then every rule's query runs as an instant query: it must parse, return an instant
vector, and give the values a reader of the file's comments would expect (e.g. loopback traffic left out,
a job without 5xx answers a ratio of 0, not nothing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from exporter.config import load_config
from tests.realservers import PrometheusServer, backfill, write_openmetrics

ROOT = Path(__file__).resolve().parents[1]
STEP = 15.0  # seconds between synthetic samples, a common scrape interval
NODE = {"instance": "node-a:9100", "job": "node"}

# (metric, labels, per-second increase for counters / value for gauges, is_counter)
SERIES: list[tuple[str, dict[str, str], float, bool]] = [
    *[
        ("node_cpu_seconds_total", {**NODE, "cpu": cpu, "mode": mode}, share, True)
        for cpu in ("0", "1")
        for mode, share in (("idle", 0.7), ("user", 0.2), ("system", 0.1))
    ],
    ("node_memory_MemAvailable_bytes", NODE, 4e9, False),
    ("node_memory_MemTotal_bytes", NODE, 16e9, False),
    ("node_disk_io_time_seconds_total", {**NODE, "device": "sda"}, 0.3, True),
    ("node_disk_io_time_seconds_total", {**NODE, "device": "nvme0n1"}, 0.6, True),
    ("node_disk_io_time_seconds_total", {**NODE, "device": "loop0"}, 0.9, True),
    ("node_network_receive_bytes_total", {**NODE, "device": "eth0"}, 1e6, True),
    ("node_network_receive_bytes_total", {**NODE, "device": "lo"}, 5e6, True),
    ("node_network_receive_bytes_total", {**NODE, "device": "veth1a2b3c"}, 7e6, True),
    ("node_network_receive_bytes_total", {**NODE, "device": "docker0"}, 9e6, True),
    ("http_requests_total", {"job": "api", "code": "200"}, 90.0, True),
    ("http_requests_total", {"job": "api", "code": "404"}, 5.0, True),
    ("http_requests_total", {"job": "api", "code": "503"}, 5.0, True),
    ("http_requests_total", {"job": "web", "code": "200"}, 50.0, True),
    *[
        ("http_request_duration_seconds_bucket", {"job": "api", "le": le}, count, True)
        for le, count in (("0.1", 80.0), ("0.5", 99.0), ("1", 100.0), ("+Inf", 100.0))
    ],
    (
        "prometheus_http_requests_total",
        {"job": "prometheus", "handler": "/api/v1/query", "code": "200"},
        4.0,
        True,
    ),
    (
        "prometheus_http_requests_total",
        {"job": "prometheus", "handler": "/api/v1/query", "code": "503"},
        1.0,
        True,
    ),
    *[
        (
            "prometheus_http_request_duration_seconds_bucket",
            {"job": "prometheus", "handler": "/", "le": le},
            n,
            True,
        )
        for le, n in (("0.1", 3.0), ("0.2", 5.0), ("+Inf", 5.0))
    ],
    ("scrape_duration_seconds", NODE, 0.02, False),
]

# rule -> {the result series' labels as "k=v,...": value}. For rules.yaml these are what its comments promise.
EXPECTED = {
    "node_cpu_usage": {"instance=node-a:9100": 0.3},
    "node_memory_usage": {"instance=node-a:9100,job=node": 0.75},
    "node_disk_io_utilisation": {
        "device=nvme0n1,instance=node-a:9100,job=node": 0.6,
        "device=sda,instance=node-a:9100,job=node": 0.3,
    },
    "node_network_receive": {"instance=node-a:9100": 1e6},
    "http_request_rate": {"job=api": 100.0, "job=web": 50.0},
    "http_error_ratio": {"job=api": 0.05, "job=web": 0.0},
    "http_latency_p99": {"job=api": 0.5},
}


def _samples() -> Iterator[tuple[str, dict[str, str], np.ndarray, np.ndarray]]:
    end = math.floor(time.time() / STEP) * STEP - STEP
    ts = end - STEP * np.arange(160)[::-1]  # 40 minutes
    for name, labels, rate, counter in SERIES:
        values = (ts - ts[0]) * rate + 1000.0 if counter else np.full(ts.shape, rate)
        yield name, labels, ts, values


def _key(metric: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, float]]:
    tmp = tmp_path_factory.mktemp("rules-example")
    series = list(_samples())
    backfill(write_openmetrics(tmp / "data.om", series), tmp / "tsdb")
    with PrometheusServer(tmp / "tsdb") as server:
        yield server, float(series[0][2][-1])


def _instant(server: PrometheusServer, query: str, at: float) -> dict[str, float]:
    r = requests.get(f"{server.url}/api/v1/query", params={"query": query, "time": repr(at)}, timeout=30)
    body = r.json()
    assert r.ok and body["status"] == "success", f"{body.get('errorType')}: {body.get('error')}\n{query}"
    assert body["data"]["resultType"] == "vector", (
        f"needs an instant vector, got {body['data']['resultType']}"
    )
    return {_key(s["metric"]): float(s["value"][1]) for s in body["data"]["result"]}


def test_rules_yaml_queries_parse_and_give_what_their_comments_say(prometheus) -> None:
    server, at = prometheus
    config = load_config(ROOT / "rules.yaml", environ={})
    assert [r.name for r in config.rules] == list(EXPECTED)
    for rule in config.rules:
        got = _instant(server, rule.query, at)
        assert got == pytest.approx(EXPECTED[rule.name], rel=1e-9, abs=1e-12), rule.name


def test_compose_rules_queries_parse_and_find_their_series(prometheus) -> None:
    server, at = prometheus
    config = load_config(ROOT / "deploy" / "compose" / "rules.yaml", environ={})
    for rule in config.rules:
        got = _instant(server, rule.query, at)
        assert got, f"{rule.name}: no series from {rule.query}"
        assert all(math.isfinite(v) for v in got.values()), (rule.name, got)
