"""Request bodies for each receiver type, built from a Batch. Pure functions: no I/O, no clock.

Times are RFC 3339 in UTC with a `Z` suffix (whole seconds, or milliseconds when the time has them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from exporter.notification import Batch, Notification

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: Alertmanager's endsAt of a firing alert in webhooks

SLACK_MAX_BLOCKS = 50
SLACK_MAX_SECTION_TEXT = 3000
SLACK_MAX_LABELS_TEXT = 1000  # one alert's label set in a Slack section, before "…"
_HIDDEN_IN_SLACK = ("alertname", "rule")  # already in the message header


def rfc3339(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC with `Z`.

    >>> rfc3339(1700000000), rfc3339(1700000000.25)
    ('2023-11-14T22:13:20Z', '2023-11-14T22:13:20.250Z')
    """
    ms = round(ts * 1000)
    stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z" if ms % 1000 else f"{stamp}Z"


# --- Alertmanager API v2 ------------------------------------------------------------------------------------


def alertmanager_alerts(batch: Batch, now: float) -> list[dict[str, Any]]:
    """Body of Alertmanager's `POST /api/v2/alerts` (a list of postableAlert).

    Firing alerts end at `now + batch.valid_for`, as Prometheus does, so Alertmanager resolves them by itself
    if we stop re-sending; resolved ones end when they ended. Empty label values are left out (in Prometheus
    an empty label is an absent one) and so is an empty generatorURL (the field must be a URI).
    """
    alerts = []
    for n in batch.notifications:
        ends = now + batch.valid_for if n.status == "firing" or n.ends_at is None else n.ends_at
        alert: dict[str, Any] = {
            "labels": {k: v for k, v in n.labels.items() if v},
            "annotations": dict(n.annotations),
            "startsAt": rfc3339(n.starts_at),
            "endsAt": rfc3339(max(ends, n.starts_at)),  # Alertmanager rejects endsAt before startsAt
        }
        if n.generator_url:
            alert["generatorURL"] = n.generator_url
        alerts.append(alert)
    return alerts


# --- Alertmanager's webhook format --------------------------------------------------------------------------


def webhook_payload(batch: Batch, receiver_name: str, now: float, external_url: str = "") -> dict[str, Any]:
    """The JSON an Alertmanager `webhook_config` receiver gets (version 4), so existing consumers work as is.

    The group is the batch's rule: groupLabels holds `rule` (and `alertname` when all alerts share it), and
    groupKey is stable per rule and receiver. `now` is unused by the format but kept for symmetry with
    alertmanager_alerts (firing alerts carry Go's zero time as endsAt, as Alertmanager sends them).
    """
    del now
    notifications = batch.notifications
    common_labels = _common(n.labels for n in notifications)
    group_labels = {"rule": batch.rule}
    if "alertname" in common_labels:
        group_labels["alertname"] = common_labels["alertname"]
    return {
        "version": "4",
        "groupKey": f"{{}}:{_label_set(group_labels)}",
        "truncatedAlerts": 0,
        "status": "firing" if batch.firing else "resolved",
        "receiver": receiver_name,
        "groupLabels": dict(sorted(group_labels.items())),
        "commonLabels": common_labels,
        "commonAnnotations": _common(n.annotations for n in notifications),
        "externalURL": external_url,
        "alerts": [
            {
                "status": n.status,
                "labels": dict(n.labels),
                "annotations": dict(n.annotations),
                "startsAt": rfc3339(n.starts_at),
                "endsAt": ZERO_TIME if n.status == "firing" or n.ends_at is None else rfc3339(n.ends_at),
                "generatorURL": n.generator_url,
                "fingerprint": n.fingerprint,
            }
            for n in notifications
        ],
    }


