"""The exporter's own alerting: alert instances per rule, what each receiver target was told, persistence.

Data flows one way: the rule's runner hands every scored cycle to `RuleAlerts.observe`; the state machine
(`exporter.alertstate`) says which series started or stopped firing; this module turns that into alert
instances (labels and annotations rendered from templates), and reconciles, per receiver target, what the
target should know with what it acknowledged:

- a firing alert a target has not acknowledged is sent (again after a failed delivery or a restart);
- Alertmanager targets get firing alerts re-sent every `resend` seconds with `endsAt` in the future, as
  Prometheus does, so Alertmanager never times them out while they fire;
- Slack and webhook targets are told once, then again every `repeat_interval` (0: never) while firing;
- a resolved alert is sent to every target that was told it fired, then forgotten.

Sending goes through an `Outbox` (the notifier's bounded queues): never blocking, acknowledged later from
a delivery thread. The whole state (state machine, instances, acknowledgements) is saved atomically after
every change, so a restart neither re-pages what was delivered nor forgets to resolve what ended.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np

from exporter.alertstate import AlertStates, Transition, series_key
from exporter.config import RuleConfig
from exporter.notification import Batch, Notification, fingerprint
from exporter.reader import SeriesKey
from exporter.templating import Template, TemplateContext, TemplateError, compile_template

log = logging.getLogger(__name__)

RESEND_MIN = 60.0  # Prometheus' default --rules.alert.resend-delay


class Outbox(Protocol):
    """Where batches go (the notifier): named targets per receiver, a non-blocking submit."""

    def targets(self, receiver: str) -> tuple[str, ...]: ...

    def kind(self, target: str) -> str | None: ...  # alertmanager | slack | webhook; None: unknown target

    def repeat_interval(self, target: str) -> float: ...

    def submit(self, target: str, batch: Batch, on_done: Callable[[str, Batch, bool], None]) -> bool: ...


@dataclass
class Latest:
    """Per series of a cycle, the newest scored point: what templates and notifications show."""

    value: np.ndarray
    score: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


@dataclass
class _Instance:
    key: SeriesKey
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None = None  # None while firing
    values: tuple[float, float, float, float, float] = (math.nan,) * 5  # value, score, expected, lower, upper
    acked: dict[str, str] = field(default_factory=dict)  # target -> status it acknowledged
    sent_at: dict[str, float] = field(default_factory=dict)  # target -> time of that delivery
    inflight: set[str] = field(default_factory=set)  # not persisted

    @property
    def ident(self) -> tuple[str, float]:
        return fingerprint(self.labels), self.starts_at

    def notification(self, generator_url: str) -> Notification:
        v, s, e, lo, hi = self.values
        return Notification(
            labels=self.labels,
            annotations=self.annotations,
            status="firing" if self.ends_at is None else "resolved",
            starts_at=self.starts_at,
            ends_at=self.ends_at,
            generator_url=generator_url,
            value=v,
            score=s,
            expected=e,
            lower=lo,
            upper=hi,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": [list(p) for p in self.key],
            "labels": self.labels,
            "annotations": self.annotations,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "values": [None if math.isnan(x) or math.isinf(x) else x for x in self.values],
            "acked": self.acked,
            "sent_at": self.sent_at,
        }

    @classmethod
    def from_dict(cls, d: Any) -> _Instance:
        if not isinstance(d, dict):
            raise ValueError("alert instance must be a mapping")
        key = series_key(d.get("key"))
        values = tuple(math.nan if x is None else float(x) for x in d.get("values", [None] * 5))
        if len(values) != 5:
            raise ValueError("alert instance: values must have 5 entries")
        ends = d.get("ends_at")
        return cls(
            key=key,
            labels={str(k): str(v) for k, v in dict(d["labels"]).items()},
            annotations={str(k): str(v) for k, v in dict(d.get("annotations", {})).items()},
            starts_at=float(d["starts_at"]),
            ends_at=None if ends is None else float(ends),
            values=values,
            acked={str(k): str(v) for k, v in dict(d.get("acked", {})).items()},
            sent_at={str(k): float(v) for k, v in dict(d.get("sent_at", {})).items()},
        )


def compile_alert_templates(rule: RuleConfig) -> tuple[dict[str, Template], dict[str, Template]]:
    """The rule's label and annotation templates, compiled; a ValueError names the bad one."""
    out: list[dict[str, Template]] = [{}, {}]
    for i, (what, texts) in enumerate(
        (("labels", rule.alert.labels), ("annotations", rule.alert.annotations))
    ):
        for name, text in texts.items():
            try:
                out[i][name] = compile_template(text)
            except TemplateError as exc:
                raise ValueError(f"rule {rule.name!r} alert.{what}.{name}: {exc}") from None
    return out[0], out[1]


