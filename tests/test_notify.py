"""Receivers over HTTP (responses and one real local server), the retrying delivery queue and the Notifier."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import requests
import responses

from exporter import __version__
from exporter.config import BasicAuth, ReceiverConfig, TLSConfig
from exporter.notification import Batch, Notification
from exporter.notify import (
    AlertmanagerTarget,
    Delivery,
    DeliveryError,
    Notifier,
    SlackTarget,
    Target,
    WebhookTarget,
    build_targets,
)
from exporter.secret import Secret

T0 = 1_700_000_000.0
SLACK_TOKEN = "T0SECRET1/B0SECRET2/xoxSlackHookToken42"
SLACK_URL = f"https://hooks.slack.test/services/{SLACK_TOKEN}"
HOOK_URL = "https://hooks.example.test/incoming/hook-key-8d1f2e3a?sig=qs-secret-77aa"
BEARER = "bearer-tok-5b2e9c41"
PASSWORD = "basic-pw-0c7d3e19"
AM0, AM1 = "http://am-0.test:9093", "http://am-1.test:9093"
SECRETS = (SLACK_TOKEN, "xoxSlackHookToken42", "hook-key-8d1f2e3a", "qs-secret-77aa", BEARER, PASSWORD)


# -- helpers ------------------------------------------------------------------------------------------------


def receiver(name: str, type_: str, *urls: str, **options: Any) -> ReceiverConfig:
    return ReceiverConfig(name=name, type=type_, urls=tuple(Secret(u) for u in urls), **options)


def notification(instance: str = "a", status: str = "firing") -> Notification:
    return Notification(
        labels={"alertname": "CpuAnomaly", "rule": "cpu", "instance": instance},
        annotations={"summary": f"cpu on {instance}"},
        status=status,  # type: ignore[arg-type]
        starts_at=T0,
        ends_at=None if status == "firing" else T0 + 300,
        generator_url="http://prometheus.test/graph",
        value=9.0,
        expected=3.0,
        lower=1.0,
        upper=5.0,
        score=2.0,
    )


def batch(*instances: str, rule: str = "cpu") -> Batch:
    return Batch(rule=rule, notifications=tuple(notification(i) for i in instances or ("a",)), created=T0)


class FakeTime:
    """A clock that only moves when the code under test sleeps; records every sleep."""

    def __init__(self) -> None:
        self.t = T0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class Largest(random.Random):
    """Jitter that always picks the upper bound, to expose the backoff schedule."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Done:
    """Collects on_done calls from worker threads; `wait(n)` blocks until n have arrived."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._cond = threading.Condition()

    def __call__(self, *args: Any) -> None:
        with self._cond:
            self.calls.append(args)
            self._cond.notify_all()

    def wait(self, n: int = 1, timeout: float = 3.0) -> list[tuple[Any, ...]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, timeout), f"got {self.calls}"
            return list(self.calls)


class Scripted(Target):
    """A target whose send runs `behaviour` (raise DeliveryError, block on an event, ...)."""

    kind = "fake"

    def __init__(self, name: str, behaviour: Callable[[Batch], None] = lambda b: None) -> None:
        super().__init__(receiver(name, "webhook", "http://fake.test/"), Secret("http://fake.test/"), name)
        self.behaviour = behaviour
        self.sent: list[Batch] = []
        self.closed = False

    def body(self, batch: Batch, now: float) -> Any:
        return None

    def send(self, batch: Batch) -> None:
        self.behaviour(batch)
        self.sent.append(batch)

    def close(self) -> None:
        self.closed = True
        super().close()


class Gate:
    """A send that blocks until released, telling the test when it has started."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, batch: Batch) -> None:
        self.entered.set()
        assert self.release.wait(5)


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def deliveries() -> Iterator[list[Delivery]]:
    """Deliveries made by a test; closed afterwards, and no worker thread may outlive the test."""
    made: list[Delivery] = []
    yield made
    for d in made:
        d.close(1.0)
    assert not [t for t in threading.enumerate() if t.name.startswith("notify-")]


