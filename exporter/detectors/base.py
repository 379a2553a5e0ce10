"""The detector contract shared by every model.

Detectors follow scikit-learn conventions: `__init__` only stores parameters, `fit(window)` learns state
(attributes ending in `_`) and returns self. `predict` gives, for chosen columns of a window, the expected
value and a robust scale of the normal deviation from it. Turning those into the shared `anomaly_score`
(0 = as expected, 1 = at the rule's threshold, higher = more anomalous) is post-processing's job, so every
detector's output means the same thing downstream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import numpy as np

from exporter.frame import Window

if TYPE_CHECKING:
    from exporter.reader import SeriesKey


@dataclass(frozen=True)
class Prediction:
    """Per series (rows) and predicted column: expected value and scale. NaN in either = unknown.

    Detectors that judge more than the distance from the expected value (e.g. an IsolationForest over
    the residual's recent context) also give `raw`, their own anomaly measure (higher = more anomalous),
    with `raw_center` (typical) and `raw_threshold` (the value that should map to score 1), per series.
    """

    expected: np.ndarray
    scale: np.ndarray
    raw: np.ndarray | None = None
    raw_center: np.ndarray | None = None
    raw_threshold: np.ndarray | None = None


class Detector(ABC):
    """Base class: fitted state is keyed by series, so a window may order series freely or add new ones."""

    keys_: dict[SeriesKey, int]

    @abstractmethod
    def fit(self, window: Window) -> Self:
        """Learn from the window's history (each series' own rows)."""

    @abstractmethod
    def predict(self, window: Window, columns: np.ndarray) -> Prediction:
        """Expected value and scale for `window.values[:, columns]`, using only data before each column."""

    def fitted_state(self) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        """Fitted state as plain numbers and numeric arrays (no objects), for saving; keys_ excluded.

        Raises NotImplementedError for detectors whose fitted state cannot be saved that way.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def restore_state(
        self, keys: Sequence[SeriesKey], scalars: dict[str, int], arrays: dict[str, np.ndarray]
    ) -> Self:
        """The inverse of fitted_state() on a fresh detector with the same parameters. Raises ValueError
        when the state does not fit (missing or extra names, wrong shapes or types)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be restored")

    def _fitted_rows(self, keys: Sequence[SeriesKey]) -> np.ndarray:
        """Row of each key in the fitted state, -1 for series the model has not seen."""
        if not hasattr(self, "keys_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit() first")
        get = self.keys_.get
        return np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