class RuleAlerts:
    """One rule's alerts: state machine, instances, per-target acknowledgements. Thread-safe."""

    def __init__(
        self,
        rule: RuleConfig,
        outbox: Outbox | None,
        *,
        external_url: str = "",
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._outbox = outbox
        self._clock = clock
        self._on_change = on_change or (lambda: None)
        self._external_url = external_url.rstrip("/")
        self._firing: dict[SeriesKey, _Instance] = {}
        self._ending: list[_Instance] = []  # resolved, still to be told to some target
        self.retired = False
        self.configure(rule)

    # -- configuration ------------------------------------------------------------------------------
    def configure(self, rule: RuleConfig) -> None:
        """Take (new) settings, keeping the state of alerts in flight."""
        with self._lock:
            labels, annotations = compile_alert_templates(rule)
            old = getattr(self, "states", None)
            self.rule = rule
            self._label_templates, self._annotation_templates = labels, annotations
            self.states = (
                AlertStates(rule.alert) if old is None else AlertStates.from_dict(rule.alert, old.to_dict())
            )
            self._resend = max(RESEND_MIN, rule.interval)
            self._generator_url = self._graph_link(rule.query)

    def _graph_link(self, query: str) -> str:
        if not self._external_url or not query:
            return ""
        return f"{self._external_url}/graph?g0.expr={quote(query, safe='')}&g0.tab=0"

    def _targets(self) -> list[str]:
        if self._outbox is None:
            return []
        return [t for r in self.rule.alert.receivers for t in self._outbox.targets(r)]

    # -- evaluation ----------------------------------------------------------------------------------
    def observe(
        self, keys: Sequence[SeriesKey], timestamps: np.ndarray, score: np.ndarray, latest: Latest
    ) -> None:
        """Judge a cycle's scored columns (series × time) and notify about what changed."""
        with self._lock:
            _, changes = self.states.update(keys, timestamps, score)
            row = {k: i for i, k in enumerate(keys)}
            for c in changes:
                self._apply(c, row, latest)
            for key, inst in self._firing.items():  # fresh values for the annotations of firing alerts
                i = row.get(key)
                if i is not None and not math.isnan(latest.value[i]):
                    inst.values = _values(latest, i)
                    inst.annotations = self._render(self._annotation_templates, key, inst.values)
            if len(self.states.keys) > 2 * max(len(keys), 1) + 100:
                self.states.forget(set(keys))
            self._dispatch(self._clock())
        self._on_change()

    def tick(self) -> None:
        """Re-send and retry without new scores (the model is not ready yet, or the query failed)."""
        with self._lock:
            self._dispatch(self._clock())

    def retire(self) -> None:
        """The rule was removed: resolve everything it had firing, now."""
        with self._lock:
            self.retired = True
            now = self._clock()
            for inst in self._firing.values():
                inst.ends_at = now
                self._ending.append(inst)
            self._firing.clear()
            self._dispatch(now)
        self._on_change()

    @property
    def done(self) -> bool:
        """Retired and nothing left to tell anyone."""
        with self._lock:
            return self.retired and not self._firing and not self._ending

    def counts(self) -> tuple[int, int]:
        """(pending, firing) series right now."""
        with self._lock:
            pending = int((~np.isnan(self.states.active_since) & np.isnan(self.states.firing_since)).sum())
            return pending, len(self._firing)

    def _apply(self, c: Transition, row: Mapping[SeriesKey, int], latest: Latest) -> None:
        if c.firing:
            i = row.get(c.key)
            values = _values(latest, i) if i is not None else (math.nan,) * 5
            self._firing[c.key] = _Instance(
                key=c.key,
                labels=self._labels(c.key, values),
                annotations=self._render(self._annotation_templates, c.key, values),
                starts_at=c.at,
                values=values,
            )
        else:
            inst = self._firing.pop(c.key, None)
            if inst is not None:
                inst.ends_at = c.at
                self._ending.append(inst)

    def _context(self, key: SeriesKey, values: tuple[float, ...]) -> TemplateContext:
        v, s, e, lo, hi = values
        return TemplateContext(
            labels=dict(key),
            value=v,
            score=s,
            expected=e,
            lower=lo,
            upper=hi,
            rule=self.rule.name,
            threshold=self.rule.alert.threshold,
        )

    def _render(
        self, templates: Mapping[str, Template], key: SeriesKey, values: tuple[float, ...]
    ) -> dict[str, str]:
        ctx = self._context(key, values)
        return {name: t.render(ctx) for name, t in templates.items()}

    def _labels(self, key: SeriesKey, values: tuple[float, ...]) -> dict[str, str]:
        """Series labels (without __name__), the rule's extra labels, severity, the alert's own labels,
        then alertname and rule, which nothing overrides."""
        labels = {k: v for k, v in key if k != "__name__"}
        labels.update(self.rule.labels)
        labels["severity"] = self.rule.alert.severity
        labels.update({k: v for k, v in self._render(self._label_templates, key, values).items() if v})
        labels["alertname"] = self.rule.alert.name or self.rule.name
        labels["rule"] = self.rule.name
        return labels

    # -- delivery ------------------------------------------------------------------------------------
    def _dispatch(self, now: float) -> None:
        outbox = self._outbox
        if outbox is None:
            self._ending.clear()
            return
        configured = self._targets()
        owed = [t for i in self._ending for t, status in i.acked.items() if status == "firing"]
        for target in dict.fromkeys([*configured, *owed]):
            kind = outbox.kind(target)
            if kind is None:  # a target that is gone from the config: nobody left to tell
                continue
            repeat = self._resend if kind == "alertmanager" else outbox.repeat_interval(target)
            due = []
            if target in configured:
                due = [i for i in self._firing.values() if self._firing_due(i, target, now, repeat)]
            due += [i for i in self._ending if target not in i.inflight and i.acked.get(target) == "firing"]
            if not due:
                continue
            batch = Batch(
                rule=self.rule.name,
                notifications=tuple(i.notification(self._generator_url) for i in due),
                created=now,
                valid_for=4 * self._resend,
            )
            for i in due:
                i.inflight.add(target)
            if not outbox.submit(target, batch, self._done):
                for i in due:
                    i.inflight.discard(target)
        self._prune()

    def _prune(self) -> None:
        """A resolved alert is finished once no known target still has to hear of it."""
        outbox = self._outbox

        def owed(i: _Instance) -> bool:
            return any(s == "firing" and outbox is not None and outbox.kind(t) for t, s in i.acked.items())

        self._ending = [i for i in self._ending if i.inflight or owed(i)]

    @staticmethod
    def _firing_due(inst: _Instance, target: str, now: float, repeat: float) -> bool:
        if target in inst.inflight:
            return False
        if inst.acked.get(target) != "firing":
            return True
        return repeat > 0 and now - inst.sent_at.get(target, -math.inf) >= repeat - 1e-6

    def _done(self, target: str, batch: Batch, ok: bool) -> None:
        """Delivery callback (from a delivery thread)."""
        with self._lock:
            by_ident = {i.ident: i for i in (*self._firing.values(), *self._ending)}
            for n in batch.notifications:
                inst = by_ident.get((n.fingerprint, n.starts_at))
                if inst is None:
                    continue
                inst.inflight.discard(target)
                if ok:
                    inst.acked[target] = n.status
                    inst.sent_at[target] = batch.created
            self._prune()
        self._on_change()

    # -- persistence ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "states": self.states.to_dict(),
                "firing": [i.to_dict() for i in self._firing.values()],
                "ending": [i.to_dict() for i in self._ending],
            }

    def restore(self, data: Any) -> None:
        """Load what to_dict saved; raises ValueError (state left empty) on anything malformed."""
        with self._lock:
            try:
                if not isinstance(data, dict):
                    raise ValueError("rule alert state must be a mapping")
                states = AlertStates.from_dict(self.rule.alert, data.get("states"))
                firing = [_Instance.from_dict(d) for d in data.get("firing", [])]
                ending = [_Instance.from_dict(d) for d in data.get("ending", [])]
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"rule {self.rule.name}: {exc}") from None
            self.states, self._firing, self._ending = states, {i.key: i for i in firing}, ending


def _values(latest: Latest, i: int) -> tuple[float, float, float, float, float]:
    return (
        float(latest.value[i]),
        float(latest.score[i]),
        float(latest.expected[i]),
        float(latest.lower[i]),
        float(latest.upper[i]),
    )
