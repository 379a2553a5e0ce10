"""kill -9 at any moment, then restart: the exporter comes back ready from its saved state, never crashes,
and ignores torn or corrupt state files (a real `anomaly-exporter demo` process with --storage.path)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.realservers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
RULES = 3  # the demo's rules: web_requests, node_cpu, queue_depth
SERIES = 9


class Exporter:
    def __init__(self, storage: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exporter", "demo", "--storage.path", str(storage),
                 "--web.listen-address", f"127.0.0.1:{self.port}"],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def scored(self) -> int | None:
        """SERIES once /-/ready says ready and every series has an anomaly_score; None before."""
        try:
            if requests.get(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).status_code != 200:
                return None
            text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except requests.ConnectionError:
            return None
        samples = [
            s for f in text_string_to_metric_families(text) for s in f.samples if s.name == "anomaly_score"
        ]
        return len(samples) if len(samples) == SERIES else None  # ready comes just before the scores

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(15)


def test_kill_9_at_random_moments_then_restart(tmp_path):
    storage = tmp_path / "state"
    log = tmp_path / "exporter.log"
    rng = random.Random(7)
    first = Exporter(storage, log)
    try:
        assert wait_until(first.scored, timeout=60, what="first start scores") == SERIES
        models = sorted((storage / "models").glob("*.npz"))
        assert len(models) == RULES and (storage / "alerts.json").exists()
    finally:
        first.kill()
    # kill -9 again and again at random moments: during start-up, restore, history load, fit, saves
    for _ in range(6):
        e = Exporter(storage, log)
        time.sleep(rng.uniform(0.05, 1.5))
        assert e.proc.poll() is None, f"exited on its own:\n{log.read_text()[-3000:]}"
        e.kill()
    # a clean restart after all that: ready from the saved models, no refit needed to score
    started = time.monotonic()
    e = Exporter(storage, log)
    try:
        assert wait_until(e.scored, timeout=60, what="restart scores") == SERIES
        took = time.monotonic() - started
        text = log.read_text()
        assert text.count("restored the model") >= RULES
        assert "Traceback" not in text
        assert not list(storage.rglob("*.tmp"))  # leftovers of writes cut short are cleaned up
        assert took < 30
    finally:
        assert e.stop() == 0
    # torn and corrupt state: truncate every model, garble the alert state
    for path in (storage / "models").glob("*.npz"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    (storage / "alerts.json").write_bytes(b'{"format": "prometheus-anomaly-exporter-state", "kind": ')
    e = Exporter(storage, log)
    try:
        assert wait_until(e.scored, timeout=60, what="restart after corruption scores") == SERIES
        text = log.read_text()
        assert text.count("ignoring saved model") >= RULES and "ignoring state file" in text
        # the corrupt files were replaced by good ones after the refit
        wait_until(
            lambda: all(p.stat().st_size > 1000 for p in (storage / "models").glob("*.npz")) or None,
            timeout=30,
            what="models saved again",
        )
    finally:
        assert e.stop() == 0
    assert os.path.getsize(log) > 0
