"""`anomaly-exporter backtest`: replay a CSV file or a rule's Prometheus history, write scores, judge them.

anomaly-exporter backtest --input series.csv --output scored.csv [--labels windows.json] [--report r.html]
anomaly-exporter backtest --config rules.yaml --rule NAME --start 2026-11-01 --end 2026-11-08 --output o.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from exporter.backtest import BacktestResult, for_csv, read_csv, replay, write_csv
from exporter.config import ConfigError, RuleConfig, load_config
from exporter.evaluate import event_metrics, load_profiles, nab_file_score, nab_normalized, probationary_rows
from exporter.evaluate import rising_edges as edges


def run(args: argparse.Namespace) -> int:
    try:
        rule = _rule(args)
        result = _replay(args, rule)
    except (ValueError, ConfigError, OSError) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 2
    write_csv(args.output, result)
    print(
        f"wrote {args.output}: {len(result.keys)} series × {len(result.timestamps)} points", file=sys.stderr
    )
    windows: list[tuple[int, int]] = []
    if args.labels:
        try:
            windows = _windows(Path(args.labels), args.input)
        except (ValueError, OSError, KeyError) as exc:
            print(f"backtest: --labels: {exc}", file=sys.stderr)
            return 2
        _print_metrics(result, windows, args)
    if args.report:
        from exporter.report import write_report, write_svg

        write = write_svg if args.report.lower().endswith(".svg") else write_report
        write(args.report, result, windows=windows, title=Path(args.input or rule.name).name)
        print(f"wrote {args.report}", file=sys.stderr)
    return 0


def _rule(args: argparse.Namespace) -> RuleConfig:
    if not args.config:
        if args.rule:
            raise ValueError("--rule needs --config")
        return RuleConfig(name="backtest", query="-")
    config = load_config(args.config)
    names = [r.name for r in config.rules]
    if args.rule is None and len(names) == 1:
        return config.rules[0]
    for rule in config.rules:
        if rule.name == args.rule:
            return rule
    raise ValueError(f"--rule {args.rule!r} not in {args.config} (rules: {', '.join(names)})")


def _progress(quiet: bool) -> Callable[[float], None] | None:
    if quiet:
        return None
    started = time.monotonic()
    last = [-1]

    def show(fraction: float) -> None:
        pct = int(fraction * 100)
        if pct // 5 != last[0] // 5 or pct == 100:
            last[0] = pct
            print(f"\rbacktest {pct:3d}% ({time.monotonic() - started:.0f} s)", end="", file=sys.stderr)
            if pct == 100:
                print(file=sys.stderr)

    return show


def _replay(args: argparse.Namespace, rule: RuleConfig) -> BacktestResult:
    if args.input:
        t, v, step = read_csv(args.input)
        return replay(for_csv(rule, step), [()], t, v[None, :], progress=_progress(args.quiet))
    if not (args.config and args.start):
        raise ValueError("give --input FILE.csv, or --config, --rule and --start to read from Prometheus")
    from exporter.reader import PrometheusReader

    config = load_config(args.config)
    start, end = _time(args.start), _time(args.end) if args.end else time.time()
    if end <= start:
        raise ValueError(f"--end ({args.end}) must be after --start ({args.start})")
    with PrometheusReader(config.prometheus) as reader:
        # the model needs `history` before the first scored point, like the live loop after a restart
        data = reader.query_range(rule.query, start - rule.history, end, rule.step)
    if not data.keys:
        raise ValueError(
            f"rule {rule.name!r}: the query returned no series between {args.start} and {args.end}"
        )
    keys, values = data.keys[: rule.max_series], data.values[: rule.max_series]
    result = replay(rule, keys, data.timestamps, values, progress=_progress(args.quiet))
    keep = data.timestamps >= start
    return BacktestResult(
        keys,
        data.timestamps[keep],
        values[:, keep],
        *(a[:, keep] for a in (result.score, result.expected, result.lower, result.upper, result.alert)),
    )


def _time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    stamp = pd.Timestamp(text)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.timestamp()


def _windows(path: Path, input_path: str | None) -> list[tuple[int, int]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):  # NAB: {"folder/file.csv": [[start, end], ...]}
        wanted = Path(input_path or "").as_posix()
        matches = [k for k in data if wanted.endswith(k)]
        if not matches:
            raise KeyError(f"no entry in {path} for {input_path} (keys look like {next(iter(data), '?')!r})")
        data = data[max(matches, key=len)]
    return [(int(_time(a)), int(_time(b))) for a, b in data]


def _print_metrics(
    result: BacktestResult, windows: Sequence[tuple[int, int]], args: argparse.Namespace
) -> None:
    ts = result.timestamps.astype("datetime64[s]")
    wins = [(np.datetime64(a, "s"), np.datetime64(b, "s")) for a, b in windows]
    for i, key in enumerate(result.keys):
        name = "{" + ",".join(f'{k}="{v}"' for k, v in key) + "}" if key else (args.input or "series")
        m = event_metrics(ts, result.alert[i], wins, skip_rows=probationary_rows(len(ts)))
        delay = "–" if m.mean_delay_s is None else f"{m.mean_delay_s / 60:.0f} min"
        print(
            f"{name}: windows {m.tp_events + m.fn_events}, detected {m.tp_events}, alerts {m.alerts}, "
            f"false alerts {m.fp_alerts}; precision {m.precision:.2f} recall {m.recall:.2f} F1 {m.f1:.2f}; "
            f"mean delay {delay}; false alerts/week {m.false_alerts_per_week:.2f}"
        )
        profiles_path = Path(args.profiles) if args.profiles else Path(args.labels).with_name("profiles.json")
        if profiles_path.exists() and wins:
            for pname, profile in load_profiles(profiles_path).items():
                score = nab_normalized([nab_file_score(ts, edges(result.alert[i]), wins, profile)])
                print(f"  NAB {pname}: {score:.1f} (this file alone; 0 = never alerting, 100 = perfect)")
