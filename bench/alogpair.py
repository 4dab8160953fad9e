"""`python -m bench.alogpair`: what the access log costs, as two proxies sharing one core.

Two dtabproxy processes run at once on the proxy CPU: one without an access log, one with
(`--format combined` or `json`), each loaded by its own wrk at the same time (50
connections between them). The kernel gives the two processes equal shares of the core,
so the ratio of the requests they serve in a round is the ratio of their costs per request,
measured under the same conditions at the same moment: a machine whose speed drifts
between runs (this shared one moves 10-30%) moves both sides alike. `make bench`'s
`h1-accesslog` scenario measures the same pairs the same way, in shorter rounds.

    python -m bench.alogpair                       # combined, 6 rounds of 5 s
    python -m bench.alogpair --format json --rounds 10

Prints each round's requests and ratio (with the log / without) and the median. Traffic
goes to 127.0.0.1 only and every run is bounded by --rounds and --duration.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

from . import loadgen, machine, procs
from .targets import REPO, Ctx, DtabProxy, _py_env, make_backend


def _proxy(ctx: Ctx, fmt: str | None, cpu: int | None, tag: str) -> tuple[procs.Proc, int]:
    t = DtabProxy()
    t.access_log = fmt
    port = procs.free_port()
    cfg = ctx.workdir / f"dtabproxy-{tag}.yaml"
    cfg.write_text(t._config(ctx, {"h1": port}, procs.free_port(), None, with_h2=False))
    proc = procs.Proc(f"dtabproxy[{tag}]", [sys.executable, "-m", "proxy", "run", "-c", str(cfg)], cpu=cpu,
                      log_path=ctx.workdir / f"dtabproxy-{tag}.log")  # fmt: skip
    proc.start(env=_py_env(), cwd=str(REPO))
    proc.wait_port(port, timeout_s=60)
    return proc, port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.alogpair", description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", choices=("combined", "json"), default="combined")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    args = ap.parse_args(argv)
    if loadgen.tools().get("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk, or make bench installs it)", file=sys.stderr)
        return 1
    plan = machine.cpu_plan()
    with contextlib.suppress(OSError):
        if plan.client is not None:
            os.sched_setaffinity(0, {plan.client})
    ctx = Ctx(workdir=Path(tempfile.mkdtemp(prefix="dtabproxy-alogpair-")), plan=plan)
    backend, why = make_backend("auto")
    running: list[procs.Proc] = []
    try:
        backend.start(ctx)
        ctx.backend = backend
        off, off_port = _proxy(ctx, None, plan.proxy, "off")
        running.append(off)
        on, on_port = _proxy(ctx, args.format, plan.proxy, "on")
        running.append(on)
        print(f"backend: {backend.kind} ({why}); both proxies on CPU {plan.proxy}, each wrk -c25 on CPU {plan.client}; "
              f"the log: {args.format}")  # fmt: skip

        def load(port: int, seconds: float, out: dict[int, float]) -> None:
            m = loadgen.wrk(port, conns=25, duration_s=seconds, cpu=plan.client, workdir=ctx.workdir)
            n = m.get("requests")
            out[port] = float(n) if isinstance(n, int | float) else 0.0

        ratios = []
        for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
            got: dict[int, float] = {}
            seconds = 2.0 if r == 0 else args.duration
            threads = [threading.Thread(target=load, args=(p, seconds, got)) for p in (off_port, on_port)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if r == 0:
                continue
            if not got.get(off_port) or not got.get(on_port):
                print(f"round {r}: no requests counted ({got})", file=sys.stderr)
                return 1
            ratio = got[on_port] / got[off_port]
            ratios.append(ratio)
            print(f"round {r}: without {got[off_port]:,.0f}  with {got[on_port]:,.0f} requests  ratio {ratio:.3f}")
        print(f"median ratio (with the {args.format} log / without): {statistics.median(ratios):.3f} "
              f"over {len(ratios)} rounds of {args.duration:g} s")  # fmt: skip
        return 0
    finally:
        for p in reversed(running):
            p.stop()
        backend.stop()


if __name__ == "__main__":
    sys.exit(main())
