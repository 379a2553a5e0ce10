"""The one object alerting talks to: receivers by name, fanned out to a Delivery per target."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from exporter.config import ReceiverConfig
from exporter.notification import Batch, Notification
from exporter.notify.delivery import Delivery, DeliveryStats
from exporter.notify.targets import DeliveryError, Target, build_targets

log = logging.getLogger(__name__)

TargetDone = Callable[[str, Batch, bool], None]  # (target name, batch, delivered)
TEST_RULE = "test-receiver"


def _default_delivery(target: Target, receiver: ReceiverConfig) -> Delivery:
    return Delivery(target, max_queue=receiver.max_queue)


class Notifier:
    """A Delivery (queue + worker thread) per target of every configured receiver. No thread runs until
    the first batch is sent. `delivery` and `build` are injectable (tests use fake clocks and sessions).

    Target names are unique across receivers (receiver names cannot contain `/`), so alerting can track
    per target what it was told: `targets(receiver)`, then `submit(target, ...)`, `kind(target)` and
    `repeat_interval(target)`; `send` is the fan-out shortcut over receivers.
    """

    def __init__(
        self,
        receivers: Mapping[str, ReceiverConfig],
        *,
        delivery: Callable[[Target, ReceiverConfig], Delivery] = _default_delivery,
        build: Callable[[ReceiverConfig], list[Target]] = build_targets,
    ) -> None:
        self._receivers = dict(receivers)
        self._build = build
        self._deliveries: dict[str, list[Delivery]] = {}  # receiver -> its targets' deliveries
        self._by_target: dict[str, tuple[Delivery, ReceiverConfig]] = {}
        try:
            for name, receiver in self._receivers.items():
                self._deliveries[name] = [delivery(t, receiver) for t in build(receiver)]
                self._by_target.update((d.name, (d, receiver)) for d in self._deliveries[name])
        except BaseException:
            self.close(0)
            raise

    def targets(self, receiver: str) -> tuple[str, ...]:
        """Names of the receiver's targets (what `on_done` and the `target` metrics label see); () when
        the receiver is unknown."""
        return tuple(d.name for d in self._deliveries.get(receiver, ()))

    def kind(self, target: str) -> str | None:
        """alertmanager, slack or webhook; None for a target that is not (or no longer) configured."""
        entry = self._by_target.get(target)
        return None if entry is None else entry[0].target.kind

    def repeat_interval(self, target: str) -> float:
        """Seconds between reminders of a still-firing alert for this target's receiver (0: never)."""
        entry = self._by_target.get(target)
        return 0.0 if entry is None else entry[1].repeat_interval

    def submit(self, target: str, batch: Batch, on_done: TargetDone | None = None) -> bool:
        """Queue `batch` for one target without blocking. True: `on_done(target, batch, ok)` follows later,
        from the target's worker thread. False (no call): unknown target, queue full or closed."""
        entry = self._by_target.get(target)
        if entry is None:
            log.error("unknown notification target %r: batch of rule %r not sent", target, batch.rule)
            return False
        callback = None if on_done is None else functools.partial(on_done, target)
        return entry[0].submit(batch, callback)

    def send(
        self, receiver_names: Iterable[str], batch: Batch, on_done: TargetDone | None = None
    ) -> dict[str, bool]:
        """`submit` to every target of the named receivers (each once, even if named twice).

        Returns target name -> accepted. An unknown receiver name is logged and skipped.
        """
        accepted: dict[str, bool] = {}
        for name in dict.fromkeys(receiver_names):
            if name not in self._deliveries:
                log.error("unknown receiver %r: batch of rule %r not sent", name, batch.rule)
                continue
            for target in self.targets(name):
                accepted[target] = self.submit(target, batch, on_done)
        return accepted

    def stats(self) -> list[DeliveryStats]:
        return [d.stats() for ds in self._deliveries.values() for d in ds]

    def close(self, timeout: float = 5.0) -> None:
        """Stop every delivery, all winding down in parallel within one `timeout`."""
        deliveries = [d for ds in self._deliveries.values() for d in ds]
        for d in deliveries:
            d.begin_close(timeout)
        for d in deliveries:
            d.finish_close()

    def test_receiver(self, name: str) -> list[str]:
        """Send one synthetic firing alert to every target of receiver `name`, synchronously and once (no
        queue, no retries), on fresh connections. Returns one line per target: "ok: ..." or "failed: ...".

        Alertmanager keeps the test alert for 5 minutes, then resolves it."""
        receiver = self._receivers.get(name)
        if receiver is None:
            known = ", ".join(sorted(self._receivers)) or "none configured"
            raise ValueError(f"unknown receiver {name!r} (receivers: {known})")
        batch = synthetic_batch(name, time.time())
        lines = []
        for target in self._build(receiver):
            try:
                target.send(batch)
            except DeliveryError as exc:
                lines.append(f"failed: {exc}")
            else:
                lines.append(f"ok: {target}")
            finally:
                target.close()
        return lines


def synthetic_batch(receiver: str, now: float) -> Batch:
    """The synthetic alert of `anomaly-exporter test-receiver`."""
    alert = Notification(
        labels={
            "alertname": "AnomalyExporterTest",
            "rule": TEST_RULE,
            "severity": "none",
            "receiver": receiver,
        },
        annotations={
            "summary": "Test notification from prometheus-anomaly-exporter",
            "description": f"Sent by `anomaly-exporter test-receiver {receiver}`; it needs no action.",
        },
        status="firing",
        starts_at=now,
        ends_at=None,
        generator_url="",
    )
    return Batch(rule=TEST_RULE, notifications=(alert,), created=now, valid_for=300.0)
