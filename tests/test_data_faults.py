"""Bad data end to end: series with NaN, ±Inf, long gaps, no variation, one point, huge and tiny values and
awkward labels are backfilled into a real Prometheus, the exporter CLI runs three rules (seasonal, mad,
iforest) against it, and its /metrics is checked value by value, by promtool and by prometheus_client's
parser.

What should happen to each case, whatever the model:
- a series whose newest value is NaN, +Inf or -Inf has no current value: none of its gauges is exported
  (unknown is never reported, neither as normal nor as an anomaly); ±Inf and NaN points elsewhere in the
  history are treated as missing and the series is scored as usual.
- gaps of hours, in the middle of the history or right before now, are ignored.
- a flat series scores 0, with a band of width ~0 around its value.
- a series with a single point (recent or old) is in warm-up or has no current value: not exported.
- series living around ±1e300 are scored like any other (the band scales with them). A series around
  1e-300 is judged against the absolute noise floor: σ is at least 1e-9 + 1e-9 × |level| and the per-hour
  scale at least σ / 2, so at the default z_threshold of 4 its band is ±2e-9 and it scores ~0 — variation
  below ~1e-9 counts as none.
- a 1e300 spike on an ordinary series scores ≥ 1 (finite).
- label values with quotes, backslashes, newlines, tabs, emoji and CJK text, and a series with 40 labels,
  come back intact (a source label `rule` is renamed `exported_rule`).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.realservers import (
    PrometheusServer,
    backfill,
    free_port,
    promtool_check_metrics,
    require_binary,
    wait_until,
    write_openmetrics,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
STEP = 60
HISTORY = 86400
METRIC = "fault_value"
MODELS = ("seasonal", "mad", "iforest")
GAUGES = ("anomaly_score", "anomaly_observed", "anomaly_expected", "anomaly_expected_lower")
GAUGES += ("anomaly_expected_upper",)

WEIRD_VALUES = {
    "quote": 'say "hi"',
    "backslash": "C:\\path\\to\\ and a trailing \\",
    "newline": "line one\nline two\n",
    "tab": "a\tb",
    "emoji": "🔥💥 on fire 🚒",
    "cjk": "異常検知 / 이상 탐지 / 异常",
    "mixed": '"\\\n🔥異',
}
MANY_LABELS = {f"l{i:02d}": f"value-{i}-{'x' * i}" for i in range(40)}


@dataclass(frozen=True)
class Case:
    name: str
    t: np.ndarray
    v: np.ndarray
    exported: bool  # has a current, finite value and enough history: all five gauges expected
    labels: dict[str, str]


def _cases(end: int) -> list[Case]:
    rng = np.random.default_rng(7)
    t = np.arange(end - HISTORY + STEP, end + 1, STEP, dtype=np.int64)
    n = len(t)

    def normal() -> np.ndarray:
        v = 100 + rng.normal(0, 1, n)
        v[-10:] = 100 + np.clip(rng.normal(0, 1, 10), -1.5, 1.5)  # "now" is ordinary
        return v

    cases: list[Case] = []

    def add(name: str, v: np.ndarray, exported: bool, keep: np.ndarray | None = None, **labels: str) -> None:
        ts = t if keep is None else t[keep]
        vs = v if keep is None else v[keep]
        cases.append(Case(name, ts, vs, exported, {"case": name, **labels}))

    v = normal()
    v[::7] = np.nan
    add("nan_scattered", v, True)
    v = normal()
    v[-1] = np.nan
    add("nan_last", v, False)
    v = normal()
    v[::11], v[5::11] = np.inf, -np.inf
    add("inf_scattered", v, True)
    v = normal()
    v[-1] = np.inf
    add("inf_last", v, False)
    v = normal()
    v[-1] = -np.inf
    add("neg_inf_last", v, False)
    keep = np.ones(n, dtype=bool)
    keep[n // 3 : n // 3 + 5 * 60] = False  # 5 hours without samples
    add("gap_hours", normal(), True, keep)
    keep = np.ones(n, dtype=bool)
    keep[-4 * 60 : -10] = False  # 4 hours without samples, back 10 minutes ago
    add("gap_until_recently", normal(), True, keep)
    add("flat", np.full(n, 42.0), True)
    add("flat_zero", np.zeros(n), True)
    add("one_point_now", np.full(n, 5.0), False, np.arange(n) == n - 1)
    add("one_point_old", np.full(n, 5.0), False, np.arange(n) == n // 2)
    add("huge", 1e300 * (1 + 0.01 * rng.normal(size=n)), True)
    add("huge_negative", -1e300 * (1 + 0.01 * rng.normal(size=n)), True)
    add("huge_flat", np.full(n, 1e300), True)
    add("tiny", 1e-300 * (1 + 0.01 * rng.normal(size=n)), True)
    v = normal()
    v[-1] = 1e300
    add("huge_spike_now", v, True)
    v = normal()
    v[-1] = -1e300
    add("huge_negative_spike_now", v, True)
    v = normal()
    v[n // 2] = 1e300
    add("huge_spike_old", v, True)
    v = normal()
    v[0] = 1e300
    add("starts_huge", v, True)
    v = normal()
    v[0] = 1e-300
    add("starts_tiny", v, True)
    add("near_float_max", np.full(n, 1.7e308) * (1 - 0.01 * rng.random(n)), True)
    for name, value in WEIRD_VALUES.items():
        add(f"label_{name}", normal(), True, weird=value)
    add("many_labels", normal(), True, **MANY_LABELS)
    add("source_label_rule", normal(), True, rule="not-the-rule-name")
    return cases


def _rules(path: Path, prometheus_url: str) -> None:
    rules = "\n".join(f"  - {{name: {model}, query: {METRIC}, model: {{type: {model}}}}}" for model in MODELS)
    path.write_text(
        f"prometheus: {{url: {prometheus_url}, timeout: 20s, max_retries: 1}}\n"
        f"defaults: {{interval: 2s, retrain: 1h, history: 1d, step: 1m}}\n"
        f"rules:\n{rules}\n",
        encoding="utf-8",
    )


def _families(text: str) -> dict[str, dict[str, dict[str, float]]]:
    """gauge -> rule -> case -> value, from exposition text (every sample once)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in GAUGES:
                by_case = out.setdefault(s.name, {}).setdefault(s.labels["rule"], {})
                assert s.labels["case"] not in by_case, f"{s.name} exported twice for {s.labels}"
                by_case[s.labels["case"]] = s.value
    return out


