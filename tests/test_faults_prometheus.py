"""Prometheus misbehaving under a running rule: real Prometheus (backfilled), faults from tests/faultproxy.py.

The rule runs as in production (RuleRunner, PrometheusReader, Store, AnomalyCollector) on a fake clock, so
a 6-minute outage takes a few calls. Expected for every fault: no exception escapes, the rule is marked
down (`anomaly_exporter_rule_up` 0) and the failure counted (`anomaly_exporter_errors_total{stage="query"}`);
`anomaly_exporter_last_success_timestamp_seconds` stays at the last good cycle, the last scores stay on
/metrics until a failing cycle finds them older than the horizon (RuleRunner._maybe_withdraw: more than
max(3 × interval, 300 s) after the last success) and are then withdrawn, never served as current; and the
first cycle after Prometheus is healthy again publishes fresh scores and marks the rule up, on its own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client import CollectorRegistry

from exporter.collector import AnomalyCollector
from exporter.config import ModelConfig, PrometheusConfig, RuleConfig
from exporter.modelstate import ModelStore
from exporter.pipeline import RuleRunner
from exporter.reader import PrometheusReader
from exporter.store import Store
from tests import faultproxy
from tests.faultproxy import FaultProxy
from tests.realservers import (
    PrometheusServer,
    assert_threads_ended,
    backfill,
    wait_until,
    write_openmetrics,
)

pytestmark = pytest.mark.integration

STEP = 60
RULE = "faulty"
METRIC = "ft_requests_per_second"
INSTANCES = ("i0", "i1", "i2", "i3")
HORIZON = 300.0  # RuleRunner._maybe_withdraw: scores withdrawn once max(3 × 60 s, 300 s) old
TIMEOUT, RETRIES = 0.3, 1  # the reader's per-request timeout and retries: 2 attempts per query


@dataclass
class History:
    openmetrics: Path
    end: int  # the last sample's timestamp (a minute boundary)

    @property
    def start_clock(self) -> float:
        """The fake clock's start: half an hour before the end of the data, so cycles have new points."""
        return float(self.end - 30 * 60 + 5)


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> History:
    """Six hours of four noisy, flat series at 1-minute resolution, ending a minute ago."""
    end = int(time.time()) // STEP * STEP - STEP
    t = np.arange(end - 6 * 3600, end + 1, STEP, dtype=np.float64)
    rng = np.random.default_rng(7)
    series = [
        (METRIC, {"job": "api", "instance": name}, t, 100 + 20 * i + rng.normal(0, 2, len(t)))
        for i, name in enumerate(INSTANCES)
    ]
    path = write_openmetrics(tmp_path_factory.mktemp("history") / "history.om", series)
    return History(path, end)


@pytest.fixture(scope="module")
def prometheus(history, tmp_path_factory) -> Iterator[PrometheusServer]:
    tsdb = tmp_path_factory.mktemp("tsdb")
    backfill(history.openmetrics, tsdb)
    with PrometheusServer(tsdb) as server:
        yield server


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    before = threading.enumerate()
    yield
    assert_threads_ended(before)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rule(**changes) -> RuleConfig:
    settings = dict(
        name=RULE,
        query=METRIC,
        interval=60,
        retrain=86400,  # no scheduled refit during a test: only fit_job() fits
        history=4 * 3600,
        step=STEP,
        max_series=10,
        model=ModelConfig(seasonality="none", level_window=1800, min_history=1800),
    )
    return RuleConfig(**{**settings, **changes})


@dataclass
class Harness:
    """One rule against `url`, as the scheduler would run it, with a fake clock and recorded retry sleeps."""

    url: str
    start: float
    rule: RuleConfig = field(default_factory=rule)
    session: requests.Session | None = None
    timeout: float = TIMEOUT
    models: ModelStore | None = None

    def __post_init__(self) -> None:
        self.clock = Clock(self.start)
        self.sleeps: list[float] = []
        config = PrometheusConfig(url=self.url, timeout=self.timeout, max_retries=RETRIES)
        self.reader = PrometheusReader(config, sleep=self.sleeps.append, session=self.session)
        self.store = Store(clock=self.clock)
        self.runner = RuleRunner(self.rule, self.reader, self.store, clock=self.clock, models=self.models)
        self.registry = CollectorRegistry()
        self.registry.register(AnomalyCollector(self.store))

    def at(self, now: float) -> None:
        """A scoring cycle at fake time `now`, as the scheduler runs it."""
        self.clock.now = now
        self.runner.score_job()

    def get(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"rule": RULE, **labels})

    def exported(self) -> dict[str, float]:
        """anomaly_score per exported series (keyed by instance, plus the copy label if any)."""
        out = {}
        for family in self.registry.collect():
            if family.name == "anomaly_score":
                for s in family.samples:
                    if s.labels["rule"] == RULE:
                        out[s.labels["instance"] + s.labels.get("fault_copy", "")] = s.value
        return out

    def scored_at(self) -> float | None:
        snap = self.store.snapshots().get(RULE)
        return None if snap is None else snap.timestamp

    def close(self) -> None:
        self.reader.close()


