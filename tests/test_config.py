"""rules.yaml loading: the objects a valid file becomes, every error a broken file reports, and the schema."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import (
    AlertConfig,
    BasicAuth,
    Config,
    ConfigError,
    ModelConfig,
    PrometheusConfig,
    ReceiverConfig,
    RuleConfig,
    TLSConfig,
    json_schema,
    load_config,
    parse_config,
)
from exporter.config_schema import DEFAULT_ANNOTATIONS
from exporter.secret import Secret

MINIMAL = """
prometheus: {url: http://prom:9090}
rules:
  - {name: r, query: up}
"""


def errors_of(text: str, environ: dict[str, str] | None = None, base_dir: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), source="rules.yaml", environ=environ or {}, base_dir=base_dir)
    return info.value.errors


def with_rule(extra: str) -> str:
    """MINIMAL with `extra` (YAML flow-mapping entries) added to its one rule."""
    return MINIMAL.replace("{name: r, query: up}", "{name: r, query: up, " + extra + "}")


# --- a valid file -------------------------------------------------------------------------------------------

FULL = """
prometheus:
  url: https://prometheus.example:9090/     # trailing slash is stripped
  timeout: 15s
  headers: {X-Scope-OrgID: "${TENANT}"}
  bearer_token_file: secrets/token          # relative: resolved against the config file's directory
  tls: {ca_file: ca.pem, cert_file: /ABS/client.pem, key_file: client.key, insecure_skip_verify: false}
  max_retries: 5
defaults:
  interval: 2m
  retrain: 2h
  history: 3d
  step: 2m
  z_threshold: 5          # an int where a float is expected is fine
  direction: up
  min_abs_deviation: 0.5
  min_rel_deviation: 0.1
  max_series: 500
  labels: {team: sre, env: prod}
  model: {type: seasonal, seasonality: daily, level_window: 2h, min_history: 6h}
  alert:
    for: 5m
    severity: page
    labels: {team: "{{ $labels.team }}"}
    annotations: {runbook: "https://runbooks.example/anomaly"}
    receivers: [oncall]
rules:
  - name: http_errors
    query: sum by (job) (rate(http_requests_total{code=~"5.."}[5m]))
  - name: "latency:p99"
    query: histogram_quantile(0.99, rate(x_bucket[5m]))
    interval: 30s
    retrain: 30m
    history: 1d
    step: 30s
    z_threshold: 3.5
    direction: both
    min_abs_deviation: 0
    min_rel_deviation: 0
    max_series: 10
    labels: {env: staging, tier: web}
    model: {seasonality: weekly, level_window: 30m}
    alert:
      name: LatencyAnomaly
      threshold: 1.5
      recovery_threshold: 0.8
      keep_firing_for: 0s
      min_points: 6
      window: 15m
      annotations: {summary: "p99 {{ $value | humanize }}s"}
      receivers: [slack, hook]
receivers:
  oncall:
    type: alertmanager
    urls: [http://am-0:9093/, "${AM_1}"]
    timeout: 5s
    basic_auth: {username: exporter, password_file: secrets/am-password}
  slack:
    type: slack
    url_file: secrets/slack-url
    repeat_interval: 1h
    max_queue: 50
  hook:
    type: webhook
    url: https://hooks.example/anomaly?token=${HOOK_TOKEN}
    bearer_token: ${HOOK_BEARER}
    tls: {insecure_skip_verify: true}
"""
ENV = {"TENANT": "team-a", "AM_1": "http://am-1:9093", "HOOK_TOKEN": "hooktok", "HOOK_BEARER": "bearer-2"}
SECRET_VALUES = ["prom-token", "am-pass", "slacktok", "hooktok", "bearer-2"]


@pytest.fixture
def full_file(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/token").write_text("  prom-token\n")
    (tmp_path / "secrets/am-password").write_text("am-pass\n")
    (tmp_path / "secrets/slack-url").write_text("https://hooks.slack.com/services/T0/B0/slacktok\n")
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("pem")
    path = tmp_path / "rules.yaml"
    path.write_text(FULL.replace("/ABS", str(tmp_path)))
    return path


def test_full_file_becomes_the_expected_objects(full_file: Path) -> None:
    d = full_file.parent
    config = load_config(full_file, environ=ENV)
    shared = dict(
        interval=120.0,
        retrain=7200.0,
        history=3 * 86400.0,
        step=120.0,
        z_threshold=5.0,
        direction="up",
        min_abs_deviation=0.5,
        min_rel_deviation=0.1,
        max_series=500,
    )
    assert config == Config(
        prometheus=PrometheusConfig(
            url="https://prometheus.example:9090",
            timeout=15.0,
            headers={"X-Scope-OrgID": "team-a"},
            bearer_token=Secret("prom-token"),
            tls=TLSConfig(
                ca_file=str(d / "ca.pem"), cert_file=str(d / "client.pem"), key_file=str(d / "client.key")
            ),
            max_retries=5,
        ),
        rules=(
            RuleConfig(
                name="http_errors",
                query='sum by (job) (rate(http_requests_total{code=~"5.."}[5m]))',
                **shared,  # type: ignore[arg-type]
                labels={"team": "sre", "env": "prod"},
                model=ModelConfig(seasonality="daily", level_window=7200.0, min_history=21600.0),
                alert=AlertConfig(
                    for_=300.0,
                    severity="page",
                    labels={"team": "{{ $labels.team }}"},
                    annotations={**DEFAULT_ANNOTATIONS, "runbook": "https://runbooks.example/anomaly"},
                    receivers=("oncall",),
                ),
            ),
            RuleConfig(
                name="latency:p99",
                query="histogram_quantile(0.99, rate(x_bucket[5m]))",
                interval=30.0,
                retrain=1800.0,
                history=86400.0,
                step=30.0,
                z_threshold=3.5,
                direction="both",
                min_abs_deviation=0.0,
                min_rel_deviation=0.0,
                max_series=10,
                labels={"team": "sre", "env": "staging", "tier": "web"},  # merged key by key
                model=ModelConfig(seasonality="weekly", level_window=1800.0, min_history=21600.0),
                alert=AlertConfig(  # merged key by key with defaults.alert
                    name="LatencyAnomaly",
                    threshold=1.5,
                    recovery_threshold=0.8,
                    for_=300.0,
                    keep_firing_for=0.0,
                    min_points=6,
                    window=900.0,
                    severity="page",
                    labels={"team": "{{ $labels.team }}"},
                    annotations={
                        **DEFAULT_ANNOTATIONS,
                        "runbook": "https://runbooks.example/anomaly",
                        "summary": "p99 {{ $value | humanize }}s",
                    },
                    receivers=("slack", "hook"),  # a rule's list replaces the default list
                ),
            ),
        ),
        receivers={
            "oncall": ReceiverConfig(
                name="oncall",
                type="alertmanager",
                timeout=5.0,
                urls=(Secret("http://am-0:9093"), Secret("http://am-1:9093")),
                basic_auth=BasicAuth("exporter", Secret("am-pass")),
            ),
            "slack": ReceiverConfig(
                name="slack",
                type="slack",
                urls=(Secret("https://hooks.slack.com/services/T0/B0/slacktok"),),
                repeat_interval=3600.0,
                max_queue=50,
            ),
            "hook": ReceiverConfig(
                name="hook",
                type="webhook",
                urls=(Secret("https://hooks.example/anomaly?token=hooktok"),),
                bearer_token=Secret("bearer-2"),
                tls=TLSConfig(insecure_skip_verify=True),
            ),
        },
    )


def test_loaded_config_is_frozen_and_typed(full_file: Path) -> None:
    config = load_config(full_file, environ=ENV)
    rule = config.rules[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        rule.labels["x"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.receivers["x"] = config.receivers["slack"]  # type: ignore[index]
    assert isinstance(rule.z_threshold, float) and isinstance(rule.max_series, int)
    assert isinstance(config.rules, tuple) and isinstance(rule.alert.receivers, tuple)
    with pytest.raises(TypeError):
        rule.alert.annotations["x"] = "y"  # type: ignore[index]


def test_secrets_never_appear_in_repr_or_str(full_file: Path) -> None:
    config = load_config(full_file, environ=ENV)
    for text in (repr(config), str(config)):
        for secret in SECRET_VALUES:
            assert secret not in text


def test_minimal_file_gets_the_dataclass_defaults() -> None:
    """Pins the built-in defaults of the spec (and so the schema) to the dataclass defaults."""
    config = parse_config(MINIMAL + "receivers: {a: {type: webhook, url: 'http://x'}}")
    assert config.prometheus == PrometheusConfig(url="http://prom:9090")
    assert config.rules == (RuleConfig(name="r", query="up"),)
    assert config.receivers["a"] == ReceiverConfig(name="a", type="webhook", urls=(Secret("http://x"),))


def test_env_vars_expand_in_values_only_and_dollar_dollar_escapes() -> None:
    text = """
    # a ${NOT_SET} in a comment is not expanded: expansion works on parsed values, not on the raw text
    prometheus: {url: "http://${HOST}:9090", headers: {X-Tenant: "${T}"}}
    rules:
      - name: r
        query: 'up{job="${JOB}", x="$${literal}"}'
        labels: {team: "${T}-sre"}
        alert: {receivers: ["${RCV}"]}
    receivers: {am: {type: alertmanager, urls: ["http://${HOST}:9093"]}}
    """
    config = parse_config(textwrap.dedent(text), environ={"HOST": "h", "T": "t1", "JOB": "api", "RCV": "am"})
    rule = config.rules[0]
    assert config.prometheus.url == "http://h:9090"
    assert config.prometheus.headers == {"X-Tenant": "t1"}
    assert rule.query == 'up{job="api", x="${literal}"}'
    assert rule.labels == {"team": "t1-sre"}
    assert rule.alert.receivers == ("am",)
    assert config.receivers["am"].urls == (Secret("http://h:9093"),)


def test_relative_secret_files_resolve_against_the_config_directory(
    full_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = load_config(os.path.relpath(full_file), environ=ENV)
    assert config.prometheus.bearer_token == Secret("prom-token")  # whitespace stripped


# --- errors -------------------------------------------------------------------------------------------------

ERROR_CASES = [
    # (id, file, one expected `path: message`)
    (
        "unknown key with suggestion",
        with_rule("qurey: x"),
        "rules[0].qurey: unknown key (did you mean 'query'?)",
    ),
    (
        "unknown top-level key",
        MINIMAL + "promethues: {}\n",
        "promethues: unknown key (did you mean 'prometheus'?)",
    ),
    ("required key", "prometheus: {url: http://x}\nrules: [{name: r}]", "rules[0].query: required"),
    ("required section", "rules: [{name: r, query: up}]", "prometheus: required"),
    ("empty query", MINIMAL.replace("query: up", "query: ' '"), "rules[0].query: must not be empty"),
    ("no rules", "prometheus: {url: http://x}\nrules: []", "rules: must not be empty"),
    (
        "rules not a list",
        "prometheus: {url: http://x}\nrules: {name: r}",
        "rules: must be a list (got mapping)",
    ),
    (
        "bad rule name",
        MINIMAL.replace("name: r", "name: 'my rule'"),
        "rules[0].name: must match [a-zA-Z_][a-zA-Z0-9_:-]* (got 'my rule')",
    ),
    (
        "duplicate rule names",
        MINIMAL + "  - {name: r, query: down}\n",
        "rules[1].name: duplicate rule name 'r' (also rules[0].name)",
    ),
    (
        "bad duration",
        MINIMAL + "defaults: {interval: 5x}\n",
        "defaults.interval: invalid duration '5x': expected e.g. 30s, 5m, 1h30m, 14d",
    ),
    (
        "number as duration",
        with_rule("step: 60"),
        "rules[0].step: must be a duration such as 30s, 5m or 1h30m (got integer)",
    ),
    ("zero duration", with_rule("interval: 0s"), "rules[0].interval: must be greater than 0 (got 0s)"),
    (
        "bad enum",
        with_rule("model: {seasonality: hourly}"),
        "rules[0].model.seasonality: must be one of auto, none, daily, weekly (got 'hourly')",
    ),
    (
        "bad direction",
        with_rule("direction: sideways"),
        "rules[0].direction: must be one of up, down, both (got 'sideways')",
    ),
    (
        "bad model type",
        with_rule("model: {type: prophet}"),
        "rules[0].model.type: must be one of seasonal, iforest, mad (got 'prophet')",
    ),
    (
        "bool is not an int",
        with_rule("max_series: true"),
        "rules[0].max_series: must be an integer (got boolean)",
    ),
    (
        "bool is not a number",
        with_rule("z_threshold: yes"),
        "rules[0].z_threshold: must be a number (got boolean)",
    ),
    (
        "float is not an int",
        with_rule("max_series: 1.5"),
        "rules[0].max_series: must be an integer (got number)",
    ),
    (
        "string is not a number",
        with_rule("z_threshold: '4'"),
        "rules[0].z_threshold: must be a number (got string)",
    ),
    ("z_threshold > 0", with_rule("z_threshold: 0"), "rules[0].z_threshold: must be greater than 0 (got 0)"),
    (
        "min deviation >= 0",
        with_rule("min_abs_deviation: -1"),
        "rules[0].min_abs_deviation: must be at least 0 (got -1)",
    ),
    ("max_series >= 1", with_rule("max_series: 0"), "rules[0].max_series: must be at least 1 (got 0)"),
    (
        "infinite threshold",
        with_rule("z_threshold: .inf"),
        "rules[0].z_threshold: must be a finite number (got inf)",
    ),
    (
        "bool setting",
        MINIMAL.replace("http://prom:9090", "http://p, tls: {insecure_skip_verify: 'no'}"),
        "prometheus.tls.insecure_skip_verify: must be true or false (got string)",
    ),
    (
        "reserved label rule",
        with_rule("labels: {rule: other}"),
        "rules[0].labels.rule: the label `rule` is set by the exporter to the rule's name",
    ),
    (
        "sub-second step",
        with_rule("step: 500ms"),
        "rules[0].step: must be a whole number of seconds, at least 1s (got 500ms)",
    ),
    (
        "fractional step",
        with_rule("step: 1s500ms"),
        "rules[0].step: must be a whole number of seconds, at least 1s (got 1s500ms)",
    ),
    (
        "history < 10 x step",
        with_rule("history: 1h, step: 10m"),
        "rules[0].history: history must be at least 10 × step (history 1h, step 10m)",
    ),
    (
        "history / step beyond the points a series may keep (a 1s step meant as 1m, say)",
        with_rule("history: 30d, step: 1s"),
        "rules[0].history: history 4w2d at step 1s is 2,592,000 points per series, over the limit of 200,000"
        " (each series keeps them all in memory): use a longer step or a shorter history",
    ),
    (
        "a step set on the rule is blamed when the history comes from defaults",
        MINIMAL.replace("query: up", "query: up, step: 3s"),
        "rules[0].step: history 1w at step 3s is 201,600 points per series, over the limit of 200,000"
        " (each series keeps them all in memory): use a longer step or a shorter history",
    ),
    (
        "the rule's step is blamed, not the defaults' history that other rules use fine",
        MINIMAL.replace("query: up}", "query: up, step: 5s}").replace(
            "rules:", "defaults: {history: 30d}\nrules:"
        ),
        "rules[0].step: history 4w2d at step 5s is 518,400 points per series, over the limit of 200,000"
        " (each series keeps them all in memory): use a longer step or a shorter history",
    ),
    (
        "retrain < interval",
        with_rule("retrain: 30s"),
        "rules[0].retrain: retrain must be at least interval (retrain 30s, interval 1m)",
    ),
    (
        "level_window > history",
        with_rule("history: 1d, model: {level_window: 2d}"),
        "rules[0].model.level_window: level_window must not exceed history (level_window 2d, history 1d)",
    ),
    (
        "step from the rule blamed, not defaults",
        MINIMAL.replace("query: up", "query: up, step: 1d"),
        "rules[0].step: history must be at least 10 × step (history 1w, step 1d)",
    ),
    (
        "bad label name",
        with_rule("labels: {1team: x}"),
        "rules[0].labels.1team: invalid name '1team' (must match [a-zA-Z_][a-zA-Z0-9_]*)",
    ),
    (
        "reserved label name",
        with_rule("labels: {__name__: x}"),
        "rules[0].labels.__name__: label names starting with __ are reserved",
    ),
    (
        "label value not a string",
        with_rule("labels: {team: 1}"),
        "rules[0].labels.team: must be a string (got integer)",
    ),
    (
        "header value not a string",
        MINIMAL.replace("http://prom:9090", "http://p, headers: {X-A: [1]}"),
        "prometheus.headers.X-A: must be a string (got list)",
    ),
    (
        "url not http",
        MINIMAL.replace("http://prom:9090", "prom:9090"),
        "prometheus.url: must be an http(s) URL (got 'prom:9090')",
    ),
    (
        "undefined receiver",
        with_rule("alert: {receivers: [pager]}"),
        "rules[0].alert.receivers[0]: unknown receiver 'pager' (no receivers are defined)",
    ),
    (
        "undefined receiver suggestion",
        MINIMAL + "defaults: {alert: {receivers: [oncal]}}\n"
        "receivers: {oncall: {type: alertmanager, urls: ['http://am']}}\n",
        "defaults.alert.receivers[0]: unknown receiver 'oncal' (did you mean 'oncall'?)",
    ),
    (
        "a key that moved into `alert:`",
        with_rule("for: 5m"),
        "rules[0].for: unknown key (moved: use alert.for)",
    ),
    (
        "recovery above threshold",
        with_rule("alert: {threshold: 2, recovery_threshold: 3}"),
        "rules[0].alert.recovery_threshold: recovery_threshold must not exceed threshold"
        " (recovery_threshold 3, threshold 2)",
    ),
    (
        "count-in-window that can never fire",
        with_rule("alert: {min_points: 5, window: 2m}"),
        "rules[0].alert.min_points: min_points 5 can never be reached: window 2m holds at most 3 point(s) at"
        " step 1m",
    ),
    (
        "repeat_interval is not for alertmanager",
        MINIMAL + "receivers: {x: {type: alertmanager, urls: ['http://am'], repeat_interval: 1h}}",
        "receivers.x.repeat_interval: not allowed for type alertmanager",
    ),
    (
        "bad receiver type",
        MINIMAL + "receivers: {x: {type: email}}",
        "receivers.x.type: must be one of alertmanager, slack, webhook (got 'email')",
    ),
    (
        "alertmanager needs urls",
        MINIMAL + "receivers: {x: {type: alertmanager, url: 'http://am'}}",
        "receivers.x.urls: required for type alertmanager",
    ),
    (
        "alertmanager has no url",
        MINIMAL + "receivers: {x: {type: alertmanager, url: 'http://am'}}",
        "receivers.x.url: not allowed for type alertmanager",
    ),
    (
        "slack needs a url",
        MINIMAL + "receivers: {x: {type: slack}}",
        "receivers.x: one of url, url_file is required for type slack",
    ),
    (
        "url and url_file",
        MINIMAL + "receivers: {x: {type: webhook, url: 'http://h', url_file: /f}}",
        "receivers.x: url and url_file are mutually exclusive; set only one",
    ),
    (
        "two kinds of auth",
        MINIMAL.replace(
            "http://prom:9090", "http://p, bearer_token: t, basic_auth: {username: u, password: p}"
        ),
        "prometheus: bearer_token and basic_auth are mutually exclusive; set only one",
    ),
    (
        "password and password_file",
        MINIMAL.replace(
            "http://prom:9090", "http://p, basic_auth: {username: u, password: p, password_file: /f}"
        ),
        "prometheus.basic_auth: password and password_file are mutually exclusive; set only one",
    ),
    (
        "cert without key",
        MINIMAL.replace("http://prom:9090", "http://p, tls: {cert_file: /etc/hostname}"),
        "prometheus.tls.key_file: required when cert_file is set",
    ),
    (
        "tls file missing",
        MINIMAL.replace("http://prom:9090", "http://p, tls: {ca_file: /nonexistent/ca.pem}"),
        "prometheus.tls.ca_file: file not found or not readable: '/nonexistent/ca.pem'",
    ),
    (
        "missing env var",
        MINIMAL.replace("http://prom:9090", "http://p, bearer_token: '${PROM_TOKEN}'"),
        "prometheus.bearer_token: environment variable PROM_TOKEN is not set",
    ),
    (
        "malformed env reference",
        with_rule("labels: {a: '${not-a-name}'}"),
        "rules[0].labels.a: `${` must be followed by a variable name and `}` (`$${` is a literal `${`)",
    ),
    (
        "missing secret file",
        MINIMAL.replace("http://prom:9090", "http://p, bearer_token_file: /nonexistent/tok"),
        "prometheus.bearer_token_file: cannot read '/nonexistent/tok': No such file or directory",
    ),
    ("defaults section not a mapping", MINIMAL + "defaults:\n", "defaults: must be a mapping (got null)"),
    # Found by tests/test_config_properties.py and by probing the loader with bad values: each of these
    # raised something other than ConfigError (OverflowError, ValueError, TypeError) before.
    (
        "duration of 400 digits",
        with_rule("interval: " + "9" * 400 + "s"),
        "rules[0].interval: invalid duration '" + "9" * 40 + "…': out of range (at most ~292y)",
    ),
    (
        "duration beyond Prometheus' ~292 years",
        with_rule("history: 293y"),
        "rules[0].history: invalid duration '293y': out of range (at most ~292y)",
    ),
    (
        "integer beyond any float",
        with_rule("z_threshold: " + "9" * 400),
        "rules[0].z_threshold: must be a finite number (got " + "9" * 20 + "… (400 digits))",
    ),
    (
        "1e6 is text to YAML 1.1",
        with_rule("min_abs_deviation: 1e6"),
        "rules[0].min_abs_deviation: must be a number (got string '1e6': write exponents with a dot and a"
        " sign, e.g. 1.0e+6, or plain digits)",
    ),
    (
        "NUL in a secret file name",
        MINIMAL.replace("http://prom:9090", 'http://p, bearer_token_file: "a\\0b"'),
        "prometheus.bearer_token_file: cannot read 'a\\x00b': embedded null byte",
    ),
    (
        "bad IPv6 literal in a URL",
        MINIMAL.replace("http://prom:9090", "'http://[::1:9090'"),
        "prometheus.url: must be an http(s) URL (got 'http://[::1:9090')",
    ),
    (
        "port out of range",
        MINIMAL.replace("http://prom:9090", "'http://prom:99999'"),
        "prometheus.url: must be an http(s) URL (got 'http://prom:99999')",
    ),
    (
        "bad IPv6 literal in a receiver URL",
        MINIMAL + "receivers: {am: {type: alertmanager, urls: ['http://[zz]/']}}\n",
        "receivers.am.urls[0]: must be an http(s) URL (got 'http://[zz]/')",
    ),
    (
        "empty key",
        with_rule("'': 1"),
        "rules[0].'': unknown key (expected one of: name, query, interval, retrain, history, step,"
        " z_threshold, direction, min_abs_deviation, min_rel_deviation, max_series, labels, model, alert)",
    ),
    (
        "key with a dot",
        with_rule("'model.type': mad"),
        "rules[0].'model.type': unknown key (did you mean 'model'?)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_each_problem_is_reported_with_its_path(text: str, expected: str) -> None:
    assert expected in errors_of(text)


def test_every_problem_in_a_file_is_reported_at_once() -> None:
    text = """
    prometheus:
      url: prometheus:9090
      timeout: 5x
    defaults:
      direction: sideways
    rules:
      - name: a
        qurey: up
      - name: a
        query: up
        max_series: true
        alert: {receivers: [pager]}
    """
    assert errors_of(text) == [
        "prometheus.url: must be an http(s) URL (got 'prometheus:9090')",
        "prometheus.timeout: invalid duration '5x': expected e.g. 30s, 5m, 1h30m, 14d",
        "defaults.direction: must be one of up, down, both (got 'sideways')",
        "rules[0].qurey: unknown key (did you mean 'query'?)",
        "rules[0].query: required",
        "rules[1].max_series: must be an integer (got boolean)",
        "rules[1].name: duplicate rule name 'a' (also rules[0].name)",
        "rules[1].alert.receivers[0]: unknown receiver 'pager' (no receivers are defined)",
    ]


def test_a_problem_in_defaults_is_reported_once_not_per_rule() -> None:
    text = MINIMAL + "  - {name: s, query: up}\ndefaults: {history: 1h, step: 10m}\n"
    assert errors_of(text) == ["defaults.history: history must be at least 10 × step (history 1h, step 10m)"]


@pytest.mark.parametrize(
    ("defaults", "error"),
    [
        ("model: 5", "defaults.model: must be a mapping (got integer)"),
        ("alert: [1]", "defaults.alert: must be a mapping (got list)"),
    ],
)
def test_a_broken_defaults_section_next_to_a_rules_own_section_is_one_error(
    defaults: str, error: str
) -> None:
    # the cross-key checks compared the rule's whole section with a number (TypeError) before
    text = MINIMAL.replace("query: up}", "query: up, model: {type: mad}, alert: {threshold: 2}}")
    assert errors_of(text + f"defaults: {{{defaults}}}\n") == [error]


def test_error_messages_never_echo_secret_values(tmp_path: Path) -> None:
    (tmp_path / "hook").write_text("not-a-url-but-secret\n")
    text = MINIMAL + textwrap.dedent("""
        receivers:
          a: {type: webhook, url: "notaurl-secret"}
          b: {type: slack, url_file: hook}
          c: {type: webhook, url: "http://h", bearer_token: ["list-secret"]}
        """)
    errors = errors_of(text, base_dir=str(tmp_path))
    assert "receivers.a.url: must be an http(s) URL" in errors
    assert f"receivers.b.url_file: file {str(tmp_path / 'hook')!r} does not contain an http(s) URL" in errors
    assert "receivers.c.bearer_token: must be a string (got list)" in errors
    assert not any("secret" in e for e in errors)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", "is empty"), ("\n  \n", "is empty")],
)
def test_empty_secret_file_is_an_error(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "token").write_text(content)
    text = MINIMAL.replace("http://prom:9090", "http://p, bearer_token_file: token")
    assert errors_of(text, base_dir=str(tmp_path)) == [
        f"prometheus.bearer_token_file: file {str(tmp_path / 'token')!r} {expected}"
    ]


# --- YAML level ---------------------------------------------------------------------------------------------

YAML_CASES = [
    (
        "syntax error",
        "prometheus:\n  url: http://x\nrules:\n  - name: a\n    query: up: x\n",
        ["rules.yaml:5:14: mapping values are not allowed here"],
    ),
    (
        "tab indentation",
        "prometheus:\n\turl: x\n",
        ["rules.yaml:2:1: found character '\\t' that cannot start any token"],
    ),
    (
        "two documents",
        MINIMAL + "---\nrules: []\n",
        ["rules.yaml:5:1: expected a single document in the stream, but found another document"],
    ),
    ("empty file", "", ["config is empty: expected `prometheus` and `rules`"]),
    ("only comments", "# nothing yet\n", ["config is empty: expected `prometheus` and `rules`"]),
    ("top level is a list", "- a\n", ["top level must be a mapping (got list)"]),
    ("top level is a string", "hello\n", ["top level must be a mapping (got string)"]),
    # These raised ReaderError, RecursionError and ValueError before
    (
        "control character",
        "prometheus: {url: http://p}\x08\nrules: [{name: r, query: up}]\n",
        ["rules.yaml:1:28: unacceptable character #x0008: special characters are not allowed"],
    ),
    (
        "nesting deeper than the loader allows",
        "prometheus: {url: http://p}\nrules: " + "[" * 1000 + "]" * 1000 + "\n",
        ["rules.yaml:2:71: nested deeper than 64 levels"],  # the 64th `[`: the document is level 1,
    ),
    (
        "impossible date",
        MINIMAL + "defaults: {labels: {since: 2001-02-30}}\n",
        ["rules.yaml: a value cannot be read: day is out of range for month"],
    ),
    (
        "integer of 5,000 digits",
        MINIMAL + "defaults: {max_series: " + "9" * 5000 + "}\n",
        [
            "rules.yaml: a value cannot be read: Exceeds the limit (4300 digits) for integer string "
            "conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit"
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_yaml_level_errors(text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="rules.yaml")
    assert info.value.errors == expected


def test_duplicate_yaml_keys_are_reported_with_lines_together_with_other_errors() -> None:
    text = (
        "prometheus:\n  url: http://a\n  url: http://b\n"
        "rules:\n  - {name: r, query: up, step: 1m, step: 2m}\n  - {name: s, query: up, bogus: 1}\n"
    )
    assert errors_of(text) == [
        "rules.yaml:3:3: duplicate key 'url' (first defined on line 2)",
        "rules.yaml:5:36: duplicate key 'step' (first defined on line 5)",
        "rules[1].bogus: unknown key (expected one of: name, query, interval, retrain, history, step, "
        "z_threshold, direction, min_abs_deviation, min_rel_deviation, max_series, labels, model, alert)",
    ]


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = "prometheus: {url: http://p}\nrules:\n  - &base {name: r, query: up}\n  - {<<: *base, name: s}\n"
    assert [r.name for r in parse_config(text).rules] == ["r", "s"]


def test_load_config_reports_unreadable_files(tmp_path: Path) -> None:
    cases = [(tmp_path / "missing.yaml", "No such file or directory"), (tmp_path, "Is a directory")]
    for path, reason in cases:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.errors == [f"cannot read config file: {reason}"]
        assert info.value.source == str(path)
        assert str(path) in str(info.value)


def test_load_config_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("prometheus:\n  url: http://a\n  url: http://b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors[0] == f"{path}:3:3: duplicate key 'url' (first defined on line 2)"


# Arbitrary values in every position must give a Config or a ConfigError, never another exception.
_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["1m", "0s", "http://x", "${X}", "$${", "auto", "up", "__a"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_RULE_KEYS = ["name", "query", "interval", "history", "step", "threshold", "labels", "model", "receivers"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prometheus=st.fixed_dictionaries({"url": _ANY}, optional={"tls": _ANY, "basic_auth": _ANY, "?": _ANY}),
    rules=st.lists(st.dictionaries(st.sampled_from(_RULE_KEYS), _ANY, max_size=5), max_size=3),
    receivers=st.dictionaries(st.text(max_size=2), _ANY | st.fixed_dictionaries({"type": _ANY}), max_size=2),
)
def test_arbitrary_values_never_crash_the_loader(prometheus: Any, rules: Any, receivers: Any) -> None:
    text = yaml.safe_dump({"prometheus": prometheus, "rules": rules, "receivers": receivers})
    try:
        parse_config(text, environ={"X": "1m"})
    except ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) for e in exc.errors)


# --- JSON Schema --------------------------------------------------------------------------------------------


def _subschemas(schema: dict[str, Any]) -> Any:
    """Every schema inside `schema` (itself included), following the JSON Schema structure."""
    yield schema
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            children = list(value.values())
        elif key in ("allOf", "anyOf", "oneOf"):
            children = value
        elif key in ("items", "not", "if", "then", "propertyNames", "additionalProperties"):
            children = [value] if isinstance(value, dict) else []
        else:
            children = []
        for child in children:
            yield from _subschemas(child)


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _valid(schema: dict[str, Any], doc: Any, root: dict[str, Any]) -> bool:
    """Just enough JSON Schema for the keywords json_schema() emits (pinned by KNOWN_KEYWORDS)."""
    if "$ref" in schema and not _valid(root["$defs"][schema["$ref"].split("/")[-1]], doc, root):
        return False
    kind = schema.get("type")
    if kind == "number" and (isinstance(doc, bool) or not isinstance(doc, int | float)):
        return False
    if kind == "integer" and (isinstance(doc, bool) or not isinstance(doc, int)):
        return False
    if kind in _TYPES and not isinstance(doc, _TYPES[kind]):
        return False
    checks = [
        "enum" not in schema or doc in schema["enum"],
        "const" not in schema or doc == schema["const"],
        "pattern" not in schema or not isinstance(doc, str) or re.search(schema["pattern"], doc) is not None,
        "minLength" not in schema or not isinstance(doc, str) or len(doc) >= schema["minLength"],
        "minimum" not in schema or doc >= schema["minimum"],
        "maximum" not in schema or doc <= schema["maximum"],
        "exclusiveMinimum" not in schema or doc > schema["exclusiveMinimum"],
        all(_valid(s, doc, root) for s in schema.get("allOf", [])),
        "anyOf" not in schema or any(_valid(s, doc, root) for s in schema["anyOf"]),
        "oneOf" not in schema or sum(_valid(s, doc, root) for s in schema["oneOf"]) == 1,
        "not" not in schema or not _valid(schema["not"], doc, root),
        "if" not in schema or not _valid(schema["if"], doc, root) or _valid(schema["then"], doc, root),
    ]
    if isinstance(doc, list):
        checks += [
            len(doc) >= schema.get("minItems", 0),
            not schema.get("uniqueItems") or len(set(map(json.dumps, doc))) == len(doc),
            all(_valid(schema.get("items", {}), item, root) for item in doc),
        ]
    if isinstance(doc, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", {})
        checks += [
            all(key in doc for key in schema.get("required", [])),
            all(set(deps) <= set(doc) for k, deps in schema.get("dependentRequired", {}).items() if k in doc),
            all(_valid(schema.get("propertyNames", {}), key, root) for key in doc),
            all(
                _valid(props[k], v, root) if k in props else extra is not False and _valid(extra, v, root)
                for k, v in doc.items()
            ),
        ]
    return all(checks)


KNOWN_KEYWORDS = {
    "$schema",
    "title",
    "description",
    "default",
    "$defs",
    "$ref",
    "type",
    "properties",
    "additionalProperties",
    "required",
    "enum",
    "const",
    "pattern",
    "minLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "items",
    "minItems",
    "uniqueItems",
    "propertyNames",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "dependentRequired",
}


def test_schema_is_json_and_uses_known_keywords() -> None:
    schema = json_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    used = {key for node in _subschemas(schema) for key in node}
    assert used <= KNOWN_KEYWORDS, used - KNOWN_KEYWORDS


def test_schema_objects_are_closed_and_documented() -> None:
    schema = json_schema()
    objects = [n for n in _subschemas(schema) if n.get("type") == "object" and "properties" in n]
    assert len(objects) == 1 + len(schema["$defs"])
    for node in objects:
        assert node["additionalProperties"] is False
        for name, prop in node["properties"].items():
            assert prop.get("description"), name
    rule = schema["$defs"]["rule"]["properties"]
    durations = [p for n in objects for name, p in n["properties"].items() if name in ("interval", "timeout")]
    assert durations and all(re.search(p["pattern"], p["default"]) for p in durations)
    assert not re.search(rule["interval"]["pattern"], "5x")
    assert rule["direction"]["enum"] == ["up", "down", "both"]
    model = schema["$defs"]["model"]["properties"]
    assert model["seasonality"]["enum"] == ["auto", "none", "daily", "weekly"]
    assert rule["interval"]["default"] == "1m" and rule["history"]["default"] == "7d"


@pytest.mark.parametrize(
    ("cls", "where"),
    [
        (Config, ""),
        (PrometheusConfig, "prometheus"),
        (TLSConfig, "tls"),
        (BasicAuth, "basic_auth"),
        (ModelConfig, "model"),
        (RuleConfig, "rule"),
        (ReceiverConfig, "receiver"),
    ],
)
def test_every_dataclass_field_is_in_the_schema(cls: type, where: str) -> None:
    schema = json_schema()
    props = (schema["$defs"][where] if where else schema)["properties"]
    renamed = {"alert_for": "for"}  # Python keywords can't be field names
    missing = {renamed.get(f.name, f.name) for f in dataclasses.fields(cls)} - set(props)
    assert missing == ({"name"} if cls is ReceiverConfig else set())  # a receiver's name is its key


def test_shipped_rules_yaml_loads_and_matches_the_schema() -> None:
    path = Path(__file__).resolve().parents[1] / "rules.yaml"
    assert load_config(path, environ={}).rules
    schema = json_schema()
    assert _valid(schema, yaml.safe_load(path.read_text()), schema)


def test_sample_files_match_the_schema_and_broken_ones_do_not(full_file: Path) -> None:
    schema = json_schema()
    for text in (full_file.read_text(), MINIMAL):
        assert _valid(schema, yaml.safe_load(text), schema)
    broken = [
        with_rule("qurey: x"),
        with_rule("interval: 5x"),
        with_rule("direction: sideways"),
        with_rule("max_series: true"),
        with_rule("labels: {__x: y}"),
        "rules: [{name: r, query: up}]",
        MINIMAL + "receivers: {x: {type: alertmanager, url: 'http://a'}}",
        MINIMAL + "receivers: {x: {type: slack, url: 'http://a', url_file: /f}}",
        MINIMAL.replace("http://prom:9090", "http://p, tls: {cert_file: /c}"),
    ]
    for text in broken:
        assert not _valid(schema, yaml.safe_load(text), schema), text