@pytest.fixture
def make(deliveries: list[Delivery], fake: FakeTime) -> Callable[..., Delivery]:
    def _make(target: Target, **options: Any) -> Delivery:
        defaults: dict[str, Any] = {
            "max_attempts": 4,
            "backoff_base": 1.0,
            "backoff_max": 5.0,
            "clock": fake,
            "now": fake,
            "sleep": fake.sleep,
            "rng": Largest(),
        }
        d = Delivery(target, **{**defaults, **options})
        deliveries.append(d)
        return d

    return _make


def slack_target() -> Target:
    return build_targets(receiver("team-slack", "slack", SLACK_URL))[0]


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# -- targets: one request ------------------------------------------------------------------------------------


def test_build_targets_names_and_types() -> None:
    (slack,) = build_targets(receiver("team", "slack", SLACK_URL))
    (hook,) = build_targets(receiver("hook", "webhook", HOOK_URL))
    (single,) = build_targets(receiver("am", "alertmanager", AM0))
    pair = build_targets(receiver("am-ha", "alertmanager", AM0, AM1))
    assert isinstance(slack, SlackTarget) and slack.name == "team" and slack.kind == "slack"
    assert isinstance(hook, WebhookTarget) and hook.name == "hook"
    assert isinstance(single, AlertmanagerTarget) and single.name == "am"
    assert [t.name for t in pair] == ["am-ha/0", "am-ha/1"]
    assert {t.receiver for t in pair} == {"am-ha"}
    assert pair[1].description == "alertmanager receiver 'am-ha/1' (http://am-1.test:9093)"
    assert str(slack) == "slack receiver 'team'"
    with pytest.raises(ValueError, match="unknown type"):
        build_targets(receiver("x", "pagerduty", AM0))


def test_alertmanager_posts_v2_alerts_with_headers_and_bearer_token(rsps: responses.RequestsMock) -> None:
    rsps.post(f"{AM0}/prefix/api/v2/alerts", status=200)
    (target,) = build_targets(
        receiver("am", "alertmanager", AM0 + "/prefix/", bearer_token=Secret(BEARER + "\n"), timeout=3.0),
        now=lambda: T0 + 60,
    )
    target.send(batch("a", "b"))

    request = rsps.calls[0].request
    assert request.headers["User-Agent"] == f"prometheus-anomaly-exporter/{__version__}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {BEARER}"
    body = json.loads(request.body)
    assert [a["labels"]["instance"] for a in body] == ["a", "b"]
    assert body[0]["endsAt"] == "2023-11-14T22:18:20Z"  # send time (T0 + 60) + valid_for (240)
    kwargs = rsps.calls[0].request.req_kwargs
    assert kwargs["timeout"] == 3.0 and kwargs["cert"] is None
    assert kwargs["verify"] not in (False, None)  # True, or requests' REQUESTS_CA_BUNDLE from the environment


def test_tls_options_and_basic_auth(rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture) -> None:
    rsps.post(HOOK_URL, status=200)
    tls = TLSConfig(ca_file="/etc/ca.pem", cert_file="/etc/c.pem", key_file="/etc/k.pem")
    (target,) = build_targets(
        receiver("hook", "webhook", HOOK_URL, tls=tls, basic_auth=BasicAuth("bob", Secret(PASSWORD)))
    )
    target.send(batch())
    kwargs = rsps.calls[0].request.req_kwargs
    assert kwargs["verify"] == "/etc/ca.pem" and kwargs["cert"] == ("/etc/c.pem", "/etc/k.pem")
    expected = base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
    assert rsps.calls[0].request.headers["Authorization"] == f"Basic {expected}"
    body = json.loads(rsps.calls[0].request.body)
    assert body["version"] == "4" and body["receiver"] == "hook"


