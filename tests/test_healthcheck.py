"""`anomaly-exporter healthcheck` (the image's HEALTHCHECK) follows the port, TLS and basic auth in use."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import bcrypt
import pytest
from prometheus_client import CollectorRegistry

from exporter.healthcheck import Target, check
from exporter.server import WebApp, WebServer
from exporter.store import Store
from exporter.webconfig import load_web_config
from exporter.webguard import WebGuard
from tests.realservers import free_port, wait_until
from tests.tlscerts import Certs, make_certs

ROOT = Path(__file__).resolve().parent.parent
HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls(certs: Certs, extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: {certs.server_cert}\n  key_file: {certs.server_key}\n{extra}"


AUTH = f"basic_auth_users:\n  alice: {HASH}\n"


@pytest.fixture
def serving(tmp_path):
    """Serve a WebApp with the web config text given; returns the Target the healthcheck should use."""
    servers: list[WebServer] = []

    def start(web_config: str | None) -> Target:
        guard, path = None, ""
        if web_config is not None:
            web = tmp_path / f"web{len(servers)}.yml"
            web.write_text(web_config)
            path = str(web)
            guard = WebGuard(path, load_web_config(path))
        server = WebServer(WebApp(Store(), CollectorRegistry()), "127.0.0.1", 0, guard=guard)
        server.start()
        servers.append(server)
        return Target("127.0.0.1", server.port, path)

    yield start
    for s in servers:
        s.stop()


@pytest.mark.parametrize(
    "config",
    ["plain", "tls", "basic auth", "tls + basic auth", "client certificates required"],
)
def test_a_serving_exporter_is_healthy_whatever_its_web_config(serving, certs, config):
    text = {
        "plain": None,
        "tls": tls(certs),
        "basic auth": AUTH,
        "tls + basic auth": tls(certs) + AUTH,
        "client certificates required": tls(
            certs, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca}\n"
        ),
    }[config]
    healthy, detail = check(serving(text), timeout=4)
    assert healthy, detail
    assert ("https://" in detail) == ("tls" in config or "client" in config)


def test_nothing_listening_is_unhealthy():
    healthy, detail = check(Target("127.0.0.1", free_port()), timeout=2)
    assert not healthy and "ConnectionRefused" in detail


def test_plain_http_against_a_tls_server_is_unhealthy(serving, certs):
    target = serving(tls(certs))
    healthy, detail = check(Target(target.host, target.port), timeout=2)  # the probe forgot the web config
    assert not healthy, detail


def test_a_server_that_answers_an_error_or_nothing_is_unhealthy():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answers = [b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", b""]

    def serve() -> None:
        for answer in answers:
            conn, _ = listener.accept()
            conn.recv(4096)
            if answer:
                conn.sendall(answer)
            else:  # a hung process: accepts, never answers
                threading.Event().wait(3)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        healthy, detail = check(Target("127.0.0.1", port), timeout=2)
        assert not healthy and "answered 503" in detail
        healthy, detail = check(Target("127.0.0.1", port), timeout=1)
        assert not healthy and "timed out" in detail.lower()
    finally:
        thread.join(5)
        listener.close()


def test_end_to_end_the_check_reads_the_running_exporters_flags(tmp_path, certs):
    """As in the container: `anomaly-exporter healthcheck` with no flags finds a moved port, TLS and basic
    auth from the exporter's command line (here --pid of a demo exporter; pid 1 in a container)."""
    web = tmp_path / "web.yml"
    web.write_text(tls(certs) + AUTH)
    port = free_port()
    log = open(tmp_path / "log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", f"--web.listen-address=127.0.0.1:{port}",
         "--web.config.file", str(web)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip

    def healthcheck(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "exporter", "healthcheck", *flags],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    try:
        wait_until(lambda: healthcheck("--pid", str(proc.pid)).returncode == 0, timeout=30, what="healthy")
        result = healthcheck("--pid", str(proc.pid))
        assert result.returncode == 0 and f"https://127.0.0.1:{port}/-/healthy answered 401" in result.stdout
        # flags given win over the process' (here: the wrong scheme, so unhealthy)
        wrong = healthcheck("--pid", str(proc.pid), "--web.config.file", "")
        assert wrong.returncode == 1, wrong.stdout
        # a pid that is not an exporter (pytest here): the defaults, plain HTTP on port 9866
        other = healthcheck("--pid", str(os.getpid()))
        assert "http://127.0.0.1:9866/-/healthy" in other.stdout + other.stderr
    finally:
        proc.kill()
        proc.wait(10)
        log.close()
    gone = healthcheck("--pid", str(proc.pid), f"--web.listen-address=127.0.0.1:{port}")
    assert gone.returncode == 1 and "unhealthy" in gone.stderr


def test_a_relative_web_config_is_found_from_the_exporters_directory(tmp_path, certs):
    """`--web.config.file web.yml` means the file in the exporter's working directory, not the check's."""
    (tmp_path / "web.yml").write_text(tls(certs))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", f"--web.listen-address=127.0.0.1:{port}",
         "--web.config.file", "web.yml"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        check = [sys.executable, "-m", "exporter", "healthcheck", "--pid", str(proc.pid)]

        def healthy() -> bool:
            return subprocess.run(check, cwd=ROOT, capture_output=True, timeout=30).returncode == 0

        wait_until(healthy, timeout=30, what="healthy over HTTPS")
    finally:
        proc.kill()
        proc.wait(10)


def test_the_check_is_cheap_it_never_loads_the_numerical_stack():
    """It runs every 30 s inside the container's limits: ~25 MB and 0.1 s, not the exporter's ~170 MB."""
    code = (
        "import sys\n"
        "from exporter.cli import main\n"
        f"main(['healthcheck', '--web.listen-address=127.0.0.1:{free_port()}', '--timeout=1'])\n"
        "heavy = sorted(m for m in ('numpy', 'pandas', 'sklearn', 'apscheduler') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "unhealthy" in result.stderr  # it did check (nothing listens there)


def test_a_pid_that_runs_another_subcommand_falls_back_to_the_defaults(tmp_path):
    """--pid of a process running `anomaly-exporter healthcheck` (or check): nothing it says is a server."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "-m", "exporter", "healthcheck", "--pid", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        result = subprocess.run(
            [sys.executable, "-m", "exporter", "healthcheck", "--pid", str(proc.pid), "--timeout=1"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr
        assert "http://127.0.0.1:9866/-/healthy" in result.stdout + result.stderr
    finally:
        proc.kill()
        proc.wait(10)


def test_an_empty_argument_on_the_exporters_command_line_is_kept():
    """`--web.config.file ""` is two arguments; dropping the empty one moved the next flag into its place."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--web.config.file", "", "--web.listen-address",
         f"127.0.0.1:{port}"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        check = [sys.executable, "-m", "exporter", "healthcheck", "--pid", str(proc.pid)]

        def healthy() -> bool:
            return subprocess.run(check, cwd=ROOT, capture_output=True, timeout=30).returncode == 0

        wait_until(healthy, timeout=30, what=f"healthy on port {port}")
    finally:
        proc.kill()
        proc.wait(10)
