"""Prometheus-style durations (`30s`, `5m`, `1h30m`, `14d`) to and from seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_ORDER = ["y", "w", "d", "h", "m", "s", "ms"]
_TERM = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")


def parse_duration(text: str) -> float:
    """Return the number of seconds in a Prometheus duration; raise ValueError naming the bad text.

    >>> parse_duration("1h30m")
    5400.0
    >>> parse_duration("250ms")
    0.25
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 1h30m, 14d")
    pos = 0
    total = 0.0
    last_rank = -1
    for match in _TERM.finditer(text):
        if match.start() != pos:
            break
        rank = _ORDER.index(match.group(2))
        if rank <= last_rank:  # units must go from largest to smallest, once each, like Prometheus
            raise ValueError(f"invalid duration {text!r}: units out of order or repeated")
        last_rank = rank
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 1h30m, 14d")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds as the shortest Prometheus duration, e.g. 5400 -> '1h30m'.

    >>> format_duration(5400)
    '1h30m'
    >>> format_duration(0)
    '0s'
    """
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit in _ORDER:
        size = round(_UNITS[unit] * 1000)
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
