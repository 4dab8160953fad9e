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
  h2rate  `rate` over h2c (prior knowledge): each request a new stream on the pooled
          connection with the fewest open (h2load has no coordinated-omission-free
          fixed rate); a minimal client on raw frames, hpack's decoder for responses.
  idle-h2 `idle` over h2c: preface, SETTINGS, one GET stream, then held idle.

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


# -- h2c (prior knowledge): a minimal client on raw frames ------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_F_DATA, _F_HEADERS, _F_RST, _F_SETTINGS, _F_PING, _F_GOAWAY, _F_CONT = 0, 1, 3, 4, 6, 7, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_MAX_WINDOW = (1 << 31) - 1


def h2_frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def _hpack_literal(index: int, value: bytes) -> bytes:
    """RFC 7541 §6.2.2, literal without indexing, name from the static table (index < 15),
    plain string: the same bytes are valid in every header block of a connection."""
    n = len(value)
    length = bytes((n,)) if n < 127 else bytes((127,)) + _hpack_int_rest(n - 127)
    return bytes((index,)) + length + value


def _hpack_int_rest(v: int) -> bytes:
    out = bytearray()
    while v >= 128:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def h2_request_block(path: str, host: str) -> bytes:
    """GET http://host/path as one header block: :method GET and :scheme http indexed
    (RFC 7541 Appendix A: 2 and 6), :path and :authority literal (names 4 and 1)."""
    p = path.encode()
    return b"\x82\x86" + (b"\x84" if p == b"/" else _hpack_literal(4, p)) + _hpack_literal(1, host.encode())


def h2_client_preface() -> bytes:
    """Preface, SETTINGS (no push, the largest stream window), and the connection window
    opened as far as it goes: the client never has to send WINDOW_UPDATE."""
    settings = (2).to_bytes(2, "big") + (0).to_bytes(4, "big") + (4).to_bytes(2, "big") + _MAX_WINDOW.to_bytes(4, "big")
    return H2_PREFACE + h2_frame(_F_SETTINGS, 0, 0, settings) + h2_frame(8, 0, 0, (_MAX_WINDOW - 65_535).to_bytes(4, "big"))


