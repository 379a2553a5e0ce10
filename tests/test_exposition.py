"""/metrics with the per-series gauges rendered at publish time must be what prometheus_client writes.

The reference is make_wsgi_app over a collector that builds the per-series families the way the collector
did before pre-rendering (plain Metric objects, one add_sample per value); both are asked the same requests
(every Accept header that selects a different output, name[] filters, gzip) and must answer byte for byte
the same text. Label values and numbers are also parsed back and compared with what was published, so a
mistake shared by both renderings would still show.
"""

from __future__ import annotations

import gzip
import math
import threading
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.utils import floatToGoString

from exporter.collector import AnomalyCollector
from exporter.exposition import SERIES_GAUGES, SeriesFamily, go_floats, render
from exporter.metrics_endpoint import exposition
from exporter.server import WebApp, WebServer
from exporter.store import RuleSnapshot, Store
from tests.realservers import PrometheusServer, promtool_check_metrics, require_binary

NASTY = [
    'quote " backslash \\ newline \n unicode ☃',
    "\\n is a backslash and an n, not a newline",
    '"',
    "\\",
    "\n",
    "",
    "tab\there",
    "emoji 🦄 and combining é",
    "trailing backslash \\",
    'looks like labels} {x="y"} 1',
    "# HELP anomaly_score fake",
]
FLOATS = [
    0.0, -0.0, 1.5, -2.25, 1 / 3, 1e6, 999999.9999999999, 1234567.0, -1234567.0, 123456789.123, 1e15,
    1e16, 1.5e22, 1.7976931348623157e308, 5e-324, 1e-7, -1e-7, math.inf, -math.inf, math.nan, 42.0,
]  # fmt: skip
PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3 = (  # with UTF-8 name validation, its default
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
ACCEPTS = [
    None,
    "text/plain;version=0.0.4",
    "text/plain; version=1.0.0; escaping=underscores",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    PROMETHEUS_2,
    PROMETHEUS_3,
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    "text/plain;version=1.0.0;escaping=values",
]
QUERIES = [
    "",
    "name[]=anomaly_score",
    "name[]=anomaly_observed&name[]=anomaly_exporter_rule_up&name[]=anomaly_exporter_errors_total",
    "name[]=no_such_metric",
]


def snapshot(labels: list[tuple[tuple[str, str], ...]], values: list[float], timestamp: float = 0.0, **kw):
    n = len(labels)
    base = np.resize(np.array(values, dtype=float), n)
    return RuleSnapshot(
        labels=tuple(labels),
        score=kw.get("score", base),
        expected=np.roll(base, 1),
        lower=np.roll(base, 2),
        upper=np.roll(base, 3),
        timestamp=timestamp,
        value=kw.get("value", np.roll(base, 4)),
    )


def nasty_store() -> Store:
    """Awkward label values and numbers over three rules, in a label order that needs sorting."""
    store = Store(clock=lambda: 1_700_000_000.0)
    labels = [(("rule", "nasty"), ("pod", v), ("a_first", "x")) for v in NASTY]
    labels += [(("rule", "nasty"), ("pod", "dup"), ("pod", "last one wins"))]
    store.add_rule("nasty")
    store.publish("nasty", snapshot(labels, FLOATS))
    many = [(("rule", "plain"), ("instance", f"i{k}"), ("job", "bench")) for k in range(300)]
    rng = np.random.default_rng(1)
    randoms = rng.choice([-1, 1], 300) * 10.0 ** rng.uniform(-320, 308, 300)
    store.add_rule("plain")
    store.publish("plain", snapshot(many, list(randoms), value=None))
    store.add_rule("unknown")  # every value unknown: its series export nothing
    store.publish("unknown", snapshot([(("rule", "unknown"),), ()], [math.nan]))
    store.add_rule("idle")  # never published
    store.update("nasty", up=True, ready=True, last_success=123.5, series=len(labels))
    store.record_error("plain", "fit", "boom")
    store.record_duration("plain", "score", 0.0123)
    return store


def utf8_names_store() -> Store:
    """Label names outside the legacy set: prometheus_client escapes them per scrape, so no splicing."""
    store = Store()
    store.add_rule("utf8")
    store.publish("utf8", snapshot([(("rule", "utf8"), ("my.label", "v"), ("__meta", "m"))], [1.0]))
    store.add_rule("legacy")
    store.publish("legacy", snapshot([(("rule", "legacy"), ("pod", "p"))], [2.0]))
    return store


def dunder_names_store() -> Store:
    """A name in the legacy character set but reserved (`__`): also escaped by prometheus_client."""
    store = Store()
    store.add_rule("dunder")
    store.publish("dunder", snapshot([(("rule", "dunder"), ("__meta", "m"))], [1.0]))
    return store


STORES = {
    "empty": Store,
    "nasty": nasty_store,
    "utf8 names": utf8_names_store,
    "dunder names": dunder_names_store,
}


class ReferenceCollector:
    """The collector as before pre-rendering: per-series families built from the snapshots, sample by
    sample, with prometheus_client formatting them; everything else from AnomalyCollector unchanged."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._collector = AnomalyCollector(store)

    def collect(self) -> Iterator[Metric]:
        snapshots = self._store.snapshots()
        for family in self._collector.collect():
            if not isinstance(family, SeriesFamily):
                yield family
                continue
            attr = next(a for name, a, _ in SERIES_GAUGES if name == family.name)
            plain = Metric(family.name, family.documentation, "gauge")
            for snap in snapshots.values():
                values = getattr(snap, attr)
                if values is None:
                    continue
                for labels, value in zip(snap.labels, values.tolist(), strict=True):
                    if not math.isnan(value):
                        plain.add_sample(family.name, dict(labels), value)
            yield plain


def apps(store: Store, filterable: bool = False):
    """(ours, reference). `filterable`: a registry whose name[] filter sees collectors without describe()
    (the exporter's registry does not: there, `?name[]=` has always answered with no metrics at all)."""
    kw = {"support_collectors_without_names": True} if filterable else {}
    registry, reference = CollectorRegistry(**kw), CollectorRegistry(**kw)
    registry.register(AnomalyCollector(store))
    reference.register(ReferenceCollector(store))
    return WebApp(store, registry), make_wsgi_app(reference)


def call(app, accept: str | None = None, query: str = "", encoding: str | None = None, method: str = "GET"):
    environ = {"PATH_INFO": "/metrics", "REQUEST_METHOD": method, "QUERY_STRING": query}
    if accept is not None:
        environ["HTTP_ACCEPT"] = accept
    if encoding is not None:
        environ["HTTP_ACCEPT_ENCODING"] = encoding
    answer: dict = {}
    body = b"".join(app(environ, lambda status, headers: answer.update(status=status, headers=dict(headers))))
    return answer["status"], answer["headers"], body


def gunzip_strict(body: bytes) -> bytes:
    """One complete gzip member and nothing after it; CRC-32 and length are checked by zlib."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    text = d.decompress(body) + d.flush()
    assert d.eof and d.unused_data == b""
    return text


@pytest.mark.parametrize("store_name", STORES)
@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize(
    ("query", "filterable"), [(q, False) for q in QUERIES[:2]] + [(q, True) for q in QUERIES]
)
def test_same_bytes_as_prometheus_client(store_name, accept, query, filterable):
    app, reference = apps(STORES[store_name](), filterable)
    status, headers, body = call(app, accept, query)
    assert (status, headers) == call(reference, accept, query)[:2]
    assert body == call(reference, accept, query)[2]  # (a mismatch prints a readable diff with -vv)
    for encoding in ("gzip", "deflate, gzip;q=0.5", "GZIP"):
        status, headers, zipped = call(app, accept, query, encoding)
        assert headers == call(reference, accept, query, encoding)[1]
        assert headers["Content-Encoding"] == "gzip"
        assert gunzip_strict(zipped) == body
    assert call(app, accept, query, "identity, br")[2] == body
    if filterable and query == QUERIES[1] and store_name == "nasty" and "dots" not in (accept or ""):
        assert body.startswith(b"# HELP anomaly_score ") and b"\n# HELP" not in body  # it kept one family


@pytest.mark.parametrize(
    ("store_name", "accept", "spliced"),
    [
        ("nasty", None, True),
        ("nasty", PROMETHEUS_2, True),
        ("nasty", PROMETHEUS_3, True),
        ("nasty", "text/plain;version=1.0.0;escaping=values", False),
        ("utf8 names", PROMETHEUS_2, False),
    ],
)
def test_the_prerendered_text_is_what_gets_served(store_name, accept, spliced):
    """Not just the same bytes: without a reason to fall back, no sample is built at scrape time."""
    registry = CollectorRegistry()
    registry.register(AnomalyCollector(STORES[store_name]()))
    encoder, content_type = choose_encoder(accept or "")
    families = [f for f in registry.collect() if isinstance(f, SeriesFamily)]
    pieces = exposition(_Fixed(families), encoder, content_type)
    deflated = [p for p in pieces if p[1] is not None]
    assert len(deflated) == (9 if spliced else 0)  # rule "nasty" 5, "plain" 4 (it has no value)
    assert all(f._samples is None for f in families) == spliced


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def test_other_methods_answer_as_make_wsgi_app():
    app, reference = apps(nasty_store())
    for method in ("OPTIONS", "POST", "HEAD"):
        assert call(app, method=method) == call(reference, method=method)


def test_values_and_labels_parse_back_to_what_was_published():
    store = nasty_store()
    app, _ = apps(store)
    for accept, parse in ((None, parse_text), (PROMETHEUS_2, parse_openmetrics)):
        text = call(app, accept)[2].decode()
        families = {f.name: f for f in parse(text)}
        for name, attr, _ in SERIES_GAUGES:
            got = {tuple(sorted(s.labels.items())): s.value for s in families[name].samples}
            want = {}
            for snap in store.snapshots().values():
                values = getattr(snap, attr)
                for labels, v in zip(snap.labels, [] if values is None else values.tolist(), strict=False):
                    if not math.isnan(v):
                        want[tuple(sorted(dict(labels).items()))] = v
            assert got == want
            assert all(math.copysign(1, got[k]) == math.copysign(1, v) for k, v in want.items())
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1


def test_promtool_accepts_the_text():
    app, _ = apps(nasty_store())
    assert promtool_check_metrics(call(app)[2].decode()) == ""


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
def test_go_floats_is_float_to_go_string(values):
    assert go_floats(np.array(values, dtype=float)) == [floatToGoString(v) for v in values]


def test_go_floats_edges():
    edges = [*FLOATS, np.nextafter(1e6, 0), 9.999999999999999e5, 1e6 + 0.5, 9.999999999999998e15, 1e300]
    assert go_floats(np.array(edges)) == [floatToGoString(v) for v in edges]
    # float32 and integer arrays: the value prometheus_client is handed is the Python float of the element
    for arr in (np.array([0.1, 3e7], dtype=np.float32), np.array([3, 2_000_000])):
        assert go_floats(arr) == [floatToGoString(v) for v in arr.tolist()]


def test_label_text_is_kept_for_series_that_stay_and_dropped_for_those_that_go():
    a, b, c = ((("pod", p), ("rule", "r")) for p in "abc")
    first = render(snapshot([a, b], [1.0, 2.0]))
    second = render(snapshot([b, c], [3.0, 4.0]), first)
    assert second.label_text[b] is first.label_text[b]  # reused, not escaped again
    assert set(second.label_text) == {b, c}
    assert second.text[0] == b'anomaly_score{pod="b",rule="r"} 3.0\nanomaly_score{pod="c",rule="r"} 4.0\n'
    assert gzip.decompress(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + second.deflated[0] + b"\x03\x00"
                           + zlib.crc32(second.text[0]).to_bytes(4, "little")
                           + len(second.text[0]).to_bytes(4, "little")) == second.text[0]  # fmt: skip


def test_a_series_with_a_non_legacy_label_name_is_remembered_across_cycles():
    odd = (("my.label", "v"), ("rule", "r"))
    plain = (("pod", "p"), ("rule", "r"))
    first = render(snapshot([odd, plain], [1.0]))
    assert not first.legacy_names
    assert not render(snapshot([odd, plain], [1.0]), first).legacy_names  # label text from the cache
    assert render(snapshot([plain], [1.0]), first).legacy_names  # gone: splicing again


def test_a_malformed_snapshot_fails_its_publish_not_the_scrape():
    store = Store()
    store.add_rule("r")
    store.publish("r", snapshot([(("rule", "r"),)], [1.0]))
    bad = RuleSnapshot(
        labels=((("rule", "r"),),), score=np.ones(2), expected=np.ones(1), lower=np.ones(1),
        upper=np.ones(1), timestamp=60.0,
    )  # fmt: skip
    store.update("r", up=True)
    with pytest.raises(ValueError, match="anomaly_score"):
        store.publish("r", bad)  # raised to the scoring job, which gives up the cycle
    assert store.snapshots()["r"].timestamp == 0.0
    health = store.health()["r"]  # the pipeline swallows it silently, so the store reports it
    assert not health.up and health.errors == {"score": 1} and "cannot publish" in (health.last_error or "")
    assert b'anomaly_score{rule="r"} 1.0' in call(apps(store)[0])[2]


def test_scrapes_while_rules_publish_see_whole_snapshots():
    """Every scrape shows, for each rule, all series from one snapshot (values = the cycle number)."""
    store = Store()
    series = {r: [(("rule", r), ("pod", f"p{k}")) for k in range(200)] for r in ("a", "b")}
    for r in series:
        store.add_rule(r)
    app, _ = apps(store)
    stop = threading.Event()
    errors: list[BaseException] = []

    def publisher(rule: str) -> None:
        cycle = 0
        while not stop.is_set():
            cycle += 1
            store.publish(rule, snapshot(series[rule][: 100 + cycle % 100], [float(cycle)], float(cycle)))

    def scraper() -> None:
        try:
            for i in range(40):
                accept, encoding = (PROMETHEUS_2, "gzip") if i % 2 else (None, None)
                body = call(app, accept, "", encoding)[2]
                text = (gunzip_strict(body) if encoding else body).decode()
                families = parse_openmetrics(text) if accept else parse_text(text)
                for family in families:
                    if family.name == "anomaly_score":
                        for rule in series:
                            values = {s.value for s in family.samples if s.labels["rule"] == rule}
                            assert len(values) <= 1, values
                            if values:
                                cycle = int(values.pop())
                                count = sum(s.labels["rule"] == rule for s in family.samples)
                                assert count == 100 + cycle % 100
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(r,)) for r in series]
    scrapers = [threading.Thread(target=scraper) for _ in range(2)]
    for t in threads + scrapers:
        t.start()
    for t in scrapers:
        t.join(60)
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors, errors[0]


def test_served_over_http_with_content_length():
    store = nasty_store()
    app, reference = apps(store)
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        for accept in ("*/*", PROMETHEUS_2):
            headers = {"Accept": accept, "Accept-Encoding": "gzip"}
            r = requests.get(url, headers=headers, timeout=5, stream=True)
            raw = r.raw.read(decode_content=False)
            assert r.headers["Content-Encoding"] == "gzip" and int(r.headers["Content-Length"]) == len(raw)
            assert gunzip_strict(raw) == call(reference, accept)[2]
    finally:
        server.stop()


@pytest.mark.integration
def test_a_real_prometheus_reads_the_spliced_text(tmp_path):
    """Prometheus 2.x negotiates OpenMetrics and gzip: the spliced stream must parse there too."""
    require_binary("prometheus")
    store = nasty_store()
    server = WebServer(apps(store)[0], "127.0.0.1", 0)
    server.start()
    try:
        with PrometheusServer(tmp_path / "tsdb", [f"127.0.0.1:{server.port}"]) as prom:
            result = prom.wait_for('anomaly_score{rule="nasty"}', lambda r: len(r) == len(NASTY) + 1)
            got = {r["metric"].get("pod", ""): float(r["value"][1]) for r in result}  # "" = no label
            snap = store.snapshots()["nasty"]
            assert got == {dict(lb)["pod"]: v for lb, v in zip(snap.labels, snap.score.tolist(), strict=True)}
            assert len(prom.query('anomaly_expected{rule="plain"}')) == 300
            assert prom.query('up{job="anomaly-exporter"}')[0]["value"][1] == "1"
    finally:
        server.stop()
