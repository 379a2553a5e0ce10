"""Horizontal sharding: N replicas over the same rules and source partition the series exactly."""

import json
import os
import random
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from exporter.cli import main
from exporter.collector import AnomalyCollector
from exporter.config import Config, PrometheusConfig, RuleConfig, parse_config
from exporter.demo import DEMO_RULES, DemoSource
from exporter.frame import SeriesFrame
from exporter.pipeline import RuleRunner
from exporter.reader import RangeResult
from exporter.scheduler import Scheduler
from exporter.server import WebApp
from exporter.sharding import Shard, ShardError, parse_shard, stable_hash
from exporter.store import Store

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_760_000_000.0
LATE = T0 + 600  # when the late series start


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def random_keys(n, seed=7):
    """`n` distinct label sets of assorted shapes, deterministic."""
    rng = random.Random(seed)
    keys = set()
    while len(keys) < n:
        labels = {"__name__": rng.choice(["http_requests", "cpu_seconds", "queue_depth"])}
        labels["pod"] = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=rng.randint(3, 12)))
        for name in rng.sample(["namespace", "zone", "container", "code"], rng.randint(0, 3)):
            labels[name] = rng.choice(["a", "b", "prod", "eu-west-1", "500", "sidecar"])
        keys.add(tuple(sorted(labels.items())))
    return sorted(keys)


