"""Helpers that run the real Prometheus, promtool and Alertmanager binaries for integration tests.

Plain functions and context managers, no pytest fixtures: tests build what they need from these.
Everything listens on 127.0.0.1 on a free port, and every process started here is stopped on exit,
on test failure, at interpreter exit (atexit) and, on Linux, when the Python process dies (PDEATHSIG).

Facts about Prometheus 2.42 / promtool (Debian) this module relies on:
- ``promtool tsdb create-blocks-from openmetrics`` writes 2h blocks by default; the hidden flag
  ``--max-block-duration`` makes fewer, larger blocks (much faster for days of data, see ``backfill``).
- Overlapping blocks are always allowed since 2.39 (``--storage.tsdb.allow-overlapping-blocks`` is a
  deprecated no-op), so backfilled blocks reaching up to "now" load and query fine.
- OpenMetrics timestamps are seconds and promtool truncates ``ts * 1000`` to int ms, so fractional
  timestamps are written with an extra half millisecond to survive float rounding.
"""

from __future__ import annotations

import atexit
import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
import pytest
import requests

T = TypeVar("T")

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str) -> str:
    """Path of ``name`` on PATH; skip the test if absent, but fail it under CI=true (CI must run them)."""
    path = shutil.which(name)
    if path:
        return path
    msg = (
        f"binary {name!r} not found on PATH; install the Debian packages "
        "'prometheus' and 'prometheus-alertmanager' (make test does this)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def wait_until(fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "") -> T:
    """Call ``fn`` until it returns something truthy and return that; TimeoutError (with the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or fn!r}; last value: {last!r}")
        time.sleep(interval)


def assert_threads_ended(before: Iterable[threading.Thread], timeout: float = 5.0) -> None:
    """Fail unless every thread not in ``before`` has ended within ``timeout`` (a test cleaned up)."""
    known = set(before)
    try:
        wait_until(lambda: not [t for t in threading.enumerate() if t not in known], timeout, 0.05)
    except TimeoutError:
        left = [t.name for t in threading.enumerate() if t not in known]
        pytest.fail(f"threads still running after the test: {left}", pytrace=False)


# --------------------------------------------------------------------------------------------------
# OpenMetrics writing and backfill


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _series_prefix(name: str, labels: Mapping[str, str]) -> str:
    if not _METRIC_NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    for key in labels:
        if not _LABEL_NAME.match(key) or key.startswith("__"):
            raise ValueError(f"invalid label name {key!r} on {name}")
    if not labels:
        return f"{name} "
    inner = ",".join(f'{k}="{_escape_label_value(str(v))}"' for k, v in labels.items())
    return f"{name}{{{inner}}} "


def _format_timestamps(seconds: np.ndarray) -> list[str]:
    ms = np.round(np.asarray(seconds, dtype=np.float64) * 1000.0).astype(np.int64)
    if not np.any(ms % 1000):
        return list(map(str, (ms // 1000).tolist()))
    # promtool computes int64(float(ts) * 1000), truncating: "….1235" lands on …123 ms whatever the rounding.
    return [f"{m // 1000}.{m % 1000:03d}5" for m in ms.tolist()]


def _format_values(values: np.ndarray) -> list[str]:
    out = list(map(float.__repr__, values.tolist()))
    if not np.all(np.isfinite(values)):
        special = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}
        out = [special.get(v, v) for v in out]
    return out


def write_openmetrics(
    path: str | os.PathLike[str],
    series: Iterable[tuple[str, Mapping[str, str], np.ndarray, np.ndarray]],
    *,
    keep_nan: bool = False,
    allow_future: bool = False,
) -> Path:
    """Write ``(metric_name, labels, timestamps_s, values)`` series as OpenMetrics for promtool backfill.

    Every metric is typed ``gauge``; samples are grouped by metric family and sorted by time per series.
    NaN values are skipped (a gap, i.e. missing data) unless ``keep_nan``: promtool stores a written
    NaN as a real sample, which PromQL then returns as ``"NaN"``. ±Inf are written as ``+Inf``/``-Inf``.
    Samples after the current time are refused unless ``allow_future``: Prometheus' head rejects every
    scraped sample older than the newest block's end ("out of bounds"), so scraping would silently stop.
    """
    now = time.time()
    families: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    seen: set[str] = set()
    for name, labels, timestamps, values in series:
        prefix = _series_prefix(name, labels)
        if prefix in seen:
            raise ValueError(f"series given twice: {prefix.strip()}")
        seen.add(prefix)
        ts = np.asarray(timestamps, dtype=np.float64).ravel()
        vals = np.asarray(values, dtype=np.float64).ravel()
        if ts.shape != vals.shape:
            raise ValueError(f"{prefix.strip()}: {ts.size} timestamps but {vals.size} values")
        if not np.all(np.isfinite(ts)):
            raise ValueError(f"{prefix.strip()}: non-finite timestamp")
        if not allow_future and ts.size and ts.max() > now:
            raise ValueError(f"{prefix.strip()}: sample at {ts.max()} is in the future (now {now:.0f})")
        order = np.argsort(ts, kind="stable")
        ts, vals = ts[order], vals[order]
        if not keep_nan:
            keep = ~np.isnan(vals)
            ts, vals = ts[keep], vals[keep]
        if ts.size > 1 and np.any(np.diff(np.round(ts * 1000.0)) == 0):
            raise ValueError(f"{prefix.strip()}: duplicate timestamps (at millisecond resolution)")
        families.setdefault(name, []).append((prefix, ts, vals))

    path = Path(path)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for name, members in families.items():
            f.write(f"# TYPE {name} gauge\n")
            for prefix, ts, vals in members:
                if ts.size == 0:
                    continue
                # map/join keeps the per-sample work in C: ~0.3 s for 500 k samples, most of it float repr.
                sep = "\n" + prefix
                f.write(prefix)
                f.write(
                    sep.join(map(" ".join, zip(_format_values(vals), _format_timestamps(ts), strict=True)))
                )
                f.write("\n")
        f.write("# EOF\n")
    return path


def backfill(
    openmetrics_path: str | os.PathLike[str],
    tsdb_dir: str | os.PathLike[str],
    *,
    max_block_duration: str = "54h",
    timeout: float = 300.0,
) -> None:
    """Turn an OpenMetrics file into TSDB blocks in ``tsdb_dir`` (the Prometheus ``--storage.tsdb.path``).

    promtool re-reads the whole file once per block: with its default 2h blocks, 50 series × 7 days took
    15 s (85 blocks); 54h blocks (the largest Prometheus itself compacts to at 30d retention) take ~1.2 s.
    ``max_block_duration`` is a hidden promtool flag, rounded down to 2h·3^k. Blocks end 1 ms after their
    last sample and may overlap the head (allowed since 2.39), so data up to the last sample is queryable
    as soon as Prometheus starts on that directory. Backfill *before* starting Prometheus: a running one
    only notices new blocks on its once-a-minute reload.
    """
    promtool = require_binary("promtool")
    Path(tsdb_dir).mkdir(parents=True, exist_ok=True)
    cmd = [
        promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet",
        f"--max-block-duration={max_block_duration}", os.fspath(openmetrics_path), os.fspath(tsdb_dir),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(
            f"promtool backfill failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr}{proc.stdout}"
        )


def promtool_check_metrics(text: str) -> str:
    """Lint Prometheus text exposition with ``promtool check metrics``; return its output ("" = clean).

    promtool exits 3 on lint findings and 1 on parse errors; both are returned as findings. Raises only
    when promtool cannot run or fails in some other way. Note promtool parses the classic text format,
    not OpenMetrics.
    """
    promtool = require_binary("promtool")
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode not in (0, 1, 3):
        raise RuntimeError(f"promtool check metrics failed (exit {proc.returncode}): {output}")
    return output


# --------------------------------------------------------------------------------------------------
# Server processes


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGKILL when its parent dies (Linux prctl PDEATHSIG).

    Covers what atexit cannot: pytest killed by a CI timeout or SIGKILL. libc is loaded here, in the
    parent, so the hook run between fork and exec imports nothing. Caveat: the signal fires when the
    *thread* that started the server exits, so start servers from a thread that outlives them.
    """
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return hook


class ServerError(RuntimeError):
    """A server failed to start, or answered an API call with an error."""


class _ServerProcess:
    """One binary started on 127.0.0.1:<free port>, ready-checked via ``/-/ready``, always stopped."""

    binary = ""
    ready_timeout = 30.0
    _port_attempts = 3

    def __init__(self, port: int | None = None) -> None:
        self.port = 0
        self._fixed_port = port
        self.workdir = Path()
        self.log_path = Path()
        self._proc: subprocess.Popen[bytes] | None = None
        self._session = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self, exe: str) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files into ``self.workdir`` before the process starts."""

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Self:
        exe = require_binary(self.binary)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.binary}-"))
        self.log_path = self.workdir / "server.log"
        self._session = requests.Session()
        atexit.register(self.stop)
        try:
            self._prepare()
            # A port from free_port() can be taken before the server binds it: then try another one.
            attempts = 1 if self._fixed_port else self._port_attempts
            for attempt in range(attempts):
                self.port = self._fixed_port or free_port()
                if self._launch(exe, last_attempt=attempt == attempts - 1):
                    return self
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _launch(self, exe: str, last_attempt: bool) -> bool:
        """Start the process and wait for ready; False if it lost a race for the port (try another)."""
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(exe),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent_hook(),
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_tail()
                self._proc = None
                if "address already in use" in tail and not last_attempt:
                    return False
                raise ServerError(f"{self.binary} exited during start-up; log tail:\n{tail}")
            with contextlib.suppress(requests.RequestException):
                ready = self._session.get(f"{self.url}/-/ready", timeout=1).status_code == 200
                # Still alive: the 200 came from our process, not a squatter on a port we then failed to bind.
                if ready and self._proc.poll() is None:
                    return True
            time.sleep(0.1)
        raise ServerError(
            f"{self.binary} not ready after {self.ready_timeout}s; log tail:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM, up to 10 s grace, then SIGKILL; remove the work directory. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._session.close()
        if self.workdir != Path() and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process (fault injection: SIGSTOP, SIGKILL...); after SIGKILL, wait for it
        to be gone. ``stop()`` is still needed afterwards, to remove the work directory."""
        if self._proc is None:
            raise ServerError(f"{self.binary} is not running")
        self._proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self._proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _get_json(self, path: str, params: Any = None, timeout: float = 30.0) -> Any:
        r = self._session.get(f"{self.url}{path}", params=params, timeout=timeout)
        try:
            body = r.json()
        except ValueError:
            raise ServerError(f"GET {path} -> HTTP {r.status_code}: {r.text[:500]}") from None
        if not r.ok or (isinstance(body, dict) and body.get("status") == "error"):
            detail = (
                f"{body.get('errorType')}: {body.get('error')}" if isinstance(body, dict) else r.text[:500]
            )
            raise ServerError(f"GET {path} {params or ''} -> HTTP {r.status_code}: {detail}")
        return body


