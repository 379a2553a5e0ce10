"""What /metrics shows: per-series gauges from the latest snapshot, and the exporter's own health."""

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from exporter.collector import AnomalyCollector
from exporter.store import RuleSnapshot, Store


def snapshot(pods, score=None):
    n = len(pods)
    score = np.array(score if score is not None else [0.5] * n, dtype=float)
    return RuleSnapshot(
        labels=tuple((("pod", p), ("rule", "r")) for p in pods),
        score=score,
        expected=np.full(n, 10.0),
        lower=np.full(n, 8.0),
        upper=np.full(n, 12.0),
        timestamp=0.0,
        value=np.full(n, 13.5),
    )


def setup():
    store = Store()
    registry = CollectorRegistry()
    registry.register(AnomalyCollector(store))
    store.add_rule("r")
    return store, registry


def test_gauges_per_series():
    store, registry = setup()
    store.publish("r", snapshot(["a", "b"], [0.2, 1.5]))
    get = registry.get_sample_value
    assert get("anomaly_score", {"rule": "r", "pod": "a"}) == 0.2
    assert get("anomaly_score", {"rule": "r", "pod": "b"}) == 1.5
    assert get("anomaly_expected", {"rule": "r", "pod": "a"}) == 10.0
    assert get("anomaly_expected_lower", {"rule": "r", "pod": "a"}) == 8.0
    assert get("anomaly_expected_upper", {"rule": "r", "pod": "b"}) == 12.0
    assert get("anomaly_observed", {"rule": "r", "pod": "b"}) == 13.5


def test_vanished_series_and_removed_rules_are_no_longer_exported():
    store, registry = setup()
    store.publish("r", snapshot(["a", "b"]))
    store.publish("r", snapshot(["b"]))
    assert registry.get_sample_value("anomaly_score", {"rule": "r", "pod": "a"}) is None
    assert registry.get_sample_value("anomaly_score", {"rule": "r", "pod": "b"}) == 0.5
    store.remove_rule("r")
    assert registry.get_sample_value("anomaly_score", {"rule": "r", "pod": "b"}) is None
    assert registry.get_sample_value("anomaly_exporter_rule_up", {"rule": "r"}) is None


def test_unknown_score_is_left_out_not_published_as_zero():
    store, registry = setup()
    store.publish("r", snapshot(["a"], [np.nan]))
    assert registry.get_sample_value("anomaly_score", {"rule": "r", "pod": "a"}) is None
    assert registry.get_sample_value("anomaly_expected", {"rule": "r", "pod": "a"}) == 10.0


def test_health_metrics():
    store, registry = setup()
    get = registry.get_sample_value
    assert get("anomaly_exporter_rule_up", {"rule": "r"}) == 0
    assert get("anomaly_exporter_rule_ready", {"rule": "r"}) == 0
    store.update("r", up=True, ready=True, last_success=123.0, series=2, dropped=3)
    store.record_duration("r", "query", 0.25)
    store.record_error("r", "fit", "boom")
    store.record_error("r", "fit", "boom")
    assert get("anomaly_exporter_rule_ready", {"rule": "r"}) == 1
    assert get("anomaly_exporter_rule_up", {"rule": "r"}) == 0  # an error marks the rule down
    assert get("anomaly_exporter_last_success_timestamp_seconds", {"rule": "r"}) == 123.0
    assert get("anomaly_exporter_series", {"rule": "r"}) == 2
    assert get("anomaly_exporter_series_dropped", {"rule": "r"}) == 3
    assert get("anomaly_exporter_stage_duration_seconds", {"rule": "r", "stage": "query"}) == 0.25
    assert get("anomaly_exporter_errors_total", {"rule": "r", "stage": "fit"}) == 2
    assert get("anomaly_exporter_errors_total", {"rule": "r", "stage": "query"}) == 0
    store.record_reload(False, "bad")
    store.record_error("r", "backfill", "Prometheus fell over loading the rest of the history")
    assert get("anomaly_exporter_errors_total", {"rule": "r", "stage": "backfill"}) == 1
    stages = {"query", "backfill", "restore", "fit", "save", "score", "alert"}
    for stage in stages - {"fit", "backfill"}:  # every stage from 0, not only once it failed
        assert get("anomaly_exporter_errors_total", {"rule": "r", "stage": stage}) == 0
    store.record_error("r", "future-stage", "x")
    assert get("anomaly_exporter_errors_total", {"rule": "r", "stage": "future-stage"}) == 1
    assert get("anomaly_exporter_config_last_reload_successful") == 0
    assert get("anomaly_exporter_config_reloads_total", {"result": "failure"}) == 1
    text = generate_latest(registry).decode()
    assert 'anomaly_exporter_build_info{python_version="' in text


def test_awkward_label_values_are_escaped():
    store, registry = setup()
    snap = snapshot(["x"])
    weird = 'quote " backslash \\ newline \n unicode ☃'
    store.publish(
        "r",
        RuleSnapshot(
            labels=((("pod", weird), ("rule", "r")),),
            score=snap.score,
            expected=snap.expected,
            lower=snap.lower,
            upper=snap.upper,
            timestamp=0,
        ),
    )
    assert registry.get_sample_value("anomaly_score", {"rule": "r", "pod": weird}) == 0.5
    text = generate_latest(registry).decode()
    assert 'pod="quote \\" backslash \\\\ newline \\n unicode ☃"' in text


def test_a_replaced_rules_old_job_cannot_write_into_the_new_one():
    store = Store()
    old = store.add_rule("r", owner="old runner")
    store.remove_rule("r")  # a reload changed the rule...
    new = store.add_rule("r", owner="new runner")  # ...and a new runner took it over
    old.publish(snapshot(["stale"]))
    old.update(up=True)
    old.record_error("query", "from the old query")
    assert "r" not in store.snapshots()
    assert store.health()["r"].up is False and store.health()["r"].errors == {}
    new.publish(snapshot(["fresh"]))
    assert store.snapshots()["r"].labels[0][0] == ("pod", "fresh")


def test_an_older_snapshot_never_replaces_a_newer_one():
    store = Store()
    w = store.add_rule("r")
    newer = snapshot(["a"])
    w.publish(
        RuleSnapshot(newer.labels, newer.score, newer.expected, newer.lower, newer.upper, timestamp=120.0)
    )
    w.publish(snapshot(["b"]))  # timestamp 0: built before the one above, published after it
    assert store.snapshots()["r"].timestamp == 120.0
