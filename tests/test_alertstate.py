"""The alert state machine: Prometheus' pending/firing/keep_firing_for semantics on anomaly_score, plus
hysteresis and count-in-window, identical whether fed all at once (backtest) or cycle by cycle (live)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.alertstate import AlertStates, alert_matrix
from exporter.config import AlertConfig

STEP = 60
NAN = float("nan")


def run(alert: AlertConfig, scores: list[float]) -> str:
    """The firing state per point as a string of 0/1, for readable tables."""
    t = np.arange(len(scores)) * STEP
    return "".join(str(int(x)) for x in alert_matrix(alert, t, np.array([scores], dtype=float))[0])


@pytest.mark.parametrize(
    ("what", "alert", "scores", "expected"),
    [
        ("fires at once with for 0", AlertConfig(for_=0, keep_firing_for=0), [0, 1, 0, 0], "0100"),
        ("below threshold never fires", AlertConfig(for_=0, keep_firing_for=0), [0.99, 0.5], "00"),
        ("for 1m: pending one step", AlertConfig(for_=60, keep_firing_for=0), [0, 1, 1, 1, 0], "00110"),
        (
            "for 2m: a 2-point blip stays pending",
            AlertConfig(for_=120, keep_firing_for=0),
            [1, 1, 0, 1],
            "0000",
        ),
        ("keep_firing_for 2m", AlertConfig(for_=0, keep_firing_for=120), [1, 0, 0, 0, 0], "11100"),
        ("breach again while kept", AlertConfig(for_=0, keep_firing_for=120), [1, 0, 1, 0, 0, 0], "111110"),
        ("NaN ends a pending alert", AlertConfig(for_=60, keep_firing_for=0), [1, NAN, 1, 1], "0001"),
        (
            "NaN lets a firing alert resolve",
            AlertConfig(for_=0, keep_firing_for=60),
            [1, NAN, NAN, NAN],
            "1100",
        ),
        (
            "hysteresis: stays firing above recovery_threshold",
            AlertConfig(for_=0, keep_firing_for=0, recovery_threshold=0.5),
            [1.2, 0.8, 0.6, 0.4, 0.8],
            "11100",
        ),
        ("threshold 2", AlertConfig(threshold=2, for_=0, keep_firing_for=0), [1.5, 2.5, 1.9], "010"),
        (
            "count-in-window: 3 anomalous points within 5m",
            AlertConfig(for_=0, keep_firing_for=0, min_points=3, window=300),
            [1, 0, 1, 0, 1, 0, 0, 0, 0, 0],
            "0000110000",  # the window [t - 5m, t] still holds all three at t = 5m
        ),
        (
            "count-in-window: points too far apart never fire",
            AlertConfig(for_=0, keep_firing_for=0, min_points=3, window=120),
            [1, 0, 0, 1, 0, 0, 1, 0],
            "00000000",
        ),
        (
            "count-in-window with for",
            AlertConfig(for_=60, keep_firing_for=0, min_points=2, window=120),
            [1, 1, 0, 0, 0],
            "00100",
        ),
    ],
)
def test_state_machine_table(what: str, alert: AlertConfig, scores: list[float], expected: str) -> None:
    assert run(alert, scores) == expected, what


def oracle(score: np.ndarray, for_points: int, keep_points: int) -> np.ndarray:
    """Prometheus' `anomaly_score >= 1` with `for` and `keep_firing_for`, point by point, for one series:
    pending until the breach has lasted `for`; a firing alert stays firing while the series breaches and
    for `keep_firing_for` after (a breach during that time continues the same firing alert)."""
    out, run_len, since, firing = [], 0, 1 << 40, False
    for s in score:
        breach = not np.isnan(s) and s >= 1
        run_len = run_len + 1 if breach else 0
        if run_len > for_points or (firing and breach):
            since = 0
        else:
            since += 1
        firing = since <= keep_points
        out.append(firing)
    return np.array(out, dtype=bool)


@settings(max_examples=150, deadline=None)
@given(
    scores=st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0, NAN]), min_size=1, max_size=60),
    for_points=st.integers(0, 4),
    keep_points=st.integers(0, 4),
    cut=st.integers(0, 60),
)
def test_matches_prometheus_semantics_and_live_equals_batch(
    scores: list[float], for_points: int, keep_points: int, cut: int
) -> None:
    alert = AlertConfig(for_=for_points * STEP, keep_firing_for=keep_points * STEP)
    x = np.array([scores])
    t = np.arange(x.shape[1]) * STEP
    batch = alert_matrix(alert, t, x)[0]
    assert batch.tolist() == oracle(x[0], for_points, keep_points).tolist()
    # live: two cycles, the second re-fetching an overlap that must not be judged twice
    live = AlertStates(alert)
    cut = min(cut, x.shape[1])
    first, _ = live.update([("k",)], t[:cut], x[:, :cut])
    lo = max(0, cut - 3)
    second, _ = live.update([("k",)], t[lo:], x[:, lo:])
    assert np.concatenate([first[0], second[0][cut - lo :]]).tolist() == batch.tolist()


def test_transitions_and_vanished_series_resolve() -> None:
    states = AlertStates(AlertConfig(for_=0, keep_firing_for=120))
    a, b = (("instance", "a"),), (("instance", "b"),)
    _, changes = states.update([a, b], np.array([0.0]), np.array([[2.0], [0.1]]))
    assert [(c.key, c.firing, c.at) for c in changes] == [(a, True, 0.0)]
    assert states.firing() == {a: 0.0}
    # `a` disappears from the rule's results: unknown, so it resolves after keep_firing_for
    for t in (60.0, 120.0):
        _, changes = states.update([b], np.array([t]), np.array([[0.1]]))
        assert changes == []
    _, changes = states.update([b], np.array([180.0]), np.array([[0.1]]))
    assert [(c.key, c.firing, c.at, c.since) for c in changes] == [(a, False, 180.0, 0.0)]
    states.forget({b})
    assert states.keys == [b]


def test_state_survives_a_json_round_trip() -> None:
    alert = AlertConfig(for_=60, keep_firing_for=120, min_points=2, window=180)
    rng = np.random.default_rng(3)
    x = rng.choice([0.0, 0.5, 1.5, NAN], size=(5, 40))
    keys = [(("i", str(i)),) for i in range(5)]
    t = np.arange(40) * STEP
    whole, _ = AlertStates(alert).update(keys, t, x)
    first = AlertStates(alert)
    head, _ = first.update(keys, t[:17], x[:, :17])
    restored = AlertStates.from_dict(alert, json.loads(json.dumps(first.to_dict())))
    tail, _ = restored.update(keys, t[17:], x[:, 17:])
    assert np.array_equal(np.concatenate([head, tail], axis=1), whole)


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"series": "x"},
        {"series": [{"key": "nope"}]},
        {"series": [{"key": [["a"]]}]},
        {"series": [{"key": [["a", "b"]], "firing_since": "yesterday"}]},
        {"series": [{"key": [["a", "b"]], "firing_since": float("inf")}]},
        {"series": [{"key": [["a", "b"]], "recent": ["x"]}]},
        {"series": [], "last_time": "now"},
    ],
)
def test_malformed_state_is_rejected(data: object) -> None:
    with pytest.raises(ValueError, match="alert state"):
        AlertStates.from_dict(AlertConfig(), data)
