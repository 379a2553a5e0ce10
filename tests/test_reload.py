"""Reloading rules in a running exporter (SIGHUP, POST /-/reload): a broken file never replaces good rules."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.realservers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def rules_file(path: Path, url: str, *names: str) -> None:
    body = "".join(f"  - {{name: {n}, query: up}}\n" for n in names)
    path.write_text(f"prometheus: {{url: {url}, max_retries: 0, timeout: 1s}}\nrules:\n{body}")


def gauges(url: str) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"{url}/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def rules_running(url: str) -> set[str]:
    return {dict(labels)["rule"] for name, labels in gauges(url) if name == "anomaly_exporter_rule_up"}


@pytest.fixture
def exporter(tmp_path):
    procs = []

    def start(rules: Path, *flags: str):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config.file", str(rules), "--web.listen-address",
             f"127.0.0.1:{port}", *flags],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "w"),  # noqa: SIM115
        )  # fmt: skip
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return requests.get(f"{url}/-/healthy", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_until(up, timeout=30, what="exporter listening")
        return proc, url

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def test_sighup_with_garbage_keeps_old_rules_and_valid_file_replaces_them(tmp_path, exporter):
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: rules run (and report errors) anyway
    rules = tmp_path / "rules.yaml"
    rules_file(rules, nowhere, "a", "b")
    proc, url = exporter(rules, "--web.enable-lifecycle")
    assert rules_running(url) == {"a", "b"}

    rules.write_text("prometheus: [this is: not valid\n")
    os.kill(proc.pid, signal.SIGHUP)
    wait_until(lambda: gauges(url)[("anomaly_exporter_config_last_reload_successful", ())] == 0, timeout=10)
    assert rules_running(url) == {"a", "b"}
    assert proc.poll() is None

    rules_file(rules, nowhere, "a", "c")
    r = requests.post(f"{url}/-/reload", timeout=10)
    assert r.status_code == 200, r.text
    assert rules_running(url) == {"a", "c"}
    assert gauges(url)[("anomaly_exporter_config_last_reload_successful", ())] == 1
    assert gauges(url)[("anomaly_exporter_config_reloads_total", (("result", "failure"),))] == 1

    rules_file(rules, nowhere, "a", "a")  # duplicate names: rejected with the reason in the response
    r = requests.post(f"{url}/-/reload", timeout=10)
    assert r.status_code == 500 and "duplicate" in r.text
    assert rules_running(url) == {"a", "c"}


def test_reload_endpoint_is_off_without_the_lifecycle_flag(tmp_path, exporter):
    rules = tmp_path / "rules.yaml"
    rules_file(rules, f"http://127.0.0.1:{free_port()}", "a")
    _, url = exporter(rules)
    assert requests.post(f"{url}/-/reload", timeout=5).status_code == 403


# Files that made the loader raise something other than ConfigError: a reload then answered "A server error
# occurred", was not counted as failed, and anomaly_exporter_config_last_reload_successful stayed 1.
CRASHED_THE_LOADER = {
    "a control character": (
        "prometheus: {url: http://p}\x08\nrules: [{name: z, query: up}]\n",
        ":1:28: unacceptable",
    ),
    "nesting 1,000 deep": (
        "prometheus: {url: http://p}\nrules: " + "[" * 1000 + "]" * 1000,
        "nested deeper than",
    ),
    "a bad IPv6 URL": (
        "prometheus: {url: 'http://[::1'}\nrules: [{name: z, query: up}]\n",
        "prometheus.url: must",
    ),
    "a 400-digit duration": (
        "prometheus: {url: http://p}\nrules: [{name: z, query: up, interval: " + "9" * 400 + "s}]\n",
        "rules[0].interval: invalid duration",
    ),
    "an impossible date": (
        "prometheus: {url: http://p}\nrules: [{name: z, query: up, labels: {d: 2001-02-30}}]\n",
        "a value cannot be read",
    ),
}


def test_reloading_files_that_crashed_the_loader_is_rejected_and_counted(tmp_path, exporter):
    rules = tmp_path / "rules.yaml"
    rules_file(rules, f"http://127.0.0.1:{free_port()}", "a")
    proc, url = exporter(rules, "--web.enable-lifecycle")
    for i, (text, error) in enumerate(CRASHED_THE_LOADER.values(), start=1):
        rules.write_text(text)
        r = requests.post(f"{url}/-/reload", timeout=10)
        assert r.status_code == 500 and error in r.text, r.text
        assert gauges(url)[("anomaly_exporter_config_reloads_total", (("result", "failure"),))] == i
        assert gauges(url)[("anomaly_exporter_config_last_reload_successful", ())] == 0
        assert rules_running(url) == {"a"}
    os.kill(proc.pid, signal.SIGHUP)  # the same through SIGHUP (its own thread)
    wait_until(
        lambda: gauges(url)[("anomaly_exporter_config_reloads_total", (("result", "failure"),))] == i + 1,
        timeout=10,
    )
    assert proc.poll() is None and rules_running(url) == {"a"}
