"""A rule's loop on the built-in demo source (no network): fetch, fit, score, publish, fail, recover."""

import itertools

import numpy as np
import pytest

from exporter import pipeline
from exporter.config import RuleConfig
from exporter.demo import DemoSource
from exporter.pipeline import RuleRunner, output_labels, stable_hash
from exporter.reader import RangeResult, UnavailableError
from exporter.store import Store

T0 = 1_760_000_000.0


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class Recording:
    """Wraps a source: records every query's (start, end) and can be told to fail."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []
        self.fail = None

    def query_range(self, query, start, end, step, *, keep=None, series_hint=1):
        self.calls.append((start, end))
        if self.fail is not None:
            raise self.fail
        return self.inner.query_range(query, start, end, step, keep=keep, series_hint=series_hint)


def rule(**kw):
    base = dict(name="web", query="demo_http_requests_per_second", interval=60, retrain=3600, step=60)
    base.update(kw)
    return RuleConfig(**base)


def published(store, name):
    snap = store.snapshots()[name]
    return {
        dict(labels)["instance"]: (s, e)
        for labels, s, e in zip(snap.labels, snap.score, snap.expected, strict=True)
    }


def test_fit_publishes_scores_and_flags_the_live_anomaly():
    clock = Clock(T0 + 300)  # inside the first live anomaly (a spike on series 0, web-0)
    source = DemoSource(started_at=T0, clock=clock)
    store = Store()
    RuleRunner(rule(), source, store, clock=clock).fit_job()
    health = store.health()["web"]
    assert health.ready and health.up and health.series == 4 and health.last_error is None
    scores = published(store, "web")
    assert set(scores) == {"web-0:8080", "web-1:8080", "web-2:8080", "web-3:8080"}
    assert scores["web-0:8080"][0] >= 1
    assert all(scores[f"web-{i}:8080"][0] < 1 for i in (1, 2, 3))


def test_scoring_cycles_query_only_new_points():
    clock = Clock(T0 + 60)
    source = Recording(DemoSource(started_at=T0, clock=clock))
    store = Store()
    runner = RuleRunner(rule(), source, store, clock=clock)
    runner.fit_job()
    history_start, history_end = source.calls[-1]
    assert history_end - history_start >= 7 * 86400 - 120
    clock.now += 120
    runner.score_job()
    start, end = source.calls[-1]
    assert end - start <= 600  # last point + overlap, not the week again
    assert store.snapshots()["web"].timestamp == (clock.now // 60) * 60


def test_history_is_loaded_in_time_slices_merged_as_they_arrive(monkeypatch):
    """A long history is fetched slice by slice (bounded memory) and ends up exactly as one big query."""

    def run():
        clock = Clock(T0 + 300)
        source = Recording(DemoSource(started_at=T0, clock=clock))
        store = Store()
        RuleRunner(rule(), source, store, clock=clock).fit_job()
        return source.calls, store.snapshots()["web"]

    whole_calls, whole = run()
    monkeypatch.setattr(pipeline, "SLICE_POINTS", 4 * 1000)  # 4 series: 1,000 columns per slice
    calls, sliced = run()
    assert len(whole_calls) == 2 and len(calls) == 1 + 11  # probe, then 10,080 columns in 11 slices
    history = calls[1:]
    assert history[0][0] == whole_calls[1][0] and history[-1][1] == whole_calls[1][1]
    for (_, end), (start, _) in itertools.pairwise(history):
        assert start == end + 60  # contiguous, no overlap, no gap
    assert all((end - start) // 60 + 1 <= 1000 for start, end in history)
    assert sliced.labels == whole.labels
    np.testing.assert_array_equal(sliced.score, whole.score)
    np.testing.assert_array_equal(sliced.expected, whole.expected)


def test_prometheus_down_marks_rule_down_then_recovers():
    clock = Clock(T0 + 60)
    source = Recording(DemoSource(started_at=T0, clock=clock))
    store = Store()
    runner = RuleRunner(rule(), source, store, clock=clock)
    runner.fit_job()
    source.fail = UnavailableError("connection refused")
    clock.now += 60
    runner.score_job()
    h = store.health()["web"]
    assert not h.up and h.errors["query"] == 1 and "connection refused" in h.last_error
    assert "web" in store.snapshots()  # briefly keeps the last scores...
    clock.now += 600
    runner.score_job()
    assert "web" not in store.snapshots()  # ...but never serves them as current for long
    source.fail = None
    clock.now += 60
    runner.score_job()
    h = store.health()["web"]
    assert h.up and h.errors["query"] == 2 and h.last_error is None
    assert len(store.snapshots()["web"].labels) == 4


def test_failed_first_fit_reports_ready_with_the_error_and_retries_each_cycle():
    source = Recording(DemoSource(started_at=T0, clock=Clock(T0)))
    source.fail = UnavailableError("503 Service Unavailable")
    store = Store()
    runner = RuleRunner(rule(), source, store, clock=Clock(T0))
    runner.fit_job()
    h = store.health()["web"]
    assert h.ready and not h.up and "503" in h.last_error
    source.fail = None  # Prometheus is back: the next scoring cycle fits, it doesn't wait for `retrain`
    runner.score_job()
    h = store.health()["web"]
    assert h.up and h.last_fit is not None and len(store.snapshots()["web"].labels) == 4


class ManySeries:
    """A source with `n` flat-ish series, to test the max_series cap."""

    def __init__(self, n):
        self.n = n
        self.max_rows = 0

    def query_range(self, query, start, end, step, *, keep=None, series_hint=1):
        ts = np.arange(int(start) // 60 * 60, int(end) // 60 * 60 + 1, 60, dtype=np.int64)
        keys = [(("__name__", "m"), ("pod", f"p{i}")) for i in range(self.n)]
        kept = [k for k in keys if keep is None or keep(k)]
        self.max_rows = max(self.max_rows, len(kept) if keep else 0)
        values = np.ones((len(kept), len(ts))) + np.arange(len(ts)) % 3
        return RangeResult(
            keys=kept, timestamps=ts, values=values, dropped=len(keys) - len(kept), warnings=()
        )


def test_max_series_caps_history_and_the_choice_is_stable():
    clock = Clock(T0)
    stores = []
    for _ in range(2):
        store = Store()
        source = ManySeries(50_000)
        RuleRunner(rule(query="m", max_series=50, history=86400), source, store, clock=clock).fit_job()
        assert source.max_rows == 50  # history was only ever fetched for the kept series
        h = store.health()["web"]
        assert h.series == 50 and h.dropped == 49_950
        stores.append({dict(lbl)["pod"] for lbl in store.snapshots()["web"].labels})
    assert stores[0] == stores[1] and len(stores[0]) == 50


def test_output_labels_rename_clashes_and_keep_metric_name():
    key = (("__name__", "up"), ("exported_rule", "y"), ("rule", "x"), ("team", "a"), ("zone", ""))
    labels = dict(output_labels(key, "r1", {"team": "sre"}))
    assert labels == {
        "rule": "r1",
        "team": "sre",
        "metric_name": "up",
        "exported_rule": "y",
        "exported_exported_rule": "x",
        "exported_team": "a",
    }


def test_stable_hash_is_stable():
    key = (("__name__", "up"), ("job", "a"))
    # a fixed value: the shard/cap choice must not change between processes, restarts or versions
    assert stable_hash(key) == 3733402983390382274
    assert stable_hash((("__name__", "up"), ("job", "b"))) != stable_hash(key)


@pytest.mark.parametrize("bad", ["nonexistent_metric", "rate(x[5m]"])
def test_bad_query_is_reported_on_the_rule(bad):
    store = Store()
    RuleRunner(
        rule(name="bad", query=bad), DemoSource(started_at=T0, clock=Clock(T0)), store, clock=Clock(T0)
    ).fit_job()
    h = store.health()["bad"]
    assert h.ready and not h.up and h.errors["query"] == 1


class Churn:
    """Series 'a' always; series 'b' only from `b_from` on; series 'c' only until `c_until`."""

    def __init__(self, b_from, c_until):
        self.b_from, self.c_until = b_from, c_until

    def query_range(self, query, start, end, step, *, keep=None, series_hint=1):
        ts = np.arange(int(start) // 60 * 60, int(end) // 60 * 60 + 1, 60, dtype=np.int64)
        rng = np.random.default_rng(int(start))
        keys, rows = [], []
        for name, mask in (("a", ts >= 0), ("b", ts >= self.b_from), ("c", ts <= self.c_until)):
            if not mask.any():
                continue
            key = (("__name__", "m"), ("s", name))
            if keep is not None and not keep(key):
                continue
            keys.append(key)
            rows.append(np.where(mask, 10 + rng.normal(0, 1, len(ts)), np.nan))
        values = np.vstack(rows) if rows else np.empty((0, len(ts)))
        return RangeResult(keys=keys, timestamps=ts, values=values, dropped=0, warnings=())


def test_series_that_appear_get_scored_once_warm_and_vanished_ones_disappear():
    clock = Clock(T0)
    store = Store()
    source = Churn(b_from=T0 + 600, c_until=T0 + 300)
    runner = RuleRunner(rule(query="m", history=86400, retrain=86400), source, store, clock=clock)
    runner.fit_job()
    exported = lambda: {dict(lbl)["s"] for lbl in store.snapshots()["web"].labels}  # noqa: E731
    assert exported() == {"a", "c"}
    clock.now = T0 + 1200
    runner.score_job()
    assert exported() == {"a"}  # c vanished; b is new and in warm-up: unknown, so not exported
    clock.now = T0 + 600 + 3600 + 60  # b now has an hour of data: an early refit picks it up
    runner.score_job()
    assert exported() == {"a", "b"}
    assert store.health()["web"].last_fit == clock.now


class Replaced:
    """4 pods until `switch`, then 4 new pods (a deploy) — at max_series=4."""

    def __init__(self, switch):
        self.switch = switch

    def query_range(self, query, start, end, step, *, keep=None, series_hint=1):
        ts = np.arange(int(start) // 60 * 60, int(end) // 60 * 60 + 1, 60, dtype=np.int64)
        keys, rows = [], []
        for gen, mask in (("old", ts < self.switch), ("new", ts >= self.switch)):
            for i in range(4):
                key = (("__name__", "m"), ("pod", f"{gen}-{i}"))
                if mask.any() and (keep is None or keep(key)):
                    keys.append(key)
                    rows.append(np.where(mask, 5.0 + (np.arange(len(ts)) % 3), np.nan))
        values = np.vstack(rows) if rows else np.empty((0, len(ts)))
        return RangeResult(keys=keys, timestamps=ts, values=values, dropped=0, warnings=())


def test_after_a_deploy_at_the_series_cap_the_new_series_take_the_old_ones_places():
    clock = Clock(T0)
    store = Store()
    runner = RuleRunner(rule(query="m", max_series=4, history=86400), Replaced(T0 + 600), store, clock=clock)
    runner.fit_job()
    for minutes in range(2, 120, 2):
        clock.now = T0 + 600 + 60 * minutes
        runner.score_job()
    h = store.health()["web"]
    assert h.series == 4 and h.dropped == 0
    assert {dict(lbl)["pod"] for lbl in store.snapshots()["web"].labels} == {f"new-{i}" for i in range(4)}


class Late:
    """No series at all until `appear` (a metric not exported yet when the rule starts), then one."""

    def __init__(self, appear):
        self.appear = appear

    def query_range(self, query, start, end, step, *, keep=None, series_hint=1):
        ts = np.arange(int(start) // 60 * 60, int(end) // 60 * 60 + 1, 60, dtype=np.int64)
        key = (("__name__", "m"), ("s", "late"))
        if ts[-1] < self.appear or (keep is not None and not keep(key)):
            return RangeResult(keys=[], timestamps=ts, values=np.empty((0, len(ts))), dropped=0, warnings=())
        values = np.where(ts >= self.appear, 10 + np.sin(ts / 600.0), np.nan)[None, :]
        return RangeResult(keys=[key], timestamps=ts, values=values, dropped=0, warnings=())


def test_a_rule_whose_first_fit_saw_no_series_scores_them_once_they_appear():
    # The seasonal model fitted on no series raised IndexError on every cycle once a series appeared,
    # so the rule stayed down (and the early refit never ran) until its next `retrain`.
    clock = Clock(T0)
    store = Store()
    runner = RuleRunner(rule(query="m", history=86400, retrain=86400), Late(T0 + 600), store, clock=clock)
    runner.fit_job()
    assert store.health()["web"].errors == {}
    for minutes in range(11, 75):
        clock.now = T0 + 60 * minutes
        runner.score_job()
        assert store.health()["web"].up, store.health()["web"].last_error
    assert store.health()["web"].errors == {}
    assert [dict(lbl)["s"] for lbl in store.snapshots()["web"].labels] == ["late"]  # warm: refitted early


class FailOnCall(Recording):
    """Fails the `n`th query (1-based) once, as a Prometheus that drops out in the middle of a long load."""

    def __init__(self, inner, n):
        super().__init__(inner)
        self.n = n

    def query_range(self, query, start, end, step, *, keep=None, series_hint=1):
        if len(self.calls) + 1 == self.n:
            self.calls.append((start, end))
            raise UnavailableError("connection reset")
        return super().query_range(query, start, end, step, keep=keep, series_hint=series_hint)


def points_per_series(runner):
    window = runner._frame.window()
    return dict(zip(window.keys, window.counts(np.arange(len(window.keys))), strict=True))


@pytest.mark.parametrize("max_series", [1000, 4], ids=["room", "full frame"])
@pytest.mark.parametrize("fail_call", [2, 6, 12], ids=["first slice", "middle slice", "last slice"])
def test_a_history_load_that_fails_part_way_leaves_no_hole(monkeypatch, fail_call, max_series):
    """The slices merged before the failure stay; the next cycle loads the rest, in slices of the same size:
    the same history as a load that never failed (without this, the slices not loaded stayed empty until they
    aged out). With the frame full (max_series reached), the empty newest columns of the part-loaded frame
    must not get every series dropped as "absent"."""
    monkeypatch.setattr(pipeline, "SLICE_POINTS", 4 * 1000)  # 11 slices of history after the probe

    def run(source):
        clock = Clock(T0 + 300)
        source = source(DemoSource(started_at=T0, clock=clock))
        store = Store()
        runner = RuleRunner(rule(max_series=max_series), source, store, clock=clock)
        runner.fit_job()
        clock.now += 60
        runner.score_job()
        return runner, store, source

    clean, _, _ = run(Recording)
    faulty, store, source = run(lambda inner: FailOnCall(inner, fail_call))
    assert store.health()["web"].errors["query"] == 1
    assert all((end - start) // 60 + 1 <= 1000 for start, end in source.calls), "sliced as the first load"
    assert points_per_series(faulty) == points_per_series(clean)
    assert (
        sum(points_per_series(faulty).values()) == 4 * 7 * 1440
    )  # every column of the week, for every series
    assert store.health()["web"].up and store.snapshots()["web"].labels
