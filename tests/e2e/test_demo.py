"""The seed demo for real: `dtabproxy demo --check` starts hello, world-v1, world-v2 and
the proxy as processes; hello calls world through the proxy, so the override reaches
world-v2 only by travelling as l5d-ctx-dtab."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_check_shows_the_staging_walkthrough() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--check", "--any-ports"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Hello (127.0.0.1) world (127.0.0.1)!!" in proc.stdout
    assert "Hello (127.0.0.1) earth (127.0.0.1)!!" in proc.stdout
