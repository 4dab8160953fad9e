"""What is measured: the scenarios, and how one (target, scenario) measurement is taken.

Each scenario names the protocol it needs (h1, h2c, grpc), its load shape (max rate,
fixed rate, idle connections), the load generator it prefers and its fallback, and
the metric its ratios are taken on. Measuring one pair is a single bounded child
process (or, for idle connections, a held one plus two RSS readings). This module
must not start or stop targets; the runner does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import loadgen, procs

# The per-request override the dtab scenarios send: three entries that do not touch
# /svc, so the route is the same and only the parse-and-overlay cost shows.
L5D_DTAB = "l5d-dtab: /a=>/b;/c=>/d;/e=>/f"
CONNS = 50  # the "max rate (50 connections)"
FIXED_RATE = 1000.0  # req/s of the fixed-rate scenarios
RATE_POOL = 8  # connections the fixed-rate generator opens before the first request
HOSTS_ROTATED = 10_000  # distinct Host names of the dentries scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    protocol: str  # h1 | h2c | grpc
    kind: str  # max | rate | idle
    metric: str  # rps (higher is better) | p99 (lower) | kib_per_conn (lower)
    path: str = "/"
    headers: tuple[str, ...] = ()
    conns: int = CONNS
    streams: int = 1
    hosts: int = 0
    variant: str | None = None  # a dedicated target instance (dtabproxy's table size)
    targets: tuple[str, ...] = ()  # the only targets measured (empty: all)
    reps_factor: int = 1  # this many times the run's repetitions
    duration_s: float = 0.0  # at most this long a measurement (0: the run's duration)
    #: Each other target is measured at the same moment as this one, both on the proxy CPU,
    #: each under its own load generator with half the connections (runner.py `_pairs`).
    pair_with: str | None = None
    quick: bool = True
    notes: tuple[str, ...] = field(default=())


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("h1-max", "HTTP/1.1 keep-alive GET, max rate, 50 connections", "h1", "max", "rps"),
    Scenario("h1-rate", "HTTP/1.1 GET at a fixed 1,000 req/s (open loop)", "h1", "rate", "p99"),
    Scenario(
        "h1-dtab-max", "as h1-max with a 3-entry l5d-dtab header", "h1", "max", "rps", headers=(L5D_DTAB,)
    ),
    Scenario(
        "h1-dtab-rate",
        "as h1-rate with a 3-entry l5d-dtab header",
        "h1",
        "rate",
        "p99",
        headers=(L5D_DTAB,),
        quick=False,
    ),
    Scenario(
        "h1-64k", "HTTP/1.1 GET of a 64 KiB body, max rate, 50 connections", "h1", "max", "rps", path="/64k"
    ),
    Scenario("h2c-conns", "h2c GET, 50 connections x 1 stream", "h2c", "max", "rps", quick=False),
    Scenario(
        "h2c-mux", "h2c GET, 1 connection x 64 concurrent streams", "h2c", "max", "rps", conns=1, streams=64
    ),
    Scenario(
        "h2c-5x20", "h2c GET, 5 connections x 20 concurrent streams", "h2c", "max", "rps",
        conns=5, streams=20, quick=False,
    ),
    Scenario("h2c-rate", "h2c GET at a fixed 1,000 req/s (open loop)", "h2c", "rate", "p99", quick=False),
    Scenario(
        "grpc-unary",
        "gRPC unary (empty message), 5 connections x 10 streams",
        "grpc",
        "max",
        "rps",
        conns=5,
        streams=10,
    ),
    # The shapes issue 5 asks for: one connection with 10 concurrent streams, and 50
    # connections with one stream each, for h2c GET and gRPC unary.
    Scenario(
        "h2c-1x10", "h2c GET, 1 connection x 10 concurrent streams", "h2c", "max", "rps",
        conns=1, streams=10, quick=False,
    ),
    Scenario(
        "grpc-1x10", "gRPC unary, 1 connection x 10 concurrent streams", "grpc", "max", "rps",
        conns=1, streams=10, quick=False,
    ),
    Scenario(
        "grpc-50x1", "gRPC unary, 50 connections x 1 stream", "grpc", "max", "rps",
        conns=50, streams=1, quick=False,
    ),
    # Every core (issue 13): dtabproxy with one worker per CPU (`--workers auto`) against
    # one worker, both allowed on every CPU the run has (the load generator and the
    # backend stay on theirs), so only the worker count differs between the two rows.
    # On a 2-core machine the workers share a core with the load generator and the
    # backend: the speedup is bounded by that, and the report says so.
    Scenario(
        "h1-workers-1", "as h1-max, dtabproxy with 1 worker allowed on every CPU", "h1", "max", "rps",
        variant="workers-1", quick=False,
    ),
    Scenario(
        "h1-workers", "as h1-max, dtabproxy with --workers auto (one per CPU), on every CPU", "h1", "max", "rps",
        variant="workers-auto", quick=False,
    ),
    # What the access log costs (issue 14: at most 5% of HTTP/1.1 throughput): dtabproxy
    # without and with its log (combined, JSON lines), each pair at the same moment on the
    # proxy CPU (they share it, so the ratio of the requests they serve is the ratio of
    # their costs, whatever the machine's speed then), five times the repetitions of 2 s.
    Scenario(
        "h1-accesslog", "dtabproxy without and with its access log (combined, JSON), each pair at once on one core",
        "h1", "max", "rps", targets=("dtabproxy", "dtabproxy-log", "dtabproxy-log-json"), reps_factor=5,
        duration_s=2.0, pair_with="dtabproxy", quick=False,
    ),
    Scenario("idle-conns", "idle keep-alive connections: RSS per connection", "h1", "idle", "kib_per_conn"),
    Scenario(
        "idle-conns-h2c", "idle h2c connections (one GET stream each, then idle): RSS per connection", "h2c",
        "idle", "kib_per_conn",
    ),
    Scenario(
        "dentries-10",
        "h1 max rate, Host over 10,000 names, dtab of 10 dentries",
        "h1",
        "max",
        "rps",
        hosts=HOSTS_ROTATED,
        variant="dentries-10",
    ),
    Scenario(
        "dentries-10k",
        "h1 max rate, Host over 10,000 names, dtab of 10,000 dentries",
        "h1",
        "max",
        "rps",
        hosts=HOSTS_ROTATED,
        variant="dentries-10000",
    ),
)
BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass
class LoadPlan:
    """Which generator each load shape uses on this machine, and why."""

    force_python: bool
    tools: dict[str, str | None]
    cpu: int | None
    workdir: Path
    idle_conns: int

    def generator(self, s: Scenario) -> tuple[str | None, str]:
        """(generator, note); generator None means the scenario cannot run here."""
        if s.kind == "rate":
            if s.protocol == "h2c":
                return "pyload", "bench.pyload h2rate open loop (h2load has no omission-free fixed rate)"
            return "pyload", "bench.pyload open loop (wrk has no fixed-rate mode)"
        if s.kind == "idle":
            return "pyload", "bench.pyload idle-h2" if s.protocol == "h2c" else "bench.pyload idle"
        if s.protocol == "h1":
            if self.tools.get("wrk") and not self.force_python:
                return "wrk", "wrk -t1"
            return "pyload", "bench.pyload closed loop: " + loadgen.PYLOAD_LIMITS
        if s.protocol == "h2c":
            if self.tools.get("h2load") and not self.force_python:
                return "h2load", "h2load -t1"
            return None, "needs h2load (apt-get install -y nghttp2-client); there is no Python h2c generator"
        if s.protocol == "grpc":
            if self.tools.get("h2load") and not self.force_python:
                return "h2load", "h2load -t1 with a gRPC body"
            try:
                import grpc  # noqa: F401
            except ImportError:
                return None, "needs h2load (nghttp2-client) or grpcio"
            return "pyload", "grpcio client in bench.pyload (closed loop; slower than h2load)"
        return None, f"unknown protocol {s.protocol}"

    def measure(self, s: Scenario, port: int, duration_s: float) -> dict[str, object]:
        gen, _ = self.generator(s)
        if gen == "wrk":
            return loadgen.wrk(
                port,
                conns=s.conns,
                duration_s=duration_s,
                path=s.path,
                headers=s.headers,
                hosts=s.hosts,
                cpu=self.cpu,
                workdir=self.workdir,
            )
        if gen == "h2load":
            return loadgen.h2load(
                port,
                conns=s.conns,
                streams=s.streams,
                duration_s=duration_s,
                grpc=s.protocol == "grpc",
                cpu=self.cpu,
                workdir=self.workdir,
            )
        if s.kind == "rate":
            return loadgen.pyload(
                "h2rate" if s.protocol == "h2c" else "rate",
                port,
                duration_s=duration_s,
                cpu=self.cpu,
                conns=RATE_POOL,
                path=s.path,
                headers=s.headers,
                hosts=s.hosts,
                rate=FIXED_RATE,
            )
        if s.protocol == "grpc":
            return loadgen.pyload(
                "grpc",
                port,
                duration_s=duration_s,
                cpu=self.cpu,
                conns=s.conns,
                path="/bench.Bench/Unary",
                streams=s.streams,
            )
        return loadgen.pyload(
            "closed",
            port,
            duration_s=duration_s,
            cpu=self.cpu,
            conns=s.conns,
            path=s.path,
            headers=s.headers,
            hosts=s.hosts,
        )

    def measure_idle(self, port: int, rss_pid: int, protocol: str = "h1") -> dict[str, Any]:
        """RSS of the target's process tree before and after N idle connections."""
        before = _settled_rss(rss_pid)
        holder = loadgen.IdleHolder(port, self.idle_conns, self.cpu, mode="idle-h2" if protocol == "h2c" else "idle")
        try:
            ready: dict[str, Any] = holder.wait_ready(timeout_s=60 + self.idle_conns / 200)
            after = _settled_rss(rss_pid)
            result: dict[str, Any] = holder.release()
        finally:
            holder.kill()
        opened = int(ready["open"])
        if opened == 0:
            raise loadgen.LoadgenError(f"no idle connection could be opened ({ready.get('failed')} failed)")
        return {
            "conns": opened,
            "failed": int(ready["failed"]),
            "alive_at_end": int(result.get("alive_at_end", 0)),
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_conn": round((after - before) / opened, 3),
            "loadgen": "pyload-idle-h2" if protocol == "h2c" else "pyload-idle",
        }


def _settled_rss(pid: int) -> int:
    """RSS once it stops moving (allocation after accept is not instant), bounded to 2 s."""
    last = procs.rss_kib(pid)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = procs.rss_kib(pid)
        if abs(now - last) <= max(64, last // 500):
            return now
        last = now
    return last
