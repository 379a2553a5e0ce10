"""Synthetic labelled scenarios for the detection-quality harness: determinism, labels, gaps, magnitudes."""

import numpy as np
import pytest

from benchmarks.scenarios import DAY, DEFAULT_START, MARGIN, NO_ANOMALY_KINDS, STEP, scenarios, seed_scenario

ANOMALY_KINDS = ("spike", "dip", "level_shift", "drop_to_zero", "variance_change", "slow_drift")
WEEK = 7 * DAY // STEP


@pytest.fixture(scope="module")
def all_scenarios():
    return scenarios(seed=1)


def nan_runs(values):
    """(start, stop) index pairs of the NaN stretches."""
    edges = np.diff(np.concatenate([[0], np.isnan(values).astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def test_deterministic_per_seed():
    a, b, c = scenarios(seed=7), scenarios(seed=7), scenarios(seed=8)
    for x, y, z in zip(a, b, c, strict=True):
        assert x.name == y.name == z.name
        assert np.array_equal(x.values, y.values, equal_nan=True)
        assert x.windows == y.windows and x.description == y.description
        assert not np.array_equal(x.values, z.values, equal_nan=True)
    assert np.array_equal(seed_scenario(3).values, seed_scenario(3).values)
    assert seed_scenario(3).windows != seed_scenario(4).windows


def test_all_kinds_present_with_several_series_each(all_scenarios):
    names = [s.name for s in all_scenarios]
    assert len(names) == len(set(names))
    kinds = [s.kind for s in all_scenarios]
    for kind in ANOMALY_KINDS:
        assert 3 <= kinds.count(kind) <= 4, kind
    assert set(kinds) == {*ANOMALY_KINDS, *NO_ANOMALY_KINDS}
    for shape in ("requests", "cpu", "latency", "errors"):
        assert any(s.name.endswith("/" + shape) for s in all_scenarios)


@pytest.mark.parametrize("days", [3, 14])
def test_grid_and_windows_in_range_sorted_and_late(days):
    for s in scenarios(seed=2, days=days):
        t = s.timestamps
        assert t.dtype == np.int64 and s.values.dtype == np.float64
        assert len(t) == len(s.values) == days * DAY // STEP
        assert t[0] == DEFAULT_START and np.all(np.diff(t) == STEP)
        assert s.windows == sorted(s.windows)
        for start, end in s.windows:
            assert t[0] <= start < end <= t[-1]
            # anomalies sit in the last 40 %, after clean history
            assert start >= t[int(0.6 * len(t))]


def test_custom_start_shifts_everything():
    a, b = scenarios(seed=0, days=3), scenarios(seed=0, days=3, start=DEFAULT_START + DAY)
    for x, y in zip(a, b, strict=True):
        assert y.timestamps[0] == DEFAULT_START + DAY
        assert [(s + DAY, e + DAY) for s, e in x.windows] == y.windows


def test_anomaly_kinds_have_one_window_and_clean_kinds_none(all_scenarios):
    for s in all_scenarios:
        assert len(s.windows) == (0 if s.kind in NO_ANOMALY_KINDS else 1), s.name


def test_values_finite_except_gaps_and_within_bounds(all_scenarios):
    for s in all_scenarios:
        v = s.values
        assert not v.flags.writeable and not s.timestamps.flags.writeable  # shared arrays stay intact
        if s.kind == "gaps":
            assert np.isnan(v).any()
        else:
            assert np.isfinite(v).all(), s.name
        assert np.nanmin(v) >= 0, s.name
        if s.name.endswith("/cpu"):
            assert np.nanmax(v) <= 1


def test_gaps_are_10_to_120_minutes_and_never_labelled(all_scenarios):
    for s in all_scenarios:
        for a, b in nan_runs(s.values):
            assert 10 <= b - a <= 120
            gap_start, gap_end = s.timestamps[a], s.timestamps[b - 1]
            assert all(gap_end < start or gap_start > end for start, end in s.windows)
    assert any(nan_runs(s.values) for s in all_scenarios if s.kind == "gaps")


def test_drop_to_zero_is_zero_inside_window(all_scenarios):
    for s in (s for s in all_scenarios if s.kind == "drop_to_zero"):
        (start, end), t = s.windows[0], s.timestamps
        core = s.values[(t >= start + MARGIN) & (t <= end - MARGIN)]
        assert 20 <= len(core) <= 60 and np.all(core == 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labelled_anomalies_are_visible_against_the_same_minutes_a_week_earlier(seed):
    """An honest label: the core of each window differs clearly from the same weekday and time last week."""
    for s in scenarios(seed=seed):
        if not s.windows:
            continue
        (start, end), t = s.windows[0], s.timestamps
        core = np.flatnonzero((t >= start + MARGIN) & (t <= end - MARGIN))
        x, ref = s.values[core], s.values[core - WEEK]
        around = s.values[core[0] - WEEK - 60 : core[-1] - WEEK + 61]
        noise = np.std(np.diff(around)) / np.sqrt(2)  # local noise at that time of day
        shift = abs(x.mean() - ref.mean())
        if s.kind == "variance_change":
            assert np.std(np.diff(x)) > 2 * np.std(np.diff(ref)), s.name
        elif s.kind == "spike":  # injected at 8-12 σ; sampling noise on a 3-point mean can eat a little
            assert shift > 4 * noise, s.name
        else:  # sustained: far beyond what noise explains, and a material change
            assert shift > 6 * noise / np.sqrt(len(core)), s.name
            assert shift > 0.1 * ref.mean(), s.name


def test_seed_scenario_matches_the_seed_pipeline_case():
    s = seed_scenario()
    t, v = s.timestamps, s.values
    assert len(t) == 7 * DAY // STEP and t[0] == DEFAULT_START and np.isfinite(v).all()
    assert len(s.windows) == 2 and s.windows == sorted(s.windows)
    lengths = [end - start for start, end in s.windows]
    assert lengths == [(10 - 1) * STEP + 2 * MARGIN, (50 - 1) * STEP + 2 * MARGIN]
    assert all(start >= t[0] + 5 * DAY and end <= t[-1] for start, end in s.windows)
    cores = [(t >= start + MARGIN) & (t <= end - MARGIN) for start, end in s.windows]
    assert np.all(v[cores[1]] == 0)
    normal = v[~(cores[0] | cores[1])]
    assert 2.5 < np.std(np.diff(normal)) / np.sqrt(2) < 3.5
    assert np.percentile(normal, 5) > 35 and np.percentile(normal, 95) < 75
    assert v[cores[0]].mean() - np.median(normal) > 30  # +45 on top of the daily cycle
