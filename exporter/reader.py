"""Range queries against Prometheus-compatible HTTP APIs: auth, TLS, tenant headers, retries and chunking."""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests
import urllib3

from exporter.config import PrometheusConfig
from exporter.httpclient import client_options

log = logging.getLogger(__name__)

SeriesKey = tuple[tuple[str, str], ...]  # sorted (label, value) pairs of a series, incl. __name__ if present

MAX_POINTS_PER_SERIES = 10_000  # per request; Prometheus rejects more than 11,000
POST_QUERY_LENGTH = 2_000  # longer queries go in a form-encoded POST body (URLs have length limits)
_READ_SIZE = 1 << 20  # bytes asked of each read of a response body
FRESH_KEYS_POINTS = 100_000  # from this many points parsed by one query, keys get fresh strings (_fresh_key)
_BACKOFF_BASE, _BACKOFF_CAP, _RETRY_AFTER_CAP = 0.5, 10.0, 30.0
_RETRIED_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays make field-wise == ambiguous
class RangeResult:
    """Series × time matrix of a range query on the grid `timestamps` (k * step); NaN = no point."""

    keys: list[SeriesKey]  # one per row, order of first appearance
    timestamps: np.ndarray  # int64 seconds, shape (n_t,)
    values: np.ndarray  # float64, shape (len(keys), n_t)
    dropped: int  # distinct series returned by Prometheus but rejected by `keep`
    warnings: tuple[str, ...]  # Prometheus' `warnings`, deduplicated across chunks


