"""Handing memory that a large job freed back to the operating system."""

from __future__ import annotations

import ctypes
import sys


def release_free_memory() -> bool:
    """Ask glibc's malloc to return its free pages to the OS (malloc_trim); False where there is none.

    A fit allocates and frees hundreds of MB of temporaries. glibc keeps freed memory inside its heap for
    reuse, and the scattered pieces it keeps are counted in the process' RSS: without this, RSS drifts up
    with fragmentation although the memory in use stays flat (see docs/soak.md). Takes a few ms; call it
    after a fit, never during a scrape.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the process already runs on
    except (OSError, AttributeError):  # musl (Alpine) has no malloc_trim
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
