"""Against a real Alertmanager: it accepts our v2 alerts, and the webhook it sends has our webhook's shape."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from exporter.config import ReceiverConfig
from exporter.notification import Batch, Notification
from exporter.notify import Notifier
from exporter.notify.payloads import webhook_payload
from exporter.secret import Secret
from tests.realservers import AlertmanagerServer, WebhookSink, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local webhook endpoint recording what Alertmanager sends it."""
    with WebhookSink() as sink:
        yield sink.url, sink.received


def test_real_alertmanager_accepts_our_alerts_and_its_webhook_matches_ours(
    hook: tuple[str, list[dict[str, Any]]],
) -> None:
    hook_url, received = hook
    config = f"""
route:
  receiver: hook
  group_by: [rule]
  group_wait: 100ms
receivers:
  - name: hook
    webhook_configs:
      - url: {hook_url}
        send_resolved: true
"""
    now = time.time()
    firing = Notification(
        labels={"alertname": "CpuAnomaly", "rule": "cpu", "instance": "a", "empty": ""},
        annotations={"summary": "cpu on a"},
        status="firing",
        starts_at=now - 120.5,
        ends_at=None,
        generator_url="http://127.0.0.1:9090/graph?g0.expr=x&g0.tab=0",
    )
    resolved = Notification(
        labels={"alertname": "CpuAnomaly", "rule": "cpu", "instance": "b"},
        annotations={"summary": "cpu on b"},
        status="resolved",
        starts_at=now - 600,
        ends_at=now - 60,
        generator_url="",
    )
    batch = Batch(rule="cpu", notifications=(firing, resolved), created=now, valid_for=240)

    with AlertmanagerServer(config) as am:
        notifier = Notifier({"am": ReceiverConfig("am", "alertmanager", (Secret(am.url),))})
        try:
            (line,) = notifier.test_receiver("am")
            assert line.startswith("ok: alertmanager receiver 'am'")
            done = threading.Event()
            results: list[bool] = []
            notifier.send(["am"], batch, lambda t, b, ok: (results.append(ok), done.set()))
            assert done.wait(10) and results == [True]
        finally:
            notifier.close(2)

        alerts = wait_until(
            lambda: am.alerts(filter=["rule=cpu"]), timeout=10, what="our alert listed by Alertmanager"
        )
        (listed,) = alerts  # the resolved one is not active
        assert listed["labels"] == {"alertname": "CpuAnomaly", "rule": "cpu", "instance": "a"}
        ends = datetime.fromisoformat(listed["endsAt"].replace("Z", "+00:00")).timestamp()
        assert now + 200 < ends < now + 300
        assert listed["generatorURL"] == firing.generator_url

        sent = wait_until(
            lambda: [m for m in received if m.get("groupLabels", {}).get("rule") == "cpu"],
            timeout=10,
            what="Alertmanager's webhook for rule cpu",
        )[0]
    ours = webhook_payload(batch, "hook", now)
    assert set(ours) == set(sent)
    assert set(ours["alerts"][0]) == set(sent["alerts"][0])
    assert sent["version"] == ours["version"] and sent["status"] == "firing"
    assert sent["alerts"][0]["endsAt"] == ours["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
