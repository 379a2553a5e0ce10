"""Every rule's alerts over the exporter's life: carried across reloads, saved to one state file.

`Alerting` hands each rule its `RuleAlerts` (exporter.alerting) and keeps them when the rules file is
reloaded: a changed rule keeps its firing alerts, a removed one resolves them (also when it was removed while
the exporter was down: its alerts come back from the state file only to be resolved). It is also the
`Outbox` every rule sees, forwarding to whatever notifier the current config has, so a reload that changes
receivers swaps one object. The state file is written atomically after every change (exporter.statefile).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from exporter.alerting import Outbox, RuleAlerts, compile_alert_templates
from exporter.config import RuleConfig
from exporter.notification import Batch
from exporter.notify.delivery import DeliveryStats
from exporter.statefile import read_state, write_state

log = logging.getLogger(__name__)

STATE_KIND, STATE_VERSION = "alerts", 1


class Alerting:
    """Every rule's alerts, carried across reloads, saved to one state file after every change."""

    def __init__(
        self,
        outbox: Outbox | None,
        state_path: str | Path | None = None,
        *,
        external_url: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._path = Path(state_path) if state_path else None
        self._external_url = external_url
        self._clock = clock
        self._rules: dict[str, RuleAlerts] = {}
        self._lock = threading.RLock()  # apply() retires rules, whose on_change saves: same thread
        self._save_lock = threading.Lock()
        self._loaded: dict[str, Any] = {}
        if self._path is not None:
            data = read_state(self._path, STATE_KIND, STATE_VERSION)
            rules = data.get("rules") if data else None
            self._loaded = dict(rules) if isinstance(rules, dict) else {}

    def apply(self, rules: Iterable[RuleConfig]) -> dict[str, RuleAlerts]:
        """Make the set of rules current: new ones start (from saved state if any), changed ones keep
        their alerts, removed ones resolve theirs. A bad template raises ValueError before any change."""
        rules = list(rules)
        for r in rules:
            compile_alert_templates(r)  # fail before touching anything
        with self._lock:
            names = {r.name for r in rules}
            for name, alerts in self._rules.items():
                if name not in names and not alerts.retired:
                    alerts.retire()
            for name, saved in list(self._loaded.items()):  # saved rules that no longer exist
                if name not in names:
                    ghost = self._restored(_placeholder(name), saved)
                    if ghost is not None:
                        ghost.retire()
                        self._rules[f"{name}\x00retired"] = ghost
                    del self._loaded[name]
            for r in rules:
                current = self._rules.get(r.name)
                if current is not None and not current.retired:
                    current.configure(r)
                    continue
                saved = self._loaded.pop(r.name, None)
                self._rules[r.name] = self._restored(r, saved) or self._new(r)
            self._rules = {k: v for k, v in self._rules.items() if not v.done}
            return {r.name: self._rules[r.name] for r in rules}

    def _new(self, rule: RuleConfig) -> RuleAlerts:
        return RuleAlerts(rule, self, external_url=self._external_url, clock=self._clock, on_change=self.save)

    # -- the Outbox every rule sees: whatever notifier the current config has --------------------------
    def set_outbox(self, outbox: Outbox | None) -> Outbox | None:
        """Swap in the notifier of a reloaded config; returns the old one (for the caller to close).
        Batches still in the old one's queues report failure when it closes and are re-sent here."""
        with self._lock:
            old, self._outbox = self._outbox, outbox
            return old

    def targets(self, receiver: str) -> tuple[str, ...]:
        outbox = self._outbox
        return outbox.targets(receiver) if outbox is not None else ()

    def kind(self, target: str) -> str | None:
        outbox = self._outbox
        return outbox.kind(target) if outbox is not None else None

    def repeat_interval(self, target: str) -> float:
        outbox = self._outbox
        return outbox.repeat_interval(target) if outbox is not None else 0.0

    def submit(self, target: str, batch: Batch, on_done: Callable[[str, Batch, bool], None]) -> bool:
        outbox = self._outbox
        return outbox.submit(target, batch, on_done) if outbox is not None else False

    def _restored(self, rule: RuleConfig, saved: Any) -> RuleAlerts | None:
        if saved is None:
            return None
        alerts = self._new(rule)
        try:
            alerts.restore(saved)
        except ValueError as exc:
            log.warning("ignoring saved alert state: %s", exc)
            return None
        return alerts

    def tick(self) -> None:
        """Retries and re-sends for retired rules (live rules tick from their own jobs)."""
        with self._lock:
            retired = [a for a in self._rules.values() if a.retired]
        for a in retired:
            a.tick()

    def delivery_stats(self) -> list[DeliveryStats]:
        """Counters of the current notifier's targets (for metrics); empty without one."""
        stats = getattr(self._outbox, "stats", None)
        return list(stats()) if stats is not None else []

    def counts(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return {name: a.counts() for name, a in self._rules.items() if not a.retired}

    def save(self) -> None:
        if self._path is None:
            return
        with self._lock:
            rules = {name.split("\x00")[0]: a.to_dict() for name, a in self._rules.items()}
        with self._save_lock:
            try:
                write_state(self._path, STATE_KIND, STATE_VERSION, {"rules": rules})
            except (OSError, ValueError) as exc:
                log.error("cannot save alert state to %s: %s", self._path, exc)


def _placeholder(name: str) -> RuleConfig:
    """Settings for a rule that exists only in saved state: enough to resolve its alerts."""
    return RuleConfig(name=name, query="")
