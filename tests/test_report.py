"""The HTML backtest report: self-contained, escaped, gaps kept as gaps, spikes survive decimation, small."""

import re
from pathlib import Path

import numpy as np
import pytest

from exporter.backtest import BacktestResult
from exporter.report import LEFT, RIGHT, W, write_report, write_svg

T0, STEP = 1_700_000_000, 60
EVIL = ("instance", '<script>alert("x")</script>')


def result(values: np.ndarray, score: np.ndarray, keys: list | None = None, alert=None) -> BacktestResult:
    """A hand-made result: expected = 10, band ± 2, NaN wherever the value is NaN."""
    n, n_t = values.shape
    expected = np.where(np.isnan(values), np.nan, 10.0)
    keys = keys if keys is not None else [(("job", f"j{i}"),) for i in range(n)]
    alert = np.zeros((n, n_t), dtype=bool) if alert is None else alert
    t = T0 + STEP * np.arange(n_t, dtype=np.int64)
    return BacktestResult(keys, t, values, score, expected, expected - 2, expected + 2, alert)


def two_series() -> BacktestResult:
    rng = np.random.default_rng(1)
    values = 10 + rng.normal(0, 0.5, (2, 300))
    values[0, 120:130] = 20.0  # an anomaly, inside the labelled window and alerting
    values[:, 50:60] = np.nan  # a gap in both series
    values[1, 200:205] = np.nan
    score = np.abs(values - 10) / 2
    score[:, :20] = np.nan  # warm-up: no score yet
    alert = np.zeros((2, 300), dtype=bool)
    alert[0, 122:131] = True
    keys = [(("__name__", "up"), EVIL, ("job", "api")), (("instance", "b"), ("job", "db"))]
    return result(values, score, keys, alert)


def paths(text: str, cls: str) -> list[str]:
    return re.findall(rf"<path class='{cls}' d='([^']*)'", text)


def coords(d: str) -> np.ndarray:
    """(x, y) pairs of a path made of M and implicit line-to points (the `h0` of lone points dropped)."""
    return np.array([[float(v) for v in p.split(",")] for p in re.findall(r"-?[\d.]+,-?[\d.]+", d)])


def test_report_is_self_contained_escaped_and_shows_spans(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_report(out, two_series(), windows=[(T0 + 115 * STEP, T0 + 135 * STEP)], title="Rule <x>")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<title>Rule &lt;x&gt;</title>" in text
    assert text.count("<svg") == text.count("</svg>") == 4  # two panels per series
    assert text.count("<section>") == 2
    # the label value is escaped (and quoted as Prometheus would) instead of running as a script
    assert "<script" not in text and "http" not in text and "src=" not in text
    escaped = "instance=&quot;&lt;script&gt;alert(\\&quot;x\\&quot;)&lt;/script&gt;&quot;"
    assert f"<h2>up{{{escaped}, job=&quot;api&quot;}}</h2>" in text
    assert text.index("job=&quot;api") < text.index("job=&quot;db")  # highest max score first
    # the alert episode and the window are drawn in both panels of the first series only
    assert text.count("<rect class='alert'") == 2
    assert text.count("<rect class='window'") == 4
    assert "alert episodes: 1" in text and "labelled windows with an alert: 1 of 1" in text
    assert "alert episodes: 0" in text and "labelled windows with an alert: 0 of 1" in text
    assert len(paths(text, "hit")) == 1  # score >= 1 only in the first series
    assert "nan" not in text.lower() and "inf" not in text.lower()


def test_gaps_split_lines_and_areas(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    write_report(out, two_series())
    text = out.read_text(encoding="utf-8")
    obs, band = paths(text, "obs"), paths(text, "band")
    assert [d.count("M") for d in obs] == [2, 3]  # one gap, two gaps: never drawn through as 0
    assert [d.count("Z") for d in band] == [2, 3]
    assert [d.count("M") for d in paths(text, "score")] == [2, 3]


def test_decimation_keeps_a_single_point_spike_and_stays_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    values = 10 + rng.normal(0, 0.5, (1, 100_000))
    values[0, 54_321] = 1000.0
    values[0, 70_000:70_500] = np.nan
    score = np.abs(values - 10) / 2
    out = tmp_path / "big.html"
    write_report(out, result(values, score), max_points=2000)
    text = out.read_text(encoding="utf-8")
    assert out.stat().st_size < 300_000
    assert "nan" not in text.lower()
    (obs,) = paths(text, "obs")
    xy = coords(obs)
    assert len(xy) <= 2 * 2000  # about max_points columns, min and max each
    top, typical = xy[:, 1].min(), np.median(xy[:, 1])
    assert typical - top > 150  # the spike reaches near the top of the 210-unit panel...
    spike_x = LEFT + 54_321 / 99_999 * (W - LEFT - RIGHT)
    assert abs(xy[np.argmin(xy[:, 1]), 0] - spike_x) < 1  # ...at its own time
    assert obs.count("M") == 2  # the gap survives decimation too
    (clip,) = paths(text, "clip")  # the spike's score is far above the clipped score axis: marked
    assert clip.count("M") == 1


def test_max_series_and_labels(tmp_path: Path) -> None:
    values = np.full((3, 50), 10.0)
    score = np.zeros((3, 50))
    score[2, 10] = 5.0
    score[1] = np.nan  # never scored: sorts last
    res = result(values, score, keys=[(("job", "a"),), (("job", "b"),), ()])
    out = tmp_path / "r.html"
    write_report(out, res, max_series=2, title="My rule")
    text = out.read_text(encoding="utf-8")
    assert "3 series, 2 shown" in text and "1 more not shown" in text
    assert text.count("<svg") == 4
    assert "<h2>My rule</h2>" in text  # no labels: the title names the series
    assert text.index("<h2>My rule</h2>") < text.index("job=&quot;a&quot;")
    assert "job=&quot;b&quot;" not in text


def test_empty_result(tmp_path: Path) -> None:
    none = np.zeros((0, 0))
    empty = BacktestResult([], np.zeros(0, dtype=np.int64), none, none, none, none, none, none > 0)
    out = tmp_path / "r.html"
    write_report(out, empty)
    assert "No data" in out.read_text(encoding="utf-8")


def test_svg_picture_is_standalone_valid_xml_of_the_worst_series(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    out = tmp_path / "pic.svg"
    write_svg(out, two_series(), windows=[(T0 + 115 * STEP, T0 + 135 * STEP)], title="t")
    text = out.read_text()
    root = ET.fromstring(text)  # well-formed XML, escaped labels included
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "<style>" in text and "<script" not in text  # the evil label value is escaped
    assert "job=&quot;api&quot;" in text or 'job="api"' in text  # series 0 has the highest score
    assert text.count("<rect class='alert'") == 2 and text.count("<rect class='window'") == 2
    assert len(paths(text, "score")) == 1 and len(paths(text, "hit")) == 1
    with pytest.raises(ValueError, match="nothing to draw"):
        write_svg(tmp_path / "empty.svg", result(np.empty((0, 0)), np.empty((0, 0))))
