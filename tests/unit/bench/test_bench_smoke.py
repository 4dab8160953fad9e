"""Smoke test of the benchmark harness: a tiny quick run, end to end, no apt packages.

Runs `python -m bench --quick` restricted to the built-in backend, the direct target
(and dtabproxy when it starts) and the built-in Python load generator, for about a
second per scenario; checks the result file's shape, that every measured figure is a
positive number, and that the table was printed. It asserts nothing about speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
HANG_GUARD_S = 300  # not a performance bound: only stops a wedged run from blocking the suite


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out_dir = tmp_path_factory.mktemp("bench-results")
    argv = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--targets",
        "direct,dtabproxy",
        "--scenarios",
        "h1-max,h1-rate,idle-conns,h2c-rate,idle-conns-h2c",
        "--backend",
        "builtin",
        "--loadgen",
        "python",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--idle-conns",
        "50",
        "--out",
        str(out_dir),
        "--no-chart",
    ]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out_dir.glob("*-quick*.json"))
    assert len(files) == 1, (files, proc.stdout[-2000:])
    return json.loads(files[0].read_text()), proc.stdout


def _positive_numbers(d: dict[str, Any], keys: tuple[str, ...]) -> None:
    for k in keys:
        v = d[k]
        assert isinstance(v, int | float) and math.isfinite(v) and v > 0, (k, v)


def test_document_has_every_section(run: tuple[dict[str, Any], str]) -> None:
    doc, _ = run
    for key in (
        "schema",
        "started",
        "finished",
        "settings",
        "machine",
        "cpu_plan",
        "loadgens",
        "backend",
        "targets",
        "scenarios",
        "results",
    ):
        assert key in doc, key
    assert doc["settings"]["mode"] == "quick"
    assert doc["backend"]["kind"] == "builtin"
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["python"]
    assert set(doc["scenarios"]) == {"h1-max", "h1-rate", "idle-conns", "h2c-rate", "idle-conns-h2c"}
    assert doc["targets"]["direct"]["status"] == "ok"


def test_direct_figures_are_positive(run: tuple[dict[str, Any], str]) -> None:
    doc, _ = run
    rows = {r["scenario"]: r for r in doc["results"] if r["target"] == "direct"}
    assert set(rows) == {"h1-max", "h1-rate", "idle-conns", "h2c-rate", "idle-conns-h2c"}
    for name in ("h1-max", "h1-rate", "h2c-rate"):
        r = rows[name]
        assert r["status"] == "ok", r
        assert r["reps"] and r["loadgen"].startswith("bench.pyload")
        _positive_numbers(r["median"], ("rps", "p50_ms", "p99_ms", "p999_ms", "requests"))
        assert r["median"]["p50_ms"] <= r["median"]["p99_ms"] <= r["median"]["p999_ms"]
        assert r["vs_direct"] == 1.0
    _positive_numbers(rows["h1-max"]["median"], ("cpu_us_per_req",))  # the backend's CPU per request
    for name in ("idle-conns", "idle-conns-h2c"):
        idle = rows[name]
        assert idle["status"] == "ok", idle
        assert idle["median"]["conns"] == 50
        _positive_numbers(idle["median"], ("rss_before_kib", "rss_after_kib"))
    assert rows["idle-conns-h2c"]["reps"][0]["loadgen"] == "pyload-idle-h2"


def test_dtabproxy_is_measured_or_skipped_with_a_reason(run: tuple[dict[str, Any], str]) -> None:
    doc, _ = run
    t = doc["targets"]["dtabproxy"]
    rows = {r["scenario"]: r for r in doc["results"] if r["target"] == "dtabproxy"}
    if t["status"] != "ok":
        assert t["reason"], t
        assert all(r["status"] == "skipped" and r["reason"] for r in rows.values())
        return
    r = rows["h1-max"]
    assert r["status"] == "ok", r
    _positive_numbers(r["median"], ("rps", "p50_ms", "p99_ms", "cpu_us_per_req"))
    _positive_numbers(r, ("vs_direct",))
    r = rows["h2c-rate"]  # the h2c open-loop client through the proxy, and its added latency
    assert r["status"] == "ok", r
    assert r["median"]["errors"] == 0 and r["median"]["requests"] > 0
    assert set(r["added_ms"]) == {"p50_ms", "p99_ms", "p999_ms"}
    assert rows["idle-conns-h2c"]["status"] == "ok" and rows["idle-conns-h2c"]["median"]["conns"] == 50


def test_table_is_printed(run: tuple[dict[str, Any], str]) -> None:
    _, stdout = run
    lines = stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("target ") and "req/s" in ln)
    for col in ("scenario", "CPU µs/req", "p50 ms", "p99 ms", "x direct", "x envoy"):
        assert col in header
    assert any(ln.startswith("direct ") and "h1-max" in ln for ln in lines)
    assert "Idle keep-alive connections" in stdout
    assert "results: " in stdout


@pytest.mark.parametrize("script", ["wire_h1", "wire_h2", "rules_h1"])
def test_the_wire_micro_benchmarks_still_drive_the_data_plane(script: str) -> None:
    """bench/micro builds routers and listeners by hand (Runtime.bare): a change to the
    runtime must not silently break the figures the closing notes are made of."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", f"bench.micro.{script}", "--iterations", "3"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
