"""End to end against a real Prometheus: backfilled history → exporter → scores scraped back by Prometheus.

Also starts the exporter before Prometheus is up, to check a rule is marked down with its errors counted
and recovers on its own; and runs a rule with bad PromQL next to the good ones.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.realservers import (
    PrometheusServer,
    backfill,
    free_port,
    promtool_check_metrics,
    require_binary,
    wait_until,
    write_openmetrics,
)

pytestmark = pytest.mark.integration
STEP = 60
DAYS = 4
WEIRD = 'quote " back\\slash ☃'


def synthetic_series(end: int) -> tuple[list, dict[str, str]]:
    """Seasonal request rates for 6 instances and 2 queues. Returns the series and the expected verdicts."""
    rng = np.random.default_rng(42)
    t = np.arange(end - DAYS * 86400 + STEP, end + 1, STEP, dtype=np.int64)
    daily = np.sin(2 * np.pi * (t % 86400) / 86400)
    series = []
    verdict = {}
    for i in range(6):
        noise = rng.normal(0, 3, len(t))
        noise[-10:] = np.clip(noise[-10:], -6, 6)  # "normal" now means within 2σ
        v = (100 + 20 * i) * (1 + 0.5 * daily) + noise
        name = f"i{i}"
        if i == 0:
            v[len(t) // 2 : len(t) // 2 + 30] *= (
                4  # an old spike inside the training window: must not blind the model
            )
        if i == 1:
            v[-3:] *= 3  # anomalous right now: a spike
        if i == 2:
            v[-3:] = 0  # anomalous right now: a drop to zero
        verdict[name] = "anomalous" if i in (1, 2) else "normal"
        series.append(("it_requests_per_second", {"job": "api", "instance": name}, t, v))
    for q in ("orders", WEIRD):
        series.append(("it_queue_depth", {"queue": q}, t, 40 + rng.normal(0, 2, len(t))))
    return series, verdict


def write_rules(path: Path, prometheus_url: str) -> None:
    path.write_text(
        f"""
prometheus:
  url: {prometheus_url}
  timeout: 10s
  max_retries: 1
defaults:
  interval: 2s
  retrain: 1h
  history: {DAYS}d
  step: 1m
rules:
  - name: requests
    query: it_requests_per_second
    labels: {{team: sre}}
  - name: queues
    query: it_queue_depth
  - name: broken
    query: rate(it_requests_per_second[5m]
""",
        encoding="utf-8",
    )


def metrics_of(url: str) -> str:
    return requests.get(f"{url}/metrics", timeout=5).text


def answers(url: str, status: int = 200) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == status
    except requests.ConnectionError:
        return False


def sample(text: str, name: str, **labels: str) -> float | None:
    """Value of the first sample of `name` whose labels include `labels` (from exposition text)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.fixture
def exporter_process(tmp_path):
    procs = []

    def start(rules: Path, port: int) -> subprocess.Popen:
        log = open(tmp_path / "exporter.log", "w")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config.file", str(rules),
             "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "debug"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        procs.append((proc, log))
        return proc

    yield start
    for proc, log in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_scores_reach_prometheus_and_flag_the_injected_anomalies(tmp_path, exporter_process):
    require_binary("prometheus")
    now = int(time.time())
    end = now // STEP * STEP - STEP  # last sample a minute ago: inside Prometheus' 5 m lookback
    series, verdict = synthetic_series(end)
    om = write_openmetrics(tmp_path / "history.om", series)
    backfill(om, tmp_path / "tsdb")

    prom_port, exporter_port = free_port(), free_port()
    prom_url, exporter_url = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{exporter_port}"
    rules = tmp_path / "rules.yaml"
    write_rules(rules, prom_url)

    # 1. Exporter first, Prometheus not up yet: rules are marked down and errors counted, no crash.
    proc = exporter_process(rules, exporter_port)
    wait_until(
        lambda: answers(f"{exporter_url}/-/ready"),
        timeout=60,
        what="exporter ready (first fit reported an error)",
    )
    text = metrics_of(exporter_url)
    assert sample(text, "anomaly_exporter_rule_up", rule="requests") == 0
    assert sample(text, "anomaly_exporter_errors_total", rule="requests", stage="query") >= 1
    assert proc.poll() is None

    # 2. Prometheus comes up (and scrapes the exporter): the rules recover on their own.
    with PrometheusServer(tmp_path / "tsdb", targets=[f"127.0.0.1:{exporter_port}"], port=prom_port) as prom:
        wait_until(
            lambda: sample(metrics_of(exporter_url), "anomaly_exporter_rule_up", rule="requests") == 1,
            timeout=90,
            what="rule 'requests' up after Prometheus started",
        )

        # 3. Prometheus' own view of the scores, through its query API.
        result = prom.wait_for('anomaly_score{rule="requests"}', lambda r: len(r) == 6, timeout=60)
        by_instance = {}
        for r in result:
            m = r["metric"]
            assert m["job"] == "anomaly-exporter"  # Prometheus' target label...
            assert m["exported_job"] == "api"  # ...so the source's job label arrives as exported_job
            assert m["metric_name"] == "it_requests_per_second" and m["team"] == "sre"
            by_instance[m["instance"] if "exported_instance" not in m else m["exported_instance"]] = float(
                r["value"][1]
            )
        assert set(by_instance) == set(verdict)
        for name, kind in verdict.items():
            if kind == "anomalous":
                assert by_instance[name] >= 1, (name, by_instance)
            else:
                assert by_instance[name] < 1, (name, by_instance)

        bands = prom.query(
            'anomaly_expected_upper{rule="requests"} - anomaly_expected_lower{rule="requests"}'
        )
        assert len(bands) == 6 and all(float(b["value"][1]) > 0 for b in bands)
        queues = prom.query('anomaly_score{rule="queues"}')
        assert {r["metric"]["queue"] for r in queues} == {"orders", WEIRD}

        # 4. Bad PromQL: that rule reports Prometheus' own error; the others keep running.
        text = metrics_of(exporter_url)
        assert sample(text, "anomaly_exporter_rule_up", rule="broken") == 0
        assert sample(text, "anomaly_exporter_rule_up", rule="queues") == 1
        page = requests.get(f"{exporter_url}/", timeout=5).text
        assert "parse error" in page

        # 5. Our exposition passes Prometheus' own linter.
        assert promtool_check_metrics(text) == ""


def test_backtest_against_prometheus_scores_every_series_of_the_rule(tmp_path):
    require_binary("prometheus")
    from exporter.cli import main

    end = int(time.time()) // STEP * STEP - STEP
    series, verdict = synthetic_series(end)
    backfill(write_openmetrics(tmp_path / "history.om", series), tmp_path / "tsdb")
    with PrometheusServer(tmp_path / "tsdb") as prom:
        rules = tmp_path / "rules.yaml"
        write_rules(rules, prom.url)
        out = tmp_path / "scored.csv"
        start = end - 6 * 3600
        args = ["backtest", "--config", str(rules), "--rule", "requests", "--start", str(start)]
        assert main([*args, "--end", str(end), "--output", str(out), "--quiet"]) == 0
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["series", "timestamp", "value", "score", "expected", "lower", "upper", "alert"]
    assert len(rows) == 6 * (6 * 60 + 1)  # every series of the rule, every minute of the range
    last = {re.search(r'instance="(\w+)"', r["series"]).group(1): r for r in rows}  # the newest row wins
    assert set(last) == set(verdict)
    for name, kind in verdict.items():
        assert (float(last[name]["score"]) >= 1) == (kind == "anomalous"), (name, last[name])
