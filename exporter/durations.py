"""Prometheus-style durations (`30s`, `5m`, `1h30m`, `14d`) to and from seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_ORDER = ["y", "w", "d", "h", "m", "s", "ms"]
_TERM = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
MAX_MS = (2**63 - 1) // 10**6  # Prometheus durations are Go int64 nanoseconds: at most ~292 years


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
    total_ms = 0  # exact integer arithmetic: a 400-digit count must be refused, not overflow a float
    last_rank = -1
    for match in _TERM.finditer(text):
        if match.start() != pos:
            break
        rank = _ORDER.index(match.group(2))
        if rank <= last_rank:  # units must go from largest to smallest, once each, like Prometheus
            raise ValueError(f"invalid duration {text!r}: units out of order or repeated")
        last_rank = rank
        digits = match.group(1)
        if len(digits) > 20:  # more than MAX_MS in any unit; spares int() a huge conversion
            shown = text if len(text) <= 40 else text[:40] + "…"
            raise ValueError(f"invalid duration {shown!r}: out of range (at most ~292y)")
        total_ms += int(digits) * round(_UNITS[match.group(2)] * 1000)
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 1h30m, 14d")
    if total_ms > MAX_MS:
        raise ValueError(f"invalid duration {text!r}: out of range (at most ~292y)")
    return total_ms / 1000


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
