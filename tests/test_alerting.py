"""Alert instances and delivery: page once, re-send to Alertmanager, resolve, survive restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from exporter.alert_registry import Alerting
from exporter.alerting import Latest, RuleAlerts
from exporter.config import AlertConfig, RuleConfig
from exporter.notification import Batch

A = (("__name__", "cpu"), ("instance", "a"))
B = (("__name__", "cpu"), ("instance", "b"))


class FakeOutbox:
    """Targets am/0 (Alertmanager) and slack; batches wait in `sent` until the test acknowledges them."""

    def __init__(self, targets: dict[str, tuple[str, str, float]] | None = None, accept: bool = True) -> None:
        # target -> (receiver, kind, repeat_interval)
        self.spec = targets or {"am/0": ("am", "alertmanager", 0.0), "slack": ("slack", "slack", 0.0)}
        self.sent: list[tuple[str, Batch, Callable[[str, Batch, bool], None]]] = []
        self.accept = accept

    def targets(self, receiver: str) -> tuple[str, ...]:
        return tuple(t for t, (r, _, _) in self.spec.items() if r == receiver)

    def kind(self, target: str) -> str | None:
        return self.spec[target][1] if target in self.spec else None

    def repeat_interval(self, target: str) -> float:
        return self.spec[target][2]

    def submit(self, target: str, batch: Batch, on_done: Callable[[str, Batch, bool], None]) -> bool:
        if self.accept:
            self.sent.append((target, batch, on_done))
        return self.accept

    def ack_all(self, ok: bool = True) -> list[tuple[str, str, tuple[str, ...]]]:
        """Deliver everything queued; returns (target, instance label, statuses) per batch."""
        done, self.sent = self.sent, []
        for target, batch, on_done in done:
            on_done(target, batch, ok)
        return [
            (
                t,
                ",".join(n.labels["instance"] for n in b.notifications),
                tuple(n.status for n in b.notifications),
            )
            for t, b, _ in done
        ]


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rule(**alert: object) -> RuleConfig:
    base = AlertConfig(for_=0, keep_firing_for=0, receivers=("am", "slack"))
    return RuleConfig(name="cpu_anomaly", query="rate(cpu[5m])", alert=replace(base, **alert))  # type: ignore[arg-type]


def cycle(
    alerts: RuleAlerts, clock: Clock, t: float, scores: dict[tuple[tuple[str, str], ...], float]
) -> None:
    clock.t = t
    keys = list(scores)
    s = np.array([[scores[k]] for k in keys])
    latest = Latest(
        value=np.full(len(keys), 42.0),
        score=s[:, 0],
        expected=np.full(len(keys), 10.0),
        lower=np.full(len(keys), 5.0),
        upper=np.full(len(keys), 15.0),
    )
    alerts.observe(keys, np.array([t]), s, latest)


def test_firing_alert_pages_once_per_target_and_alertmanager_gets_resends() -> None:
    out, clock = FakeOutbox(), Clock()
    alerts = RuleAlerts(rule(), out, external_url="http://prom:9090/", clock=clock)
    cycle(alerts, clock, 60, {A: 2.0, B: 0.1})
    batches = out.sent
    assert [(t, [n.labels["instance"] for n in b.notifications]) for t, b, _ in batches] == [
        ("am/0", ["a"]),
        ("slack", ["a"]),
    ]
    n = batches[0][1].notifications[0]
    assert dict(n.labels) == {
        "instance": "a",
        "severity": "warning",
        "alertname": "cpu_anomaly",
        "rule": "cpu_anomaly",
    }  # __name__ dropped, as Prometheus does for alert labels
    assert n.status == "firing" and n.starts_at == 60 and n.value == 42.0 and n.expected == 10.0
    assert n.generator_url == "http://prom:9090/graph?g0.expr=rate%28cpu%5B5m%5D%29&g0.tab=0"
    assert "42" in n.annotations["summary"] and "5" in n.annotations["summary"]
    out.ack_all()
    # next cycle still firing: Slack is not paged again; Alertmanager only after the resend interval
    cycle(alerts, clock, 120, {A: 2.0, B: 0.1})
    assert out.ack_all() == [("am/0", "a", ("firing",))]  # 60 s after the first send: resend is due
    cycle(alerts, clock, 150, {A: 2.0, B: 0.1})
    assert out.ack_all() == []
    # recovery: both targets get the resolved alert, once
    cycle(alerts, clock, 180, {A: 0.2, B: 0.1})
    assert out.ack_all() == [("am/0", "a", ("resolved",)), ("slack", "a", ("resolved",))]
    cycle(alerts, clock, 240, {A: 0.2, B: 0.1})
    assert out.ack_all() == []
    assert alerts.counts() == (0, 0)


def test_failed_delivery_is_retried_next_cycle_and_nothing_is_sent_twice_while_in_flight() -> None:
    out, clock = FakeOutbox(), Clock()
    alerts = RuleAlerts(rule(receivers=("slack",)), out, clock=clock)
    cycle(alerts, clock, 60, {A: 2.0})
    assert len(out.sent) == 1
    cycle(alerts, clock, 120, {A: 2.0})  # still in flight: not queued again
    assert len(out.sent) == 1
    assert out.ack_all(ok=False) == [("slack", "a", ("firing",))]  # the receiver was down
    cycle(alerts, clock, 180, {A: 2.0})
    assert out.ack_all() == [("slack", "a", ("firing",))]  # retried, delivered
    cycle(alerts, clock, 240, {A: 2.0})
    assert out.ack_all() == []


def test_full_queue_means_retry_later_not_lost() -> None:
    out, clock = FakeOutbox(accept=False), Clock()
    alerts = RuleAlerts(rule(receivers=("slack",)), out, clock=clock)
    cycle(alerts, clock, 60, {A: 2.0})
    out.accept = True
    cycle(alerts, clock, 120, {A: 2.0})
    assert out.ack_all() == [("slack", "a", ("firing",))]


def test_alerts_resolved_before_anyone_heard_of_them_are_not_announced() -> None:
    out, clock = FakeOutbox(), Clock()
    alerts = RuleAlerts(rule(receivers=("slack",)), out, clock=clock)
    cycle(alerts, clock, 60, {A: 2.0})
    out.ack_all(ok=False)
    cycle(alerts, clock, 120, {A: 0.0})  # resolved; Slack never acknowledged the firing message
    assert out.sent == []


def test_one_message_per_rule_and_cycle_with_firing_and_resolved_together() -> None:
    out, clock = FakeOutbox(), Clock()
    alerts = RuleAlerts(rule(receivers=("slack",)), out, clock=clock)
    cycle(alerts, clock, 60, {A: 2.0, B: 0.0})
    out.ack_all()
    cycle(alerts, clock, 120, {A: 0.0, B: 3.0})
    assert out.ack_all() == [("slack", "b,a", ("firing", "resolved"))]


def test_slack_repeat_interval() -> None:
    out = FakeOutbox({"slack": ("slack", "slack", 300.0)})
    clock = Clock()
    alerts = RuleAlerts(rule(receivers=("slack",)), out, clock=clock)
    sent = []
    for t in range(60, 60 * 12, 60):
        cycle(alerts, clock, t, {A: 2.0})
        sent += [(t, s) for _, _, s in out.ack_all()]
    assert [t for t, _ in sent] == [60, 360, 660]


def test_templates_render_series_labels_and_values() -> None:
    out, clock = FakeOutbox({"slack": ("slack", "slack", 0.0)}), Clock()
    r = rule(
        receivers=("slack",),
        name="CPUAnomaly",
        severity="page",
        labels={"team": "{{ $labels.instance | toUpper }}"},
        annotations={"summary": "{{ $labels.instance }} at {{ $value }} (expected {{ $expected }})"},
    )
    alerts = RuleAlerts(r, out, clock=clock)
    cycle(alerts, clock, 60, {A: 2.0})
    n = out.sent[0][1].notifications[0]
    assert (
        n.labels["team"] == "A" and n.labels["alertname"] == "CPUAnomaly" and n.labels["severity"] == "page"
    )
    assert n.annotations == {"summary": "a at 42 (expected 10)"}


def test_restart_from_state_file_neither_repages_nor_forgets(tmp_path: Path) -> None:
    path = tmp_path / "state" / "alerts.json"
    out, clock = FakeOutbox(), Clock()
    first = Alerting(out, path, clock=clock)
    alerts = first.apply([rule()])["cpu_anomaly"]
    cycle(alerts, clock, 60, {A: 2.0, B: 2.0})
    out.ack_all()
    assert json.loads(path.read_text())["kind"] == "alerts"

    # restart: the same alerts are still firing; Slack must not be paged again
    out2 = FakeOutbox()
    second = Alerting(out2, path, clock=clock)
    alerts2 = second.apply([rule()])["cpu_anomaly"]
    assert alerts2.counts() == (0, 2)
    cycle(alerts2, clock, 90, {A: 2.0, B: 2.0})
    assert out2.ack_all() == []  # 30 s after the last send: no resend due either
    # while it was down, `a` recovered: it resolves on the first cycle after the restart
    cycle(alerts2, clock, 180, {A: 0.0, B: 2.0})
    assert out2.ack_all() == [
        ("am/0", "b,a", ("firing", "resolved")),
        ("slack", "a", ("resolved",)),
    ]


def test_removed_rule_resolves_its_alerts_even_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    out, clock = FakeOutbox(), Clock()
    alerting = Alerting(out, path, clock=clock)
    cycle(alerting.apply([rule()])["cpu_anomaly"], clock, 60, {A: 2.0})
    out.ack_all()
    # restarted with a rules file that no longer has the rule
    out2 = FakeOutbox()
    clock.t = 500
    Alerting(out2, path, clock=clock).apply([replace(rule(), name="other")])
    assert out2.ack_all() == [("am/0", "a", ("resolved",)), ("slack", "a", ("resolved",))]


def test_reload_keeps_alerts_in_flight_and_removal_resolves(tmp_path: Path) -> None:
    out, clock = FakeOutbox(), Clock()
    alerting = Alerting(out, None, clock=clock)
    alerts = alerting.apply([rule()])["cpu_anomaly"]
    cycle(alerts, clock, 60, {A: 2.0})
    out.ack_all()
    again = alerting.apply([rule(severity="page")])["cpu_anomaly"]
    assert again is alerts and alerts.counts() == (0, 1)
    clock.t = 100
    alerting.apply([])
    assert out.ack_all() == [("am/0", "a", ("resolved",)), ("slack", "a", ("resolved",))]


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"format": "something-else"}', json.dumps({"x": 1}).encode(), b"\xff\xfe"],
)
def test_corrupt_or_foreign_state_file_is_ignored(tmp_path: Path, content: bytes, caplog) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(content)
    out, clock = FakeOutbox(), Clock()
    alerts = Alerting(out, path, clock=clock).apply([rule()])["cpu_anomaly"]
    assert alerts.counts() == (0, 0)
    cycle(alerts, clock, 60, {A: 2.0})
    assert len(out.ack_all()) == 2
    assert "ignoring state file" in caplog.text


def test_malformed_rule_state_inside_a_valid_file_is_ignored(tmp_path: Path, caplog) -> None:
    from exporter.statefile import write_state

    path = tmp_path / "alerts.json"
    write_state(path, "alerts", 1, {"rules": {"cpu_anomaly": {"states": {"series": "nope"}}}})
    alerts = Alerting(FakeOutbox(), path).apply([rule()])["cpu_anomaly"]
    assert alerts.counts() == (0, 0)
    assert "ignoring saved alert state" in caplog.text
