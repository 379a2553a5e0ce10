"""Alertmanager misbehaving while the exporter pages: a real Alertmanager behind tests/faultproxy.py, with a
webhook receiver (WebhookSink) standing in for the user.

The exporter's alerting runs as in production (Alerting → Notifier → one Delivery queue and thread per
target → AlertmanagerTarget) with shorter retries, fed scored cycles directly on a fake clock (one call per
minute). Alertmanager groups every alert on its own (`group_by: ['...']`), so the webhook shows exactly
what the user is told about each alert. Expected for every fault: the alert gets through once Alertmanager
is reachable again, none is lost (also past the queue bound), the user hears of each firing and each
resolution once, and the exporter's notification metrics count the failed attempts and given-up batches.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from exporter.alert_registry import Alerting
from exporter.alerting import Latest
from exporter.collector import AnomalyCollector
from exporter.config import parse_config
from exporter.notify import Delivery, Notifier
from exporter.store import Store
from tests import faultproxy
from tests.faultproxy import Fault, FaultProxy
from tests.realservers import AlertmanagerServer, WebhookSink, assert_threads_ended, free_port, wait_until

pytestmark = pytest.mark.integration

GROUP_INTERVAL = 0.2  # seconds: Alertmanager would re-notify a changed group this often
AM_CONFIG = f"""
route:
  receiver: hook
  group_by: ['...']
  group_wait: 0s
  group_interval: {int(GROUP_INTERVAL * 1000)}ms
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {{url}}
        send_resolved: true
"""
RULES = """
prometheus: {{url: "http://prometheus.example:9090"}}
rules:
  - name: {rule}
    query: m
    interval: 60s
    alert: {{for: 0s, keep_firing_for: 0s, severity: page, receivers: [am]}}
receivers:
  am: {{type: {kind}, {urls}: {url}, timeout: 300ms, max_queue: {max_queue}}}
"""
ATTEMPTS = 3  # per batch, then it is given up (and offered again on the next cycle)


@pytest.fixture(scope="module")
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as hook:
        yield hook


@pytest.fixture(scope="module")
def alertmanager(sink) -> Iterator[AlertmanagerServer]:
    with AlertmanagerServer(AM_CONFIG.format(url=sink.url)) as am:
        yield am


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    before = threading.enumerate()
    yield
    assert_threads_ended(before)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def told(sink: WebhookSink, rule: str) -> list[tuple[str, str]]:
    """What the user was told about the rule's alerts: (instance, status) per alert per webhook call."""
    return [
        (a["labels"]["instance"], a["status"])
        for message in list(sink.received)
        for a in message["alerts"]
        if a["labels"].get("rule") == rule
    ]


