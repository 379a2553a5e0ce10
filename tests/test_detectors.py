"""Every detector, through RuleModel (detector + calibration), on synthetic series with injected anomalies."""

import numpy as np
import pytest

from exporter.config import ModelConfig, RuleConfig
from exporter.detectors import IsolationForestDetector, RobustZScore, SeasonalBaseline
from exporter.frame import Window
from exporter.model import RuleModel

DAY = 86400
T0 = 1_750_000_000 // DAY * DAY
MODELS = ["seasonal", "iforest", "mad"]


def series(n=3, days=4, seed=0, season=True):
    rng = np.random.default_rng(seed)
    t = T0 + 60 * np.arange(days * 1440, dtype=np.int64)
    base = 100 + (40 * np.sin(2 * np.pi * (t % DAY) / DAY) if season else 0)
    return t, base + rng.normal(0, 2, (n, len(t)))


def fit_score(model, t, x, train_upto, cols, **rule_kw):
    keys = [(("s", str(i)),) for i in range(len(x))]
    rule = RuleConfig(name="r", query="-", model=ModelConfig(type=model), **rule_kw)
    fitted = RuleModel(rule).fit(Window(keys, t[:train_upto], x[:, :train_upto]))
    return fitted.score(Window(keys, t, x), np.asarray(cols))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    ("kind", "inject"),
    [
        ("spike", lambda x: x.__setitem__((0, slice(-3, None)), x[0, -3:] + 60)),
        ("drop to zero", lambda x: x.__setitem__((0, slice(-3, None)), 0.0)),
    ],
)
def test_injected_anomaly_reaches_one_and_others_stay_normal(model, kind, inject):
    t, x = series(season=model != "mad")
    inject(x)
    s = fit_score(model, t, x, len(t) - 120, np.arange(len(t) - 3, len(t))).score
    assert (s[0] >= 1).all(), (model, kind, s[0])
    assert (s[1:] < 1).all(), (model, kind, s[1:])


@pytest.mark.parametrize("model", MODELS)
def test_nan_gaps_flat_and_short_series(model):
    t, x = series(n=4)
    x[0, ::3] = np.nan  # a third of the points missing
    x[1, -200:-100] = np.nan  # a gap just before now
    x[2] = 7.0  # flat
    x[3, : len(t) - 30] = np.nan  # only 30 minutes of data: warm-up
    s = fit_score(model, t, x, len(t) - 10, np.arange(len(t) - 10, len(t)))
    assert not np.isnan(s.score[0, ~np.isnan(x[0, -10:])]).any()
    assert np.isnan(s.score[0, np.isnan(x[0, -10:])]).all()  # no value: no score (never 0)
    assert (s.score[2] == 0).all() if model != "iforest" else (s.score[2] < 0.5).all()  # flat: as expected
    assert np.isnan(s.score[3]).all() and np.isnan(s.upper[3]).all()  # unknown, not normal


@pytest.mark.parametrize("model", MODELS)
def test_same_data_same_scores(model):
    t, x = series()
    a = fit_score(model, t, x, len(t) - 60, np.arange(len(t) - 60, len(t))).score
    b = fit_score(model, t, x, len(t) - 60, np.arange(len(t) - 60, len(t))).score
    assert np.array_equal(a, b, equal_nan=True)


def test_iforest_sees_a_burst_of_moderate_deviations_the_band_misses():
    """A variance change: each point stays near the band, the recent context is what is unusual.

    Counted over four draws: on a single one the forest may flag no more points than the band does."""
    band_hits = forest_hits = 0
    for seed in range(3, 7):
        t, x = series(n=2, days=5, seed=seed)
        rng = np.random.default_rng(seed + 6)
        x[0, -30:] = x[0, -60:-30] + rng.choice([-1, 1], 30) * 6.5  # ±3.2σ swings, 30 minutes long
        band = fit_score("seasonal", t, x, len(t) - 60, np.arange(len(t) - 30, len(t))).score
        forest = fit_score("iforest", t, x, len(t) - 60, np.arange(len(t) - 30, len(t))).score
        band_hits, forest_hits = band_hits + (band[0] >= 1).sum(), forest_hits + (forest[0] >= 1).sum()
        assert (forest[1] < 1).all()
    assert band_hits < forest_hits, (band_hits, forest_hits)


