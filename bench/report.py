"""Results: ratios added to the run's document, the tables on stdout, the JSON file.

Ratios are taken on each scenario's metric: req/s for max-rate scenarios (higher is
better; 0.80 means 80% of the reference's throughput), p99 latency for fixed-rate
scenarios and KiB per idle connection (lower is better; 1.50 means 50% more). The
fixed-rate scenarios also get the latency the target adds over direct. This module
reads the document only; it must not measure anything.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from pathlib import Path
from typing import Any

#: The n/a reasons of targets and scenarios limited to each other on purpose (runner.py).
BY_DESIGN = ("measured in ", "this scenario measures ")
#: The targets that are dtabproxy with its access log on, and the log's format.
ACCESS_LOG_TARGETS = {"dtabproxy-log": "combined", "dtabproxy-log-json": "JSON lines"}

RESULTS_DIR = Path(__file__).resolve().parent / "results"
METRIC_KEY = {"rps": "rps", "p99": "p99_ms", "kib_per_conn": "kib_per_conn"}


def _median(doc: dict[str, Any], target: str, scenario: str) -> dict[str, Any] | None:
    for r in doc["results"]:
        if r["target"] == target and r["scenario"] == scenario and r["status"] == "ok":
            median: dict[str, Any] | None = r.get("median")
            return median
    return None


def enrich(doc: dict[str, Any]) -> dict[str, Any]:
    """Add `vs_direct`, `vs_envoy` (and `added_ms` for fixed rate) to every ok result."""
    for r in doc["results"]:
        if r["status"] != "ok":
            continue
        sc = doc["scenarios"][r["scenario"]]
        key = METRIC_KEY[sc["metric"]]
        mine = r["median"].get(key)
        for ref, field in (("direct", "vs_direct"), ("envoy", "vs_envoy")):
            other = _median(doc, ref, r["scenario"])
            if mine is not None and other and other.get(key):
                r[field] = round(mine / other[key], 3)
        if r["target"] in ACCESS_LOG_TARGETS:  # with the access log against without, pair by pair
            # each pair measured at the same moment (h1-accesslog's pair_with, runner._pairs)
            ratios = [m["ratio"] for m in r.get("reps") or [] if m.get("ratio")]
            cpu = [m["cpu_ratio"] for m in r.get("reps") or [] if m.get("cpu_ratio")]
            r["vs_no_log"] = round(statistics.median(ratios), 3) if ratios else None
            r["cpu_vs_no_log"] = round(statistics.median(cpu), 3) if cpu else None
        if r["scenario"] == "h1-workers":  # N workers against one, placed alike
            one = _median(doc, r["target"], "h1-workers-1")
            if mine is not None and one and one.get(key):
                r["vs_one_worker"] = round(mine / one[key], 3)
        if sc["kind"] == "rate":
            base = _median(doc, "direct", r["scenario"])
            if base:
                r["added_ms"] = {
                    q: round(r["median"][q] - base[q], 4)
                    for q in ("p50_ms", "p99_ms", "p999_ms")
                    if q in base
                }
    return doc


def _fmt(v: object, spec: str = ",.0f") -> str:
    if v is None:
        return "-"
    if isinstance(v, int | float):
        return format(v, spec)
    return str(v)


def _grid(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def tables(doc: dict[str, Any]) -> str:
    """The human summary: a main table, added latency at fixed rate, idle memory, skips."""
    order = {name: i for i, name in enumerate(doc["scenarios"])}
    results = sorted(doc["results"], key=lambda r: (order.get(r["scenario"], 99), r["target"] != "direct"))
    main, added, idle, other = [], [], [], []
    for r in results:
        sc = doc["scenarios"][r["scenario"]]
        if r["status"] != "ok":
            reason = r.get("reason", "")
            if r["status"] == "n/a" and reason.startswith(BY_DESIGN):
                continue  # a target or scenario limited to the others on purpose: nothing to report
            other.append([r["target"], r["scenario"], r["status"], reason[:150]])
            continue
        m = r["median"]
        if sc["kind"] == "idle":
            idle.append(
                [
                    r["target"],
                    r["scenario"],
                    _fmt(m.get("conns")),
                    _fmt(m.get("rss_before_kib", 0) / 1024, ".1f"),
                    _fmt(m.get("rss_after_kib", 0) / 1024, ".1f"),
                    _fmt(m.get("kib_per_conn"), ".2f"),
                    _fmt(r.get("vs_direct"), ".2f"),
                    _fmt(r.get("vs_envoy"), ".2f"),
                ]
            )
            continue
        note = []
        if m.get("errors"):
            note.append(f"{m['errors']:.0f} errors/rep")
        main.append(
            [
                r["target"],
                r["scenario"],
                _fmt(m.get("rps")),
                _fmt(m.get("cpu_us_per_req"), ".1f"),
                _fmt(m.get("p50_ms"), ".3f"),
                _fmt(m.get("p99_ms"), ".3f"),
                _fmt(m.get("p999_ms"), ".3f"),
                _fmt(r.get("vs_direct"), ".2f"),
                _fmt(r.get("vs_envoy"), ".2f"),
                ", ".join(note),
            ]
        )
        if sc["kind"] == "rate" and "added_ms" in r:
            a = r["added_ms"]
            added.append(
                [
                    r["target"],
                    r["scenario"],
                    _fmt(a.get("p50_ms"), "+.3f"),
                    _fmt(a.get("p99_ms"), "+.3f"),
                    _fmt(a.get("p999_ms"), "+.3f"),
                ]
            )
    parts = []
    mach = doc["machine"]
    parts.append(
        f"dtabproxy bench, {doc['settings']['mode']} mode, {doc['started']}: {mach['cores']} cores "
        f"({mach['cpu_model']}), load average {_loads(mach.get('load_average_start'))} at the start, "
        f"{_loads(mach['load_average'])} at the end, "
        f"kernel {mach['kernel']}, Python {mach['python']}; backend: {doc['backend'].get('kind')}; "
        f"{doc['cpu_plan']['note']}; {doc['settings']['reps']} rep(s) x {doc['settings']['duration_s']:g} s, "
        "medians shown"
    )
    if main:
        parts.append(
            _grid(
                [
                    "target",
                    "scenario",
                    "req/s",
                    "CPU µs/req",
                    "p50 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "x direct",
                    "x envoy",
                    "note",
                ],
                main,
                {2, 3, 4, 5, 6, 7, 8},
            )
        )
        parts.append(
            "x direct / x envoy: req/s ratio for max-rate scenarios (higher is better); "
            "p99 ratio for fixed-rate scenarios (*-rate, lower is better). CPU µs/req: the "
            "target's process tree's CPU time over the requests it served (direct: the backend's)."
        )
    if added:
        parts.append(
            "Added latency at a fixed 1,000 req/s (target minus direct, ms, coordinated-omission corrected):\n"
            + _grid(["target", "scenario", "+p50", "+p99", "+p99.9"], added, {2, 3, 4})
        )
    if idle:
        parts.append(
            "Idle keep-alive connections (VmRSS of the target's processes, before and after):\n"
            + _grid(
                ["target", "scenario", "conns", "RSS before MiB", "RSS after MiB", "KiB/conn", "x direct", "x envoy"],
                idle,
                {2, 3, 4, 5, 6, 7},
            )
        )
    d10 = _median(doc, "dtabproxy", "dentries-10")
    d10k = _median(doc, "dtabproxy", "dentries-10k")
    if d10 and d10k and d10.get("rps"):
        parts.append(f"dtabproxy with 10,000 dentries vs 10: {d10k['rps'] / d10['rps']:.2f}x the req/s")
    off = _median(doc, "dtabproxy", "h1-accesslog")
    for target, label in ACCESS_LOG_TARGETS.items():
        on = _median(doc, target, "h1-accesslog")
        row: dict[str, Any] = next(
            (r for r in doc["results"] if r["target"] == target and r["scenario"] == "h1-accesslog"), {}
        )
        if off and on and off.get("rps") and on.get("rps") and row.get("vs_no_log"):
            cpu = ""
            if row.get("cpu_vs_no_log"):
                cpu = f", CPU per request {row['cpu_vs_no_log']:.3f}x"
            parts.append(
                f"access log ({label}; {target} vs dtabproxy in h1-accesslog, both on one core at once): "
                f"median of the per-pair ratios {row['vs_no_log']:.3f}x the req/s{cpu} "
                f"(medians {on['rps']:,.0f} vs {off['rps']:,.0f} req/s on half a core each, {len(row.get('reps') or [])} pairs)"
            )
    w1 = _median(doc, "dtabproxy", "h1-workers-1")
    wn = _median(doc, "dtabproxy", "h1-workers")
    if w1 and wn and w1.get("rps"):
        cpus = len(doc.get("cpu_plan", {}).get("all_cpus") or ()) or "?"
        parts.append(
            f"dtabproxy with one worker per CPU vs one worker, both on all {cpus} CPUs (h1-workers): "
            f"{wn['rps']:,.0f} vs {w1['rps']:,.0f} req/s, {wn['rps'] / w1['rps']:.2f}x; the load generator "
            "and the backend run on one of those CPUs, so the workers share it with them"
        )
    if other:
        # One line per (scenario, status, reason): five targets without a dtab need one line.
        grouped: dict[tuple[str, str, str], list[str]] = {}
        for target, scenario, status, reason in other:
            grouped.setdefault((scenario, status, reason), []).append(target)
        lines = [[", ".join(ts), sc, st, why] for (sc, st, why), ts in grouped.items()]
        parts.append("Not measured:\n" + _grid(["targets", "scenario", "status", "reason"], lines, set()))
    gens = {r["loadgen"] for r in doc["results"] if r.get("loadgen", "").startswith("bench.pyload closed")}
    if gens:
        parts.append("Note: " + doc["loadgens"]["python_limits"] + ".")
    return "\n\n".join(parts) + "\n"


def _loads(values: list[float] | None) -> str:
    return "/".join(f"{x:.2f}" for x in values) if values else "?"


def write_json(doc: dict[str, Any], out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{stamp}-{doc['settings']['mode']}.json"
    n = 1
    while path.exists():  # two runs in one second (the smoke test) must not overwrite
        n += 1
        path = out_dir / f"{stamp}-{doc['settings']['mode']}-{n}.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path
