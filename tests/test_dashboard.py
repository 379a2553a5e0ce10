"""The Grafana dashboard: Grafana's dashboard format, every PromQL expression runs in a real Prometheus
scraping the exporter's real /metrics (and returns data there), and it names only metrics the exporter
exports.

The Prometheus also loads prometheus/anomaly-exporter-rules.yaml, so the "firing alerts" panel is checked
against an alert of those rules that fires at once (results made stale on purpose).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import AnomalyCollector
from exporter.store import RuleSnapshot, Store
from tests.realservers import PrometheusServer

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "anomaly-exporter.json"
DASHBOARD_CHART_COPY = ROOT / "helm" / "anomaly-exporter" / "files" / "anomaly-exporter.json"
RULES_FILE = ROOT / "prometheus" / "anomaly-exporter-rules.yaml"
PROMETHEUS_OWN = frozenset({"ALERTS", "up"})  # series Prometheus writes itself, not the exporter
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RULE = "http_rate"

# --------------------------------------------------------------------------------------------------
# Helpers shared with test_prometheus_rules.py: what the exporter exports, what an expression names.


class FakeAlerting:
    """The exporter's alerting as the collector sees it: one rule's alert counts, one delivery target."""

    def __init__(self, now: float) -> None:
        self.now = now

    def counts(self) -> dict[str, tuple[int, int]]:
        return {RULE: (1, 1)}

    def delivery_stats(self) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(
                target="oncall[0]",
                receiver="oncall",
                kind="alertmanager",
                sent=3,
                failed=1,
                dropped=1,
                queue_length=2,
                last_success=self.now,
            )
        ]


def example_store(now: float) -> Store:
    """One rule with an anomalous and a normal series, full health, results an hour old (stale)."""
    store = Store(clock=lambda: now)
    store.add_rule(RULE)
    labels = tuple(
        (("rule", RULE), ("metric_name", "http_requests_total"), ("service", svc), ("instance", f"{svc}:80"))
        for svc in ("api", "web")
    )
    store.publish(
        RULE,
        RuleSnapshot(
            labels=labels,
            score=np.array([2.5, 0.3]),
            expected=np.array([1000.0, 200.0]),
            lower=np.array([800.0, 150.0]),
            upper=np.array([1200.0, 250.0]),
            timestamp=now - 60,
            value=np.array([1500.0, 210.0]),
        ),
    )
    store.record_error(RULE, "query", "connection refused")
    for stage, seconds in {"query": 0.2, "fit": 1.5, "score": 0.05, "alert": 0.01}.items():
        store.record_duration(RULE, stage, seconds)
    store.update(RULE, up=True, ready=True, last_success=now - 3600, last_fit=now - 3600, series=2, dropped=1)
    return store


def exporter_registry(now: float | None = None) -> CollectorRegistry:
    """A registry with the exporter's collector over example_store and FakeAlerting."""
    now = time.time() if now is None else now
    registry = CollectorRegistry()
    registry.register(AnomalyCollector(example_store(now), FakeAlerting(now)))
    return registry


