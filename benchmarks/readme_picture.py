"""The README's picture: the seed scenario (7 days of 1-minute CPU, a 10-minute +45 spike and a 50-minute
drop to 0) replayed through the live code path with default settings, drawn as one SVG.

    python benchmarks/readme_picture.py [docs/img/seed-backtest.svg]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.scenarios import seed_scenario
from exporter.backtest import for_csv, replay
from exporter.config import RuleConfig
from exporter.report import write_svg


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/seed-backtest.svg")
    s = seed_scenario()
    rule = for_csv(RuleConfig(name="seed", query="-"), 60)
    result = replay(
        rule, [(("__name__", "cpu_usage_percent"), ("instance", "web-1"))], s.timestamps, s.values[None, :]
    )
    # the last two days: history before that only warms the model up
    keep = s.timestamps >= s.timestamps[-1] - 2 * 86400
    cut = type(result)(
        result.keys,
        result.timestamps[keep],
        *(np.asarray(a)[:, keep] for a in (result.values, result.score, result.expected, result.lower)),
        result.upper[:, keep],
        result.alert[:, keep],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_svg(out, cut, windows=s.windows, title="seed scenario, default settings")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
