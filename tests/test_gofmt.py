"""Go's fmt and Prometheus' template functions (exporter.gofmt): each printer against the original's output.

Expected outputs marked "Prometheus" are copied from prometheus/prometheus template/template_test.go (the
cases that exercise template.go's humanize*, stripPort and stripDomain). Values marked "template.go" are not
in its tests but follow from its code step by step (same float operations, Go's %.4g), e.g. the "u" micro
prefix: humanize(0.0001234) multiplies by 1000 twice and prints "123.4u".
"""

from __future__ import annotations

import math

import pytest

from exporter.gofmt import (
    FormatError,
    go_float,
    humanize,
    humanize1024,
    humanize_duration,
    humanize_percentage,
    parse_format,
    sprintf,
    strip_domain,
    strip_port,
)

NAN, INF = math.nan, math.inf
MAX_INT64, MAX_UINT64 = float(2**63 - 1), float(2**64 - 1)


# --- the number formatting functions, against Prometheus ---------------------------------------------------

HUMANIZE = [
    (0.0, "0"),  # Prometheus
    (1.0, "1"),  # Prometheus
    (1234567.0, "1.235M"),  # Prometheus
    (0.12, "120m"),  # Prometheus
    (-1.0, "-1"),  # Prometheus
    (MAX_INT64, "9.223E"),  # Prometheus
    (MAX_UINT64, "18.45E"),  # Prometheus
    (INF, "+Inf"),  # Prometheus
    (-INF, "-Inf"),  # Prometheus
    (NAN, "NaN"),  # Prometheus
    (1234.0, "1.234k"),  # template.go
    (0.001, "1m"),  # template.go
    (0.0001234, "123.4u"),  # template.go: micro is "u", not "µ"
    (-1500.0, "-1.5k"),  # template.go
    (999.99, "1000"),  # template.go: %.4g rounds up after the < 1000 test, so no "1k"
    (1e30, "1e+06Y"),  # template.go: past Y, %.4g switches to e-notation
    (1e-30, "1e-06y"),  # template.go
    (5e-324, "4.941e-300y"),  # template.go: smallest subnormal
]

HUMANIZE1024 = [
    (0.0, "0"),  # Prometheus
    (1.0, "1"),  # Prometheus
    (1048576.0, "1Mi"),  # Prometheus
    (0.12, "0.12"),  # Prometheus: below 1 there are no prefixes
    (-1.0, "-1"),  # Prometheus
    (1234567.0, "1.177Mi"),  # Prometheus
    (MAX_INT64, "8Ei"),  # Prometheus
    (MAX_UINT64, "16Ei"),  # Prometheus
    (INF, "+Inf"),  # Prometheus
    (-INF, "-Inf"),  # Prometheus
    (NAN, "NaN"),  # Prometheus
    (1024.0, "1ki"),  # template.go: lower-case k, as there
    (-2048.0, "-2ki"),  # template.go
    (1e30, "8.272e+05Yi"),  # template.go
]

HUMANIZE_DURATION = [
    (0.0, "0s"),  # Prometheus
    (1.0, "1s"),  # Prometheus
    (60.0, "1m 0s"),  # Prometheus
    (3600.0, "1h 0m 0s"),  # Prometheus
    (86400.0, "1d 0h 0m 0s"),  # Prometheus
    (86400.0 + 3600.0, "1d 1h 0m 0s"),  # Prometheus
    (-(86400 * 2 + 3600 * 3 + 60 * 4 + 5.0), "-2d 3h 4m 5s"),  # Prometheus
    (899.99, "14m 59s"),  # Prometheus: whole seconds from a minute up
    (0.1, "100ms"),  # Prometheus
    (0.0001, "100us"),  # Prometheus
    (0.12345, "123.5ms"),  # Prometheus
    (60.1, "1m 0s"),  # Prometheus
    (60.5, "1m 0s"),  # Prometheus
    (1.2345, "1.234s"),  # Prometheus
    (12.345, "12.35s"),  # Prometheus
    (-1.0, "-1s"),  # Prometheus
    (1234567.0, "14d 6h 56m 7s"),  # Prometheus
    (INF, "+Inf"),  # Prometheus
    (-INF, "-Inf"),  # Prometheus
    (NAN, "NaN"),  # Prometheus
    (3723.0, "1h 2m 3s"),  # template.go
    (-0.5, "-500ms"),  # template.go
    (1e-30, "1e-06ys"),  # template.go
    # Prometheus overflows int64 here and prints "-106751991167300d -15h -30m -8s" (its amd64-only test);
    # we print the true value instead.
    (MAX_INT64, "106751991167300d 15h 30m 8s"),
]

