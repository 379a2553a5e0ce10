"""The exporter's own alerting end to end, against the Debian package's real Alertmanager.

The scheduler, rule runner, model, alert state machine, notifier and delivery queue run as in production;
only time is shortened (1 s step and interval) and the data comes from the built-in demo source, whose
first live anomaly (a spike on web-0) is placed a few seconds after the test starts. Alertmanager starts
only after the alert has begun firing: the notifier must retry and deliver it once Alertmanager is up.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from exporter.alert_registry import Alerting
from exporter.config import parse_config
from exporter.demo import DemoSource
from exporter.notify import Notifier
from exporter.scheduler import Scheduler
from exporter.store import Store
from tests.realservers import AlertmanagerServer, WebhookSink, free_port, wait_until

pytestmark = pytest.mark.integration

RULES = """
prometheus: {{url: "http://prometheus.example:9090"}}
rules:
  - name: web_requests
    query: demo_http_requests_per_second
    interval: 1s
    step: 1s
    retrain: 1h
    history: 2h
    labels: {{team: web}}
    model: {{seasonality: none, level_window: 5m, min_history: 10m}}
    alert:
      name: RequestRateAnomaly
      for: 2s
      keep_firing_for: 0s
      severity: page
      annotations:
        summary: "{{{{ $labels.instance }}}} serves {{{{ $value | humanize }}}} req/s"
      receivers: [am]
receivers:
  am: {{type: alertmanager, urls: ["http://127.0.0.1:{am_port}"]}}
"""
AM_CONFIG = """
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 100ms
  group_interval: 1s
receivers:
  - name: hook
    webhook_configs:
      - url: {url}
        send_resolved: true
"""
SPIKE_IN, SPIKE_LENGTH = 4.0, 12.0  # seconds from now until the demo's first live spike, and its length


def firing_on_web0(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"].get("instance") == "web-0:8080"]


def test_alert_reaches_a_late_alertmanager_and_its_webhook_then_resolves(tmp_path) -> None:
    am_port = free_port()
    config = parse_config(RULES.format(am_port=am_port))
    source = DemoSource(started_at=time.time() - DemoSource.live_first + SPIKE_IN)
    source.live_length = SPIKE_LENGTH
    store = Store()
    notifier = Notifier(config.receivers)
    alerting = Alerting(notifier, tmp_path / "alerts.json", external_url="http://prometheus.example:9090")
    scheduler = Scheduler(store, lambda _p: source, workers=4, alerting=alerting)
    scheduler.apply(config)
    scheduler.start()
    try:
        with WebhookSink() as hook:
            # the alert fires while Alertmanager is still down: deliveries fail and are retried
            wait_until(lambda: alerting.counts()["web_requests"][1] == 1, timeout=30, what="alert firing")
            wait_until(
                lambda: any(s.failed for s in notifier.stats()), timeout=15, what="a failed delivery attempt"
            )
            with AlertmanagerServer(AM_CONFIG.format(url=hook.url), port=am_port) as am:
                (alert,) = wait_until(
                    lambda: firing_on_web0(am.alerts(active=True)), timeout=30, what="alert in Alertmanager"
                )
                assert alert["labels"] == {
                    "alertname": "RequestRateAnomaly",
                    "rule": "web_requests",
                    "severity": "page",
                    "team": "web",
                    "instance": "web-0:8080",
                    "job": "web",
                }
                assert alert["annotations"]["summary"].startswith("web-0:8080 serves ")
                assert alert["generatorURL"].startswith(
                    "http://prometheus.example:9090/graph?g0.expr=demo_http"
                )
                # Alertmanager routes it to the webhook ...
                wait_until(
                    lambda: [m for m in hook.received if m["status"] == "firing"], timeout=20, what="webhook"
                )
                # ... and once the spike is over the exporter resolves it, and Alertmanager says so
                wait_until(
                    lambda: not firing_on_web0(am.alerts(active=True)),
                    timeout=SPIKE_IN + SPIKE_LENGTH + 30,
                    what="alert resolved in Alertmanager",
                )
                resolved = wait_until(
                    lambda: [m for m in hook.received if m["status"] == "resolved"],
                    timeout=20,
                    what="resolved webhook",
                )
                assert resolved[0]["alerts"][0]["labels"]["instance"] == "web-0:8080"
                # one incident, one alert: every firing webhook is about the same alert
                starts = {a["startsAt"] for m in hook.received for a in m["alerts"]}
                assert len(starts) == 1, starts
    finally:
        scheduler.shutdown(wait=True)
        notifier.close(2)
    assert alerting.counts()["web_requests"] == (0, 0)
    assert (tmp_path / "alerts.json").exists()
    assert store.health()["web_requests"].errors.get("alert", 0) == 0
