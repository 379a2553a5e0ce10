"""Detectors: one model per module, all following the contract in `base`."""

from __future__ import annotations

from exporter.config import ModelConfig
from exporter.detectors.base import Detector, Prediction
from exporter.detectors.seasonal import SeasonalBaseline


def build_detector(model: ModelConfig) -> Detector:
    """A fresh, unfitted detector for a rule's `model:` settings."""
    if model.type == "seasonal":
        return SeasonalBaseline(
            seasonality=model.seasonality, level_window=model.level_window, min_history=model.min_history
        )
    raise ValueError(f"unknown model type {model.type!r}")


__all__ = ["Detector", "Prediction", "SeasonalBaseline", "build_detector"]