class QueryError(Exception):
    """A range query failed. The reader's messages name the (shortened) query and never contain a secret."""

    def __init__(
        self, message: str, *, query: str = "", status: int | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.query = query  # shortened
        self.status = status  # HTTP status of the last attempt, if there was a response
        self.error_type = error_type  # Prometheus' errorType (bad_data, execution, timeout...), if any

    @classmethod
    def about(
        cls, query: str, detail: str, *, status: int | None = None, error_type: str | None = None
    ) -> Self:
        short = _shorten(query)
        return cls(f"query {short!r}: {detail}", query=short, status=status, error_type=error_type)


class BadQueryError(QueryError):
    """Prometheus rejected the query itself (HTTP 400/422); retrying will not help."""


class UnavailableError(QueryError):
    """Prometheus could not be reached or answered garbage, even after retries."""


class _Retry(Exception):
    """A failed attempt worth repeating; `cause` is already scrubbed of secrets."""

    def __init__(self, cause: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(cause)
        self.cause, self.status, self.retry_after = cause, status, retry_after


class PrometheusReader:
    """Runs chunked `query_range` calls with retries. Owns its HTTP session unless one is passed in.

    Per-query state lives in the call, so one reader can serve several rules' threads.
    """

    def __init__(
        self,
        config: PrometheusConfig,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        points_per_request: int = 500_000,  # measured: same load time as 2 M, 290 MB less RSS at 1,000 series
    ) -> None:
        if config.bearer_token is not None and config.basic_auth is not None:
            raise ValueError("prometheus: bearer_token and basic_auth are mutually exclusive")
        if points_per_request < 1:
            raise ValueError("points_per_request must be positive")
        self._config = config
        self._endpoint = config.url.rstrip("/") + "/api/v1/query_range"
        self._where = _redact_url(config.url)
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._points_per_request = points_per_request
        opts = client_options(
            self._where,
            config.tls,
            config.bearer_token,
            config.basic_auth,
            {"Accept": "application/json", **config.headers},
        )
        self._headers, self._auth, self._verify, self._cert = opts.headers, opts.auth, opts.verify, opts.cert
        self._secrets = opts.secrets  # scrubbed from any text we did not write ourselves
        url_password = urlsplit(config.url).password
        if url_password:
            self._secrets.append(url_password)

    def query_range(
        self,
        query: str,
        start: float,
        end: float,
        step: float,
        *,
        keep: Callable[[SeriesKey], bool] | None = None,
        series_hint: int = 1,
    ) -> RangeResult:
        """Fetch `query` over [start, end] on the grid k * step, in as many requests as the budget needs.

        Raises ValueError for a bad step or range, BadQueryError, UnavailableError or QueryError otherwise.
        """
        if not (math.isfinite(step) and step >= 1 and step == int(step)):
            raise ValueError(f"step must be a whole number of seconds >= 1, got {step!r}")
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"invalid range: start={start!r} end={end!r}")
        grid_step = int(step)
        first = math.floor(start) // grid_step * grid_step
        n_t = (math.floor(end) // grid_step * grid_step - first) // grid_step + 1
        merged = _Merger(query, first, grid_step, n_t, keep)
        began, col, requests_made = time.monotonic(), 0, 0
        while col < n_t:
            budget = self._points_per_request // max(series_hint, merged.seen, 1)
            n = min(MAX_POINTS_PER_SERIES, max(1, budget), n_t - col)
            chunk_start = first + col * grid_step
            merged.add(self._fetch(query, chunk_start, chunk_start + (n - 1) * grid_step, grid_step))
            col += n
            requests_made += 1
        result = merged.result()
        if result.warnings:  # e.g. Thanos / Mimir partial responses: some stores or ingesters did not answer
            log.warning(
                "query %r: %s answered with warnings (the data may be incomplete): %s",
                _shorten(query),
                self._where,
                self._scrub("; ".join(result.warnings)),
            )
        log.debug(
            "query %r: %d request(s), %d series kept, %d dropped, %d steps in %.3fs",
            _shorten(query),
            requests_made,
            len(result.keys),
            result.dropped,
            n_t,
            time.monotonic() - began,
        )
        return result

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def __enter__(self) -> PrometheusReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- HTTP ------------------------------------------------------------------------------------
    def _fetch(self, query: str, start: int, end: int, step: int) -> dict[str, Any]:
        """One chunk, retried with capped exponential backoff and full jitter, or the server's Retry-After."""
        params = {"query": query, "start": str(start), "end": str(end), "step": str(step)}
        attempts = max(0, self._config.max_retries) + 1
        for attempt in range(attempts):
            try:
                return self._attempt(query, params)
            except _Retry as exc:
                failure = exc
            if attempt + 1 < attempts:
                delay = failure.retry_after
                if delay is None:
                    delay = self._rng.uniform(0.0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt))
                log.warning(
                    "query %r to %s failed (%s); retry %d/%d in %.2fs",
                    _shorten(query),
                    self._where,
                    failure.cause,
                    attempt + 1,
                    attempts - 1,
                    delay,
                )
                self._sleep(delay)
        cause = f"{self._where} unavailable after {attempts} attempt(s): {failure.cause}"
        raise UnavailableError.about(query, cause, status=failure.status)

    def _attempt(self, query: str, params: dict[str, str]) -> dict[str, Any]:
        post = len(query) > POST_QUERY_LENGTH
        deadline = time.monotonic() + self._config.timeout
        try:
            resp = self._session.request(
                "POST" if post else "GET",
                self._endpoint,
                params=None if post else params,
                data=params if post else None,
                headers=self._headers,
                auth=self._auth,
                verify=self._verify,
                cert=self._cert,
                timeout=self._config.timeout,
                stream=True,  # the body is read by _read_body, against the deadline
            )
        except _RETRIED_ERRORS as exc:
            raise _Retry(self._scrub(f"{type(exc).__name__}: {exc}")) from None
        except requests.RequestException as exc:  # bad URL, invalid header...: configuration, not transient
            cause = self._scrub(f"{self._where}: {type(exc).__name__}: {exc}")
            raise UnavailableError.about(query, cause) from None
        status = resp.status_code
        try:
            content = self._read_body(resp, deadline)
        finally:
            resp.close()
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if status == 200:
            if not isinstance(body, dict):
                raise _Retry("HTTP 200 with a body that is not a JSON object", status)
            if body.get("status") != "success" or not isinstance(body.get("data"), dict):
                raise _Retry(self._scrub(f"HTTP 200 with unexpected body {_excerpt(content)!r}"), status)
            return body
        error_type, error = _error_fields(resp, content, body)
        text = self._scrub(f"HTTP {status}" + (f" {error_type}" if error_type else "") + f": {error}")
        if status == 429 or status >= 500:
            raise _Retry(text, status, _retry_after(resp) if status in (429, 503) else None)
        if status in (400, 422):
            raise BadQueryError.about(
                query, f"Prometheus rejected the query ({text})", status=status, error_type=error_type
            )
        raise UnavailableError.about(
            query, f"{self._where} answered {text}", status=status, error_type=error_type
        )

    def _read_body(self, resp: requests.Response, deadline: float) -> bytes:
        """The whole (decoded) body, or _Retry once `deadline` has passed. requests' timeout bounds each
        read, not their sum: a server trickling its answer would otherwise hold the query (and the rule's
        job) for as long as it likes. So an attempt ends within about twice the timeout at worst."""
        raw = resp.raw
        read1 = getattr(raw, "read1", None)  # urllib3 >= 2: returns what one read brought, not `amt` bytes
        chunks: list[bytes] = []
        try:
            while True:
                if time.monotonic() > deadline:
                    timeout = self._config.timeout
                    raise _Retry(
                        f"Timeout: no complete answer within the {timeout:g}s timeout", resp.status_code
                    )
                chunk = (
                    read1(_READ_SIZE, decode_content=True) if read1 else raw.read(65536, decode_content=True)
                )
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            # a connection reset, a body cut short (IncompleteRead), a read timeout, bad gzip...
            raise _Retry(
                self._scrub(f"{type(exc).__name__} reading the answer: {exc}"), resp.status_code
            ) from None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<secret>")
        return text


class _Merger:
    """Accumulates chunk responses into one series × grid matrix, storing only series that `keep` accepts."""

    def __init__(self, query: str, first: int, step: int, n_t: int, keep: Callable[[SeriesKey], bool] | None):
        self.query, self.first, self.step, self.n_t, self.keep = query, first, step, n_t, keep
        self.keys: list[SeriesKey] = []
        self.rows: dict[SeriesKey, int] = {}  # every distinct series seen; -1 = rejected by keep
        self.dropped = 0
        self.off_grid = 0
        self.parsed = 0  # points in the responses, kept or not
        self.warnings: dict[str, None] = {}  # ordered set
        # Grown in place (ndarray.resize) rather than stacked at the end, so peak memory stays ~1x the result.
        self.values = np.full((0, n_t), np.nan)

    @property
    def seen(self) -> int:
        return len(self.rows)

    def add(self, body: dict[str, Any]) -> None:
        data = body["data"]
        if data.get("resultType") != "matrix":
            raise QueryError.about(
                self.query,
                f"range query returned resultType {data.get('resultType')!r}, "
                "not 'matrix'; the query must be an instant-vector or scalar expression",
            )
        self.warnings.update(dict.fromkeys(str(w) for w in body.get("warnings") or ()))
        try:
            rows, stamps, texts = self._split(data["result"])
            if rows:
                self._fill(rows, stamps, texts)  # a value that is no number ("n/a") fails here
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"unexpected response shape ({type(exc).__name__}: {exc})"
            raise UnavailableError.about(self.query, detail) from None

    def _split(self, result: list[Any]) -> tuple[list[int], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Per kept series: its row, its timestamps and its value strings (one C-level zip per series)."""
        rows: list[int] = []
        stamps: list[tuple[Any, ...]] = []
        texts: list[tuple[Any, ...]] = []
        for series in result:
            points = series.get("values")  # absent for native-histogram-only series: nothing to store
            if not points:
                continue
            self.parsed += len(points)
            key: SeriesKey = tuple(sorted(series["metric"].items()))
            row = self.rows.get(key)
            if row is None:
                if self.keep is not None and not self.keep(key):
                    row = -1
                    self.dropped += 1
                else:
                    row = len(self.keys)
                    self.keys.append(key)
                self.rows[key] = row
            if row >= 0:
                ts, vs = zip(*points, strict=True)
                rows.append(row)
                stamps.append(ts)
                texts.append(vs)
        return rows, stamps, texts

    def _fill(self, rows: list[int], stamps: list[tuple[Any, ...]], texts: list[tuple[Any, ...]]) -> None:
        counts = np.fromiter(map(len, stamps), dtype=np.intp, count=len(stamps))
        total = int(counts.sum())
        ts = np.fromiter(chain.from_iterable(stamps), dtype=np.float64, count=total)
        vals = np.fromiter(chain.from_iterable(texts), dtype=np.float64, count=total)  # parses "NaN", "+Inf"
        row_of = np.repeat(np.asarray(rows, dtype=np.intp), counts)
        pos = (ts - self.first) / self.step
        with np.errstate(invalid="ignore"):
            col = pos.astype(np.intp)
        ok = (col == pos) & (col >= 0) & (col < self.n_t)
        if not ok.all():  # proxies may misalign points; Prometheus itself returns exactly start + k*step
            self.off_grid += int(total - ok.sum())
            row_of, col, vals = row_of[ok], col[ok], vals[ok]
        same_series = row_of[1:] == row_of[:-1]
        if len(set(rows)) < len(rows) or (same_series & (col[1:] <= col[:-1])).any():
            # A key repeated within one response, or a series' points repeated or out of order (some
            # proxies): the last point per cell wins. Chosen here: numpy leaves the outcome of assigning
            # one cell twice through fancy indexing unspecified.
            flat = (row_of * self.n_t + col)[::-1]
            _, last = np.unique(flat, return_index=True)
            pick = len(flat) - 1 - last
            row_of, col, vals = row_of[pick], col[pick], vals[pick]
        if len(self.keys) > self.values.shape[0]:
            self._grow(len(self.keys))
        self.values[row_of, col] = vals

    def _grow(self, needed: int) -> None:
        old = self.values.shape[0]
        self.values.resize((max(needed, old + old // 2), self.n_t), refcheck=False)  # no views of it exist
        self.values[old:] = np.nan

    def result(self) -> RangeResult:
        if self.values.shape[0] != len(self.keys):
            self.values.resize((len(self.keys), self.n_t), refcheck=False)
        if self.off_grid:
            log.warning(
                "query %r: ignored %d point(s) off the %ds step grid",
                _shorten(self.query),
                self.off_grid,
                self.step,
            )
        timestamps = self.first + self.step * np.arange(self.n_t, dtype=np.int64)
        keys = self.keys if self.parsed < FRESH_KEYS_POINTS else [_fresh_key(k) for k in self.keys]
        return RangeResult(keys, timestamps, self.values, self.dropped, tuple(self.warnings))


def _fresh_key(key: SeriesKey) -> SeriesKey:
    """The same labels in newly allocated strings.

    A key's strings come from the parsed JSON, allocated in between the millions of short-lived point
    objects of a large response. A rule keeps its series' keys for as long as they exist, and each one left
    in a 1 MiB small-object arena keeps the whole arena (CPython frees only empty ones): at 1,000 series the
    keys of one history load held ~80 MB of otherwise empty arenas for good (benchmarks/soak.py). Copied
    once the response is gone (0.5 µs per series), they take a few arenas of their own.
    """
    return tuple((sys.intern(name.encode().decode()), value.encode().decode()) for name, value in key)


def _shorten(query: str, limit: int = 200) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc="<redacted>@" + parts.netloc.rpartition("@")[2]))


def _excerpt(content: bytes, limit: int = 200) -> str:
    """The start of a body, whitespace collapsed, without decoding all of a possibly huge response."""
    return " ".join(content[: limit * 2].decode("utf-8", "replace").split())[:limit]


def _error_fields(resp: requests.Response, content: bytes, body: Any) -> tuple[str | None, str]:
    """Prometheus' errorType and error text, or an excerpt of a non-JSON body (e.g. a proxy's HTML page)."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error_type = body.get("errorType")
        return (error_type if isinstance(error_type, str) else None), body["error"]
    return None, _excerpt(content) or resp.reason or "no body"


def _retry_after(resp: requests.Response) -> float | None:
    """A numeric Retry-After, capped; HTTP-date values are ignored (the jittered backoff applies)."""
    try:
        seconds = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return min(seconds, _RETRY_AFTER_CAP) if math.isfinite(seconds) and seconds >= 0 else None