def exported_metric_names() -> frozenset[str]:
    """Sample names on a /metrics scrape of the collector (counters as X_total)."""
    text = generate_latest(exporter_registry()).decode()
    return frozenset(s.name for family in text_string_to_metric_families(text) for s in family.samples)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"})


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside strings, matchers, ranges and grouping
    clauses that are neither functions nor keywords (nor units of numbers and durations like 1e3, 5m)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        before = text[m.start() - 1] if m.start() else " "
        if before.isalnum() or before in "._":
            continue
        if text[m.end() :].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (rule) (rate(a_total{x="y{z}"}[5m])) > 1e3', {"a_total"}),
        ("time() - b offset 5m", {"b"}),
        ("c and on(rule) group_left(job) d >= bool 1", {"c", "d"}),
        ('topk(10, e{rule=~"$rule"}) unless f', {"e", "f"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


# --------------------------------------------------------------------------------------------------
# The dashboard


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target."""
    return [
        (f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"])
        for p in all_panels(dashboard["panels"])
        for t in p.get("targets", [])
    ]


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


def variable_expr(query: str) -> str:
    """The PromQL inside a Grafana Prometheus variable query (label_values' metric selector)."""
    if m := re.fullmatch(r"\s*label_values\((.+),\s*[a-zA-Z_]\w*\s*\)\s*", query, re.DOTALL):
        return m[1]
    if m := re.fullmatch(r"\s*query_result\((.+)\)\s*", query, re.DOTALL):
        return m[1]
    raise AssertionError(f"unexpected variable query form: {query!r}")


def query_variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}


def interpolate(expr: str, values: dict[str, str]) -> str:
    """Substitute Grafana variables as Grafana would (values already formatted); none may be left over."""
    builtins = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
    names = {**builtins, **values}

    def sub(m: re.Match[str]) -> str:
        name = m["braced"] or m["plain"]
        assert name in names, f"unknown Grafana variable {m[0]!r} in {expr!r}"
        return names[name]

    return re.sub(r"\$\{(?P<braced>\w+)(?::raw)?\}|\$(?P<plain>\w+)", sub, expr)


def grafana_query_result_values(result: list[dict[str, Any]], regex: str) -> list[str]:
    """The values Grafana derives from query_result(): it formats each sample as
    `name{k="v",...} value ts_ms` (label values unescaped) and applies the variable's /regex/."""
    m = re.fullmatch(r"/(.*)/([a-z]*)", regex, re.DOTALL)
    assert m, f"variable regex is not /pattern/flags: {regex!r}"
    pattern = re.compile(m[1], re.IGNORECASE if "i" in m[2] else 0)
    values = []
    for sample in result:
        metric = dict(sample["metric"])
        name = metric.pop("__name__", "")
        labels = ",".join(f'{k}="{v}"' for k, v in metric.items())
        text = f"{name}{{{labels}}} {sample['value'][1]} {int(float(sample['value'][0]) * 1000)}"
        found = pattern.search(text)
        assert found and found.groups(), f"regex {regex!r} extracts nothing from {text!r}"
        values.append(found[1])
    return values


def test_dashboard_is_grafana_dashboard_json() -> None:
    d = load_dashboard()
    assert d["title"] == "Anomaly exporter"
    assert isinstance(d["uid"], str) and re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", d["uid"])
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["tags"] and all(isinstance(t, str) for t in d["tags"])
    assert d.get("id") is None, "a dashboard meant for import carries no database id"
    assert d["time"]["from"] and d["time"]["to"]

    panels = list(all_panels(d["panels"]))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), ids
    for p in panels:
        pos = p["gridPos"]
        assert {"x", "y", "w", "h"} <= pos.keys() and all(isinstance(pos[k], int) for k in "xywh"), p["title"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        assert p["type"] and p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
            assert isinstance(t["expr"], str) and t["expr"].strip(), p["title"]
    top = d["panels"]
    for a, b in itertools.combinations(top, 2):
        pa, pb = a["gridPos"], b["gridPos"]
        overlap = (
            pa["x"] < pb["x"] + pb["w"]
            and pb["x"] < pa["x"] + pa["w"]
            and pa["y"] < pb["y"] + pb["h"]
            and pb["y"] < pa["y"] + pa["h"]
        )
        assert not overlap, f"panels {a['title']!r} and {b['title']!r} overlap"


def test_dashboard_variables() -> None:
    d = load_dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert list(variables) == ["datasource", "rule", "series"]
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    rule, series = variables["rule"], variables["series"]
    assert rule["multi"] and rule["includeAll"]
    assert series["multi"]
    for v in (rule, series):
        assert v["type"] == "query" and v["datasource"] == DATASOURCE
        assert v["definition"] == variable_query(v)
        variable_expr(variable_query(v))
    assert "$rule" in variable_query(series), "the series list follows the selected rules"
    repeats = [p["repeat"] for p in all_panels(d["panels"]) if p.get("repeat")]
    assert repeats == ["series"], "one row repeated per selected series"


def test_series_overrides_name_existing_queries() -> None:
    """byName overrides and the band's fillBelowTo refer to legends the panel's queries produce."""
    for p in all_panels(load_dashboard()["panels"]):
        legends = {t.get("legendFormat") for t in p.get("targets", [])}
        for o in p.get("fieldConfig", {}).get("overrides", []):
            if o["matcher"]["id"] == "byName" and p["type"] == "timeseries":
                assert o["matcher"]["options"] in legends, (p["title"], o)
            for prop in o["properties"]:
                if prop["id"] == "custom.fillBelowTo":
                    assert prop["value"] in legends, (p["title"], prop)
    band = [p for p in all_panels(load_dashboard()["panels"]) if p["title"] == "Observed and expected"]
    assert len(band) == 1
    exprs = " ".join(t["expr"] for t in band[0]["targets"])
    for name in ("anomaly_observed", "anomaly_expected", "anomaly_expected_lower", "anomaly_expected_upper"):
        assert name in exprs


def test_dashboard_names_only_exported_metrics() -> None:
    d = load_dashboard()
    exported = exported_metric_names()
    assert "anomaly_exporter_notifications_dropped_total" in exported  # the fake alerting is complete
    exprs = [e for _, e in panel_exprs(d)]
    exprs += [variable_expr(variable_query(v)) for v in query_variables(d).values()]
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert names <= exported | PROMETHEUS_OWN, f"{expr!r}: {sorted(names - exported)} not exported"
    # metric names mentioned in titles and descriptions are real too
    mentioned = set(re.findall(r"\banomaly_\w+", json.dumps(d)))
    assert mentioned <= exported, sorted(mentioned - exported)


def test_chart_copy_is_identical() -> None:
    assert DASHBOARD_CHART_COPY.read_bytes() == DASHBOARD.read_bytes()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping the collector every second and evaluating the shipped alert rules."""
    registry = exporter_registry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        target = f"127.0.0.1:{server.server_address[1]}"
        prom = PrometheusServer(
            tmp_path_factory.mktemp("tsdb"),
            [target],
            extra_config=f"rule_files: [{json.dumps(str(RULES_FILE))}]",
        )
        with prom:
            # two scrapes, so rate() has something to work on
            prom.wait_for("count_over_time(anomaly_exporter_build_info[1m]) >= 2", timeout=20)
            yield prom
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.integration
def test_every_expression_runs_and_returns_data(prometheus: PrometheusServer) -> None:
    d = load_dashboard()
    variables = query_variables(d)
    rule_expr = variable_expr(variable_query(variables["rule"]))
    assert [v["metric"]["rule"] for v in prometheus.query(rule_expr)] == [RULE]

    # The series variable as Grafana computes it, with $rule = All.
    series_var = variables["series"]
    series_expr = interpolate(variable_expr(variable_query(series_var)), {"rule": ".*"})
    series_values = grafana_query_result_values(prometheus.query(series_expr), series_var["regex"])
    assert len(series_values) == 2 and 'service="api"' in series_values[0], "most anomalous first"

    # Prometheus-side alert of the shipped rules, for the "firing alerts" panel.
    prometheus.wait_for('ALERTS{alertname="AnomalyExporterResultsStale", alertstate="firing"}', timeout=15)

    # Rule = All (".*" also matches a missing label) and rule = one value (catches label name typos).
    for rule in (".*", RULE):
        values = {"rule": rule, "series": series_values[0]}
        for where, expr in panel_exprs(d):
            query = interpolate(expr, values)
            assert prometheus.query(query), f"{where}: {query!r} returns nothing on the exporter's metrics"

    # Other values Grafana may substitute must at least parse (a parse error raises ServerError).
    others = [
        {"rule": RULE, "series": ""},  # no series to pick (empty list)
        {"rule": f"({RULE}|other)", "series": series_values[1]},  # a multi-value selection
    ]
    for values in others:
        for _, expr in panel_exprs(d):
            prometheus.query(interpolate(expr, values))
        for v in variables.values():
            prometheus.query(interpolate(variable_expr(variable_query(v)), values))
