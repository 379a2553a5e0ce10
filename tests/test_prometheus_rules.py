"""The Prometheus alerting rules shipped for people who alert through Prometheus: promtool accepts them,
promtool's unit tests (tests/data/prometheus-rules-test.yaml) show each alert firing when it should and
not otherwise, and they only use metrics the exporter exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.realservers import require_binary
from tests.test_dashboard import PROMETHEUS_OWN, exported_metric_names, promql_metric_names

ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = ROOT / "prometheus" / "anomaly-exporter-rules.yaml"
RULES_CHART_COPY = ROOT / "helm" / "anomaly-exporter" / "files" / "prometheus-rules.yaml"
UNIT_TESTS = ROOT / "tests" / "data" / "prometheus-rules-test.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = require_binary("promtool")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL
    )


def alerting_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.mark.integration
def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", str(RULES_FILE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.integration
def test_promtool_unit_tests_pass() -> None:
    proc = promtool("test", "rules", str(UNIT_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_is_shown_firing_by_the_unit_tests() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))["tests"]
    fired = {t["alertname"] for group in tests for t in group["alert_rule_test"] if t["exp_alerts"]}
    quiet = {t["alertname"] for group in tests for t in group["alert_rule_test"] if not t["exp_alerts"]}
    names = {rule["alert"] for rule in alerting_rules()}
    assert names <= fired, f"no unit test shows these firing: {sorted(names - fired)}"
    assert names <= quiet, f"no unit test shows these not firing: {sorted(names - quiet)}"


def test_alerts_are_complete_and_found_by_the_dashboard() -> None:
    for rule in alerting_rules():
        assert "alert" in rule, f"recording rules do not belong here: {rule}"
        # the dashboard's "Firing alerts (Prometheus rules)" panel selects alertname=~"Anomaly.*"
        assert rule["alert"].startswith("Anomaly"), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]


def test_rules_use_only_exported_metrics() -> None:
    exported = exported_metric_names()
    for rule in alerting_rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported | PROMETHEUS_OWN, f"{rule['alert']}: {sorted(names - exported)} not exported"
        # metrics the annotations query or mention
        mentioned = set(re.findall(r"\banomaly_\w+", " ".join(rule["annotations"].values())))
        assert mentioned <= exported, f"{rule['alert']}: {sorted(mentioned - exported)} not exported"


def test_chart_copy_is_identical() -> None:
    assert RULES_CHART_COPY.read_bytes() == RULES_FILE.read_bytes()
