"""APScheduler jobs per rule: scoring every `interval`, refitting every `retrain`.

No overlapping runs of one job (max_instances=1, missed runs coalesced), a little jitter so rules don't
all hit Prometheus in the same second, and a bounded worker pool. Reloads diff the rule set: unchanged
rules keep their history and model, changed ones start over, removed ones disappear from /metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from exporter.alert_registry import Alerting
from exporter.config import Config, PrometheusConfig
from exporter.modelstate import ModelStore
from exporter.pipeline import RuleRunner, Source
from exporter.sharding import Shard
from exporter.store import Store

log = logging.getLogger(__name__)


class Scheduler:
    """Runs every rule of the current config; `apply()` swaps in a new config."""

    def __init__(
        self,
        store: Store,
        source_factory: Callable[[PrometheusConfig], Source],
        *,
        workers: int = 4,
        clock: Callable[[], float] = time.time,
        alerting: Alerting | None = None,
        shard: Shard | None = None,
        models: ModelStore | None = None,
    ) -> None:
        self._store = store
        self._models = models  # fitted models kept across restarts (None: refit from scratch on start)
        self._shard = shard or Shard()  # every rule keeps only this replica's series
        self._alerting = alerting
        self._source_factory = source_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._runners: dict[str, RuleRunner] = {}
        self._jobs: dict[str, tuple[str, str]] = {}  # rule -> its job ids (unique per runner generation)
        self._generation = 0
        self._prometheus: PrometheusConfig | None = None
        self._source: Source | None = None
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )

    @property
    def runners(self) -> dict[str, RuleRunner]:
        with self._lock:
            return dict(self._runners)

    def start(self) -> None:
        if self._alerting is not None:  # retries and resolutions for rules that were removed
            self._scheduler.add_job(self._alerting.tick, "interval", seconds=30, id="alerting:tick")
        self._scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def apply(self, config: Config) -> None:
        """Make the running rules match `config`."""
        with self._lock:
            new_source = config.prometheus != self._prometheus or self._source is None
            old_source = self._source
            if new_source:
                self._source = self._source_factory(config.prometheus)
                self._prometheus = config.prometheus
            wanted = {rule.name: rule for rule in config.rules}
            # alert state outlives runners: a changed rule keeps its firing alerts, a removed one resolves
            alerts = self._alerting.apply(config.rules) if self._alerting is not None else {}
            for name, runner in list(self._runners.items()):
                if new_source or wanted.get(name) != runner.rule:
                    self._remove(name)
                    if name not in wanted and self._models is not None:
                        self._models.remove(runner.rule)  # a removed rule's saved model is of no use
            for name, rule in wanted.items():
                if name not in self._runners:
                    assert self._source is not None
                    runner = RuleRunner(
                        rule,
                        self._source,
                        self._store,
                        clock=self._clock,
                        alerts=alerts.get(name),
                        shard=self._shard,
                        models=self._models,
                    )
                    self._add(runner)
        if new_source and old_source is not None:
            close = getattr(old_source, "close", None)
            if close is not None:
                close()
        log.info("running %d rule(s): %s", len(wanted), ", ".join(sorted(wanted)))

    def _add(self, runner: RuleRunner) -> None:
        rule = runner.rule
        self._runners[rule.name] = runner
        self._generation += 1
        # ids unique per generation: a replaced rule's still-running job must not block the new one's
        fit_id, score_id = (f"{rule.name}:{kind}:{self._generation}" for kind in ("fit", "score"))
        self._jobs[rule.name] = (fit_id, score_id)
        now = datetime.fromtimestamp(self._clock()).astimezone()
        self._scheduler.add_job(
            runner.fit_job,
            "interval",
            seconds=rule.retrain,
            jitter=min(60.0, rule.retrain * 0.05),
            id=fit_id,
            next_run_time=now,  # load history and fit at once
        )
        self._scheduler.add_job(
            runner.score_job,
            "interval",
            seconds=rule.interval,
            jitter=min(5.0, rule.interval * 0.1),
            id=score_id,
            next_run_time=now + timedelta(seconds=rule.interval),
        )

    def _remove(self, name: str) -> None:
        for job in self._jobs.pop(name, ()):
            if self._scheduler.get_job(job) is not None:
                self._scheduler.remove_job(job)
        self._runners.pop(name, None)
        self._store.remove_rule(name)
