"""Seasonal baseline on synthetic seasonal series with injected anomalies (table-driven)."""

import numpy as np
import pytest

from exporter.detectors.seasonal import DAY, SeasonalBaseline
from exporter.frame import Window
from exporter.postprocess import calibrate

STEP = 60
T0 = 1_750_000_000 // DAY * DAY


def make(days=7.0, n=1, noise=2.0, amplitude=50.0, base=100.0, seed=0):
    rng = np.random.default_rng(seed)
    t = T0 + STEP * np.arange(int(days * DAY / STEP), dtype=np.int64)
    season = base + amplitude * np.sin(2 * np.pi * (t % DAY) / DAY)
    x = season[None, :] + rng.normal(0, noise, (n, len(t)))
    return t, x


def window(t, x):
    return Window([(("s", str(i)),) for i in range(len(x))], t, x)


def scores(model, t, x, cols, threshold=4.0, direction="both"):
    w = window(t, x)
    p = model.predict(w, np.asarray(cols))
    return calibrate(x[:, cols], p, threshold=threshold, direction=direction).score


def spike(x, n):
    x[0, -n:] += 40
    return x


def drop(x, n):
    x[0, -n:] = 0
    return x


def dip_at_night(x, n):
    # a value that is normal at the day's peak but 30 % low for the time of day
    x[0, -n:] *= 0.7
    return x


@pytest.mark.parametrize(
    ("name", "inject", "n_anomalous"),
    [("spike", spike, 3), ("drop to zero", drop, 5), ("contextual dip", dip_at_night, 3)],
)
def test_injected_anomaly_scores_at_least_one(name, inject, n_anomalous):
    t, x = make()
    train_t, train_x = t, x.copy()
    model = SeasonalBaseline().fit(window(train_t[:-60], train_x[:, :-60]))
    x = inject(x, n_anomalous)
    s = scores(model, t, x, np.arange(len(t) - n_anomalous, len(t)))
    assert (s[0] >= 1).all(), f"{name}: {s}"


def test_normal_stretch_stays_below_one():
    t, x = make(days=8)
    model = SeasonalBaseline().fit(window(t[: 7 * 1440], x[:, : 7 * 1440]))
    s = scores(model, t, x, np.arange(7 * 1440, 8 * 1440))
    assert np.nanmax(s) < 1.0
    assert np.nanmedian(s) < 0.25


def test_chooses_daily_seasonality_only_when_it_helps():
    t, x = make(n=2)
    rng = np.random.default_rng(1)
    x[1] = 50 + rng.normal(0, 2, len(t))  # no seasonality at all
    model = SeasonalBaseline().fit(window(t, x))
    assert model.period_.tolist() == [DAY, 0]


def test_short_history_uses_no_seasonality_and_warm_up_gives_unknown():
    t, x = make(days=0.5)
    assert SeasonalBaseline().fit(window(t, x)).period_.tolist() == [0]
    short_t, short_x = t[:30], x[:, :30]  # 30 minutes < min_history (1 h)
    model = SeasonalBaseline().fit(window(short_t, short_x))
    assert np.isnan(scores(model, short_t, short_x, [29])).all()


def test_training_outliers_do_not_blind_the_model():
    t, x = make(days=7)
    dirty = x.copy()
    dirty[0, 3 * 1440 : 3 * 1440 + 120] = 0  # a two-hour outage three days ago
    dirty[0, 5 * 1440 : 5 * 1440 + 30] += 500  # and a huge spike
    clean_sigma = SeasonalBaseline().fit(window(t, x)).sigma_[0]
    dirty_sigma = SeasonalBaseline().fit(window(t, dirty)).sigma_[0]
    assert dirty_sigma < 1.2 * clean_sigma


def test_gaps_are_ignored():
    t, x = make(days=7)
    rng = np.random.default_rng(2)
    x[0, rng.random(len(t)) < 0.3] = np.nan
    model = SeasonalBaseline().fit(window(t[:-10], x[:, :-10]))
    assert model.period_[0] == DAY
    x[0, -1] = 500
    assert scores(model, t, x, [len(t) - 1])[0, 0] >= 1


