"""Outgoing TLS against a real HTTPS server on 127.0.0.1 (a throwaway CA the system does not trust): the
Prometheus reader and a webhook target verify certificates by default, accept the configured CA, and skip
verification only with an explicit insecure_skip_verify, which logs a warning."""

from __future__ import annotations

import http.server
import json
import logging
import ssl
import threading
from collections.abc import Iterator

import pytest

from exporter.config import PrometheusConfig, ReceiverConfig, TLSConfig
from exporter.notification import Batch, Notification
from exporter.notify import DeliveryError, build_targets
from exporter.reader import PrometheusReader, QueryError
from exporter.secret import Secret
from tests.tlscerts import Certs, make_certs


class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def https_url(certs, monkeypatch) -> Iterator[str]:
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests would use these instead of the default
        monkeypatch.delenv(var, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def query(url: str, tls: TLSConfig) -> None:
    reader = PrometheusReader(PrometheusConfig(url=url, tls=tls, max_retries=0, timeout=5))
    try:
        reader.query_range("up", 1_700_000_000, 1_700_000_060, 60)
    finally:
        reader.close()


def test_reader_verifies_by_default_and_warns_when_told_not_to(https_url, certs, caplog):
    caplog.set_level(logging.WARNING)
    with pytest.raises(QueryError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        query(https_url, TLSConfig())
    query(https_url, TLSConfig(ca_file=str(certs.ca)))
    assert not caplog.records
    with pytest.warns(Warning, match="Unverified HTTPS request"):  # urllib3's own, per request
        query(https_url, TLSConfig(insecure_skip_verify=True))
    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING and "verification is disabled" in warning.getMessage()


def test_webhook_target_verifies_by_default_and_warns_when_told_not_to(https_url, certs, caplog):
    caplog.set_level(logging.WARNING)
    batch = Batch(
        rule="r",
        notifications=(
            Notification(
                labels={"alertname": "A", "rule": "r"},
                annotations={},
                status="firing",
                starts_at=1_700_000_000.0,
                ends_at=None,
                generator_url="http://p/graph",
                value=1.0,
            ),
        ),
        created=1_700_000_000.0,
    )

    def target(tls: TLSConfig):
        (t,) = build_targets(ReceiverConfig(name="hook", type="webhook", urls=(Secret(https_url),), tls=tls))
        return t

    with pytest.raises(DeliveryError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        target(TLSConfig()).send(batch)
    target(TLSConfig(ca_file=str(certs.ca))).send(batch)
    assert not caplog.records
    with pytest.warns(Warning, match="Unverified HTTPS request"):
        target(TLSConfig(insecure_skip_verify=True)).send(batch)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "insecure_skip_verify" in caplog.text
