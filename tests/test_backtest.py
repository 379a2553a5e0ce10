"""Backtest: replays history as the live loop would score it (no look-ahead), and the CLI around it."""

import numpy as np
import pytest

from benchmarks.scenarios import seed_scenario
from exporter.backtest import read_csv, replay
from exporter.cli import main
from exporter.config import ModelConfig, RuleConfig
from exporter.evaluate import event_metrics, rising_edges

RULE = RuleConfig(name="r", query="-")


def test_seed_scenario_both_anomalies_alerted_and_no_false_alerts():
    """The seed pipeline's case with the default configuration: 7 days of 1-minute CPU, σ≈3 noise,
    a 10-minute +45 spike and a 50-minute drop to 0."""
    s = seed_scenario()
    t = np.asarray(s.timestamps)
    r = replay(RULE, [()], t, np.array(s.values)[None, :])
    wins = [(np.datetime64(a, "s"), np.datetime64(b, "s")) for a, b in s.windows]
    m = event_metrics(t.astype("datetime64[s]"), r.alert[0], wins, skip_rows=1440)  # first day: warm-up
    assert m.tp_events == 2 and m.fn_events == 0
    assert m.fp_alerts == 0, np.flatnonzero(rising_edges(r.alert[0]))


@pytest.mark.parametrize("model", ["seasonal", "iforest", "mad"])
def test_no_look_ahead(model):
    """Scores up to a point do not depend on anything after it."""
    rng = np.random.default_rng(0)
    t = 1_700_000_000 + 60 * np.arange(3 * 1440, dtype=np.int64)
    a = 50 + 10 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 1, len(t))
    b = a.copy()
    cut = 2 * 1440 + 17
    b[cut:] += 100  # the future differs wildly
    rule = RuleConfig(name="r", query="-", retrain=3600, model=ModelConfig(type=model))
    ra, rb = (replay(rule, [()], t, x[None, :]) for x in (a, b))
    assert np.array_equal(ra.score[0, :cut], rb.score[0, :cut], equal_nan=True)
    assert np.array_equal(ra.expected[0, :cut], rb.expected[0, :cut], equal_nan=True)
    assert (rb.score[0, cut : cut + 5] >= 1).all()


def test_warm_up_and_gaps_give_no_score():
    t = 1_700_000_000 + 60 * np.arange(600, dtype=np.int64)
    v = np.sin(np.arange(600) / 10.0) + 5
    v[300:320] = np.nan
    r = replay(RULE, [()], t, v[None, :])
    assert np.isnan(r.score[0, :60]).all()  # less than min_history (1 h): unknown, not 0
    assert np.isnan(r.score[0, 300:320]).all()
    assert not np.isnan(r.score[0, 400:]).any()


@pytest.mark.parametrize(
    ("text", "step", "values"),
    [
        ("timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:05:00,2\n2024-01-01 00:15:00,4\n", 300,
         [1, 2, np.nan, 4]),
        ("timestamp,value\n1700000060,1\n1700000000,0\n1700000120,2\n1700000120,3\n", 60, [0, 1, 3]),
    ],
)  # fmt: skip
def test_read_csv_infers_the_step_and_fills_gaps(tmp_path, text, step, values):
    path = tmp_path / "s.csv"
    path.write_text(text)
    t, v, got_step = read_csv(path)
    assert got_step == step
    assert np.array_equal(v, np.array(values, dtype=float), equal_nan=True)
    assert np.all(np.diff(t) == step)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,value\n1,2\n", "expected a header 'timestamp,value'"),
        ("timestamp,value\nyesterday,2\n2024-01-01,3\n", "unparseable timestamp 'yesterday'"),
        ("timestamp,value\n1700000000,1\n", "at least two distinct timestamps"),
    ],
)
def test_read_csv_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_csv(path)


def test_backtest_command_writes_scores_and_judges_them(tmp_path, capsys):
    s = seed_scenario()
    src = tmp_path / "cpu.csv"
    src.write_text(
        "timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in zip(s.timestamps, s.values, strict=True))
    )
    labels = tmp_path / "windows.json"
    labels.write_text(str([[int(a), int(b)] for a, b in s.windows]))
    out = tmp_path / "out.csv"
    assert (
        main(["backtest", "--input", str(src), "--output", str(out), "--labels", str(labels), "--quiet"]) == 0
    )
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,value,score,expected,lower,upper,alert"
    assert len(lines) == len(s.timestamps) + 1
    assert lines[1].split(",")[2] == ""  # warm-up: no score
    assert sum(line.endswith(",1") for line in lines) > 0
    assert "detected 2" in capsys.readouterr().out


def test_backtest_command_rejects_bad_input(tmp_path, capsys):
    assert main(["backtest", "--input", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o")]) == 2
    assert "cannot read CSV" in capsys.readouterr().err
