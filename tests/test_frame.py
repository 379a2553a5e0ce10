import threading
import time

import numpy as np
import pytest

from exporter.frame import SeriesFrame
from exporter.reader import RangeResult


def key(i):
    return (("__name__", "m"), ("i", str(i)))


def result(keys, start, n_cols, step=60, fill=None):
    ts = start + step * np.arange(n_cols, dtype=np.int64)
    if fill is None:
        values = np.array([[float(k[1][1]) * 1000 + t / step for t in ts] for k in keys])
    else:
        values = np.full((len(keys), n_cols), fill, dtype=float)
    return RangeResult(
        keys=list(keys), timestamps=ts, values=values.reshape(len(keys), n_cols), dropped=0, warnings=()
    )


def test_merge_builds_matrix_on_grid():
    f = SeriesFrame(step=60, capacity=100, max_series=10)
    f.merge(result([key(0), key(1)], 6000, 5))
    w = f.window()
    assert w.timestamps.tolist() == [6000, 6060, 6120, 6180, 6240]
    assert w.values.shape == (2, 5)
    assert w.values[1, 0] == 1000 + 100
    assert f.first_timestamp == 6000 and f.last_timestamp == 6240


def test_incremental_merge_overwrites_overlap_and_appends():
    f = SeriesFrame(step=60, capacity=100, max_series=10)
    f.merge(result([key(0)], 6000, 5, fill=1.0))
    f.merge(result([key(0)], 6180, 4, fill=2.0))  # overlaps the last two columns, adds two
    w = f.window()
    assert w.values[0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]


def test_history_is_bounded_and_keeps_the_newest_columns():
    f = SeriesFrame(step=60, capacity=50, max_series=10)
    for i in range(40):  # 40 cycles of 3 new columns: forces several compactions of the slack
        f.merge(result([key(0)], 60 * (3 * i), 3))
    w = f.window()
    assert len(w.timestamps) == 50
    assert w.timestamps[-1] == 60 * (3 * 39 + 2)
    assert np.all(np.diff(w.timestamps) == 60)
    # values are t/step for key 0: the buffer shifts kept values along with their timestamps
    assert np.array_equal(w.values[0], w.timestamps / 60)


def test_gap_longer_than_history_starts_over():
    f = SeriesFrame(step=60, capacity=10, max_series=10)
    f.merge(result([key(0)], 0, 10, fill=1.0))
    f.merge(result([key(0)], 60 * 1000, 2, fill=5.0))
    w = f.window()
    assert len(w.timestamps) == 10 and w.timestamps[-1] == 60 * 1001
    assert np.isnan(w.values[0, :-2]).all() and w.values[0, -2:].tolist() == [5.0, 5.0]


def test_new_and_vanished_series():
    f = SeriesFrame(step=60, capacity=10, max_series=10)
    f.merge(result([key(0), key(1)], 0, 3, fill=1.0))
    assert f.merge(result([key(1), key(2)], 180, 2, fill=2.0)) == 1
    w = f.window()
    assert [k[1][1] for k in w.keys] == ["0", "1", "2"]
    assert np.isnan(w.values[2, :3]).all() and w.values[2, 3:].tolist() == [2.0, 2.0]
    assert np.isnan(w.values[0, 3:]).all()  # key 0 vanished: its new columns stay missing
    f.merge(result([key(1)], 300, 10, fill=3.0))  # key 0's and key 2's last data falls out of the history
    assert f.drop_absent() == 2
    assert [k[1][1] for k in f.window().keys] == ["1"]


def test_max_series_and_admitter():
    f = SeriesFrame(step=60, capacity=10, max_series=2)
    f.merge(result([key(0)], 0, 1))
    keep = f.admitter()
    assert [keep(key(0)), keep(key(5)), keep(key(6)), keep(key(5))] == [True, True, False, True]
    f.merge(result([key(0), key(5), key(6)], 60, 1))  # merge never exceeds the cap either
    assert len(f) == 2


def test_rejects_off_grid_results():
    f = SeriesFrame(step=60, capacity=10, max_series=2)
    f.merge(result([key(0)], 0, 2))
    with pytest.raises(ValueError, match="grid"):
        f.merge(result([key(0)], 90, 2))


def test_window_reads_its_series_and_timestamps_while_the_frame_changes():
    """A refit reads its window block by block while scoring appends, compacts and drops rows."""
    f = SeriesFrame(step=60, capacity=20, max_series=4)
    f.merge(result([key(0), key(1), key(2)], 0, 10))
    w = f.window()
    before = w.values.copy()
    for i in range(1, 6):  # 25 new columns: compactions, and the first 15 columns age out
        f.merge(result([key(1), key(2)], 60 * (5 + 5 * i), 5))
    assert f.drop_absent() == 1  # key 0 sent nothing lately: rows are renumbered
    assert [k[1][1] for k in f.window().keys] == ["1", "2"]
    assert w.keys == (key(0), key(1), key(2)) and w.timestamps.tolist() == [60 * j for j in range(10)]
    now = w.values
    assert np.isnan(now[0]).all()  # dropped series: missing
    aged_out = w.timestamps < f.first_timestamp
    assert np.isnan(now[1:, aged_out]).all()
    np.testing.assert_array_equal(now[1:, ~aged_out], before[1:, ~aged_out])
    np.testing.assert_array_equal(w.rows(np.array([2])), now[2:3])
    np.testing.assert_array_equal(w.cols(np.array([9, 8])), now[:, [9, 8]])


