"""Scoring against labelled windows: NAB's rules on hand-computed cases and NAB's own unit-test values,
null = 0 / perfect = 100 on real NAB files, and the on-call event metrics."""

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter.evaluate import (
    EventMetrics,
    Profile,
    combine,
    event_metrics,
    load_profiles,
    load_windows,
    nab_file_score,
    nab_normalized,
    probationary_rows,
    rising_edges,
    scaled_sigmoid,
)

NAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab"  # ../shared beside the repo
needs_nab = pytest.mark.skipif(
    not (NAB / "combined_windows.json").exists() and os.environ.get("CI") != "true",
    reason="NAB subset not present (../shared/datasets/nab); required under CI=true",
)

UNIT = Profile("unit", tp=1.0, fp=1.0, fn=1.0, tn=1.0)  # the cost matrix of NAB's own unit tests
STANDARD = Profile("standard", tp=1.0, fp=0.11, fn=1.0, tn=1.0)
T0 = np.datetime64("2014-01-01T00:00:00", "s")
STEP = np.timedelta64(300, "s")


def grid(n):
    return T0 + np.arange(n) * STEP


def win(first_row, last_row):
    return (T0 + first_row * STEP, T0 + last_row * STEP)


def rows(n, *on):
    d = np.zeros(n, dtype=bool)
    d[list(on)] = True
    return d


def score(n, on, windows, profile=UNIT, probation=0.0):
    return nab_file_score(grid(n), rows(n, *on), windows, profile, probation=probation)


def test_scaled_sigmoid_matches_nab_docstring_values():
    s = scaled_sigmoid(np.array([-1.0, -0.5, 0.0, 1.0, 3.0, 3.01, 1e6]))
    assert s[:4] == pytest.approx([0.98661, 0.84828, 0.0, -0.98661], abs=1e-5)
    assert s[4] == pytest.approx(-1.0, abs=1e-6) and s[4] > -1.0  # NAB: only x > 3 is clamped
    assert s[5] == s[6] == -1.0


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 0), (20, 3), (100, 15), (4032, 604), (5000, 750), (22695, 750)]
)
def test_probationary_rows_is_15_percent_capped_at_750(n, expected):
    assert probationary_rows(n) == expected


def test_detection_at_window_start_earns_full_tp_weight():
    # NAB's Sweeper divides by maxTP = S(-1) = 0.9866, so the earliest detection earns exactly tpWeight.
    s = score(100, [30], [win(30, 39)])
    assert s.raw == pytest.approx(1.0) and (s.tp, s.fp, s.fn) == (1, 0, 0)
    assert (s.null, s.perfect) == (-1.0, 1.0)


def test_later_detections_in_a_window_earn_less():
    width = 10
    middle = score(100, [35], [win(30, 39)]).raw  # position -(39 - 35 + 1)/10 = -0.5
    last = score(100, [39], [win(30, 39)]).raw  # position -1/10
    assert middle == pytest.approx(0.84828 / 0.98661, abs=1e-5)
    max_tp = 2 / (1 + math.exp(-5)) - 1
    assert last == pytest.approx((2 / (1 + math.exp(-5 / width)) - 1) / max_tp)
    assert 1.0 > middle > last > 0


def test_missed_window_costs_fn_weight():
    s = score(100, [], [win(30, 39)], profile=Profile("p", tp=1.0, fp=0.11, fn=2.0, tn=1.0))
    assert s.raw == -2.0 and (s.tp, s.fp, s.fn) == (0, 0, 1)


def test_only_the_first_detection_in_a_window_counts():
    assert score(100, [32, 33, 38], [win(30, 39)]) == score(100, [32], [win(30, 39)])


def test_false_positive_before_any_window_costs_full_fp_weight():
    s = score(100, [10], [win(30, 39)], profile=STANDARD)
    assert s.raw == pytest.approx(-0.11 - 1.0) and (s.fp, s.fn) == (1, 1)
    assert score(1000, [0], [], profile=STANDARD).raw == -0.11  # NAB testOneFalsePositiveNoWindow


def test_false_positive_after_a_window_is_weighted_by_distance_in_window_widths():
    # Window rows 30..39 (width 10): a detection 3 rows after its end sits at 3/(10 - 1) window widths.
    s = score(100, [30, 42], [win(30, 39)], profile=STANDARD)
    assert s.raw == pytest.approx(1.0 + 0.11 * (2 / (1 + math.exp(5 * 3 / 9)) - 1))
    near, far = score(100, [40], [win(30, 39)]).raw, score(100, [45], [win(30, 39)]).raw
    assert -2.0 < far < near < -1.0  # both also pay the missed window (-1)
    assert score(100, [70], [win(30, 39)]).raw == -2.0  # > 3 widths past: full FP weight


