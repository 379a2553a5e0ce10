"""Secrets never reach the landing page or /-/ready: a Prometheus that echoes every credential it was sent
back in its error message, against the real exporter process."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.realservers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-3f9a1c7e"
PASSWORD = "pw-77d2b0e4"


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers every query with HTTP 400 bad_data quoting the Authorization header, decoded too."""

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        decoded = ""
        if auth.startswith("Basic "):
            decoded = base64.b64decode(auth[6:]).decode()
        body = json.dumps(
            {
                "status": "error",
                "errorType": "bad_data",
                "error": f"rejected {auth!r} (user:pass {decoded!r})",
            }
        ).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echo_prometheus() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize("auth", ["bearer", "basic"])
def test_credentials_echoed_by_prometheus_are_redacted_on_the_pages(tmp_path, echo_prometheus, auth):
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "password").write_text(PASSWORD)
    credentials = (
        "bearer_token_file: token"
        if auth == "bearer"
        else "basic_auth: {username: u, password_file: password}"
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"prometheus: {{url: '{echo_prometheus}', max_retries: 0, timeout: 2s, {credentials}}}\n"
        "rules:\n  - {name: r, query: up}\n"
    )
    port = free_port()
    log = open(tmp_path / "log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config.file", str(rules), "--web.listen-address",
         f"127.0.0.1:{port}"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def landing_with_error() -> str:
            try:
                page = requests.get(url + "/", timeout=2).text
            except requests.ConnectionError:
                return ""
            return page if "rejected" in page else ""

        page = wait_until(landing_with_error, timeout=60, what="the rule's error on the landing page")
        ready = requests.get(url + "/-/ready", timeout=5).text
        metrics = requests.get(url + "/metrics", timeout=5).text
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    secret = TOKEN if auth == "bearer" else PASSWORD
    encoded = base64.b64encode(f"u:{PASSWORD}".encode()).decode()
    logs = (tmp_path / "log").read_text()
    for text in (page, ready, metrics, logs):
        assert secret not in text and encoded not in text
    assert "&lt;secret&gt;" in page, page
