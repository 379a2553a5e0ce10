"""HTTP endpoints: /metrics, /-/healthy, /-/ready, /-/reload (opt-in) and a small landing page."""

from __future__ import annotations

import contextlib
import html
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry

from exporter import __version__
from exporter.flags import DEFAULT_MAX_CONNECTIONS
from exporter.metrics_endpoint import MetricsEndpoint
from exporter.sharding import Shard
from exporter.store import Store
from exporter.webconfig import WebConfigError
from exporter.webguard import WebGuard

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# Request limits. Nothing we serve needs more than a short path, a `name[]=` filter or two and an empty body.
MAX_REQUEST_LINE = 16 * 1024  # method, path, query and version: 414 beyond (the server's own check)
MAX_QUERY = 8 * 1024  # the query string alone: 414 beyond
MAX_HEADER_BYTES = 64 * 1024  # every header line together: 431 beyond (and at most 100 lines, http.client)
MAX_BODY = 64 * 1024  # Content-Length: 413 beyond; bodies are read and ignored
READ_TIMEOUT = 10.0  # seconds a connection may stay silent in the TLS handshake or the request head
WRITE_TIMEOUT = 60.0  # seconds to hand a response (several MB of /metrics) to a slow reader
STOP_GRACE = 5.0  # seconds stop() waits for connection threads after closing their sockets
MAX_CONNECTIONS = DEFAULT_MAX_CONNECTIONS  # open connections at once; more wait in the listen backlog


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per connection (a stalled client holds only its own); TLS handshakes happen there too,
    never in the accept loop. Connections are tracked so stop() can close them and wait for their threads.

    At most `max_connections` are served at once: the accept loop then waits for one to end, and new clients
    wait in the kernel's listen backlog (as behind Prometheus' --web.max-connections), so a flood of idle
    connections costs a bounded number of threads. Each connection has deadlines, not only per-read timeouts
    (a client trickling a byte every few seconds would meet no read timeout): `read_timeout` for the TLS
    handshake and the request head, then WRITE_TIMEOUT for the answer. The accept loop shuts down the socket
    of a connection past its deadline (`_reap`, every half second)."""

    daemon_threads = True
    block_on_close = False  # stop() joins, with a bound
    guard: WebGuard | None = None
    read_timeout = READ_TIMEOUT
    max_connections = MAX_CONNECTIONS
    request_queue_size = 128  # the listen backlog

    def server_activate(self) -> None:
        self.connections: dict[threading.Thread, socket.socket] = {}
        self.deadlines: dict[threading.Thread, float] = {}  # monotonic time; guarded by connections_lock
        self.connections_lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(self.max_connections)
        self.closing = threading.Event()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        # on the accept loop: wait for a free slot, but give up when stop() has begun (it waits for this loop)
        while not self.slots.acquire(timeout=0.1):
            self._reap()  # the slots are all taken: free those past their deadline
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)  # starts process_request_thread
        except BaseException:
            self.slots.release()
            raise

    def service_actions(self) -> None:  # serve_forever calls this every poll (0.5 s)
        self._reap()

    def set_deadline(self, seconds: float) -> None:
        """From now on, the calling connection thread's socket is shut down `seconds` from now."""
        with self.connections_lock:
            self.deadlines[threading.current_thread()] = time.monotonic() + seconds

    def _reap(self) -> None:
        now = time.monotonic()
        with self.connections_lock:
            late = [t for t, deadline in self.deadlines.items() if deadline < now]
            socks = [self.connections[t] for t in late if t in self.connections]
            for t in late:
                del self.deadlines[t]
        for sock in socks:
            with contextlib.suppress(OSError):
                _shutdown(sock)  # its thread's read or write fails at once and it ends

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self._serve_connection(request, client_address)
        finally:
            self.slots.release()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        me = threading.current_thread()
        with self.connections_lock:
            self.connections[me] = request
            self.deadlines[me] = time.monotonic() + self.read_timeout  # handshake and request head
        try:
            request.settimeout(self.read_timeout)
            if self.guard is not None and self.guard.tls:
                try:
                    context = self.guard.ssl_context()
                    request = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                    with self.connections_lock:
                        self.connections[me] = request  # so that stop() can interrupt the handshake
                    request.do_handshake()
                except (OSError, WebConfigError) as exc:  # ssl.SSLError is an OSError
                    log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self.connections_lock:
                self.connections.pop(me, None)
                self.deadlines.pop(me, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished or stalled is routine: debug log, not a traceback on stderr."""
        log.debug("connection from %s failed", client_address[0], exc_info=True)


class _ThreadingWSGIServerV6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _Handler(WSGIRequestHandler):
    """wsgiref's handler with bounded request lines and headers, and timeouts on the connection."""

    def log_message(self, format: str, *args: Any) -> None:  # access logs would drown the exporter's own logs
        pass

    def get_environ(self) -> dict[str, Any]:
        env = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            env["HTTPS"] = "on"  # wsgi.url_scheme https
        return env

    def handle(self) -> None:
        try:
            self._handle()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("connection from %s: %s", self.client_address[0], exc)

    def _handle(self) -> None:
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if not self.raw_requestline:
            return
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414, f"Request line longer than {MAX_REQUEST_LINE} bytes")
            return
        rfile, self.rfile = self.rfile, _HeadLimit(self.rfile, MAX_HEADER_BYTES)  # type: ignore[assignment]
        try:
            parsed = self.parse_request()  # sends 431 when _HeadLimit raises
        finally:
            self.rfile = rfile
        if not parsed:
            return
        self.connection.settimeout(WRITE_TIMEOUT)
        self.server.set_deadline(WRITE_TIMEOUT)  # type: ignore[attr-defined]  # the whole answer, not each send
        stdin, stdout = self.rfile, self.wfile
        handler = ServerHandler(stdin, stdout, self.get_stderr(), self.get_environ(), multithread=False)  # type: ignore[arg-type]
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref's back pointer for logging
        handler.run(self.server.get_app())  # type: ignore[attr-defined]


