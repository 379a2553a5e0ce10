"""The soak run (benchmarks/soak.py) kept from rotting: its loop for a few dozen cycles on a few series,
with every kind of event it injects made frequent (faults, outages, reloads, churn, a burst of series)."""

from benchmarks.soak import Options, format_report, run


def test_soak_loop_runs_short_and_reports():
    options = Options(
        cycles=48,
        series=40,
        small_series=5,
        history=6 * 3600,
        retrain_cycles=10,
        churn=0.25,  # 10 series replaced per hour
        fault_rate=0.15,
        outage_first=12,
        outage_every=20,
        outage_cycles=6,
        reload_every=5,
        warmup=10,
        samples=4,
    )
    report = run(options)
    assert not report.unhandled, report.unhandled[0]
    assert report.scrapes == 48 and report.scrape_mismatches == 0
    assert report.errors["query"] >= 6  # at least the first outage's cycles
    assert report.recovery_cycles, "the rule never came back up after an outage"
    assert set(report.reloads) == {"retune", "same", "rejected", "add", "remodel", "remove"}
    assert report.runners_built >= 5  # the first main runner, retune, the added rule, remodel, retune
    assert report.churn[0] > 0 and report.churn[1] > 0
    assert report.rss_start > 0 and [s.cycle for s in report.samples][-1] == 48
    text = format_report(report, "pytest")
    assert "Verdict:" in text and "| 48 |" in text