HUMANIZE_PERCENTAGE = [
    (-0.22222, "-22.22%"),  # Prometheus
    (0.0, "0%"),  # Prometheus
    (0.1234567, "12.35%"),  # Prometheus
    (1.23456, "123.5%"),  # Prometheus
    (-1.0, "-100%"),  # Prometheus
    (1.0, "100%"),  # Prometheus
    (1234567.0, "1.235e+08%"),  # Prometheus
    (MAX_INT64, "9.223e+20%"),  # Prometheus
    (0.123, "12.3%"),  # template.go
    (NAN, "NaN%"),  # template.go
    (INF, "+Inf%"),  # template.go
    (-INF, "-Inf%"),  # template.go
    (1e-9, "1e-07%"),  # template.go
]


@pytest.mark.parametrize(
    ("function", "value", "expected"),
    [(humanize, v, e) for v, e in HUMANIZE]
    + [(humanize1024, v, e) for v, e in HUMANIZE1024]
    + [(humanize_duration, v, e) for v, e in HUMANIZE_DURATION]
    + [(humanize_percentage, v, e) for v, e in HUMANIZE_PERCENTAGE],
)
def test_number_functions_match_prometheus(function, value, expected):
    assert function(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (11.0, "11"),  # Prometheus: {{ query ... | first | value }}
        (1.5, "1.5"),  # Prometheus
        (0.1, "0.1"),
        (100000.0, "100000"),
        (123456.7, "123456.7"),
        (1234567.0, "1.234567e+06"),  # Go's %v: e-notation from exponent 6 on
        (1e21, "1e+21"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5e-7, "-2.5e-07"),
        (-0.0, "-0"),
        (5e-324, "5e-324"),
        (NAN, "NaN"),
        (INF, "+Inf"),
        (-INF, "-Inf"),
    ],
)
def test_values_print_as_go_prints_float64(value, expected):
    assert go_float(value) == expected


# --- string functions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "strip_port_expected", "strip_domain_expected"),
    [
        # Prometheus, all of them
        ("foo.example.com", "foo.example.com", "foo"),
        ("foo.example.com:12345", "foo.example.com", "foo:12345"),
        ("192.0.2.1", "192.0.2.1", "192.0.2.1"),
        ("192.0.2.1:12345", "192.0.2.1", "192.0.2.1:12345"),
        ("2001:0DB8::1", "2001:0DB8::1", "2001:0DB8::1"),
        ("[2001:0DB8::1]:12345", "2001:0DB8::1", "[2001:0DB8::1]:12345"),
        ("[2001:0DB8::1]::12345", "[2001:0DB8::1]::12345", "[2001:0DB8::1]::12345"),
        # Go's net.SplitHostPort corners
        ("host:", "host", "host"),
        (":9100", "", ":9100"),
        ("a]b:1", "a]b:1", "a]b:1"),
        ("", "", ""),
    ],
)
def test_strip_port_and_domain(host, strip_port_expected, strip_domain_expected):
    assert strip_port(host) == strip_port_expected
    assert strip_domain(host) == strip_domain_expected


# --- printf -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [  # Go's fmt: infinities keep their sign, NaN has none, and neither is zero-padded
        ("%.2f", NAN, "NaN"),
        ("%f", INF, "+Inf"),
        ("%e", -INF, "-Inf"),
        ("%g", INF, "+Inf"),
        ("%d", NAN, "NaN"),
        ("%8.2f|", NAN, "     NaN|"),
        ("%08.2f|", -INF, "    -Inf|"),
        ("%-6v|", INF, "+Inf  |"),
        ("%+f", NAN, "+NaN"),
        ("%.1f", 0.0, "0.0"),
        ("%.1f", -0.0, "-0.0"),
        ("%d", 1e300, str(int(1e300))),
    ],
)
def test_printf_special_values(fmt, value, expected):
    assert sprintf(parse_format(fmt), [value]) == expected


@pytest.mark.parametrize(
    ("fmt", "index", "message"),
    [
        ("%x", 0, "printf format '%x': unsupported directive '%x'"),
        ("ok %(name)s", 3, "unsupported directive '%(nam'"),
        ("50%", 2, "unsupported directive '%'"),
        ("%.2d", 0, "printf format '%.2d': %d takes no precision"),
    ],
)
def test_unsupported_formats_name_the_bad_directive_and_its_index(fmt, index, message):
    with pytest.raises(FormatError) as info:
        parse_format(fmt)
    assert info.value.index == index
    assert message in str(info.value)