class _HeadLimit:
    """Reads header lines from `rfile` until `limit` bytes in all, then raises what http.client raises for
    one over-long line, which parse_request answers with 431."""

    def __init__(self, rfile: Any, limit: int) -> None:
        self._rfile, self._left = rfile, limit

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self._rfile.readline(self._left + 1 if size < 0 else min(size, self._left + 1))
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong(f"headers longer than {MAX_HEADER_BYTES} bytes")
        return line


def bounded(app: WSGIApp) -> WSGIApp:
    """`app` behind the query and body limits: 414, 411 (chunked bodies), 400, 413; a body within the
    limit is read (and dropped) here, so the client never meets a reset from unread data."""

    def check(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if len(environ.get("QUERY_STRING", "")) > MAX_QUERY:
            return _text(start_response, "414 URI Too Long", f"Query string longer than {MAX_QUERY} bytes.\n")
        if environ.get("HTTP_TRANSFER_ENCODING"):
            return _text(start_response, "411 Length Required", "Chunked request bodies are not accepted.\n")
        length = environ.get("CONTENT_LENGTH") or "0"
        if not length.isdigit():
            return _text(start_response, "400 Bad Request", "Invalid Content-Length.\n")
        if int(length) > MAX_BODY:
            return _text(start_response, "413 Content Too Large", f"Body longer than {MAX_BODY} bytes.\n")
        if int(length):
            environ["wsgi.input"].read(int(length))
        return app(environ, start_response)

    return check


class WebApp:
    """WSGI app. `reload` returns None on success or the error text; reachable only with lifecycle on."""

    def __init__(
        self,
        store: Store,
        registry: CollectorRegistry,
        reload: Callable[[], str | None] | None = None,
        enable_lifecycle: bool = False,
        shard: Shard | None = None,
    ) -> None:
        self._store = store
        self._shard = shard
        self._metrics = MetricsEndpoint(registry)  # the per-series gauges as rendered at publish time
        self._reload = reload
        self._lifecycle = enable_lifecycle

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/-/healthy":
            return _text(start_response, "200 OK", "Healthy.\n")
        if path == "/-/ready":
            return self._ready(start_response)
        if path == "/-/reload":
            return self._do_reload(method, start_response)
        if path == "/":
            return self._landing(start_response)
        return _text(start_response, "404 Not Found", "Not found.\n")

    def _ready(self, start_response: StartResponse) -> Iterable[bytes]:
        health = self._store.health()
        waiting = sorted(name for name, h in health.items() if not h.ready)
        if waiting:
            return _text(
                start_response,
                "503 Service Unavailable",
                "Not ready; waiting for first fit of: " + ", ".join(waiting) + "\n",
            )
        return _text(start_response, "200 OK", "Ready.\n")

    def _do_reload(self, method: str, start_response: StartResponse) -> Iterable[bytes]:
        if not self._lifecycle or self._reload is None:
            return _text(
                start_response, "403 Forbidden", "Lifecycle API is not enabled (--web.enable-lifecycle).\n"
            )
        if method not in ("POST", "PUT"):
            return _text(start_response, "405 Method Not Allowed", "Only POST or PUT requests allowed.\n")
        error = self._reload()
        if error:
            return _text(start_response, "500 Internal Server Error", f"failed to reload config: {error}\n")
        return _text(start_response, "200 OK", "Reloaded.\n")

    def _landing(self, start_response: StartResponse) -> Iterable[bytes]:
        now = time.time()
        rows = []
        for name, h in sorted(self._store.health().items()):
            status = "up" if h.up else ("starting" if not h.ready else "down")
            last_fit = f"{now - h.last_fit:.0f}s ago" if h.last_fit else "never"
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(c))}</td>"
                    for c in (name, status, h.series, h.dropped, last_fit, h.last_error or "")
                )
                + "</tr>"
            )
        reload = self._store.reload_status()
        reload_note = (
            ""
            if reload.successful
            else f"<p><b>Last reload failed:</b> {html.escape(reload.last_error or '')}</p>"
        )
        shard = self._shard
        shard_note = (
            f" Shard {shard.index} of {shard.count} (0-based): this replica scores only its share of series."
            if shard is not None and shard.count > 1
            else ""
        )
        body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Anomaly Exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style></head>