def test_reproduces_nab_unit_test_scoring_all_metrics():
    # NAB tests/unit/scorer_test.py testScoringAllMetrics: 100 rows, windows rows 30-34 and 65-69,
    # detections at 30 (TP), 31 (same window) and 37 (FP) -> -0.9540.
    s = score(100, [30, 31, 37], [win(30, 34), win(65, 69)])
    assert s.raw == pytest.approx(-0.9540, abs=5e-5) and (s.tp, s.fp, s.fn) == (1, 1, 1)


def test_reward_low_fn_profile_doubles_a_miss():
    # NAB testRewardLowFalseNegatives: standard == 0.5 * reward_low_FN when only a window is missed.
    low_fn = Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0, tn=1.0)
    assert score(100, [], [win(30, 39)]).raw == 0.5 * score(100, [], [win(30, 39)], profile=low_fn).raw


def test_probationary_rows_are_not_scored():
    # 100 rows -> the first 15 are probationary: a detection there is neither FP nor TP, and a window that
    # lies wholly inside them counts for nothing (not in raw, null or perfect).
    s = score(100, [5, 12], [win(10, 14)], probation=0.15)
    assert (s.raw, s.null, s.perfect, s.tp, s.fp, s.fn) == (0.0, 0.0, 0.0, 0, 0, 0)
    # A window straddling the boundary is scored, but its probationary rows cannot detect it.
    s = score(100, [12], [win(10, 20)], probation=0.15)
    assert (s.raw, s.tp, s.fn) == (-1.0, 0, 1)
    s = score(100, [12, 16], [win(10, 20)], probation=0.15)  # position -(20 - 16 + 1)/11
    assert s.raw == pytest.approx(scaled_sigmoid(-5 / 11) / scaled_sigmoid(-1.0))


def test_window_bounds_between_rows_and_duplicate_end_timestamps():
    ts = grid(100)
    between = (T0 + 29 * STEP + np.timedelta64(1, "s"), T0 + 39 * STEP + np.timedelta64(60, "s"))
    assert nab_file_score(ts, rows(100, 30), [between], UNIT, probation=0).raw == pytest.approx(1.0)
    # NAB leaves a window at the FIRST row equal to its end (timestamps.index): row 41 is after the window.
    dup = np.concatenate([ts[:40], ts[39:99]])  # rows 39 and 40 share a timestamp
    s = nab_file_score(dup, rows(100, 40), [win(30, 39)], UNIT, probation=0)
    assert (s.tp, s.fp, s.fn) == (0, 1, 1)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        nab_file_score(grid(10), np.zeros(9, dtype=bool), [], UNIT)
    with pytest.raises(ValueError, match="overlap"):
        nab_file_score(grid(100), rows(100), [win(10, 20), win(20, 30)], UNIT)
    with pytest.raises(ValueError, match="non-decreasing"):
        nab_file_score(grid(10)[::-1], rows(10), [], UNIT)


def test_normalisation_over_a_corpus():
    files = [score(100, [30], [win(30, 39)]), score(100, [], [win(30, 39), win(60, 69)]), score(50, [], [])]
    # raw 1 - 2 = -1, null -3, perfect 3 -> 100 * 2 / 6
    assert nab_normalized(files) == pytest.approx(100 / 3)
    assert math.isnan(nab_normalized([score(50, [7], [])]))  # no windows: nothing to normalise against


def test_loaders_read_nab_files(tmp_path):
    (tmp_path / "w.json").write_text(
        '{"a/x.csv": [["2014-04-11 00:00:00.000000", "2014-04-11 02:00:00.000000"],'
        ' ["2014-04-10 00:00:00.000000", "2014-04-10 01:00:00.000000"]], "a/y.csv": []}'
    )
    w = load_windows(tmp_path / "w.json")
    assert w["a/y.csv"] == [] and w["a/x.csv"][0] == (
        np.datetime64("2014-04-10T00:00:00"),
        np.datetime64("2014-04-10T01:00:00"),
    )
    (tmp_path / "p.json").write_text(
        '{"s": {"CostMatrix": {"tpWeight": 1, "fnWeight": 2, "fpWeight": 0.1, "tnWeight": 1}}}'
    )
    assert load_profiles(tmp_path / "p.json") == {"s": Profile("s", tp=1.0, fp=0.1, fn=2.0, tn=1.0)}


@needs_nab
@pytest.mark.parametrize(
    "key", ["realAWSCloudwatch/ec2_cpu_utilization_825cc2.csv", "realTraffic/speed_6005.csv"]
)
def test_real_nab_file_null_scores_0_and_perfect_scores_100(key):
    profiles = load_profiles(NAB / "profiles.json")
    windows = load_windows(NAB / "combined_windows.json")[key]
    ts = pd.to_datetime(pd.read_csv(NAB / "data" / key)["timestamp"]).to_numpy().astype("datetime64[s]")
    assert windows and set(profiles) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    perfect = np.isin(ts, [s for s, _ in windows])  # a detection at the first row of every window
    late = np.isin(ts, [e for _, e in windows])  # ... and at the last row instead
    assert perfect.sum() == late.sum() == len(windows)
    for profile in profiles.values():
        null = nab_file_score(ts, np.zeros(len(ts), dtype=bool), windows, profile)
        best = nab_file_score(ts, perfect, windows, profile)
        assert nab_normalized([null]) == 0.0 and nab_normalized([best]) == pytest.approx(100.0)
        assert (best.tp, best.fp, best.fn) == (len(windows), 0, 0)
        assert 0.0 < nab_normalized([nab_file_score(ts, late, windows, profile)]) < 100.0