def test_iforest_scores_a_series_it_has_never_seen_without_a_refit():
    t, x = series(n=3)
    keys = [(("s", str(i)),) for i in range(3)]
    rule = RuleConfig(name="r", query="-", model=ModelConfig(type="iforest"))
    fitted = RuleModel(rule).fit(Window(keys[:2], t, x[:2]))
    p = fitted.detector.predict(Window(keys, t, x), np.array([len(t) - 1]))
    assert np.isnan(p.expected[2, 0])  # the baseline needs the series' own history...
    assert isinstance(fitted.detector, IsolationForestDetector)


def test_per_series_forests_option():
    t, x = series(n=2)
    x[0, -3:] += 60
    rule = RuleConfig(name="r", query="-", model=ModelConfig(type="iforest", per_series=True))
    keys = [(("s", str(i)),) for i in range(2)]
    fitted = RuleModel(rule).fit(Window(keys, t[:-60], x[:, :-60]))
    assert len(fitted.detector.forests_) == 2
    s = fitted.score(Window(keys, t, x), np.arange(len(t) - 3, len(t))).score
    assert (s[0] >= 1).all() and (s[1] < 1).all()


def test_anomalies_judged_earlier_are_kept_out_of_the_next_fit():
    t, x = series(n=1, days=3)
    x[0, -600:-300] = 0  # a five-hour outage, flagged as it was scored
    flagged = np.zeros_like(x, dtype=bool)
    flagged[0, -600:-300] = True
    keys = [(("s", "0"),)]
    rule = RuleConfig(name="r", query="-")
    with_flags = RuleModel(rule).fit(Window(keys, t, x, flagged))
    without = RuleModel(replace_model(rule, exclude_anomalies=False)).fit(Window(keys, t, x, flagged))
    assert with_flags.detector.scale_.max() < without.detector.scale_.max()


def replace_model(rule, **kw):
    from dataclasses import replace

    return replace(rule, model=replace(rule.model, **kw))


def test_detectors_follow_scikit_learn_conventions():
    for det in (SeasonalBaseline(), RobustZScore(), IsolationForestDetector()):
        assert not [k for k in vars(det) if k.endswith("_")]  # nothing learned before fit
    t, x = series(n=1, days=2)
    w = Window([(("s", "0"),)], t, x)
    assert SeasonalBaseline().fit(w).keys_  # fit returns self


def test_iforest_stays_quiet_on_clean_days_and_still_flags_an_injected_spike():
    """Calibration: over two days of scoring clean seasonal noise, the forest must not reach 1 by itself
    (scored in-sample at the 0.001 quantile, ~2 % of the points did); a real spike still does."""
    t, x = series(n=3, days=6, seed=5)
    train, cols = 4 * 1440, np.arange(4 * 1440, 6 * 1440)
    spike = slice(len(t) - 30, len(t) - 27)
    x[0, spike] += 60
    s = fit_score("iforest", t, x, train, cols).score
    outside = np.ones_like(s, dtype=bool)
    outside[0, spike.start - cols[0] : spike.stop - cols[0]] = False
    assert (s[0, spike.start - cols[0] : spike.stop - cols[0]] >= 1).all()
    assert (s[outside] < 1).all(), np.argwhere(s >= 1)


# -- weekday level jumps (seasonal baseline) ---------------------------------------------------------------

