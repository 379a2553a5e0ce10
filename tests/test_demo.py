"""The built-in demo: a newcomer's first minute. Same pipeline, synthetic source, scores within seconds."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import parse_config
from exporter.demo import DEMO_RULES, DemoSource
from exporter.reader import BadQueryError
from tests.realservers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_760_000_000.0


def test_overlapping_queries_agree_like_a_real_tsdb():
    src = DemoSource(started_at=T0, clock=lambda: T0 + 3600)
    a = src.query_range("demo_queue_depth", T0 - 7200, T0 + 3600, 60)
    b = src.query_range("demo_queue_depth", T0, T0 + 1800, 60)
    offset = int((T0 - (T0 - 7200) // 60 * 60) // 60)
    assert np.array_equal(a.values[:, offset : offset + b.values.shape[1]], b.values)


def test_history_has_a_spike_and_a_drop_and_live_anomalies_follow():
    src = DemoSource(started_at=T0)
    kinds = {a.kind for a in src.history_anomalies}
    assert kinds == {"spike", "drop"}
    live = src.anomalies_between(T0, T0 + 1800)
    assert [a.start - T0 for a in live] == [180.0, 780.0, 1380.0]
    drop = src.history_anomalies[1]
    t = np.arange(drop.start, drop.end, 60.0)
    assert (src.values(drop.series, t) == 0).all()


def test_no_points_from_the_future_and_unknown_metrics_are_rejected():
    src = DemoSource(started_at=T0, clock=lambda: T0)
    r = src.query_range('demo_cpu_usage_ratio{instance="node-1:9100"}', T0 - 600, T0 + 600, 60)
    assert r.timestamps[-1] <= T0 and len(r.keys) == 1
    with pytest.raises(BadQueryError, match="no metric 'nope'"):
        src.query_range("nope", T0 - 600, T0, 60)


def test_demo_rules_are_valid():
    assert [r.name for r in parse_config(DEMO_RULES).rules] == ["web_requests", "node_cpu", "queue_depth"]


def test_demo_command_serves_scores_within_seconds():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--web.listen-address", f"127.0.0.1:{port}"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def scored():
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.ConnectionError:
                return None
            found = [
                s
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
                if s.name == "anomaly_score"
            ]
            return found if len(found) == 9 else None

        samples = wait_until(scored, timeout=60, what="9 demo series scored")
        assert {s.labels["rule"] for s in samples} == {"web_requests", "node_cpu", "queue_depth"}
        assert requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
