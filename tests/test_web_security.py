"""The exporter's own endpoint under --web.config.file: real TLS handshakes and basic auth against the real
server on 127.0.0.1, the file re-read while it runs, and requests bounded so no client can hold it up."""

from __future__ import annotations

import base64
import logging
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

import bcrypt
import pytest
import requests
from prometheus_client import CollectorRegistry

from exporter import webguard
from exporter.collector import AnomalyCollector
from exporter.server import MAX_BODY, MAX_QUERY, MAX_REQUEST_LINE, WebApp, WebServer
from exporter.store import Store
from exporter.webconfig import load_web_config
from exporter.webguard import WebGuard
from tests.tlscerts import Certs, make_certs

ALICE = bcrypt.hashpw(b"alice-pw", bcrypt.gensalt(4)).decode()
BOB = bcrypt.hashpw(b"bob-pw", bcrypt.gensalt(4)).decode()
ENDPOINTS = ["/", "/metrics", "/-/healthy", "/-/ready", "/-/reload"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


class Running:
    def __init__(self, server: WebServer, scheme: str, web: Path | None) -> None:
        self.server, self.web = server, web
        self.url = f"{scheme}://127.0.0.1:{server.port}"

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.server.port), timeout=5)


@pytest.fixture
def serve(tmp_path):
    """Start a WebServer (with the web config text given, if any); every one is stopped afterwards."""
    servers: list[WebServer] = []

    def start(
        web_config: str | None = None, read_timeout: float = 10.0, max_connections: int = 128, **app_kw
    ) -> Running:
        store = Store()
        store.add_rule("r")
        store.update("r", ready=True)
        registry = CollectorRegistry()
        registry.register(AnomalyCollector(store))
        app = WebApp(store, registry, **{"reload": lambda: None, "enable_lifecycle": True, **app_kw})
        guard = web = None
        if web_config is not None:
            web = tmp_path / f"web{len(servers)}.yml"
            web.write_text(web_config)
            guard = WebGuard(str(web), load_web_config(str(web)))
        server = WebServer(
            app, "127.0.0.1", 0, guard=guard, read_timeout=read_timeout, max_connections=max_connections
        )
        server.start()
        servers.append(server)
        return Running(server, "https" if guard is not None and guard.tls else "http", web)

    yield start
    for s in servers:
        s.stop()


def tls_config(certs: Certs, extra: str = "", cert: Path | None = None, key: Path | None = None) -> str:
    cert, key = cert or certs.server_cert, key or certs.server_key
    return f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n" + extra


def peer_cert(port: int, ca: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def pem_to_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


# --- TLS ----------------------------------------------------------------------------------------------------


def test_tls_serves_every_endpoint_and_refuses_plain_http(serve, certs):
    run = serve(tls_config(certs))
    for path in ENDPOINTS[:-1]:
        assert requests.get(run.url + path, verify=certs.ca, timeout=5).status_code == 200, path
    assert requests.post(run.url + "/-/reload", verify=certs.ca, timeout=5).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(run.url.replace("https", "http") + "/metrics", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):  # and the client verifies us: an unknown CA fails
        requests.get(run.url + "/metrics", verify=certs.stranger_cert, timeout=5)


def test_tls_version_bounds_are_enforced(serve, certs):
    run = serve(tls_config(certs, "  min_version: TLS13\n"))
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), run.raw() as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
        pass
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    with run.raw() as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.3"


def test_client_certificate_required(serve, certs):
    extra = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca}\n"
    run = serve(tls_config(certs, extra))
    client = (str(certs.client_cert), str(certs.client_key))
    assert requests.get(run.url + "/metrics", verify=certs.ca, cert=client, timeout=5).status_code == 200
    with pytest.raises(requests.exceptions.RequestException):  # no certificate: the handshake fails
        requests.get(run.url + "/metrics", verify=certs.ca, timeout=5)
    stranger = (str(certs.stranger_cert), str(certs.stranger_key))
    with pytest.raises(requests.exceptions.RequestException):  # from a CA the server doesn't trust
        requests.get(run.url + "/metrics", verify=certs.ca, cert=stranger, timeout=5)