def test_locked_window_takes_the_lock_for_every_read():
    f = SeriesFrame(step=60, capacity=20, max_series=4)
    f.merge(result([key(0), key(1)], 0, 10))
    lock = threading.Lock()
    w = f.window(lock=lock)
    with lock:
        reader = threading.Thread(target=lambda: w.rows(slice(0, 1)))
        reader.start()
        reader.join(0.2)
        assert reader.is_alive()  # waits for the lock
    reader.join(5)
    assert not reader.is_alive()


def test_concurrent_refit_reads_stay_consistent():
    """Reads on one thread and merges (with compactions) on another, both under the frame lock."""
    f = SeriesFrame(step=60, capacity=300, max_series=50)
    keys = [key(i) for i in range(50)]
    f.merge(result(keys, 0, 300))
    lock = threading.Lock()
    w = f.window(lock=lock)
    stop = threading.Event()

    def write():
        for col in range(300, 300 + 7 * 40, 7):  # 280 new columns: compactions, the newest 20 stay
            if stop.is_set():
                return
            with lock:
                f.merge(result(keys, 60 * col, 7))
            time.sleep(0.001)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(200):
            block = w.rows(slice(10, 20))
            expected = np.array([[float(k[1][1]) * 1000 + t / 60 for t in w.timestamps] for k in keys[10:20]])
            have = ~np.isnan(block)
            assert have[:, -1].all()  # the newest columns never age out this fast
            np.testing.assert_allclose(block[have], expected[have], rtol=1e-6)
    finally:
        stop.set()
        writer.join()


@pytest.mark.parametrize(
    ("level", "noise"), [(1e10, 4.0), (-3e9, 0.5), (0.0, 1e-3), (1e-12, 1e-15), (42.0, 0.0), (1e300, 1e290)]
)
def test_stored_values_keep_their_resolution(level, noise):
    """float32 storage: the error of a point is at most 2^-24 of its distance from the first value."""
    rng = np.random.default_rng(3)
    n = 500
    values = level + noise * rng.normal(size=(1, n))
    f = SeriesFrame(step=60, capacity=n, max_series=1)
    f.merge(RangeResult([key(0)], 60 * np.arange(n, dtype=np.int64), values.copy(), 0, ()))
    got = f.window().values
    bound = np.abs(values - values[0, 0]) * 2.0**-24 + 1e-300
    assert (np.abs(got - values) <= bound * 1.0000001).all()
    assert got[0, 0] == values[0, 0]


def test_a_series_far_from_its_first_value_is_re_referenced():
    """1 then 1e300: the new values read back exactly; the old ones stay finite (beyond float32's range
    from the new reference they saturate instead of becoming infinite)."""
    f = SeriesFrame(step=60, capacity=10, max_series=1)
    f.merge(result([key(0)], 0, 3, fill=1.0))
    f.merge(result([key(0)], 180, 2, fill=1e300))
    got = f.window().values[0]
    assert np.isfinite(got).all() and got[-2:].tolist() == [1e300, 1e300]


@pytest.mark.parametrize("first", [1e300, 1e-300, 1.8e19, -7e15])
def test_an_extreme_first_value_does_not_spoil_later_resolution(first):
    f = SeriesFrame(step=60, capacity=100, max_series=1)
    r = result([key(0)], 0, 1, fill=first)
    f.merge(r)
    values = 100 + np.random.default_rng(0).normal(0, 1, size=(1, 30))
    f.merge(RangeResult([key(0)], 60 + 60 * np.arange(30, dtype=np.int64), values.copy(), 0, ()))
    got = f.window().values[0, 1:]
    np.testing.assert_allclose(got, values[0], rtol=1e-6)


def test_hiding_flagged_points_only_where_they_are_rare():
    f = SeriesFrame(step=60, capacity=20, max_series=2)
    f.merge(result([key(0), key(1)], 0, 8, fill=5.0))
    f.flag(60, np.array([True, True]))  # one point in 8 for both series
    for t in (120, 180, 240):
        f.flag(t, np.array([False, True]))  # series 1: half its points are flagged, a new normal
    w = f.window().hiding_flagged(0.25)
    assert np.isnan(w.rows(slice(None))[0]).sum() == 1 and np.isnan(w.values[0, 1])
    assert not np.isnan(w.values[1]).any()
    assert np.isnan(w.cols(np.array([1]))[0, 0]) and w.cols(np.array([1]))[1, 0] == 5.0
    assert w.counts().tolist() == [8, 8]  # counts ignore hiding
    assert not np.isnan(f.window().values).any()  # the frame itself is untouched


