"""Instructions per request, counted by callgrind: the steadiest measure of the hot path here.

Times move by 10-30% between runs on a shared machine; instruction counts of the same build,
inputs and environment do not (valgrind counts them whatever else the machine is doing). This
starts the built-in backend, runs `python -m proxy run` under `valgrind --tool=callgrind` with
collection off, warms the proxy up, switches instrumentation on for N requests (h2load, by
default one connection, one stream at a time), switches it off, and divides. Everything the process does
while collecting counts: the parsers, routing, the upstream pool and the event loop's own wake-ups.

    python -m bench.icount                      # every shape, this checkout
    python -m bench.icount --shapes h1,h2c -n 5000
    python -m bench.icount --src /path/to/other/checkout   # the same shapes, another tree
    python -m bench.icount --shapes h1 --keep out/  # keep the callgrind file for callgrind_annotate
    python -m bench.icount --shapes h1 --access-log combined   # the access log's cost
    python -m bench.icount --shapes h2h1 --conns 5 --streams 20   # multiplexed, as h2c-5x20

Shapes: h1 (HTTP/1.1 to an HTTP/1.1 backend), h1-dtab (the same with a 3-entry l5d-dtab), h2c
(h2c to an h2c backend), grpc (gRPC unary, h2c to h2c), h2h1 (h2c clients, HTTP/1.1 backend).
Needs valgrind and h2load (Debian packages valgrind, nghttp2-client). Loopback only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import procs
from .probe import GRPC_PATH, GRPC_REQUEST

REPO = Path(__file__).resolve().parent.parent
SHAPES = ("h1", "h1-dtab", "h2c", "grpc", "h2h1")
L5D_DTAB = "l5d-dtab: /a=>/b;/c=>/d;/e=>/f"


def _config(admin: int, h1: int, h2c: int, h2h1: int, b_h1: int, b_h2: int, alog: str) -> str:
    return f"""\
admin:
  ip: 127.0.0.1
  port: {admin}
routers:
- protocol: http
  label: icount-h1
  identifier:
    kind: io.l5d.header.token
    header: Host
  dtab: |
    /svc => /$/inet/127.0.0.1/{b_h1};
{alog}  servers:
  - ip: 127.0.0.1
    port: {h1}
- protocol: h2
  label: icount-h2
  client:
    protocol: h2
  dtab: |
    /svc => /$/inet/127.0.0.1/{b_h2};
  servers:
  - ip: 127.0.0.1
    port: {h2c}
- protocol: h2
  label: icount-h2h1
  client:
    protocol: http
  dtab: |
    /svc => /$/inet/127.0.0.1/{b_h1};
  servers:
  - ip: 127.0.0.1
    port: {h2h1}
"""


def _h2load(shape: str, ports: dict[str, int], n: int, body: str, conns: int = 1, streams: int = 1) -> None:
    exe = shutil.which("h2load")
    if exe is None:
        sys.exit("icount: h2load is not installed (apt-get install nghttp2-client)")
    argv = [exe, "-n", str(n), "-c", str(conns), "-m", str(streams), "-t", "1", "-H", ":authority: bench"]
    if shape in ("h1", "h1-dtab"):
        argv.append("--h1")
        if shape == "h1-dtab":
            argv += ["-H", L5D_DTAB]
        uri = f"http://127.0.0.1:{ports['h1']}/"
    elif shape == "grpc":
        argv += ["-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers"]
        uri = f"http://127.0.0.1:{ports['h2c']}{GRPC_PATH}"
    elif shape == "h2c":
        uri = f"http://127.0.0.1:{ports['h2c']}/"
    else:
        uri = f"http://127.0.0.1:{ports['h2h1']}/"
    out = subprocess.run([*argv, uri], capture_output=True, text=True, timeout=600)
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out.stdout)
    if out.returncode != 0 or m is None or int(m.group(2)) != n:
        sys.exit(f"icount: h2load did not complete {n} requests for {shape}: {out.stdout[-400:]}{out.stderr[-400:]}")


def _total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def measure(
    src: Path, shapes: list[str], n: int, warmup: int, keep: Path | None, pure: bool, access_log: str | None = None,
    conns: int = 1, streams: int = 1,
) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="icount-"))
    body = work / "grpc.body"
    body.write_bytes(GRPC_REQUEST)
    b_h1, b_h2 = procs.free_port(), procs.free_port()
    ports = {k: procs.free_port() for k in ("h1", "h2c", "h2h1")}
    admin = procs.free_port()
    cfg = work / "icount.yaml"
    alog = f"  httpAccessLog: {work / 'access.log'}\n  httpAccessLogFormat: {access_log}\n" if access_log else ""
    cfg.write_text(_config(admin, ports["h1"], ports["h2c"], ports["h2h1"], b_h1, b_h2, alog))
    env = dict(os.environ, PYTHONPATH=str(src))
    if pure:
        env["DTABPROXY_PURE"] = "1"
    backend = subprocess.Popen(
        [sys.executable, "-m", "bench.backend", "--h1-port", str(b_h1), "--h2-port", str(b_h2)],
        cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out_file = work / "callgrind.out"
    proxy = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
         sys.executable, "-m", "proxy", "run", "-c", str(cfg)],
        cwd=str(src), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    result: dict[str, float] = {}
    try:
        procs.wait_port(b_h1, 30, alive=lambda: backend.poll() is None, what="backend")
        procs.wait_port(b_h2, 30, alive=lambda: backend.poll() is None, what="backend")
        for p in ports.values():
            procs.wait_port(p, 300, alive=lambda: proxy.poll() is None, what="proxy under valgrind")
        for shape in shapes:
            _h2load(shape, ports, warmup, str(body), conns, streams)
            subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
            _h2load(shape, ports, n, str(body), conns, streams)
            # Dump while instrumented: switching instrumentation off drops what was counted.
            before = set(work.glob("callgrind.out*"))
            subprocess.run(["callgrind_control", "-d", shape, str(proxy.pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
            dumps = set(work.glob("callgrind.out*")) - before
            if not dumps:  # the dump is written by the target between wake-ups
                deadline = time.monotonic() + 60
                while not dumps and time.monotonic() < deadline:
                    time.sleep(0.2)
                    dumps = set(work.glob("callgrind.out*")) - before
            dump = max(dumps, key=lambda p: p.stat().st_mtime)
            result[shape] = _total(dump) / n
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(dump, keep / f"callgrind.{shape}.out")
    finally:
        proxy.terminate()
        backend.terminate()
        for p in (proxy, backend):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.icount", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("-n", type=int, default=3000, help="requests counted per shape")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--src", type=Path, default=REPO, help="the checkout whose proxy runs")
    ap.add_argument("--pure", action="store_true", help="DTABPROXY_PURE=1 (the uncompiled sources)")
    ap.add_argument("--keep", type=Path, help="directory to keep the callgrind files in")
    ap.add_argument("--access-log", choices=("combined", "json"), help="the h1 router writes an access log")
    ap.add_argument("--conns", type=int, default=1, help="client connections (default 1)")
    ap.add_argument("--streams", type=int, default=1, help="requests in flight per connection (default 1: one at a time)")
    args = ap.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}; one of {', '.join(SHAPES)}")
    res = measure(
        args.src.resolve(), shapes, args.n, args.warmup, args.keep, args.pure, args.access_log, args.conns, args.streams
    )
    for s in shapes:
        print(f"{s:<8} {res[s]:>10,.0f} instructions/request")


if __name__ == "__main__":
    main()
