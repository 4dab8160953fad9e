"""`python -m bench.faults`: the fault runs of issue 11, counted, with real sockets on 127.0.0.1.

Each run starts dtabproxy as a subprocess (`python -m proxy run -c <config>`, one worker,
an admin port for its metrics) in front of backends made for the fault, sends a bounded
number of requests, counts each by outcome (sent, answered 2xx, error, no answer) and
prints one table row, then the proxy's own counters for the run (from its Prometheus
scrape). Every run is bounded in count and time; everything listens on 127.0.0.1 and
is stopped when the run ends.

    a  one dead endpoint of two (io.l5d.fs: a live backend and a port nothing listens on):
       GETs and POSTs at a steady rate over a few connections; expected: 0 failed
    b  two live backends, one killed (SIGKILL) a few seconds in: failures before the
       kill, in the first 2 s after it, and after that
    c  a backend that answers 503 to every GET, under io.l5d.http.retryableRead5XX:
       backend requests per client request vs 1 + percentCanRetry + the reserve
    d  an expired l5d-ctx-deadline: requests the backend saw (expected: 0)
    e  service.totalTimeoutMs 500 against a backend that answers after 2 s: time to the 503
    f  a 3 s gRPC server stream with an 8 s grpc-timeout through a router with
       timeoutMs 1000 (grpcio client and server): completes OK, and how long it took
    g  a response stalled mid-body under limits.streamIdleTimeoutMs 2000: time until the
       client sees the response cut

    python -m bench.faults                 # every run, about a minute
    python -m bench.faults --quick         # small counts, for the smoke test
    python -m bench.faults --runs a,c,e --json out.json

Exit status 0 when every run ran (whatever it measured); 1 when one could not run.
Expectations are printed beside the figures, never asserted: this measures, the tests
(tests/integration/test_failure_handling.py) check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .procs import Proc, ProcError, free_port, wait_port

REPO = Path(__file__).resolve().parent.parent
REQUEST_TIMEOUT_S = 10.0  # one request's answer; past it the request counts as "no answer"
RUN_TIMEOUT_S = 180.0  # one whole run; a run that takes longer is wedged, not slow
ROUTER = "faults"


# -- results ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request: when it was due and when it ended (seconds from the run's start),
    what came back."""

    due_s: float
    kind: str  # "2xx", "error" or "no answer"
    status: int = 0
    latency_s: float = 0.0
    end_s: float = 0.0


@dataclass
class RunResult:
    run: str
    title: str
    sent: int = 0
    ok: int = 0
    error: int = 0
    no_answer: int = 0
    measured: str = ""
    expected: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # the proxy's counters for the run
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def count(self, outcomes: list[Outcome]) -> None:
        self.sent += len(outcomes)
        for o in outcomes:
            if o.kind == "2xx":
                self.ok += 1
            elif o.kind == "error":
                self.error += 1
            else:
                self.no_answer += 1

    @property
    def failed(self) -> int:
        return self.error + self.no_answer


# -- backends (test peers in this process, on its loop) -----------------------------------------


class Backend:
    """An HTTP/1.1 backend in this process. `mode`: `ok` (200 with its name), `503`,
    `slow` (200 after `delay_s`), `stall` (a 200 head promising 100 bytes, 4 of them, then
    nothing). Counts the requests it saw, by method."""

    def __init__(self, name: str, mode: str = "ok", delay_s: float = 0.0) -> None:
        self.name = name
        self.mode = mode
        self.delay_s = delay_s
        self.seen: dict[str, int] = {}
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def requests(self) -> int:
        return sum(self.seen.values())

    async def start(self, port: int = 0) -> Backend:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method = head.split(b" ", 1)[0].decode("latin-1")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                self.seen[method] = self.seen.get(method, 0) + 1
                if self.mode == "stall":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf")
                    await writer.drain()
                    await reader.read()  # until the proxy gives up on this response
                    return
                if self.mode == "slow":
                    await asyncio.sleep(self.delay_s)  # the backend's pace: the scenario
                if self.mode == "503":
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
                else:
                    body = self.name.encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


