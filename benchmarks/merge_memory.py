"""Peak extra memory and time of merging one full history into an empty frame (the first load of a rule).

    python benchmarks/merge_memory.py [series] [columns]      # default 10000 x 10080 (7 days at 1 minute)

tracemalloc sees numpy's allocations, so the peak is what `SeriesFrame.merge` allocates on top of the
query result it is given (the frame's own buffer, with its slack columns and flags, included).
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from exporter.frame import SeriesFrame
from exporter.reader import RangeResult


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    cols = int(sys.argv[2]) if len(sys.argv) > 2 else 10_080
    step = 60
    keys = [(("i", str(k)),) for k in range(n)]
    t = 1_700_000_000 + step * np.arange(cols, dtype=np.int64)
    values = np.random.default_rng(0).normal(size=(n, cols))
    result = RangeResult(keys=keys, timestamps=t, values=values, dropped=0, warnings=())
    frame = SeriesFrame(step, cols, n)
    tracemalloc.start()
    started = time.perf_counter()
    frame.merge(result)
    took = time.perf_counter() - started
    held, peak = tracemalloc.get_traced_memory()
    mb = 2**20
    print(
        f"merge {n} x {cols} ({values.nbytes / mb:.0f} MB of input): {took:.2f} s, "
        f"peak extra {peak / mb:.0f} MB, held after {held / mb:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
