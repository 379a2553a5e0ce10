"""Fitted models saved under --storage.path: safe format, round trip, stale or corrupt files, fast restart."""

import itertools
import logging
import os
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from exporter import statefile
from exporter.config import ModelConfig, RuleConfig
from exporter.demo import DemoSource
from exporter.frame import Window
from exporter.model import RuleModel
from exporter.modelstate import ModelStore, fingerprint
from exporter.pipeline import RuleRunner
from exporter.reader import UnavailableError
from exporter.store import Store

T0 = 1_760_000_000.0
DAY = 86400


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class Recording:
    def __init__(self, inner, store=None):
        self.inner = inner
        self.calls = []
        self.store = store
        self.published_before = []  # per call: was a snapshot already published

    def query_range(self, query, start, end, step, *, keep=None, series_hint=1):
        self.calls.append((start, end))
        self.published_before.append(self.store is not None and "web" in self.store.snapshots())
        return self.inner.query_range(query, start, end, step, keep=keep, series_hint=series_hint)


def rule(**kw):
    base = dict(name="web", query="demo_http_requests_per_second", interval=60, retrain=3600, step=60)
    base.update(kw)
    return RuleConfig(**base)


def demo_window(now=T0 + 300):
    source = DemoSource(started_at=T0, clock=lambda: now)
    end = int(now) // 60 * 60
    r = source.query_range("demo_http_requests_per_second", end - 7 * DAY + 60, end, 60)
    return Window(r.keys, r.timestamps, r.values)


@pytest.mark.parametrize("model_type", ["seasonal", "mad", "iforest"])
def test_round_trip_predicts_the_same(tmp_path, model_type):
    r = rule(model=ModelConfig(type=model_type))
    window = demo_window()
    fitted = RuleModel(r).fit(window)
    store = ModelStore(tmp_path)
    path = store.save(r, fitted)
    assert path.parent == tmp_path and path.suffix == ".npz"
    restored = store.load(r)
    assert restored is not None and restored.fitted_at == fitted.fitted_at
    cols = np.arange(len(window.timestamps) - 30, len(window.timestamps))
    a, b = fitted.detector.predict(window, cols), restored.detector.predict(window, cols)
    np.testing.assert_array_equal(a.expected, b.expected)
    np.testing.assert_array_equal(a.scale, b.scale)
    if model_type == "iforest":  # forests are not saved: the restored model judges by the band alone
        assert a.raw is not None and np.isfinite(a.raw).any()
        assert b.raw is not None and np.isnan(b.raw).all()
        s_a, s_b = fitted.score(window, cols), restored.score(window, cols)
        assert (s_b.score <= s_a.score + 1e-12).all()
    else:
        np.testing.assert_array_equal(fitted.score(window, cols).score, restored.score(window, cols).score)


def test_a_model_for_other_settings_or_another_version_is_not_used(tmp_path, caplog):
    r = rule()
    store = ModelStore(tmp_path)
    store.save(r, RuleModel(r).fit(demo_window()))
    caplog.set_level(logging.INFO)
    for changed in (
        replace(r, query="demo_http_requests_per_second{job='web'}"),
        replace(r, step=120),
        replace(r, history=14 * DAY),
        replace(r, model=ModelConfig(level_window=1800)),
    ):
        assert fingerprint(changed) != fingerprint(r)
        assert store.load(changed) is None
    assert "does not apply" in caplog.text
    # alert and calibration settings are applied at scoring time: a saved model still applies
    assert store.load(replace(r, z_threshold=5.0, labels={"team": "x"})) is not None
    # another format version
    with np.load(store.path(r)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = bytes(arrays["header"]).decode().replace('"version": 1', '"version": 999')
    arrays["header"] = np.frombuffer(header.encode(), dtype=np.uint8)
    with open(store.path(r), "wb") as fh:
        np.savez(fh, **arrays)
    caplog.clear()
    assert store.load(r) is None
    assert "format version 999" in caplog.text


class Boom:
    def __reduce__(self):
        return (open, (os.environ["BOOM_MARKER"], "w"))


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "empty", "pickled object array", "wrong shapes", "header not json", "directory"],
)
def test_corrupt_or_hostile_files_are_ignored_never_run(tmp_path, caplog, monkeypatch, damage):
    r = rule()
    store = ModelStore(tmp_path / "models")
    path = store.save(r, RuleModel(r).fit(demo_window()))
    good = path.read_bytes()
    marker = tmp_path / "pwned"
    monkeypatch.setenv("BOOM_MARKER", str(marker))
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "pickled object array":
        arrays["a_sigma_"] = np.array([Boom()] * len(arrays["a_sigma_"]), dtype=object)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    elif damage == "wrong shapes":
        arrays["a_profile_"] = arrays["a_profile_"][:, :3]
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    elif damage == "header not json":
        arrays["header"] = np.frombuffer(b"\xff{not json", dtype=np.uint8)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    caplog.set_level(logging.WARNING)
    assert store.load(r) is None
    assert not marker.exists()
    assert "ignoring saved model" in caplog.text


