"""One rule's loop: fetch (incrementally) → fit / predict → calibrate → publish a snapshot.

Every failure is caught here, logged with the rule's name, counted by stage and shown on the rule's health;
it never escapes to the scheduler, so one rule can't stop another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

import numpy as np

from exporter.alerting import Latest, RuleAlerts
from exporter.config import RuleConfig
from exporter.frame import SeriesFrame
from exporter.memory import release_free_memory
from exporter.model import RuleModel
from exporter.modelstate import ModelStore
from exporter.reader import RangeResult, SeriesKey
from exporter.sharding import Shard, stable_hash
from exporter.store import LabelPairs, RuleSnapshot, Store

log = logging.getLogger(__name__)
SLICE_POINTS = 2_000_000  # points per time slice of a long query, merged into the frame one by one (16 MB)
__all__ = ["RuleRunner", "Source", "output_labels", "stable_hash"]  # stable_hash lives in exporter.sharding


class Source(Protocol):
    """What a rule needs from a data source: Prometheus' HTTP API (reader) or the built-in demo."""

    def query_range(
        self,
        query: str,
        start: float,
        end: float,
        step: float,
        *,
        keep: Callable[[SeriesKey], bool] | None = None,
        series_hint: int = 1,
    ) -> RangeResult: ...


def output_labels(key: SeriesKey, rule: str, extra: Mapping[str, str]) -> LabelPairs:
    """Labels of an exported series: `rule`, the rule's extra labels, then the source series' labels.

    A source label that clashes is renamed `exported_<name>` (as Prometheus does); the source metric name
    becomes the `metric_name` label.
    """
    out = {"rule": rule, **extra}
    for name, value in key:
        if not value:
            continue
        if name == "__name__":
            name = "metric_name"
        while name in out:
            name = f"exported_{name}"
        out[name] = value
    return tuple(sorted(out.items()))


