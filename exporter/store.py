"""Latest results and health per rule. Writers swap whole immutable objects; scrapes copy references.

No I/O and no model work here: a scrape only reads what the scheduler's jobs last published. A snapshot's
exposition text is rendered as it is published, in the publishing (scoring) thread, outside the lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from exporter.exposition import RenderedSeries, render

LabelPairs = tuple[tuple[str, str], ...]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleSnapshot:
    """The newest scored point of every series of one rule. NaN = unknown: the gauge is left out."""

    labels: tuple[
        LabelPairs, ...
    ]  # output labels per series: rule, extra labels, source labels (renamed on clash)
    score: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    timestamp: float  # the grid time of the scored point
    value: np.ndarray | None = None  # the observed value that was scored (None: not given)


class Published(NamedTuple):
    snapshot: RuleSnapshot
    rendered: RenderedSeries  # its sample lines, ready for /metrics


@dataclass(frozen=True)
class RuleHealth:
    up: bool = False  # the last scoring cycle (query + score) succeeded
    ready: bool = False  # the first fit finished, or failed and reported why
    last_success: float | None = None
    last_fit: float | None = None
    last_error: str | None = None
    series: int = 0
    dropped: int = 0  # series left out by max_series in the newest query
    durations: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    errors: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ReloadStatus:
    successful: bool = True
    last_success: float | None = None
    attempts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # result -> count
    last_error: str | None = None


class Store:
    """Thread-safe holder of the published state of every rule."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._published: dict[str, Published] = {}
        self._health: dict[str, RuleHealth] = {}
        self._owners: dict[str, object] = {}  # who may write each rule's state (the current runner)
        self._reload = ReloadStatus(last_success=clock())

    # -- writers -----------------------------------------------------------------------------------
    def add_rule(self, rule: str, owner: object = None) -> RuleWriter:
        """Start (or take over) a rule. Writes through the returned writer are ignored once another
        owner takes the rule over or it is removed, so a job of a replaced rule can't publish into it."""
        with self._lock:
            if self._owners.get(rule, owner) is not owner:
                self._health[rule] = RuleHealth()
                self._published.pop(rule, None)
            self._health.setdefault(rule, RuleHealth())
            self._owners[rule] = owner
        return RuleWriter(self, rule, owner)

    def remove_rule(self, rule: str) -> None:
        with self._lock:
            self._health.pop(rule, None)
            self._published.pop(rule, None)
            self._owners.pop(rule, None)

    def _owned(self, rule: str, owner: object) -> bool:
        return rule in self._health and (owner is None or self._owners.get(rule) is owner)

    def publish(self, rule: str, snapshot: RuleSnapshot, owner: object = None) -> None:
        """Render the snapshot's exposition text (unlocked: scrapes, other rules go on), then swap it in."""
        with self._lock:
            if not self._accepts(rule, snapshot, owner):
                return
            previous = self._published.get(rule)
        try:
            rendered = render(snapshot, previous.rendered if previous is not None else None)
        except Exception as exc:  # a malformed snapshot: the rule goes down, its last good one stays
            log.warning("rule %s: cannot publish the snapshot: %s", rule, exc, exc_info=True)
            self.record_error(rule, "score", f"cannot publish: {exc}", owner)
            raise
        with self._lock:
            if self._accepts(rule, snapshot, owner):  # still, after rendering
                self._published[rule] = Published(snapshot, rendered)

    def _accepts(self, rule: str, snapshot: RuleSnapshot, owner: object) -> bool:  # lock held
        if not self._owned(rule, owner):
            return False  # a rule removed or replaced by a reload while its job ran stays so
        current = self._published.get(rule)
        return current is None or snapshot.timestamp >= current.snapshot.timestamp  # never back in time

    def withdraw(self, rule: str, owner: object = None) -> None:
        """Stop exporting a rule's series (e.g. its data can no longer be trusted as current)."""
        with self._lock:
            if self._owned(rule, owner):
                self._published.pop(rule, None)

    def update(self, rule: str, owner: object = None, **changes: object) -> None:
        with self._lock:
            if not self._owned(rule, owner):
                return
            current = self._health.get(rule)
            if current is not None:
                self._health[rule] = dataclasses.replace(current, **changes)  # type: ignore[arg-type]

    def record_duration(self, rule: str, stage: str, seconds: float, owner: object = None) -> None:
        with self._lock:
            if not self._owned(rule, owner):
                return
            current = self._health.get(rule)
            if current is not None:
                durations = MappingProxyType({**current.durations, stage: seconds})
                self._health[rule] = dataclasses.replace(current, durations=durations)

    def record_error(
        self, rule: str, stage: str, message: str, owner: object = None, *, down: bool = True
    ) -> None:
        """Count an error of `stage`; with `down`, the rule's results are no longer current (up = 0)."""
        with self._lock:
            if not self._owned(rule, owner):
                return
            current = self._health.get(rule)
            if current is not None:
                errors = MappingProxyType({**current.errors, stage: current.errors.get(stage, 0) + 1})
                self._health[rule] = dataclasses.replace(
                    current, errors=errors, last_error=f"{stage}: {message}", up=current.up and not down
                )

    def record_reload(self, ok: bool, error: str | None = None) -> None:
        with self._lock:
            r = self._reload
            result = "success" if ok else "failure"
            attempts = MappingProxyType({**r.attempts, result: r.attempts.get(result, 0) + 1})
            self._reload = ReloadStatus(
                successful=ok,
                last_success=self._clock() if ok else r.last_success,
                attempts=attempts,
                last_error=None if ok else error,
            )

    # -- readers -----------------------------------------------------------------------------------
    def snapshots(self) -> dict[str, RuleSnapshot]:
        with self._lock:
            return {rule: p.snapshot for rule, p in self._published.items()}

    def published(self) -> dict[str, Published]:
        """Snapshots with their rendered text, in publishing order (a rule keeps its place when it
        publishes again)."""
        with self._lock:
            return dict(self._published)

    def health(self) -> dict[str, RuleHealth]:
        with self._lock:
            return dict(self._health)

    def reload_status(self) -> ReloadStatus:
        with self._lock:
            return self._reload


class RuleWriter:
    """One runner's handle on its rule's state in the store (see Store.add_rule)."""

    def __init__(self, store: Store, rule: str, owner: object) -> None:
        self._store, self._rule, self._owner = store, rule, owner

    def publish(self, snapshot: RuleSnapshot) -> None:
        self._store.publish(self._rule, snapshot, owner=self._owner)

    def withdraw(self) -> None:
        self._store.withdraw(self._rule, owner=self._owner)

    def update(self, **changes: object) -> None:
        self._store.update(self._rule, owner=self._owner, **changes)

    def record_duration(self, stage: str, seconds: float) -> None:
        self._store.record_duration(self._rule, stage, seconds, owner=self._owner)

    def record_error(self, stage: str, message: str, *, down: bool = True) -> None:
        self._store.record_error(self._rule, stage, message, owner=self._owner, down=down)

    def health(self) -> RuleHealth | None:
        return self._store.health().get(self._rule)
