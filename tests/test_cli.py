"""The command line: check, schema, version, test-receiver, and a clean refusal to start on a broken file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import main
from tests.realservers import WebhookSink, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_check_accepts_the_example_rules(capsys):
    assert main(["check", str(ROOT / "rules.yaml")]) == 0
    assert "OK, 7 rule(s)" in capsys.readouterr().out


def test_check_reports_every_error_with_its_path(tmp_path, capsys):
    bad = tmp_path / "rules.yaml"
    bad.write_text(
        "prometheus: {url: http://p:9090}\nrules:\n  - name: a\n    qurey: up\n  - name: a\n    query: up\n"
        "    interval: 5x\n"
    )
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "rules[0].qurey: unknown key (did you mean 'query'?)" in err
    assert "rules[0].query: required" in err
    assert "rules[1].interval: invalid duration '5x'" in err
    assert "duplicate" in err and "rules[1].name" in err


def test_yaml_syntax_error_has_line_and_column(tmp_path, capsys):
    bad = tmp_path / "rules.yaml"
    bad.write_text("prometheus:\n  url: [unclosed\nrules: []\n")
    assert main(["check", str(bad)]) == 1
    assert f"{bad}:3:" in capsys.readouterr().err


def test_schema_is_json(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "rules" in schema["properties"]


def test_run_refuses_a_broken_file_with_a_non_zero_exit(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(bad), "--web.listen-address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "prometheus: required" in proc.stderr


def test_version():
    cmd = [sys.executable, "-m", "exporter", "--version"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("anomaly-exporter ")


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999"])
def test_bad_listen_address_exits_2(address, tmp_path, monkeypatch):
    monkeypatch.setattr("exporter.commands.setup_logging", lambda *a: None)  # keep pytest's log handlers
    rules = tmp_path / "rules.yaml"
    rules.write_text("prometheus: {url: http://p:9090}\nrules:\n  - {name: a, query: up}\n")
    assert main(["--config.file", str(rules), "--web.listen-address", address]) == 2


def test_test_receiver_sends_a_test_alert_and_reports_the_result(tmp_path, capsys):
    with WebhookSink() as hook:
        rules = tmp_path / "rules.yaml"
        rules.write_text(
            "prometheus: {url: 'http://p:9090'}\nrules: [{name: r, query: up}]\n"
            f"receivers: {{hook: {{type: webhook, url: '{hook.url}?token=s3cret'}}}}\n"
        )
        assert main(["test-receiver", "hook", "--config.file", str(rules)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("ok:") and "s3cret" not in out
        wait_until(lambda: hook.received, timeout=5, what="the test alert")
        (body,) = hook.received
        assert body["status"] == "firing" and body["alerts"][0]["labels"]["alertname"]


def test_test_receiver_fails_for_an_unknown_or_unreachable_receiver(tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "prometheus: {url: 'http://p:9090'}\nrules: [{name: r, query: up}]\n"
        f"receivers: {{down: {{type: webhook, url: 'http://127.0.0.1:{free_port()}/x', timeout: 2s}}}}\n"
    )
    assert main(["test-receiver", "nope", "--config.file", str(rules)]) == 1
    assert "no receiver named 'nope' (receivers: down)" in capsys.readouterr().err
    assert main(["test-receiver", "down", "--config.file", str(rules)]) == 1
    assert capsys.readouterr().out.startswith("failed:")
