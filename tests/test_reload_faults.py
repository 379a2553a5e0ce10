"""rules.yaml replaced under a running exporter that scores real series from a real Prometheus: garbage and a
file with one bad rule are rejected (old rules keep scoring); changed rules take effect, a removed rule's
series disappear from /metrics, and a rule whose model settings did not change restores its saved model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.realservers import (
    PrometheusServer,
    backfill,
    free_port,
    require_binary,
    wait_until,
    write_openmetrics,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
STEP = 60


def write_rules(path: Path, url: str, rules: str) -> None:
    path.write_text(
        f"""prometheus: {{url: {url}, timeout: 10s, max_retries: 1}}
defaults: {{interval: 2s, retrain: 1h, history: 1d, step: 1m}}
rules:
{rules}""",
        encoding="utf-8",
    )


def scored(url: str) -> dict[str, set[tuple]]:
    """rule -> the label sets of its anomaly_score series (rule label left out)."""
    try:
        text = requests.get(f"{url}/metrics", timeout=5).text
    except requests.ConnectionError:
        return {}
    out: dict[str, set[tuple]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "anomaly_score":
                labels = dict(s.labels)
                out.setdefault(labels.pop("rule"), set()).add(tuple(sorted(labels.items())))
    return out


def reload_gauge(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "anomaly_exporter_config_last_reload_successful":
                return s.value
    raise AssertionError("no reload gauge")


def test_reloads_with_bad_and_changed_rules(tmp_path):
    require_binary("prometheus")
    end = int(time.time()) // STEP * STEP - STEP
    t = np.arange(end - 86400 + STEP, end + 1, STEP, dtype=np.int64)
    rng = np.random.default_rng(1)
    series = [
        (metric, {"instance": f"i{i}"}, t, 50 + 10 * i + rng.normal(0, 1, len(t)))
        for metric in ("fr_cpu", "fr_mem", "fr_disk")
        for i in range(2)
    ]
    tsdb = tmp_path / "tsdb"
    backfill(write_openmetrics(tmp_path / "data.om", series), tsdb)
    with PrometheusServer(tsdb) as prom:
        rules = tmp_path / "rules.yaml"
        write_rules(rules, prom.url, "  - {name: cpu, query: fr_cpu}\n  - {name: mem, query: fr_mem}\n")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "exporter.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "exporter", "--config.file", str(rules), "--web.listen-address",
                 f"127.0.0.1:{port}", "--web.enable-lifecycle", "--storage.path", str(tmp_path / "state")],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            both = wait_until(
                lambda: ((s := scored(url)) and len(s) == 2 and s) or None, timeout=60, what="scores"
            )
            assert {k: len(v) for k, v in both.items()} == {"cpu": 2, "mem": 2}

            # garbage: rejected, both rules keep scoring
            rules.write_text("rules: [{name: cpu, query: \n  - ]] garbage", encoding="utf-8")
            os.kill(proc.pid, signal.SIGHUP)
            wait_until(lambda: reload_gauge(url) == 0 or None, timeout=10, what="reload failure")
            assert set(scored(url)) == {"cpu", "mem"}

            # one bad rule among good ones: the whole file is rejected, with the bad value named
            write_rules(
                rules,
                prom.url,
                "  - {name: cpu, query: fr_cpu}\n  - {name: mem, query: fr_mem}\n"
                "  - {name: disk, query: fr_disk, z_threshold: -2}\n",
            )
            r = requests.post(f"{url}/-/reload", timeout=10)
            assert r.status_code == 500 and "z_threshold" in r.text and "-2" in r.text, r.text
            assert set(scored(url)) == {"cpu", "mem"} and proc.poll() is None

            # changed rules: cpu gets a label (alert/output settings only: its saved model still applies),
            # mem is removed, disk is added
            write_rules(
                rules,
                prom.url,
                "  - {name: cpu, query: fr_cpu, labels: {team: infra}}\n  - {name: disk, query: fr_disk}\n",
            )
            r = requests.post(f"{url}/-/reload", timeout=10)
            assert r.status_code == 200, r.text

            def changed():
                s = scored(url)
                return (
                    s if set(s) == {"cpu", "disk"} and all(("team", "infra") in k for k in s["cpu"]) else None
                )

            after = wait_until(changed, timeout=60, what="changed rules scored")
            assert len(after["cpu"]) == 2 and len(after["disk"]) == 2
            assert "mem" not in scored(url)  # the removed rule's series are gone, not left stale
            text = log.read_text()
            assert "rule cpu: restored the model" in text  # no refit for an output-only change
            assert not list((tmp_path / "state" / "models").glob("mem-*.npz"))
            assert "Traceback" not in text
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