class Exporter:
    """The exporter's own alerting for one rule whose only receiver is `url` (Alertmanager by default)."""

    def __init__(
        self,
        url: str,
        rule: str,
        state: Path,
        *,
        max_queue: int = 100,
        backoff: float = 0.05,
        kind: str = "alertmanager",
    ):
        self.rule, self.kind = rule, kind
        self.clock = Clock(time.time() - 3600)  # an hour of fake minutes ahead, all in the past
        where = ("urls", f'["{url}"]') if kind == "alertmanager" else ("url", f'"{url}"')
        config = parse_config(
            RULES.format(rule=rule, urls=where[0], url=where[1], max_queue=max_queue, kind=kind)
        )

        def delivery(target, receiver) -> Delivery:
            return Delivery(
                target,
                max_queue=receiver.max_queue,
                max_attempts=ATTEMPTS,
                backoff_base=backoff,
                backoff_max=2 * backoff,
                retry_after_max=5,
            )

        self.notifier = Notifier(config.receivers, delivery=delivery)
        self.alerting = Alerting(self.notifier, state / f"{rule}.json", clock=self.clock)
        self.alerts = self.alerting.apply(config.rules)[rule]
        self.registry = CollectorRegistry()
        self.registry.register(AnomalyCollector(Store(), alerting=self.alerting))

    def observe(self, scores: dict[str, float]) -> None:
        """One scoring cycle a minute after the last: the newest score of each series (instance)."""
        self.clock.now += 60
        n = len(scores)
        keys = [(("__name__", "m"), ("instance", name)) for name in scores]
        score = np.array(list(scores.values()), dtype=float)
        latest = Latest(score * 10, score, np.full(n, 10.0), np.full(n, 8.0), np.full(n, 12.0))
        self.alerts.observe(keys, np.array([float(int(self.clock.now) // 60 * 60)]), score[:, None], latest)

    def notifications(self, what: str) -> float:
        """anomaly_exporter_notifications_<what>_total of the receiver's one target."""
        value = self.registry.get_sample_value(
            f"anomaly_exporter_notifications_{what}_total",
            {"receiver": "am", "target": "am", "type": self.kind},
        )
        assert value is not None
        return value

    def settled(self, sent: int, dropped: int, timeout: float = 15) -> None:
        """Wait until the delivery counters reach these numbers and nothing is queued."""

        def reached() -> bool:
            (stats,) = self.notifier.stats()
            return stats.sent >= sent and stats.dropped >= dropped and stats.queue_length == 0

        wait_until(reached, timeout=timeout, interval=0.02, what=f"sent {sent}, dropped {dropped}")

    def close(self) -> None:
        self.notifier.close(2)


def break_it(proxy: FaultProxy, fault: Fault | None) -> None:
    if fault is None:
        proxy.down()  # nothing listens: connection refused
    else:
        proxy.fault = fault


def heal(proxy: FaultProxy, fault: Fault | None) -> None:
    wait_until(proxy.quiet, timeout=10, interval=0.02, what="delayed requests to finish")
    if fault is None:
        proxy.up()
    proxy.fault = faultproxy.PASS


AM_FAULTS: dict[str, Fault | None] = {
    "down": None,
    "slow": faultproxy.delay(0.6),  # past the 300 ms timeout; Alertmanager gets it 0.3 s later
    "http_500": faultproxy.error(500),
    "http_502": faultproxy.error(502),
    "http_503": faultproxy.error(503),
    "http_429": faultproxy.error(429, retry_after=1),
    "connection_reset": faultproxy.reset(),
    "reset_after_forward": faultproxy.reset(forward=True),  # Alertmanager got it, the exporter can't know
}


@pytest.mark.parametrize("name", list(AM_FAULTS))
def test_alert_and_its_resolution_get_through_a_failing_alertmanager_once(alertmanager, sink, tmp_path, name):
    fault, rule = AM_FAULTS[name], f"am_{name}"
    with FaultProxy(alertmanager.url) as proxy:
        ex = Exporter(proxy.url, rule, tmp_path)
        try:
            # fires while Alertmanager fails: every attempt fails, the batch is given up
            break_it(proxy, fault)
            ex.observe({"a": 5.0})
            assert ex.alerting.counts()[rule] == (0, 1)
            ex.settled(sent=0, dropped=1)
            assert (ex.notifications("failed"), ex.notifications("dropped")) == (ATTEMPTS, 1)
            if name == "http_429":  # the server's Retry-After (1 s) between attempts, not the 50 ms backoff
                arrivals = [r.arrived for r in proxy.records]
                assert all(b - a >= 0.9 for a, b in itertools.pairwise(arrivals))
            heal(proxy, fault)
            ex.observe({"a": 5.0})  # still firing, never acknowledged: sent again
            ex.settled(sent=1, dropped=1)
            wait_until(lambda: ("a", "firing") in told(sink, rule), timeout=10, what="firing webhook")
            ex.observe({"a": 5.0})  # a minute later: the re-send Alertmanager needs, not a new page
            ex.settled(sent=2, dropped=1)

            # resolves while Alertmanager fails again
            break_it(proxy, fault)
            ex.observe({"a": 0.0})
            assert ex.alerting.counts()[rule] == (0, 0)
            ex.settled(sent=2, dropped=2)
            heal(proxy, fault)
            ex.alerts.tick()  # the next cycle (no new scores needed) retries the resolution
            ex.settled(sent=3, dropped=2)
            wait_until(lambda: ("a", "resolved") in told(sink, rule), timeout=10, what="resolved webhook")
            time.sleep(3 * GROUP_INTERVAL)  # a duplicate would come with the next group flush
            assert told(sink, rule) == [("a", "firing"), ("a", "resolved")]
            assert ex.notifications("failed") == 2 * ATTEMPTS
            assert (ex.notifications("sent"), ex.notifications("dropped")) == (3, 2)
        finally:
            ex.close()


def test_alerts_firing_while_alertmanager_is_down_beyond_the_queue_bound_all_arrive_once(
    alertmanager, sink, tmp_path
):
    """30 alerts start over 10 cycles while Alertmanager is down, with room for 2 batches in the queue:
    batches are turned away (counted as dropped), yet every alert is offered again each cycle, so once
    Alertmanager is back each reaches the user once."""
    rule = "am_queue_bound"
    with FaultProxy(alertmanager.url) as proxy:
        ex = Exporter(proxy.url, rule, tmp_path, max_queue=2, backoff=0.1)
        try:
            proxy.down()
            firing: dict[str, float] = {}
            for cycle in range(10):
                firing.update({f"s{cycle}-{k}": 5.0 for k in range(3)})
                ex.observe(firing)
            assert ex.alerting.counts()[rule] == (0, 30)
            (stats,) = ex.notifier.stats()
            assert stats.dropped >= 7 and stats.queue_length <= 2  # the queue bound held
            wait_until(lambda: ex.notifier.stats()[0].failed >= ATTEMPTS, timeout=10, what="failures")
            proxy.up()
            everyone = {(name, "firing") for name in firing}

            def all_told() -> bool:
                ex.observe(firing)  # the scheduler's next cycle
                return everyone <= set(told(sink, rule))

            wait_until(all_told, timeout=20, interval=0.3, what="every alert at the webhook")
            time.sleep(3 * GROUP_INTERVAL)
            messages = told(sink, rule)
            assert sorted(messages) == sorted(everyone)  # each once
            assert ex.notifications("failed") >= ATTEMPTS and ex.notifications("dropped") >= 7
        finally:
            ex.close()


class KeptAlertmanager(AlertmanagerServer):
    """An Alertmanager whose data directory (notification log, silences) outlives the process."""

    def __init__(self, config: str, storage: Path, port: int) -> None:
        super().__init__(config, port=port)
        self.storage = storage

    def _command(self, exe: str) -> list[str]:
        return [
            f"--storage.path={self.storage}" if arg.startswith("--storage.path=") else arg
            for arg in super()._command(exe)
        ]


def test_alertmanager_restarted_gets_what_fired_meanwhile_and_pages_nothing_twice(sink, tmp_path):
    """The real process goes away (stopped) and comes back on the same port and data directory. An
    alert that fired meanwhile is delivered; the one delivered before is re-sent by the exporter (as
    every minute) but Alertmanager, whose notification log survived, does not page it again."""
    rule, port = "am_restart", free_port()
    storage = tmp_path / "am-data"
    storage.mkdir()
    ex = Exporter(f"http://127.0.0.1:{port}", rule, tmp_path)
    try:
        with KeptAlertmanager(AM_CONFIG.format(url=sink.url), storage, port):
            ex.observe({"a": 5.0})
            wait_until(lambda: ("a", "firing") in told(sink, rule), timeout=10, what="first page")
            time.sleep(3 * GROUP_INTERVAL)  # let Alertmanager log the notification before it stops
        ex.observe({"a": 5.0, "b": 5.0})  # b fires while Alertmanager is down, a is re-sent: both fail
        ex.settled(sent=1, dropped=1)
        assert ex.notifications("failed") == ATTEMPTS
        with KeptAlertmanager(AM_CONFIG.format(url=sink.url), storage, port):
            ex.observe({"a": 5.0, "b": 5.0})
            ex.settled(sent=2, dropped=1)
            wait_until(lambda: ("b", "firing") in told(sink, rule), timeout=10, what="page for b")
            time.sleep(3 * GROUP_INTERVAL)
            assert told(sink, rule) == [("a", "firing"), ("b", "firing")]
    finally:
        ex.close()


# -- the same faults in front of a plain webhook (Slack works alike): no Alertmanager to deduplicate ------

WEBHOOK_FAULTS: dict[str, Fault | None] = {
    "down": None,
    "http_500": faultproxy.error(500),
    "http_503": faultproxy.error(503),
    "connection_reset": faultproxy.reset(),
}


def sink_base(sink: WebhookSink) -> str:
    return sink.url.rsplit("/", 1)[0]


@pytest.mark.parametrize("name", list(WEBHOOK_FAULTS))
def test_webhook_receiver_is_told_each_firing_and_resolution_once(sink, tmp_path, name):
    fault, rule = WEBHOOK_FAULTS[name], f"hook_{name}"
    with FaultProxy(sink_base(sink)) as proxy:
        ex = Exporter(f"{proxy.url}/hook", rule, tmp_path, kind="webhook")
        try:
            break_it(proxy, fault)
            ex.observe({"a": 5.0})
            ex.settled(sent=0, dropped=1)
            heal(proxy, fault)
            ex.observe({"a": 5.0})
            ex.settled(sent=1, dropped=1)
            ex.observe({"a": 5.0})  # acknowledged: not repeated before repeat_interval (4 h)
            break_it(proxy, fault)
            ex.observe({"a": 0.0})
            ex.settled(sent=1, dropped=2)
            heal(proxy, fault)
            ex.alerts.tick()
            ex.settled(sent=2, dropped=2)
            assert told(sink, rule) == [("a", "firing"), ("a", "resolved")]
            assert ex.notifications("failed") == 2 * ATTEMPTS
        finally:
            ex.close()


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="at-least-once delivery: an endpoint that processes a notification but answers after the "
    "receiver's timeout is sent it again on every retry (Slack and the webhook format carry no idempotency "
    "key; Alertmanager deduplicates by fingerprint, these cannot)",
)
def test_slow_webhook_receiver_is_told_once(sink, tmp_path):
    rule = "hook_slow"
    with FaultProxy(sink_base(sink)) as proxy:
        ex = Exporter(f"{proxy.url}/hook", rule, tmp_path, kind="webhook")
        try:
            proxy.fault = faultproxy.delay(0.6)  # past the 300 ms timeout, then delivered all the same
            ex.observe({"a": 5.0})
            ex.settled(sent=0, dropped=1)
            heal(proxy, proxy.fault)
            ex.observe({"a": 5.0})
            ex.settled(sent=1, dropped=1)
            assert told(sink, rule) == [("a", "firing")]  # observed: 4 times (3 late attempts + 1)
        finally:
            ex.close()
