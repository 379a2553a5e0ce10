"""The real-server harness itself: backfill + Prometheus queries, promtool lint, Alertmanager, clean-up."""

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from realservers import (
    AlertmanagerServer,
    PrometheusServer,
    ServerError,
    backfill,
    free_port,
    promtool_check_metrics,
    wait_until,
    write_openmetrics,
)

# Label value with every character OpenMetrics must escape, matched back through PromQL below.
ODD = 'say "hi"\\\nbye'


def _two_series(last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three days at 1-minute resolution ending at ``last``: a ramp, and a wave with one NaN gap."""
    ts = np.arange(last - 3 * 86400, last + 1, 60, dtype=np.float64)
    ramp = (ts - ts[0]) / 60.0
    wave = np.round(np.sin(ts / 3600.0) * 100.0, 3)
    wave[-10:-5] = np.nan
    return ts, ramp, wave


def test_write_openmetrics_format(tmp_path):
    ts = np.array([120.0, 60.0, 180.0])
    path = write_openmetrics(
        tmp_path / "x.om",
        [
            ("a", {"k": ODD}, ts, np.array([2.0, 1.0, np.nan])),
            ("b", {}, np.array([60.5]), np.array([np.inf])),
            ("a", {"k": "2"}, ts[:1], np.array([-np.inf])),
        ],
    )
    assert path.read_text().splitlines() == [
        "# TYPE a gauge",
        'a{k="say \\"hi\\"\\\\\\nbye"} 1.0 60',
        'a{k="say \\"hi\\"\\\\\\nbye"} 2.0 120',
        'a{k="2"} -Inf 120',
        "# TYPE b gauge",
        "b +Inf 60.5005",
        "# EOF",
    ]
    with pytest.raises(ValueError, match="future"):
        write_openmetrics(tmp_path / "y.om", [("a", {}, np.array([time.time() + 60]), np.array([1.0]))])
    with pytest.raises(ValueError, match="duplicate"):
        write_openmetrics(tmp_path / "y.om", [("a", {}, np.array([1.0, 1.0]), np.array([1.0, 2.0]))])
    with pytest.raises(ValueError, match="invalid metric name"):
        write_openmetrics(tmp_path / "y.om", [("a-b", {}, ts, ts)])


@pytest.mark.integration
def test_backfilled_history_is_queryable_up_to_now(tmp_path):
    last = int(time.time()) // 60 * 60 - 60  # one minute ago, on the minute
    ts, ramp, wave = _two_series(last)
    om = write_openmetrics(
        tmp_path / "history.om",
        [
            ("demo_ramp", {"instance": "a", "job": "demo"}, ts, ramp),
            ("demo_wave", {"instance": "b", "job": "demo", "note": ODD}, ts, wave),
        ],
    )
    backfill(om, tmp_path / "tsdb")

    with PrometheusServer(tmp_path / "tsdb") as prom:
        # "now": the newest sample, one minute old, is inside the 5m lookback.
        now = prom.query("demo_ramp")
        assert len(now) == 1
        assert now[0]["metric"] == {"__name__": "demo_ramp", "instance": "a", "job": "demo"}
        assert float(now[0]["value"][1]) == ramp[-1]

        two_days_ago = last - 2 * 86400
        past = prom.query("demo_ramp", time=two_days_ago + 30)
        assert float(past[0]["value"][1]) == ramp[ts == two_days_ago][0]
        # A JSON string literal is a valid PromQL one: same escapes.
        past = prom.query(
            f"demo_wave{{note={json.dumps(ODD)}}}", time=datetime.fromtimestamp(two_days_ago, UTC)
        )
        assert past[0]["metric"]["note"] == ODD
        assert float(past[0]["value"][1]) == wave[ts == two_days_ago][0]

        # NaN values were skipped: a gap, not samples.
        counts = prom.query("count_over_time({job='demo'}[4d])")
        assert sorted(int(r["value"][1]) for r in counts) == [ts.size - 5, ts.size]

        rng = prom.query_range("demo_ramp", start=last - 3600, end=last, step="10m")
        assert [float(v) for _, v in rng[0]["values"]] == list(ramp[-61::10])

        with pytest.raises(ServerError, match="bad_data"):
            prom.query("demo_ramp[")


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"# HELP harness_probe A probe.\n# TYPE harness_probe gauge\nharness_probe 42\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_target():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.integration
def test_prometheus_scrapes_targets_and_stops(tmp_path, metrics_target):
    with PrometheusServer(tmp_path / "tsdb", [metrics_target], job="probe") as prom:
        proc = prom._proc
        result = prom.wait_for("harness_probe", lambda r: len(r) == 1, timeout=15)
        assert result[0]["metric"]["job"] == "probe"
        assert result[0]["value"][1] == "42"
        (target,) = prom.targets()
        assert target["health"] == "up" and target["labels"]["instance"] == metrics_target
        workdir = prom.workdir
    assert proc is not None and proc.returncode is not None
    assert not workdir.exists()
    with pytest.raises(TimeoutError, match="never"):
        wait_until(lambda: False, timeout=0.3, what="never")


@pytest.mark.integration
def test_prometheus_start_failure_reports_log_and_leaves_nothing(tmp_path):
    prom = PrometheusServer(tmp_path / "tsdb", extra_config="bogus_key: 1\n")
    prom.ready_timeout = 10
    with pytest.raises(ServerError, match="bogus_key"):
        prom.start()
    assert not prom.running and not prom.workdir.exists()


@pytest.mark.integration
def test_promtool_check_metrics():
    good = "# HELP job_runs_total Runs.\n# TYPE job_runs_total counter\njob_runs_total 3\n"
    assert promtool_check_metrics(good) == ""
    bad = "# HELP job_runs Runs.\n# TYPE job_runs counter\njob_runs 3\n"
    assert "_total" in promtool_check_metrics(bad)
    assert "error" in promtool_check_metrics("not valid{{ 1\n")


@pytest.mark.integration
def test_alertmanager_accepts_and_lists_alerts():
    port = free_port()
    with AlertmanagerServer(port=port) as am:
        assert am.url == f"http://127.0.0.1:{port}"
        assert am.alerts() == []
        now = datetime.now(UTC)
        am.post_alerts(
            [
                {
                    "labels": {"alertname": "AnomalyDetected", "rule": "latency", "severity": "warning"},
                    "annotations": {"summary": "score 1.7 over threshold"},
                    "startsAt": now.isoformat(),
                    "endsAt": (now + timedelta(minutes=5)).isoformat(),
                    "generatorURL": "http://127.0.0.1/graph",
                }
            ]
        )
        alerts = wait_until(am.alerts, timeout=10, what="alert listed")
        (alert,) = alerts
        assert alert["labels"]["rule"] == "latency"
        assert alert["status"]["state"] == "active"
        assert am.alerts(filter=["rule=other"]) == []
