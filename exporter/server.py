"""HTTP endpoints: /metrics, /-/healthy, /-/ready, /-/reload (opt-in) and a small landing page."""

from __future__ import annotations

import html
import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry

from exporter import __version__
from exporter.metrics_endpoint import MetricsEndpoint
from exporter.sharding import Shard
from exporter.store import Store

StartResponse = Callable[..., Any]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServerV6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # access logs would drown the exporter's own logs
        pass


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
    """Serves a WebApp on a background thread. Port 0 picks a free port (see `.port`)."""

    def __init__(self, app: WebApp, host: str, port: int) -> None:
        server_class = _ThreadingWSGIServerV6 if ":" in host else _ThreadingWSGIServer
        self._httpd = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="web", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def parse_listen_address(address: str) -> tuple[str, int]:
    """`host:port` or `:port` (all interfaces), as Prometheus' --web.listen-address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid --web.listen-address {address!r}: expected host:port, e.g. :9465")
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)