<body><h1>Prometheus Anomaly Exporter</h1><p>Version {html.escape(__version__)}.{shard_note}
<a href="/metrics">Metrics</a> · <a href="/-/ready">Ready</a> · <a href="/-/healthy">Healthy</a></p>
{reload_note}
<table><tr><th>Rule</th><th>Status</th><th>Series</th><th>Dropped</th><th>Last fit</th>
<th>Last error</th></tr>
{"".join(rows)}</table></body></html>
"""
        data = body.encode()
        start_response(
            "200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data)))]
        )
        return [data]


def _text(start_response: StartResponse, status: str, text: str) -> Iterable[bytes]:
    data = text.encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]


class WebServer:
    """Serves a WebApp on a background thread. Port 0 picks a free port (see `.port`).

    With a `guard` (--web.config.file), TLS, basic auth and headers as its file says; every request is bounded
    (see the MAX_* limits) whether or not there is one.
    """

    def __init__(
        self,
        app: WSGIApp,
        host: str,
        port: int,
        guard: WebGuard | None = None,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"invalid --web.max-connections {max_connections}: must be at least 1")
        server_class = _ThreadingWSGIServerV6 if ":" in host else _ThreadingWSGIServer
        self._httpd = server_class((host, port), _Handler, bind_and_activate=False)
        self._httpd.max_connections = max_connections  # read by server_activate
        try:
            self._httpd.server_bind()
            self._httpd.server_activate()
        except BaseException:
            self._httpd.server_close()
            raise
        self._httpd.guard = guard
        self._httpd.read_timeout = read_timeout
        self._httpd.set_app(bounded(guard.wrap(app) if guard is not None else app))
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="web", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close open connections, and wait (STOP_GRACE at most) for their threads."""
        self._httpd.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._httpd.connections_lock:
            open_now = dict(self._httpd.connections)
        for conn in open_now.values():
            with contextlib.suppress(OSError):
                _shutdown(conn)
        deadline = time.monotonic() + STOP_GRACE
        for thread in open_now:
            thread.join(max(0.0, deadline - time.monotonic()))


def _shutdown(sock: socket.socket) -> None:
    """Shut a connection down from another thread than the one using it. For TLS, the plain socket's
    shutdown: ssl.SSLSocket.shutdown() first drops its TLS state, and a send racing it on the connection's
    thread would then write the answer unencrypted."""
    socket.socket.shutdown(sock, socket.SHUT_RDWR)
