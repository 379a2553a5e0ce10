"""The in-memory time × series matrix of one rule: a bounded history on a fixed step grid."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from exporter.reader import RangeResult, SeriesKey


_MERGE_ROWS = 512  # rows written per block by merge(): bounds its temporary copies


@dataclass(frozen=True)
class Window:
    """Read-only view for detectors: `values[i, j]` is series `keys[i]` at `timestamps[j]` (NaN: no data)."""

    keys: Sequence[SeriesKey]
    timestamps: np.ndarray  # int64 seconds, evenly spaced by `step`
    values: np.ndarray  # float64, shape (len(keys), len(timestamps))
    flagged: np.ndarray | None = None  # bool, same shape: points judged anomalous when they were scored

    @property
    def step(self) -> int:
        return int(self.timestamps[1] - self.timestamps[0]) if len(self.timestamps) > 1 else 0


class Admitter:
    """`keep` callback of one incremental query: see SeriesFrame.admitter."""

    def __init__(self, frame: SeriesFrame, owns: Callable[[SeriesKey], bool] | None) -> None:
        self._frame = frame  # looked up live: drop_absent may run while the query is in flight
        self._room = frame.max_series - len(frame)
        self._owns = owns
        self._pending: set[SeriesKey] = set()
        self.over_cap = 0  # new series rejected because the frame is full (not those of other shards)

    def __call__(self, key: SeriesKey) -> bool:
        if key in self._frame or key in self._pending:
            return True
        if self._owns is not None and not self._owns(key):
            return False  # another replica's series: never stored here, and not "dropped" either
        if self._room <= 0:
            self.over_cap += 1
            return False
        self._room -= 1
        self._pending.add(key)
        return True


class SeriesFrame:
    """Bounded per-rule history: rows are series (at most `max_series`), columns the step grid (`capacity`).

    Appending new columns is amortised O(new data): the buffer keeps slack columns and only shifts the kept
    history to the front when the slack is used up, instead of copying the whole matrix every cycle.
    Not thread-safe: the owner serialises access.
    """

    def __init__(self, step: int, capacity: int, max_series: int) -> None:
        if step < 1 or capacity < 2 or max_series < 1:
            raise ValueError("step, capacity and max_series must be positive")
        self.step = step
        self.capacity = capacity
        self.max_series = max_series
        self.keys: list[SeriesKey] = []
        self._index: dict[SeriesKey, int] = {}
        self._slack = max(16, capacity // 8)
        self._buf = np.full((0, capacity + self._slack), np.nan)
        self._flags = np.zeros((0, capacity + self._slack), dtype=bool)  # judged anomalous when scored
        self._lo = 0  # first used column in _buf
        self._hi = 0  # one past the last used column
        self._t0 = 0  # timestamp of column _lo

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: SeriesKey) -> bool:
        return key in self._index

    @property
    def empty(self) -> bool:
        return self._hi == self._lo

    @property
    def first_timestamp(self) -> int | None:
        return None if self.empty else self._t0

    @property
    def last_timestamp(self) -> int | None:
        return None if self.empty else self._t0 + (self._hi - self._lo - 1) * self.step

    def window(self, copy: bool = False) -> Window:
        """All kept history. With copy=True the result stays valid while the frame keeps changing."""
        n_cols = self._hi - self._lo
        values = self._buf[: len(self.keys), self._lo : self._hi]
        flagged = self._flags[: len(self.keys), self._lo : self._hi]
        timestamps = self._t0 + self.step * np.arange(n_cols, dtype=np.int64)
        if copy:
            return Window(tuple(self.keys), timestamps, values.copy(), flagged.copy())
        return Window(self.keys, timestamps, values, flagged)

    def flag(self, timestamp: int, flagged: np.ndarray) -> None:
        """Record which series were judged anomalous at `timestamp` (rows as in window().keys)."""
        last = self.last_timestamp
        if last is None or timestamp > last or timestamp < self._t0:
            return
        col = self._lo + (timestamp - self._t0) // self.step
        self._flags[: len(flagged), col] = flagged

    # -- admission -------------------------------------------------------------------------------
    def admitter(self, owns: Callable[[SeriesKey], bool] | None = None) -> Admitter:
        """A `keep` callback for the reader: known series, plus new ones (that `owns` accepts) while there
        is room. Its `over_cap` counts the new series turned away for lack of room only."""
        return Admitter(self, owns)

    # -- writing ---------------------------------------------------------------------------------
    def merge(self, result: RangeResult) -> int:
        """Write a query result into the frame; newer data overwrites older. Returns the number of new series.

        Rows beyond `max_series` are not added (the caller's `keep` should already have rejected them).
        """
        if len(result.timestamps) == 0:
            return 0
        first, last = int(result.timestamps[0]), int(result.timestamps[-1])
        if (first - (self._t0 if not self.empty else first)) % self.step:
            raise ValueError("result is not on the frame's step grid")
        rows, src, added = self._rows_for(result.keys)
        if self.empty:
            self._t0, self._lo, self._hi = first, 0, 0
        self._extend_to(last)
        if last < self._t0:
            return added  # entirely older than what we keep
        # Columns of the result that fall inside the kept range.
        start_col = (first - self._t0) // self.step
        skip = max(0, -start_col)
        dest = self._lo + start_col + skip
        width = result.values.shape[1] - skip
        # In blocks of rows, so a 10,000-series history load never holds extra full-size copies.
        for lo in range(0, len(rows), _MERGE_ROWS):
            r, i = rows[lo : lo + _MERGE_ROWS], src[lo : lo + _MERGE_ROWS]
            block = result.values[i, skip:]  # a copy of this block only
            block[np.isinf(block)] = np.nan  # ±Inf (x/0, histogram_quantile) carries no level
            if r[-1] - r[0] == len(r) - 1 and r == list(range(r[0], r[-1] + 1)):
                self._buf[r[0] : r[-1] + 1, dest : dest + width] = block  # contiguous rows: a plain slice
            else:
                self._buf[np.asarray(r)[:, None], dest + np.arange(width)] = block
        return added

    def _rows_for(self, keys: Sequence[SeriesKey]) -> tuple[list[int], list[int], int]:
        rows: list[int] = []
        src: list[int] = []
        added = 0
        for i, key in enumerate(keys):
            row = self._index.get(key)
            if row is None:
                if len(self.keys) >= self.max_series:
                    continue
                row = len(self.keys)
                self._index[key] = row
                self.keys.append(key)
                added += 1
            rows.append(row)
            src.append(i)
        if len(self.keys) > self._buf.shape[0]:
            grow = min(self.max_series, max(len(self.keys), 2 * self._buf.shape[0]))
            old_rows, cols = self._buf.shape
            buf = np.empty((grow, cols))  # one new array (no vstack temporaries): old rows, then NaN
            buf[:old_rows] = self._buf
            buf[old_rows:] = np.nan
            flags = np.zeros((grow, cols), dtype=bool)
            flags[:old_rows] = self._flags
            self._buf, self._flags = buf, flags
        return rows, src, added

    def _extend_to(self, last: int) -> None:
        """Make column `last` exist, dropping the oldest columns beyond `capacity`."""
        cur_last = self._t0 + (self._hi - self._lo - 1) * self.step  # t0 - step when empty
        new_cols = (last - cur_last) // self.step
        if new_cols <= 0:
            return
        if new_cols >= self.capacity:  # a jump longer than the whole history: start over
            self._buf[:] = np.nan
            self._flags[:] = False
            self._t0, self._lo, self._hi = last - (self.capacity - 1) * self.step, 0, self.capacity
            return
        if self._hi + new_cols > self._buf.shape[1]:
            keep = min(self._hi - self._lo, self.capacity - new_cols)
            self._buf[:, :keep] = self._buf[:, self._hi - keep : self._hi]
            self._buf[:, keep:] = np.nan
            self._flags[:, :keep] = self._flags[:, self._hi - keep : self._hi]
            self._flags[:, keep:] = False
            self._t0 += (self._hi - self._lo - keep) * self.step
            self._lo, self._hi = 0, keep
        self._buf[:, self._hi : self._hi + new_cols] = np.nan
        self._flags[:, self._hi : self._hi + new_cols] = False
        self._hi += new_cols
        if self._hi - self._lo > self.capacity:
            drop = self._hi - self._lo - self.capacity
            self._lo += drop
            self._t0 += drop * self.step

    def drop_absent(self, recent: int | None = None) -> int:
        """Forget series with no data in the kept history — or, with `recent`, in its last `recent`
        columns (vanished series whose rows are needed for new ones). Returns how many were dropped."""
        if not self.keys:
            return 0
        lo = self._lo if recent is None else max(self._lo, self._hi - recent)
        present = ~np.isnan(self._buf[: len(self.keys), lo : self._hi]).all(axis=1)
        gone = int((~present).sum())
        if gone:
            keep_rows = np.flatnonzero(present)
            self._buf = np.ascontiguousarray(self._buf[keep_rows])
            self._flags = np.ascontiguousarray(self._flags[keep_rows])
            self.keys = [self.keys[i] for i in keep_rows]
            self._index = {k: i for i, k in enumerate(self.keys)}
        return gone
