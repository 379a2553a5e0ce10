"""Property-based tests of the rules.yaml loader (hypothesis).

1. Documents built from the schema's own field tables, with every value either plausible or junk (huge
   integers, NaN, NUL bytes, broken URLs, near-miss durations, nested lists and maps), keys misspelt
   near the real ones, and whole YAML texts cut and spliced: `parse_config` returns a Config or raises
   ConfigError, nothing else, and every error names where the problem is (the key's path, or the line
   and column of a YAML syntax error).
2. Valid files generated with known meaning (defaults, per-rule overrides, durations written in any
   Prometheus form, ${ENV} references): they load, every setting is what the file says after merging
   built-in defaults < `defaults` < the rule, durations print back to text that parses to the same
   seconds, and the JSON Schema an editor would use accepts them too.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from exporter.config import MAX_POINTS_PER_SERIES, Config, ConfigError, json_schema, parse_config
from exporter.config_check import _join
from exporter.config_schema import CONFIG, DEFAULT_ANNOTATIONS, Field, Section
from exporter.durations import format_duration, parse_duration
from exporter.secret import Secret
from tests.test_config import _valid

UNITS = ("y", "w", "d", "h", "m", "s", "ms")
ENV = {"X": "1m", "TEAM": "sre", "URL": "http://env-prom:9090"}
SETTINGS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _all_sections(section: Section) -> Iterator[Section]:
    yield section
    for f in section.fields:
        if f.section is not None:
            yield from _all_sections(f.section)


SECTIONS = {s.name: s for s in _all_sections(CONFIG)}
FIELD_NAMES = sorted({f.name for s in SECTIONS.values() for f in s.fields})

# --- strategies ---------------------------------------------------------------------------------------------

valid_durations = st.dictionaries(st.sampled_from(UNITS), st.integers(0, 10**6), min_size=1, max_size=3).map(
    lambda terms: "".join(f"{n}{u}" for u, n in sorted(terms.items(), key=lambda t: UNITS.index(t[0])))
)
NASTY = [
    "", " ", "\x00", "a\x00b", "${X}", "${MISSING}", "$${", "${", "${1}", "🔥", "\n", "\t",
    "http://[::1", "http://[zz]/", "https://", "http://h:99999999", "http://h:-1", "http://", "ftp://h",
    "http://h/\x00", "http://a b", "1e6", "-1", "nan", ".inf", "~", "{{ $value }}", "{{", "}}",
    "{{ $labels. }}", "{{ " + "(" * 40 + "1" + ")" * 40 + " }}", "up", "auto", "both", "iforest",
    "alertmanager", "slack", "webhook", "token", "missing", "empty", "dir", "/nonexistent/x", "1m", "0s",
    "1ms", "5M", "1h1h", "-5m", "1.5h", "5 m", "m", "30s1m", "9" * 30 + "s", "9" * 400 + "d", "9" * 400,
]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | st.text(max_size=8)
    | valid_durations
    | st.sampled_from(NASTY)
)


def _typos(name: str) -> st.SearchStrategy[str]:
    """Near misses of a real key: a letter dropped, doubled, swapped or changed, case, - for _, a plural."""
    edits = [name.upper(), name.replace("_", "-"), name + "s", " " + name, name.capitalize()]
    for i in range(len(name)):
        edits += [name[:i] + name[i + 1 :], name[:i] + name[i] + name[i:]]
        if i + 1 < len(name):
            edits.append(name[:i] + name[i + 1] + name[i] + name[i + 2 :])
    return st.sampled_from([e for e in edits if e not in FIELD_NAMES] or [name + "x"])


keys = (
    st.sampled_from(FIELD_NAMES).flatmap(_typos)
    | st.sampled_from(FIELD_NAMES)
    | st.text(max_size=6)
    | st.integers(-2, 2)
    | st.none()
    | st.booleans()
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


def _plausible(f: Field) -> st.SearchStrategy[Any]:
    """A value of the right kind (often valid, sometimes out of bounds)."""
    match f.kind:
        case "enum":
            return st.sampled_from(f.choices)
        case "number":
            return st.integers(-1, 100) | st.floats(-1, 100)
        case "integer":
            return st.integers(-1, 2000)
        case "boolean":
            return st.booleans()
        case "duration":
            return valid_durations
        case "url" | "secret_url":
            return st.sampled_from(["http://prom:9090", "https://p.example/x/", "${URL}", "http://h:1/a?b#c"])
        case "urls":
            return st.lists(st.sampled_from(["http://am:9093", "${URL}"]), max_size=2)
        case "secret_file" | "secret_url_file" | "path":
            return st.sampled_from(["token", "url", "missing", "empty", "dir"])
        case "string_map" | "labels":
            return st.dictionaries(
                st.sampled_from(["team", "env", "__x", "rule", "a-b", "x"]), scalars, max_size=3
            )
        case "names":
            return st.lists(st.sampled_from(["am", "hook", "nope"]), max_size=3)
        case _:
            return st.sampled_from(["r", "up", "rate(x[5m])", "a-b:c", "{{ $value }}", "${TEAM}"]) | st.text()


def _document(section: Section) -> st.SearchStrategy[Any]:
    """A mapping for `section`: any of its keys with plausible or junk values, plus a few misspelt keys."""
    values: dict[str, st.SearchStrategy[Any]] = {}
    for f in section.fields:
        if f.kind == "section":
            assert f.section is not None
            good = _document(f.section)
        elif f.kind == "section_list":
            assert f.section is not None
            good = st.lists(_document(f.section), min_size=1, max_size=2)
        elif f.kind == "section_map":
            assert f.section is not None
            good = st.dictionaries(st.sampled_from(["am", "hook", "b@d"]), _document(f.section), max_size=2)
        else:
            good = _plausible(f)
        values[f.name] = st.one_of(good, good, good, junk)
    real = st.fixed_dictionaries({}, optional=values)  # type: ignore[arg-type]
    extra = st.dictionaries(keys, junk, max_size=1)
    return st.builds(lambda a, b: {**b, **a}, real, extra)


documents = _document(CONFIG) | junk


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files that relative `*_file` / `ca_file` values above name (one missing, one empty, one a dir)."""
    base = tmp_path_factory.mktemp("config-files")
    (base / "token").write_text("tok\n")
    (base / "url").write_text("https://hooks.example/x\n")
    (base / "empty").write_text("")
    (base / "dir").mkdir()
    return base


