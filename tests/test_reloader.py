"""Reloader: whatever goes wrong in a reload is reported and recorded, never raised into the reload thread."""

import logging

import pytest

from exporter.alert_registry import Alerting
from exporter.config import Config, ConfigError, parse_config
from exporter.reloader import Reloader
from exporter.store import Store

RULES = "prometheus: {url: 'http://127.0.0.1:9'}\nrules:\n  - {name: a, query: up}\n"
WITH_RECEIVER = RULES + "receivers:\n  team: {type: webhook, url: 'http://127.0.0.1:9/hook'}\n"


class Scheduler:
    def __init__(self, fail: Exception | None = None) -> None:
        self.applied: list[Config] = []
        self.fail = fail

    def apply(self, config: Config) -> None:
        if self.fail is not None:
            raise self.fail
        self.applied.append(config)


class Outbox:
    def __init__(self, receivers) -> None:
        self.receivers = receivers
        self.closed = False

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def make(load, scheduler, receivers=None):
    store = Store()
    alerting = Alerting(None)
    reloader = Reloader(load, scheduler, alerting, store, receivers or {}, notifier_factory=Outbox)
    return reloader, store, alerting


def test_a_good_file_is_applied_and_recorded():
    config = parse_config(RULES)
    scheduler = Scheduler()
    reloader, store, _ = make(lambda: config, scheduler)
    assert reloader() is None
    assert scheduler.applied == [config]
    status = store.reload_status()
    assert status.successful and status.attempts == {"success": 1}


def test_a_rejected_file_changes_nothing_and_is_recorded():
    def load():
        raise ConfigError(["rules[0].query: must not be empty"], source="rules.yaml")

    scheduler = Scheduler()
    reloader, store, _ = make(load, scheduler)
    error = reloader()
    assert error is not None and "rules[0].query: must not be empty" in error
    assert scheduler.applied == []
    status = store.reload_status()
    assert not status.successful and status.last_error == "rules[0].query: must not be empty"


@pytest.mark.parametrize(
    "exc", [KeyError("prometheus"), RecursionError("maximum recursion depth"), MemoryError()]
)
def test_a_loader_crash_is_reported_not_raised(exc, caplog):
    def load():
        raise exc

    scheduler = Scheduler()
    reloader, store, _ = make(load, scheduler)
    with caplog.at_level(logging.ERROR, logger="exporter.reloader"):
        error = reloader()
    assert error is not None and type(exc).__name__ in error
    assert scheduler.applied == []
    assert not store.reload_status().successful
    assert store.reload_status().attempts == {"failure": 1}
    assert any(r.exc_info for r in caplog.records), "the traceback is logged for the bug report"


def test_a_failure_while_applying_is_recorded_and_the_next_reload_works():
    config = parse_config(RULES)
    scheduler = Scheduler(fail=RuntimeError("scheduler is shut down"))
    reloader, store, _ = make(lambda: config, scheduler)
    error = reloader()
    assert error is not None and "RuntimeError: scheduler is shut down" in error
    assert store.reload_status().last_error == error
    scheduler.fail = None
    assert reloader() is None
    assert scheduler.applied == [config]
    assert store.reload_status().attempts == {"failure": 1, "success": 1}


def test_changed_receivers_get_a_new_notifier_and_unchanged_ones_keep_theirs():
    config = parse_config(WITH_RECEIVER)
    scheduler = Scheduler()
    reloader, _, alerting = make(lambda: config, scheduler)
    assert reloader() is None
    new = alerting.set_outbox(None)
    assert isinstance(new, Outbox) and new.receivers == config.receivers
    assert reloader() is None  # the same receivers again: the notifier (and its queues) stays
    assert alerting.set_outbox(None) is None