class KillableBackend:
    """`bench.backend` in a process of its own, so it can be killed like a crashed server
    (SIGKILL: the kernel resets its connections and refuses new ones)."""

    def __init__(self, name: str, work: Path) -> None:
        self.port = free_port()
        self.proc = Proc(name, [sys.executable, "-m", "bench.backend", "--h1-port", str(self.port)], cpu=None,
                         log_path=work / f"{name}.log")  # fmt: skip

    async def start(self) -> KillableBackend:
        self.proc.start(cwd=str(REPO))
        await asyncio.get_running_loop().run_in_executor(None, self.proc.wait_port, self.port)
        return self

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this harness started

    def stop(self) -> None:
        self.proc.stop()


# -- the client ------------------------------------------------------------------------------


class H1Conn:
    """A keep-alive HTTP/1.1 client connection: one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> H1Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, host: str, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> tuple[int, bool]:  # fmt: skip
        """(status, closed): the answer, and whether the connection cannot be reused.
        Raises ConnectionError / IncompleteReadError when the answer is cut short."""
        lines = [f"{method} / HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length, chunked, close = None, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and value == b"chunked":
                chunked = True
            elif name == b"connection" and value == b"close":
                close = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length is not None:
            await self.reader.readexactly(length)
        else:
            await self.reader.read()
            close = True
        return status, close

    def close(self) -> None:
        self.writer.close()


async def one_request(conn_box: list[H1Conn | None], port: int, method: str, host: str,
                      headers: dict[str, str] | None, body: bytes) -> tuple[str, int]:  # fmt: skip
    """One request on the box's connection (opened when empty, dropped when it broke)."""
    try:
        conn = conn_box[0]
        if conn is None:
            conn = conn_box[0] = await H1Conn.open(port)
        status, close = await asyncio.wait_for(conn.request(method, host, headers, body), REQUEST_TIMEOUT_S)
    except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        if conn_box[0] is not None:
            conn_box[0].close()
            conn_box[0] = None
        return "no answer", 0
    if close:
        conn.close()
        conn_box[0] = None
    return ("2xx" if 200 <= status < 300 else "error"), status


async def steady(port: int, plan: list[tuple[str, bytes]], rate: float, conns: int, host: str = "web",
                 headers: dict[str, str] | None = None,
                 at: Callable[[float], Awaitable[None]] | None = None) -> list[Outcome]:  # fmt: skip
    """`plan` (method, body) sent at `rate` req/s, open loop: request i is due at
    t0 + i / rate and goes on connection i % conns as soon as that connection is free.
    Returns the outcomes in plan order. `at(t0)`: a coroutine run alongside, told when
    the schedule started (run b's kill)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out: list[Outcome | None] = [None] * len(plan)

    async def worker(k: int) -> None:
        box: list[H1Conn | None] = [None]
        for i in range(k, len(plan), conns):
            due = t0 + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule: open-loop pacing
            method, body = plan[i]
            start = loop.time()
            kind, status = await one_request(box, port, method, host, headers, body)
            end = loop.time()
            out[i] = Outcome(due - t0, kind, status, end - start, end - t0)
        if box[0] is not None:
            box[0].close()

    extra = [at(t0)] if at is not None else []
    await asyncio.gather(*(worker(k) for k in range(conns)), *extra)
    return [o for o in out if o is not None]


# -- the proxy -------------------------------------------------------------------------------


class Proxy:
    """dtabproxy from this tree, as a subprocess, with an admin port."""

    def __init__(self, work: Path, name: str, config: str) -> None:
        self.port = free_port()
        self.admin = free_port()
        path = work / f"{name}.yaml"
        path.write_text(config.replace("$PORT", str(self.port)).replace("$ADMIN", str(self.admin)))
        self.proc = Proc(f"dtabproxy-{name}", [sys.executable, "-m", "proxy", "run", "-c", str(path)], cpu=None,
                         log_path=work / f"dtabproxy-{name}.log")  # fmt: skip

    async def start(self) -> Proxy:
        self.proc.start(cwd=str(REPO))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.proc.wait_port, self.port, 30.0)
        await loop.run_in_executor(None, wait_port, self.admin, 30.0)
        return self

    def stop(self) -> None:
        self.proc.stop()

    async def metrics(self) -> dict[str, float]:
        """The proxy's scrape, summed over labels except `reason` and `state`:
        `name` or `name{reason}` -> value (for the runs' counters)."""

        def get() -> str:
            url = f"http://127.0.0.1:{self.admin}/admin/metrics/prometheus"
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())

        from prometheus_client.parser import text_string_to_metric_families

        text = await asyncio.get_running_loop().run_in_executor(None, get)
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            if not fam.name.startswith(("dtabproxy_service_client_", "dtabproxy_client_e")):
                continue
            for s in fam.samples:
                if s.name.endswith(("_bucket", "_sum", "_created")):
                    continue
                extra = s.labels.get("reason") or s.labels.get("state")
                key = f"{s.name}{{{extra}}}" if extra else s.name
                out[key] = out.get(key, 0.0) + s.value
        return out


