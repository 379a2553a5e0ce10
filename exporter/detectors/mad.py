"""Robust z-score: distance from the median of the recent past, in MADs. The simple threshold method."""

from __future__ import annotations

from exporter.detectors.seasonal import SeasonalBaseline


class RobustZScore(SeasonalBaseline):
    """Expected value = median of the trailing `window`; scale = MAD-based sigma of the training residuals.

    This is the seasonal baseline without a seasonal profile, so it shares its vectorized fitting, gap
    handling and flat-series fallbacks; it suits metrics with no daily rhythm, or very short histories.
    """

    def __init__(self, window: float = 3600.0, min_history: float = 3600.0) -> None:
        super().__init__(seasonality="none", level_window=window, min_history=min_history)
        self.window = window
