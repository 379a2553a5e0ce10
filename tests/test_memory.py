"""release_free_memory: memory freed in the middle of glibc's heap goes back to the OS (RSS falls)."""

import platform
import sys

import pytest

from exporter.memory import release_free_memory


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim"
)
def test_free_pages_inside_the_heap_are_returned():
    # 150 MB in 2 kB blocks (bytes beyond 512 B come from malloc, below its mmap threshold, so from the heap);
    # keeping every 50th pins the heap's top, as a fit's few survivors do, so free() alone returns nothing
    blocks = [bytes(2000) for _ in range(75_000)]
    kept = blocks[::50]
    del blocks
    before = rss_mb()
    assert release_free_memory() is True
    after = rss_mb()
    assert before - after > 50, f"RSS {before:.0f} -> {after:.0f} MB"
    assert len(kept) == 1500
