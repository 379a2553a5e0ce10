"""The rules.yaml format as data: one field table per section drives the Checker and the JSON Schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# What a value is; the Checker (exporter.config_check) and json_schema() each handle every kind once.
Kind = Literal[
    "string",  # plain text, optional `pattern` (full match)
    "enum",  # one of `choices`
    "number",  # int or float (not bool)
    "integer",  # int (not bool)
    "boolean",
    "duration",  # Prometheus duration string -> float seconds
    "url",  # http(s) base URL; trailing slash stripped
    "urls",  # non-empty list of base URLs
    "secret",  # text kept in a Secret, never echoed
    "secret_file",  # path of a file whose stripped contents become a Secret
    "secret_url",  # http(s) endpoint URL kept verbatim in a Secret (Slack/webhook URLs carry tokens)
    "secret_url_file",  # path of a file holding such a URL
    "path",  # path of a file that must exist (resolved against the config file's directory)
    "string_map",  # mapping of string -> string, keys matching `pattern` if given
    "labels",  # Prometheus label names -> string values
    "names",  # list of names (unique)
    "section",  # nested mapping described by `section`
    "section_list",  # list of such mappings
    "section_map",  # name -> such mapping
]

NAME_PATTERN = r"[a-zA-Z_][a-zA-Z0-9_:-]*"
LABEL_NAME_PATTERN = r"[a-zA-Z_][a-zA-Z0-9_]*"
HEADER_NAME_PATTERN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
DURATION_PATTERN = r"(?:[0-9]+(?:ms|y|w|d|h|m|s))+"
URL_PATTERN = r"https?://[^\s/?#]+\S*"
ENV_REFERENCE_PATTERN = r"\$\{[A-Za-z_][A-Za-z0-9_]*\}"


@dataclass(frozen=True)
class Field:
    """One key of a section. `default` is written as in the file (e.g. "1m"); None means no default."""

    name: str
    kind: Kind
    description: str
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    non_empty: bool = False
    section: Section | None = None


@dataclass(frozen=True)
class Variant:
    """Keys a section needs (exactly one of `exactly_one`) or must not have when its `type` is `type`."""

    type: str
    exactly_one: tuple[str, ...]
    forbidden: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """A mapping with a fixed set of keys, plus the few rules that involve more than one key."""

    name: str
    description: str
    fields: tuple[Field, ...]
    at_most_one: tuple[tuple[str, ...], ...] = ()
    exactly_one: tuple[tuple[str, ...], ...] = ()
    together: tuple[tuple[str, ...], ...] = ()
    variants: tuple[Variant, ...] = ()  # selected by the value of the `type` key

    def get(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


# --- the format -------------------------------------------------------------------------------------------

TLS = Section(
    "tls",
    "TLS settings for the HTTP client. Certificates are verified unless turned off.",
    (
        Field("ca_file", "path", "CA bundle used to verify the server certificate (PEM)."),
        Field("cert_file", "path", "Client certificate for mutual TLS (PEM); needs key_file."),
        Field("key_file", "path", "Private key of the client certificate (PEM); needs cert_file."),
        Field(
            "insecure_skip_verify",
            "boolean",
            "Do not verify the server certificate. Only for testing.",
            default=False,
        ),
    ),
    together=(("cert_file", "key_file"),),
)

BASIC_AUTH = Section(
    "basic_auth",
    "HTTP basic authentication.",
    (
        Field("username", "string", "User name.", required=True),
        Field("password", "secret", "Password; use ${ENV_VAR} rather than writing it here."),
        Field(
            "password_file", "secret_file", "File holding the password (surrounding whitespace is ignored)."
        ),
    ),
    exactly_one=(("password", "password_file"),),
)

_HTTP_CLIENT = (
    Field("tls", "section", "TLS settings.", section=TLS),
    Field("bearer_token", "secret", "Bearer token sent as `Authorization: Bearer ...`; use ${ENV_VAR}."),
    Field("bearer_token_file", "secret_file", "File holding the bearer token, read at load."),
    Field("basic_auth", "section", "HTTP basic authentication.", section=BASIC_AUTH),
)
_ONE_AUTH = (("bearer_token", "bearer_token_file", "basic_auth"),)

PROMETHEUS = Section(
    "prometheus",
    "The Prometheus-compatible query API that rules are evaluated against.",
    (
        Field("url", "url", "Base URL of the query API, e.g. http://prometheus:9090.", required=True),
        Field(
            "external_url",
            "url",
            "URL people open Prometheus at, for the graph links in alerts (generatorURL); defaults to url.",
        ),
        Field("timeout", "duration", "Timeout of one HTTP request.", default="30s", exclusive_minimum=0),
        Field(
            "headers",
            "string_map",
            "Extra HTTP headers, e.g. X-Scope-OrgID for multi-tenant backends.",
            pattern=HEADER_NAME_PATTERN,
        ),
        *_HTTP_CLIENT,
        Field(
            "max_retries",
            "integer",
            "Retries on connection errors and 5xx responses (exponential backoff).",
            default=3,
            minimum=0,
        ),
    ),
    at_most_one=_ONE_AUTH,
)

MODEL = Section(
    "model",
    "Detector settings; merged key by key with defaults.model.",
    (
        Field(
            "type",
            "enum",
            "Detector: seasonal (baseline and band), iforest (IsolationForest on the baseline's residual"
            " features, scored together with the band), mad (robust z-score against a trailing median).",
            default="seasonal",
            choices=("seasonal", "iforest", "mad"),
        ),
        Field(
            "seasonality",
            "enum",
            "Seasonal period; auto picks daily or weekly from the data.",
            default="auto",
            choices=("auto", "none", "daily", "weekly"),
        ),
        Field(
            "level_window",
            "duration",
            "Recent data used to follow level changes; at most history.",
            default="1h",
            exclusive_minimum=0,
        ),
        Field(
            "min_history",
            "duration",
            "Data a series needs before it is scored (warm-up); at most history.",
            default="1h",
            minimum=0,
        ),
        Field(
            "contamination",
            "number",
            "iforest: the calibration day's (1 - contamination) score quantile, plus a margin, is score 1.",
            default=0.001,
            exclusive_minimum=0,
            maximum=0.5,
        ),
        Field(
            "per_series",
            "boolean",
            "iforest: one forest per series instead of one pooled per rule (slower, needs more history).",
            default=False,
        ),
        Field(
            "exclude_anomalies",
            "boolean",
            "Keep points that scored at or above 1 out of the next fit, so anomalies don't become normal.",
            default=True,
        ),
    ),
)

DEFAULT_ANNOTATIONS = {
    "summary": "{{ $rule }}: {{ $value | humanize }} is outside the expected range"
    " {{ $lower | humanize }} to {{ $upper | humanize }}",
    "description": 'Rule {{ $rule }} scored {{ printf "%.2f" $score }} (1 = band edge); expected'
    " {{ $expected | humanize }}.",
}

ALERT = Section(
    "alert",
    "Alert rule on anomaly_score; merged key by key with defaults.alert (labels and annotations too).",
    (
        Field(
            "name",
            "string",
            "alertname label of the alerts; the rule name when not set.",
            pattern=NAME_PATTERN,
        ),
        Field(
            "threshold",
            "number",
            "anomaly_score at or above which a point counts as anomalous.",
            default=1,
            exclusive_minimum=0,
        ),
        Field(
            "recovery_threshold",
            "number",
            "A firing alert counts as recovered only once the score is below this (hysteresis against"
            " flapping); at most threshold, and threshold when not set.",
            exclusive_minimum=0,
        ),
        Field(
            "for",
            "duration",
            "How long the condition must hold before the alert fires (pending until then).",
            default="1m",
            minimum=0,
        ),
        Field(
            "keep_firing_for",
            "duration",
            "How long a firing alert keeps firing after it recovered (against flapping).",
            default="10m",
            minimum=0,
        ),
        Field(
            "min_points",
            "integer",
            "Count-in-window condition for noisy metrics: at least this many anomalous points within"
            " `window` (e.g. 6 and 15m: more than 5 anomalous points in 15 minutes).",
            default=1,
            minimum=1,
        ),
        Field(
            "window",
            "duration",
            "Window of the min_points condition; 0s means the current point alone (min_points 1).",
            default="0s",
            minimum=0,
        ),
        Field("severity", "string", "severity label of the alerts.", default="warning", non_empty=True),
        Field("labels", "string_map", "Extra alert labels (templates allowed).", pattern=LABEL_NAME_PATTERN),
        Field(
            "annotations",
            "string_map",
            "Alert annotations, Prometheus-style templates: {{ $labels.instance }}, {{ $value | humanize }},"
            " $expected, $lower, $upper, $score, $rule. Defaults: summary and description.",
            pattern=LABEL_NAME_PATTERN,
        ),
        Field("receivers", "names", "Names of receivers (top-level `receivers`) that get these alerts."),
    ),
)

RULE_SETTINGS = (
    Field("interval", "duration", "Time between scoring cycles.", default="1m", exclusive_minimum=0),
    Field(
        "retrain",
        "duration",
        "Time between model refits; at least interval.",
        default="1h",
        exclusive_minimum=0,
    ),
    Field(
        "history",
        "duration",
        "History kept in memory and fitted on; at least 10 × step.",
        default="7d",
        exclusive_minimum=0,
    ),
    Field("step", "duration", "Resolution of the range queries.", default="1m", exclusive_minimum=0),
    Field(
        "z_threshold",
        "number",
        "Deviation from the expected value, in robust standard deviations, at which anomaly_score reaches 1"
        " (the edge of the published band).",
        default=4,
        exclusive_minimum=0,
    ),
    Field(
        "direction",
        "enum",
        "Which deviations count: up, down or both.",
        default="both",
        choices=("up", "down", "both"),
    ),
    Field(
        "min_abs_deviation",
        "number",
        "Deviations smaller than this (absolute) never reach score 1.",
        default=0,
        minimum=0,
    ),
    Field(
        "min_rel_deviation",
        "number",
        "Same as min_abs_deviation, as a fraction of |expected|.",
        default=0,
        minimum=0,
    ),
    Field(
        "max_series",
        "integer",
        "Series beyond this many are dropped, with a warning and a metric.",
        default=1000,
        minimum=1,
    ),
    Field("labels", "labels", "Extra labels on every exported series; merged key by key with defaults."),
    Field("model", "section", "Detector settings.", section=MODEL),
    Field("alert", "section", "When a series' anomaly becomes an alert, and who hears of it.", section=ALERT),
)

DEFAULTS = Section("defaults", "Settings for every rule that does not set them itself.", RULE_SETTINGS)

RULE = Section(
    "rule",
    "One anomaly rule: a PromQL query and the settings for every series it returns.",
    (
        Field(
            "name",
            "string",
            "Rule name, unique; exported as the `rule` label.",
            required=True,
            pattern=NAME_PATTERN,
        ),
        Field(
            "query", "string", "PromQL expression evaluated as a range query.", required=True, non_empty=True
        ),
        *RULE_SETTINGS,
    ),
)

RECEIVER = Section(
    "receiver",
    "A notification target.",
    (
        Field(
            "type", "enum", "Kind of receiver.", required=True, choices=("alertmanager", "slack", "webhook")
        ),
        Field("urls", "urls", "Alertmanager base URLs (alerts go to every one)."),
        Field("url", "secret_url", "Slack or webhook URL; use ${ENV_VAR}, it usually contains a token."),
        Field("url_file", "secret_url_file", "File holding the Slack or webhook URL."),
        Field("timeout", "duration", "Timeout of one HTTP request.", default="10s", exclusive_minimum=0),
        Field(
            "repeat_interval",
            "duration",
            "Slack and webhook: notify again about alerts still firing this often (0s: never). Alertmanager"
            " gets firing alerts re-sent every minute regardless, as Prometheus does.",
            default="4h",
            minimum=0,
        ),
        Field(
            "max_queue",
            "integer",
            "Notifications waiting for delivery beyond this many are dropped (logged and counted).",
            default=1000,
            minimum=1,
        ),
        *_HTTP_CLIENT,
    ),
    at_most_one=_ONE_AUTH,
    variants=(
        Variant("alertmanager", ("urls",), ("url", "url_file", "repeat_interval")),
        Variant("slack", ("url", "url_file"), ("urls",)),
        Variant("webhook", ("url", "url_file"), ("urls",)),
    ),
)

CONFIG = Section(
    "config",
    "prometheus-anomaly-exporter rules file.",
    (
        Field("prometheus", "section", "Where to run the queries.", required=True, section=PROMETHEUS),
        Field("defaults", "section", "Settings shared by all rules.", section=DEFAULTS),
        Field("rules", "section_list", "Anomaly rules.", required=True, non_empty=True, section=RULE),
        Field(
            "receivers",
            "section_map",
            "Notification targets by name.",
            pattern=NAME_PATTERN,
            section=RECEIVER,
        ),
    ),
)
