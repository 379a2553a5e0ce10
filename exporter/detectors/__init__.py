"""Detectors: one model per module, all following the contract in `base`."""

from __future__ import annotations

from exporter.config import ModelConfig
from exporter.detectors.base import Detector, Prediction
from exporter.detectors.iforest import IsolationForestDetector
from exporter.detectors.mad import RobustZScore
from exporter.detectors.seasonal import SeasonalBaseline


def build_detector(model: ModelConfig) -> Detector:
    """A fresh, unfitted detector for a rule's `model:` settings."""
    baseline = SeasonalBaseline(
        seasonality=model.seasonality, level_window=model.level_window, min_history=model.min_history
    )
    if model.type == "seasonal":
        return baseline
    if model.type == "iforest":
        return IsolationForestDetector(
            baseline, contamination=model.contamination, per_series=model.per_series
        )
    if model.type == "mad":
        return RobustZScore(window=model.level_window, min_history=model.min_history)
    raise ValueError(f"unknown model type {model.type!r}")


__all__ = [
    "Detector",
    "IsolationForestDetector",
    "Prediction",
    "RobustZScore",
    "SeasonalBaseline",
    "build_detector",
]
