"""`python -m bench compare A.json B.json`: what changed between two runs.

For every (target, scenario) measured in both runs: the metric in A, in B, and the
change, with a verdict that accounts for the metric's direction (more req/s is
better, more latency or memory is worse). Also says when the machines or the settings
differ, since a change of machine explains a change of figures. Reads files only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .report import METRIC_KEY, _grid

NOISE = 0.05  # changes within 5% are reported as noise: run-to-run spread on a shared VM


def load(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        doc: dict[str, Any] = json.load(f)
    if "results" not in doc or "scenarios" not in doc:
        raise SystemExit(f"{path}: not a bench result file")
    return doc


def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    out = []
    for key in ("cpu_model", "cores", "kernel", "python"):
        va, vb = a["machine"].get(key), b["machine"].get(key)
        if va != vb:
            out.append(f"machine differs: {key} {va!r} -> {vb!r}")
    for key in ("mode", "duration_s", "reps"):
        va, vb = a["settings"].get(key), b["settings"].get(key)
        if va != vb:
            out.append(f"settings differ: {key} {va!r} -> {vb!r}")
    if a.get("backend", {}).get("kind") != b.get("backend", {}).get("kind"):
        out.append(f"backend differs: {a['backend'].get('kind')} -> {b['backend'].get('kind')}")

    def index(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["target"], r["scenario"]): r for r in doc["results"]}

    ia, ib = index(a), index(b)
    rows = []
    for k in sorted(set(ia) | set(ib), key=lambda k: (k[1], k[0])):
        target, scenario = k
        sc = b["scenarios"].get(scenario) or a["scenarios"].get(scenario)
        mkey = METRIC_KEY[sc["metric"]]
        ra, rb = ia.get(k), ib.get(k)
        va = ra["median"].get(mkey) if ra and ra["status"] == "ok" else None
        vb = rb["median"].get(mkey) if rb and rb["status"] == "ok" else None
        if va is None or vb is None:
            sa = ra["status"] if ra else "absent"
            sb = rb["status"] if rb else "absent"
            if sa != sb:
                rows.append([scenario, target, mkey, _v(va, sa), _v(vb, sb), "-", f"{sa} -> {sb}"])
            continue
        change = (vb - va) / va if va else 0.0
        better = change > 0 if sc["metric"] == "rps" else change < 0
        verdict = "noise" if abs(change) < NOISE else "better" if better else "WORSE"
        rows.append([scenario, target, mkey, _v(va), _v(vb), f"{change:+.1%}", verdict])
    if rows:
        out.append(_grid(["scenario", "target", "metric", "A", "B", "change", "verdict"], rows, {3, 4, 5}))
    else:
        out.append("no (target, scenario) pair in common")
    return "\n".join(out) + "\n"


def _v(v: float | None, status: str = "") -> str:
    if v is None:
        return status or "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}"


def main(a_path: str, b_path: str) -> int:
    print(f"A: {a_path}\nB: {b_path}")
    print(compare(load(a_path), load(b_path)), end="")
    return 0