def _router(dtab: str, extra: str = "", *, protocol: str = "http", namers: str = "") -> str:
    return (
        "admin: {ip: 127.0.0.1, port: $ADMIN, shutdownGraceMs: 1000}\n"
        f"{namers}"
        "routers:\n"
        f"- protocol: {protocol}\n  label: {ROUTER}\n"
        f"  dtab: {json.dumps(dtab)}\n"
        f"{extra}"
        "  servers:\n  - {ip: 127.0.0.1, port: $PORT}\n"
    )


def _fs_namer(root: Path) -> str:
    return f"namers:\n- kind: io.l5d.fs\n  rootDir: {json.dumps(str(root))}\n  pollIntervalMs: 200\n"


def _pick(metrics: dict[str, float], *keys: str) -> dict[str, float]:
    """The counters a run reports (0 when the family has no sample), by a short name."""
    out = {}
    for k in keys:
        short = k.replace("dtabproxy_service_client_", "").replace("dtabproxy_client_", "").replace("_total", "")
        out[short] = metrics.get(k, 0.0)
    return out


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# -- the runs --------------------------------------------------------------------------------


@dataclass
class Sizes:
    """Counts and times of every run (full or --quick)."""

    a_gets: int = 2000
    a_posts: int = 300
    rate: float = 150.0
    conns: int = 4
    b_seconds: float = 10.0
    b_kill_at_s: float = 3.0
    c_requests: int = 1000
    c_rate: float = 100.0
    d_requests: int = 50
    e_requests: int = 20
    f_streams: int = 3
    f_messages: int = 6  # 6 x 500 ms: a 3 s stream
    g_requests: int = 3
    g_idle_ms: int = 2000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(a_gets=100, a_posts=20, rate=100.0, conns=2, b_seconds=4.0, b_kill_at_s=1.0, c_requests=100,
                   d_requests=5, e_requests=4, f_streams=1, f_messages=3, g_requests=1, g_idle_ms=1000)  # fmt: skip


