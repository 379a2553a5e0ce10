"""Receivers over HTTP: request shape, auth, TLS, answer classification, secrets kept out of errors."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import responses

from exporter import __version__
from exporter.config import BasicAuth, ReceiverConfig, TLSConfig
from exporter.notification import Batch, Notification
from exporter.notify import (
    AlertmanagerTarget,
    DeliveryError,
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


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


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