class H2ClientConn(asyncio.Protocol):
    """One h2c connection: `request()` opens a stream with a fixed header block; frames
    are parsed as they come (split anywhere); a stream ends at END_STREAM on HEADERS or
    DATA (ok when the response's :status is 200) or at RST_STREAM; GOAWAY or a lost
    connection fails what is open. The response header block is decoded with hpack's
    decoder (the peer may use its dynamic table), one per connection."""

    def __init__(self, block: bytes, on_done: Callable[[H2ClientConn, int, bool], None],
                 on_lost: Callable[[H2ClientConn], None]) -> None:  # fmt: skip
        from hpack import Decoder

        self._block = block
        self._on_done = on_done
        self._on_lost = on_lost
        self._decoder = Decoder()
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._next_sid = 1
        self.open: dict[int, bool] = {}  # stream id -> saw :status 200
        self._pending_block: tuple[int, int, bytes] | None = None  # (sid, flags, fragments) until END_HEADERS
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(h2_client_preface())  # type: ignore[attr-defined]
        self._transport = transport  # type: ignore[assignment]

    def request(self) -> int:
        sid = self._next_sid
        self._next_sid += 2
        self.open[sid] = False
        assert self._transport is not None
        self._transport.write(h2_frame(_F_HEADERS, _END_STREAM | _END_HEADERS, sid, self._block))
        return sid

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos, end = 0, len(buf)
        while end - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if end - pos < 9 + length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = buf[pos + 9 : pos + 9 + length]
            pos += 9 + length
            self._frame(ftype, flags, sid, payload)
            if self.closed:
                return
        self._buf = buf[pos:]

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype in (_F_HEADERS, _F_CONT):
            if ftype == _F_HEADERS:
                if flags & _PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                if flags & _PRIORITY:
                    payload = payload[5:]
                self._pending_block = (sid, flags, payload)
            elif self._pending_block is not None:
                psid, pflags, frag = self._pending_block
                self._pending_block = (psid, pflags | (flags & _END_HEADERS), frag + payload)
            if self._pending_block is None or not self._pending_block[1] & _END_HEADERS:
                return
            sid, flags, block = self._pending_block
            self._pending_block = None
            fields = list(self._decoder.decode(block, raw=True))
            if sid in self.open and fields and fields[0][0] == b":status":
                self.open[sid] = self.open[sid] or fields[0][1] == b"200"
            if flags & _END_STREAM:
                self._end(sid)
        elif ftype == _F_DATA:
            if flags & _END_STREAM:
                self._end(sid)
        elif ftype == _F_SETTINGS:
            if not flags & _ACK:
                assert self._transport is not None
                self._transport.write(h2_frame(_F_SETTINGS, _ACK, 0))
        elif ftype == _F_PING:
            if not flags & _ACK:
                assert self._transport is not None
                self._transport.write(h2_frame(_F_PING, _ACK, 0, payload))
        elif ftype == _F_RST:
            if self.open.pop(sid, None) is not None:
                self._on_done(self, sid, False)
        elif ftype == _F_GOAWAY:
            self.close()

    def _end(self, sid: int) -> None:
        ok = self.open.pop(sid, None)
        if ok is not None:
            self._on_done(self, sid, ok)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()
            self._fail_open()

    def _fail_open(self) -> None:
        open_, self.open = self.open, {}
        for sid in open_:
            self._on_done(self, sid, False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        self._fail_open()
        self._on_lost(self)


async def run_h2rate(args: argparse.Namespace) -> dict[str, object]:
    """The `rate` mode over h2c: request i is due at t0 + i/rate and goes out as a new
    stream on the connection with the fewest streams open (streams are concurrent, so
    no request waits for a free connection); latency counts from the due time."""
    loop = asyncio.get_running_loop()
    block = h2_request_block(args.path, args.host)
    stats = Stats()
    conns: list[H2ClientConn] = []
    due_of: dict[tuple[int, int], tuple[int, int]] = {}  # (conn id, stream) -> (due, sent)

    def on_done(conn: H2ClientConn, sid: int, ok: bool) -> None:
        t = perf_ns()
        due, sent = due_of.pop((id(conn), sid), (t, t))
        if ok:
            stats.ok += 1
            stats.lat_ns.append(t - due)
            stats.send_lat_ns.append(t - sent)
        else:
            stats.errors += 1

    def on_lost(conn: H2ClientConn) -> None:
        pass

    async def open_conn() -> None:
        try:
            _, conn = await loop.create_connection(lambda: H2ClientConn(block, on_done, on_lost), "127.0.0.1", args.port)
        except OSError:
            stats.errors += 1
            return
        conns.append(conn)

    await asyncio.gather(*(open_conn() for _ in range(args.conns)))
    if not conns:
        raise SystemExit("h2rate: no connection could be opened")
    # One request per connection before the clock starts: the SETTINGS exchange is done.
    warm = [c.request() for c in conns]
    deadline = time.monotonic() + 5
    while any(sid in c.open for c, sid in zip(conns, warm, strict=True)) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    stats.ok = stats.errors = 0
    stats.lat_ns.clear()
    stats.send_lat_ns.clear()
    interval_ns = int(1e9 / args.rate)
    total = int(args.rate * args.duration)
    t0 = perf_ns() + 2_000_000
    done = asyncio.Event()

    def fire(due: int) -> None:
        live = [c for c in conns if not c.closed]
        if not live:
            stats.errors += 1
            return
        conn = min(live, key=lambda c: len(c.open))
        sid = conn.request()
        due_of[(id(conn), sid)] = (due, perf_ns())

    def ticker() -> None:  # as in run_rate: a thread, for sub-millisecond due times
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
    deadline = time.monotonic() + max(2.0, args.duration)
    while due_of and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stats.errors += len(due_of)
    elapsed = (perf_ns() - t0) / 1e9
    for c in conns:
        c.close()
    return {
        "requests": stats.ok,
        "errors": stats.errors,
        "duration_s": elapsed,
        "rps": stats.ok / args.duration if args.duration > 0 else 0.0,
        "target_rate": args.rate,
        "latency_us": percentiles_us(stats.lat_ns),
        "service_latency_us": percentiles_us(stats.send_lat_ns),
        "connections": len(conns),
        "extra_connections": 0,
    }


async def run_idle_h2(args: argparse.Namespace) -> dict[str, object]:
    """`idle` over h2c: each connection does the preface and SETTINGS exchange and one
    GET stream to its end, then is held open, idle, until released."""
    loop = asyncio.get_running_loop()
    block = h2_request_block(args.path, args.host)
    sem = asyncio.Semaphore(args.concurrency)
    conns: list[H2ClientConn] = []
    waiting: dict[tuple[int, int], asyncio.Future[bool]] = {}
    failed = 0
    lost_while_held = 0
    holding = False

    def on_done(conn: H2ClientConn, sid: int, ok: bool) -> None:
        fut = waiting.pop((id(conn), sid), None)
        if fut is not None and not fut.done():
            fut.set_result(ok)

    def on_lost(conn: H2ClientConn) -> None:
        nonlocal lost_while_held
        if holding:
            lost_while_held += 1

    async def one() -> None:
        nonlocal failed
        async with sem:
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: H2ClientConn(block, on_done, on_lost), "127.0.0.1", args.port), 10
                )
            except (OSError, TimeoutError):
                failed += 1
                return
            fut: asyncio.Future[bool] = loop.create_future()
            waiting[(id(conn), conn.request())] = fut
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
    print(json.dumps({"ready": True, "open": len(conns), "failed": failed, "open_s": time.monotonic() - t0}), flush=True)
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


MODES = {
    "closed": run_closed,
    "rate": run_rate,
    "idle": run_idle,
    "grpc": run_grpc,
    "h2rate": run_h2rate,
    "idle-h2": run_idle_h2,
}


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
    if args.mode in ("rate", "h2rate") and args.conns > args.max_conns:
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