class RuleRunner:
    """Owns one rule's history, model and published results — for the series of its shard only.

    With several replicas (`shard`), series of other shards are rejected as the query results are parsed,
    so they are never stored, scored, exported nor alerted on here; `max_series` caps the owned series.
    """

    def __init__(
        self,
        rule: RuleConfig,
        source: Source,
        store: Store,
        clock: Callable[[], float] = time.time,
        alerts: RuleAlerts | None = None,
        shard: Shard | None = None,
        models: ModelStore | None = None,
    ):
        self.rule = rule
        self.shard = shard or Shard()
        self._owns = self.shard.filter()  # None when not sharded
        self._alerts = alerts  # the rule's alert state: judged after every scoring cycle
        self._source = source
        self._clock = clock
        self._step = int(rule.step)
        self._frame = SeriesFrame(self._step, max(2, int(rule.history // rule.step)), rule.max_series)
        self._overlap = max(2 * self._step, 300)  # re-read recent points: late samples change them
        self._stale_cols = int(max(3 * rule.interval, 600) // self._step) + 1  # no sample for this long: gone
        self._model: RuleModel | None = None
        self._last_scored = -1  # grid time of the newest scored column
        self._labels: dict[SeriesKey, LabelPairs] = {}
        self._frame_lock = threading.Lock()  # frame reads/writes (short)
        self._fetch_lock = threading.Lock()  # one query at a time per rule
        self._fit_lock = threading.Lock()  # one fit at a time per rule
        self._last_dropped = 0
        self._warm_waiting = False  # set by _score: unscored series now have enough history to fit
        self._early_refit = min(rule.retrain, max(300.0, 5 * rule.interval))
        self._models = models  # saved after every fit; a saved model lets a restart score at once
        self._restore_tried = False
        # where a failed query left off, its series filter and size hint (see _query_into_frame)
        self._resume: tuple[int, Callable[[SeriesKey], bool], int] | None = None
        # After a restore only the recent data is loaded first (enough to score); older history is
        # backfilled afterwards, newest first, up to this timestamp (None: nothing left to backfill).
        self._backfill_end: int | None = None
        self._recent_span = int(max(2 * rule.model.level_window, rule.model.level_window + 60 * rule.step))
        self._out = store.add_rule(rule.name, owner=self)

    # -- jobs (called by the scheduler) --------------------------------------------------------------
    def fit_job(self) -> None:
        """Bring history up to date, refit the model, then score at once."""
        if not self._fit_lock.acquire(blocking=False):
            return  # a fit is already running (the first one can take a while)
        try:
            if self._model is None and self._models is not None and not self._restore_tried:
                self._restore()
            self._fetch()
            if self._backfill_end is not None:  # scores from the recent data now, then the rest
                self._score()
                self._out.update(ready=True)
                self._backfill()
                model = self._model
                if model is not None and self._clock() - model.fitted_at < self.rule.retrain:
                    return  # the restored model is recent enough: the next scheduled fit refits
            with self._stage("fit"):
                with self._frame_lock:
                    self._frame.drop_absent()
                    # read block by block (taking the lock each time) while scoring goes on
                    window = self._frame.window(lock=self._frame_lock)
                self._model = (self._model or RuleModel(self.rule)).fit(window)
            self._out.update(ready=True, last_fit=self._clock())
            self._save(self._model)
            self._score()
        except Exception:  # already logged and counted by _stage
            self._out.update(ready=True)  # ready = "finished its first fit or reported an error"
        finally:
            self._fit_lock.release()
            release_free_memory()  # the fit's temporaries: give the pages back, or RSS drifts up

    def score_job(self) -> None:
        """Fetch what is new and publish fresh scores; until a first fit succeeds, keep trying to fit.

        Series that appeared after the last fit are not scored by it; once one of them has `min_history`
        of data, the rule refits early (at most every `_early_refit` seconds) rather than wait for `retrain`.
        """
        if self._model is None:
            self._tick_alerts()  # restored alerts keep being re-sent while the first fit runs
            self.fit_job()
            return
        try:
            self._fetch()
            self._score()
        except Exception:
            self._tick_alerts()
            return
        last_fit = self._out.health()
        if (
            self._warm_waiting
            and last_fit is not None
            and last_fit.last_fit is not None
            and self._clock() - last_fit.last_fit >= self._early_refit
        ):
            log.info("rule %s: refitting early for series that appeared since the last fit", self.rule.name)
            self.fit_job()

    # -- stages --------------------------------------------------------------------------------------
    @contextmanager
    def _stage(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:
            log.warning(
                "rule %s: %s failed: %s",
                self.rule.name,
                stage,
                exc,
                exc_info=stage not in ("query", "backfill"),
            )
            # saving, restoring and backfilling old history do not change what is served: still up
            self._out.record_error(stage, str(exc), down=stage not in ("save", "restore", "backfill"))
            if stage == "query":
                self._maybe_withdraw()
            raise
        finally:
            self._out.record_duration(stage, time.perf_counter() - started)

    def _fetch(self) -> None:
        with self._fetch_lock, self._stage("query"):
            end = int(self._clock()) // self._step * self._step
            history_start = end - int(self.rule.history) + self._step
            last = self._frame.last_timestamp
            if last is None or last < history_start:
                # with a model (restored, or after an outage longer than the history) score first
                recent = max(history_start, end - self._recent_span) if self._model is not None else None
                dropped = self._load_history(history_start, end, recent)
            elif self._resume is not None:
                # a long query failed part-way: carry on from its failed slice, for the same series and in
                # the same slices (the frame spans the whole range already: its newest columns may be empty,
                # so this is no time to drop "absent" series)
                lo, keep, hint = self._resume
                self._query_into_frame(max(history_start, lo), end, keep, hint)
                dropped = self._last_dropped
            else:
                start = max(history_start, last - self._overlap)
                with self._frame_lock:
                    if len(self._frame) >= self.rule.max_series:  # full: free the rows of vanished series
                        self._frame.drop_absent(recent=self._stale_cols)
                    admitter = self._frame.admitter(self._owns)
                self._query_into_frame(start, end, admitter, max(1, len(self._frame)))
                dropped = admitter.over_cap  # not result.dropped: other shards' series are not "dropped"
            with self._frame_lock:
                n_series = len(self._frame)
            if dropped and dropped != self._last_dropped:
                log.warning(
                    "rule %s: query returned %d series beyond max_series=%d; they are not scored",
                    self.rule.name,
                    dropped,
                    self.rule.max_series,
                )
            self._last_dropped = dropped
            self._out.update(series=n_series, dropped=dropped)

    def _load_history(self, start: int, end: int, recent: int | None = None) -> int:
        """Full history, for at most max_series of the shard's series, chosen by a stable hash (the same
        set on every restart) — or, with `recent`, only [recent, end], leaving the rest to _backfill().
        Returns how many owned series were left out by the cap."""
        probe = self._source.query_range(
            self.rule.query, max(start, end - self._overlap), end, self._step, keep=self._owns
        )
        ranked = sorted(probe.keys, key=stable_hash)
        kept = set(ranked[: self.rule.max_series])
        with self._frame_lock:
            self._frame.reserve(start, end)
        if recent is not None and recent > start:
            self._backfill_end = recent - self._step  # set first: a failure below must not lose the rest
            self._query_into_frame(recent, end, kept.__contains__, max(1, len(kept)))
        else:
            self._query_into_frame(start, end, kept.__contains__, max(1, len(kept)))
        return len(probe.keys) - len(kept)

    def _backfill(self) -> None:
        """Load the history older than what a restart loaded first, newest slice first, for the series
        already kept; scoring goes on between slices. A failure leaves the rest for the next fit job."""
        with self._frame_lock:
            start = self._frame.first_timestamp
            keys = set(self._frame.keys)
        end = self._backfill_end
        if start is None or end is None or end < start:
            self._backfill_end = None
            return
        hint = max(1, len(keys))
        cols = max(1, SLICE_POINTS // hint)
        while end >= start:
            lo = max(start, end - (cols - 1) * self._step)
            with self._fetch_lock, self._stage("backfill"):
                result = self._source.query_range(
                    self.rule.query, lo, end, self._step, keep=keys.__contains__, series_hint=hint
                )
                with self._frame_lock:
                    self._frame.merge(result)
            end = lo - self._step
            self._backfill_end = end if end >= start else None

    def _restore(self) -> None:
        """Take the model saved by a previous run, if it still applies (see exporter.modelstate)."""
        self._restore_tried = True
        assert self._models is not None
        try:
            with self._stage("restore"):
                model = self._models.load(self.rule)
        except Exception:  # logged and counted by _stage; the rule fits from scratch
            return
        if model is not None:
            self._model = model
            self._out.update(last_fit=model.fitted_at)
            log.info(
                "rule %s: restored the model saved at %s for %d series; scoring as soon as the last %s of "
                "data are in, the rest of the history loads afterwards",
                self.rule.name,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(model.fitted_at)),
                len(model.detector.keys_) if model.detector is not None else 0,
                f"{self._recent_span // 60} min",
            )

    def _save(self, model: RuleModel) -> None:
        if self._models is None:
            return
        try:
            with self._stage("save"):
                self._models.save(self.rule, model)
        except Exception:  # logged and counted by _stage; the next fit tries again
            pass

    def _query_into_frame(self, start: int, end: int, keep: Callable[[SeriesKey], bool], hint: int) -> None:
        """Query [start, end] in time slices of about SLICE_POINTS points, merging each into the frame as
        it arrives: a week of 10,000 series never exists as one float64 matrix next to the frame."""
        cols = max(1, SLICE_POINTS // hint)
        for lo in range(start, end + 1, cols * self._step):
            hi = min(end, lo + (cols - 1) * self._step)
            try:
                result = self._source.query_range(
                    self.rule.query, lo, hi, self._step, keep=keep, series_hint=hint
                )
            except Exception:
                # the frame already spans [start, end] (reserved): without this, the slices not merged
                # would stay a hole until they age out; the next fetch starts here instead
                self._resume = (lo, keep, hint)
                raise
            with self._frame_lock:
                self._frame.merge(result)
        self._resume = None

    def _score(self) -> None:
        model = self._model
        if model is None:
            return
        with self._stage("score"):
            with self._frame_lock:
                window = self._frame.window()
                n_t = len(window.timestamps)
                if n_t == 0:
                    return
                # every column new since the last cycle (at most an hour's worth), so none goes unjudged
                new = int(np.searchsorted(window.timestamps, self._last_scored, side="right"))
                columns = np.arange(max(new, n_t - 60, 0) if new < n_t else n_t - 1, n_t)
                scored = model.score(window, columns)
                scored_times = window.timestamps[columns]  # a copy: the frame may change after the lock
                if self.rule.model.exclude_anomalies:
                    for j, col in enumerate(columns):
                        self._frame.flag(int(window.timestamps[col]), scored.score[:, j] >= 1)
                values = window.cols(np.array([n_t - 1]))[:, 0]
                keys = list(window.keys)
                timestamp = float(window.timestamps[-1])
                self._last_scored = int(timestamp)
                score, expected, lower, upper = (a[:, -1] for a in scored)
                unscored = np.isnan(expected) | np.isnan(upper)
                waiting = unscored & ~np.isnan(values)
                # new series since the fit: once one has enough history, refit early (see score_job)
                counts = window.counts(np.flatnonzero(waiting))
                self._warm_waiting = bool((counts * self._step >= self.rule.model.min_history).any())
            # exported: series with a current value that the model can judge (not new, not in warm-up)
            rows = np.flatnonzero(~np.isnan(values) & ~unscored)
            snapshot = RuleSnapshot(
                labels=tuple(self._output_labels(keys[i]) for i in rows),
                score=score[rows],
                expected=expected[rows],
                lower=lower[rows],
                upper=upper[rows],
                timestamp=timestamp,
                value=values[rows],
            )
        self._out.publish(snapshot)
        self._out.update(up=True, last_success=self._clock(), last_error=None)
        if self._alerts is not None:
            latest = Latest(values, score, expected, lower, upper)
            with self._stage("alert"):
                self._alerts.observe(keys, scored_times, scored.score, latest)

    def _tick_alerts(self) -> None:
        if self._alerts is None:
            return
        try:
            with self._stage("alert"):
                self._alerts.tick()
        except Exception:  # logged and counted by _stage
            pass

    def _output_labels(self, key: SeriesKey) -> LabelPairs:
        labels = self._labels.get(key)
        if labels is None:
            if len(self._labels) > 4 * self.rule.max_series:  # churn: forget label sets of long-gone series
                self._labels.clear()
            labels = self._labels[key] = output_labels(key, self.rule.name, self.rule.labels)
        return labels

    def _maybe_withdraw(self) -> None:
        """After queries have failed for a while, stop serving old scores as if they were current."""
        last = self._out.health()
        horizon = max(3 * self.rule.interval, 300.0)
        if last is not None and (last.last_success is None or self._clock() - last.last_success > horizon):
            self._out.withdraw()
