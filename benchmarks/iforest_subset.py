"""Quick check of the iforest model on six synthetic series (the full harness takes ~20 min for it).

python benchmarks/iforest_subset.py [contamination]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.scenarios import scenarios, seed_scenario
from exporter.backtest import replay
from exporter.config import ModelConfig, RuleConfig
from exporter.evaluate import combine, event_metrics, probationary_rows

PICKED = (
    "no_anomaly/requests",
    "no_anomaly/latency",
    "spike/cpu",
    "variance_change/requests",
    "seed/cpu",
    "level_shift/cpu",
)


def main() -> int:
    contamination = float(sys.argv[1]) if len(sys.argv) > 1 else 0.001
    rule = RuleConfig(name="q", query="-", model=ModelConfig(type="iforest", contamination=contamination))
    started = time.perf_counter()
    metrics = []
    for s in [*scenarios(), seed_scenario()]:
        if s.name not in PICKED:
            continue
        t = np.asarray(s.timestamps)
        r = replay(rule, [()], t, np.array(s.values)[None, :])
        windows = [(np.datetime64(a, "s"), np.datetime64(b, "s")) for a, b in s.windows]
        m = event_metrics(t.astype("datetime64[s]"), r.alert[0], windows, skip_rows=probationary_rows(len(t)))
        metrics.append(m)
        took = time.perf_counter() - started
        print(f"{s.name}: detected {m.tp_events}, missed {m.fn_events}, false {m.fp_alerts} ({took:.0f} s)")
    c = combine(metrics)
    print(f"recall {c.recall:.2f}, false alerts per series-week {c.false_alerts_per_week:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