def test_rising_edges_mark_episode_starts():
    a = np.array([1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    assert rising_edges(a).tolist() == [True, False, False, True, False, False, True, False]
    assert rising_edges(np.zeros(0, dtype=bool)).tolist() == []


def test_rising_edges_turn_an_alert_into_one_nab_detection():
    alert = np.zeros(100, dtype=bool)
    alert[30:50] = True  # fires through the whole window and beyond: one detection, not twenty
    s = nab_file_score(grid(100), rising_edges(alert), [win(30, 39)], UNIT, probation=0)
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)


def alerts(n, *spans):
    a = np.zeros(n, dtype=bool)
    for lo, hi in spans:
        a[lo : hi + 1] = True
    return a


def test_event_metrics_delay_precision_recall():
    # Window A (rows 30-39) caught 2 rows late; window B (60-69) missed; one false alert at row 80.
    m = event_metrics(grid(100), alerts(100, (32, 34), (80, 80)), [win(30, 39), win(60, 69)])
    assert (m.tp_events, m.fn_events, m.fp_alerts, m.alerts) == (1, 1, 1, 2)
    assert (m.precision, m.recall, m.f1) == (0.5, 0.5, 0.5)
    assert m.mean_delay_s == 600.0


def test_an_episode_already_firing_when_a_window_opens_detects_it_with_zero_delay():
    m = event_metrics(grid(100), alerts(100, (25, 31)), [win(30, 39)])
    assert (m.tp_events, m.fp_alerts, m.precision, m.mean_delay_s) == (1, 0, 1.0, 0.0)
    m = event_metrics(grid(100), alerts(100, (25, 29)), [win(30, 39)])  # stopped just before: a false alert
    assert (m.tp_events, m.fp_alerts, m.f1) == (0, 1, 0.0)


def test_episodes_and_windows_are_counted_once_each():
    # Two episodes in one window: one detected window, two true alerts, delay from the first.
    m = event_metrics(grid(100), alerts(100, (31, 31), (35, 36)), [win(30, 39)])
    assert (m.tp_events, m.alerts, m.fp_alerts, m.mean_delay_s) == (1, 2, 0, 300.0)
    # One episode spanning two windows detects both.
    m = event_metrics(grid(100), alerts(100, (35, 62)), [win(30, 39), win(60, 69)])
    assert (m.tp_events, m.alerts, m.recall, m.precision, m.mean_delay_s) == (2, 1, 1.0, 1.0, 750.0)


def test_skip_rows_ignores_warm_up_episodes_and_windows():
    m = event_metrics(grid(100), alerts(100, (2, 3), (12, 40)), [win(5, 8), win(30, 39)], skip_rows=10)
    assert (m.alerts, m.fp_alerts, m.tp_events, m.fn_events) == (1, 0, 1, 0)
    assert m.weeks == pytest.approx(89 * 300 / 604800)


def test_false_alerts_per_week_and_unknown_ratios():
    one_week = 2017  # 2016 five-minute steps
    m = event_metrics(grid(one_week), alerts(one_week, (100, 100), (500, 501), (900, 900)), [])
    assert (m.weeks, m.false_alerts_per_week, m.fp_alerts) == (1.0, 3.0, 3)
    assert math.isnan(m.recall) and m.precision == 0.0 and m.f1 == 0.0 and m.mean_delay_s is None
    quiet = event_metrics(grid(one_week), alerts(one_week), [])
    assert math.isnan(quiet.precision) and math.isnan(quiet.f1) and quiet.false_alerts_per_week == 0.0


def test_combine_recomputes_from_totals():
    a = event_metrics(grid(100), alerts(100, (32, 34), (80, 80)), [win(30, 39), win(60, 69)])  # delay 600
    b = event_metrics(grid(100), alerts(100, (30, 30), (50, 50)), [win(30, 39)])  # delay 0
    c = combine([a, b])
    assert isinstance(c, EventMetrics)
    assert (c.tp_events, c.fn_events, c.fp_alerts, c.alerts) == (2, 1, 2, 4)
    assert (c.precision, c.recall) == (0.5, pytest.approx(2 / 3))
    assert c.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert c.mean_delay_s == 300.0 and c.weeks == a.weeks + b.weeks
    assert c.false_alerts_per_week == pytest.approx(2 / c.weeks)
    assert combine([]).mean_delay_s is None
