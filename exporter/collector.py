"""prometheus_client Collector: fresh metric families from the store's latest snapshots on every scrape.

A series that vanished from a snapshot simply is not exported any more. Nothing here queries, fits or
scores: values are computed on the exporter's schedule, as the HELP texts say. The per-series families
carry their text as rendered when the snapshot was published (exporter/exposition.py), so /metrics need
not format them again.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.exposition import SERIES_GAUGES, SeriesFamily
from exporter.notify.delivery import DeliveryStats
from exporter.sharding import Shard
from exporter.store import Store

_SCHEDULE_NOTE = "Computed by the exporter every rule interval, not at scrape time."

RULE_GAUGES = (  # per-rule health gauges: (name, HELP, RuleHealth attribute)
    ("anomaly_exporter_rule_up", "1 if the rule's last scoring cycle succeeded.", "up"),
    (
        "anomaly_exporter_rule_ready",
        "1 once the rule finished its first fit (or reported an error).",
        "ready",
    ),
    (
        "anomaly_exporter_last_success_timestamp_seconds",
        "Unix time of the rule's last successful scoring cycle.",
        "last_success",
    ),
    (
        "anomaly_exporter_last_fit_timestamp_seconds",
        "Unix time of the rule's last successful fit.",
        "last_fit",
    ),
    ("anomaly_exporter_series", "Series tracked for the rule (at most its max_series).", "series"),
    (
        "anomaly_exporter_series_dropped",
        "Series the rule's newest query returned beyond max_series and that were left out.",
        "dropped",
    ),
)


# Every stage a rule can fail in (exporter.pipeline's _stage names), exported from 0 so a first failure shows
# as an increase. `backfill` is the rest of the history loaded after a restart, `restore` / `save` the model
# file under --storage.path.
ERROR_STAGES = ("query", "backfill", "restore", "fit", "save", "score", "alert")


class AlertCounts(Protocol):
    """What the collector reads of the exporter's own alerting: in-memory counters, no I/O."""

    def counts(self) -> dict[str, tuple[int, int]]: ...  # rule -> (pending, firing)

    def delivery_stats(self) -> Sequence[DeliveryStats]: ...


NOTIFICATION_COUNTERS = (  # (name, HELP, DeliveryStats attribute)
    ("anomaly_exporter_notifications_sent", "Notification batches delivered, by target.", "sent"),
    (
        "anomaly_exporter_notifications_failed",
        "Delivery attempts that failed (each retry counts), by target.",
        "failed",
    ),
    (
        "anomaly_exporter_notifications_dropped",
        "Notification batches given up (queue full, error not worth retrying, retries exhausted); the"
        " alerts in them are offered again on the next cycle.",
        "dropped",
    ),
)


class AnomalyCollector(Collector):
    """Exports per-series anomaly gauges plus the exporter's own health metrics from a Store."""

    def __init__(self, store: Store, alerting: AlertCounts | None = None, shard: Shard | None = None) -> None:
        self._store = store
        self._alerting = alerting
        self._shard = shard

    def collect(self) -> Iterator[Metric]:
        published = list(self._store.published().values())
        for index, (_, _, doc) in enumerate(SERIES_GAUGES):
            yield SeriesFamily(index, f"{doc} {_SCHEDULE_NOTE}", published)
        yield from self._health_metrics()

    def _health_metrics(self) -> Iterator[Metric]:
        health = self._store.health()
        per_rule = [(GaugeMetricFamily(name, doc, labels=["rule"]), attr) for name, doc, attr in RULE_GAUGES]
        durations = GaugeMetricFamily(
            "anomaly_exporter_stage_duration_seconds",
            "Wall time of the last run of a stage (query, fit, score) of a rule.",
            labels=["rule", "stage"],
        )
        errors = CounterMetricFamily(
            "anomaly_exporter_errors", "Errors by rule and stage since start.", labels=["rule", "stage"]
        )
        for rule, h in sorted(health.items()):
            for family, attr in per_rule:
                value = getattr(h, attr)
                if value is not None:  # a time not reached yet is left out, never published as 0
                    family.add_metric([rule], float(value))
            for stage, seconds in sorted(h.durations.items()):
                durations.add_metric([rule, stage], seconds)
            for stage in (*ERROR_STAGES, *sorted(h.errors.keys() - set(ERROR_STAGES))):
                errors.add_metric([rule, stage], h.errors.get(stage, 0))
        yield from (family for family, _ in per_rule)
        yield from (durations, errors)
        if self._alerting is not None:
            yield from self._alert_metrics(self._alerting)

        reload = self._store.reload_status()
        yield GaugeMetricFamily(
            "anomaly_exporter_config_last_reload_successful",
            "1 if the last attempt to load the rules file succeeded.",
            value=1.0 if reload.successful else 0.0,
        )
        if reload.last_success is not None:
            yield GaugeMetricFamily(
                "anomaly_exporter_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful load of the rules file.",
                value=reload.last_success,
            )
        reloads = CounterMetricFamily(
            "anomaly_exporter_config_reloads",
            "Attempts to reload the rules file, by result.",
            labels=["result"],
        )
        for result in ("success", "failure"):
            reloads.add_metric([result], reload.attempts.get(result, 0))
        yield reloads
        yield from self._build_info()

    def _alert_metrics(self, alerting: AlertCounts) -> Iterator[Metric]:
        alerts = GaugeMetricFamily(
            "anomaly_exporter_alerts",
            "Series whose alert is pending or firing, by rule (the exporter's own alerting).",
            labels=["rule", "state"],
        )
        for rule, (pending, firing) in sorted(alerting.counts().items()):
            alerts.add_metric([rule, "pending"], pending)
            alerts.add_metric([rule, "firing"], firing)
        yield alerts
        stats = sorted(alerting.delivery_stats(), key=lambda d: d.target)
        names = ["receiver", "target", "type"]
        for name, doc, attr in NOTIFICATION_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=names)
            for d in stats:
                family.add_metric([d.receiver, d.target, d.kind], getattr(d, attr))
            yield family
        queue = GaugeMetricFamily(
            "anomaly_exporter_notification_queue_length",
            "Batches waiting for delivery, by target.",
            labels=names,
        )
        last = GaugeMetricFamily(
            "anomaly_exporter_notification_last_success_timestamp_seconds",
            "Unix time of the target's last delivered batch.",
            labels=names,
        )
        for d in stats:
            queue.add_metric([d.receiver, d.target, d.kind], d.queue_length)
            if d.last_success is not None:
                last.add_metric([d.receiver, d.target, d.kind], d.last_success)
        yield queue
        yield last

    def _build_info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "anomaly_exporter_build_info",
            "Version of the exporter, as labels; always 1.",
            labels=["version", "python_version"],
        )
        info.add_metric([__version__, platform.python_version()], 1.0)
        yield info
        if self._shard is not None:
            shard = GaugeMetricFamily(
                "anomaly_exporter_shard_info",
                "This replica's shard (--shard.index of --shard.count), as labels; always 1.",
                labels=["index", "count"],
            )
            shard.add_metric([str(self._shard.index), str(self._shard.count)], 1.0)
            yield shard
