"""A rule's model: its detector plus calibration and the anomaly-exclusion policy.

The live loop (pipeline) and the backtest both go through this class, so a backtest shows exactly what
the exporter would have published.
"""

from __future__ import annotations

import numpy as np

from exporter.config import RuleConfig
from exporter.detectors import Detector, IsolationForestDetector, SeasonalBaseline, build_detector
from exporter.frame import Window
from exporter.postprocess import Scored, calibrate

MAX_EXCLUDED_SHARE = 0.25  # beyond this, a series' flagged points are a new normal, not anomalies to hide
FOREST_RETRAIN = 86400  # a pooled IsolationForest is refitted daily; the baseline under it every `retrain`


class RuleModel:
    """Fit on a window (leaving out points judged anomalous), then score chosen columns of a window."""

    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.detector: Detector | None = None
        self.fitted_at = float("nan")  # timestamp of the newest column of the window it was fitted on

    @property
    def fitted(self) -> bool:
        return self.detector is not None

    def fit(self, window: Window) -> RuleModel:
        """Return a new fitted RuleModel (self is left as it was, so scoring can go on meanwhile)."""
        training = window.hiding_flagged(MAX_EXCLUDED_SHARE) if self.rule.model.exclude_anomalies else window
        fitted = RuleModel(self.rule)
        fitted.fitted_at = float(window.timestamps[-1]) if len(window.timestamps) else float("nan")
        detector = build_detector(self.rule.model)
        previous = self.detector
        if isinstance(detector, IsolationForestDetector) and isinstance(previous, IsolationForestDetector):
            age = int(window.timestamps[-1]) - previous.forest_time_ if len(window.timestamps) else None
            recent = age is not None and age < FOREST_RETRAIN
            fitted.detector = detector.fit(training, reuse=previous if recent else None, previous=previous)
        elif isinstance(detector, SeasonalBaseline) and isinstance(previous, SeasonalBaseline):
            fitted.detector = detector.fit(training, previous=previous)
        else:
            fitted.detector = detector.fit(training)
        return fitted

    def score(self, window: Window, columns: np.ndarray) -> Scored:
        """Scores for `window.values[:, columns]`, each using only the data before it."""
        if self.detector is None:
            raise RuntimeError("RuleModel.score() before fit()")
        r = self.rule
        columns = np.asarray(columns, dtype=np.int64)
        return calibrate(
            window.cols(columns),
            self.detector.predict(window, columns),
            threshold=r.z_threshold,
            direction=r.direction,
            min_abs_deviation=r.min_abs_deviation,
            min_rel_deviation=r.min_rel_deviation,
        )
