"""The built-in load generator: HTTP/1.1 keep-alive on uvloop, run in its own process.

Modes (each prints one JSON object on stdout and exits):

  closed  N connections, each sends its next request as soon as the previous answer
          ends (the shape of `wrk -c N`). Its ceiling is one Python process: a few tens
          of thousands of requests per second, so at max rate it may be the bottleneck;
          the harness says so beside the figures.
  rate    open loop at a fixed rate (the shape of wrk2): request i is due at t0 + i/rate
          whatever happened before it, goes out on an idle connection (a new one if
          none is idle), and its latency is counted from the time it was due, so a stall
          is not hidden by the client waiting (coordinated omission). The timer has 1 ms
          granularity; the lag that adds is common to every target and cancels in the
          "added latency" the report shows.
  idle    open N connections, send one request on each, then hold them open until a
          line arrives on stdin (or --hold-max-s passes), and report how many survived.
  grpc    closed-loop unary calls with grpcio (fallback when h2load is absent).

It must stay a separate process from the harness (it needs a core of its own, and
must not share an event loop with anything it measures).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence

import httptools

perf_ns = time.perf_counter_ns


def percentiles_us(samples_ns: Sequence[int]) -> dict[str, float]:
    """Nearest-rank percentiles in microseconds."""
    if not samples_ns:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0, "mean": 0.0}
    s = sorted(samples_ns)
    n = len(s)

    def pick(q: float) -> float:
        return s[min(n - 1, max(0, int(q * n + 0.999999) - 1))] / 1000.0

    return {
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "p999": pick(0.999),
        "max": s[-1] / 1000.0,
        "mean": sum(s) / n / 1000.0,
    }


def build_requests(path: str, host: str, headers: Sequence[str], hosts: int) -> list[bytes]:
    """Every distinct request this run sends, built once (one per Host when rotating)."""
    extra = b"".join(h.encode("latin-1") + b"\r\n" for h in headers)
    names = [f"app{i}" for i in range(hosts)] if hosts > 0 else [host]
    return [
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + name.encode() + b"\r\nUser-Agent: bench-pyload\r\n"
        b"Accept: */*\r\n" + extra + b"\r\n"
        for name in names
    ]


class Stats:
    __slots__ = ("lat_ns", "send_lat_ns", "ok", "errors", "reconnects", "recording")

    def __init__(self) -> None:
        self.lat_ns: list[int] = []
        self.send_lat_ns: list[int] = []
        self.ok = 0
        self.errors = 0
        self.reconnects = 0
        self.recording = True


class ClientConn(asyncio.Protocol):
    """One keep-alive client connection; `on_done(conn, ok)` after every answer."""

    __slots__ = (
        "_parser",
        "_transport",
        "_on_done",
        "_on_lost",
        "_status",
        "_keep_alive",
        "busy",
        "closed",
        "_complete",
    )

    def __init__(
        self, on_done: Callable[[ClientConn, bool], None], on_lost: Callable[[ClientConn], None]
    ) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._on_done = on_done
        self._on_lost = on_lost
        self.busy = False
        self.closed = False
        self._complete = False
        self._status = 0
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def send(self, req: bytes) -> None:
        self.busy = True
        assert self._transport is not None
        self._transport.write(req)

    def on_message_complete(self) -> None:
        # Read here: once the callback returns, the parser is reset for the next message.
        self._complete = True
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.busy = False
            self._on_done(self, False)
            self.close()
            return
        if self._complete:
            self._complete = False
            self.busy = False
            ok = self._status == 200
            if not self._keep_alive:
                self.close()
            self._on_done(self, ok)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        was_busy = self.busy
        self.closed = True
        self.busy = False
        self._transport = None
        if was_busy:
            self._on_done(self, False)
        self._on_lost(self)


async def run_closed(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    reqs = build_requests(args.path, args.host, args.header, args.hosts)
    nreq = len(reqs)
    stats = Stats()
    state = {"next": 0, "running": True, "live": 0}
    started: dict[ClientConn, int] = {}
    finished = asyncio.Event()

    def send(conn: ClientConn) -> None:
        i = state["next"]
        state["next"] = i + 1
        started[conn] = perf_ns()
        conn.send(reqs[i % nreq])

    def on_done(conn: ClientConn, ok: bool) -> None:
        t = perf_ns()
        if stats.recording:
            if ok:
                stats.ok += 1
                stats.lat_ns.append(t - started[conn])
            else:
                stats.errors += 1
        if state["running"] and not conn.closed:
            send(conn)

    def on_lost(conn: ClientConn) -> None:
        state["live"] -= 1
        if state["running"]:
            stats.reconnects += 1
            loop.create_task(connect())
        elif state["live"] == 0:
            finished.set()

    async def connect() -> None:
        try:
            _, conn = await loop.create_connection(
                lambda: ClientConn(on_done, on_lost), "127.0.0.1", args.port
            )
        except OSError:
            stats.errors += 1
            if state["running"]:
                await asyncio.sleep(0.05)  # the target is refusing: do not spin on CPU 0
                loop.create_task(connect())
            return
        state["live"] += 1
        if state["running"]:
            send(conn)
        else:
            conn.close()

    await asyncio.gather(*(connect() for _ in range(args.conns)))
    t0 = perf_ns()
    await asyncio.sleep(args.duration)
    state["running"] = False
    elapsed = (perf_ns() - t0) / 1e9
    stats.recording = False
    for conn in list(started):
        conn.close()
    if state["live"] > 0:
        try:
            await asyncio.wait_for(finished.wait(), 2.0)
        except TimeoutError:
            pass
    return {
        "requests": stats.ok,
        "errors": stats.errors,
        "duration_s": elapsed,
        "rps": stats.ok / elapsed if elapsed > 0 else 0.0,
        "latency_us": percentiles_us(stats.lat_ns),
        "connections": args.conns,
        "reconnects": stats.reconnects,
    }


async def run_rate(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    reqs = build_requests(args.path, args.host, args.header, args.hosts)
    nreq = len(reqs)
    stats = Stats()
    idle: collections.deque[ClientConn] = collections.deque()
    backlog: collections.deque[int] = collections.deque()  # due times waiting for a connection
    due_of: dict[ClientConn, tuple[int, int]] = {}  # conn -> (due, actually sent)
    state = {"conns": 0, "opening": 0, "sent": 0, "late_starts": 0}

    def dispatch(conn: ClientConn, due: int) -> None:
        i = state["sent"]
        state["sent"] = i + 1
        due_of[conn] = (due, perf_ns())
        conn.send(reqs[i % nreq])

    def on_done(conn: ClientConn, ok: bool) -> None:
        t = perf_ns()
        due, sent = due_of.pop(conn, (t, t))
        if ok:
            stats.ok += 1
            stats.lat_ns.append(t - due)
            stats.send_lat_ns.append(t - sent)
        else:
            stats.errors += 1
        if not conn.closed:
            if backlog:
                dispatch(conn, backlog.popleft())
            else:
                idle.append(conn)

    def on_lost(conn: ClientConn) -> None:
        state["conns"] -= 1
        try:
            idle.remove(conn)
        except ValueError:
            pass

    async def open_conn() -> None:
        state["opening"] += 1
        try:
            _, conn = await loop.create_connection(
                lambda: ClientConn(on_done, on_lost), "127.0.0.1", args.port
            )
        except OSError:
            stats.errors += 1
            return
        finally:
            state["opening"] -= 1
        state["conns"] += 1
        if backlog:
            dispatch(conn, backlog.popleft())
        else:
            idle.append(conn)

    await asyncio.gather(*(open_conn() for _ in range(args.conns)))
    interval_ns = int(1e9 / args.rate)
    total = int(args.rate * args.duration)
    t0 = perf_ns() + 2_000_000  # first request 2 ms from now, after the pool is ready
    done = asyncio.Event()

    def fire(due: int) -> None:
        while idle and idle[0].closed:
            idle.popleft()
        if idle:
            dispatch(idle.popleft(), due)
        else:
            backlog.append(due)
            if state["conns"] + state["opening"] < args.max_conns:
                state["late_starts"] += 1
                loop.create_task(open_conn())

    def ticker() -> None:
        # A thread, because the loop's timers have millisecond resolution (libuv caches
        # its clock per iteration): at 1,000 req/s that lag would be most of what we
        # measure. time.sleep is precise to tens of microseconds, and the loop, idle in
        # epoll at this rate, is woken at once by call_soon_threadsafe.
        call = loop.call_soon_threadsafe
        for i in range(total):
            due = t0 + i * interval_ns
            wait = (due - perf_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
            call(fire, due)
        call(done.set)

    thread = threading.Thread(target=ticker, name="bench-ticker", daemon=True)
    thread.start()
    await done.wait()
    # Let the last answers arrive, bounded: an answer later than this is an error.
    deadline = time.monotonic() + max(2.0, args.duration)
    while (due_of or backlog) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stats.errors += len(due_of) + len(backlog)
    elapsed = (perf_ns() - t0) / 1e9
    return {
        "requests": stats.ok,
        "errors": stats.errors,
        "duration_s": elapsed,
        "rps": stats.ok / args.duration if args.duration > 0 else 0.0,
        "target_rate": args.rate,
        "latency_us": percentiles_us(stats.lat_ns),
        "service_latency_us": percentiles_us(stats.send_lat_ns),
        "connections": state["conns"],
        "extra_connections": state["late_starts"],
    }


async def run_idle(args: argparse.Namespace) -> dict[str, object]:
    """Open, use once, hold. Reports after the hold, so the harness can read RSS in between."""
    loop = asyncio.get_running_loop()
    req = build_requests(args.path, args.host, args.header, 0)[0]
    sem = asyncio.Semaphore(args.concurrency)
    conns: list[ClientConn] = []
    waiting: dict[ClientConn, asyncio.Future[bool]] = {}
    failed = 0
    lost_while_held = 0
    holding = False

    def on_done(conn: ClientConn, ok: bool) -> None:
        fut = waiting.pop(conn, None)
        if fut is not None and not fut.done():
            fut.set_result(ok)

    def on_lost(conn: ClientConn) -> None:
        nonlocal lost_while_held
        if holding:
            lost_while_held += 1

    async def one() -> None:
        nonlocal failed
        async with sem:
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: ClientConn(on_done, on_lost), "127.0.0.1", args.port), 10
                )
            except (OSError, TimeoutError):
                failed += 1
                return
            fut: asyncio.Future[bool] = loop.create_future()
            waiting[conn] = fut
            conn.send(req)
            try:
                ok = await asyncio.wait_for(fut, 10)
            except TimeoutError:
                ok = False
            if ok and not conn.closed:
                conns.append(conn)
            else:
                failed += 1
                conn.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.conns)))
    holding = True
    open_s = time.monotonic() - t0
    print(json.dumps({"ready": True, "open": len(conns), "failed": failed, "open_s": open_s}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        await asyncio.wait_for(reader.readline(), args.hold_max_s)
    except TimeoutError:
        pass
    alive = sum(1 for c in conns if not c.closed)
    for c in conns:
        c.close()
    return {"open": len(conns), "failed": failed, "alive_at_end": alive, "lost_while_held": lost_while_held}


async def run_grpc(args: argparse.Namespace) -> dict[str, object]:
    import grpc

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") for _ in range(args.conns)]
    calls = [
        ch.unary_unary(args.path, request_serializer=None, response_deserializer=None) for ch in channels
    ]
    stats = Stats()
    running = True

    async def worker(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        while running:
            t = perf_ns()
            try:
                await call(b"", timeout=5)
            except grpc.aio.AioRpcError:
                if stats.recording:
                    stats.errors += 1
                continue
            if stats.recording:
                stats.ok += 1
                stats.lat_ns.append(perf_ns() - t)

    tasks = [asyncio.create_task(worker(calls[i % len(calls)])) for i in range(args.conns * args.streams)]
    t0 = perf_ns()
    await asyncio.sleep(args.duration)
    stats.recording = False
    running = False
    elapsed = (perf_ns() - t0) / 1e9
    await asyncio.wait(tasks, timeout=6)
    for ch in channels:
        await ch.close()
    return {
        "requests": stats.ok,
        "errors": stats.errors,
        "duration_s": elapsed,
        "rps": stats.ok / elapsed if elapsed > 0 else 0.0,
        "latency_us": percentiles_us(stats.lat_ns),
        "connections": args.conns,
    }


MODES = {"closed": run_closed, "rate": run_rate, "idle": run_idle, "grpc": run_grpc}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.pyload", description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--host", default="bench", help="Host header")
    ap.add_argument("--hosts", type=int, default=0, help="rotate Host over app0..appN-1")
    ap.add_argument("--header", action="append", default=[], help="extra 'name: value' header")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--streams", type=int, default=1, help="grpc: concurrent calls per channel")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--max-conns", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=200, help="idle: connections opened at once")
    ap.add_argument("--hold-max-s", type=float, default=120.0)
    args = ap.parse_args(argv)
    if args.mode == "rate" and args.conns > args.max_conns:
        args.conns = args.max_conns
    coro = MODES[args.mode](args)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
        loop_name = "asyncio"
    else:
        result = uvloop.run(coro)
        loop_name = "uvloop"
    result["generator"] = f"bench.pyload {args.mode} ({loop_name})"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