MONDAY = (T0 // DAY + 1) * DAY  # T0 is a Sunday
KEY = [(("s", "0"),)]
NOISE = 2.0


def weekend_series(days=15, seed=0):
    """Daily cycle, noise σ=2 and quieter weekends (×0.7: a 30-unit step at UTC midnight), from a Monday."""
    rng = np.random.default_rng(seed)
    t = MONDAY + 60 * np.arange(days * 1440, dtype=np.int64)
    weekend = (t // DAY + 3) % 7 >= 5
    x = (100 + 40 * np.sin(2 * np.pi * (t % DAY) / DAY)) * np.where(weekend, 0.7, 1.0)
    return t, (x + rng.normal(0, NOISE, len(t)))[None, :]


def fit_before(t, x, col, days=8.0, model=None):
    """Fit on `days` of history ending just before column `col` (after `model`, if given, as live)."""
    lo = max(0, col - int(days * 1440))
    return (model or RuleModel(RuleConfig(name="r", query="-"))).fit(Window(KEY, t[lo:col], x[:, lo:col]))


def scores_from(fitted, t, x, col, minutes=60):
    return fitted.score(Window(KEY, t, x), np.arange(col, col + minutes)).score[0]


@pytest.mark.parametrize("day", [12, 14])  # the second Saturday and Monday
def test_a_weekend_seen_last_week_does_not_page_at_its_midnight_steps(day):
    t, x = weekend_series()
    col = day * 1440
    fitted = fit_before(t, x, col)
    s = scores_from(fitted, t, x, col)
    assert np.nanmax(s) < 1, np.nanmax(s)
    # ...because the expected value steps with it, not because last week's steps widened the band
    band = fitted.score(Window(KEY, t, x), np.array([col]))
    half_width = (band.upper - band.lower)[0, 0] / 2
    assert half_width < fitted.rule.z_threshold * 2 * NOISE, half_width  # within 2x the noise σ


@pytest.mark.parametrize("hour", [0, 12])
def test_a_midweek_level_shift_of_the_same_size_still_pages(hour):
    t, x = weekend_series()
    col = 9 * 1440 + hour * 60  # Wednesday of the second week: no jump was learned for it
    x[0, col:] *= 0.7
    s = scores_from(fit_before(t, x, col), t, x, col, minutes=20)
    assert (s >= 1).all(), s


def test_a_week_of_history_keeps_the_jump_its_previous_fit_saw():
    """With exactly 7 days, the fit at Saturday midnight starts at last Saturday's midnight and cannot see
    the step there; the fit an hour earlier could, and lends it."""
    t, x = weekend_series()
    col = 12 * 1440
    alone = fit_before(t, x, col, days=7)
    chained = fit_before(t, x, col, days=7, model=fit_before(t, x, col - 60, days=7))
    assert np.nanmax(scores_from(alone, t, x, col)) >= 1
    assert np.nanmax(scores_from(chained, t, x, col)) < 1


@pytest.mark.parametrize(
    ("what", "start", "length"),
    [
        ("a day-long incident from Wednesday 06:00", 2 * 1440 + 360, 1440),
        ("a lasting shift on Thursday at noon", 3 * 1440 + 720, None),
    ],
)
def test_level_changes_away_from_midnight_do_not_page_at_next_weeks_midnights(what, start, length):
    """Only steps at midnight teach weekday jumps: last Wednesday's incident or Thursday's shift don't."""
    t, x = weekend_series()
    x[0, start : start + length if length else None] -= 30
    for day in range(8, 15):
        s = scores_from(fit_before(t, x, day * 1440), t, x, day * 1440)
        assert np.nanmax(s) < 1, (what, day, np.nanmax(s))


def test_iforest_baseline_also_keeps_the_jump_its_previous_fit_saw():
    t, x = weekend_series()
    col = 12 * 1440
    rule = RuleConfig(name="r", query="-", model=ModelConfig(type="iforest"))
    alone = fit_before(t, x, col, days=7, model=RuleModel(rule))
    chained = fit_before(t, x, col, days=7, model=fit_before(t, x, col - 60, days=7, model=RuleModel(rule)))
    assert alone.detector.baseline_.jumps_[0, 5] == 0  # Saturday's step is at this window's very start
    assert chained.detector.baseline_.jumps_[0, 5] < -20


# -- found by tests/test_detector_properties.py: each raised or returned ±inf before ----------------------

KEYS2 = [(("s", "0"),), (("s", "1"),)]


@pytest.mark.parametrize("model", MODELS)
def test_a_window_with_series_but_no_columns_fits_to_unknown(model):
    rule = RuleConfig(name="r", query="-", model=ModelConfig(type=model))
    empty = Window(KEYS2, np.array([], dtype=np.int64), np.empty((2, 0)))
    fitted = RuleModel(rule).fit(empty)  # ZeroDivisionError before
    t, x = series(n=2, days=1)
    s = fitted.score(Window(KEYS2, t, x), np.arange(len(t) - 3, len(t)))
    assert np.isnan(s.score).all() and np.isnan(s.expected).all()


@pytest.mark.parametrize("model", MODELS)
def test_a_model_fitted_on_no_series_predicts_unknown_and_refits_on_new_ones(model):
    """A rule whose query returned nothing at its first fit (IndexError in score and refit before)."""
    rule = RuleConfig(name="r", query="-", model=ModelConfig(type=model))
    t, x = series(n=2, days=2)
    fitted = RuleModel(rule).fit(Window([], t, np.empty((0, len(t)))))
    s = fitted.score(Window(KEYS2, t, x), np.arange(len(t) - 3, len(t)))
    assert np.isnan(s.score).all()
    refitted = fitted.fit(Window(KEYS2, t[:-3], x[:, :-3]))
    assert (refitted.score(Window(KEYS2, t, x), np.arange(len(t) - 3, len(t))).score < 1).all()


@pytest.mark.parametrize("model", MODELS)
def test_infinities_in_a_window_are_missing_as_in_the_frame(model):
    """The live frame stores ±Inf as missing; a backtest passes raw values: both must fit the same model
    (expected ±inf and infinite scales before)."""
    t, x = series(n=2, days=2)
    x[0, ::97], x[1, 5::89], x[0, -5] = np.inf, -np.inf, np.inf
    cols = np.arange(len(t) - 10, len(t))
    raw = fit_score(model, t, x, len(t) - 10, cols)
    as_missing = fit_score(model, t, np.where(np.isinf(x), np.nan, x), len(t) - 10, cols)
    np.testing.assert_array_equal(raw.expected, as_missing.expected)
    np.testing.assert_array_equal(raw.upper, as_missing.upper)
    assert np.isfinite(raw.expected).all()
    assert raw.score[0, 5] == np.inf  # the Inf value itself is infinitely far out, as calibrate says


def test_sums_beyond_the_float_range_are_unknown_not_infinite():
    t, x = series(n=2, days=1)
    x[0] = np.where(np.arange(len(t)) % 2, 1.7e308, -1.7e308)  # residuals of ±3.4e308 overflow
    x[1, -30:] = 1.7e308  # a profile near 0 plus a level of 1.7e308 is fine; nothing may become ±inf
    p = (
        SeasonalBaseline(min_history=0)
        .fit(Window(KEYS2, t, x))
        .predict(Window(KEYS2, t, x), np.arange(len(t) - 5, len(t)))
    )
    assert not np.isinf(p.expected).any() and not np.isinf(p.scale).any()
    assert np.isnan(p.scale[0]).all()  # its spread overflowed: unknown


@pytest.mark.parametrize("big", [1e9, 1e15, 1e160])
def test_one_huge_residual_does_not_spoil_the_forests_later_features(big):
    """The rolling means and spreads come from running sums: a 1e9 residual made every later spread
    wrong by up to 1.8 (rounding in the sum of squares), a 1e160 one made them NaN (overflow)."""
    from exporter.detectors.iforest import features

    z = np.random.default_rng(0).normal(size=(1, 400))
    t = 60 * np.arange(400)
    spiked, missing = z.copy(), z.copy()
    spiked[0, 10], missing[0, 10] = big, np.nan
    later = slice(10 + 60, None)  # windows (5, 15, 60) that no longer hold the spike
    with np.errstate(over="ignore", invalid="ignore"):
        a = features(spiked, t, (5, 15, 60))[:, later]
    np.testing.assert_allclose(a, features(missing, t, (5, 15, 60))[:, later], atol=1e-6)


@pytest.mark.parametrize("model", ["seasonal", "iforest"])
@pytest.mark.parametrize("age_hours", [3, 8, 20])
def test_a_series_younger_than_its_season_does_not_page_on_normal_data(model, age_hours):
    """A new pod's series, hours old in a rule whose other series have days of history: the rule has a
    daily profile, but this series has seen each time of day at most once. It used to learn its own noise
    as a "profile" and then meet hours it had never seen at every refit: paged for most of its first day.
    Now it is modelled without a profile until it spans two days, and a real spike still pages."""
    t, x = series(n=6, days=4, seed=3)
    end = len(t) - 60  # fit up to here, score the next hour
    young = x.copy()
    young[0, : end - age_hours * 60] = np.nan  # born age_hours before the fit
    scored = fit_score(model, t, young, end, np.arange(end, len(t)))
    assert (scored.score[0] < 1).all(), f"max score {np.nanmax(scored.score[0]):.2f} on normal data"
    assert (scored.score[1:] < 1).all()
    young[0, -3:] += 60  # a spike of 30 sigma in the same hour
    assert fit_score(model, t, young, end, [len(t) - 1]).score[0, 0] >= 1