def test_a_crash_while_saving_leaves_the_previous_model(tmp_path, monkeypatch):
    r = rule()
    store = ModelStore(tmp_path)
    first = RuleModel(r).fit(demo_window())
    path = store.save(r, first)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(statefile.os, "replace", crash)
    with pytest.raises(OSError):
        store.save(r, RuleModel(r).fit(demo_window(T0 + 3600)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    with zipfile.ZipFile(path) as z:
        assert all(n.endswith(".npy") for n in z.namelist())


def test_restart_scores_at_once_from_recent_data_then_backfills_newest_first(tmp_path):
    models = ModelStore(tmp_path)
    clock = Clock(T0 + 300)
    first_store = Store()
    first = RuleRunner(
        rule(), DemoSource(started_at=T0, clock=clock), first_store, clock=clock, models=models
    )
    first.fit_job()
    saved = models.path(rule())
    assert saved.exists()
    # restart ten minutes later
    clock.now += 600
    reference_store = Store()
    reference = RuleRunner(rule(), DemoSource(started_at=T0, clock=clock), reference_store, clock=clock)
    reference.fit_job()  # no saved model: full load and fit
    store = Store()
    source = Recording(DemoSource(started_at=T0, clock=clock), store)
    runner = RuleRunner(rule(), source, store, clock=clock, models=models)
    runner.fit_job()
    assert source.published_before[:2] == [False, False] and all(source.published_before[2:])
    health = store.health()["web"]
    assert health.ready and health.up and "fit" not in health.durations  # no refit: the model is recent
    assert health.last_fit == pytest.approx(T0 + 240)  # when the restored model was fitted (data time)
    _probe, recent, *backfill = source.calls
    end = int(clock.now) // 60 * 60
    assert recent[1] == end and end - recent[0] == 7200  # scored from the last 2 hours first
    assert backfill[0][1] == recent[0] - 60 and backfill[-1][0] == end - 7 * DAY + 60
    for newer, older in itertools.pairwise(backfill):
        assert older[1] == newer[0] - 60  # newest first, contiguous
    # the frame now holds the whole history, as a full load does (to float32 storage precision: the
    # references differ, the first value of the last two hours instead of the week's first)
    got_values, ref_values = runner._frame.window().values, reference._frame.window().values
    np.testing.assert_array_equal(np.isnan(got_values), np.isnan(ref_values))
    np.testing.assert_allclose(got_values, ref_values, rtol=0, atol=1e-4)  # values up to ~300
    # scores come from the restored model (fitted 10 minutes earlier): close to a fresh fit's
    got, ref = store.snapshots()["web"], reference_store.snapshots()["web"]
    assert got.labels == ref.labels
    np.testing.assert_allclose(got.expected, ref.expected, rtol=0.05)


def test_restart_whose_recent_load_fails_still_gets_the_whole_history(tmp_path):
    """The restarted rule's first query of the last 2 hours fails: the next cycle loads them, and the next
    fit job backfills the older history (before, the older history was never loaded: a week-long hole)."""
    models = ModelStore(tmp_path)
    clock = Clock(T0 + 300)
    RuleRunner(rule(), DemoSource(started_at=T0, clock=clock), Store(), clock=clock, models=models).fit_job()
    clock.now += 600
    reference = RuleRunner(rule(), DemoSource(started_at=T0, clock=clock), Store(), clock=clock)
    reference.fit_job()

    class FailSecond(Recording):  # the probe answers, the recent load does not
        def query_range(self, query, start, end, step, **kw):
            if len(self.calls) == 1:
                self.calls.append((start, end))
                raise UnavailableError("connection reset")
            return super().query_range(query, start, end, step, **kw)

    store = Store()
    runner = RuleRunner(
        rule(), FailSecond(DemoSource(started_at=T0, clock=clock)), store, clock=clock, models=models
    )
    runner.fit_job()
    assert store.health()["web"].errors["query"] == 1
    runner.score_job()  # the scheduler's next cycle: the last 2 hours, then scores
    assert "web" in store.snapshots()
    runner.fit_job()  # the next fit job: the older history
    got, ref = runner._frame.window().values, reference._frame.window().values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    assert not np.isnan(got).all(axis=0).any(), "no column of the week is empty"


def test_restart_with_an_old_model_scores_first_then_refits(tmp_path):
    models = ModelStore(tmp_path)
    clock = Clock(T0 + 300)
    RuleRunner(rule(), DemoSource(started_at=T0, clock=clock), Store(), clock=clock, models=models).fit_job()
    before = models.path(rule()).read_bytes()
    clock.now += 2 * 3600  # older than retrain (1 h)
    store = Store()
    runner = RuleRunner(rule(), DemoSource(started_at=T0, clock=clock), store, clock=clock, models=models)
    runner.fit_job()
    health = store.health()["web"]
    assert "fit" in health.durations and health.last_fit == clock.now
    assert models.path(rule()).read_bytes() != before  # the new fit was saved
    assert models.load(rule()).fitted_at == int(clock.now) // 60 * 60


def test_removed_rule_loses_its_saved_model(tmp_path):
    from exporter.config import Config, PrometheusConfig
    from exporter.scheduler import Scheduler

    models = ModelStore(tmp_path)
    clock = Clock(T0 + 300)
    r = rule()
    models.save(r, RuleModel(r).fit(demo_window()))
    sched = Scheduler(Store(), lambda cfg: DemoSource(started_at=T0, clock=clock), clock=clock, models=models)
    sched.apply(Config(prometheus=PrometheusConfig(url="http://127.0.0.1:1"), rules=(r,)))
    assert models.path(r).exists()
    sched.apply(Config(prometheus=PrometheusConfig(url="http://127.0.0.1:1"), rules=()))
    assert not models.path(r).exists()
    sched.shutdown(wait=False)
