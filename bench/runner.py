"""One benchmark run, start to finish: backend, targets, scenarios, results document.

Order of work: raise the descriptor limit, pin ourselves to the client core, start the
backend and every target (each proxy alone on the proxy core), probe each protocol,
then per scenario warm every target up and measure the repetitions interleaved
(A B C A B C ...) so that drift on the machine spreads over all targets alike. Every
step has a deadline, the whole run has a time budget, and everything started is
stopped in a `finally`. This module must not format tables or draw (report, chart).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import loadgen, machine, procs
from .scenarios import BY_NAME, SCENARIOS, LoadPlan, Scenario
from .targets import ALL_TARGETS, Ctx, Instance, Target, make_backend

log = logging.getLogger(__name__)

SCHEMA = 1


@dataclass
class Settings:
    mode: str  # quick | full
    duration_s: float
    warmup_s: float
    reps: int
    idle_conns: int
    budget_s: float
    targets: tuple[str, ...]
    scenarios: tuple[str, ...]
    loadgen: str = "auto"  # auto | python
    backend: str = "auto"  # auto | nginx | builtin
    keep_workdir: bool = False


def defaults(mode: str) -> Settings:
    if mode == "quick":
        # 6 targets x 9 scenarios x (0.5 s warm-up + 2 s) plus start-up: under 4 minutes.
        return Settings(
            mode,
            duration_s=2.0,
            warmup_s=0.5,
            reps=1,
            idle_conns=2000,
            budget_s=230,
            targets=tuple(ALL_TARGETS),
            scenarios=tuple(s.name for s in SCENARIOS if s.quick),
        )
    # 6 targets x 22 scenarios x 3 interleaved repetitions of 4 s: about 22 minutes.
    return Settings(
        mode,
        duration_s=4.0,
        warmup_s=1.0,
        reps=3,
        idle_conns=10_000,
        budget_s=30 * 60,
        targets=tuple(ALL_TARGETS),
        scenarios=tuple(s.name for s in SCENARIOS),
    )


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Row:
    """One (target, scenario) cell of the results."""

    __slots__ = ("target", "scenario", "status", "reason", "reps", "errors", "loadgen")

    def __init__(self, target: str, scenario: str) -> None:
        self.target = target
        self.scenario = scenario
        self.status = "ok"  # ok | n/a | skipped | failed
        self.reason = ""
        self.reps: list[dict[str, object]] = []
        self.errors: list[str] = []
        self.loadgen = ""

    def mark(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason

    def median(self) -> dict[str, float]:
        keys = [k for k, v in (self.reps[0].items() if self.reps else ()) if isinstance(v, int | float)]
        return {k: statistics.median(float(r[k]) for r in self.reps if k in r) for k in keys}  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"target": self.target, "scenario": self.scenario, "status": self.status}
        if self.reason:
            d["reason"] = self.reason
        if self.reps:
            d["loadgen"] = self.loadgen
            d["reps"] = self.reps
            d["median"] = self.median()
        if self.errors:
            d["rep_errors"] = self.errors
        return d


def run(settings: Settings) -> dict[str, object]:
    t_start = time.monotonic()
    deadline = t_start + settings.budget_s
    # SIGTERM (a CI timeout, `kill`) must still reach the `finally` that stops every
    # child: they run in sessions of their own and would otherwise outlive us.
    signal.signal(signal.SIGTERM, _terminated)
    started = dt.datetime.now(dt.UTC)
    nofile = procs.raise_nofile()
    plan = machine.cpu_plan()
    if plan.client is not None:
        try:
            os.sched_setaffinity(0, {plan.client})  # the harness stays off the proxy core
        except OSError:
            pass
    tools = loadgen.tools()
    workdir = Path(tempfile.mkdtemp(prefix="dtabproxy-bench-"))
    os.chmod(workdir, 0o755)  # nginx workers (user nobody when run as root) read files here
    ctx = Ctx(workdir=workdir, plan=plan)
    if settings.idle_conns + 200 > nofile[0]:
        settings.idle_conns = max(100, nofile[0] - 500)
        say(f"note: RLIMIT_NOFILE is {nofile[0]}; idle connections lowered to {settings.idle_conns}")
    lp = LoadPlan(
        force_python=settings.loadgen == "python",
        tools=tools,
        cpu=plan.client,
        workdir=workdir,
        idle_conns=settings.idle_conns,
    )
    say(f"bench: {settings.mode} mode; {plan.note}; work dir {workdir}")
    load_start = list(os.getloadavg())
    cores = os.cpu_count() or 1
    if load_start[0] > 0.5 * cores:
        say(
            f"warning: the machine is busy (load average {load_start[0]:.2f} on {cores} cores): "
            "figures will be noisy and lower than on an idle machine"
        )
    instances: dict[str, Instance] = {}
    targets_doc: dict[str, dict[str, object]] = {}
    rows: list[Row] = []
    backend_doc: dict[str, object] = {}
    try:
        backend, why = make_backend(settings.backend)
        try:
            backend.start(ctx)
            backend.check()
        except Exception as exc:  # a broken nginx must not end the run: fall back, say why
            backend.stop()
            if backend.kind == "builtin" or settings.backend == "nginx":
                raise
            say(f"backend nginx failed ({exc}); using the built-in backend")
            from .targets import BuiltinBackend

            backend, why = BuiltinBackend(), f"nginx failed to start: {exc}"
            backend.start(ctx)
            backend.check()
        ctx.backend = backend
        backend_doc = {**backend.describe(), "why": why}
        say(f"backend: {backend.kind} ({why})")

        objs: dict[str, Target] = {}
        for name in settings.targets:
            t = ALL_TARGETS[name]()
            objs[name] = t
            reason = t.unavailable()
            if reason is not None:
                targets_doc[name] = {"status": "skipped", "reason": reason, "title": t.title}
                say(f"target {name}: skipped: {reason}")
                continue
            try:
                inst = t.start(ctx)
                t.probe(inst)
            except procs.ProcError as exc:
                targets_doc[name] = {
                    "status": "failed",
                    "reason": f"did not start: {exc}",
                    "title": t.title,
                    "version": t.version,
                }
                say(f"target {name}: failed to start: {exc}")
                continue
            instances[name] = inst
            targets_doc[name] = {
                "status": "ok",
                "title": t.title,
                "version": t.version,
                "note": inst.note,
                "protocols": sorted(inst.ports),
                "unsupported": dict(inst.unsupported),
            }
            say(
                f"target {name}: ok ({t.version}); "
                + ", ".join(
                    [f"{p} on {port}" for p, port in inst.ports.items()]
                    + [f"{p} n/a" for p in inst.unsupported]
                )
            )

        for sname in settings.scenarios:
            s = BY_NAME[sname]
            rows += _run_scenario(s, settings, lp, ctx, objs, instances, targets_doc, deadline, t_start)
    finally:
        for inst in instances.values():
            inst.stop()
        if ctx.backend is not None:
            ctx.backend.stop()
        if not settings.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    finished = dt.datetime.now(dt.UTC)
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "argv": sys.argv,
        "settings": asdict(settings),
        "machine": {**machine.info(_tool_paths(tools)), "load_average_start": load_start},
        "cpu_plan": asdict(plan),
        "loadgens": {
            "wrk": tools.get("wrk"),
            "h2load": tools.get("h2load"),
            "python": "bench.pyload (uvloop + httptools)",
            "python_limits": loadgen.PYLOAD_LIMITS,
            "forced_python": settings.loadgen == "python",
        },
        "backend": backend_doc,
        "targets": targets_doc,
        "scenarios": {
            s.name: {
                "title": s.title,
                "protocol": s.protocol,
                "kind": s.kind,
                "metric": s.metric,
                "generator": lp.generator(s)[1],
            }
            for s in SCENARIOS
            if s.name in settings.scenarios
        },
        "results": [r.to_json() for r in rows],
    }


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _tool_paths(tools: dict[str, str | None]) -> dict[str, str | None]:
    from .targets import envoy_exe

    return {**tools, "nginx": procs.which("nginx"), "haproxy": procs.which("haproxy"), "envoy": envoy_exe()}


def _run_scenario(
    s: Scenario,
    settings: Settings,
    lp: LoadPlan,
    ctx: Ctx,
    objs: dict[str, Target],
    instances: dict[str, Instance],
    targets_doc: dict[str, dict[str, object]],
    deadline: float,
    t_start: float,
) -> list[Row]:
    rows = {name: Row(name, s.name) for name in settings.targets}
    gen, gen_note = lp.generator(s)
    live: dict[str, Instance] = {}
    own: list[Instance] = []  # instances started for this scenario only (table-size variants)
    for name, row in rows.items():
        tdoc = targets_doc[name]
        if tdoc["status"] != "ok":
            row.mark("skipped", f"target {tdoc['status']}: {tdoc.get('reason', '')}")
            continue
        if gen is None:
            row.mark("n/a", gen_note)
            continue
        only = objs[name].only
        if only is not None and s.name not in only:
            row.mark("n/a", f"measured in {', '.join(sorted(only))} only")
            continue
        if s.targets and name not in s.targets:
            row.mark("n/a", f"this scenario measures {', '.join(s.targets)} only")
            continue
        inst = instances[name]
        if s.variant is not None:
            if s.variant not in objs[name].variants:
                why = ("dtabproxy only: its worker count against itself" if s.variant.startswith("workers-")
                       else "no routing table to size (only dtabproxy routes by dtab)")  # fmt: skip
                row.mark("n/a", why)
                continue
            if time.monotonic() > deadline:
                row.mark("skipped", f"time budget of {settings.budget_s:.0f}s exhausted")
                continue
            try:
                inst = objs[name].start(ctx, s.variant)
            except procs.ProcError as exc:
                row.mark("failed", f"{s.variant} instance did not start: {exc}")
                continue
            own.append(inst)
        elif s.kind == "idle":
            # A fresh process for each idle measurement: RSS before and after then speak of
            # these connections only, not of what an earlier scenario (idle-conns before
            # idle-conns-h2c) left in the allocator to be reused.
            try:
                inst = objs[name].start(ctx, None)
            except procs.ProcError as exc:
                row.mark("failed", f"fresh instance did not start: {exc}")
                continue
            own.append(inst)
        if s.protocol not in inst.ports:
            row.mark("n/a", inst.unsupported.get(s.protocol, f"no {s.protocol} listener"))
            continue
        live[name] = inst
        row.loadgen = gen_note
    try:
        if s.kind == "idle":
            for name, inst in live.items():
                if time.monotonic() > deadline:
                    rows[name].mark("skipped", f"time budget of {settings.budget_s:.0f}s exhausted")
                    continue
                assert inst.rss_pid is not None
                try:
                    m = lp.measure_idle(inst.ports[s.protocol], inst.rss_pid, s.protocol)
                except (loadgen.LoadgenError, procs.ProcError) as exc:
                    rows[name].mark("failed", str(exc))
                    continue
                rows[name].reps.append(m)
                _progress(t_start, s, name, 1, 1, m)
        else:
            for name, inst in live.items():  # warm-up: JIT, caches, connection pools
                if time.monotonic() > deadline or settings.warmup_s <= 0:
                    break
                try:
                    lp.measure(s, inst.ports[s.protocol], settings.warmup_s)
                except (loadgen.LoadgenError, procs.ProcError) as exc:
                    rows[name].mark("failed", f"warm-up: {exc}")
            reps = settings.reps * s.reps_factor
            duration_s = min(settings.duration_s, s.duration_s) if s.duration_s else settings.duration_s
            if s.pair_with is not None:
                _pairs(s, lp, live, rows, reps, duration_s, deadline, t_start, settings)
                return list(rows.values())
            for rep in range(reps):
                for name, inst in live.items():  # interleaved: A B C A B C ...
                    row = rows[name]
                    if row.status != "ok":
                        continue
                    if time.monotonic() > deadline:
                        if not row.reps:
                            row.mark("skipped", f"time budget of {settings.budget_s:.0f}s exhausted")
                        continue
                    cpu0 = procs.cpu_s(inst.rss_pid) if inst.rss_pid is not None else None
                    try:
                        m = lp.measure(s, inst.ports[s.protocol], duration_s)
                        if cpu0 is not None and inst.rss_pid is not None and m.get("requests"):
                            # The target's own CPU per request (its whole process tree; for
                            # `direct`, the backend's): the cost, whoever was the bottleneck.
                            used = procs.cpu_s(inst.rss_pid) - cpu0
                            m["cpu_us_per_req"] = round(used * 1e6 / float(m["requests"]), 1)  # type: ignore[arg-type]
                    except (loadgen.LoadgenError, procs.ProcError) as exc:
                        row.errors.append(str(exc))
                        if len(row.errors) >= 2 or not row.reps and rep == reps - 1:
                            row.mark("failed", str(exc))
                        continue
                    if not m.get("requests"):
                        row.errors.append(f"no successful request ({m.get('errors')} errors)")
                        if len(row.errors) >= 2 or rep == reps - 1 and not row.reps:
                            row.mark("failed", row.errors[-1])
                        continue
                    row.reps.append(m)
                    _progress(t_start, s, name, rep + 1, reps, m)
    finally:
        for inst in own:
            inst.stop()
    for row in rows.values():
        if row.status == "ok" and not row.reps:
            row.mark("failed", "; ".join(row.errors) or "no measurement")
    return list(rows.values())


def _pairs(
    s: Scenario, lp: LoadPlan, live: dict[str, Instance], rows: dict[str, Row], reps: int, duration_s: float,
    deadline: float, t_start: float, settings: Settings,
) -> None:
    """`s.pair_with` and each other target at the same moment, rep by rep: both run on the
    proxy CPU (shared), each under its own load generator with half the connections. A
    pair's `ratio` (the other's requests over the base's) goes on the other's measurement;
    the base row keeps one measurement per pair."""
    base = s.pair_with
    assert base is not None
    half = replace(s, conns=max(1, s.conns // 2))
    others = [n for n in live if n != base and rows[n].status == "ok"]
    if base not in live or rows[base].status != "ok":
        for n in others:
            rows[n].mark("failed", f"{base}, the other side of each pair, did not run")
        return
    for rep in range(reps):
        for name in others:
            if time.monotonic() > deadline:
                if not rows[name].reps:
                    rows[name].mark("skipped", f"time budget of {settings.budget_s:.0f}s exhausted")
                continue
            got: dict[str, dict[str, object]] = {}
            errors: list[str] = []
            threads = [threading.Thread(target=_pair_side, args=(lp, half, live, n, duration_s, got, errors))
                       for n in (base, name)]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors or not got.get(base, {}).get("requests") or not got.get(name, {}).get("requests"):
                rows[name].errors.append("; ".join(errors) or "a side of the pair served no request")
                if len(rows[name].errors) >= 2:
                    rows[name].mark("failed", rows[name].errors[-1])
                continue
            on, off = got[name], got[base]
            on["ratio"] = round(float(on["requests"]) / float(off["requests"]), 4)  # type: ignore[arg-type]
            if on.get("cpu_us_per_req") and off.get("cpu_us_per_req"):
                on["cpu_ratio"] = round(float(on["cpu_us_per_req"]) / float(off["cpu_us_per_req"]), 4)  # type: ignore[arg-type]
            rows[base].reps.append(got[base])
            rows[name].reps.append(got[name])
            _progress(t_start, s, f"{name} | {base}", rep + 1, reps, got[name])


def _pair_side(lp: LoadPlan, s: Scenario, live: dict[str, Instance], name: str, duration_s: float,
               got: dict[str, dict[str, object]], errors: list[str]) -> None:  # fmt: skip
    """One side of a pair (a thread of its own): its measurement into `got`, or an error."""
    inst = live[name]
    cpu0 = procs.cpu_s(inst.rss_pid) if inst.rss_pid is not None else None
    try:
        m = lp.measure(s, inst.ports[s.protocol], duration_s)
    except (loadgen.LoadgenError, procs.ProcError) as exc:
        errors.append(f"{name}: {exc}")
        return
    if cpu0 is not None and inst.rss_pid is not None and m.get("requests"):
        used = procs.cpu_s(inst.rss_pid) - cpu0
        m["cpu_us_per_req"] = round(used * 1e6 / float(m["requests"]), 1)  # type: ignore[arg-type]
    got[name] = m


def _progress(t_start: float, s: Scenario, name: str, rep: int, reps: int, m: dict[str, object]) -> None:
    t = time.monotonic() - t_start
    if s.kind == "idle":
        what = f"{m['conns']} conns, {m['kib_per_conn']:.1f} KiB/conn"
    else:
        what = f"{m['rps']:,.0f} req/s p50 {m['p50_ms']:.3f} ms p99 {m['p99_ms']:.3f} ms"
        if m.get("errors"):
            what += f" ({m['errors']} errors)"
    say(f"[{t:5.0f}s] {s.name:<13} {name:<10} rep {rep}/{reps}: {what}")
