"""The soak run's stand-ins for the outside world: the monitored series, a faulty Prometheus and a receiver.

- `World`: which series exist when (churn: some vanish, new ones appear) and their value at any time,
  computed on demand (seasonal gauge + noise + occasional spikes, plus a few odd series: flat, gappy,
  huge values, NaN / ±Inf samples, label values with quotes, newlines and unicode).
- `FakePrometheus`: a `requests.Session` stand-in answering `/api/v1/query_range` with Prometheus' JSON,
  so the exporter's real `PrometheusReader` parses every answer, retries and maps faults to its own
  exception types. Faults are injected per HTTP attempt (`FAULTS`) and as outages (every attempt fails).
- `FakeOutbox`: an alerting `Outbox` whose deliveries are acknowledged (or fail) at the end of a cycle.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import compress
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from exporter.notification import Batch

DAY = 86400
ODD_EVERY = 97  # series id % 97: 0 flat, 1 gappy, 2 huge values, 3 NaN / ±Inf samples, 4 awkward labels
SPIKE_BLOCK, SPIKE_LEN = 1800, 600  # a spike lasts 10 minutes and starts at a 30-minute boundary

# Per HTTP attempt, one of these when a fault is injected (what the reader should make of it):
FAULTS = (
    "timeout",  # requests.Timeout: retried
    "connection",  # requests.ConnectionError: retried
    "http500",  # retried
    "http503",  # retried after Retry-After
    "http429",  # retried after Retry-After
    "not_json",  # HTTP 200 with an HTML error page: retried
    "truncated",  # HTTP 200 with the JSON cut in half: retried
    "status_error",  # HTTP 200 with {"status": "error"}: retried
    "bad_data",  # HTTP 400: BadQueryError, not retried
    "malformed",  # HTTP 200, one series' points are not [t, "v"] pairs: UnavailableError, not retried
    "wrong_type",  # HTTP 200, resultType "vector": QueryError, not retried
    "partial",  # HTTP 200, a fifth of the series missing: no error, a gap (filled by the next overlap)
    "burst",  # HTTP 200 with 10x the series (new label sets): max_series turns the excess away
)


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


class World:
    """`n` series alive at any time; `churn` of them per hour vanish and as many new ones appear."""

    def __init__(self, metric: str, n: int, start: float, *, churn: float = 0.0, seed: int = 0) -> None:
        self.metric = metric
        self.n = n
        self.churn_per_second = churn * n / 3600
        self._rng = np.random.default_rng(seed)
        self._owed = 0.0
        self.ids = np.arange(n, dtype=np.int64)
        self.born = np.full(n, -math.inf)
        self.died = np.full(n, math.inf)
        self.next_id = n
        self.appeared = self.vanished = 0
        self._metric_cache: dict[int, dict[str, str]] = {}

    def advance(self, now: float, seconds: float, forget_before: float) -> None:
        """Churn over the `seconds` up to `now`; forget series that vanished before `forget_before`."""
        self._owed += self.churn_per_second * seconds
        k = int(self._owed)
        if k:
            self._owed -= k
            alive = np.flatnonzero(np.isinf(self.died))
            victims = self._rng.choice(alive, size=min(k, len(alive)), replace=False)
            self.died[victims] = now  # its last point is the one before `now`
            new = np.arange(self.next_id, self.next_id + k, dtype=np.int64)
            self.next_id += k
            self.ids = np.concatenate([self.ids, new])
            self.born = np.concatenate([self.born, np.full(k, now)])
            self.died = np.concatenate([self.died, np.full(k, math.inf)])
            self.appeared += k
            self.vanished += len(victims)
        keep = self.died >= forget_before
        if not keep.all():
            for i in self.ids[~keep].tolist():
                self._metric_cache.pop(i, None)
            self.ids, self.born, self.died = self.ids[keep], self.born[keep], self.died[keep]

    @property
    def alive(self) -> int:
        return int(np.isinf(self.died).sum())

    def metric_labels(self, i: int) -> dict[str, str]:
        labels = self._metric_cache.get(i)
        if labels is None:
            labels = {"__name__": self.metric, "instance": f"host-{i:06d}", "job": "soak"}
            if i % ODD_EVERY == 4:
                labels["path"] = f'/a "quoted" \\ path\nline two ✓ {i}'
            self._metric_cache[i] = labels
        return labels

    def sample(self, start: int, end: int, step: int) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """Series alive at some point of [start, end]: ids, grid, values and which points exist."""
        t = np.arange(start, end + 1, step, dtype=np.int64)
        rows = np.flatnonzero((self.born <= end) & (self.died > start))
        ids = self.ids[rows]
        i = ids.astype(np.float64)[:, None]
        tf = t.astype(np.float64)[None, :]
        level, amp = 100 + 10 * (ids % 7), 5.0 + ids % 11
        phase = (ids % 24) / 24 * 2 * np.pi
        values = level[:, None] + amp[:, None] * np.sin(2 * np.pi * (tf % DAY) / DAY + phase[:, None])
        noise = _frac(np.sin(tf * 12.9898 + i * 78.233) * 43758.5453)  # the same for every re-read
        values += 4 * (noise - 0.5)
        block = np.floor(tf / SPIKE_BLOCK)
        spiking = (_frac(np.sin(block * 4.1414 + i * 91.7) * 24634.6345) < 0.004) & (
            tf % SPIKE_BLOCK < SPIKE_LEN
        )
        values += spiking * 12 * amp[:, None]
        present = (tf >= self.born[rows, None]) & (tf < self.died[rows, None])
        odd = ids % ODD_EVERY
        values[odd == 0] = 42.0
        present[odd == 1] &= noise[odd == 1] >= 0.3
        values[odd == 2] *= 1e298
        special = (odd == 3)[:, None] & (noise < 0.03)
        values[special] = np.where(noise[special] < 0.015, np.inf, np.nan)
        return ids.tolist(), t, values, present


def matrix_body(result: list[dict[str, Any]], result_type: str = "matrix") -> bytes:
    body = {"status": "success", "data": {"resultType": result_type, "result": result}}
    return json.dumps(body, separators=(",", ":")).encode()


def _go_float(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(x)


@dataclass
class Outage:
    """Every attempt fails between these cycles (Prometheus down or overloaded)."""

    start: int
    end: int  # exclusive


class FakePrometheus:
    """`requests.Session` stand-in: serves `worlds` by query, injecting faults per attempt."""

    def __init__(
        self, worlds: Mapping[str, World], *, fault_rate: float = 0.0, seed: int = 0, burst_factor: int = 10
    ) -> None:
        self.worlds = dict(worlds)
        self.fault_rate = fault_rate
        self.burst_factor = burst_factor
        self.down = False  # an outage: every attempt fails
        self.cycle = 0
        self._rng = random.Random(seed)
        self.requests = 0
        self.points = 0  # points served
        self.faults: Counter[str] = Counter()
        self.long_range_faults: Counter[str] = Counter()  # those on requests spanning more than an hour

    def close(self) -> None:
        pass

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.requests += 1
        params = kwargs.get("params") or kwargs.get("data") or {}
        if isinstance(params, str):
            params = {k: v[0] for k, v in parse_qs(params).items()}
        if self.down:
            kind = "outage_connection" if self._rng.random() < 0.5 else "outage_503"
        elif self._rng.random() < self.fault_rate:
            kind = self._rng.choice(FAULTS)
        else:
            kind = ""
        if kind:
            self.faults[kind] += 1
            if float(params.get("end", 0)) - float(params.get("start", 0)) > 3600:  # history or backfill
                self.long_range_faults[kind] += 1
        if kind in ("timeout",):
            raise requests.Timeout("injected: read timed out")
        if kind in ("connection", "outage_connection"):
            raise requests.ConnectionError("injected: connection refused")
        if kind in ("http500", "http503", "outage_503", "http429", "bad_data"):
            status = {"http500": 500, "http503": 503, "outage_503": 503, "http429": 429, "bad_data": 400}[
                kind
            ]
            error_type = "bad_data" if kind == "bad_data" else "internal"
            body = {"status": "error", "errorType": error_type, "error": f"injected {kind}"}
            headers = {"Retry-After": "1"} if status in (429, 503) else {}
            return _response(status, json.dumps(body).encode(), headers)
        if kind == "not_json":
            return _response(200, b"<html><body>502 Bad Gateway (injected)</body></html>")
        if kind == "status_error":
            return _response(200, b'{"status":"error","data":null}')
        world = self.worlds.get(str(params.get("query", "")))
        start, end, step = (int(float(params[k])) for k in ("start", "end", "step"))
        result = self._result(world, start, end, step, kind)
        if kind == "wrong_type":
            return _response(200, matrix_body(result, "vector"))
        content = matrix_body(result)
        if kind == "truncated":
            content = content[: len(content) // 2]
        return _response(200, content)

    def _result(
        self, world: World | None, start: int, end: int, step: int, kind: str
    ) -> list[dict[str, Any]]:
        if world is None:
            return []
        ids, t, values, present = world.sample(start, end, step)
        times = t.tolist()
        result = []
        drop = kind == "partial"
        for r, i in enumerate(ids):
            if drop and self._rng.random() < 0.2:
                continue
            mask = present[r]
            if not mask.any():
                continue
            row = values[r, mask].tolist()
            texts = list(map(_go_float, row)) if i % ODD_EVERY == 3 else list(map(repr, row))
            result.append(
                {
                    "metric": world.metric_labels(i),
                    "values": list(zip(compress(times, mask), texts, strict=True)),
                }
            )
            self.points += len(texts)
        if kind == "malformed" and result:
            result[len(result) // 2] = {"metric": result[len(result) // 2]["metric"], "values": [[times[0]]]}
        if kind == "burst":
            last: list[Any] = [[times[-1], "1"]]
            labels = {"__name__": world.metric, "job": "soak"}
            for k in range(self.burst_factor * world.n):
                metric = {**labels, "instance": f"burst-{k:06d}"}
                result.append({"metric": metric, "values": last})
        return result


def _response(status: int, content: bytes, headers: Mapping[str, str] | None = None) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    # stream=True reads go through resp.raw (the reader bounds the whole answer by its timeout)
    resp.raw = urllib3.response.HTTPResponse(body=io.BytesIO(content), preload_content=False, status=status)
    resp.headers = CaseInsensitiveDict({"Content-Type": "application/json", **(headers or {})})
    resp.reason = {200: "OK", 400: "Bad Request", 429: "Too Many Requests", 500: "Internal Server Error"}.get(
        status, "Service Unavailable"
    )
    return resp


class FakeOutbox:
    """Alerting's Outbox: one Alertmanager and one webhook target; batches are acknowledged at `flush()`
    (as a delivery thread would, later), a share of them failing (alerting then sends them again)."""

    TARGETS: Mapping[str, tuple[str, str]] = {"am": ("am/0", "alertmanager"), "hook": ("hook/0", "webhook")}

    def __init__(self, *, fail_rate: float = 0.1, max_queue: int = 1000, seed: int = 0) -> None:
        self._kinds = dict(self.TARGETS.values())
        self._queue: list[tuple[str, Batch, Callable[[str, Batch, bool], None]]] = []
        self._rng = random.Random(seed)
        self.fail_rate = fail_rate
        self.max_queue = max_queue
        self.batches = self.failed = self.refused = 0
        self.notifications: Counter[str] = Counter()  # by status

    def targets(self, receiver: str) -> tuple[str, ...]:
        entry = self.TARGETS.get(receiver)
        return () if entry is None else (entry[0],)

    def kind(self, target: str) -> str | None:
        return self._kinds.get(target)

    def repeat_interval(self, target: str) -> float:
        return 4 * 3600.0

    def submit(self, target: str, batch: Batch, on_done: Callable[[str, Batch, bool], None]) -> bool:
        if len(self._queue) >= self.max_queue:
            self.refused += 1
            return False
        self._queue.append((target, batch, on_done))
        return True

    def flush(self) -> None:
        queue, self._queue = self._queue, []
        for target, batch, on_done in queue:
            ok = self._rng.random() >= self.fail_rate
            if ok:
                self.batches += 1
                self.notifications.update(n.status for n in batch.notifications)
            else:
                self.failed += 1
            on_done(target, batch, ok)

    @property
    def queued(self) -> int:
        return len(self._queue)
