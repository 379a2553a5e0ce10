"""Re-reading the rules file (SIGHUP, POST /-/reload): a file that cannot be used never replaces the rules."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from exporter.alert_registry import Alerting
from exporter.config import Config, ConfigError, ReceiverConfig
from exporter.notify import Notifier
from exporter.store import Store

log = logging.getLogger(__name__)


class _Applies(Protocol):
    def apply(self, config: Config) -> None: ...


class Reloader:
    """Calls `load()` and applies the new rules and receivers; one reload at a time.

    `__call__` returns None on success, else the error text (also recorded in the store, so
    `anomaly_exporter_config_last_reload_successful` shows it). A rejected file (ConfigError) or any other
    failure while reading it leaves everything as it was. A failure while applying (a bug, not a bad file)
    is logged with its traceback and recorded; the rules applied before it keep running.
    """

    def __init__(
        self,
        load: Callable[[], Config],
        scheduler: _Applies,
        alerting: Alerting,
        store: Store,
        receivers: Mapping[str, ReceiverConfig],
        notifier_factory: Callable[[Mapping[str, ReceiverConfig]], Notifier] = Notifier,
    ) -> None:
        self._load = load
        self._scheduler = scheduler
        self._alerting = alerting
        self._store = store
        self._receivers = receivers
        self._notifier_factory = notifier_factory
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        with self._lock:
            try:
                config = self._load()
            except ConfigError as exc:
                log.error("reload rejected, the previous rules keep running: %s", exc)
                return self._failed("; ".join(exc.errors), str(exc))
            except Exception as exc:  # whatever the loader missed must not kill the reload thread
                log.exception("reload failed reading the rules, the previous rules keep running")
                return self._failed(f"{type(exc).__name__}: {exc}")
            try:
                self._apply(config)
            except Exception as exc:  # a bug, not a bad file: report it, keep serving
                log.exception("reload failed applying the new rules; rules applied before the failure run")
                return self._failed(f"applying the new rules failed: {type(exc).__name__}: {exc}")
            self._store.record_reload(True)
            log.info("rules reloaded")
            return None

    def _apply(self, config: Config) -> None:
        if config.receivers != self._receivers:  # pending batches of the old notifier fail and are re-sent
            old = self._alerting.set_outbox(self._notifier_factory(config.receivers))
            self._receivers = config.receivers
            if isinstance(old, Notifier):
                threading.Thread(target=old.close, name="notifier-close", daemon=True).start()
        self._scheduler.apply(config)

    def _failed(self, recorded: str, returned: str | None = None) -> str:
        self._store.record_reload(False, recorded)
        return returned or recorded
