"""Smoke test of the fault runs: `python -m bench.faults --quick` end to end (the proxy as a
subprocess, real sockets on 127.0.0.1, small counts). Checks that every run ran and the
shape of what it printed and wrote; it asserts nothing about timing or failure counts
(those are measurements; tests/integration/test_failure_handling.py holds the behaviour)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
HANG_GUARD_S = 300  # not a performance bound: only stops a wedged run from blocking the suite
RUNS = "abcdefg"


def test_quick_fault_runs_print_the_table_and_write_the_results(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--quick", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("RUN "))
    assert lines[header].split() == ["RUN", "FAULT", "SENT", "2XX", "ERROR", "NO", "ANSWER", "MEASURED", "EXPECTED"]
    rows = lines[header + 1 : header + 1 + len(RUNS)]
    assert [r.split()[0] for r in rows] == list(RUNS)

    data = json.loads(out.read_text())
    assert data["mode"] == "quick"
    results = {r["run"]: r for r in data["results"]}
    assert sorted(results) == list(RUNS)
    for name, r in results.items():
        assert r["skipped"] is None, (name, r["skipped"])
        # Every request sent is counted exactly once, under one outcome.
        assert r["sent"] > 0 and r["ok"] + r["error"] + r["no_answer"] == r["sent"], (name, r)
        assert r["measured"] and r["expected"], name
        assert all(isinstance(v, int | float) for v in r["metrics"].values()), name
        assert any(ln.startswith(f"{name}: proxy counters: ") for ln in lines), name
    # Each run reports the proxy's own counters for its fault; where the fault decides
    # every request's fate, the proxy counted each one under its reason.
    assert {"requeues", "retries", "ejections", "endpoints{dead}"} <= set(results["a"]["metrics"])
    assert {"retries", "retry_budget_exhausted"} <= set(results["c"]["metrics"])
    assert results["d"]["metrics"]["deadline_exceeded{l5d-ctx-deadline}"] == results["d"]["sent"]
    assert results["e"]["metrics"]["deadline_exceeded{totalTimeoutMs}"] == results["e"]["sent"]
    assert results["g"]["metrics"]["deadline_exceeded{streamIdleTimeoutMs}"] == results["g"]["sent"]