def test_insecure_skip_verify_warns_once_not_per_request(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    rsps.post(f"{AM0}/api/v2/alerts", status=200)
    caplog.set_level(logging.WARNING)
    (target,) = build_targets(receiver("am", "alertmanager", AM0, tls=TLSConfig(insecure_skip_verify=True)))
    target.send(batch())
    target.send(batch())
    assert rsps.calls[0].request.req_kwargs["verify"] is False
    warnings = [r for r in caplog.records if "insecure_skip_verify" in r.getMessage()]
    assert len(warnings) == 1 and "alertmanager receiver 'am'" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("status", "headers", "body", "retryable", "retry_after"),
    [
        (429, {"Retry-After": "7"}, "rate_limited", True, 7.0),
        (503, {"Retry-After": "2.5"}, "", True, 2.5),
        (500, {}, "rollup_error", True, None),
        (408, {}, "", True, None),
        (429, {"Retry-After": "soon"}, "", True, None),
        (400, {}, "invalid_payload", False, None),
        (403, {}, "action_prohibited", False, None),
        (404, {}, "no_service", False, None),
        (410, {}, "channel_is_archived", False, None),
        (302, {"Location": "https://elsewhere.test/"}, "", False, None),
    ],
)
def test_slack_answers_classified(
    rsps: responses.RequestsMock,
    status: int,
    headers: dict[str, str],
    body: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    rsps.post(SLACK_URL, status=status, headers=headers, body=body)
    with pytest.raises(DeliveryError) as info:
        slack_target().send(batch())
    assert info.value.retryable is retryable
    assert info.value.retry_after == retry_after
    assert str(info.value).startswith(f"slack receiver 'team-slack': HTTP {status}")
    assert body in str(info.value)
    assert len(rsps.calls) == 1  # a redirect is reported, not followed


def test_retry_after_as_http_date(rsps: responses.RequestsMock) -> None:
    rsps.post(SLACK_URL, status=429, headers={"Retry-After": "Tue, 14 Nov 2023 22:13:50 GMT"})
    (target,) = build_targets(receiver("s", "slack", SLACK_URL), now=lambda: T0)
    with pytest.raises(DeliveryError) as info:
        target.send(batch())
    assert info.value.retry_after == 30.0


def test_slack_ok_and_empty_batches_send_nothing(rsps: responses.RequestsMock) -> None:
    rsps.post(SLACK_URL, body="ok")
    target = slack_target()
    target.send(Batch(rule="cpu", notifications=(), created=T0))
    assert len(rsps.calls) == 0
    target.send(batch("a"))
    message = json.loads(rsps.calls[0].request.body)
    assert message["text"] == "1 firing — rule cpu" and len(message["blocks"]) == 2


def test_connection_errors_are_retryable_and_name_no_url() -> None:
    # Nothing listens on port 1; the URL's token must not show in the error text.
    url = f"http://127.0.0.1:1/services/{SLACK_TOKEN}"
    (target,) = build_targets(receiver("s", "slack", url, timeout=2.0))
    with pytest.raises(DeliveryError) as info:
        target.send(batch())
    assert info.value.retryable
    assert "ConnectionError" in str(info.value)
    assert_no_secret(str(info.value))
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_secrets_never_in_errors_even_when_the_server_echoes_them(rsps: responses.RequestsMock) -> None:
    echo = f"bad request to {HOOK_URL} with Bearer {BEARER} path /incoming/hook-key-8d1f2e3a"
    rsps.post(HOOK_URL, status=400, body=echo)
    (target,) = build_targets(receiver("hook", "webhook", HOOK_URL, bearer_token=Secret(BEARER)))
    with pytest.raises(DeliveryError) as info:
        target.send(batch())
    assert not info.value.retryable
    assert_no_secret(str(info.value))
    assert "<secret>" in str(info.value)
    assert_no_secret(repr(target) + str(target) + target.name)


# -- delivery queue ------------------------------------------------------------------------------------------


def test_no_thread_until_first_submit(make: Callable[..., Delivery]) -> None:
    before = threading.active_count()
    d = make(Scripted("t"))
    assert threading.active_count() == before
    assert d.stats().queue_length == 0 and d.stats().last_success is None


def test_slack_429_retry_after_is_honoured(
    rsps: responses.RequestsMock, make: Callable[..., Delivery], fake: FakeTime
) -> None:
    rsps.post(SLACK_URL, status=429, headers={"Retry-After": "7"}, body="rate_limited")
    rsps.post(SLACK_URL, body="ok")
    d, done = make(slack_target()), Done()
    b = batch()
    assert d.submit(b, done)
    assert done.wait() == [(b, True)]
    assert fake.sleeps == [7.0]
    s = d.stats()
    assert (s.sent, s.failed, s.dropped, s.queue_length) == (1, 1, 0, 0)
    assert s.last_success == T0 + 7 and s.target == "team-slack" and s.kind == "slack"


def test_retry_after_is_capped(
    rsps: responses.RequestsMock, make: Callable[..., Delivery], fake: FakeTime
) -> None:
    rsps.post(SLACK_URL, status=429, headers={"Retry-After": "3600"})
    rsps.post(SLACK_URL, body="ok")
    d, done = make(slack_target(), retry_after_max=60.0), Done()
    d.submit(batch(), done)
    done.wait()
    assert fake.sleeps == [60.0]


def test_500_retried_then_success(
    rsps: responses.RequestsMock, make: Callable[..., Delivery], fake: FakeTime
) -> None:
    rsps.post(SLACK_URL, status=500, body="rollup_error")
    rsps.post(SLACK_URL, status=502)
    rsps.post(SLACK_URL, body="ok")
    d, done = make(slack_target()), Done()
    d.submit(batch(), done)
    assert done.wait()[0][1] is True
    assert fake.sleeps == [1.0, 2.0]  # full jitter over base * 2**k; Largest() shows the bound
    assert len(rsps.calls) == 3
    assert (d.stats().sent, d.stats().failed) == (1, 2)


def test_attempts_exhausted_drops_with_capped_backoff(
    rsps: responses.RequestsMock,
    make: Callable[..., Delivery],
    fake: FakeTime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rsps.post(SLACK_URL, status=503)
    d, done = make(slack_target(), max_attempts=5, backoff_max=3.0), Done()
    b = batch()
    d.submit(b, done)
    assert done.wait() == [(b, False)]
    assert fake.sleeps == [1.0, 2.0, 3.0, 3.0]
    s = d.stats()
    assert (s.sent, s.failed, s.dropped, s.last_success) == (0, 5, 1, None)
    assert any("dropped after 5 attempts" in r.getMessage() for r in caplog.records)


def test_jitter_stays_within_bounds(
    rsps: responses.RequestsMock, make: Callable[..., Delivery], fake: FakeTime
) -> None:
    rsps.post(SLACK_URL, status=500)
    d, done = make(slack_target(), max_attempts=6, rng=random.Random(3)), Done()
    d.submit(batch(), done)
    done.wait()
    bounds = [1.0, 2.0, 4.0, 5.0, 5.0]
    assert len(fake.sleeps) == 5
    assert all(0 <= s <= bound for s, bound in zip(fake.sleeps, bounds, strict=True))
    assert len(set(fake.sleeps)) > 1


def test_400_not_retried(
    rsps: responses.RequestsMock,
    make: Callable[..., Delivery],
    fake: FakeTime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rsps.post(SLACK_URL, status=400, body="invalid_payload")
    d, done = make(slack_target()), Done()
    d.submit(batch(), done)
    assert done.wait()[0][1] is False
    assert len(rsps.calls) == 1 and fake.sleeps == []
    assert (d.stats().failed, d.stats().dropped) == (1, 1)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "not retried" in errors[0] and "invalid_payload" in errors[0]


def test_connection_error_retried(
    rsps: responses.RequestsMock, make: Callable[..., Delivery], fake: FakeTime
) -> None:
    rsps.post(SLACK_URL, body=requests.ConnectionError("connection reset by peer"))
    rsps.post(SLACK_URL, body=requests.Timeout("read timed out"))
    rsps.post(SLACK_URL, body="ok")
    d, done = make(slack_target()), Done()
    d.submit(batch(), done)
    assert done.wait()[0][1] is True
    assert len(rsps.calls) == 3 and fake.sleeps == [1.0, 2.0]


def test_batches_sent_in_order(make: Callable[..., Delivery]) -> None:
    target = Scripted("t")
    d, done = make(target), Done()
    batches = [batch(rule=f"r{i}") for i in range(20)]
    assert all(d.submit(b, done) for b in batches)
    done.wait(20)
    assert target.sent == batches


def test_queue_bound_drops_and_counts(
    make: Callable[..., Delivery], caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate()
    d, done = make(Scripted("t", gate), max_queue=2), Done()
    assert d.submit(batch(rule="in-flight"), done)
    assert gate.entered.wait(2)
    assert d.submit(batch(rule="q1"), done) and d.submit(batch(rule="q2"), done)
    assert not d.submit(batch(rule="overflow"), done)
    s = d.stats()
    assert (s.queue_length, s.dropped) == (2, 1)
    assert any("queue full" in r.getMessage() and "overflow" in r.getMessage() for r in caplog.records)
    gate.release.set()
    calls = done.wait(3)
    assert [(b.rule, ok) for b, ok in calls] == [("in-flight", True), ("q1", True), ("q2", True)]
    assert d.stats().sent == 3 and d.stats().queue_length == 0


def test_close_delivers_queued_then_joins(make: Callable[..., Delivery]) -> None:
    target = Scripted("t")
    d, done = make(target), Done()
    for i in range(5):
        d.submit(batch(rule=f"r{i}"), done)
    d.close(2.0)
    assert len(done.calls) == 5 and all(ok for _, ok in done.calls)
    assert target.closed
    assert not [t for t in threading.enumerate() if t.name == "notify-t"]
    assert not d.submit(batch(), done)  # closed: refused, counted
    assert d.stats().dropped == 1
    d.close(1.0)  # idempotent


def test_close_without_any_submit_closes_the_target(make: Callable[..., Delivery]) -> None:
    target = Scripted("t")
    make(target).close(0)
    assert target.closed


def test_close_abandons_what_a_stuck_target_cannot_send(make: Callable[..., Delivery]) -> None:
    gate = Gate()
    target = Scripted("t", gate)
    d, done = make(target, clock=time.monotonic), Done()
    d.submit(batch(rule="stuck"), done)
    assert gate.entered.wait(2)
    d.submit(batch(rule="queued"), done)
    began = time.monotonic()
    d.close(0.1)
    assert time.monotonic() - began < 1.0
    assert done.calls == [(done.calls[0][0], False)] and done.calls[0][0].rule == "queued"
    gate.release.set()  # the request in flight ends; the worker then exits and closes the target
    calls = done.wait(2)
    assert [(b.rule, ok) for b, ok in calls] == [("queued", False), ("stuck", True)]
    d.close(1.0)
    assert target.closed


def test_close_cuts_a_long_backoff_short(rsps: responses.RequestsMock, make: Callable[..., Delivery]) -> None:
    # Real clock and the default interruptible wait: a 30 s Retry-After must not hold up shutdown.
    rsps.post(SLACK_URL, status=429, headers={"Retry-After": "30"})
    d, done = make(slack_target(), clock=time.monotonic, sleep=None), Done()
    d.submit(batch(), done)
    deadline = time.monotonic() + 2
    while not rsps.calls and time.monotonic() < deadline:
        time.sleep(0.005)
    began = time.monotonic()
    d.close(0.2)
    assert time.monotonic() - began < 1.0
    assert done.wait()[0][1] is False
    assert d.stats().dropped == 1 and len(rsps.calls) == 1


def test_on_done_errors_do_not_stop_the_worker(make: Callable[..., Delivery]) -> None:
    target, done = Scripted("t"), Done()

    def flaky(b: Batch, ok: bool) -> None:
        done(b, ok)
        raise RuntimeError("callback bug")

    d = make(target)
    d.submit(batch(rule="one"), flaky)
    d.submit(batch(rule="two"), flaky)
    assert [b.rule for b, _ in done.wait(2)] == ["one", "two"]


def test_unexpected_exception_in_send_is_a_failed_delivery(make: Callable[..., Delivery]) -> None:
    def broken(b: Batch) -> None:
        raise KeyError("bug")

    d, done = make(Scripted("t", broken)), Done()
    d.submit(batch(), done)
    assert done.wait()[0][1] is False
    assert (d.stats().failed, d.stats().dropped) == (1, 1)


def test_secrets_never_in_logs(
    rsps: responses.RequestsMock, make: Callable[..., Delivery], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"no_service for {SLACK_URL}"
    rsps.post(SLACK_URL, status=500, body=echo)
    rsps.post(SLACK_URL, body=requests.ConnectionError(f"failed to reach {SLACK_URL}"))
    rsps.post(SLACK_URL, status=404, body=echo)
    d, done = make(slack_target()), Done()
    d.submit(batch(), done)
    done.wait()
    assert len(caplog.records) >= 3
    assert "team-slack" in caplog.text
    assert_no_secret(caplog.text)
    assert_no_secret(repr(d.stats()))


# -- Notifier ------------------------------------------------------------------------------------------------


@pytest.fixture
def notifier_factory(
    fake: FakeTime,
) -> Iterator[Callable[[dict[str, ReceiverConfig]], Notifier]]:
    made: list[Notifier] = []

    def _factory(receivers: dict[str, ReceiverConfig]) -> Notifier:
        def delivery(target: Target, r: ReceiverConfig) -> Delivery:
            return Delivery(
                target,
                max_queue=r.max_queue,
                max_attempts=3,
                clock=fake,
                now=fake,
                sleep=fake.sleep,
                rng=Largest(),
            )

        n = Notifier(receivers, delivery=delivery)
        made.append(n)
        return n

    yield _factory
    for n in made:
        n.close(1.0)
    assert not [t for t in threading.enumerate() if t.name.startswith("notify-")]


def test_alertmanager_ha_pair_each_retried_on_its_own(
    rsps: responses.RequestsMock,
    notifier_factory: Callable[[dict[str, ReceiverConfig]], Notifier],
    fake: FakeTime,
) -> None:
    rsps.post(f"{AM0}/api/v2/alerts", status=200)
    rsps.post(f"{AM1}/api/v2/alerts", status=500)
    rsps.post(f"{AM1}/api/v2/alerts", status=200)
    notifier = notifier_factory({"am": receiver("am", "alertmanager", AM0, AM1)})
    done = Done()
    b = batch("a", "b")
    assert notifier.targets("am") == ("am/0", "am/1")
    assert notifier.send(["am"], b, done) == {"am/0": True, "am/1": True}
    assert sorted(done.wait(2)) == [("am/0", b, True), ("am/1", b, True)]
    hits = [c.request.url for c in rsps.calls]
    assert hits.count(f"{AM0}/api/v2/alerts") == 1 and hits.count(f"{AM1}/api/v2/alerts") == 2
    stats = {s.target: s for s in notifier.stats()}
    assert (stats["am/0"].sent, stats["am/0"].failed) == (1, 0)
    assert (stats["am/1"].sent, stats["am/1"].failed) == (1, 1)
    assert {s.receiver for s in stats.values()} == {"am"}


def test_alertmanager_ha_pair_one_down_the_other_still_gets_everything(
    rsps: responses.RequestsMock, notifier_factory: Callable[[dict[str, ReceiverConfig]], Notifier]
) -> None:
    rsps.post(f"{AM0}/api/v2/alerts", status=200)
    rsps.post(f"{AM1}/api/v2/alerts", body=requests.ConnectionError("refused"))
    notifier = notifier_factory({"am": receiver("am", "alertmanager", AM0, AM1)})
    done = Done()
    for rule in ("r1", "r2"):
        notifier.send(["am"], batch(rule=rule), done)
    calls = done.wait(4)
    assert sorted((t, b.rule, ok) for t, b, ok in calls) == [
        ("am/0", "r1", True),
        ("am/0", "r2", True),
        ("am/1", "r1", False),
        ("am/1", "r2", False),
    ]
    stats = {s.target: s for s in notifier.stats()}
    assert (stats["am/0"].sent, stats["am/1"].dropped, stats["am/1"].failed) == (2, 2, 6)


def test_notifier_fans_out_to_several_receivers_and_skips_unknown(
    rsps: responses.RequestsMock,
    notifier_factory: Callable[[dict[str, ReceiverConfig]], Notifier],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rsps.post(SLACK_URL, body="ok")
    rsps.post(HOOK_URL, status=200)
    notifier = notifier_factory(
        {"slack": receiver("slack", "slack", SLACK_URL), "hook": receiver("hook", "webhook", HOOK_URL)}
    )
    done = Done()
    b = batch()
    assert notifier.send(["slack", "nope", "hook", "slack"], b, done) == {"slack": True, "hook": True}
    assert sorted(t for t, _, _ in done.wait(2)) == ["hook", "slack"]
    assert len(rsps.calls) == 2  # a receiver named twice still gets the batch once
    assert any("unknown receiver 'nope'" in r.getMessage() for r in caplog.records)
    assert [s.target for s in notifier.stats()] == ["slack", "hook"]


def test_notifier_per_target_api_for_alerting(
    rsps: responses.RequestsMock,
    notifier_factory: Callable[[dict[str, ReceiverConfig]], Notifier],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What exporter.alerting's Outbox needs: per-target submit, kind and repeat_interval.
    rsps.post(f"{AM1}/api/v2/alerts", status=200)
    notifier = notifier_factory(
        {
            "am": receiver("am", "alertmanager", AM0, AM1),
            "slack": receiver("slack", "slack", SLACK_URL, repeat_interval=3600.0),
        }
    )
    assert (notifier.kind("am/1"), notifier.kind("slack"), notifier.kind("gone")) == (
        "alertmanager",
        "slack",
        None,
    )
    assert notifier.repeat_interval("slack") == 3600.0 and notifier.repeat_interval("gone") == 0.0
    assert notifier.targets("nope") == ()
    done = Done()
    b = batch()
    assert notifier.submit("am/1", b, done)
    assert done.wait() == [("am/1", b, True)]
    assert [c.request.url for c in rsps.calls] == [f"{AM1}/api/v2/alerts"]  # only that target
    assert not notifier.submit("gone", b, done)
    assert any("unknown notification target 'gone'" in r.getMessage() for r in caplog.records)


def test_notifier_starts_no_thread_and_close_is_clean(
    notifier_factory: Callable[[dict[str, ReceiverConfig]], Notifier],
) -> None:
    before = threading.active_count()
    notifier = notifier_factory({"am": receiver("am", "alertmanager", AM0, AM1)})
    assert threading.active_count() == before
    notifier.close(0.5)
    assert notifier.send(["am"], batch()) == {"am/0": False, "am/1": False}


def test_test_receiver_reports_each_target(rsps: responses.RequestsMock) -> None:
    rsps.post(f"{AM0}/api/v2/alerts", status=200)
    rsps.post(f"{AM1}/api/v2/alerts", status=400, body="bad alert")
    notifier = Notifier({"am": receiver("am", "alertmanager", AM0, AM1)})
    try:
        lines = notifier.test_receiver("am")
    finally:
        notifier.close(0)
    assert lines == [
        "ok: alertmanager receiver 'am/0' (http://am-0.test:9093)",
        "failed: alertmanager receiver 'am/1' (http://am-1.test:9093): HTTP 400: bad alert",
    ]
    sent = json.loads(rsps.calls[0].request.body)
    assert sent[0]["labels"]["alertname"] == "AnomalyExporterTest"
    starts, ends = (datetime.fromisoformat(sent[0][k]) for k in ("startsAt", "endsAt"))
    assert 300 <= (ends - starts).total_seconds() < 330  # the test alert expires after 5 minutes
    with pytest.raises(ValueError, match="unknown receiver 'x'"):
        notifier.test_receiver("x")


def test_test_receiver_slack_failure_hides_the_url(rsps: responses.RequestsMock) -> None:
    rsps.post(SLACK_URL, status=404, body="no_service")
    notifier = Notifier({"s": receiver("s", "slack", SLACK_URL)})
    try:
        (line,) = notifier.test_receiver("s")
    finally:
        notifier.close(0)
    assert line == "failed: slack receiver 's': HTTP 404: no_service"


# -- the real HTTP path ------------------------------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_real_http_server_receives_alertmanager_post(
    notifier_factory: Callable[[dict[str, ReceiverConfig]], Notifier],
) -> None:
    handler = type("Recorder", (_Recorder,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="test-am-server", daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        notifier = notifier_factory({"am": receiver("am", "alertmanager", url, timeout=2.0)})
        done = Done()
        notifier.send(["am"], batch("a", "b"), done)
        assert done.wait(1)[0][2] is True
    finally:
        server.shutdown()
        server.server_close()
        thread.join(2)
    ((path, headers, body),) = handler.received
    assert path == "/api/v2/alerts"
    assert headers["User-Agent"] == f"prometheus-anomaly-exporter/{__version__}"
    assert headers["Content-Type"] == "application/json"
    alerts = json.loads(body)
    assert [a["labels"]["instance"] for a in alerts] == ["a", "b"]
    assert all({"labels", "annotations", "startsAt", "endsAt", "generatorURL"} == set(a) for a in alerts)