def test_client_certificate_verified_if_given(serve, certs):
    run = serve(
        tls_config(certs, f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {certs.ca}\n")
    )
    assert requests.get(run.url + "/metrics", verify=certs.ca, timeout=5).status_code == 200
    client = (str(certs.client_cert), str(certs.client_key))
    assert requests.get(run.url + "/metrics", verify=certs.ca, cert=client, timeout=5).status_code == 200
    stranger = (str(certs.stranger_cert), str(certs.stranger_key))
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(run.url + "/metrics", verify=certs.ca, cert=stranger, timeout=5)


def test_certificates_are_re_read_for_each_new_connection(serve, certs, tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    run = serve(tls_config(certs, cert=cert, key=key))
    assert peer_cert(run.server.port, certs.ca) == pem_to_der(certs.server_cert)
    shutil.copy(certs.server2_cert, cert)  # rotated in place, as cert-manager or a Secret update does
    shutil.copy(certs.server2_key, key)
    assert peer_cert(run.server.port, certs.ca) == pem_to_der(certs.server2_cert)


# --- basic auth ---------------------------------------------------------------------------------------------


def test_basic_auth_protects_every_endpoint(serve):
    run = serve(f"basic_auth_users:\n  alice: '{ALICE}'\n  bob: '{BOB}'\n")
    for path in ENDPOINTS:
        for auth in (None, ("alice", "wrong"), ("mallory", "alice-pw"), ("alice", "")):
            r = requests.post(run.url + path, auth=auth, timeout=5)
            assert r.status_code == 401, (path, auth)
            assert r.headers["WWW-Authenticate"] == "Basic"
    for path in ENDPOINTS[:-1]:
        assert requests.get(run.url + path, auth=("alice", "alice-pw"), timeout=5).status_code == 200, path
    assert requests.post(run.url + "/-/reload", auth=("bob", "bob-pw"), timeout=5).status_code == 200
    garbage = (
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer x"},
        {"Authorization": "Basic YWxpY2U="},
    )
    for headers in garbage:
        assert requests.get(run.url + "/metrics", headers=headers, timeout=5).status_code == 401


def test_basic_auth_over_tls_with_headers(serve, certs):
    config = tls_config(certs) + f"basic_auth_users: {{alice: '{ALICE}'}}\n"
    run = serve(
        config + "http_server_config:\n  headers: {X-Frame-Options: deny, X-Content-Type-Options: nosniff}\n"
    )
    ok = requests.get(run.url + "/metrics", auth=("alice", "alice-pw"), verify=certs.ca, timeout=5)
    denied = requests.get(run.url + "/metrics", verify=certs.ca, timeout=5)
    assert (ok.status_code, denied.status_code) == (200, 401)
    for r in (ok, denied):
        assert r.headers["X-Frame-Options"] == "deny" and r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.fixture
def checkpw_calls(monkeypatch):
    """Every bcrypt comparison the guard makes: (password, hash)."""
    calls: list[tuple[bytes, bytes]] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append((password, hashed))
        return real(password, hashed)

    monkeypatch.setattr(webguard.bcrypt, "checkpw", spy)
    return calls


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_unknown_user_costs_one_bcrypt_like_a_wrong_password(tmp_path, checkpw_calls):
    """No timing difference by construction: both compare once against a hash of the configured cost."""
    strong = bcrypt.hashpw(b"pw", bcrypt.gensalt(6)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users: {{alice: '{ALICE}', carol: '{strong}'}}\n")
    guard = WebGuard(str(web), load_web_config(str(web)))
    config = guard.config()
    assert not guard.authenticate(config, basic("carol", "wrong"))
    assert not guard.authenticate(config, basic("nobody", "wrong"))
    (_, wrong_hash), (_, decoy_hash) = checkpw_calls
    assert wrong_hash == strong.encode() and decoy_hash != strong.encode()
    assert decoy_hash[:7] == b"$2b$06$", "the decoy has the highest configured cost"
    # and the costs are what the clock sees: the decoy takes about as long as a real hash of that cost
    # (the fastest of 7 tries each, which a busy machine can only slow down, not speed up)
    timings: dict[str, float] = {}
    for user in ("carol", "nobody"):
        for _ in range(7):
            start = time.perf_counter()
            guard.authenticate(config, basic(user, "wrong"))
            timings[user] = min(timings.get(user, 1e9), time.perf_counter() - start)
    assert 0.5 < timings["nobody"] / timings["carol"] < 2.0, timings


def test_successes_are_cached_keyed_safely_and_forgotten_on_change(tmp_path, checkpw_calls):
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users: {{alice: '{ALICE}'}}\n")
    guard = WebGuard(str(web), load_web_config(str(web)))
    assert guard.authenticate(guard.config(), basic("alice", "alice-pw"))
    assert guard.authenticate(guard.config(), basic("alice", "alice-pw"))
    assert len(checkpw_calls) == 1, "the second scrape skips bcrypt"
    assert not guard.authenticate(guard.config(), basic("alice", "wrong"))
    assert not guard.authenticate(guard.config(), basic("alice", "wrong"))
    assert len(checkpw_calls) == 3, "failures are never cached"
    keys = list(guard._cache._expiry)
    assert len(keys) == 1 and len(keys[0]) == 32 and b"alice" not in keys[0], "an HMAC, not the credentials"
    web.write_text(f"basic_auth_users: {{alice: '{BOB}'}}\n")  # alice's password changed
    assert not guard.authenticate(guard.config(), basic("alice", "alice-pw"))
    assert guard.authenticate(guard.config(), basic("alice", "bob-pw"))
    web.write_text(f"basic_auth_users: {{bob: '{BOB}'}}\n")  # alice removed: her cached success is useless
    assert not guard.authenticate(guard.config(), basic("alice", "bob-pw"))


def test_cache_entries_expire(tmp_path, monkeypatch, checkpw_calls):
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users: {{alice: '{ALICE}'}}\n")
    guard = WebGuard(str(web), load_web_config(str(web)))
    now = [1000.0]
    monkeypatch.setattr(webguard.time, "monotonic", lambda: now[0])
    guard.authenticate(guard.config(), basic("alice", "alice-pw"))
    now[0] += webguard.CACHE_TTL + 1
    guard.authenticate(guard.config(), basic("alice", "alice-pw"))
    assert len(checkpw_calls) == 2


def test_password_longer_than_bcrypt_takes_is_refused(tmp_path):
    long_pw = "x" * 80
    web = tmp_path / "web.yml"
    web.write_text(
        f"basic_auth_users: {{alice: '{bcrypt.hashpw(long_pw[:72].encode(), bcrypt.gensalt(4)).decode()}'}}\n"
    )
    guard = WebGuard(str(web), load_web_config(str(web)))
    assert guard.authenticate(guard.config(), basic("alice", long_pw[:72]))
    assert not guard.authenticate(guard.config(), basic("alice", long_pw))


# --- the file, re-read while running ------------------------------------------------------------------------


def test_users_change_without_restart_and_a_broken_file_fails_closed(serve, caplog):
    run = serve(f"basic_auth_users: {{alice: '{ALICE}'}}\n")
    assert run.web is not None
    assert requests.get(run.url + "/metrics", auth=("bob", "bob-pw"), timeout=5).status_code == 401
    run.web.write_text(f"basic_auth_users: {{bob: '{BOB}'}}\n")
    assert requests.get(run.url + "/metrics", auth=("bob", "bob-pw"), timeout=5).status_code == 200
    assert requests.get(run.url + "/metrics", auth=("alice", "alice-pw"), timeout=5).status_code == 401
    run.web.write_text("basic_auth_users: {bob: [oops}\n")
    with caplog.at_level(logging.ERROR, logger="exporter.webguard"):
        for _ in range(3):
            assert requests.get(run.url + "/metrics", auth=("bob", "bob-pw"), timeout=5).status_code == 500
    assert len([r for r in caplog.records if "web config unusable" in r.getMessage()]) == 1, "logged once"
    run.web.write_text(f"basic_auth_users: {{bob: '{BOB}'}}\n")
    assert requests.get(run.url + "/metrics", auth=("bob", "bob-pw"), timeout=5).status_code == 200


def test_tls_cannot_be_switched_off_while_running(serve, certs):
    run = serve(tls_config(certs))
    assert run.web is not None
    run.web.write_text(f"basic_auth_users: {{alice: '{ALICE}'}}\n")
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(run.url + "/metrics", verify=certs.ca, timeout=5)
    run.web.write_text(tls_config(certs))
    assert requests.get(run.url + "/metrics", verify=certs.ca, timeout=5).status_code == 200


# --- bounded requests and slow clients ----------------------------------------------------------------------


def raw_request(run: Running, head: bytes) -> bytes:
    with run.raw() as conn:
        conn.sendall(head)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_query_and_request_line_bounds(serve):
    run = serve()
    assert requests.get(run.url + "/metrics?" + "a" * MAX_QUERY, timeout=5).status_code == 200
    assert requests.get(run.url + "/metrics?" + "a" * (MAX_QUERY + 1), timeout=5).status_code == 414
    assert requests.get(run.url + "/" + "a" * (MAX_REQUEST_LINE + 1), timeout=5).status_code == 414


def test_header_bounds(serve):
    run = serve()
    many = {f"X-H{i}": "v" * 1000 for i in range(70)}  # 70 KB of headers in 70 lines
    assert requests.get(run.url + "/-/healthy", headers=many, timeout=5).status_code == 431
    few = {f"X-H{i}": "v" * 1000 for i in range(50)}
    assert requests.get(run.url + "/-/healthy", headers=few, timeout=5).status_code == 200


def test_body_bounds(serve):
    run = serve()
    assert requests.post(run.url + "/-/reload", data=b"x" * MAX_BODY, timeout=5).status_code == 200
    reply = raw_request(
        run, f"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.0 413 "), reply[:80]
    chunked = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw_request(run, chunked).startswith(b"HTTP/1.0 411 ")
    bad = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"
    assert raw_request(run, bad).startswith(b"HTTP/1.0 400 ")


def closed_by_server(conn: socket.socket, within: float) -> bool:
    conn.settimeout(within)
    try:
        return conn.recv(1024) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_stalled_client_blocks_nobody_and_is_dropped(serve, certs, tls):
    run = serve(tls_config(certs) if tls else None, read_timeout=1.0)
    verify = str(certs.ca) if tls else True
    stalled = run.raw()  # https: never sends its ClientHello; http: half a request line
    try:
        if not tls:
            stalled.sendall(b"GET /metrics HT")
        time.sleep(0.2)
        start = time.monotonic()
        assert requests.get(run.url + "/metrics", verify=verify, timeout=5).status_code == 200
        assert time.monotonic() - start < 0.9, "answered while the stalled connection still waits"
        assert closed_by_server(stalled, within=5), "the server gives up on the silent client"
    finally:
        stalled.close()


def test_connections_beyond_the_cap_wait_and_are_served_when_a_slot_frees(serve):
    run = serve(read_timeout=30.0, max_connections=3)
    before = threading.active_count()
    idle = [run.raw() for _ in range(10)]  # a flood of silent connections
    try:
        time.sleep(0.5)
        assert threading.active_count() - before == 3, "one thread per served connection, no more"
        answer: list[int] = []

        def scrape() -> None:
            answer.append(requests.get(run.url + "/metrics", timeout=20).status_code)

        waiting = threading.Thread(target=scrape)
        waiting.start()
        time.sleep(0.5)
        assert not answer, "the 11th connection waits while 3 are being served"
        for conn in idle:  # the flood goes away: the scrape is accepted and answered
            conn.close()
        waiting.join(10)
        assert answer == [200]
    finally:
        for conn in idle:
            conn.close()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_client_trickling_its_request_is_dropped_at_the_deadline(serve, certs, tls):
    """One byte every 0.3 s never meets a 1 s read timeout; the deadline for the head ends it all the same,
    so a few such clients cannot hold every slot (here the only one) for ever."""
    run = serve(tls_config(certs) if tls else None, read_timeout=1.0, max_connections=1)
    raw = run.raw()
    if tls:
        context = ssl.create_default_context(cafile=str(certs.ca))
        raw = context.wrap_socket(raw, server_hostname="localhost")
    start = time.monotonic()
    dropped = None
    try:
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                raw.sendall(bytes([byte]))
            except OSError:
                dropped = time.monotonic() - start
                break
            time.sleep(0.3)
            if closed_now(raw):
                dropped = time.monotonic() - start
                break
    finally:
        raw.close()
    assert dropped is not None and dropped < 3, "the trickling client kept its connection"
    assert requests.get(run.url + "/metrics", verify=str(certs.ca) if tls else True, timeout=5).ok


def closed_now(conn: socket.socket) -> bool:
    conn.setblocking(False)
    try:
        return conn.recv(1) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True
    finally:
        conn.setblocking(True)
        conn.settimeout(5)


def test_stop_does_not_wait_for_a_slot_that_never_frees(serve):
    run = serve(read_timeout=30.0, max_connections=1)
    idle = [run.raw() for _ in range(3)]  # one served (silent), the others queued behind it
    try:
        time.sleep(0.3)
        start = time.monotonic()
        run.server.stop()
        assert time.monotonic() - start < 2
    finally:
        for conn in idle:
            conn.close()


def test_max_connections_below_one_is_refused():
    with pytest.raises(ValueError, match=r"--web\.max-connections 0"):
        WebServer(WebApp(Store(), CollectorRegistry()), "127.0.0.1", 0, max_connections=0)


def test_stop_closes_open_connections_and_waits_for_their_threads(certs, tmp_path):
    web = tmp_path / "web.yml"
    web.write_text(tls_config(certs))
    server = WebServer(
        WebApp(Store(), CollectorRegistry()), "127.0.0.1", 0, WebGuard(str(web), load_web_config(str(web)))
    )
    server.start()
    before = set(threading.enumerate())
    stalled = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
    time.sleep(0.3)
    assert len(set(threading.enumerate()) - before) == 3
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 2
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]
    for conn in stalled:
        assert closed_by_server(conn, within=2)
        conn.close()
