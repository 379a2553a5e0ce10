"""Alert templates: the functions as templates call them, pipelines, printf, every compile error, and safety.

What the formatting functions print is checked against Prometheus and Go in test_gofmt.py. Expected outputs
marked "Prometheus" here are copied from prometheus/prometheus template/template_test.go (title,
toUpper/toLower, and numbers given as text).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config_schema import DEFAULT_ANNOTATIONS
from exporter.gofmt import go_float, humanize, humanize1024, humanize_duration, humanize_percentage
from exporter.templating import MAX_OUTPUT, Template, TemplateContext, TemplateError, compile_template

NAN, INF = math.nan, math.inf
MAX_INT64, MAX_UINT64 = float(2**63 - 1), float(2**64 - 1)

CTX = TemplateContext(
    labels={"instance": "db1.example.com:9100", "job": "node", "odd-name": "x", "n": "7", "word": "abc"},
    value=1234567.0,
    score=2.345,
    expected=1000.0,
    lower=900.0,
    upper=1100.5,
    rule="cpu",
    threshold=1.0,
)


def render(text: str, ctx: TemplateContext = CTX) -> str:
    return compile_template(text).render(ctx)


def error_of(text: str) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        compile_template(text)
    return info.value


# --- the formatting functions, as template functions --------------------------------------------------------

# What they print is checked against Prometheus in test_gofmt.py; here: each name calls its function.
NUMBERS = [0.0, 1.0, -1.0, 1234567.0, 0.12, -0.22222, 0.0001, 86400.0 + 3600.0, MAX_INT64, NAN, INF, -INF]


@pytest.mark.parametrize(
    ("function", "name"),
    [
        (humanize, "humanize"),
        (humanize1024, "humanize1024"),
        (humanize_duration, "humanizeDuration"),
        (humanize_percentage, "humanizePercentage"),
    ],
)
@pytest.mark.parametrize("value", NUMBERS)
def test_number_functions_are_the_template_functions(function, name, value):
    ctx = TemplateContext(value=value)
    assert render(f"{{{{ {name} $value }}}}", ctx) == function(value)
    assert render(f"{{{{ $value | {name} }}}}", ctx) == function(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{{ "1234567" | humanize }}', "1.235M"),  # Prometheus: numbers in strings are parsed
        ('{{ "86400" | humanizeDuration }}', "1d 0h 0m 0s"),  # Prometheus
        ('{{ "+Inf" | humanize1024 }}', "+Inf"),  # Prometheus
        ('{{ "NaN" | humanizePercentage }}', "NaN%"),
        ("{{ $labels.n | humanizeDuration }}", "7s"),
        # Prometheus fails the whole expansion here; we leave the text as it is.
        ("{{ $labels.job | humanize }}", "node"),
        ('{{ "1_000" | humanize }}', "1_000"),  # Go's ParseFloat takes no underscores in decimals
        ("{{ $labels.missing | humanize }}", ""),
        ("{{ 1234 | humanize }}", "1.234k"),
        ("{{ -0.22222 | humanizePercentage }}", "-22.22%"),  # Prometheus
    ],
)
def test_number_functions_take_numbers_in_text(text, expected):
    assert render(text) == expected


def test_missing_numbers_print_as_empty_text_everywhere():
    ctx = TemplateContext(labels={"job": "a"})
    for name in ("humanize", "humanize1024", "humanizeDuration", "humanizePercentage"):
        assert render(f"[{{{{ $value | {name} }}}}]", ctx) == "[]"
    assert render(
        '[{{ $score }}|{{ printf "%.2f" $expected }}|{{ $lower | printf "%5d" }}|{{ $rule }}]', ctx
    ) == ("[|||]")


@pytest.mark.parametrize("value", [*NUMBERS, 1e21, -0.0, 5e-324])
def test_values_print_as_go_prints_float64(value):
    assert render("{{ $value }}", TemplateContext(value=value)) == go_float(value)
    assert render("{{ .Value }}", TemplateContext(value=value)) == go_float(value)


def test_numpy_scalars_are_numbers():
    assert render(
        "{{ $value }} {{ $score | humanize }}", TemplateContext(value=np.float32(1.5), score=np.int64(2000))
    ) == ("1.5 2k")


# --- string functions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{{ "aa bb CC" | title }}', "Aa Bb CC"),  # Prometheus
        ('{{ "aa bb CC" | toUpper }}', "AA BB CC"),  # Prometheus
        ('{{ "aA bB CC" | toLower }}', "aa bb cc"),  # Prometheus
        ('{{ "node_exporter up-time" | title }}', "Node_exporter Up-Time"),
        ('{{ "it\'s db1.example.com" | title }}', "It's Db1.example.com"),
        ('{{ "élan vital" | title }}', "Élan Vital"),
        ("{{ $labels.job | toUpper }}", "NODE"),
        ("{{ $value | toUpper }}", "1.234567E+06"),  # numbers are printed first, then the function applies
        ("{{ $labels.missing | title }}", ""),
        ("{{ $labels.instance | stripPort }}", "db1.example.com"),
        ("{{ stripDomain $labels.instance }}", "db1:9100"),
        ('{{ "[2001:0DB8::1]:12345" | stripPort }}', "2001:0DB8::1"),
    ],
)
def test_string_functions(text, expected):
    assert render(text) == expected


# --- printf -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "args", "expected"),
    [
        ("%.2f", "$score", "2.35"),
        ("%.1f", "$score", "2.3"),
        ("%f", "$score", "2.345000"),
        ("%.f", "2.5", "2"),  # round half to even, as Go
        ("%5.1f|", "$score", "  2.3|"),
        ("%-7.1f|", "$score", "2.3    |"),
        ("%+.1f", "$score", "+2.3"),
        ("% .1f", "$score", " 2.3"),
        ("%08.2f", "-1.5", "-0001.50"),
        ("%d", "42", "42"),
        ("%d", "$score", "2"),  # Go prints %!d(float64=2.345); we print the integer part
        ("%d", "-3.9", "-3"),
        ("%05d", "-42", "-0042"),
        ("%+d", "5", "+5"),
        ("%-4d|", "7", "7   |"),
        ("%e", "1234.5678", "1.234568e+03"),
        ("%.2e", "$value", "1.23e+06"),
        ("%g", "$value", "1.234567e+06"),  # Go: shortest digits, unlike C's 6 significant
        ("%g", "0.5", "0.5"),
        ("%.3g", "$value", "1.23e+06"),
        ("%v", "$score", "2.345"),
        ("%v", "$value", "1.234567e+06"),
        ("%s", "$rule", "cpu"),
        ("%s", "$score", "2.345"),
        ("%.2s", "$labels.job", "no"),
        ("%6s|%-6s|", "$rule $rule", "   cpu|cpu   |"),
        ("100%%", "", "100%"),
        ("%s=%d", '"x" 3', "x=3"),
        ("%d items", "$labels.n", "7 items"),  # a number in a label is a number
        ("%.1f", "$labels.word", "abc"),  # text that is no number stays as it is
        ("%s", "$labels.missing", ""),
        ("no directives", "", "no directives"),
    ],
)
def test_printf(fmt, args, expected):
    assert render(f'{{{{ printf "{fmt}" {args} }}}}') == expected


# --- pipelines, variables and syntax ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ $value | humanize }}", "1.235M"),
        ('{{ $value | printf "%.2f" }}', "1234567.00"),
        ('{{ $rule | printf "%s/%s" "rule" }}', "rule/cpu"),  # the piped value is the last argument
        ("{{ $labels.instance | stripPort | stripDomain | toUpper }}", "DB1"),
        ('{{ printf "%s!" (humanize $value) }}', "1.235M!"),
        ('{{ printf "%s-%s" ($labels.job | toUpper) ($score | printf "%.0f") }}', "NODE-2"),
        ('{{ index $labels "odd-name" }}', "x"),
        ('{{ index .Labels "odd-name" }}', "x"),
        ('{{ "job" | index $labels }}', "node"),
        ("{{ index $labels $rule }}", ""),
        ("{{ .Labels.job }} {{ .Value }}", "node 1.234567e+06"),
        (
            "{{ $expected }} {{ $lower }} {{ $upper }} {{ $threshold }} {{ $score }}",
            "1000 900 1100.5 1 2.345",
        ),
        ("{{ $labels.missing }}", ""),  # like Prometheus' missingkey=zero
        ("{{ 1 }} {{ -3 }} {{ 1.5 }} {{ 1e3 }} {{ +2 }}", "1 -3 1.5 1000 2"),
        ("{{ 99999999999999999999 }}", "1e+20"),  # beyond int64: a float, as Go's parser makes it
        ('{{ "a\\tb\\"c\\\\d\\x41\\u00e9\\U0001F600" }}', 'a\tb"c\\dAé😀'),
        ("{{ `raw \\n %d` }}", "raw \\n %d"),
        ('{{ "}}" }} and {{ "{{" }}', "}} and {{"),
        ("{{ $labels }}", "map[instance:db1.example.com:9100 job:node n:7 odd-name:x word:abc]"),
        ("{{\n  $rule\n}}", "cpu"),
        ("a { b } c", "a { b } c"),
        ("", ""),
    ],
)
def test_pipelines_and_variables(text, expected):
    assert render(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a  \n {{- $rule }}  b", "acpu  b"),
        ("a  {{ $rule -}} \n\t b", "a  cpub"),
        ("a  {{- $rule -}}  b", "acpub"),
        ("{{-3}}", "-3"),  # no space after '-': a negative number, as in Go
        ("a {{/* a comment */}} b", "a  b"),
        ("a {{- /* a comment with }} and {{ */ -}} b", "ab"),
    ],
)
def test_trim_markers_and_comments(text, expected):
    assert render(text) == expected


def test_default_annotations_compile_and_render():
    summary = compile_template(DEFAULT_ANNOTATIONS["summary"])
    description = compile_template(DEFAULT_ANNOTATIONS["description"])
    assert summary.render(CTX) == "cpu: 1.235M is outside the expected range 900 to 1.101k"
    assert description.render(CTX) == "Rule cpu scored 2.35 (1 = band edge); expected 1k."


def test_a_template_compiles_once_and_renders_many_times():
    template = compile_template("{{ $labels.job }}={{ $value | humanize }}")
    assert isinstance(template, Template)
    assert repr(template) == "Template('{{ $labels.job }}={{ $value | humanize }}')"
    contexts = [TemplateContext(labels={"job": str(i)}, value=1000.0 * i) for i in range(3)]
    assert [template.render(c) for c in contexts] == ["0=0", "1=1k", "2=2k"]


# --- compile errors -----------------------------------------------------------------------------------------

SUPPORTED = "templates may only print variables ($labels, $value"

ERRORS = [
    ("{{ $valeu }}", 3, "unknown variable $valeu (did you mean $value?)"),
    ("x {{ $foo }}", 5, "unknown variable $foo (known: $labels, $value, $score, $expected, $lower, $upper"),
    ("{{ $externalLabels.x }}", 3, "unknown variable $externalLabels.x"),
    ("{{ .Foo }}", 3, "unknown field .Foo"),
    ("{{ .ExternalURL }}", 3, "unknown field .ExternalURL"),
    ("{{ . }}", 3, ". (the whole data) is not supported"),
    ("{{ $ }}", 3, "$ (the whole data) is not supported"),
    ("{{ $value.x }}", 9, "$value.x: $value has no fields"),
    ("{{ $labels.a.b }}", 10, "$labels.a.b: a label value has no fields"),
    ("{{ .Labels.a.b }}", 10, ".Labels.a.b: a label value has no fields"),
    ("{{ humanise $value }}", 3, "unknown function humanise (did you mean humanize?)"),
    ("{{ $value | reReplaceAll }}", 12, "unknown function reReplaceAll"),
    ('{{ query "up" }}', 3, "unknown function query (known: humanize, humanize1024"),
    ("ab {{ $value", 3, "unclosed action: '{{' without a matching '}}'"),
    ("{{ $value {{ $rule }}", 0, "unclosed action: '{{' not closed before the next '{{'"),
    ("a }} b", 2, "'}}' without an opening '{{'"),
    ("{{ $rule }} }}", 12, "'}}' without an opening '{{'"),
    ('{{ printf "%x" $value }}', 11, "printf format '%x': unsupported directive '%x'"),
    ('{{ printf "ok %(name)s" $value }}', 14, "unsupported directive '%(nam'"),
    ('{{ printf "%5" $value }}', 11, "unsupported directive '%5'"),
    ('{{ printf "%100f" $value }}', 11, "unsupported directive '%100f'"),
    ('{{ printf "%*d" 3 $value }}', 11, "unsupported directive '%*d'"),
    ('{{ printf "%[1]d" $value }}', 11, "unsupported directive '%[1]d'"),
    ('{{ printf "50%" }}', 13, "unsupported directive '%'"),
    ('{{ printf "%.2d" $value }}', 11, "printf format '%.2d': %d takes no precision"),
    ('{{ printf "%d %d" $value }}', 3, "printf format '%d %d' takes 2 argument(s), got 1"),
    ('{{ printf "%d" $value $score }}', 3, "printf format '%d' takes 1 argument(s), got 2"),
    ('{{ $value | printf "%.2f %s" }}', 12, "takes 2 argument(s), got 1"),
    ("{{ printf $rule }}", 3, "printf needs a string literal format as its first argument"),
    ("{{ printf }}", 3, "printf needs a string literal format"),
    ("{{ humanize }}", 3, "humanize takes 1 argument(s), got 0"),
    ("{{ humanize $value $score }}", 3, "humanize takes 1 argument(s), got 2"),
    ("{{ $value | humanize $score }}", 12, "humanize takes 1 argument(s), got 2"),
    ('{{ index $labels "a" "b" }}', 3, "index takes 2 argument(s), got 3"),
    ('{{ index $value "a" }}', 9, "index: the first argument must be $labels (or .Labels)"),
    ("{{ $labels | humanize }}", 3, "humanize: $labels is a mapping; use $labels.name or index $labels"),
    ('{{ printf "%v" .Labels }}', 15, "printf: $labels is a mapping"),
    ("{{ $value 3 }}", 3, "$value is not a function and takes no arguments"),
    ("{{ $value | $rule }}", 12, "cannot pipe into $rule: only functions can follow |"),
    ("{{ }}", 0, "empty action '{{ }}'"),
    ("a {{- -}} b", 2, "empty action"),
    ("{{ $value | }}", 10, "missing value before or after | or inside ( )"),
    ("{{ | humanize }}", 3, "missing value"),
    ("{{ () }}", 4, "missing value"),
    ("{{ (humanize $value }}", 3, "unclosed '(' in action"),
    ("{{ $value) }}", 9, "unexpected ')'"),
    ("{{ " + "(" * 17 + "1" + ")" * 17 + " }}", 19, "parentheses nested deeper than 16"),
    ('{{ "abc }}', 3, "unterminated string literal"),
    ("{{ `abc }}", 3, "unterminated string literal"),
    ('{{ "a\\qb" }}', 5, "unknown escape \\q in string literal"),
    ('{{ "\\UFFFFFFFF" }}', 4, "invalid code point \\UFFFFFFFF"),
    ("{{ 3abc }}", 3, "unexpected '3abc }}' in action"),
    ("{{ $value & 1 }}", 10, "unexpected '& 1 }}' in action"),
    ("{{\u00a0$value }}", 2, "unexpected"),  # a non-ASCII space, rejected by Go too
    ("{{/* no end }}", 2, "unclosed comment: '/*' without '*/'"),
    ("{{/* c */ $value }}", 10, "a comment must end its action: '*/}}'"),
    ("{{ $x := 1 }}", 6, "variable assignment (:=) is not supported; " + SUPPORTED),
    ("{{ $value = 1 }}", 10, "variable assignment (=) is not supported"),
]


@pytest.mark.parametrize(("text", "pos", "message"), ERRORS)
def test_compile_errors_name_the_bad_part_and_its_position(text, pos, message):
    error = error_of(text)
    assert isinstance(error, ValueError)
    assert error.pos == pos
    assert str(error).startswith(f"position {pos}: ")
    assert message in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "{{ if $value }}high{{ end }}",
        "{{ range $labels }}x{{ end }}",
        "{{ with $value }}x{{ end }}",
        '{{ define "x" }}y{{ end }}',
        '{{ template "x" }}',
        '{{ block "x" . }}y{{ end }}',
        "{{ else }}",
        "{{ end }}",
        '{{ printf "%s" if }}',
    ],
)
def test_control_structures_are_refused_with_what_is_supported(text):
    error = error_of(text)
    keyword = text.split()[1] if not text.startswith("{{ printf") else "if"
    assert f"control structures ({keyword}) are not supported; {SUPPORTED}" in str(error)
    assert "humanize, humanize1024" in str(error)


# --- safety -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "{{ __import__ }}",
        '{{ __import__ "os" }}',
        "{{ eval }}",
        "{{ exec }}",
        "{{ getattr }}",
        "{{ $value.__class__ }}",
        "{{ .__class__ }}",
        "{{ $rule.__class__.__mro__ }}",
        "{{ $labels.__class__.__subclasses__ }}",
        "{{ .Labels.__dict__.x }}",
        "{{ call }}",
        '{{ printf "%(x)s" $value }}',
        '{{ printf "{0.__class__}%s" $rule | __builtins__ }}',
    ],
)
def test_injection_attempts_are_rejected(text):
    error_of(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ $labels.__class__ }}", ""),  # a label lookup, never attribute access
        ("{{ .Labels.__dict__ }}", ""),
        ('{{ index $labels "__class__" }}', ""),
        ('{{ index $labels "__init__.__globals__" }}', ""),
        ("{{ $labels.__name__ }}", "up"),  # the metric name label, as in Prometheus
        ('{{ "{0.__class__} {{ $value }}" }}', "{0.__class__} {{ $value }}"),
        ("{{ $labels.evil }}", "{{ $value }} %s %(x)s {0.__class__} ${HOME}"),  # data is never expanded again
        ('{{ printf "%s" $labels.evil }}', "{{ $value }} %s %(x)s {0.__class__} ${HOME}"),
        ("{{ $labels.evil | toUpper }}", "{{ $VALUE }} %S %(X)S {0.__CLASS__} ${HOME}"),
        ("{0.__class__} %s ${HOME} {% import os %}", "{0.__class__} %s ${HOME} {% import os %}"),
    ],
)
def test_injection_attempts_render_harmlessly(text, expected):
    ctx = TemplateContext(
        labels={"__name__": "up", "evil": "{{ $value }} %s %(x)s {0.__class__} ${HOME}"}, value=1.0
    )
    assert render(text, ctx) == expected


def test_output_is_bounded():
    long = TemplateContext(labels={"x": "y" * 10_000})
    text = render("{{ $labels.x }}", long)
    assert len(text) == MAX_OUTPUT
    assert text == "y" * (MAX_OUTPUT - 1) + "…"
    assert render("{{ $labels.x }}{{ $labels.x }}", long) == text
    exact = TemplateContext(labels={"x": "y" * MAX_OUTPUT})
    assert render("{{ $labels.x }}", exact) == "y" * MAX_OUTPUT
    many = compile_template('{{ printf "%99s" $rule }}' * 100)
    assert len(many.render(CTX)) == MAX_OUTPUT


FLOATS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
LABELS = st.dictionaries(st.sampled_from(["job", "instance", "x"]), st.text(max_size=20), max_size=3)
EVERYTHING = (
    "{{ $value }}{{ $value | humanize }}{{ humanize1024 $score }}{{ humanizeDuration $expected }}"
    '{{ humanizePercentage $lower }}{{ $upper | printf "%08.3f|%-5d|%+e|%g|%s|%v" $value $score $lower'
    " $upper $threshold }}{{ $labels.job | title }}{{ stripDomain $labels.instance }}"
    "{{ stripPort $labels.x }}"
    '{{ $labels.x | humanize }}{{ printf "%d" $labels.x }}{{ index $labels "x" | toUpper }}{{ $rule }}'
)


@settings(max_examples=300, deadline=None)
@given(value=FLOATS, score=FLOATS, expected=FLOATS, lower=FLOATS, upper=FLOATS, labels=LABELS)
def test_rendering_never_raises_on_data(value, score, expected, lower, upper, labels):
    ctx = TemplateContext(
        labels=labels, value=value, score=score, expected=expected, lower=lower, upper=upper, rule="r"
    )
    assert len(compile_template(EVERYTHING).render(ctx)) <= MAX_OUTPUT


TEMPLATE_PIECES = st.sampled_from(
    [
        "{{",
        "}}",
        "{{- ",
        " -}}",
        "$labels",
        ".job",
        "$value",
        "$score",
        ".Labels",
        "humanize",
        "printf",
        "index",
        '"%.2f"',
        '"%d %s"',
        '"x"',
        "`r`",
        "|",
        "(",
        ")",
        " ",
        "-",
        "1",
        "2.5",
        "/*",
        "*/",
        "$",
        ".",
        "if",
        ":=",
        '"',
        "\\",
        "%",
        "}",
        "{",
        "\n",
        "toUpper",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(TEMPLATE_PIECES, max_size=25).map("".join) | st.text(max_size=40))
def test_any_text_compiles_or_raises_template_error(text):
    try:
        template = compile_template(text)
    except TemplateError as error:
        assert 0 <= error.pos <= len(text)
        return
    assert isinstance(template.render(CTX), str)
    assert isinstance(template.render(TemplateContext()), str)