class FakeSource:
    """Seasonal-ish series for every key (some only from LATE on); records every series it returned."""

    def __init__(self, keys, late=()):
        self.keys = list(keys)
        self.late = set(late)
        self.returned = set()

    def query_range(self, query, start, end, step, *, keep=None, series_hint=1):
        ts = np.arange(int(start) // 60 * 60, int(end) // 60 * 60 + 1, 60, dtype=np.int64)
        keys, rows, dropped = [], [], 0
        for i, key in enumerate(self.keys):
            mask = ts >= (LATE if key in self.late else 0)
            if not mask.any():
                continue
            if keep is not None and not keep(key):
                dropped += 1
                continue
            keys.append(key)
            wave = 10 + i % 7 + np.sin(ts / 3600.0 + i) + 0.1 * np.cos(ts * 0.37 + i)
            rows.append(np.where(mask, wave, np.nan))
        self.returned.update(keys)
        values = np.vstack(rows) if rows else np.empty((0, len(ts)))
        return RangeResult(keys=keys, timestamps=ts, values=values, dropped=dropped, warnings=())


class Observed:
    """Stands in for a rule's alert state: records which series were judged."""

    def __init__(self):
        self.keys = set()

    def observe(self, keys, times, scores, latest):
        self.keys.update(keys)

    def tick(self):
        pass


def rule(**kw):
    base = dict(name="r", query="m", interval=60, retrain=86400, step=60, history=86400)
    base.update(kw)
    return RuleConfig(**base)


def run_replica(shard, source, **rule_kw):
    """Fit at T0, score once after the late series appeared and once after they are warm (early refit)."""
    clock = Clock(T0)
    store = Store()
    alerts = Observed()
    runner = RuleRunner(rule(**rule_kw), source, store, clock=clock, alerts=alerts, shard=shard)
    runner.fit_job()
    for now in (LATE + 600, LATE + 3600 + 120):
        clock.now = now
        runner.score_job()
    return store, alerts


def exported_keys(store, name="r"):
    """The source label sets behind a rule's published series (output labels mapped back)."""
    out = set()
    for labels in store.snapshots()[name].labels:
        d = dict(labels)
        d.pop("rule")
        d["__name__"] = d.pop("metric_name")
        out.add(tuple(sorted(d.items())))
    return out


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_replicas_partition_the_series_exactly(count):
    keys = random_keys(200)
    late = set(keys[::10])  # 20 series appear after the history load: admitted by the incremental path
    per_shard = []
    for index in range(count):
        shard = Shard(index, count)
        source = FakeSource(keys, late)
        store, alerts = run_replica(shard, source)
        exported = exported_keys(store)
        health = store.health()["r"]
        owned = {k for k in keys if shard.owns(k)}
        assert source.returned == owned  # other shards' series were never handed over, let alone stored
        assert exported == owned and alerts.keys == owned  # scored, exported and judged for alerts
        assert health.up and health.series == len(owned) and health.dropped == 0
        per_shard.append(exported)
    assert set().union(*per_shard) == set(keys)
    for a, b in combinations(per_shard, 2):
        assert not a & b
    for part in per_shard:  # the hash spreads the series evenly: each shard within ±50 % of 200 / count
        assert 0.5 * 200 / count <= len(part) <= 1.5 * 200 / count


@pytest.mark.parametrize("count", [2, 3, 5])
def test_demo_source_rules_are_partitioned_too(count):
    config = parse_config(DEMO_RULES, source="<demo rules>")
    clock = Clock(T0 + 300)
    parts = {r.name: [] for r in config.rules}
    for index in range(count):
        store = Store()
        source = DemoSource(started_at=T0, clock=clock)
        for r in config.rules:
            RuleRunner(r, source, store, clock=clock, shard=Shard(index, count)).fit_job()
        for r in config.rules:
            assert store.health()[r.name].up  # a shard with no series of a rule is up, with nothing to say
            parts[r.name].append(set(store.snapshots()[r.name].labels))
    everything = Store()
    for r in config.rules:
        RuleRunner(r, DemoSource(started_at=T0, clock=clock), everything, clock=clock).fit_job()
        assert set().union(*parts[r.name]) == set(everything.snapshots()[r.name].labels)
        assert sum(map(len, parts[r.name])) == len(everything.snapshots()[r.name].labels)


def test_max_series_applies_per_replica_to_the_owned_series():
    keys = random_keys(200)
    kept_all = []
    for index in range(3):
        shard = Shard(index, 3)
        store, _ = run_replica(shard, FakeSource(keys), max_series=20)
        owned = sorted((k for k in keys if shard.owns(k)), key=stable_hash)
        health = store.health()["r"]
        assert health.series == 20 and health.dropped == len(owned) - 20  # not the other shards' series
        assert exported_keys(store) == set(owned[:20])  # the lowest hashes, as without sharding
        kept_all.append(exported_keys(store))
    assert sum(map(len, kept_all)) == len(set().union(*kept_all)) == 60


def test_admitter_counts_only_owned_series_turned_away_for_room():
    frame = SeriesFrame(step=60, capacity=10, max_series=2)
    keys = [(("pod", str(i)),) for i in range(40)]
    shard = Shard(0, 4)
    keep = frame.admitter(shard.owns)
    decisions = [keep(k) for k in keys]
    owned = [k for k in keys if shard.owns(k)]
    assert sum(decisions) == 2 and all(shard.owns(k) for k, d in zip(keys, decisions, strict=True) if d)
    assert keep.over_cap == len(owned) - 2


ASSIGN = (
    "import json, sys\n"
    "from exporter.sharding import Shard\n"
    "keys = [tuple(map(tuple, k)) for k in json.load(sys.stdin)]\n"
    "print(json.dumps([[i for i in range(5) if Shard(i, 5).owns(k)] for k in keys]))\n"
)


def test_assignment_is_the_same_in_fresh_processes_whatever_the_hash_seed():
    keys = random_keys(100, seed=3)
    here = [[i for i in range(5) if Shard(i, 5).owns(k)] for k in keys]
    assert all(len(owners) == 1 for owners in here)
    for seed in ("1", "4242"):
        proc = subprocess.run(
            [sys.executable, "-c", ASSIGN],
            input=json.dumps(keys),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert json.loads(proc.stdout) == here


@pytest.mark.parametrize(
    ("index", "count", "hostname", "expected"),
    [
        ("auto", 3, "anomaly-exporter-2", Shard(2, 3)),
        ("auto", 3, "anomaly-exporter-0.anomaly-exporter.monitoring.svc", Shard(0, 3)),
        ("1", 2, "myhost", Shard(1, 2)),
        ("0", 1, "", Shard()),
    ],
)
def test_parse_shard(index, count, hostname, expected):
    assert parse_shard(index, count, hostname) == expected


@pytest.mark.parametrize(
    ("index", "count", "hostname", "message"),
    [
        ("auto", 3, "myhost", "hostname 'myhost' does not end in -<number>"),
        ("auto", 2, "anomaly-exporter-2", "ordinal 2 of hostname 'anomaly-exporter-2' is not below"),
        ("3", 3, "h", "--shard.index must be in 0..2 for --shard.count=3, got 3"),
        ("-1", 3, "h", "got -1"),
        ("0", 0, "h", "--shard.count must be at least 1, got 0"),
        ("0", -2, "h", "got -2"),
        ("one", 2, "h", "a number or 'auto', got 'one'"),
    ],
)  # fmt: skip
def test_parse_shard_errors_name_the_values(index, count, hostname, message):
    with pytest.raises(ShardError) as err:
        parse_shard(index, count, hostname)
    assert message in str(err.value)


def test_cli_refuses_a_bad_shard(monkeypatch, capsys):
    monkeypatch.setattr("socket.gethostname", lambda: "myhost")
    assert main(["demo", "--shard.index", "auto", "--shard.count", "3"]) == 2
    assert "'myhost'" in capsys.readouterr().err
    assert main(["--config.file", "nope.yaml", "--shard.index", "4", "--shard.count", "4"]) == 2
    assert "--shard.index must be in 0..3 for --shard.count=4, got 4" in capsys.readouterr().err


def test_cli_process_exits_non_zero_on_a_bad_shard_count():
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "demo", "--shard.count", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "--shard.count must be at least 1, got 0" in proc.stderr


def test_shard_info_metric():
    registry = CollectorRegistry()
    registry.register(AnomalyCollector(Store(), shard=Shard(2, 3)))
    assert registry.get_sample_value("anomaly_exporter_shard_info", {"index": "2", "count": "3"}) == 1


def test_scheduler_gives_every_rule_the_replica_shard():
    sched = Scheduler(Store(), lambda _cfg: DemoSource(), shard=Shard(1, 3))
    try:
        sched.apply(
            Config(
                prometheus=PrometheusConfig(url="http://demo.invalid"),
                rules=(
                    rule(name="a", query="demo_queue_depth"),
                    rule(name="b", query="demo_cpu_usage_ratio"),
                ),
            )
        )
        assert {r.shard for r in sched.runners.values()} == {Shard(1, 3)}
    finally:
        sched.shutdown(wait=False)


def test_landing_page_names_the_shard():
    app = WebApp(Store(), CollectorRegistry(), shard=Shard(1, 4))
    body = b"".join(app({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, lambda *a: None)).decode()
    assert "Shard 1 of 4" in body


def test_filter_is_owns_memoized_and_none_for_a_single_shard():
    assert Shard().filter() is None
    keys = random_keys(50)
    shard = Shard(2, 3)
    keep = shard.filter(memo_size=7)  # a tiny memo: forgotten and refilled several times
    for _ in range(2):
        assert [keep(k) for k in keys] == [shard.owns(k) for k in keys]