# --- every error names its place ----------------------------------------------------------------------------


def _places(doc: Any) -> set[str]:
    """Paths an error may name: every node of the document, and any known key under any mapping of it
    (where a required key is missing)."""
    out: set[str] = set()

    def walk(node: Any, path: str) -> None:
        out.add(path)
        if isinstance(node, dict):
            out.update(_join(path, name) for name in FIELD_NAMES)
            for k, v in node.items():
                walk(v, _join(path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(doc, "")
    out.discard("")
    return out


# YAML level: `rules.yaml:line:column: problem`, or `rules.yaml: problem` for a value PyYAML cannot build
_YAML_ERROR = re.compile(r"rules\.yaml(?::\d+:\d+)?: \S")


def _assert_loads_or_names_each_error(text: str, doc: Any, base_dir: Path) -> Config | None:
    try:
        return parse_config(text, source="rules.yaml", environ=ENV, base_dir=str(base_dir))
    except ConfigError as exc:
        assert exc.errors, "a ConfigError with no errors"
        places = _places(doc) if doc is not None else set()
        for error in exc.errors:
            assert isinstance(error, str) and error.strip(), exc.errors
            if error.startswith("rules.yaml:"):
                assert _YAML_ERROR.match(error), error
                continue
            if error.startswith(("config is empty", "top level must be a mapping")):
                continue
            named = [p for p in places if error.startswith(p + ": ") and len(error) > len(p) + 2]
            assert named, f"error names no place in the document: {error!r}"
        return None


@SETTINGS
@given(doc=documents)
def test_any_document_gives_a_config_or_errors_that_name_their_place(doc: Any, files: Path) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    # as YAML reads it back: not always `doc` (a NEL character in a key reads back as a space)
    _assert_loads_or_names_each_error(text, yaml.safe_load(text), files)


@SETTINGS
@given(
    doc=_document(CONFIG), cut=st.integers(0, 10**6), length=st.integers(0, 40), insert=st.text(max_size=6)
)
def test_spliced_yaml_text_gives_a_config_or_errors(
    doc: Any, cut: int, length: int, insert: str, files: Path
) -> None:
    """Cut a piece out of a document's text and put something else there: YAML syntax errors, wrong
    indentation, unknown tags, duplicate keys... The document is then unknown, so only the error's form
    is checked: a syntax error gives its line and column."""
    text = yaml.safe_dump(doc, allow_unicode=True)
    at = cut % (len(text) + 1)
    spliced = text[:at] + insert + text[at + length :]
    try:
        parse_config(spliced, source="rules.yaml", environ=ENV, base_dir=str(files))
    except ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) and e.strip() for e in exc.errors)
        assert all(_YAML_ERROR.match(e) for e in exc.errors if e.startswith("rules.yaml")), exc.errors


