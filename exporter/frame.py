"""The in-memory time × series matrix of one rule: a bounded history on a fixed step grid.

Values are stored as float32 offsets from a per-series reference (its first value) in units of a power of
two near that value's magnitude, so 10,000 series × a week at one minute take 0.4 GB rather than 0.8 GB,
while a 1e10-byte gauge keeps single-byte resolution: the rounding error of a stored point is at most
2⁻²⁴ of its distance from the series' first value (plain float32 would lose 2⁻²⁴ of the value itself).
Readers get float64 back, one block at a time, through `Window`.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from exporter.reader import RangeResult, SeriesKey


_MERGE_ROWS = 512  # rows written per block by merge() and moved per block when compacting
_F32_MAX = float(np.finfo(np.float32).max)
Index = slice | np.ndarray


class Window:
    """Read-only history for detectors: series `keys[i]` at `timestamps[j]`, float64, NaN = no data.

    Detectors read it in blocks — `rows()` (some series, every column) or `cols()` (every series, some
    columns) — so a window backed by a 10,000-series frame never has to exist as one float64 matrix.
    `values` is the whole matrix, for small windows (tests, backtests).

    `hiding_flagged(share)` gives the same window with the points flagged as anomalous read as missing,
    in series where they are at most `share` of the points (beyond that they are a new normal).
    """

    def __init__(
        self,
        keys: Sequence[SeriesKey],
        timestamps: np.ndarray,
        values: np.ndarray,
        flagged: np.ndarray | None = None,
    ) -> None:
        self.keys = keys
        self.timestamps = timestamps  # int64 seconds, evenly spaced by `step`
        self._values = values  # shape (len(keys), len(timestamps))
        self._flagged = flagged  # bool, same shape: points judged anomalous when they were scored
        self._hide_share: float | None = None
        self._hidden: np.ndarray | None = None  # per series: are its flagged points hidden (lazy)

    # -- shape -----------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return int(self.timestamps[1] - self.timestamps[0]) if len(self.timestamps) > 1 else 0

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.keys), len(self.timestamps)

    # -- reading ---------------------------------------------------------------------------------
    @property
    def values(self) -> np.ndarray:
        """Every series and column as one float64 matrix (a full copy for frame-backed windows)."""
        return self.rows(slice(None))

    @property
    def flagged(self) -> np.ndarray | None:
        return self._read_flags(slice(None), None)

    def rows(self, index: Index) -> np.ndarray:
        """Values of the series `index`, every column (a view or a copy: never write to it)."""
        values = self._read(index, None)
        if self._hide_share is None:
            return values
        flags = self._read_flags(index, None)
        if flags is None or not flags.any():
            return values
        return np.where(flags & self._hidden_rows()[index, None], np.nan, values)

    def cols(self, index: Index) -> np.ndarray:
        """Values of every series at the columns `index`."""
        values = self._read(slice(None), index)
        if self._hide_share is None:
            return values
        flags = self._read_flags(slice(None), index)
        if flags is None or not flags.any():
            return values
        return np.where(flags & self._hidden_rows()[:, None], np.nan, values)

    def counts(self, index: Index = slice(None)) -> np.ndarray:
        """Number of points (not NaN) of the series `index`, before any hiding."""
        pos = np.arange(len(self.keys))[index]
        out = np.zeros(len(pos), dtype=np.int64)
        for lo in range(0, len(pos), _MERGE_ROWS):  # in blocks: a frame-backed window copies what it reads
            out[lo : lo + _MERGE_ROWS] = (~np.isnan(self._read(pos[lo : lo + _MERGE_ROWS], None))).sum(axis=1)
        return out

    def any_flagged(self) -> bool:
        flags = self._read_flags(slice(None), None)
        return flags is not None and bool(flags.any())

    # -- derived windows -------------------------------------------------------------------------
    def hiding_flagged(self, max_share: float) -> Window:
        out = self._clone()
        out._hide_share, out._hidden = max_share, None
        return out

    def subset(self, index: np.ndarray) -> Window:
        """The series `index` only (a copy)."""
        out = Window([self.keys[i] for i in index], self.timestamps, self._read(index, None).copy())
        flags = self._read_flags(index, None)
        out._flagged = None if flags is None else flags.copy()
        out._hide_share = self._hide_share
        return out

    # -- storage (overridden by frame-backed windows) ---------------------------------------------
    def _clone(self) -> Window:
        return Window(self.keys, self.timestamps, self._values, self._flagged)

    def _read(self, rows: Index, cols: Index | None) -> np.ndarray:
        block = self._values[rows]
        return block if cols is None else block[:, cols]

    def _read_flags(self, rows: Index, cols: Index | None) -> np.ndarray | None:
        if self._flagged is None:
            return None
        block = self._flagged[rows]
        return block if cols is None else block[:, cols]

    def _hidden_rows(self) -> np.ndarray:
        if self._hidden is None:
            n, n_t = self.shape
            hidden = np.zeros(n, dtype=bool)
            for lo in range(0, n, _MERGE_ROWS):  # in blocks: a frame-backed window copies what it reads
                flags = self._read_flags(slice(lo, lo + _MERGE_ROWS), None)
                if flags is not None:
                    share = flags.sum(axis=1) / max(1, n_t)
                    hidden[lo : lo + _MERGE_ROWS] = share <= (self._hide_share or 0.0)
            self._hidden = hidden
        return self._hidden


class FrameWindow(Window):
    """A window over a live `SeriesFrame`, read on demand instead of copied.

    It stays valid while the frame changes: reads find each of its series and timestamps where they are
    now (a series dropped since, or a column that aged out, reads as missing; newer columns are not seen).
    With `lock`, every read takes it (for a reader on another thread, such as a refit); without, the
    caller must hold the frame's lock for as long as it uses the window.
    """

    def __init__(self, frame: SeriesFrame, lock: threading.Lock | None) -> None:
        n_cols = frame._hi - frame._lo
        super().__init__(
            tuple(frame.keys),
            frame._t0 + frame.step * np.arange(n_cols, dtype=np.int64),
            np.empty((0, 0)),
        )
        self._frame = frame
        self._lock = lock
        self._t0 = frame._t0
        self._layout = frame._layout

    def _clone(self) -> Window:
        out = FrameWindow.__new__(FrameWindow)
        out.__dict__.update(self.__dict__)
        return out

    def _where(self, rows: Index) -> tuple[np.ndarray, np.ndarray]:
        """Frame rows of the window's series `rows` (-1: gone) and their positions in the window."""
        pos = np.arange(len(self.keys))[rows]
        f = self._frame
        if f._layout == self._layout:
            return pos, pos
        get = f._index.get
        return np.fromiter((get(self.keys[i], -1) for i in pos), np.int64, count=len(pos)), pos

    def _columns(self, cols: Index | None) -> tuple[np.ndarray, np.ndarray]:
        """Buffer columns of the window's columns `cols` that still exist, and which of `cols` they are."""
        f = self._frame
        want = np.arange(len(self.timestamps))[slice(None) if cols is None else cols]
        buf_cols = f._lo + (self._t0 - f._t0) // f.step + want
        ok = (buf_cols >= f._lo) & (buf_cols < f._hi)
        return buf_cols[ok], np.flatnonzero(ok)

    def _read(self, rows: Index, cols: Index | None) -> np.ndarray:
        with self._lock or nullcontext():
            f = self._frame
            frame_rows, pos = self._where(rows)
            buf_cols, at = self._columns(cols)
            width = len(self.timestamps) if cols is None else len(np.arange(len(self.timestamps))[cols])
            out = np.full((len(pos), width), np.nan)
            have = frame_rows >= 0
            r = frame_rows[have]
            if len(r) and len(buf_cols):
                if len(buf_cols) == width and buf_cols[-1] - buf_cols[0] == width - 1:  # all, contiguous
                    enc = f._buf[r, buf_cols[0] : buf_cols[-1] + 1]
                else:
                    enc = f._buf[r[:, None], buf_cols]
                decoded = enc * f._scale[r, None] + f._base[r, None]  # float32 × float64 → float64
                if have.all() and len(at) == width:
                    out = decoded
                else:
                    out[np.flatnonzero(have)[:, None], at] = decoded
            return out

    def _read_flags(self, rows: Index, cols: Index | None) -> np.ndarray | None:
        with self._lock or nullcontext():
            f = self._frame
            frame_rows, pos = self._where(rows)
            buf_cols, at = self._columns(cols)
            width = len(self.timestamps) if cols is None else len(np.arange(len(self.timestamps))[cols])
            out = np.zeros((len(pos), width), dtype=bool)
            have = np.flatnonzero(frame_rows >= 0)
            if len(have) and len(buf_cols):
                out[have[:, None], at] = f._flag_bits(frame_rows[have], buf_cols)
            return out


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
    Not thread-safe: the owner serialises access (a `window(lock=...)` takes the owner's lock itself).
    """

    def __init__(self, step: int, capacity: int, max_series: int) -> None:
        if step < 1 or capacity < 2 or max_series < 1:
            raise ValueError("step, capacity and max_series must be positive")
        self.step = step
        self.capacity = capacity
        self.max_series = max_series
        self.keys: list[SeriesKey] = []
        self._index: dict[SeriesKey, int] = {}
        self._slack = max(16, capacity // 16)
        self._buf = np.full((0, capacity + self._slack), np.nan, dtype=np.float32)  # encoded, see module doc
        self._base = np.full(0, np.nan)  # per row: the reference value (NaN until the series' first point)
        self._scale = np.ones(0)  # per row: a power of two near |base|
        # Points judged anomalous when scored, one bit per series: column-major, 8 series per byte.
        self._flags = np.zeros((capacity + self._slack, 0), dtype=np.uint8)
        self._lo = 0  # first used column in _buf
        self._hi = 0  # one past the last used column
        self._t0 = 0  # timestamp of column _lo
        self._layout = 0  # bumped whenever rows are renumbered (windows then look series up by key)

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: SeriesKey) -> bool:
        return key in self._index

    @property
    def empty(self) -> bool:
        return self._hi == self._lo

    @property
    def nbytes(self) -> int:
        """Memory held by the stored history (values, references, flags), slack columns included."""
        return self._buf.nbytes + self._base.nbytes + self._scale.nbytes + self._flags.nbytes

    @property
    def first_timestamp(self) -> int | None:
        return None if self.empty else self._t0

    @property
    def last_timestamp(self) -> int | None:
        return None if self.empty else self._t0 + (self._hi - self._lo - 1) * self.step

    def window(self, lock: threading.Lock | None = None) -> FrameWindow:
        """All kept history, read on demand (nothing is copied up front).

        Without `lock` the caller holds the frame's lock while using the window. With it (a refit on
        another thread), each read takes the lock, and the window stays valid while the frame changes.
        """
        return FrameWindow(self, lock)

    def flag(self, timestamp: int, flagged: np.ndarray) -> None:
        """Record which series were judged anomalous at `timestamp` (rows as in window().keys)."""
        last = self.last_timestamp
        if last is None or timestamp > last or timestamp < self._t0:
            return
        col = self._lo + (timestamp - self._t0) // self.step
        n = len(flagged)
        packed = np.packbits(np.asarray(flagged, dtype=bool))
        full = n // 8
        self._flags[col, :full] = packed[:full]
        if n % 8:  # the last byte also holds series beyond `flagged`: keep their bits
            mine = np.uint8((0xFF << (8 - n % 8)) & 0xFF)
            self._flags[col, full] = (self._flags[col, full] & ~mine) | (packed[full] & mine)

    def _flag_bits(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Flags of frame rows `rows` at buffer columns `cols`, as bool (len(rows), len(cols))."""
        packed = self._flags[cols[:, None], (rows >> 3)[None, :]]  # (cols, rows): gathers only those bytes
        shift = (7 - (rows & 7)).astype(np.uint8)
        return ((packed >> shift) & 1).astype(bool).T

    # -- admission -------------------------------------------------------------------------------
    def admitter(self, owns: Callable[[SeriesKey], bool] | None = None) -> Admitter:
        """A `keep` callback for the reader: known series, plus new ones (that `owns` accepts) while there
        is room. Its `over_cap` counts the new series turned away for lack of room only."""
        return Admitter(self, owns)

    # -- writing ---------------------------------------------------------------------------------
    def reserve(self, first: int, last: int) -> None:
        """Make an empty frame span [first, last] (on its step grid) before any data arrives, so slices of
        a history load can be merged in any order (the newest first, say)."""
        if not self.empty or last < first:
            return
        first = last - (last - first) // self.step * self.step  # on last's grid, not before `first`
        self._t0, self._lo, self._hi = first, 0, 0
        self._extend_to(last)

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
            r, i = np.asarray(rows[lo : lo + _MERGE_ROWS]), src[lo : lo + _MERGE_ROWS]
            block = result.values[i, skip:]  # a copy of this block only
            block[np.isinf(block)] = np.nan  # ±Inf (x/0, histogram_quantile) carries no level
            encoded = self._encode(r, block)
            if r[-1] - r[0] == len(r) - 1 and (np.diff(r) == 1).all():
                self._buf[r[0] : r[-1] + 1, dest : dest + width] = encoded  # contiguous rows: a plain slice
            else:
                self._buf[r[:, None], dest + np.arange(width)] = encoded
        return added

    def _encode(self, rows: np.ndarray, block: np.ndarray) -> np.ndarray:
        """float32 offsets of `block` (rows `rows`) from their series' reference; sets missing references.

        A series whose reference turns out far from its values (a first point of 1e300 or 1e-300, a uint64
        sentinel, then ordinary values) is re-referenced to the median of the new values and its stored
        history re-encoded, so it keeps full resolution; offsets beyond float32's range still saturate.
        """
        base = self._base[rows]
        new = np.isnan(base)
        if new.any():
            has = ~np.isnan(block[new])
            first = block[new][np.arange(int(new.sum())), has.argmax(axis=1)]  # NaN for rows with no data
            self._set_reference(rows[new], first)
        encoded = self._offsets(rows, block)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN, not an error
            error = np.nanmax(
                np.abs(encoded * self._scale[rows][:, None] + self._base[rows][:, None] - block), 1
            )
            typical = np.nanmedian(np.abs(block), axis=1)
            median = np.nanmedian(block, axis=1)
            far = (error > 2.0**-20 * typical) & (np.abs(median - self._base[rows]) > 2.0**-20 * typical)
        for i in np.flatnonzero(far):  # rare: one row at a time
            row = int(rows[i])
            cols = slice(self._lo, self._hi)
            history = self._buf[row, cols] * self._scale[row] + self._base[row]
            self._set_reference(np.array([row]), np.array([median[i]]))
            self._buf[row, cols] = self._offsets(np.array([row]), history[None, :])[0]
            encoded[i] = self._offsets(np.array([row]), block[i : i + 1])[0]
        return encoded.astype(np.float32)

    def _set_reference(self, rows: np.ndarray, value: np.ndarray) -> None:
        mantissa, exponent = np.frexp(value)
        ok = np.isfinite(value) & (mantissa != 0)
        self._base[rows] = value
        self._scale[rows] = np.where(ok, np.ldexp(1.0, exponent - 1), 1.0)  # 2^(e-1) <= |value|: finite

    def _offsets(self, rows: np.ndarray, block: np.ndarray) -> np.ndarray:
        encoded = (block - self._base[rows][:, None]) / self._scale[rows][:, None]
        np.clip(encoded, -_F32_MAX, _F32_MAX, out=encoded)  # beyond float32: saturate, never become ±Inf
        return encoded

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
            buf = np.empty((grow, cols), dtype=np.float32)  # one new array (no vstack temporaries)
            buf[:old_rows] = self._buf
            buf[old_rows:] = np.nan
            flags = np.zeros((cols, (grow + 7) // 8), dtype=np.uint8)
            flags[:, : self._flags.shape[1]] = self._flags
            base = np.full(grow, np.nan)
            base[:old_rows] = self._base
            scale = np.ones(grow)
            scale[:old_rows] = self._scale
            self._buf, self._flags, self._base, self._scale = buf, flags, base, scale
        return rows, src, added

    def _extend_to(self, last: int) -> None:
        """Make column `last` exist, dropping the oldest columns beyond `capacity`."""
        cur_last = self._t0 + (self._hi - self._lo - 1) * self.step  # t0 - step when empty
        new_cols = (last - cur_last) // self.step
        if new_cols <= 0:
            return
        if new_cols >= self.capacity:  # a jump longer than the whole history: start over
            self._buf[:] = np.nan
            self._flags[:] = 0
            self._t0, self._lo, self._hi = last - (self.capacity - 1) * self.step, 0, self.capacity
            return
        if self._hi + new_cols > self._buf.shape[1]:
            keep = min(self._hi - self._lo, self.capacity - new_cols)
            src = self._hi - keep
            for lo in range(0, self._buf.shape[0], _MERGE_ROWS):  # overlapping move: numpy copies the source
                rows = slice(lo, lo + _MERGE_ROWS)
                self._buf[rows, :keep] = self._buf[rows, src : self._hi]
            self._flags[:keep] = self._flags[src : self._hi]
            self._buf[:, keep:] = np.nan
            self._flags[keep:] = 0
            self._t0 += (self._hi - self._lo - keep) * self.step
            self._lo, self._hi = 0, keep
        self._buf[:, self._hi : self._hi + new_cols] = np.nan
        self._flags[self._hi : self._hi + new_cols] = 0
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
        n = len(self.keys)
        present = np.zeros(n, dtype=bool)
        for r in range(0, n, _MERGE_ROWS):  # in blocks: no full-size temporary
            block = self._buf[r : min(n, r + _MERGE_ROWS), lo : self._hi]
            present[r : r + _MERGE_ROWS] = ~np.isnan(block).all(axis=1)
        gone = int((~present).sum())
        if gone:
            keep_rows = np.flatnonzero(present)
            self._buf = self._buf[keep_rows]  # fancy indexing: a new array, so open windows keep the old one
            flags = np.zeros((self._flags.shape[0], (len(keep_rows) + 7) // 8), dtype=np.uint8)
            for c in range(0, self._flags.shape[0], 1024):  # unpacked in blocks of columns
                bits = np.unpackbits(self._flags[c : c + 1024], axis=1, count=n)
                flags[c : c + 1024] = np.packbits(bits[:, keep_rows], axis=1)
            self._flags = flags
            self._base = self._base[keep_rows]
            self._scale = self._scale[keep_rows]
            self.keys = [self.keys[i] for i in keep_rows]
            self._index = {k: i for i, k in enumerate(self.keys)}
            self._layout += 1
        return gone
