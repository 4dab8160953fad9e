"""Smoke test of `python -m bench.k8s`: a tiny run end to end (3 endpoint changes, 20
services churned for half a second); checks the result's shape and that the figures
are positive. It asserts nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_bench_k8s_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "k8s.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.k8s", "--changes", "3", "--services", "20", "--churn-s", "0.5", "--rate", "50",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    prop, namer = data["propagation"], data["namer"]
    assert prop["changes"] == 3 and 0 < prop["min_ms"] <= prop["p50_ms"] <= prop["max_ms"]
    assert namer["services"] == 20 and namer["changes"] > 0 and namer["cpu_s_per_s"] > 0
    assert namer["rss_kib_synced"] > 0 and namer["rss_kib_after_churn"] > 0
    assert "first request on the new address" in proc.stdout