def grid(t: float) -> float:
    return float(int(t) // STEP * STEP)


# fault -> the Retry-After the reader must honour (None: its own jittered backoff, at most 0.5 s here)
QUERY_FAULTS = {
    "slow": (faultproxy.delay(1.0), None),  # no answer within the 0.3 s timeout
    "trickle": (faultproxy.trickle(0.1, piece=8), None),  # headers at once, then 80 bytes/s
    "http_500": (faultproxy.error(500), None),
    "http_502": (faultproxy.error(502, body=b"<html>Bad Gateway</html>"), None),
    "http_503": (faultproxy.error(503, retry_after=7), 7.0),
    "http_429": (faultproxy.error(429, retry_after=2), 2.0),
    "malformed_json": (faultproxy.malformed_json(), None),
    "truncated_body": (faultproxy.truncated(0.5), None),
    "connection_reset": (faultproxy.reset(), None),
    "closed_without_response": (faultproxy.close(), None),
}


@pytest.mark.parametrize("name", list(QUERY_FAULTS))
def test_failing_queries_mark_the_rule_down_withdraw_stale_scores_and_recover(prometheus, history, name):
    fault, retry_after = QUERY_FAULTS[name]
    with FaultProxy(prometheus.url) as proxy:
        h = Harness(proxy.url, history.start_clock)
        h.runner.fit_job()
        fitted = h.clock.now
        assert h.get("anomaly_exporter_rule_up") == 1 and set(h.exported()) == set(INSTANCES)
        assert h.get("anomaly_exporter_errors_total", stage="query") == 0
        proxy.fault = fault
        # failing cycles: 1 minute in, exactly at the horizon (still served), one minute past it (withdrawn)
        for failures, offset in enumerate((60, HORIZON, HORIZON + 60), start=1):
            requests_before, began = proxy.count(), time.monotonic()
            h.at(fitted + offset)
            took = time.monotonic() - began
            assert proxy.count() - requests_before == 1 + RETRIES  # every attempt hit the fault
            assert took < (1 + RETRIES) * 2 * TIMEOUT + 0.5, f"a failing cycle took {took:.1f}s"
            assert h.get("anomaly_exporter_rule_up") == 0
            assert h.get("anomaly_exporter_rule_ready") == 1
            assert h.get("anomaly_exporter_errors_total", stage="query") == failures
            assert h.get("anomaly_exporter_last_success_timestamp_seconds") == fitted  # not advanced
            assert h.store.health()[RULE].last_error.startswith("query: ")
            if offset <= HORIZON:  # the last good scores, still the last good scores (not re-dated)
                assert set(h.exported()) == set(INSTANCES) and h.scored_at() == grid(fitted)
            else:
                assert h.exported() == {} and h.scored_at() is None
        if retry_after is not None:
            assert h.sleeps == [retry_after] * 3  # the server's Retry-After, before each retry
        else:
            assert len(h.sleeps) == 3 and all(0 <= s <= 0.5 for s in h.sleeps)

        proxy.fault = faultproxy.PASS  # Prometheus is healthy again: the next cycle recovers by itself
        recovered = fitted + HORIZON + 120
        h.at(recovered)
        health = h.store.health()[RULE]
        assert h.get("anomaly_exporter_rule_up") == 1 and health.last_error is None
        assert h.get("anomaly_exporter_last_success_timestamp_seconds") == recovered
        assert h.get("anomaly_exporter_errors_total", stage="query") == 3
        assert set(h.exported()) == set(INSTANCES) and h.scored_at() == grid(recovered)
        assert health.last_fit == fitted  # recovered without a refit
        h.close()


def test_partial_response_leaves_the_missing_series_out_then_scores_them_again(prometheus, history, caplog):
    """A partial answer is a valid answer: the rule stays up, the missing series is unknown (left out of
    /metrics, not served with its old score), the others are fresh; the series is back when it is."""
    with FaultProxy(prometheus.url) as proxy:
        h = Harness(proxy.url, history.start_clock)
        h.runner.fit_job()
        fitted = h.clock.now
        before = h.exported()
        proxy.fault = faultproxy.partial(lambda m: m.get("instance") != "i1", warning="store s1 unreachable")
        with caplog.at_level(logging.WARNING):
            h.at(fitted + 60)
        assert h.get("anomaly_exporter_rule_up") == 1
        assert h.get("anomaly_exporter_errors_total", stage="query") == 0
        assert set(h.exported()) == {"i0", "i2", "i3"} and h.scored_at() == grid(fitted + 60)
        assert h.get("anomaly_exporter_series") == 4  # its history is kept, for when it comes back
        assert "store s1 unreachable" in caplog.text  # Prometheus' warning reaches the log
        proxy.fault = faultproxy.PASS
        h.at(fitted + 120)
        after = h.exported()
        assert set(after) == set(INSTANCES) and h.scored_at() == grid(fitted + 120)
        assert after["i1"] != before["i1"]  # a fresh score, not the old one
        assert h.store.health()[RULE].last_fit == fitted  # without a refit
        h.close()


def test_ten_times_the_series_are_capped_at_max_series_and_counted_as_dropped(prometheus, history):
    """4 series, max_series 10, then every answer carries 40: 6 newcomers fill the free rows, 30 are
    dropped (and counted), memory stays at 10 rows whatever the number of cycles, the 4 known series
    keep their fresh scores (the newcomers are in warm-up: not exported), and it all settles when the
    surge ends."""
    with FaultProxy(prometheus.url) as proxy:
        h = Harness(proxy.url, history.start_clock)
        h.runner.fit_job()
        fitted = h.clock.now
        frame = h.runner._frame
        assert h.get("anomaly_exporter_series") == 4 and h.get("anomaly_exporter_series_dropped") == 0
        proxy.fault = faultproxy.multiply(10)
        sizes = []
        for minute in range(1, 6):
            h.at(fitted + 60 * minute)
            assert h.get("anomaly_exporter_rule_up") == 1
            assert h.get("anomaly_exporter_series") == 10 == len(frame)  # the cap
            assert h.get("anomaly_exporter_series_dropped") == 30
            assert set(h.exported()) == set(INSTANCES) and h.scored_at() == grid(fitted + 60 * minute)
            sizes.append(frame.nbytes)
        assert len(set(sizes)) == 1  # no growth from cycle to cycle
        assert len(h.runner._labels) <= 4 * 10  # the label cache is bounded too
        proxy.fault = faultproxy.PASS
        h.at(fitted + 360)
        assert h.get("anomaly_exporter_series_dropped") == 0 and h.get("anomaly_exporter_series") <= 10
        assert set(h.exported()) == set(INSTANCES) and h.get("anomaly_exporter_rule_up") == 1
        h.close()

        # a restart during the surge: the history load keeps max_series series by stable hash
        proxy.fault = faultproxy.multiply(10)
        h2 = Harness(proxy.url, fitted + 60)
        h2.runner.fit_job()
        assert h2.get("anomaly_exporter_series") == 10 and h2.get("anomaly_exporter_series_dropped") == 30
        assert len(h2.exported()) == 10 and h2.get("anomaly_exporter_rule_up") == 1
        h2.close()


def test_failure_while_a_restarted_rule_backfills_is_counted_and_retried(
    prometheus, history, tmp_path, caplog
):
    """A restart with a saved model loads the last 90 minutes, scores, then loads the rest of the history:
    the query most likely to overload Prometheus. If it fails, the scores from the restored model stay,
    the failure is counted under stage="backfill", and the next fit job loads what is missing."""
    models = ModelStore(tmp_path / "models")
    with FaultProxy(prometheus.url) as proxy:
        first = Harness(proxy.url, history.start_clock, models=models)
        first.runner.fit_job()  # saves the model
        fitted = first.clock.now
        first.close()
        restarted = Harness(proxy.url, fitted + 120, models=models)
        proxy.then(faultproxy.PASS, faultproxy.PASS)  # the probe and the recent 90 minutes go through
        proxy.fault = faultproxy.error(503)  # ... the backfill does not
        restarted.runner.fit_job()
        health = restarted.store.health()[RULE]
        assert health.errors == {"backfill": 1} and health.last_error.startswith("backfill: ")
        assert restarted.get("anomaly_exporter_errors_total", stage="backfill") == 1
        assert restarted.get("anomaly_exporter_rule_ready") == 1
        assert (
            restarted.get("anomaly_exporter_rule_up") == 1
        )  # its scores are current: only old history is missing
        assert set(restarted.exported()) == set(INSTANCES) and restarted.scored_at() == grid(fitted + 120)
        (logged,) = [r for r in caplog.records if "backfill failed" in r.getMessage()]
        assert not logged.exc_info  # Prometheus failing is not a bug of ours: no traceback
        proxy.fault = faultproxy.PASS
        restarted.at(fitted + 180)
        assert restarted.get("anomaly_exporter_rule_up") == 1
        loaded = restarted.runner._frame.window().counts()  # points per series: the last 90 min or so
        assert loaded.max() < 2 * 3600 / STEP
        restored_fit = restarted.store.health()[RULE].last_fit
        restarted.clock.now = fitted + 240
        restarted.runner.fit_job()  # the next fit job loads the rest
        assert restarted.store.health()[RULE].errors == {"backfill": 1}
        assert (restarted.runner._frame.window().counts() >= 4 * 3600 / STEP - 1).all()  # all 4 hours
        assert restarted.store.health()[RULE].last_fit == restored_fit  # a recent restored model: no refit
        restarted.close()


class SignallingSession(requests.Session):
    """Sets `sent` when a request is about to go out: the test then knows the query is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = threading.Event()

    def request(self, *args, **kwargs):  # type: ignore[override]
        self.sent.set()
        return super().request(*args, **kwargs)


def test_prometheus_killed_mid_query_and_restarted_on_the_same_port_and_data(history, tmp_path, caplog):
    """SIGSTOP freezes Prometheus so a scoring query is provably in flight, SIGKILL kills it: the reader's
    connection is reset, its retry refused, the rule marked down; a cycle during the outage is refused too;
    Prometheus restarted on the same port and TSDB directory, the next cycle recovers by itself."""
    tsdb = tmp_path / "tsdb"
    backfill(history.openmetrics, tsdb)
    first = PrometheusServer(tsdb).start()
    try:
        session = SignallingSession()
        h = Harness(first.url, history.start_clock, session=session, timeout=10)
        h.runner.fit_job()
        fitted = h.clock.now
        assert h.get("anomaly_exporter_rule_up") == 1

        first.send_signal(signal.SIGSTOP)
        session.sent.clear()
        errors: list[BaseException] = []

        def cycle() -> None:
            try:
                h.at(fitted + 60)
            except BaseException as exc:  # must not happen: the runner catches everything
                errors.append(exc)

        worker = threading.Thread(target=cycle)
        worker.start()
        assert session.sent.wait(5)
        time.sleep(0.3)  # the request is on the wire; Prometheus cannot answer it
        assert worker.is_alive()
        first.send_signal(signal.SIGKILL)
        worker.join(10)
        assert not worker.is_alive() and not errors
        health = h.store.health()[RULE]
        assert h.get("anomaly_exporter_rule_up") == 0 and health.errors["query"] == 1
        assert "unavailable after 2 attempt(s)" in health.last_error
        first_attempt = next(r.getMessage() for r in caplog.records if "retry 1/1" in r.getMessage())
        assert "Connection reset by peer" in first_attempt  # the query in flight died with Prometheus
        assert set(h.exported()) == set(INSTANCES)  # within the horizon: the last scores stay

        h.at(fitted + 120)  # Prometheus is down: connection refused
        assert h.store.health()[RULE].errors["query"] == 2
        assert "refused" in h.store.health()[RULE].last_error.lower()
    finally:
        first.stop()  # already dead: removes its work directory

    with PrometheusServer(tsdb, port=first.port) as second:  # same port, same TSDB directory
        assert second.url == first.url
        h.at(fitted + 180)
        assert h.get("anomaly_exporter_rule_up") == 1
        assert h.get("anomaly_exporter_last_success_timestamp_seconds") == fitted + 180
        assert set(h.exported()) == set(INSTANCES) and h.scored_at() == grid(fitted + 180)
        h.close()
    assert not os.path.exists(first.workdir) and wait_until(lambda: not second.running, timeout=1)