def _common(sets: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The pairs present, with the same value, in every mapping (empty when there are none)."""
    it = iter(sets)
    common = dict(next(it, {}))
    for labels in it:
        common = {k: v for k, v in common.items() if labels.get(k) == v}
    return dict(sorted(common.items()))


def _label_set(labels: Mapping[str, str]) -> str:
    """`{a="x", b="y"}` with Go-style quoting, as Alertmanager prints group keys."""
    return (
        "{" + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(labels.items())) + "}"
    )


# --- Slack --------------------------------------------------------------------------------------------------


def slack_escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters.

    >>> slack_escape("<!channel> a & b")
    '&lt;!channel&gt; a &amp; b'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(batch: Batch) -> dict[str, Any]:
    """One Slack incoming-webhook message (Block Kit) for one rule's batch: a header line with the counts,
    then one section per alert, firing first. Stays within Slack's limits (50 blocks, 3000 characters per
    section); alerts that do not fit are summarised as "…and K more"."""
    firing, resolved = batch.firing, batch.resolved
    rule = _code(batch.rule)
    counts = [(":red_circle:", f"{len(firing)} firing")] if firing else []
    if resolved:
        counts.append((":large_green_circle:", f"{len(resolved)} resolved"))
    header = f"{', '.join(f'{icon} {text}' for icon, text in counts) or 'no alerts'} — rule {rule}"
    blocks: list[dict[str, Any]] = [_section(f"*{header}*")]
    ordered = firing + resolved
    room = SLACK_MAX_BLOCKS - 1
    shown = ordered if len(ordered) <= room else ordered[: room - 1]  # keep one block for "…and K more"
    blocks += [_section(_alert_text(n)) for n in shown]
    if len(shown) < len(ordered):
        rest = ordered[len(shown) :]
        more_firing = sum(n.status == "firing" for n in rest)
        detail = f"{more_firing} firing, {len(rest) - more_firing} resolved"
        blocks.append({"type": "context", "elements": [_mrkdwn(f"…and {len(rest)} more ({detail})")]})
    plain = ", ".join(text for _, text in counts) or "no alerts"
    return {"text": slack_escape(f"{plain} — rule {batch.rule}"), "blocks": blocks}


def _alert_text(n: Notification) -> str:
    icon, state = (":red_circle:", "FIRING") if n.status == "firing" else (":large_green_circle:", "RESOLVED")
    series = {k: v for k, v in n.labels.items() if k not in _HIDDEN_IN_SLACK}
    labels = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(series.items()))
    lines = [f"{icon} *{state}* {_code('{' + labels + '}', SLACK_MAX_LABELS_TEXT)}"]
    summary = n.annotations.get("summary", "")
    if summary:
        lines.append(_clip(slack_escape(summary), 500))
    facts = [f"value *{_num(n.value)}*"]
    if not math.isnan(n.expected):
        facts.append(f"expected {_num(n.expected)}")
    if not (math.isnan(n.lower) and math.isnan(n.upper)):
        facts.append(f"band [{_num(n.lower)}, {_num(n.upper)}]")
    if not math.isnan(n.score):
        facts.append(f"score {_num(n.score)}")
    lines.append(" · ".join(facts))
    when = f"since {_slack_date(n.starts_at)}"
    if n.status == "resolved" and n.ends_at is not None:
        when += f", ended {_slack_date(n.ends_at)}"
    text = "\n".join([*lines, when])
    link = _slack_link(n.generator_url, "Graph")
    if link and len(text) + len(link) + 3 <= SLACK_MAX_SECTION_TEXT:  # a clipped link would be broken
        text += f" · {link}"
    return text


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(_clip(text, SLACK_MAX_SECTION_TEXT))}


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def _code(text: str, limit: int = SLACK_MAX_LABELS_TEXT) -> str:
    """Inline code; a backtick inside would end the span early, so it becomes a quote."""
    return "`" + _clip(slack_escape(text.replace("`", "'")), limit) + "`"


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters, ending in "…" when cut, never inside an escape such as `&amp;`.

    >>> _clip("a &amp; b", 5), _clip("abc", 5)
    ('a …', 'abc')
    """
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&")
    if amp > cut.rfind(";"):
        cut = cut[:amp]
    return cut + "…"


def _num(x: float) -> str:
    """Short number for people; unknown (NaN) is shown as such, never as 0."""
    return "unknown" if math.isnan(x) else f"{x:.4g}"


def _slack_date(ts: float) -> str:
    """A date Slack shows in the reader's time zone, with UTC as the fallback text."""
    fallback = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"<!date^{int(ts)}^{{date_short_pretty}} {{time_secs}}|{fallback}>"


def _slack_link(url: str, label: str) -> str:
    """`<url|label>` for an http(s) URL, with the characters that would end the link encoded; else ""."""
    if not url.startswith(("http://", "https://")):
        return ""
    safe = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe}|{label}>"
