"""Detection quality: backtests over the NAB subset and labelled synthetic scenarios, one table.

    python benchmarks/quality.py [--nab ../shared/datasets/nab] [--model seasonal] [--files N]

Every series runs through `exporter.backtest.replay` — the live loop's model, refit cadence and alert
rules — with ONE default configuration for every file (only the step comes from the data). Reported:
NAB scores (standard / reward-low-FP / reward-low-FN, NAB's published rules) (a) from the alerts as
emitted, where a detection is the moment an alert starts, and (b) with the threshold swept over
`anomaly_score` (a detection wherever it crosses the threshold upward), best single threshold for the
whole corpus; plus event precision / recall / F1, false alerts per series-week and time taken.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.scenarios import scenarios, seed_scenario
from exporter.backtest import for_csv, read_csv, replay
from exporter.config import ModelConfig, RuleConfig
from exporter.evaluate import (
    EventMetrics,
    FileScore,
    combine,
    event_metrics,
    load_profiles,
    load_windows,
    nab_file_score,
    nab_normalized,
    probationary_rows,
    rising_edges,
)

SWEEP = np.round(np.arange(0.5, 6.01, 0.25), 2)
DEFAULT_NAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab"


@dataclass
class Run:
    name: str
    timestamps: np.ndarray  # datetime64[s]
    score: np.ndarray
    alert: np.ndarray
    windows: list


def backtest_all(series, rule: RuleConfig) -> list[Run]:
    runs = []
    for name, t, v, step, windows in series:
        r = replay(for_csv(rule, step), [()], t, v[None, :])
        runs.append(Run(name, t.astype("datetime64[s]"), r.score[0], r.alert[0], windows))
    return runs


def nab_scores(runs: list[Run], profiles, detect) -> dict[str, float]:
    out = {}
    for pname, profile in profiles.items():
        scores: list[FileScore] = [nab_file_score(r.timestamps, detect(r), r.windows, profile) for r in runs]
        out[pname] = nab_normalized(scores)
    return out


def skipped_rows(run: Run, warm_start: float | None) -> int:
    """Rows not counted by the event metrics: NAB's probationary period, or with `warm_start` (seconds)
    every row before that much data had been seen — the exporter starts with `history` already loaded
    from Prometheus, so a brand-new-metric warm-up is not what its users live with."""
    if warm_start is None:
        return probationary_rows(len(run.timestamps))
    span = (run.timestamps[-1] - run.timestamps[0]) / np.timedelta64(1, "s")
    # scenarios put every anomaly in their last 40 %: a shorter series (the 7-day seed) keeps it counted
    first = run.timestamps[0] + np.timedelta64(int(min(warm_start, 0.6 * span)), "s")
    return int(np.searchsorted(run.timestamps, first, side="left"))


def events(runs: list[Run], warm_start: float | None = None) -> EventMetrics:
    return combine(
        event_metrics(r.timestamps, r.alert, r.windows, skip_rows=skipped_rows(r, warm_start)) for r in runs
    )


def sweep(runs: list[Run], profiles) -> tuple[float, dict[str, float]]:
    best: tuple[float, dict[str, float]] = (np.nan, {"standard": -np.inf})
    for theta in SWEEP:
        s = nab_scores(runs, profiles, lambda r, th=theta: rising_edges(np.nan_to_num(r.score) >= th))
        if s["standard"] > best[1]["standard"]:
            best = (float(theta), s)
    return best


def load_nab(root: Path, limit: int | None) -> list:
    windows = load_windows(root / "combined_windows.json")
    out = []
    for key in sorted(windows)[:limit]:
        t, v, step = read_csv(root / "data" / key)
        out.append((key, t, v, step, windows[key]))
    return out


def synthetic() -> list:
    out = []
    for s in [*scenarios(), seed_scenario()]:
        w = [(np.datetime64(a, "s"), np.datetime64(b, "s")) for a, b in s.windows]
        out.append((s.name, np.asarray(s.timestamps), np.array(s.values), 60, w))
    return out


PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt(x: float, spec: str = ".1f") -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nab", type=Path, default=DEFAULT_NAB)
    ap.add_argument("--model", default="seasonal", choices=["seasonal", "iforest", "mad"])
    ap.add_argument("--files", type=int, default=None, help="only the first N NAB files (quick runs)")
    ap.add_argument("--threshold", type=float, help="override the default z_threshold (exploration only)")
    ap.add_argument("--for", dest="for_", type=float, help="override `for`, seconds (exploration only)")
    ap.add_argument("--keep-firing-for", type=float, help="override keep_firing_for, seconds")
    ap.add_argument("--skip-nab", action="store_true")
    ap.add_argument(
        "--cold-start",
        action="store_true",
        help="synthetic event metrics after NAB's probation, not after `history` (brand-new metrics)",
    )
    args = ap.parse_args()
    rule = RuleConfig(name="quality", query="-", model=ModelConfig(type=args.model))
    if args.threshold is not None:
        rule = replace(rule, z_threshold=args.threshold)
    alert_overrides = {"for_": args.for_, "keep_firing_for": args.keep_firing_for}
    rule = replace(
        rule, alert=replace(rule.alert, **{k: v for k, v in alert_overrides.items() if v is not None})
    )
    profiles = load_profiles(args.nab / "profiles.json")
    rows = []
    corpora = [("synthetic", synthetic())]
    if not args.skip_nab:
        corpora.insert(0, ("NAB", load_nab(args.nab, args.files)))
    for corpus, data in corpora:
        started = time.perf_counter()
        runs = backtest_all(data, rule)
        took = time.perf_counter() - started
        emitted = nab_scores(runs, profiles, lambda r: rising_edges(r.alert))
        theta, swept = sweep(runs, profiles)
        warm = rule.history if corpus == "synthetic" and not args.cold_start else None
        ev = events(runs, warm)
        rows.append((corpus, len(runs), emitted, theta, swept, ev, took))
        if corpus == "synthetic":
            kinds = {}
            for r in runs:
                kind = r.name.split("/")[0]
                m = event_metrics(r.timestamps, r.alert, r.windows, skip_rows=skipped_rows(r, warm))
                kinds.setdefault(kind, []).append(m)
    print(
        f"Model `{args.model}`: z_threshold {rule.z_threshold:g}, for {rule.alert.for_:g}s, keep_firing_for "
        f"{rule.alert.keep_firing_for:g}s, retrain {rule.retrain:g}s, history {rule.history / 86400:g}d\n"
    )
    head = [
        "corpus",
        "series",
        "NAB std (emitted)",
        "low-FP",
        "low-FN",
        "best θ",
        "NAB std (θ)",
        "low-FP (θ)",
        "low-FN (θ)",
        "precision",
        "recall",
        "F1",
        "false alerts / series-week",
        "mean delay",
        "time",
    ]
    print(row(head))
    print(row(["---"] * len(head)))
    for corpus, n, em, theta, sw, ev, took in rows:
        delay = fmt(ev.mean_delay_s / 60, ".0f") + " min" if ev.mean_delay_s is not None else "–"
        profile_cells = [fmt(d[p]) for d in (em,) for p in PROFILES]
        swept_cells = [fmt(sw[p]) for p in PROFILES]
        print(
            row(
                [
                    corpus,
                    n,
                    *profile_cells,
                    f"{theta:g}",
                    *swept_cells,
                    fmt(ev.precision, ".2f"),
                    fmt(ev.recall, ".2f"),
                    fmt(ev.f1, ".2f"),
                    fmt(ev.false_alerts_per_week, ".2f"),
                    delay,
                    f"{took:.0f} s",
                ]
            )
        )
    print("\nSynthetic, by kind (alerts as emitted):\n")
    print(row(["kind", "series", "recall", "false alerts", "false alerts / series-week"]))
    print(row(["---"] * 5))
    for kind, ms in sorted(kinds.items()):
        c = combine(ms)
        print(row([kind, len(ms), fmt(c.recall, ".2f"), c.fp_alerts, fmt(c.false_alerts_per_week, ".2f")]))
    print(f"\nCommand: `python {shlex.join(sys.argv)}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
