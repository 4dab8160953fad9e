"""Smoke test of `python -m bench.attack`: a small run of both default attacks against
the proxy process, end to end. It checks the result's shape and the proxy's answers
(GOAWAY codes, the connection closed), never a latency or a memory figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 300  # not a performance bound: only stops a wedged run from blocking the suite


def test_attack_bench_runs_and_reports_each_attack(tmp_path: Path) -> None:
    out = tmp_path / "attack.json"
    argv = [sys.executable, "-m", "bench.attack", "--pairs", "1000", "--frames", "20000", "--wait", "20",
            "--settle", "0.2", "--json", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["attack"].split(":")[0] for r in results] == ["rapid reset", "CONTINUATION flood"]
    for r in results:
        for key in ("upstream_connections", "bystander_worst_ms", "rss_growth_mib", "goaway", "proxy_running"):
            assert key in r, key
        assert r["goaway"].startswith("ENHANCE_YOUR_CALM") and r["closed_by_proxy"]
        assert r["proxy_running"] and "bystander_requests" in r
    assert "upstream connections opened" in proc.stdout