async def run_a(work: Path, z: Sizes) -> RunResult:
    r = RunResult("a", "one dead endpoint of two (io.l5d.fs)")
    live = await Backend("live").start()
    dead = free_port()  # nothing listens here: connections are refused
    root = work / "a-fs"
    root.mkdir()
    (root / "web").write_text(f"127.0.0.1 {live.port}\n127.0.0.1 {dead}\n")
    proxy = await Proxy(work, "a", _router("/svc => /#/io.l5d.fs", namers=_fs_namer(root))).start()
    try:
        n = z.a_gets + z.a_posts
        # POSTs spread evenly through the GETs.
        plan = [("POST", b"payload") if (i * z.a_posts) // n != ((i + 1) * z.a_posts) // n else ("GET", b"")
                for i in range(n)]  # fmt: skip
        outcomes = await steady(proxy.port, plan, z.rate, z.conns)
        r.count(outcomes)
        posts = sum(1 for m, _ in plan if m == "POST")
        fails = {m: 0 for m in ("GET", "POST")}
        for (m, _), o in zip(plan, outcomes, strict=True):
            fails[m] += o.kind != "2xx"
        r.measured = f"{r.failed} failed ({fails['GET']} of {n - posts} GET, {fails['POST']} of {posts} POST)"
        r.expected = "0 failed"
        r.notes.append(f"the live backend saw {live.seen.get('POST', 0)} POSTs for {posts} sent (each once: "
                       f"{'yes' if live.seen.get('POST', 0) == posts else 'NO'})")  # fmt: skip
        r.metrics = _pick(await proxy.metrics(), "dtabproxy_service_client_requeues_total", "dtabproxy_service_client_retries_total",
                          "dtabproxy_client_ejections_total", "dtabproxy_client_endpoints{dead}")  # fmt: skip
    finally:
        proxy.stop()
        await live.close()
    return r


async def run_b(work: Path, z: Sizes) -> RunResult:
    r = RunResult("b", "an endpoint killed mid-run (SIGKILL)")
    a = await KillableBackend("b-backend-1", work).start()
    b = await KillableBackend("b-backend-2", work).start()
    root = work / "b-fs"
    root.mkdir()
    (root / "web").write_text(f"127.0.0.1 {a.port}\n127.0.0.1 {b.port}\n")
    proxy = await Proxy(work, "b", _router("/svc => /#/io.l5d.fs", namers=_fs_namer(root))).start()
    killed_at: list[float] = []

    async def kill_later(t0: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, t0 + z.b_kill_at_s - loop.time()))  # the scenario's timeline
        b.kill()
        killed_at.append(loop.time() - t0)

    try:
        n = int(z.b_seconds * z.rate)
        outcomes = await steady(proxy.port, [("GET", b"")] * n, z.rate, z.conns, at=kill_later)
        r.count(outcomes)
        k = killed_at[0]
        # By when each request ended: one in flight at the kill belongs to the kill's window.
        windows = {"before": [o for o in outcomes if o.end_s < k],
                   "first 2 s": [o for o in outcomes if k <= o.end_s < k + 2],
                   "after": [o for o in outcomes if o.end_s >= k + 2]}  # fmt: skip

        def share(os_: list[Outcome]) -> str:
            bad = sum(o.kind != "2xx" for o in os_)
            return f"{bad}/{len(os_)} ({bad / len(os_) * 100 if os_ else 0:.1f}%)"

        r.measured = (f"failed before {share(windows['before'])}, first 2 s {share(windows['first 2 s'])}, "
                      f"after {share(windows['after'])}")  # fmt: skip
        r.expected = "<= 1% in the first 2 s, 0 after"
        r.notes.append(f"killed at {k:.2f} s of {z.b_seconds:.0f} s; GETs at {z.rate:.0f} req/s over {z.conns} "
                       "connections; a request counts in the window in which it ended")  # fmt: skip
        failed_kinds = sorted({f"{o.kind} {o.status}" if o.status else o.kind for o in outcomes if o.kind != "2xx"})
        if failed_kinds:
            r.notes.append("failures: " + ", ".join(failed_kinds))
        r.metrics = _pick(await proxy.metrics(), "dtabproxy_service_client_requeues_total", "dtabproxy_service_client_retries_total",
                          "dtabproxy_client_ejections_total", "dtabproxy_client_endpoints{dead}")  # fmt: skip
    finally:
        proxy.stop()
        a.stop()
        b.stop()
    return r