def test_flat_series_scores_zero_until_it_moves():
    t = T0 + STEP * np.arange(3 * 1440, dtype=np.int64)
    x = np.full((1, len(t)), 7.0)
    model = SeasonalBaseline().fit(window(t[:-1], x[:, :-1]))
    assert scores(model, t, x, [len(t) - 1])[0, 0] == 0
    x[0, -1] = 8.0
    assert scores(model, t, x, [len(t) - 1])[0, 0] >= 1


def test_level_shift_is_flagged_then_adopted():
    t, x = make(days=7)
    model = SeasonalBaseline(level_window=3600).fit(window(t[:-180], x[:, :-180]))
    x[0, -180:] += 40  # a lasting level change three hours ago
    s = scores(model, t, x, np.arange(len(t) - 180, len(t)))[0]
    assert (s[:20] >= 1).all()  # flagged when it happens
    assert (s[-30:] < 1).all()  # after the level window, it's the new normal


def test_unknown_series_are_not_scored_and_order_does_not_matter():
    t, x = make(n=3, seed=3)
    model = SeasonalBaseline().fit(window(t, x))
    w = Window([(("s", "2"),), (("s", "new"),), (("s", "0"),)], t, x[[2, 0, 0]])
    p = model.predict(w, np.array([len(t) - 1]))
    assert np.isnan(p.expected[1, 0])
    ref = model.predict(window(t, x), np.array([len(t) - 1]))
    assert p.expected[0, 0] == ref.expected[2, 0] and p.expected[2, 0] == ref.expected[0, 0]


def test_weekly_seasonality_when_history_covers_two_weeks():
    rng = np.random.default_rng(4)
    t = T0 + STEP * np.arange(15 * 1440, dtype=np.int64)
    weekday = ((t // DAY) % 7) < 5
    x = (np.where(weekday, 100.0, 20.0) + rng.normal(0, 2, len(t)))[None, :]
    model = SeasonalBaseline(seasonality="auto").fit(window(t, x))
    assert model.period_[0] == 7 * DAY
    forced = SeasonalBaseline(seasonality="daily").fit(window(t, x))
    assert forced.period_[0] == DAY


def test_vectorized_over_many_series_matches_one_by_one():
    t, x = make(days=3, n=5, seed=5)
    together = SeasonalBaseline().fit(window(t, x))
    for i in range(5):
        alone = SeasonalBaseline().fit(Window([(("s", str(i)),)], t, x[i : i + 1]))
        assert alone.sigma_[0] == pytest.approx(together.sigma_[i])
        assert np.allclose(alone.profile_[0], together.profile_[i], equal_nan=True)


@pytest.mark.parametrize("step", [1, 15, 35, 45, 60, 300, 420, 3600])
def test_any_whole_second_step_fits_and_scores(step):
    t = T0 + step * np.arange(int(3 * DAY / step), dtype=np.int64)
    rng = np.random.default_rng(step)
    x = (100 + 50 * np.sin(2 * np.pi * (t % DAY) / DAY) + rng.normal(0, 2, len(t)))[None, :]
    model = SeasonalBaseline(seasonality="daily").fit(window(t[:-1], x[:, :-1]))
    x[0, -1] += 60
    assert scores(model, t, x, [len(t) - 1])[0, 0] >= 1


@pytest.mark.parametrize("outlier", [1e6, 1e300])
def test_one_huge_value_in_history_does_not_blind_a_mostly_flat_series(outlier):
    t = T0 + STEP * np.arange(3 * 1440, dtype=np.int64)
    rng = np.random.default_rng(7)
    x = np.where(rng.random(len(t)) < 0.05, 1.0, 0.0)[None, :]  # an error count: mostly 0, sometimes 1
    x[0, 1440] = outlier
    model = SeasonalBaseline().fit(window(t[:-1], x[:, :-1]))
    assert np.isfinite(model.scale_).all()
    x[0, -1] = 20.0  # an incident now
    assert scores(model, t, x, [len(t) - 1])[0, 0] >= 1


def test_large_values_keep_full_precision():
    t, x = make(days=3, base=1e10, amplitude=1e9, noise=4.0)
    model = SeasonalBaseline().fit(window(t[: 2 * 1440], x[:, : 2 * 1440]))
    s = scores(model, t, x, np.arange(2 * 1440, 3 * 1440))
    assert np.nanmax(s) < 1.0
