"""HTTP endpoints served by the exporter."""

import pytest
import requests
from prometheus_client import CollectorRegistry

from exporter.collector import AnomalyCollector
from exporter.flags import parse_listen_address
from exporter.server import WebApp, WebServer
from exporter.store import Store


@pytest.fixture
def serve():
    servers = []

    def start(store, **kw):
        registry = CollectorRegistry()
        registry.register(AnomalyCollector(store))
        server = WebServer(WebApp(store, registry, **kw), "127.0.0.1", 0)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for s in servers:
        s.stop()


def test_health_ready_metrics_and_landing(serve):
    store = Store()
    store.add_rule("slow")
    store.add_rule("<b>x</b>")
    url = serve(store)
    assert requests.get(f"{url}/-/healthy", timeout=5).status_code == 200
    r = requests.get(f"{url}/-/ready", timeout=5)
    assert r.status_code == 503 and "slow" in r.text
    store.update("slow", ready=True)
    store.update("<b>x</b>", ready=True, last_error="query: <script>")
    assert requests.get(f"{url}/-/ready", timeout=5).status_code == 200
    metrics = requests.get(f"{url}/metrics", timeout=5)
    assert metrics.status_code == 200 and "anomaly_exporter_rule_ready" in metrics.text
    page = requests.get(f"{url}/", timeout=5).text
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<script>" not in page and "&lt;script&gt;" in page
    assert requests.get(f"{url}/nope", timeout=5).status_code == 404


def test_reload_needs_lifecycle_flag_and_post(serve):
    calls = []
    url = serve(Store(), reload=lambda: calls.append(1))
    assert requests.post(f"{url}/-/reload", timeout=5).status_code == 403
    url = serve(Store(), reload=lambda: calls.append(1), enable_lifecycle=True)
    assert requests.get(f"{url}/-/reload", timeout=5).status_code == 405
    assert requests.post(f"{url}/-/reload", timeout=5).status_code == 200
    assert calls == [1]


def test_reload_failure_is_reported(serve):
    url = serve(Store(), reload=lambda: "rules[0].query: required", enable_lifecycle=True)
    r = requests.post(f"{url}/-/reload", timeout=5)
    assert r.status_code == 500 and "rules[0].query: required" in r.text


@pytest.mark.parametrize(
    ("address", "expected"),
    [(":9866", ("0.0.0.0", 9866)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:80", ("::1", 80))],
)
def test_listen_address(address, expected):
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9866", "host:", "host:99999", "a:b"])
def test_bad_listen_address_is_named(address):
    with pytest.raises(ValueError, match="listen-address"):
        parse_listen_address(address)