async def run_c(work: Path, z: Sizes) -> RunResult:
    r = RunResult("c", "always 503 under retryableRead5XX")
    ttl, floor, pct = 10, 10, 0.2
    be = await Backend("busy", "503").start()
    proxy = await Proxy(work, "c", _router(
        f"/svc => /$/inet/127.0.0.1/{be.port}",
        "  service:\n    responseClassifier: {kind: io.l5d.http.retryableRead5XX}\n"
        f"    retries: {{budget: {{ttlSecs: {ttl}, minRetriesPerSec: {floor}, percentCanRetry: {pct}}}}}\n",
    )).start()  # fmt: skip
    try:
        t0 = time.monotonic()
        outcomes = await steady(proxy.port, [("GET", b"")] * z.c_requests, z.c_rate, z.conns)
        span = time.monotonic() - t0
        r.count(outcomes)
        n = max(1, r.sent)
        ratio = be.requests / n
        # What proxy/upstream/budget.py guarantees: in any window of ttl - ttl/10 s (its
        # slices), retries are at most the reserve (minRetriesPerSec x ttlSecs) plus
        # percentCanRetry of the requests. So a run of `span` s gets the reserve once per
        # started 9 s window; the nominal figure spreads it at minRetriesPerSec.
        windows = math.ceil(span / (ttl - ttl / 10))
        bound = 1 + pct + floor * ttl * windows / n
        nominal = 1 + pct + floor * span / n
        r.measured = f"{ratio:.3f} backend requests per request ({be.requests} for {r.sent} in {span:.1f} s)"
        r.expected = (f"<= {bound:.3f} (1 + {pct} + reserve {floor * ttl} x {windows} windows of {ttl - ttl / 10:g} s"
                      f" / {r.sent}); nominal 1 + {pct} + {floor}/s = {nominal:.3f}")  # fmt: skip
        r.metrics = _pick(await proxy.metrics(), "dtabproxy_service_client_retries_total",
                          "dtabproxy_service_client_retry_budget_exhausted_total")  # fmt: skip
    finally:
        proxy.stop()
        await be.close()
    return r


async def run_d(work: Path, z: Sizes) -> RunResult:
    r = RunResult("d", "an expired l5d-ctx-deadline")
    be = await Backend("web").start()
    proxy = await Proxy(work, "d", _router(f"/svc => /$/inet/127.0.0.1/{be.port}")).start()
    try:
        past = time.time_ns() - 1_000_000_000
        hdr = {"l5d-ctx-deadline": f"{past - 1_000_000_000} {past}"}
        outcomes = await steady(proxy.port, [("GET", b"")] * z.d_requests, z.rate, z.conns, headers=hdr)
        r.count(outcomes)
        statuses = sorted({o.status for o in outcomes})
        r.measured = f"backend saw {be.requests}; answered {', '.join(map(str, statuses))}"
        r.expected = "backend saw 0; 503"
        r.metrics = _pick(await proxy.metrics(), "dtabproxy_service_client_deadline_exceeded_total{l5d-ctx-deadline}")
    finally:
        proxy.stop()
        await be.close()
    return r


async def run_e(work: Path, z: Sizes) -> RunResult:
    r = RunResult("e", "totalTimeoutMs 500 vs a 2 s backend")
    be = await Backend("slow", "slow", delay_s=2.0).start()
    proxy = await Proxy(work, "e", _router(f"/svc => /$/inet/127.0.0.1/{be.port}",
                                           "  service: {totalTimeoutMs: 500}\n")).start()  # fmt: skip
    try:
        outcomes: list[Outcome] = []
        parallel = min(4, z.e_requests)
        boxes: list[list[H1Conn | None]] = [[None] for _ in range(parallel)]
        loop = asyncio.get_running_loop()

        async def one(box: list[H1Conn | None]) -> None:
            start = loop.time()
            kind, status = await one_request(box, proxy.port, "GET", "web", None, b"")
            outcomes.append(Outcome(0.0, kind, status, loop.time() - start))

        for i in range(0, z.e_requests, parallel):
            await asyncio.gather(*(one(boxes[k]) for k in range(min(parallel, z.e_requests - i))))
        for box in boxes:
            if box[0] is not None:
                box[0].close()
        r.count(outcomes)
        lat = [o.latency_s for o in outcomes]
        statuses = sorted({o.status for o in outcomes})
        r.measured = (f"answered {', '.join(map(str, statuses))} after p50 {_quantile(lat, 0.5):.3f} s, "
                      f"max {max(lat):.3f} s")  # fmt: skip
        r.expected = "503 within 0.6 s"
        r.metrics = _pick(await proxy.metrics(), "dtabproxy_service_client_deadline_exceeded_total{totalTimeoutMs}")
    finally:
        proxy.stop()
        await be.close()
    return r


