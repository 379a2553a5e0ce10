import numpy as np
import pytest

from exporter.detectors.base import Prediction
from exporter.postprocess import calibrate

P = Prediction(expected=np.array([[100.0, 100.0, 100.0, 100.0]]), scale=np.array([[2.0, 2.0, 2.0, 2.0]]))
V = np.array([[100.0, 108.0, 92.0, 104.0]])


@pytest.mark.parametrize(
    ("direction", "scores"),
    [("both", [0.0, 1.0, 1.0, 0.5]), ("up", [0.0, 1.0, 0.0, 0.5]), ("down", [0.0, 0.0, 1.0, 0.0])],
)
def test_direction(direction, scores):
    s = calibrate(V, P, threshold=4, direction=direction)
    assert s.score[0].tolist() == scores
    assert s.lower[0].tolist() == [92.0] * 4 and s.upper[0].tolist() == [108.0] * 4


def test_min_abs_and_rel_deviation_widen_the_band():
    assert calibrate(V, P, threshold=4, min_abs_deviation=16).score[0].tolist() == [0.0, 0.5, 0.5, 0.25]
    s = calibrate(V, P, threshold=4, min_rel_deviation=0.2)  # 20 % of 100
    assert s.score[0].tolist() == [0.0, 0.4, 0.4, 0.2] and s.upper[0, 0] == 120.0


def test_unknown_stays_unknown():
    p = Prediction(expected=np.array([[np.nan, 1.0]]), scale=np.array([[1.0, np.nan]]))
    s = calibrate(np.array([[1.0, 1.0]]), p, threshold=3)
    assert np.isnan(s.score).all()
    s = calibrate(np.array([[np.nan]]), Prediction(np.array([[1.0]]), np.array([[1.0]])), threshold=3)
    assert np.isnan(s.score).all()


def test_flat_series_on_its_value_scores_zero_and_any_move_is_infinite():
    p = Prediction(expected=np.array([[5.0, 5.0]]), scale=np.array([[0.0, 0.0]]))
    s = calibrate(np.array([[5.0, 6.0]]), p, threshold=4)
    assert s.score[0].tolist() == [0.0, np.inf]


def test_infinite_values_score_infinite_not_nan():
    s = calibrate(np.array([[np.inf]]), Prediction(np.array([[1.0]]), np.array([[1.0]])), threshold=3)
    assert s.score[0, 0] == np.inf


def test_bad_direction_is_named():
    with pytest.raises(ValueError, match="sideways"):
        calibrate(V, P, threshold=4, direction="sideways")
