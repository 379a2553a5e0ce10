"""Rules run side by side: one failing or slow rule never stops the others; reloads diff the rule set."""

import threading
import time

import pytest

from exporter.config import Config, PrometheusConfig, RuleConfig
from exporter.demo import DemoSource
from exporter.scheduler import Scheduler
from exporter.store import Store

PROM = PrometheusConfig(url="http://demo.invalid")


class SlowFor:
    """Demo source that blocks queries for one metric until released."""

    def __init__(self, metric):
        self.inner = DemoSource()
        self.metric = metric
        self.release = threading.Event()

    def query_range(self, query, *args, **kwargs):
        if query == self.metric:
            self.release.wait(30)
        return self.inner.query_range(query, *args, **kwargs)


def rules(*specs):
    return Config(
        prometheus=PROM, rules=tuple(RuleConfig(name=n, query=q, interval=1, retrain=3600) for n, q in specs)
    )


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def scheduler():
    made = []

    def make(source, **kw):
        store = Store()
        s = Scheduler(store, lambda _cfg: source, **kw)
        made.append(s)
        return s, store

    yield make
    for s in made:
        s.shutdown(wait=False)


def test_failing_and_slow_rules_do_not_stop_the_others(scheduler):
    source = SlowFor("demo_queue_depth")
    sched, store = scheduler(source, workers=3)
    sched.apply(
        rules(
            ("web", "demo_http_requests_per_second"),
            ("broken", "no_such_metric"),
            ("slow", "demo_queue_depth"),
        )
    )
    sched.start()
    wait_for(lambda: store.health()["web"].up and store.health()["broken"].ready)
    health = store.health()
    assert "no_such_metric" in health["broken"].last_error and not health["broken"].up
    assert not health["slow"].ready  # still stuck in its first query...
    assert len(store.snapshots()["web"].labels) == 4  # ...while the others publish
    source.release.set()
    wait_for(lambda: store.health()["slow"].up)


def test_reload_keeps_unchanged_rules_and_drops_removed_ones(scheduler):
    sched, store = scheduler(DemoSource())
    sched.apply(rules(("web", "demo_http_requests_per_second"), ("cpu", "demo_cpu_usage_ratio")))
    sched.start()
    wait_for(lambda: all(h.up for h in store.health().values()))
    web_runner = sched.runners["web"]
    sched.apply(rules(("web", "demo_http_requests_per_second"), ("queues", "demo_queue_depth")))
    assert sched.runners["web"] is web_runner  # unchanged: keeps its history and model
    assert "cpu" not in store.health() and "cpu" not in store.snapshots()
    wait_for(lambda: store.health().get("queues") is not None and store.health()["queues"].up)
    changed = Config(
        prometheus=PROM,
        rules=(RuleConfig(name="web", query="demo_http_requests_per_second", z_threshold=6.0, interval=1),),
    )
    sched.apply(changed)
    assert sched.runners["web"] is not web_runner and set(sched.runners) == {"web"}