def _grpc_drip_server() -> tuple[Any, int]:
    """A grpcio server with `hello.Greeter/Drip` (server streaming, raw bytes, no
    protoc): request b"<n>:<gap_ms>" -> n messages `gap_ms` apart."""
    from concurrent import futures

    import grpc

    def drip(request: bytes, context: Any) -> Any:
        n, gap_ms = (int(x) for x in request.split(b":"))
        for i in range(n):
            yield b"%d" % i
            time.sleep(gap_ms / 1000)  # the backend's pace: the scenario

    handler = grpc.method_handlers_generic_handler("hello.Greeter", {
        "Drip": grpc.unary_stream_rpc_method_handler(drip, request_deserializer=None, response_serializer=None),
    })  # fmt: skip
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


async def run_f(work: Path, z: Sizes) -> RunResult:
    r = RunResult("f", "gRPC stream, 8 s deadline, router timeoutMs 1000")
    try:
        import grpc
    except ImportError:
        r.skipped = "grpcio is not installed (pip install -e '.[test]')"
        return r
    server, gport = _grpc_drip_server()
    proxy = await Proxy(work, "f", _router(
        f"/svc => /$/inet/127.0.0.1/{gport}",
        "  timeoutMs: 1000\n  identifier: {kind: io.l5d.header.path, segments: 1}\n  client: {protocol: h2}\n",
        protocol="h2",
    )).start()  # fmt: skip
    gap_ms = 500
    try:
        def call() -> tuple[str, int, float]:
            ch = grpc.insecure_channel(f"127.0.0.1:{proxy.port}", options=[("grpc.enable_http_proxy", 0)])
            try:
                stub = ch.unary_stream("/hello.Greeter/Drip")
                t0 = time.monotonic()
                got = 0
                try:
                    for _ in stub(b"%d:%d" % (z.f_messages, gap_ms), timeout=8.0):
                        got += 1
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                return code, got, time.monotonic() - t0
            finally:
                ch.close()

        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(None, call) for _ in range(z.f_streams)))
        outcomes = [Outcome(0.0, "2xx" if code == "OK" else "error", 0, took) for code, _, took in results]
        r.count(outcomes)
        codes = sorted({code for code, _, _ in results})
        took = [t for _, _, t in results]
        r.measured = (f"{', '.join(codes)}; {min(g for _, g, _ in results)}/{z.f_messages} messages; "
                      f"took {min(took):.2f}-{max(took):.2f} s")  # fmt: skip
        r.expected = f"OK, {z.f_messages} messages in about {z.f_messages * gap_ms / 1000:.1f} s"
        r.metrics = _pick(await proxy.metrics(), "dtabproxy_service_client_deadline_exceeded_total{timeoutMs}",
                          "dtabproxy_service_client_deadline_exceeded_total{grpc-timeout}")  # fmt: skip
    finally:
        proxy.stop()
        server.stop(grace=None)
    return r


