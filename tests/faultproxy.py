"""A fault-injecting HTTP proxy for tests: forwards to one upstream and misbehaves on demand.

Put it between the exporter and a real Prometheus or Alertmanager, then say what the next requests get:

    with FaultProxy(prometheus.url) as proxy:
        proxy.fault = error(503, retry_after=2)    # every request from now on, until changed
        proxy.then(reset(), truncated())           # one-shots for the next two requests, then `fault` again
        proxy.down()                               # stop listening: connection refused ...
        proxy.up()                                 # ... and back, on the same port

Faults (functions below): pass-through, a delay past the client's timeout, a body that trickles in, any
HTTP status (429 / 503 with Retry-After), a malformed JSON body, a truncated body, a connection reset or
closed without a response, a Prometheus answer with some series removed, or with every series multiplied
(copies told apart by an extra label).

Each request is answered on its own connection (`Connection: close`) by its own thread; every thread is
joined when the proxy stops, and waits (delays, trickles) end at once when it does. An unreachable upstream
makes the proxy close the client's connection without a response, as a TCP load balancer in front of a
dead server does. Requests go upstream without `Accept-Encoding`, so bodies can be rewritten as JSON.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# Not forwarded in either direction: per-connection headers, and those the proxy sets itself.
_SKIP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "accept-encoding", "content-length", "server", "date",
}  # fmt: skip
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError)


@dataclass(frozen=True)
class Fault:
    """What the proxy does with one request; build one with the functions below."""

    kind: str
    seconds: float = 0.0  # delay: wait before answering; trickle: pause between pieces of the body
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    forward: bool = True  # delay / reset / close: does the upstream get the request anyway?
    fraction: float = 0.5  # truncated: share of the body sent before the connection closes
    piece: int = 1  # trickle: bytes per pause
    factor: int = 1  # multiply: every series this many times
    label: str = "fault_copy"  # multiply: the label telling the copies apart
    keep: Callable[[Mapping[str, str]], bool] | None = field(default=None, compare=False)  # partial
    warning: str | None = None  # partial: a `warnings` entry added to the answer, as Thanos does

    def __str__(self) -> str:
        return self.kind if not self.status else f"{self.kind} {self.status}"


PASS = Fault("pass")


def delay(seconds: float, *, forward: bool = True) -> Fault:
    """Wait `seconds`, then forward and relay the answer (to a client that may have given up by then)."""
    return Fault("delay", seconds=seconds, forward=forward)


def trickle(seconds: float, piece: int = 1) -> Fault:
    """Forward, send the status and headers at once, then the body `piece` bytes every `seconds`: a
    client whose timeout applies per read never times out."""
    return Fault("trickle", seconds=seconds, piece=piece)


def error(status: int, *, retry_after: float | str | None = None, body: bytes | None = None) -> Fault:
    """Answer `status` without asking the upstream; `retry_after` adds a Retry-After header."""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    if retry_after is not None:
        value = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        headers += (("Retry-After", value),)
    if body is None:
        body = json.dumps({"status": "error", "errorType": "unavailable", "error": f"injected {status}"})
        body = body.encode()
    return Fault("status", status=status, headers=headers, body=body)


def malformed_json() -> Fault:
    """HTTP 200, `application/json`, a correct Content-Length, and a body that is not JSON."""
    body = b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"b"},"values":[[1,'
    return Fault("status", status=200, headers=(("Content-Type", "application/json"),), body=body)


def truncated(fraction: float = 0.5) -> Fault:
    """Forward; send the upstream's headers (full Content-Length) and part of its body, then close."""
    return Fault("truncated", fraction=fraction)


def reset(*, forward: bool = False) -> Fault:
    """Read the request (and forward it, if asked), then reset the connection (RST, no response)."""
    return Fault("reset", forward=forward)


def close(*, forward: bool = False) -> Fault:
    """Read the request (and forward it, if asked), then close the connection without a response."""
    return Fault("close", forward=forward)


def partial(keep: Callable[[Mapping[str, str]], bool], *, warning: str | None = None) -> Fault:
    """Forward; of a Prometheus answer's `data.result`, keep only the series whose labels satisfy `keep`."""
    return Fault("partial", keep=keep, warning=warning)


def multiply(factor: int = 10, label: str = "fault_copy") -> Fault:
    """Forward; return every series of a Prometheus answer `factor` times: the original, and copies with
    `label` = 1 … factor-1 (the same values)."""
    return Fault("multiply", factor=factor, label=label)


