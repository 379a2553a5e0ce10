"""rules.yaml -> validated, frozen config objects. Every error is reported at once, each with its path."""

from __future__ import annotations

import difflib
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from exporter.config_check import INVALID, Checker, Invalid, spec_default, type_name
from exporter.config_jsonschema import json_schema
from exporter.config_schema import (
    ALERT,
    CONFIG,
    DEFAULT_ANNOTATIONS,
    DEFAULTS,
    MODEL,
    PROMETHEUS,
    RECEIVER,
    RULE_SETTINGS,
    TLS,
    Section,
)
from exporter.durations import format_duration
from exporter.secret import Secret
from exporter.templating import TemplateError, compile_template

__all__ = [
    "AlertConfig",
    "BasicAuth",
    "Config",
    "ConfigError",
    "ModelConfig",
    "PrometheusConfig",
    "ReceiverConfig",
    "RuleConfig",
    "TLSConfig",
    "json_schema",
    "load_config",
    "parse_config",
]


def _frozen_map(data: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings for an outgoing HTTP client. Verification is on unless explicitly turned off."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: Secret


@dataclass(frozen=True)
class PrometheusConfig:
    """Where and how to reach a Prometheus-compatible query API.

    Works with Prometheus, Thanos, Mimir/Cortex and VictoriaMetrics.
    """

    url: str
    timeout: float = 30.0  # seconds, per HTTP request
    external_url: str | None = None  # for links in alerts; `url` when None
    headers: Mapping[str, str] = field(default_factory=_frozen_map)  # e.g. X-Scope-OrgID for tenants
    bearer_token: Secret | None = None
    basic_auth: BasicAuth | None = None
    tls: TLSConfig = field(default_factory=TLSConfig)
    max_retries: int = 3  # retries on connection errors and 5xx, with exponential backoff and jitter


@dataclass(frozen=True)
class ModelConfig:
    """Detector settings. `type` picks the detector; the others tune the seasonal baseline."""

    type: str = "seasonal"  # seasonal | iforest | mad
    seasonality: str = "auto"  # auto | none | daily | weekly
    level_window: float = 3600.0  # seconds of recent data used to follow level changes
    min_history: float = 3600.0  # seconds of data a series needs before it is scored (warm-up)
    contamination: float = 0.001  # iforest: calibration quantile (plus a margin) = score 1
    per_series: bool = False  # iforest: one forest per series instead of one per rule
    exclude_anomalies: bool = True  # points scoring >= 1 are kept out of the next fit


@dataclass(frozen=True)
class AlertConfig:
    """When a series' anomaly_score becomes an alert (as Prometheus evaluates `for` and `keep_firing_for`),
    what the alert says, and which receivers hear of it. Labels and annotations are templates."""

    name: str | None = None  # alertname; the rule's name when None
    threshold: float = 1.0  # anomaly_score at or above which a point is anomalous
    recovery_threshold: float | None = None  # a firing alert recovers below this; `threshold` when None
    for_: float = 60.0  # seconds the condition must hold before firing (YAML `for`)
    keep_firing_for: float = 600.0  # seconds a firing alert keeps firing after it recovered
    min_points: int = 1  # count-in-window: at least this many anomalous points ...
    window: float = 0.0  # ... within this many seconds (0: the current point alone)
    severity: str = "warning"
    labels: Mapping[str, str] = field(default_factory=_frozen_map)
    annotations: Mapping[str, str] = field(default_factory=lambda: _frozen_map(DEFAULT_ANNOTATIONS))
    receivers: tuple[str, ...] = ()  # names from the top-level `receivers:` section

    @property
    def recovery(self) -> float:
        return self.threshold if self.recovery_threshold is None else self.recovery_threshold


@dataclass(frozen=True)
class RuleConfig:
    """One anomaly rule: a PromQL query plus the settings used for every series it returns."""

    name: str
    query: str
    interval: float = 60.0  # seconds between scoring cycles
    retrain: float = 3600.0  # seconds between refits
    history: float = 7 * 86400.0  # seconds of history kept and fitted on
    step: float = 60.0  # seconds, resolution of the range queries
    z_threshold: float = 4.0  # distance from expected, in robust standard deviations, where anomaly_score = 1
    direction: str = "both"  # up | down | both
    min_abs_deviation: float = 0.0  # deviations smaller than this never reach score 1
    min_rel_deviation: float = 0.0  # same, as a fraction of |expected|
    labels: Mapping[str, str] = field(default_factory=_frozen_map)  # extra labels on every exported series
    max_series: int = 1000  # series beyond this are dropped (with a warning and a metric)
    model: ModelConfig = field(default_factory=ModelConfig)
    alert: AlertConfig = field(default_factory=AlertConfig)


@dataclass(frozen=True)
class ReceiverConfig:
    """A notification target (used by alerting). `url` may be a secret (Slack and webhook URLs are)."""

    name: str
    type: str  # alertmanager | slack | webhook
    urls: tuple[Secret, ...]
    timeout: float = 10.0
    repeat_interval: float = 4 * 3600.0  # slack/webhook: re-notify still-firing alerts (0: never)
    max_queue: int = 1000  # notifications waiting beyond this are dropped
    tls: TLSConfig = field(default_factory=TLSConfig)
    bearer_token: Secret | None = None
    basic_auth: BasicAuth | None = None


@dataclass(frozen=True)
class Config:
    prometheus: PrometheusConfig
    rules: tuple[RuleConfig, ...]
    receivers: Mapping[str, ReceiverConfig] = field(default_factory=lambda: MappingProxyType({}))


class ConfigError(Exception):
    """Raised with every problem found in a config file; `errors` holds one `path: message` string each."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{len(self.errors)} error(s):\n" + "\n".join(f"  {e}" for e in self.errors))


# --- loading ----------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a rules file; relative file paths inside it resolve against its directory."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError([f"cannot read config file: {exc.strerror or exc}"], source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config file is not valid UTF-8 (byte {exc.start})"], source=source) from None
    base_dir = os.path.dirname(os.path.abspath(source))
    return parse_config(text, source=source, environ=environ, base_dir=base_dir)


def parse_config(
    text: str,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    base_dir: str | None = None,
) -> Config:
    """Validate rules.yaml text into frozen objects, or raise ConfigError listing every problem."""
    data, errors = _load_yaml(text, source)
    if data is None:
        raise ConfigError([*errors, "config is empty: expected `prometheus` and `rules`"], source)
    if not isinstance(data, dict):
        raise ConfigError([*errors, f"top level must be a mapping (got {type_name(data)})"], source)
    checker = Checker(os.environ if environ is None else environ, base_dir)
    top = checker.section(CONFIG, "", data)
    rules = _resolve_rules(checker, top)
    errors += list(dict.fromkeys(checker.errors))  # a problem in `defaults` is found once per rule
    if errors:
        raise ConfigError(errors, source)
    return _build(top, rules)


MAX_DEPTH = 64  # nesting of YAML collections; rules.yaml needs 6. PyYAML recurses per level (~500 max)


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys, which PyYAML would silently resolve to the last one,
    and refuses nesting deeper than MAX_DEPTH (with its line and column) before Python's stack runs out."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, int, str]] = []  # line, column, message
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            mark = key_node.start_mark
            if key in first_line:
                message = f"duplicate key {key!r} (first defined on line {first_line[key]})"
                self.duplicates.append((mark.line + 1, mark.column + 1, message))
            else:
                first_line[key] = mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> tuple[Any, list[str]]:
    """Parse one document: syntax errors raise at once (with line:column); duplicate keys are returned."""
    try:
        loader = _Loader(text)  # the reader refuses control characters here already
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = exc.problem or ""
        if exc.context and (not problem or problem.startswith("but ")):  # "but found another document"
            problem = f"{exc.context}, {problem}" if problem else exc.context
        raise ConfigError([f"{where}: {problem}"], source) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        problem = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise ConfigError([f"{source}:{line}:{column}: {problem}"], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: {exc}"], source) from None
    except ValueError as exc:  # PyYAML's constructors: a 2001-02-30 timestamp, an integer of 5,000 digits
        raise ConfigError([f"{source}: a value cannot be read: {exc}"], source) from None
    return data, [f"{source}:{line}:{col}: {msg}" for line, col, msg in sorted(loader.duplicates)]


# --- rules: defaults, cross-field checks, references --------------------------------------------------------

# Merged rule settings: key ("interval", "model.level_window", ...) -> (value, path where it was set or None).
_Settings = dict[str, tuple[Any, str | None]]


def _merge(rule: dict[str, Any], path: str, defaults: dict[str, Any]) -> _Settings:
    """Apply `defaults` and then the built-in defaults to one rule, remembering where each value came from."""
    out: _Settings = {}
    for f in RULE_SETTINGS:
        if f.kind == "section":
            continue
        if f.name in rule:
            out[f.name] = (rule[f.name], f"{path}.{f.name}")
        elif f.name in defaults:
            out[f.name] = (defaults[f.name], f"defaults.{f.name}")
        else:
            out[f.name] = (spec_default(f), None)
    for section in (MODEL, ALERT):  # nested sections merge key by key
        base, own = defaults.get(section.name, {}), rule.get(section.name, {})
        for f in section.fields:
            key = f"{section.name}.{f.name}"
            if isinstance(own, Invalid) or isinstance(base, Invalid):
                out[key] = (INVALID, None)  # reported already; no check may compare the section itself
            elif f.name in own:
                out[key] = (own[f.name], f"{path}.{key}")
            elif f.name in base:
                out[key] = (base[f.name], f"defaults.{key}")
            else:
                out[key] = (spec_default(f), None)
    # string maps merge key by key too: built-in defaults < `defaults` < the rule
    own_alert, base_alert = _dict(rule.get("alert")), _dict(defaults.get("alert"))
    maps = {
        "labels": ({}, defaults, rule),
        "alert.labels": ({}, base_alert, own_alert),
        "alert.annotations": (DEFAULT_ANNOTATIONS, base_alert, own_alert),
    }
    for key, (builtin, base_part, own_part) in maps.items():
        name = key.split(".")[-1]
        layers = [builtin, base_part.get(name, {}), own_part.get(name, {})]
        if all(isinstance(layer, dict) for layer in layers):
            out[key] = ({k: v for layer in layers for k, v in layer.items()}, out.get(key, (None, None))[1])
    return out


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# history / step: 200,000 points is 23 days at 10 s, 138 days at 1 m; about 0.9 MB per series in memory
MAX_POINTS_PER_SERIES = 200_000


def _check_rule(checker: Checker, s: _Settings) -> None:
    """Checks between settings; reported where the user set the value, preferring the rule over `defaults`."""

    def where(default: str, *paths: str | None) -> str:
        """The first of `paths` set in the rule, else the first set at all (in `defaults`), else `default`."""
        given = [p for p in paths if p]
        return ([p for p in given if p.startswith("rules")] + given + [default])[0]

    def at_least(
        key: str, other: str, factor: int, how: str, at_most: bool = False, fmt: Any = format_duration
    ) -> None:
        (value, path), (limit, other_path) = s[key], s[other]
        if isinstance(value, Invalid) or isinstance(limit, Invalid) or value is None:
            return
        if (value > limit) if at_most else (value < factor * limit):
            name, other_name = key.split(".")[-1], other.split(".")[-1]
            checker.error(
                where(f"defaults.{key}", path, other_path),
                f"{name} must {how} ({name} {fmt(value)}, {other_name} {fmt(limit)})",
            )

    step, step_path = s["step"]
    if not isinstance(step, Invalid) and (step < 1 or step != int(step)):
        # the query grid is whole seconds (Prometheus returns points at start + k*step)
        at = step_path or "defaults.step"
        checker.error(at, f"must be a whole number of seconds, at least 1s (got {format_duration(step)})")
    at_least("history", "step", 10, "be at least 10 × step")
    (history, history_path) = s["history"]
    if not any(isinstance(v, Invalid) for v in (history, step)) and step >= 1:
        points = int(history // step)
        if points > MAX_POINTS_PER_SERIES:
            checker.error(
                where("defaults.history", history_path, step_path),
                f"history {format_duration(history)} at step {format_duration(step)} is {points:,} points"
                f" per series, over the limit of {MAX_POINTS_PER_SERIES:,} (each series keeps them all in"
                " memory): use a longer step or a shorter history",
            )
    at_least("retrain", "interval", 1, "be at least interval")
    at_least("model.level_window", "history", 1, "not exceed history", at_most=True)
    at_least("model.min_history", "history", 1, "not exceed history", at_most=True)
    at_least("alert.recovery_threshold", "alert.threshold", 1, "not exceed threshold", True, "{:g}".format)
    (points, points_path), (window, window_path) = s["alert.min_points"], s["alert.window"]
    if not any(isinstance(v, Invalid) for v in (points, window, step)) and points > 1:
        room = int(window // step) + 1 if step > 0 else 0
        if points > room:
            checker.error(
                points_path or window_path or "defaults.alert.min_points",
                f"min_points {points} can never be reached: window {format_duration(window)} holds at most"
                f" {room} point(s) at step {format_duration(step)}",
            )


def _check_templates(checker: Checker, path: str, rule: dict[str, Any], s: _Settings) -> None:
    """Alert labels and annotations must compile; reported where the template was written."""
    own = _dict(rule.get("alert"))
    for what in ("labels", "annotations"):
        merged = s[f"alert.{what}"][0]
        if not isinstance(merged, dict):
            continue
        for name, text in merged.items():
            if not isinstance(text, str):
                continue
            try:
                compile_template(text)
            except TemplateError as exc:
                written_here = isinstance(own.get(what), dict) and name in own[what]
                where = f"{path}.alert" if written_here else "defaults.alert"
                checker.error(f"{where}.{what}.{name}", f"bad template: {exc}")


def _check_receivers(checker: Checker, path: str, names: Any, known: Any) -> None:
    if not isinstance(names, list) or not isinstance(known, dict):
        return
    for i, name in enumerate(names):
        if isinstance(name, str) and name not in known:
            defined = f"defined: {', '.join(known)}" if known else "no receivers are defined"
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else defined
            checker.error(f"{path}[{i}]", f"unknown receiver {name!r} ({hint})")


def _resolve_rules(checker: Checker, top: dict[str, Any]) -> list[tuple[dict[str, Any], _Settings]]:
    """Merge every valid rule with the defaults and run the checks that span keys, rules and receivers."""
    defaults = top.get("defaults", {})
    defaults = defaults if isinstance(defaults, dict) else {}
    rules, receivers = top.get("rules"), top.get("receivers", {})
    _check_receivers(
        checker, "defaults.alert.receivers", _dict(defaults.get("alert")).get("receivers"), receivers
    )
    first_path: dict[str, str] = {}
    out = []
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        path = f"rules[{i}]"
        name = rule.get("name")
        if isinstance(name, str):
            if name in first_path:
                checker.error(f"{path}.name", f"duplicate rule name {name!r} (also {first_path[name]})")
            first_path.setdefault(name, f"{path}.name")
        _check_receivers(
            checker, f"{path}.alert.receivers", _dict(rule.get("alert")).get("receivers"), receivers
        )
        settings = _merge(rule, path, defaults)
        _check_rule(checker, settings)
        _check_templates(checker, path, rule, settings)
        out.append((rule, settings))
    return out


# --- building the frozen objects (only reached when there are no errors) -----------------------------------


def _get(data: dict[str, Any], section: Section, name: str) -> Any:
    if name in data:
        return data[name]
    f = section.get(name)
    assert f is not None
    return spec_default(f)


def _tls(data: dict[str, Any] | None) -> TLSConfig:
    return TLSConfig(**{f.name: _get(data or {}, TLS, f.name) for f in TLS.fields})


def _auth(data: dict[str, Any]) -> tuple[Secret | None, BasicAuth | None]:
    token = data.get("bearer_token", data.get("bearer_token_file"))
    basic = data.get("basic_auth")
    if basic is None:
        return token, None
    return token, BasicAuth(basic["username"], basic.get("password", basic.get("password_file")))


_SCALARS = ("duration", "number", "integer", "enum")
_ATTRS = {"for": "for_"}  # YAML keys that are Python keywords


def _build(top: dict[str, Any], rules: list[tuple[dict[str, Any], _Settings]]) -> Config:
    p = top["prometheus"]
    token, basic = _auth(p)
    prometheus = PrometheusConfig(
        url=p["url"],
        timeout=_get(p, PROMETHEUS, "timeout"),
        external_url=p.get("external_url"),
        headers=_frozen_map(p.get("headers")),
        bearer_token=token,
        basic_auth=basic,
        tls=_tls(p.get("tls")),
        max_retries=_get(p, PROMETHEUS, "max_retries"),
    )
    receivers = {}
    for name, r in top.get("receivers", {}).items():
        token, basic = _auth(r)
        urls = [Secret(u) for u in r["urls"]] if "urls" in r else [r.get("url", r.get("url_file"))]
        receivers[name] = ReceiverConfig(
            name=name,
            type=r["type"],
            urls=tuple(urls),
            timeout=_get(r, RECEIVER, "timeout"),
            repeat_interval=_get(r, RECEIVER, "repeat_interval"),
            max_queue=_get(r, RECEIVER, "max_queue"),
            tls=_tls(r.get("tls")),
            bearer_token=token,
            basic_auth=basic,
        )
    built = []
    for rule, s in rules:
        plain = {_ATTRS.get(f.name, f.name): s[f.name][0] for f in DEFAULTS.fields if f.kind in _SCALARS}
        built.append(
            RuleConfig(
                name=rule["name"],
                query=rule["query"],
                **plain,
                labels=_frozen_map(s["labels"][0]),
                model=ModelConfig(**{f.name: s[f"model.{f.name}"][0] for f in MODEL.fields}),
                alert=_alert(s),
            )
        )
    return Config(prometheus=prometheus, rules=tuple(built), receivers=MappingProxyType(receivers))


def _alert(s: _Settings) -> AlertConfig:
    values = {_ATTRS.get(f.name, f.name): s[f"alert.{f.name}"][0] for f in ALERT.fields}
    return AlertConfig(
        **{
            **values,
            "labels": _frozen_map(values["labels"]),
            "annotations": _frozen_map(values["annotations"]),
            "receivers": tuple(values["receivers"]),
        }
    )
