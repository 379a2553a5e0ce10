"""The fault-injecting proxy itself (tests/faultproxy.py), against a tiny local upstream: each fault does
what it says, from the client's side, and the proxy leaves no thread behind."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

import pytest
import requests

from tests import faultproxy
from tests.faultproxy import FaultProxy

ANSWER = {
    "status": "success",
    "data": {
        "resultType": "matrix",
        "result": [
            {"metric": {"__name__": "m", "i": "0"}, "values": [[60, "1"], [120, "2"]]},
            {"metric": {"__name__": "m", "i": "1"}, "values": [[60, "3"], [120, "4"]]},
        ],
    },
}


class Upstream:
    """Answers every request with ANSWER (and an X-Upstream header); counts the requests it got."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                body = json.dumps(ANSWER).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Upstream", "yes")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.hits = hits
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,))

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def proxied():
    before = threading.active_count()
    with Upstream() as upstream, FaultProxy(upstream.url) as proxy:
        yield upstream, proxy
    assert threading.active_count() == before  # every thread of the proxy and upstream joined


def get(proxy: FaultProxy, timeout: float = 5.0) -> requests.Response:
    return requests.get(f"{proxy.url}/api/v1/query_range?query=m", timeout=timeout)


def test_pass_through_forwards_request_and_answer(proxied):
    upstream, proxy = proxied
    r = get(proxy)
    assert r.status_code == 200 and r.json() == ANSWER and r.headers["X-Upstream"] == "yes"
    assert upstream.hits == ["/api/v1/query_range?query=m"]
    assert [(rec.path, rec.fault.kind, rec.outcome) for rec in proxy.records] == [
        ("/api/v1/query_range?query=m", "pass", "forwarded 200")
    ]


def test_errors_are_answered_without_the_upstream(proxied):
    upstream, proxy = proxied
    proxy.then(faultproxy.error(429, retry_after=2), faultproxy.error(503), faultproxy.malformed_json())
    r = get(proxy)
    assert r.status_code == 429 and r.headers["Retry-After"] == "2" and r.json()["status"] == "error"
    assert get(proxy).status_code == 503
    r = get(proxy)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    assert get(proxy).json() == ANSWER  # one-shots used up: the standing fault (pass) again
    assert len(upstream.hits) == 1


@pytest.mark.parametrize(
    ("fault", "forwarded"),
    [
        (faultproxy.reset(), 0),
        (faultproxy.reset(forward=True), 1),
        (faultproxy.close(), 0),
        (faultproxy.truncated(), 1),
    ],
    ids=["reset", "reset-after-forward", "close", "truncated"],
)
def test_broken_connections(proxied, fault, forwarded):
    upstream, proxy = proxied
    proxy.fault = fault
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        get(proxy)
    assert len(upstream.hits) == forwarded


def test_delay_outlasts_the_client_timeout_then_reaches_the_upstream(proxied):
    upstream, proxy = proxied
    proxy.fault = faultproxy.delay(0.5)
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        get(proxy, timeout=0.1)
    assert time.monotonic() - started < 0.4
    assert not upstream.hits
    time.sleep(0.6)
    assert upstream.hits  # the slow server did get it, after the client gave up


def test_trickle_defeats_a_per_read_timeout(proxied):
    _, proxy = proxied
    proxy.fault = faultproxy.trickle(0.02, piece=40)
    started = time.monotonic()
    r = get(proxy, timeout=0.1)  # no single read waits 0.1 s, so requests never times out
    assert r.json() == ANSWER
    assert time.monotonic() - started > 0.1


def test_partial_and_multiplied_answers(proxied):
    _, proxy = proxied
    proxy.then(
        faultproxy.partial(lambda m: m["i"] != "1", warning="store down"), faultproxy.multiply(3, "copy")
    )
    body = get(proxy).json()
    assert [s["metric"]["i"] for s in body["data"]["result"]] == ["0"]
    assert body["warnings"] == ["store down"]
    result = get(proxy).json()["data"]["result"]
    assert [(s["metric"]["i"], s["metric"].get("copy")) for s in result] == [
        ("0", None), ("0", "1"), ("0", "2"), ("1", None), ("1", "1"), ("1", "2")
    ]  # fmt: skip
    assert all(s["values"] == ANSWER["data"]["result"][int(s["metric"]["i"])]["values"] for s in result)


def test_down_refuses_connections_and_up_listens_again_on_the_same_port(proxied):
    _, proxy = proxied
    port = proxy.port
    proxy.down()
    with pytest.raises(requests.ConnectionError, match="refused"):
        get(proxy)
    proxy.up()
    assert proxy.port == port and get(proxy).status_code == 200


def test_an_unreachable_upstream_closes_the_connection(proxied):
    upstream, proxy = proxied
    upstream.__exit__()
    with pytest.raises(requests.ConnectionError):
        get(proxy)
    assert proxy.records[-1].outcome == "upstream down"


def test_stop_ends_a_pending_delay_at_once():
    with Upstream() as upstream:
        proxy = FaultProxy(upstream.url).start()
        proxy.fault = faultproxy.delay(30)

        def client() -> None:
            with pytest.raises(requests.RequestException):
                get(proxy, 30)

        t = threading.Thread(target=client)
        t.start()
        time.sleep(0.2)
        started = time.monotonic()
        proxy.stop()
        t.join(5)
        assert time.monotonic() - started < 2 and not t.is_alive()
        assert not upstream.hits