@settings(max_examples=40, deadline=None, database=None)
@given(
    depth=st.integers(1, 3000),
    opener=st.sampled_from(["[", "{a: ", "- "]),
    key=st.sampled_from(["rules", "prometheus", "defaults"]),
)
def test_deeply_nested_documents_are_config_errors(depth: int, opener: str, key: str) -> None:
    closer = {"[": "]", "{a: ": "}", "- ": ""}[opener]
    nested = f"{opener * depth}x{closer * depth}"  # "- - - x" nests block sequences on one line
    text = f"prometheus: {{url: http://p}}\n{key}:\n  {nested}\n"
    with pytest.raises(ConfigError):
        parse_config(text, environ={})


@settings(max_examples=100, deadline=None, database=None)
@given(
    section=st.sampled_from(["prometheus", "defaults", "rule", "model", "alert"]),
    name=st.sampled_from(FIELD_NAMES).flatmap(_typos),
)
def test_a_misspelt_key_is_an_error_at_its_path(section: str, name: str) -> None:
    rule = {"name": "r", "query": "up"}
    doc: dict[str, Any] = {"prometheus": {"url": "http://p"}, "rules": [rule]}
    where = {
        "prometheus": (doc["prometheus"], "prometheus"),
        "defaults": (doc.setdefault("defaults", {}), "defaults"),
        "rule": (rule, "rules[0]"),
        "model": (rule.setdefault("model", {}), "rules[0].model"),
        "alert": (rule.setdefault("alert", {}), "rules[0].alert"),
    }
    target, path = where[section]
    assume(
        name not in {f.name for f in SECTIONS["rule" if section in ("rule", "defaults") else section].fields}
    )
    target[name] = "1m"
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(doc), environ={})
    assert any(e.startswith(f"{_join(path, name)}: unknown key (") for e in info.value.errors), (
        info.value.errors
    )


# --- valid files load to what they say ---------------------------------------------------------------------

BUILTIN = {
    "interval": 60.0, "retrain": 3600.0, "history": 7 * 86400.0, "step": 60.0, "z_threshold": 4.0,
    "direction": "both", "min_abs_deviation": 0.0, "min_rel_deviation": 0.0, "max_series": 1000,
    "model.type": "seasonal", "model.seasonality": "auto", "model.level_window": 3600.0,
    "model.min_history": 3600.0, "model.contamination": 0.001, "model.per_series": False,
    "model.exclude_anomalies": True, "alert.threshold": 1.0, "alert.recovery_threshold": None,
    "alert.for": 60.0, "alert.keep_firing_for": 600.0, "alert.min_points": 1, "alert.window": 0.0,
    "alert.severity": "warning", "alert.name": None, "alert.receivers": [],
}  # fmt: skip
DURATION_KEYS = {
    "interval", "retrain", "history", "step", "model.level_window", "model.min_history", "alert.for",
    "alert.keep_firing_for", "alert.window",
}  # fmt: skip


@st.composite
def _written(draw: st.DrawFn, seconds: float) -> str:
    """`seconds` written as a Prometheus duration, in one of its forms (1h30m, 90m, 5400s...)."""
    ms = round(seconds * 1000)
    forms = [format_duration(seconds)]
    for unit in UNITS:
        size = round(parse_duration("1" + unit) * 1000)
        if ms % size == 0:
            forms.append(f"{ms // size}{unit}")
    return draw(st.sampled_from(forms))


