"""What alerting hands to receivers: one alert's state as a value, and a batch of them for one rule.

The alert state machine (`exporter.alerts`) decides what to send; receivers (`exporter.notify`) only turn
batches into HTTP requests. Both sides share these plain, immutable values and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Status = Literal["firing", "resolved"]


def fingerprint(labels: Mapping[str, str]) -> str:
    """Stable identity of an alert: a hash of its sorted label set (the same across restarts and replicas).

    >>> a, b = {"alertname": "cpu", "instance": "a"}, {"instance": "a", "alertname": "cpu"}
    >>> fingerprint(a) == fingerprint(b), len(fingerprint(a))
    (True, 16)
    """
    h = hashlib.sha256()
    for name in sorted(labels):
        h.update(name.encode())
        h.update(b"\xff")
        h.update(labels[name].encode())
        h.update(b"\xff")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Notification:
    """One alert as a receiver should present it.

    `labels` are the alert's identity (alertname, rule, severity, the series' labels, the rule's extra
    labels); `annotations` are already rendered. Times are epoch seconds. A firing alert has `ends_at`
    None (the receiver decides how long it stays valid, e.g. Alertmanager's `endsAt`); a resolved one has
    the time it ended. `value`, `expected`, `lower`, `upper` describe the last scored point (NaN = unknown).
    """

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    status: Status
    starts_at: float
    ends_at: float | None
    generator_url: str
    value: float = float("nan")
    score: float = float("nan")
    expected: float = float("nan")
    lower: float = float("nan")
    upper: float = float("nan")
    fingerprint: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "annotations", MappingProxyType(dict(self.annotations)))
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint(self.labels))
        if self.status == "resolved" and self.ends_at is None:
            raise ValueError("a resolved notification needs ends_at")

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True)
class Batch:
    """The notifications of one rule from one evaluation, sent together (one Slack message per batch).

    `created` is when the batch was made (epoch seconds); `valid_for` is how long a firing alert in it stays
    valid without a re-send (Alertmanager's `endsAt` = send time + valid_for).
    """

    rule: str
    notifications: tuple[Notification, ...]
    created: float
    valid_for: float = 240.0

    @property
    def firing(self) -> tuple[Notification, ...]:
        return tuple(n for n in self.notifications if n.status == "firing")

    @property
    def resolved(self) -> tuple[Notification, ...]:
        return tuple(n for n in self.notifications if n.status == "resolved")