def test_flags_follow_their_points_through_appends_and_compactions():
    f = SeriesFrame(step=60, capacity=20, max_series=4)
    f.merge(result([key(0), key(1)], 0, 5))
    f.flag(120, np.array([True, False]))
    for i in range(1, 12):  # forces compactions; the flagged point (t=120) falls out of the history
        f.merge(result([key(0), key(1)], 60 * (5 * i), 5))
        w = f.window()
        expected = w.timestamps == 120
        assert np.array_equal(w.flagged[0], expected) and not w.flagged[1].any()
    f.flag(60 * 50, np.array([False, True]))
    f.merge(result([key(0), key(1)], 60 * 50, 1, fill=1.0))  # re-fetching a point keeps its flag
    w = f.window()
    assert w.flagged[1, w.timestamps == 60 * 50].all()


def test_infinities_are_treated_as_missing():
    f = SeriesFrame(step=60, capacity=10, max_series=2)
    r = result([key(0)], 0, 3, fill=1.0)
    r.values[0, 1] = np.inf
    r.values[0, 2] = -np.inf
    f.merge(r)
    assert np.isnan(f.window().values[0, 1:]).all()


def test_drop_absent_recent_frees_rows_of_series_silent_lately():
    f = SeriesFrame(step=60, capacity=100, max_series=2)
    f.merge(result([key(0), key(1)], 0, 10, fill=1.0))
    f.merge(result([key(1)], 600, 10, fill=1.0))  # key 0 silent for the last 10 columns
    assert f.drop_absent(recent=5) == 1
    assert [k[1][1] for k in f.window().keys] == ["1"]


def test_large_merges_in_blocks_match_row_by_row_writes():
    """More rows than one merge block, in an order that maps to non-contiguous frame rows, with ±Inf."""
    rng = np.random.default_rng(7)
    n, cols, step = 1300, 12, 60
    keys = [(("i", str(k)),) for k in range(n)]
    t = 6000 + step * np.arange(cols, dtype=np.int64)
    first = rng.normal(size=(n, cols))
    f = SeriesFrame(step, 20, n)
    f.merge(RangeResult(keys=keys, timestamps=t, values=first, dropped=0, warnings=()))
    order = rng.permutation(n)  # the next result lists the same series shuffled, one column later
    later = rng.normal(size=(n, cols))
    later[5, 3], later[900, 0] = np.inf, -np.inf
    f.merge(RangeResult([keys[k] for k in order], t + step, later, 0, ()))
    w = f.window()
    expected = np.full((n, cols + 1), np.nan)
    expected[:, :cols] = first
    expected[order, 1:] = np.where(np.isinf(later), np.nan, later)
    assert list(w.keys) == keys
    np.testing.assert_allclose(w.values, expected, rtol=0, atol=1e-5)  # float32 offsets: |value| < 5 here


def test_flags_of_many_series_survive_compaction_row_growth_and_drops():
    """Flags are kept one bit per series: check them against a plain boolean reference."""
    rng = np.random.default_rng(11)
    f = SeriesFrame(step=60, capacity=30, max_series=64)
    keys = [key(i) for i in range(37)]
    ref: dict[tuple, dict[int, bool]] = {k: {} for k in keys}
    for cycle in range(20):
        present = keys[: 13 + cycle]  # series keep appearing: rows grow
        present = [k for k in present if not (cycle >= 12 and k == keys[5])]  # key 5 goes silent
        t = 60 * (4 * cycle)
        f.merge(result(present, t, 4))
        w = f.window()
        flagged = rng.random(len(w.keys)) < 0.3
        stamp = t + 60 * int(rng.integers(0, 4))
        f.flag(stamp, flagged)
        for k, v in zip(w.keys, flagged, strict=True):
            ref[k][stamp] = bool(v)
        if cycle == 19:
            assert f.drop_absent(recent=20) == 1  # key 5: renumbers every row after it
        w = f.window()
        got = w.flagged
        for i, k in enumerate(w.keys):
            want = [ref[k].get(int(ts), False) for ts in w.timestamps]
            assert got[i].tolist() == want, (cycle, k)
    assert keys[5] not in f


def test_reserve_lets_slices_arrive_newest_first():
    f = SeriesFrame(step=60, capacity=100, max_series=4)
    f.reserve(6010, 6000 + 60 * 20)  # a start off the grid is moved onto last's grid
    assert f.first_timestamp == 6060 and f.last_timestamp == 7200
    f.merge(result([key(0)], 6000 + 60 * 15, 6))  # newest slice first
    f.merge(result([key(0), key(1)], 6060, 14))  # then the older one, with a series new to the frame
    w = f.window()
    assert w.timestamps.tolist() == list(range(6060, 7201, 60))
    expected0 = [1000 * 0 + t / 60 for t in w.timestamps]
    np.testing.assert_allclose(w.values[0], expected0, atol=1e-4)
    assert np.isnan(w.values[1, 14:]).all() and not np.isnan(w.values[1, :14]).any()
    f.reserve(0, 60)  # a frame with data is left alone
    assert f.first_timestamp == 6060
