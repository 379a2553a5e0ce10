"""How Go's fmt and Prometheus' template functions print values, so alert texts read as Prometheus' would.

Go prints a float64 unlike Python (``1.234567e+06``, ``+Inf``, ``NaN``), and Prometheus' humanize functions
(prometheus/template/template.go) build on Go's ``%.4g``. This module re-implements those printers: go_float
(``%v``), humanize, humanize1024, humanize_percentage, humanize_duration, title, strip_port, strip_domain and
a printf subset (parse_format, then sprintf). All are pure functions; only parse_format raises (FormatError),
so a format is checked once, before anything is printed with it.

>>> go_float(1234567.0), humanize(1234567.0), sprintf(parse_format("%.1f%%"), [12.345])
('1.234567e+06', '1.235M', '12.3%')
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeAlias

Value: TypeAlias = str | int | float | Mapping[str, str] | None
"""A value as templates see it: text, a number, the labels mapping, or None for unknown."""


class FormatError(ValueError):
    """A printf format that cannot be used; `index` is the 0-based offset of the bad part in the format."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


# --- Prometheus' number formatting (prometheus/template/template.go, Go's fmt) ---------------------------


def _g(v: float, precision: int = 4) -> str:
    """Go's %.Ng: like Python's, except NaN, +Inf and -Inf."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:.{precision}g}"


def go_float(v: float) -> str:
    """A float as Go's %v (so Prometheus' `{{ $value }}`) prints it: shortest digits, e-notation from 1e+06.

    >>> go_float(0.1), go_float(123456.0), go_float(1234567.0), go_float(0.00001)
    ('0.1', '123456', '1.234567e+06', '1e-05')
    """
    if not math.isfinite(v) or v == 0:
        return _g(v)
    sign = "-" if v < 0 else ""
    digits_tuple, exponent = Decimal(repr(abs(v))).normalize().as_tuple()[1:]
    digits = "".join(map(str, digits_tuple))
    point = len(digits) + int(exponent)  # the decimal point sits after this many digits
    if not -4 <= point - 1 < 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if point < 1 else '+'}{abs(point - 1):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def humanize(v: float) -> str:
    """SI prefix and 4 significant digits, as Prometheus' humanize (micro is "u", as there).

    >>> humanize(1234567.0), humanize(0.12), humanize(0.0001234), humanize(-1500.0)
    ('1.235M', '120m', '123.4u', '-1.5k')
    """
    if v == 0 or not math.isfinite(v):
        return _g(v)
    prefix = ""
    if abs(v) >= 1:
        for p in "kMGTPEZY":
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in "munpfazy":
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return _g(v) + prefix


def humanize1024(v: float) -> str:
    """Binary prefixes (ki, Mi, ...) and 4 significant digits, as Prometheus' humanize1024.

    >>> humanize1024(1048576.0), humanize1024(1234567.0), humanize1024(0.12)
    ('1Mi', '1.177Mi', '0.12')
    """
    if abs(v) <= 1 or not math.isfinite(v):
        return _g(v)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix, v = p, v / 1024
    return _g(v) + prefix


def humanize_percentage(v: float) -> str:
    """A ratio as a percentage with 4 significant digits, as Prometheus' humanizePercentage.

    >>> humanize_percentage(0.1234567), humanize_percentage(-0.22222)
    ('12.35%', '-22.22%')
    """
    return _g(v * 100) + "%"


def humanize_duration(v: float) -> str:
    """Seconds as Prometheus' humanizeDuration prints them: '1d 2h 3m 4s', '12.35s', '100ms'.

    Beyond 2**63 seconds Prometheus overflows int64 and prints garbage; this prints the true days.

    >>> humanize_duration(3723.0), humanize_duration(12.345), humanize_duration(0.0001)
    ('1h 2m 3s', '12.35s', '100us')
    """
    if not math.isfinite(v):
        return _g(v)
    if v == 0:
        return _g(v) + "s"
    if abs(v) >= 1:
        sign, v = ("-" if v < 0 else ""), abs(v)
        minutes, seconds = divmod(int(v), 60)
        hours, minutes = divmod(minutes, 60)
        days, hours = divmod(hours, 24)
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_g(v)}s"
    prefix = ""
    for p in "munpfazy":
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{_g(v)}{prefix}s"


# --- values as text and as numbers --------------------------------------------------------------------------

_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)", re.IGNORECASE)


def as_text(value: Value) -> str:
    """A value as Go's %v prints it (floats via go_float, mappings as map[k:v ...]); None prints as "".

    >>> as_text(None), as_text(1.5e6), as_text({"job": "api", "instance": "db1"})
    ('', '1.5e+06', 'map[instance:db1 job:api]')
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{as_text(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def as_number(value: Value) -> int | float | str:
    """A number for the numeric functions; text that is not a number (to Go's ParseFloat) stays text."""
    if isinstance(value, int | float):
        return value
    text = as_text(value)
    return float(text) if _FLOAT.fullmatch(text) else text


# --- Prometheus' string functions ---------------------------------------------------------------------------

_WORD_START = re.compile(r"(?<!\w)(?<!\w['.:])\w")


def title(text: str) -> str:
    """Prometheus' title (cases.Title with cases.NoLower): each word's first letter up, the rest untouched.

    >>> title("node_exporter up-time of db1.example.com")
    'Node_exporter Up-Time Of Db1.example.com'
    """
    return _WORD_START.sub(lambda m: m.group().upper(), text)


def _split_host_port(text: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort; None where it reports an error."""
    colon = text.rfind(":")
    if colon < 0:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or end + 1 != colon or "[" in text[1:] or "]" in text[end + 1 :]:
            return None
        host = text[1:end]
    else:
        host = text[:colon]
        if ":" in host or "[" in text or "]" in text:
            return None
    return host, text[colon + 1 :]


def strip_port(text: str) -> str:
    """Prometheus' stripPort: the host of host:port; text that is no host:port stays as it is."""
    parts = _split_host_port(text)
    return text if parts is None else parts[0]


def strip_domain(text: str) -> str:
    """Prometheus' stripDomain: the first label of a host name, keeping any port; IP addresses stay whole."""
    host, port = _split_host_port(text) or (text, "")
    try:
        if "%" not in host:  # Go's ParseIP takes no zone
            ipaddress.ip_address(host)
            return text
    except ValueError:
        pass
    host = host.split(".")[0]
    if not port:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- printf -------------------------------------------------------------------------------------------------

_DIRECTIVE = re.compile(
    r"%(?:%|(?P<flags>[-+ 0]*)(?P<width>\d{1,2})?(?:\.(?P<prec>\d{0,2}))?(?P<verb>[dfegsv]))"
)


@dataclass(frozen=True)
class Directive:
    """One %-directive of a printf format, formatting one argument the way Go's fmt does."""

    flags: str
    width: int
    precision: int | None
    verb: str

    def format(self, value: Value) -> str:
        if value is None:
            return ""
        if isinstance(value, str) and self.verb in "sv":
            return self._pad(value if self.precision is None else value[: self.precision], numeric=False)
        number = as_number(value)
        if isinstance(number, str):
            return self._pad(number, numeric=False)
        if isinstance(number, float) and not math.isfinite(number):
            body = _g(number)
            if body == "NaN" and ("+" in self.flags or " " in self.flags):
                body = ("+" if "+" in self.flags else " ") + body
            return self._pad(body, numeric=False)
        if self.verb == "d":
            number = int(number)
        elif self.verb in "feg":
            number = float(number)
        negative = number < 0 or math.copysign(1.0, number) < 0
        number = abs(number)
        if isinstance(number, int):
            body = str(number)
        elif self.verb in "fe":
            body = f"{number:.{6 if self.precision is None else self.precision}{self.verb}}"
        elif self.verb == "g" and self.precision is not None:
            body = f"{number:.{self.precision}g}"
        else:
            body = go_float(number)
        sign = "-" if negative else "+" if "+" in self.flags else " " if " " in self.flags else ""
        return self._pad(body, numeric=True, sign=sign)

    def _pad(self, body: str, numeric: bool, sign: str = "") -> str:
        if "-" in self.flags:
            return (sign + body).ljust(self.width)
        if numeric and "0" in self.flags:
            return sign + body.rjust(self.width - len(sign), "0")
        return (sign + body).rjust(self.width)


def parse_format(fmt: str) -> list[str | Directive]:
    """Split a printf format into text and directives; raise FormatError at the first unsupported one.

    >>> parse_format("%08.3f")
    [Directive(flags='0', width=8, precision=3, verb='f')]
    >>> parse_format("50%")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    exporter.gofmt.FormatError: printf format '50%': unsupported directive '%' ...
    """
    pieces: list[str | Directive] = []
    start = 0
    while (i := fmt.find("%", start)) >= 0:
        match = _DIRECTIVE.match(fmt, i)
        if match is None:
            raise FormatError(
                i,
                f"printf format {fmt!r}: unsupported directive {fmt[i : i + 5]!r} "
                "(supported: %d %f %e %g %s %v %% with flags -+ 0, width and precision up to 99)",
            )
        pieces.append(fmt[start:i])
        if match.group() == "%%":
            pieces.append("%")
        else:
            verb, prec = match["verb"], match["prec"]
            if prec is not None and verb in "dv":
                raise FormatError(i, f"printf format {fmt!r}: %{verb} takes no precision")
            width = int(match["width"] or 0)
            pieces.append(Directive(match["flags"], width, None if prec is None else int(prec or 0), verb))
        start = match.end()
    pieces.append(fmt[start:])
    return [p for p in pieces if p != ""]


def sprintf(pieces: Sequence[str | Directive], values: Iterable[Value]) -> str:
    """A parsed format filled with one value per directive, as Go's fmt.Sprintf prints them.

    >>> sprintf(parse_format("%5.1f|%-4d|%s"), [2.345, 7, None])
    '  2.3|7   |'
    """
    args = iter(values)
    return "".join(p if isinstance(p, str) else p.format(next(args)) for p in pieces)