@st.composite
def _rule_settings(draw: st.DrawFn) -> dict[str, Any]:
    """Merged settings of one rule that satisfy every cross-key check (values as the loader returns them)."""
    s = dict(BUILTIN)
    step = draw(st.integers(1, 600))
    s["step"] = float(step)
    s["history"] = float(
        draw(st.integers(10 * step, min(10 * step + 30 * 86400, MAX_POINTS_PER_SERIES * step)))
    )
    s["interval"] = float(draw(st.integers(1, 3600)))
    s["retrain"] = s["interval"] + draw(st.integers(0, 86400))
    s["model.level_window"] = float(draw(st.integers(1, int(s["history"]))))
    s["model.min_history"] = float(draw(st.integers(0, int(s["history"]))))
    s["z_threshold"] = draw(st.floats(0.01, 100))
    s["direction"] = draw(st.sampled_from(["up", "down", "both"]))
    s["min_abs_deviation"] = draw(st.floats(0, 1e6))
    s["min_rel_deviation"] = draw(st.floats(0, 10))
    s["max_series"] = draw(st.integers(1, 100_000))
    s["model.type"] = draw(st.sampled_from(["seasonal", "iforest", "mad"]))
    s["model.seasonality"] = draw(st.sampled_from(["auto", "none", "daily", "weekly"]))
    s["model.contamination"] = draw(st.floats(1e-6, 0.5))
    s["model.per_series"] = draw(st.booleans())
    s["model.exclude_anomalies"] = draw(st.booleans())
    s["alert.threshold"] = draw(st.floats(0.01, 10))
    s["alert.recovery_threshold"] = draw(
        st.none() | st.floats(0.001, 1).map(lambda f: f * s["alert.threshold"])
    )
    s["alert.for"] = float(draw(st.integers(0, 86400)))
    s["alert.keep_firing_for"] = float(draw(st.integers(0, 86400)))
    s["alert.window"] = float(draw(st.integers(0, 100)) * step)
    s["alert.min_points"] = draw(st.integers(1, int(s["alert.window"] // step) + 1))
    s["alert.severity"] = draw(st.sampled_from(["warning", "page", "info 🔔"]))
    s["alert.name"] = draw(st.none() | st.sampled_from(["Anomaly", "a:b-c_1"]))
    s["alert.receivers"] = draw(st.lists(st.sampled_from(["am", "hook"]), unique=True, max_size=2))
    # any setting may keep its built-in value (then the file need not say it)
    for key in list(s):
        if draw(st.booleans()) and _fits(s, key, BUILTIN[key]):
            s[key] = BUILTIN[key]
    return s


def _fits(s: dict[str, Any], key: str, value: Any) -> bool:
    """Would the rule still pass the cross-key checks with `key` set to `value`?"""
    t = {**s, key: value}
    recovery = t["alert.recovery_threshold"]
    return (
        t["history"] >= 10 * t["step"]
        and t["history"] // t["step"] <= MAX_POINTS_PER_SERIES
        and t["retrain"] >= t["interval"]
        and t["model.level_window"] <= t["history"]
        and t["model.min_history"] <= t["history"]
        and (recovery is None or recovery <= t["alert.threshold"])
        and (t["alert.min_points"] <= 1 or t["alert.min_points"] <= t["alert.window"] // t["step"] + 1)
        and t["step"] == int(t["step"])
    )


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, name = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = value
    return out


label_maps = st.dictionaries(
    st.sampled_from(["team", "env", "tier", "x_1"]),
    st.text(alphabet=string.ascii_letters + "-é🔥 ", max_size=6) | st.just("${TEAM}"),
    max_size=3,
)


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(document, the merged settings of each rule, what the prometheus section should become)."""
    n = draw(st.integers(1, 3))
    merged = [draw(_rule_settings()) for _ in range(n)]
    shared = {k: v for k, v in merged[0].items() if draw(st.booleans())}  # `defaults` copies rule 0's
    defaults_flat: dict[str, Any] = {}
    for key, value in shared.items():
        if value is None or value == []:
            continue
        defaults_flat[key] = draw(_written(value)) if key in DURATION_KEYS else value
    rules = []
    labels = {
        "labels": draw(label_maps),
        "alert.labels": draw(label_maps),
        "alert.annotations": draw(label_maps),
    }
    for i, s in enumerate(merged):
        own: dict[str, Any] = {}
        for key, value in s.items():
            inherited = shared.get(key, BUILTIN[key])
            if value is None and inherited is not None:  # "not set" can't override `defaults`
                value = s[key] = inherited if _fits(s, key, inherited) else s["alert.threshold"]
            if value != inherited or (value is not None and value != [] and draw(st.booleans())):
                own[key] = draw(_written(value)) if key in DURATION_KEYS else value
        own_labels = {k: draw(label_maps) for k in labels}
        expanded = {}
        for k in labels:
            layers = [DEFAULT_ANNOTATIONS if k == "alert.annotations" else {}, labels[k], own_labels[k]]
            expanded[k] = {n: v.replace("${TEAM}", ENV["TEAM"]) for layer in layers for n, v in layer.items()}
            if own_labels[k]:
                own[k] = own_labels[k]
        s.update(expanded)
        rules.append({"name": f"rule-{i}", "query": f"sum(rate(x{i}[5m]))", **_nest(own)})
        s["name"] = f"rule-{i}"
    for k, v in labels.items():
        if v:
            defaults_flat[k] = v
    url = draw(st.sampled_from(["http://prom:9090", "https://p.example/prefix/", "${URL}"]))
    timeout = float(draw(st.integers(1, 600)))
    prometheus = {"url": url, "timeout": draw(_written(timeout)), "headers": {"X-Scope-OrgID": "${TEAM}"}}
    doc: dict[str, Any] = {
        "prometheus": prometheus,
        "rules": rules,
        "receivers": {
            "am": {"type": "alertmanager", "urls": ["http://am-0:9093", "http://am-1:9093/"]},
            "hook": {"type": "webhook", "url": "https://hooks.example/x?token=abc"},
        },
    }
    if defaults_flat:
        doc["defaults"] = _nest(defaults_flat)
    want_prom = {"url": url.replace("${URL}", ENV["URL"]).rstrip("/"), "timeout": timeout}
    return doc, merged, want_prom


SCHEMA = json_schema()


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(file=valid_files())
def test_valid_files_load_to_what_they_say(
    file: tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]],
) -> None:
    doc, merged, want_prom = file
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    config = parse_config(text, environ=ENV)
    assert config.prometheus.url == want_prom["url"]
    assert config.prometheus.timeout == want_prom["timeout"]
    assert dict(config.prometheus.headers) == {"X-Scope-OrgID": ENV["TEAM"]}
    assert config.receivers["am"].urls == (Secret("http://am-0:9093"), Secret("http://am-1:9093"))
    assert config.receivers["hook"].urls == (Secret("https://hooks.example/x?token=abc"),)
    assert [r.name for r in config.rules] == [s["name"] for s in merged]
    for rule, s in zip(config.rules, merged, strict=True):
        got = {
            "interval": rule.interval, "retrain": rule.retrain, "history": rule.history, "step": rule.step,
            "z_threshold": rule.z_threshold, "direction": rule.direction,
            "min_abs_deviation": rule.min_abs_deviation, "min_rel_deviation": rule.min_rel_deviation,
            "max_series": rule.max_series, "labels": dict(rule.labels),
            **{f"model.{k}": v for k, v in vars(rule.model).items()},
            "alert.threshold": rule.alert.threshold,
            "alert.recovery_threshold": rule.alert.recovery_threshold,
            "alert.for": rule.alert.for_, "alert.keep_firing_for": rule.alert.keep_firing_for,
            "alert.min_points": rule.alert.min_points, "alert.window": rule.alert.window,
            "alert.severity": rule.alert.severity, "alert.name": rule.alert.name,
            "alert.receivers": list(rule.alert.receivers), "alert.labels": dict(rule.alert.labels),
            "alert.annotations": dict(rule.alert.annotations), "name": rule.name,
        }  # fmt: skip
        assert got == s
        for key in DURATION_KEYS:  # every duration prints as text that parses back to the same seconds
            seconds = got[key]
            assert parse_duration(format_duration(seconds)) == seconds
    assert _valid(SCHEMA, yaml.safe_load(text), SCHEMA), "the JSON Schema rejects a file the loader accepts"
