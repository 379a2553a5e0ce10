"""Latest results and health per rule. Writers swap whole immutable objects; scrapes copy references.

No I/O and no model work here: a scrape only reads what the scheduler's jobs last published.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

LabelPairs = tuple[tuple[str, str], ...]


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
        self._snapshots: dict[str, RuleSnapshot] = {}
        self._health: dict[str, RuleHealth] = {}
        self._reload = ReloadStatus(last_success=clock())

    # -- writers -----------------------------------------------------------------------------------
    def add_rule(self, rule: str) -> None:
        with self._lock:
            self._health.setdefault(rule, RuleHealth())

    def remove_rule(self, rule: str) -> None:
        with self._lock:
            self._health.pop(rule, None)
            self._snapshots.pop(rule, None)

    def publish(self, rule: str, snapshot: RuleSnapshot) -> None:
        with self._lock:
            if rule in self._health:  # a rule removed by a reload while its job ran stays removed
                self._snapshots[rule] = snapshot

    def withdraw(self, rule: str) -> None:
        """Stop exporting a rule's series (e.g. its data can no longer be trusted as current)."""
        with self._lock:
            self._snapshots.pop(rule, None)

    def update(self, rule: str, **changes: object) -> None:
        with self._lock:
            current = self._health.get(rule)
            if current is not None:
                self._health[rule] = dataclasses.replace(current, **changes)  # type: ignore[arg-type]

    def record_duration(self, rule: str, stage: str, seconds: float) -> None:
        with self._lock:
            current = self._health.get(rule)
            if current is not None:
                durations = MappingProxyType({**current.durations, stage: seconds})
                self._health[rule] = dataclasses.replace(current, durations=durations)

    def record_error(self, rule: str, stage: str, message: str) -> None:
        with self._lock:
            current = self._health.get(rule)
            if current is not None:
                errors = MappingProxyType({**current.errors, stage: current.errors.get(stage, 0) + 1})
                self._health[rule] = dataclasses.replace(
                    current, errors=errors, last_error=f"{stage}: {message}", up=False
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
            return dict(self._snapshots)

    def health(self) -> dict[str, RuleHealth]:
        with self._lock:
            return dict(self._health)

    def reload_status(self) -> ReloadStatus:
        with self._lock:
            return self._reload
