"""rules.yaml -> validated, frozen config objects. Every error is reported at once, each with its path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from exporter.secret import Secret


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
    """Where and how to reach a Prometheus-compatible query API (Prometheus, Thanos, Mimir/Cortex, VictoriaMetrics)."""

    url: str
    timeout: float = 30.0  # seconds, per HTTP request
    headers: Mapping[str, str] = field(default_factory=_frozen_map)  # e.g. X-Scope-OrgID for tenants
    bearer_token: Secret | None = None
    basic_auth: BasicAuth | None = None
    tls: TLSConfig = field(default_factory=TLSConfig)
    max_retries: int = 3  # retries on connection errors and 5xx, with exponential backoff and jitter


@dataclass(frozen=True)
class ModelConfig:
    """Detector settings. `type` picks the detector; the others tune the seasonal baseline."""

    type: str = "seasonal"  # seasonal (more in later versions)
    seasonality: str = "auto"  # auto | none | daily | weekly
    level_window: float = 3600.0  # seconds of recent data used to follow level changes
    min_history: float = 3600.0  # seconds of data a series needs before it is scored (warm-up)


@dataclass(frozen=True)
class RuleConfig:
    """One anomaly rule: a PromQL query plus the settings used for every series it returns."""

    name: str
    query: str
    interval: float = 60.0  # seconds between scoring cycles
    retrain: float = 3600.0  # seconds between refits
    history: float = 7 * 86400.0  # seconds of history kept and fitted on
    step: float = 60.0  # seconds, resolution of the range queries
    threshold: float = 4.0  # distance from expected, in robust standard deviations, where anomaly_score = 1
    direction: str = "both"  # up | down | both
    min_abs_deviation: float = 0.0  # deviations smaller than this never reach score 1
    min_rel_deviation: float = 0.0  # same, as a fraction of |expected|
    labels: Mapping[str, str] = field(default_factory=_frozen_map)  # extra labels on every exported series
    max_series: int = 1000  # series beyond this are dropped (with a warning and a metric)
    model: ModelConfig = field(default_factory=ModelConfig)
    receivers: tuple[str, ...] = ()  # names from the top-level `receivers:` section


@dataclass(frozen=True)
class ReceiverConfig:
    """A notification target (used by alerting). `url` may be a secret (Slack and webhook URLs are)."""

    name: str
    type: str  # alertmanager | slack | webhook
    urls: tuple[Secret, ...]
    timeout: float = 10.0
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


# --- loader, validation and JSON Schema below (to be implemented) ---