def _api_time(t: float | datetime | str) -> str:
    if isinstance(t, datetime):
        return repr(t.timestamp())
    return repr(float(t)) if isinstance(t, int | float) else t


class PrometheusServer(_ServerProcess):
    """A real ``prometheus`` on a given TSDB directory, optionally scraping ``targets`` (``host:port``).

    ``extra_config`` is YAML text appended to the generated prometheus.yml (e.g. ``rule_files:`` or
    ``alerting:``); it must not repeat ``global:`` or ``scrape_configs:``.
    """

    binary = "prometheus"

    def __init__(
        self,
        tsdb_dir: str | os.PathLike[str],
        targets: Sequence[str] = (),
        *,
        scrape_interval: str = "1s",
        job: str = "anomaly-exporter",
        extra_config: str = "",
        extra_args: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        super().__init__(port)
        self.tsdb_dir = Path(tsdb_dir)
        self.targets_list = list(targets)
        self.scrape_interval = scrape_interval
        self.job = job
        self.extra_config = extra_config
        self.extra_args = list(extra_args)

    def _prepare(self) -> None:
        # JSON strings are valid YAML scalars, so json.dumps does the quoting.
        lines = [
            "global:",
            f"  scrape_interval: {json.dumps(self.scrape_interval)}",
            f"  evaluation_interval: {json.dumps(self.scrape_interval)}",
        ]
        if self.targets_list:
            lines += [
                "scrape_configs:",
                f"  - job_name: {json.dumps(self.job)}",
                f"    scrape_interval: {json.dumps(self.scrape_interval)}",
                f"    scrape_timeout: {json.dumps(self.scrape_interval)}",
                f"    static_configs: [{{targets: {json.dumps(self.targets_list)}}}]",
            ]
        text = "\n".join(lines) + "\n" + self.extra_config.strip("\n") + "\n"
        (self.workdir / "prometheus.yml").write_text(text, encoding="utf-8")

    def _command(self, exe: str) -> list[str]:
        return [
            exe,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.tsdb_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=30d",
            "--log.level=info",
            *self.extra_args,
        ]

    def query(self, expr: str, time: float | datetime | str | None = None) -> list[dict[str, Any]]:
        """Instant query; returns ``data.result`` (a vector: ``[{"metric": {...}, "value": [t, "v"]}]``)."""
        params = {"query": expr}
        if time is not None:
            params["time"] = _api_time(time)
        return list(self._get_json("/api/v1/query", params)["data"]["result"])

    def query_range(
        self,
        expr: str,
        start: float | datetime | str,
        end: float | datetime | str,
        step: float | str = 60,
    ) -> list[dict[str, Any]]:
        """Range query; returns ``data.result`` (``[{"metric": {...}, "values": [[t, "v"], ...]}]``)."""
        params = {
            "query": expr,
            "start": _api_time(start),
            "end": _api_time(end),
            "step": step if isinstance(step, str) else repr(float(step)),
        }
        return list(self._get_json("/api/v1/query_range", params)["data"]["result"])

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
        interval: float = 0.25,
    ) -> list[dict[str, Any]]:
        """Poll an instant query at "now" until ``predicate(result)`` holds; return that result."""
        last: list[list[dict[str, Any]]] = [[]]

        def attempt() -> bool:
            last[0] = self.query(expr)
            return bool(predicate(last[0]))

        try:
            wait_until(attempt, timeout=timeout, interval=interval, what=f"query {expr!r}")
        except TimeoutError:
            raise TimeoutError(
                f"{expr!r}: predicate not met after {timeout}s; last result: {last[0]}"
            ) from None
        return last[0]

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with ``health`` ("up"/"down"/"unknown"), ``lastError``, ``scrapeUrl``…"""
        return list(self._get_json("/api/v1/targets", {"state": "active"})["data"]["activeTargets"])


class AlertmanagerServer(_ServerProcess):
    """A real ``prometheus-alertmanager`` with caller-given YAML config, clustering disabled."""

    binary = "prometheus-alertmanager"

    def __init__(
        self,
        config: str = "route:\n  receiver: default\nreceivers:\n  - name: default\n",
        *,
        port: int | None = None,
    ) -> None:
        super().__init__(port)
        self.config = config

    def _prepare(self) -> None:
        (self.workdir / "alertmanager.yml").write_text(self.config, encoding="utf-8")
        (self.workdir / "data").mkdir()

    def _command(self, exe: str) -> list[str]:
        return [
            exe,
            f"--config.file={self.workdir / 'alertmanager.yml'}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Empty disables HA gossip, which would otherwise bind 0.0.0.0:9094.
            "--cluster.listen-address=",
            "--log.level=info",
        ]

    def alerts(self, **params: Any) -> list[dict[str, Any]]:
        """GET /api/v2/alerts (params such as ``filter=["alertname=X"]``, ``active=True``)."""
        query = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items()}
        return list(self._get_json("/api/v2/alerts", query))

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """POST /api/v2/alerts, as Prometheus or our notifier would."""
        r = self._session.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=10)
        if not r.ok:
            raise ServerError(f"POST /api/v2/alerts -> HTTP {r.status_code}: {r.text[:500]}")


class WebhookSink:
    """A local HTTP endpoint on 127.0.0.1 that records the JSON bodies POSTed to it (e.g. by Alertmanager's
    webhook receiver). Use as a context manager; `received` grows as requests arrive."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.received = received
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="test-hook")
        self._thread.daemon = True

    def __enter__(self) -> WebhookSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2)
