"""A bounded queue and one worker thread per target, so that notifying never blocks the alerting loop.

Batches go out in the order they were submitted, each retried with capped exponential backoff and full
jitter (or the server's Retry-After) until it is delivered, fails for good, or runs out of attempts. Every
batch accepted by `submit` gets exactly one `on_done(batch, ok)` call, from the worker thread (or from
`close` when the worker is stuck past the deadline).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from exporter.notification import Batch
from exporter.notify.targets import DeliveryError, Target

log = logging.getLogger(__name__)

OnDone = Callable[[Batch, bool], None]


@dataclass(frozen=True)
class DeliveryStats:
    """Counters of one target since start, for metrics (label `target` = `Target.name`).

    sent: batches delivered. failed: attempts that errored (a batch retried three times counts three).
    dropped: batches given up: queue full, non-retryable error, attempts exhausted, or shut down before
    delivery. Each accepted batch ends as sent or dropped, so submitted = sent + dropped + queued + in flight.
    """

    target: str
    receiver: str
    kind: str
    sent: int
    failed: int
    dropped: int
    queue_length: int
    last_success: float | None  # epoch seconds of the last delivered batch; None = never


class Delivery:
    """Sends batches to one target from a worker thread, started on the first `submit` (never at import or
    construction). Owns the target: `close` closes it. `sleep`, `clock` (monotonic, for waits and the close
    deadline), `now` (epoch, for `last_success`) and `rng` (jitter) are injectable for tests; without `sleep`,
    backoff waits are cut short by `close`."""

    def __init__(
        self,
        target: Target,
        *,
        max_queue: int = 1000,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        retry_after_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_queue < 1 or max_attempts < 1:
            raise ValueError("max_queue and max_attempts must be at least 1")
        if not (0 <= backoff_base <= backoff_max and retry_after_max >= 0):
            raise ValueError("need 0 <= backoff_base <= backoff_max and retry_after_max >= 0")
        self.target = target
        self._max_queue = max_queue
        self._max_attempts = max_attempts
        self._backoff_base, self._backoff_max = backoff_base, backoff_max
        self._retry_after_max = retry_after_max
        self._clock, self._now, self._sleep = clock, now, sleep
        self._rng = rng if rng is not None else random.Random()
        self._cond = threading.Condition()  # guards everything below
        self._pending: deque[tuple[Batch, OnDone | None]] = deque()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._deadline = math.inf  # clock() time after which nothing more is attempted
        self._sent = self._failed = self._dropped = 0
        self._last_success: float | None = None

    @property
    def name(self) -> str:
        return self.target.name

    def __repr__(self) -> str:
        return f"<Delivery {self.target.description}>"

    def submit(self, batch: Batch, on_done: OnDone | None = None) -> bool:
        """Queue `batch` without blocking. False (logged and counted as dropped; on_done is not called) when
        the queue is full or the delivery is closed."""
        with self._cond:
            if not self._closing and len(self._pending) < self._max_queue:
                self._pending.append((batch, on_done))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"notify-{self.name}", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
                return True
            self._dropped += 1
            why = "closed" if self._closing else f"queue full ({self._max_queue} batches)"
        log.warning("%s: notification batch of rule %r dropped: %s", self.target, batch.rule, why)
        return False

    def stats(self) -> DeliveryStats:
        with self._cond:
            return DeliveryStats(
                target=self.target.name,
                receiver=self.target.receiver,
                kind=self.target.kind,
                sent=self._sent,
                failed=self._failed,
                dropped=self._dropped,
                queue_length=len(self._pending),
                last_success=self._last_success,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting; deliver what is queued until `timeout` seconds from now, abandon the rest
        (on_done(batch, False)); join the worker and close the target. Idempotent."""
        self.begin_close(timeout)
        self.finish_close()

    def begin_close(self, timeout: float) -> None:
        """First half of close (stop accepting, set the deadline), so that several deliveries can wind
        down in parallel: begin_close on all, then finish_close on each."""
        with self._cond:
            if not self._closing:
                self._closing, self._deadline = True, self._clock() + max(0.0, timeout)
            self._cond.notify_all()

    def finish_close(self) -> None:
        with self._cond:
            thread, deadline = self._thread, self._deadline
        if thread is None:
            self.target.close()
            return
        thread.join(max(0.0, deadline - self._clock()))
        if thread.is_alive():  # stuck in a request; it closes the target itself when that returns
            with self._cond:
                left = list(self._pending)
                self._pending.clear()
            log.warning(
                "%s: still sending at shutdown; abandoning %d queued batch(es)", self.target, len(left)
            )
            for batch, on_done in left:
                self._give_up(batch, on_done)

    # -- worker ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._cond.wait()
                    if not self._pending:
                        return
                    batch, on_done = self._pending.popleft()
                ok = self._deliver(batch)
                if not ok:
                    self._give_up(batch, on_done)
                elif on_done is not None:
                    self._call(on_done, batch, True)
        finally:
            self.target.close()

    def _deliver(self, batch: Batch) -> bool:
        """Attempts until success (True) or giving up (False, logged)."""
        for attempt in range(1, self._max_attempts + 1):
            if self._past_deadline():
                log.warning("%s: batch of rule %r abandoned at shutdown", self.target, batch.rule)
                return False
            try:
                self.target.send(batch)
            except DeliveryError as exc:
                error = exc
            except Exception as exc:  # a bug here must not kill the worker and silently stop all delivery
                log.exception("%s: unexpected error sending batch of rule %r", self.target, batch.rule)
                error = DeliveryError(f"{self.target}: {type(exc).__name__}", retryable=False)
            else:
                with self._cond:
                    self._sent += 1
                    self._last_success = self._now()
                return True
            with self._cond:
                self._failed += 1
            if not error.retryable:
                log.error("batch of rule %r not delivered, not retried: %s", batch.rule, error)
                return False
            if attempt == self._max_attempts:
                log.error("batch of rule %r dropped after %d attempts: %s", batch.rule, attempt, error)
                return False
            delay = self._delay(attempt, error.retry_after)
            log.warning(
                "attempt %d/%d for rule %r failed (%s); retrying in %.2fs",
                attempt,
                self._max_attempts,
                batch.rule,
                error,
                delay,
            )
            if not self._wait(delay):
                log.warning("%s: batch of rule %r abandoned at shutdown", self.target, batch.rule)
                return False
        return False  # unreachable: the loop returns on its last attempt

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The server's Retry-After (capped) if it sent one, else full jitter over the capped exponential."""
        if retry_after is not None:
            return min(retry_after, self._retry_after_max)
        return self._rng.uniform(0.0, min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1)))

    def _wait(self, delay: float) -> bool:
        """Sleep before a retry; False when shutting down and the retry would come after the deadline."""
        retry_at = self._clock() + delay
        if self._sleep is not None:
            if self._closing_before(retry_at):
                return False
            self._sleep(delay)
            return True
        with self._cond:
            while (left := retry_at - self._clock()) > 0:
                if self._closing and retry_at > self._deadline:
                    return False
                self._cond.wait(left)  # close() notifies, to re-check against its deadline
        return True

    def _closing_before(self, when: float) -> bool:
        with self._cond:
            return self._closing and when > self._deadline

    def _past_deadline(self) -> bool:
        with self._cond:
            return self._closing and self._clock() >= self._deadline

    def _give_up(self, batch: Batch, on_done: OnDone | None) -> None:
        with self._cond:
            self._dropped += 1
        if on_done is not None:
            self._call(on_done, batch, False)

    def _call(self, on_done: OnDone, batch: Batch, ok: bool) -> None:
        try:
            on_done(batch, ok)
        except Exception:
            log.exception("%s: on_done callback failed for rule %r", self.target, batch.rule)
