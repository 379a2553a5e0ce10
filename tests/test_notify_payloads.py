"""Request bodies of the receivers: Alertmanager API v2, Alertmanager's webhook format, Slack Block Kit."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import pytest

from exporter.notification import Batch, Notification
from exporter.notify.payloads import (
    SLACK_MAX_BLOCKS,
    SLACK_MAX_SECTION_TEXT,
    ZERO_TIME,
    alertmanager_alerts,
    rfc3339,
    slack_message,
    webhook_payload,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")


def alert(
    instance: str = "a:9100",
    status: str = "firing",
    *,
    starts_at: float = T0,
    ends_at: float | None = None,
    generator_url: str = "http://prometheus:9090/graph?g0.expr=rate(x%5B5m%5D)&g0.tab=0",
    annotations: dict[str, str] | None = None,
    **labels: str,
) -> Notification:
    return Notification(
        labels={
            "alertname": "CpuAnomaly",
            "rule": "cpu",
            "severity": "warning",
            "instance": instance,
            **labels,
        },
        annotations={"summary": f"cpu on {instance} is unusual"} if annotations is None else annotations,
        status=status,  # type: ignore[arg-type]
        starts_at=starts_at,
        ends_at=ends_at if ends_at is not None or status == "firing" else T0 + 600,
        generator_url=generator_url,
        value=93.5,
        score=2.4,
        expected=41.0,
        lower=20.0,
        upper=62.0,
    )


def batch(*notifications: Notification, rule: str = "cpu", valid_for: float = 240.0) -> Batch:
    return Batch(rule=rule, notifications=tuple(notifications), created=T0 + 900, valid_for=valid_for)


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0.0, "1970-01-01T00:00:00Z"),
        (T0, "2023-11-14T22:13:20Z"),
        (T0 + 0.5, "2023-11-14T22:13:20.500Z"),
        (T0 + 0.0004, "2023-11-14T22:13:20Z"),  # rounded to milliseconds
        (T0 + 0.9996, "2023-11-14T22:13:21Z"),
    ],
)
def test_rfc3339_is_utc_with_z(ts: float, text: str) -> None:
    assert rfc3339(ts) == text


# -- Alertmanager API v2 -------------------------------------------------------------------------------------

# postableAlert in api/v2/openapi.yaml: labels (required) + generatorURL, startsAt, endsAt, annotations.
POSTABLE_ALERT_KEYS = {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}


def test_alertmanager_alerts_match_postable_alert_schema() -> None:
    now = T0 + 900
    body = alertmanager_alerts(batch(alert("a"), alert("b", "resolved", ends_at=T0 + 300.25)), now)

    json.dumps(body)  # serialisable as is
    assert isinstance(body, list) and len(body) == 2
    for a in body:
        assert set(a) <= POSTABLE_ALERT_KEYS and "labels" in a
        assert a["labels"] and all(isinstance(k, str) and isinstance(v, str) for k, v in a["labels"].items())
        assert all(isinstance(v, str) for v in a["annotations"].values())
        assert RFC3339_Z.match(a["startsAt"]) and RFC3339_Z.match(a["endsAt"])
    firing, resolved = body
    assert firing["labels"] == {
        "alertname": "CpuAnomaly",
        "rule": "cpu",
        "severity": "warning",
        "instance": "a",
    }
    assert firing["annotations"] == {"summary": "cpu on a is unusual"}
    assert firing["startsAt"] == "2023-11-14T22:13:20Z"
    assert firing["endsAt"] == rfc3339(now + 240)  # like Prometheus: valid until re-sent, then auto-resolved
    assert firing["generatorURL"].startswith("http://prometheus:9090/graph?")
    assert resolved["endsAt"] == "2023-11-14T22:18:20.250Z"


def test_alertmanager_alerts_leave_out_empty_labels_and_generator_url() -> None:
    body = alertmanager_alerts(batch(alert("a", generator_url="", team="")), T0)
    assert "team" not in body[0]["labels"]
    assert "generatorURL" not in body[0]  # the field is a URI; an empty one is better absent


def test_alertmanager_end_never_precedes_start() -> None:
    # Alertmanager rejects "start time must be before end time"; a clock step must not lose the alert.
    body = alertmanager_alerts(batch(alert("a", "resolved", starts_at=T0, ends_at=T0 - 5)), T0)
    assert body[0]["endsAt"] == body[0]["startsAt"]


def test_alertmanager_valid_for_comes_from_the_batch() -> None:
    body = alertmanager_alerts(batch(alert("a"), valid_for=60), T0)
    assert body[0]["endsAt"] == rfc3339(T0 + 60)


# -- webhook -------------------------------------------------------------------------------------------------

WEBHOOK_KEYS = {
    "version",
    "groupKey",
    "truncatedAlerts",
    "status",
    "receiver",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "alerts",
}
WEBHOOK_ALERT_KEYS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}


def test_webhook_payload_has_alertmanager_fields() -> None:
    firing, resolved = (
        alert("a", annotations={"summary": "x", "runbook": "r"}),
        alert("b", "resolved", annotations={"summary": "y", "runbook": "r"}),
    )
    body = webhook_payload(batch(firing, resolved), "ops-hook", T0)

    json.dumps(body)
    assert set(body) == WEBHOOK_KEYS
    assert body["version"] == "4"
    assert body["status"] == "firing"  # any firing alert makes the group firing
    assert body["receiver"] == "ops-hook"
    assert body["truncatedAlerts"] == 0
    assert body["groupLabels"] == {"alertname": "CpuAnomaly", "rule": "cpu"}
    assert body["groupKey"] == '{}:{alertname="CpuAnomaly", rule="cpu"}'
    assert body["commonLabels"] == {"alertname": "CpuAnomaly", "rule": "cpu", "severity": "warning"}
    assert body["commonAnnotations"] == {"runbook": "r"}
    assert body["externalURL"] == ""
    a, b = body["alerts"]
    assert set(a) == set(b) == WEBHOOK_ALERT_KEYS
    assert (a["status"], b["status"]) == ("firing", "resolved")
    assert a["endsAt"] == ZERO_TIME == "0001-01-01T00:00:00Z"  # as Alertmanager sends firing alerts
    assert b["endsAt"] == rfc3339(T0 + 600)
    assert a["startsAt"] == rfc3339(T0)
    assert a["fingerprint"] == firing.fingerprint and re.fullmatch(r"[0-9a-f]{16}", a["fingerprint"])
    assert a["labels"]["instance"] == "a" and a["annotations"] == {"summary": "x", "runbook": "r"}


def test_webhook_status_resolved_when_nothing_fires_and_group_key_is_stable() -> None:
    one = webhook_payload(batch(alert("a", "resolved")), "hook", T0)
    two = webhook_payload(batch(alert("b", "resolved"), alert("c", "resolved")), "hook", T0 + 60)
    assert one["status"] == two["status"] == "resolved"
    assert one["groupKey"] == two["groupKey"]


def test_webhook_group_labels_without_a_shared_alertname() -> None:
    body = webhook_payload(batch(alert("a"), alert("b", alertname="Other")), "hook", T0)
    assert body["groupLabels"] == {"rule": "cpu"}
    assert "alertname" not in body["commonLabels"]


# -- Slack ---------------------------------------------------------------------------------------------------


def texts(message: dict[str, Any]) -> list[str]:
    out = []
    for block in message["blocks"]:
        if block["type"] == "section":
            out.append(block["text"]["text"])
        else:
            out.extend(e["text"] for e in block["elements"])
    return out


def test_slack_one_message_per_batch_with_firing_and_resolved() -> None:
    message = slack_message(batch(alert("b", "resolved"), alert("a"), alert("c")))

    json.dumps(message)
    header, *alerts = texts(message)
    assert header == "*:red_circle: 2 firing, :large_green_circle: 1 resolved — rule `cpu`*"
    assert message["text"] == "2 firing, 1 resolved — rule cpu"
    assert len(alerts) == 3
    assert [t.split("\n")[0].split()[1] for t in alerts] == ["*FIRING*", "*FIRING*", "*RESOLVED*"]
    first = alerts[0]
    assert '`{instance="a", severity="warning"}`' in first  # compact series labels, rule/alertname in header
    assert "value *93.5* · expected 41 · band [20, 62] · score 2.4" in first
    assert "since <!date^1700000000^" in first and "|2023-11-14 22:13:20 UTC>" in first
    assert "<http://prometheus:9090/graph?g0.expr=rate(x%5B5m%5D)&amp;g0.tab=0|Graph>" in first
    assert "ended <!date^1700000600^" in alerts[2]


def test_slack_unknown_numbers_are_not_shown_as_zero() -> None:
    n = Notification(
        labels={"alertname": "A", "rule": "r", "instance": "x"},
        annotations={},
        status="firing",
        starts_at=T0,
        ends_at=None,
        generator_url="",
    )
    text = texts(slack_message(batch(n, rule="r")))[1]
    assert "value *unknown*" in text
    assert "expected" not in text and "band" not in text and "score" not in text
    assert "nan" not in text.lower().replace("unknown", "")
    assert "Graph" not in text  # no link without a URL


def test_slack_band_with_one_unknown_side() -> None:
    n = dataclasses.replace(alert("a"), lower=math.nan)
    assert "band [unknown, 62]" in texts(slack_message(batch(n)))[1]


def test_slack_escapes_user_text() -> None:
    n = alert(
        "<!channel> & <@U123>",
        annotations={"summary": "spike <!here> & more"},
        generator_url="http://p/graph?a=1&b=<x>|y",
        job="`rm -rf`",
    )
    message = slack_message(batch(n, rule="cpu"))
    _, text = texts(message)
    assert "<!channel>" not in text and "<!here>" not in text and "<@U123>" not in text
    assert "&lt;!channel&gt; &amp; &lt;@U123&gt;" in text
    assert "spike &lt;!here&gt; &amp; more" in text
    assert "`rm -rf`" not in text and "'rm -rf'" in text  # a backtick would close the code span
    assert "<http://p/graph?a=1&amp;b=%3Cx%3E%7Cy|Graph>" in text
    assert "&" not in message["text"].replace("&amp;", "")


def test_slack_rule_name_is_escaped_too() -> None:
    message = slack_message(batch(alert("a"), rule="a<b>"))
    assert "rule `a&lt;b&gt;`" in texts(message)[0]
    assert message["text"].endswith("rule a&lt;b&gt;")


def test_slack_many_alerts_stay_within_block_limit() -> None:
    notifications = [alert(f"host-{i:03d}") for i in range(150)] + [
        alert(f"old-{i:03d}", "resolved") for i in range(50)
    ]
    message = slack_message(batch(*notifications))

    assert len(message["blocks"]) == SLACK_MAX_BLOCKS
    header, *rest = texts(message)
    assert header.startswith("*:red_circle: 150 firing, :large_green_circle: 50 resolved")
    shown = rest[:-1]
    assert len(shown) == SLACK_MAX_BLOCKS - 2
    assert rest[-1] == f"…and {200 - len(shown)} more ({150 - len(shown)} firing, 50 resolved)"
    assert all('instance="host-' in t for t in shown)  # firing ones first


def test_slack_exactly_fitting_alerts_need_no_summary() -> None:
    message = slack_message(batch(*(alert(f"h{i}") for i in range(SLACK_MAX_BLOCKS - 1))))
    assert len(message["blocks"]) == SLACK_MAX_BLOCKS
    assert not any("more" in t for t in texts(message))


def test_slack_section_text_limit_with_huge_labels_and_summary() -> None:
    huge = "&" * 5000  # escaping grows it fivefold
    n = alert("a", annotations={"summary": "<" * 5000}, big=huge, generator_url="http://p/" + "x" * 2900)
    message = slack_message(batch(n))
    for block in message["blocks"]:
        text = block["text"]["text"]
        assert len(text) <= SLACK_MAX_SECTION_TEXT
        assert not re.search(r"&(?!amp;|lt;|gt;)", text)  # no escape cut in half
    assert "…" in texts(message)[1]
    assert "|Graph>" not in texts(message)[1]  # a link that does not fit is left out, not cut
