"""Property-based tests of the detectors' inputs (hypothesis).

Windows of random shapes (no series, no columns, one column, thousands), steps from 1 s to a day, series
that are noisy, constant, all missing or a jumble of extremes, with gaps, NaN, ±Inf, huge (±1e300,
±1.7e308) and tiny (1e-300, 5e-324) points and random flags, are fitted and predicted by SeasonalBaseline,
RobustZScore and IsolationForestDetector, and scored by RuleModel for every model type. Whatever the data:
nothing raises; an expected value is finite or NaN (unknown), never ±Inf; a scale is finite and ≥ 0, or
NaN; a score is NaN or ≥ 0, and NaN wherever the value is missing; a series the model was not fitted on
is unknown. (A +Inf score is allowed: a value infinitely far out, e.g. a 1e300 step on a flat series.)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import ModelConfig, RuleConfig
from exporter.detectors import Detector, IsolationForestDetector, RobustZScore, SeasonalBaseline
from exporter.detectors.base import Prediction
from exporter.frame import Window
from exporter.model import RuleModel

STEPS = (1, 15, 60, 300, 3600, 86400)
LEVELS = (0.0, 1.0, -3.5, 100.0, 1e10, 1e300, -1e300, 1e-300, 1.7e308)
EXTREMES = (np.nan, np.inf, -np.inf, 1e300, -1e300, 1.7e308, -1.7e308, 1e-300, 5e-324, 0.0, 1e6)
KINDS = ("noise", "constant", "missing", "extremes", "seasonal", "steps")


def _series(draw: st.DrawFn, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One series of a drawn kind around a drawn level (±inf where level + noise leaves the float range)."""
    n_t = len(t)
    kind, level = draw(st.sampled_from(KINDS)), draw(st.sampled_from(LEVELS))
    noise = max(abs(level) * draw(st.sampled_from([0.0, 1e-12, 0.01, 1.0])), 1e-3)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "noise":
            return level + rng.normal(0, noise, n_t)
        if kind == "constant":
            return np.full(n_t, level)
        if kind == "missing":
            return np.full(n_t, np.nan)
        if kind == "extremes":
            return rng.choice(np.array((*EXTREMES, 1.0, 2.0)), n_t)
        if kind == "seasonal":
            return level + noise * (10 * np.sin(2 * np.pi * (t % 86400) / 86400) + rng.normal(0, 1, n_t))
        return level + noise * np.repeat(rng.normal(0, 20, n_t // 300 + 1), 300)[:n_t]  # level shifts


@st.composite
def windows(draw: st.DrawFn, max_series: int = 4, max_len: int = 1500) -> Window:
    step = draw(st.sampled_from(STEPS))
    n = draw(st.integers(0, max_series))
    n_t = draw(st.sampled_from([0, 1, 2, 3, 11]) | st.integers(0, max_len))
    t0 = draw(st.integers(1_500_000_000, 1_900_000_000)) // step * step
    t = t0 + step * np.arange(n_t, dtype=np.int64)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = np.empty((n, n_t))
    for i in range(n):
        x[i] = _series(draw, t, rng)
    if n and n_t:
        gaps = st.lists(st.tuples(st.integers(0, n - 1), st.floats(0, 1), st.floats(0, 1)), max_size=3)
        for row, start, length in draw(gaps):
            a = int(start * n_t)
            x[row, a : a + int(length * n_t) + 1] = np.nan
        points = st.lists(
            st.tuples(st.integers(0, n - 1), st.floats(0, 1), st.sampled_from(EXTREMES)), max_size=6
        )
        for row, at, value in draw(points):
            x[row, min(n_t - 1, int(at * n_t))] = value
    flagged = rng.random((n, n_t)) < draw(st.sampled_from([0.0, 0.01, 0.3])) if draw(st.booleans()) else None
    keys = [(("series", str(i)),) for i in range(n)]
    return Window(keys, t, x, flagged)


@st.composite
def columns(draw: st.DrawFn, n_t: int) -> np.ndarray:
    """Columns to predict: the newest few (as live), a stretch (as a backtest), or any sorted subset."""
    if n_t == 0:
        return np.array([], dtype=np.int64)
    how = draw(st.sampled_from(["newest", "stretch", "any", "none"]))
    if how == "newest":
        return np.arange(max(0, n_t - draw(st.integers(1, 60))), n_t)
    if how == "stretch":
        a = draw(st.integers(0, n_t - 1))
        return np.arange(a, draw(st.integers(a, n_t - 1)) + 1)
    if how == "any":
        return np.array(sorted(draw(st.sets(st.integers(0, n_t - 1), max_size=10))), dtype=np.int64)
    return np.array([], dtype=np.int64)


@contextmanager
def quiet() -> Iterator[None]:
    """numpy may warn about overflow on such data; what matters here is what comes out."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def with_new_series(window: Window) -> Window:
    """The same window with its series in reverse order and one series the model has never seen."""
    n_t = len(window.timestamps)
    values = np.vstack([window.values[::-1], np.linspace(0, 1, n_t)[None, :]])
    return Window([*window.keys[::-1], (("series", "new"),)], window.timestamps, values)


def assert_prediction_is_sane(p: Prediction, shape: tuple[int, int]) -> None:
    assert p.expected.shape == shape and p.scale.shape == shape
    assert not np.isinf(p.expected).any(), p.expected[np.isinf(p.expected)]
    assert not np.isinf(p.scale).any(), p.scale[np.isinf(p.scale)]
    assert not (p.scale < 0).any(), p.scale[p.scale < 0]
    if p.raw is not None:
        assert p.raw.shape == shape and not np.isinf(p.raw).any()


DETECTORS: dict[str, Any] = {
    "seasonal-auto": lambda: SeasonalBaseline(),
    "seasonal-daily": lambda: SeasonalBaseline(seasonality="daily", level_window=600, min_history=0),
    "seasonal-weekly": lambda: SeasonalBaseline(seasonality="weekly"),
    "seasonal-none": lambda: SeasonalBaseline(seasonality="none", level_window=60, min_history=60),
    "mad": lambda: RobustZScore(window=1800, min_history=0),
    "iforest": lambda: IsolationForestDetector(SeasonalBaseline(min_history=0), n_estimators=10),
    "iforest-per-series": lambda: IsolationForestDetector(per_series=True, n_estimators=5, max_samples=64),
}
FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", list(DETECTORS))
@FAST
@given(data=st.data())
def test_detectors_fit_and_predict_anything_without_inf_or_negative_scales(
    name: str, data: st.DataObject
) -> None:
    window = data.draw(windows())
    cols = data.draw(columns(len(window.timestamps)))
    with quiet():
        detector: Detector = DETECTORS[name]().fit(window)
        p = detector.predict(window, cols)
        assert_prediction_is_sane(p, (len(window.keys), len(cols)))
        q = detector.predict(with_new_series(window), cols)
    assert_prediction_is_sane(q, (len(window.keys) + 1, len(cols)))
    assert np.isnan(q.expected[-1]).all() and np.isnan(q.scale[-1]).all()  # never seen: unknown
    np.testing.assert_array_equal(q.expected[:-1], p.expected[::-1])  # keyed by series, not by row


MODELS = ("seasonal", "mad", "iforest")


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_rule_model_scores_are_nan_or_non_negative(model: str, data: st.DataObject) -> None:
    window = data.draw(windows(max_len=1200 if model == "iforest" else 1500))
    step = int(window.step) or 60
    rule = RuleConfig(
        name="r",
        query="q",
        step=step,
        history=max(10 * step, step * len(window.timestamps)),
        z_threshold=data.draw(st.sampled_from([0.5, 4.0, 1e6])),
        direction=data.draw(st.sampled_from(["up", "down", "both"])),
        min_abs_deviation=data.draw(st.sampled_from([0.0, 1.0, 1e300])),
        min_rel_deviation=data.draw(st.sampled_from([0.0, 0.1])),
        model=ModelConfig(
            type=model,
            seasonality=data.draw(st.sampled_from(["auto", "none", "daily", "weekly"])),
            level_window=float(data.draw(st.sampled_from([60, 3600]))),
            min_history=float(data.draw(st.sampled_from([0, 3600]))),
            exclude_anomalies=data.draw(st.booleans()),
        ),
    )
    cols = data.draw(columns(len(window.timestamps)))
    with quiet():
        fitted = RuleModel(rule).fit(window)
        scored = fitted.score(window, cols)
        grown = with_new_series(window)
        refitted = fitted.fit(grown)  # as live: the next fit gets the previous model, and new series
        rescored = refitted.score(grown, cols)
        again = refitted.score(grown, cols)
    for s in (scored, rescored):
        assert not (s.score < 0).any(), s.score[s.score < 0]
        assert not np.isinf(s.expected).any(), s.expected[np.isinf(s.expected)]
    assert np.isnan(scored.score[np.isnan(window.values[:, cols])]).all()  # missing value: no score
    np.testing.assert_array_equal(rescored.score, again.score)  # the same data scores the same