@dataclass
class Record:
    """One request the proxy saw: when it arrived, what it got, and how that ended."""

    method: str
    path: str
    fault: Fault
    arrived: float  # time.monotonic()
    outcome: str = "open"  # answered <status> | forwarded <status> | reset | closed | upstream down | gone


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 (a free port) in front of `upstream` (an http:// base URL)."""

    def __init__(self, upstream: str, *, upstream_timeout: float = 30.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.upstream_timeout = upstream_timeout
        self.fault: Fault = PASS  # what every request gets when no one-shot is queued
        self.records: list[Record] = []
        self.port = 0
        self._queue: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # wakes every wait, for a prompt stop
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._stopping.clear()
        self._listen()
        return self

    def stop(self) -> None:
        """Stop serving, end every wait, join every thread. Safe to call twice."""
        self._stopping.set()
        self._unlisten()

    def down(self) -> None:
        """Stop listening: connections are refused until `up()`. Requests in progress finish first."""
        self._unlisten()

    def up(self) -> None:
        """Listen again, on the same port."""
        if self._server is None:
            self._listen()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.proxy = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=f"faultproxy-{self.port}"
        )
        self._thread.start()

    def _unlisten(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()  # joins the request threads (block_on_close)
        thread.join()

    # -- programming --------------------------------------------------------------------------------
    def then(self, *faults: Fault) -> None:
        """Queue one-shot faults: the next requests get these, in order, before `fault` applies again."""
        with self._lock:
            self._queue.extend(faults)

    def _take(self, method: str, path: str) -> Record:
        with self._lock:
            fault = self._queue.pop(0) if self._queue else self.fault
            record = Record(method, path, fault, time.monotonic())
            self.records.append(record)
        return record

    def count(self, kind: str | None = None) -> int:
        """Requests seen so far (of one fault kind, if given)."""
        with self._lock:
            return sum(1 for r in self.records if kind is None or r.fault.kind == kind)

    def quiet(self) -> bool:
        """No request is being handled right now (delayed forwards included)."""
        with self._lock:
            return all(r.outcome != "open" for r in self.records)

    def wait(self, seconds: float) -> bool:
        """Sleep, unless the proxy stops first (then False)."""
        return not self._stopping.wait(seconds)

    # -- upstream -----------------------------------------------------------------------------------
    def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """The upstream's (status, headers, body), or None when it cannot be reached or breaks off."""
        conn = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=self.upstream_timeout
        )
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in _SKIP}
            conn.request(method, path, body=body or None, headers=sent)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # joined by server_close: the proxy leaves no thread behind
    block_on_close = True
    allow_reuse_address = True  # up() binds the same port again
    proxy: FaultProxy


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a client that connects and sends nothing cannot hold a thread (and stop) for long
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def _handle(self) -> None:
        proxy = self.server.proxy
        self.close_connection = True
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = proxy._take(self.command, self.path)
        try:
            record.outcome = self._apply(proxy, record.fault, body)
        except _GONE:
            record.outcome = "gone"  # the client hung up first (e.g. it timed out during a delay)
        except Exception as exc:
            record.outcome = f"proxy error: {type(exc).__name__}: {exc}"
            raise

    def _apply(self, proxy: FaultProxy, fault: Fault, body: bytes) -> str:
        kind = fault.kind
        if kind == "status":
            self._respond(fault.status, list(fault.headers), fault.body)
            return f"answered {fault.status}"
        if kind in ("reset", "close"):
            if fault.forward:
                proxy.forward(self.command, self.path, self.headers, body)
            return self._hang_up(rst=kind == "reset")
        if kind == "delay":
            if not proxy.wait(fault.seconds):
                return self._hang_up(rst=False)
            if not fault.forward:
                return self._hang_up(rst=False)
        answer = proxy.forward(self.command, self.path, self.headers, body)
        if answer is None:
            self._hang_up(rst=False)
            return "upstream down"
        status, headers, data = answer
        if kind == "partial":
            data = _rewrite(
                data, lambda result: [s for s in result if fault.keep(s.get("metric", {}))], fault
            )
        elif kind == "multiply":
            data = _rewrite(data, lambda result: _multiplied(result, fault.factor, fault.label), fault)
        elif kind == "truncated":
            self._head(status, headers, len(data))
            self.wfile.write(data[: int(len(data) * fault.fraction)])
            return "truncated"
        elif kind == "trickle":
            self._head(status, headers, len(data))
            for i in range(0, len(data), fault.piece):
                self.wfile.write(data[i : i + fault.piece])
                if not proxy.wait(fault.seconds):
                    return "trickle stopped"
            return f"trickled {status}"
        self._respond(status, headers, data)
        return f"forwarded {status}"

    def _head(self, status: int, headers: list[tuple[str, str]], length: int) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _SKIP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()

    def _respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._head(status, headers, len(body))
        self.wfile.write(body)

    def _hang_up(self, *, rst: bool) -> str:
        if rst:  # SO_LINGER 0: close() sends RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                self.connection.close()
            return "reset"
        return "closed"  # socketserver closes the connection (FIN) once the handler returns


def _rewrite(data: bytes, change: Callable[[list[Any]], list[Any]], fault: Fault) -> bytes:
    """Apply `change` to a Prometheus answer's data.result; anything else passes unchanged."""
    try:
        doc = json.loads(data)
        result = doc["data"]["result"]
    except (ValueError, KeyError, TypeError):
        return data
    if not isinstance(result, list):
        return data
    doc["data"]["result"] = change(result)
    if fault.warning:
        doc["warnings"] = [*doc.get("warnings", []), fault.warning]
    return json.dumps(doc).encode()


def _multiplied(result: list[Any], factor: int, label: str) -> list[Any]:
    out = []
    for series in result:
        out.append(series)
        for k in range(1, factor):
            out.append({**series, "metric": {**series.get("metric", {}), label: str(k)}})
    return out