@dataclass
class Scrape:
    text: str
    values: dict[str, dict[str, dict[str, float]]]  # gauge -> rule -> case -> value
    cases: dict[str, Case]
    log: Path


def _health(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("anomaly_exporter_") and "rule" in s.labels:
                out[(s.name, s.labels["rule"] + "/" + s.labels.get("stage", ""))] = s.value
    return out


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    """Backfill the cases, run the exporter CLI on them until every rule has published, scrape once."""
    require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("data-faults")
    end = int(time.time()) // STEP * STEP  # the newest sample sits on "now"'s grid point
    cases = _cases(end)
    om = write_openmetrics(tmp / "faults.om", [(METRIC, c.labels, c.t, c.v) for c in cases], keep_nan=True)
    backfill(om, tmp / "tsdb")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with PrometheusServer(tmp / "tsdb") as prom:
        rules = tmp / "rules.yaml"
        _rules(rules, prom.url)
        log_path = tmp / "exporter.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "exporter", "run", "--config.file", str(rules),
                 "--web.listen-address", f"127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:

            def published() -> str | None:
                if proc.poll() is not None:
                    raise AssertionError(f"exporter exited {proc.returncode}:\n{log_path.read_text()}")
                try:
                    text = requests.get(f"{url}/metrics", timeout=5).text
                except requests.ConnectionError:
                    return None
                scores = _families(text).get("anomaly_score", {})
                return text if all(scores.get(m) for m in MODELS) else None

            text = wait_until(published, timeout=90, interval=0.5, what="scores of every rule")
            assert proc.poll() is None
            yield Scrape(text, _families(text), {c.name: c for c in cases}, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _current(case: Case) -> float:
    return float(case.v[-1])


def test_every_rule_is_up_without_errors(scrape: Scrape) -> None:
    health = _health(scrape.text)
    for model in MODELS:
        assert health[("anomaly_exporter_rule_up", f"{model}/")] == 1, (model, scrape.log.read_text())
        for stage in ("query", "fit", "score", "alert"):
            assert health[("anomaly_exporter_errors_total", f"{model}/{stage}")] == 0, (model, stage)
    assert "Traceback" not in scrape.log.read_text()


def test_promtool_accepts_the_metrics(scrape: Scrape) -> None:
    assert promtool_check_metrics(scrape.text) == ""


# Cases whose exported values the frame's float32 storage gets wrong today: see the xfail tests below.
FRAME_BUGS = {"huge_spike_now", "huge_negative_spike_now", "near_float_max"}


@pytest.mark.parametrize("model", MODELS)
def test_exactly_the_series_with_a_current_value_and_enough_history_are_exported(
    scrape: Scrape, model: str
) -> None:
    want = {name for name, c in scrape.cases.items() if c.exported} - {"near_float_max"}
    for gauge in GAUGES:
        assert set(scrape.values[gauge][model]) - {"near_float_max"} == want, (gauge, model)


@pytest.mark.parametrize("model", MODELS)
def test_exported_values_are_finite_and_consistent(scrape: Scrape, model: str) -> None:
    v = {g: scrape.values[g][model] for g in GAUGES}
    for name in v["anomaly_score"]:
        row = {g: v[g][name] for g in GAUGES}
        assert all(math.isfinite(x) for x in row.values()), (name, row)
        assert row["anomaly_score"] >= 0, (name, row)
        assert row["anomaly_expected_lower"] <= row["anomaly_expected"] <= row["anomaly_expected_upper"], (
            name,
            row,
        )
        if name not in FRAME_BUGS:
            assert row["anomaly_observed"] == pytest.approx(_current(scrape.cases[name]), rel=1e-6), name


@pytest.mark.parametrize("model", MODELS)
def test_ordinary_and_damaged_series_score_as_normal(scrape: Scrape, model: str) -> None:
    score = scrape.values["anomaly_score"][model]
    normal = ["nan_scattered", "inf_scattered", "gap_hours", "gap_until_recently", "huge_spike_old"]
    normal += ["huge", "huge_negative", "many_labels", "source_label_rule"]
    normal += [f"label_{k}" for k in WEIRD_VALUES]
    for name in normal:
        assert score[name] < 1, (name, score[name])


@pytest.mark.parametrize("model", MODELS)
def test_flat_series_score_zero_on_a_band_around_their_value(scrape: Scrape, model: str) -> None:
    v = {g: scrape.values[g][model] for g in GAUGES}
    for name, value in (("flat", 42.0), ("flat_zero", 0.0), ("huge_flat", 1e300)):
        # iforest adds its forest's own measure, which is small but not 0 on a flat series
        assert v["anomaly_score"][name] == 0 if model != "iforest" else v["anomaly_score"][name] < 0.5
        assert v["anomaly_expected"][name] == value
        width = v["anomaly_expected_upper"][name] - v["anomaly_expected_lower"][name]
        assert 0 <= width <= 1e-7 * max(1.0, abs(value)), (name, width)


@pytest.mark.parametrize("model", MODELS)
def test_tiny_values_are_below_the_noise_floor(scrape: Scrape, model: str) -> None:
    v = {g: scrape.values[g][model] for g in GAUGES}
    assert v["anomaly_expected"]["tiny"] == pytest.approx(1e-300, rel=0.05)
    assert v["anomaly_expected_upper"]["tiny"] == pytest.approx(2e-9, rel=0.01)  # 4 × σ-floor / 2 ...
    assert v["anomaly_score"]["tiny"] < 1e-200 or model == "iforest"  # ... so nothing at 1e-300 scores


@pytest.mark.parametrize("model", MODELS)
def test_a_huge_spike_now_scores_at_least_one(scrape: Scrape, model: str) -> None:
    score = scrape.values["anomaly_score"][model]
    assert math.isfinite(score["huge_spike_now"]) and score["huge_spike_now"] >= 1
    assert math.isfinite(score["huge_negative_spike_now"]) and score["huge_negative_spike_now"] >= 1
    assert scrape.values["anomaly_expected"][model]["huge_spike_now"] == pytest.approx(100, abs=20)


def _parsed_labels(text: str) -> list[dict[str, str]]:
    return [
        s.labels
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "anomaly_score" and s.labels.get("rule") == "seasonal"
    ]


def test_labels_come_back_intact(scrape: Scrape) -> None:
    got = {labels["case"]: labels for labels in _parsed_labels(scrape.text)}
    for name, case in scrape.cases.items():
        if not case.exported or name in FRAME_BUGS:
            continue
        want = {"rule": "seasonal", "metric_name": METRIC, **case.labels}
        if "rule" in case.labels:
            want["rule"], want["exported_rule"] = "seasonal", case.labels["rule"]
        assert got[name] == want, name
    assert got["label_newline"]["weird"] == "line one\nline two\n"
    assert got["label_mixed"]["weird"] == '"\\\n🔥異'


# -- bugs in exporter/frame.py (being rewritten elsewhere): the stored history loses these values ----------

FRAME = "exporter/frame.py stores float32 offsets from a series' first value; "


@pytest.mark.xfail(
    strict=True,
    reason=FRAME + "an offset beyond float32 saturates: a 1e300 point on a ~100 series reads back as 4.4e40",
)
@pytest.mark.parametrize("model", MODELS)
def test_a_huge_spike_is_observed_as_it_was(scrape: Scrape, model: str) -> None:
    observed = scrape.values["anomaly_observed"][model]
    assert observed["huge_spike_now"] == pytest.approx(1e300, rel=1e-6)
    assert observed["huge_negative_spike_now"] == pytest.approx(-1e300, rel=1e-6)


@pytest.mark.parametrize("case", ["starts_huge", "starts_tiny"])
def test_an_extreme_first_point_does_not_spoil_the_rest_of_the_series(scrape: Scrape, case: str) -> None:
    assert scrape.values["anomaly_observed"]["seasonal"][case] == pytest.approx(
        _current(scrape.cases[case]), rel=1e-6
    )
    assert scrape.values["anomaly_score"]["seasonal"][case] < 1


@pytest.mark.xfail(
    strict=True,
    reason="not scored: the frame now stores values near ±1.8e308 (its scale no longer overflows), but the "
    "detectors' float64 arithmetic overflows there and they report the series as unknown (NaN), not ±Inf",
)
def test_values_near_the_float64_maximum_are_scored(scrape: Scrape) -> None:
    assert "near_float_max" in scrape.values["anomaly_score"]["seasonal"]


def test_cases_are_what_the_tests_assume(scrape: Scrape) -> None:
    """Guards the test data: every case name is distinct and the newest sample of each is at one time."""
    ends: dict[Any, list[str]] = {}
    for name, case in scrape.cases.items():
        ends.setdefault(int(case.t[-1]), []).append(name)
    assert len(scrape.cases) == len({c.name for c in scrape.cases.values()})
    assert sorted(ends[max(ends)]) == sorted(n for n in scrape.cases if n != "one_point_old")
