"""Smoke test of `python -m bench.alogpair` (two proxies, one with the access log, sharing a
core under wrk): one short round end to end. It checks that both proxies served requests
and that a ratio was printed; the ratio itself is a measurement, not asserted."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
HANG_GUARD_S = 180  # not a performance bound: only stops a wedged run from blocking the suite


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make bench installs it)")
def test_one_round_serves_requests_on_both_proxies_and_prints_the_ratio() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.alogpair", "--rounds", "1", "--duration", "1", "--format", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = re.search(r"round 1: without ([\d,]+)  with ([\d,]+) requests  ratio (\d+\.\d+)", proc.stdout)
    assert m is not None, proc.stdout
    assert int(m[1].replace(",", "")) > 0 and int(m[2].replace(",", "")) > 0
    assert "median ratio (with the json log / without)" in proc.stdout