async def run_g(work: Path, z: Sizes) -> RunResult:
    r = RunResult("g", f"stalled mid-body, streamIdleTimeoutMs {z.g_idle_ms}")
    be = await Backend("stall", "stall").start()
    proxy = await Proxy(work, "g", _router(f"/svc => /$/inet/127.0.0.1/{be.port}",
                                           f"  limits: {{streamIdleTimeoutMs: {z.g_idle_ms}}}\n")).start()  # fmt: skip
    try:
        loop = asyncio.get_running_loop()

        async def one() -> Outcome:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            start = loop.time()
            writer.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            got = b""
            try:
                while True:  # until the proxy ends the connection (EOF or reset), bounded
                    chunk = await asyncio.wait_for(reader.read(65536), REQUEST_TIMEOUT_S + z.g_idle_ms / 1000)
                    if not chunk:
                        break
                    got += chunk
            except (TimeoutError, ConnectionError):
                pass
            took = loop.time() - start
            writer.close()
            if not got.startswith(b"HTTP/1.1 "):
                return Outcome(0.0, "no answer", 0, took)
            status = int(got.split(b" ", 2)[1])
            body = got.partition(b"\r\n\r\n")[2]
            complete = len(body) >= 100  # what the head promised
            return Outcome(0.0, "2xx" if complete and 200 <= status < 300 else "error", status, took)

        outcomes = await asyncio.gather(*(one() for _ in range(z.g_requests)))
        r.count(list(outcomes))
        took = [o.latency_s for o in outcomes]
        r.measured = f"head {outcomes[0].status}, body cut after p50 {_quantile(took, 0.5):.2f} s, max {max(took):.2f} s"
        r.expected = f"cut after {z.g_idle_ms / 1000:.0f}-{z.g_idle_ms / 1000 + 1:.0f} s (the sweep runs once a second)"
        r.metrics = _pick(await proxy.metrics(), "dtabproxy_service_client_deadline_exceeded_total{streamIdleTimeoutMs}")
    finally:
        proxy.stop()
        await be.close()
    return r


RUNS: dict[str, Callable[[Path, Sizes], Awaitable[RunResult]]] = {
    "a": run_a, "b": run_b, "c": run_c, "d": run_d, "e": run_e, "f": run_f, "g": run_g,
}  # fmt: skip


# -- output ----------------------------------------------------------------------------------

HEADER = ["RUN", "FAULT", "SENT", "2XX", "ERROR", "NO ANSWER", "MEASURED", "EXPECTED"]


def table(results: list[RunResult]) -> str:
    rows = [HEADER]
    for r in results:
        if r.skipped:
            rows.append([r.run, r.title, "-", "-", "-", "-", f"skipped: {r.skipped}", r.expected or "-"])
        else:
            rows.append([r.run, r.title, str(r.sent), str(r.ok), str(r.error), str(r.no_answer), r.measured, r.expected])
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    lines = []
    for row in rows:
        cells = [c.rjust(w) if 2 <= i <= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def details(results: list[RunResult]) -> str:
    out = []
    for r in results:
        parts = [f"{k}={v:g}" for k, v in r.metrics.items()]
        line = f"{r.run}: proxy counters: {', '.join(parts) if parts else '-'}"
        out.append(line)
        out.extend(f"{r.run}: {n}" for n in r.notes)
    return "\n".join(out)


async def _run_all(names: list[str], z: Sizes, work: Path) -> list[RunResult]:
    results = []
    for name in names:
        try:
            res = await asyncio.wait_for(RUNS[name](work, z), RUN_TIMEOUT_S)
        except (TimeoutError, ProcError, OSError) as exc:
            res = RunResult(name, RUNS[name].__name__, skipped=f"could not run: {exc or type(exc).__name__}")
        print(f"run {name} done: {res.measured or res.skipped}", file=sys.stderr, flush=True)
        results.append(res)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="small counts (the smoke test's mode)")
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated, of: " + ",".join(RUNS))
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        ap.error(f"unknown runs: {', '.join(unknown)} (known: {', '.join(RUNS)})")
    z = Sizes.quick() if args.quick else Sizes()
    work = Path(tempfile.mkdtemp(prefix="dtabproxy-faults-"))
    try:
        results = asyncio.run(_run_all(names, z, work))
    finally:
        if args.keep:
            print(f"work directory: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"dtabproxy fault runs ({'quick' if args.quick else 'full'}), 127.0.0.1, one proxy worker per run")
    print(table(results))
    print()
    print(details(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"mode": "quick" if args.quick else "full",
                                         "results": [asdict(r) for r in results]}, indent=2))  # fmt: skip
    return 1 if any(r.skipped and r.skipped.startswith("could not run") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
