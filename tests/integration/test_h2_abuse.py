"""HTTP/2 abuse against the real proxy, with raw frames over loopback sockets: rapid
reset (CVE-2023-44487) behind an HTTP/1.1 upstream, CONTINUATION floods, header blocks
(and prefaces, and HTTP/1.1 heads) that never finish, and the request bytes the HTTP/1.1
listener refuses arriving over HTTP/2. Every answer is asserted by what goes on the wire
(GOAWAY codes, RST_STREAM codes, closes) and by what reaches the backend; no timing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.codec import h2 as h2c
from proxy.upstream.endpoint import WAIT, Endpoint
from proxy.wire import h2 as wire_h2
from proxy.wire.upstream_h1 import BODY_NONE, PendingH1, UpstreamH1, open_h1

from .grpc_helpers import h2_router_yaml
from .h2_raw import (
    CONTINUATION,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PREFACE,
    SETTINGS,
    RawH2,
    frame,
    request_fields,
    rst,
)
from .harness import proxy_port, router_yaml, start_proxy

_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class CountingBackend(asyncio.Protocol):
    """An HTTP/1.1 backend that counts the connections it accepts and answers every
    request head with 200 `ok` (the tests send no request bodies), except targets under
    `/hold`, which it never answers."""

    def __init__(self, server: CountingServer) -> None:
        self.server = server
        self.buf = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.accepts += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            fields = head.lower()
            if b"transfer-encoding: chunked" in fields:  # trusts its input: a test peer
                at = -2 if rest.startswith(b"0\r\n\r\n") else rest.find(b"\r\n0\r\n\r\n")
                if at == -1:
                    return  # the body is not all here yet
                end = at + 7
            else:
                end = int(fields.split(b"content-length: ")[1].split(b"\r\n")[0]) if b"content-length: " in fields else 0
                if len(rest) < end:
                    return
            self.buf = rest[end:]
            self.server.requests.append(head)
            if not head.startswith(b"GET /hold"):
                self.transport.write(_RESPONSE)


class CountingServer:
    def __init__(self) -> None:
        self.accepts = 0
        self.requests: list[bytes] = []
        self.port = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> CountingServer:
        loop = asyncio.get_running_loop()
        # A deep backlog: every connection the proxy makes is accepted in order, so one
        # made afterwards (`settled_accepts`) is accepted after all of them.
        self.server = await loop.create_server(lambda: CountingBackend(self), "127.0.0.1", 0, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def settled_accepts(self) -> int:
        """Connections accepted from the proxy so far. Its connects already started are
        queued before this direct one (the kernel completes loopback handshakes at once,
        and accepts in order), so when this one is answered they have all been counted."""
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        w.write(b"GET /sentinel HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await asyncio.wait_for(r.readexactly(len(_RESPONSE)), 10)) == _RESPONSE
        w.close()
        self.requests.pop()
        self.accepts -= 1
        return self.accepts

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _h1_upstream_router(port: int, extra: str = "", server_extra: str = "") -> str:
    return h2_router_yaml(f"/svc/web => /$/inet/127.0.0.1/{port}", upstream="http",
                          identifier="    kind: io.l5d.header.token\n", extra=extra, server_extra=server_extra)


_HEAD_TIMEOUT = "  limits:\n    headerReadTimeoutMs: 200\n    idleTimeoutMs: 60000\n"


async def _get_ok(port: int) -> None:
    """Another client is served normally."""
    c = await RawH2.connect(port)
    await c.send(c.headers(1, request_fields(b"/other")))
    f = await c.until(lambda f: f.sid == 1 and f.flags & END_STREAM)
    assert f is not None and c.status(1) == 200
    await c.close()


# -- 1. rapid reset --------------------------------------------------------------------------------


def test_streams_opened_and_reset_in_one_read_never_reach_the_upstream(run: Any) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port))
        c = await RawH2.connect(proxy_port(rt))
        pairs = b"".join(c.headers(sid, request_fields(b"/r")) + rst(sid) for sid in range(1, 400, 2))
        await c.send(pairs)  # 200 pairs: one write, one read
        await c.sync()
        assert c.goaway() is None  # 200 streams: below the premature-reset check
        assert await be.settled_accepts() == 0 and be.requests == []
        # the connection still serves, and its first request opens the first connection
        await c.send(c.headers(401, request_fields(b"/ok")))
        f = await c.until(lambda f: f.sid == 401 and f.flags & END_STREAM)
        assert f is not None and c.status(401) == 200
        assert await be.settled_accepts() == 1
        await c.close()
        await rt.drain()
        await be.close()

    run(main())


def test_rapid_reset_flood_gets_goaway_enhance_your_calm(run: Any) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port))
        port = proxy_port(rt)
        c = await RawH2.connect(port)
        n = 5000
        wire = b"".join(c.headers(sid, request_fields(b"/r")) + rst(sid) for sid in range(1, 2 * n, 2))
        try:
            await c.send(wire)
        except ConnectionError:
            pass  # closed while we were still writing: the point
        await c.until_closed()
        g = c.goaway()
        assert g is not None and g.code() == h2c.ENHANCE_YOUR_CALM
        assert b"reset early" in g.payload[8:]
        assert g.last_stream_id() < 2 * n - 1  # closed before the end of the flood
        assert await be.settled_accepts() <= wire_h2.PREMATURE_RESET_MIN_STREAMS
        await _get_ok(port)
        await rt.drain()
        await be.close()

    run(main())


def test_resets_in_later_reads_are_counted_and_upstream_connections_stay_bounded(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst case for the upstream: every stream is routed (its HEADERS read alone)
    before its reset arrives in a later read."""
    # Every reset below counts as premature however slow the machine (no timing here).
    monkeypatch.setattr(wire_h2, "PREMATURE_RESET_S", 3600.0)

    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port))
        port = proxy_port(rt)
        c = await RawH2.connect(port)
        sid, rounds = 1, 0
        while not c.closed and rounds < 40:
            batch = list(range(sid, sid + 100, 2))  # 50 streams, within MAX_CONCURRENT_STREAMS
            sid += 100
            rounds += 1
            try:
                await c.send(b"".join(c.headers(s, request_fields(b"/hold")) for s in batch))
                await c.sync()  # routed: each has its upstream exchange now
                await c.send(b"".join(rst(s) for s in batch))
                await c.sync()
            except (ConnectionError, AssertionError):
                break  # closed by the proxy (the PING ACK never came)
        await c.until_closed()
        g = c.goaway()
        assert g is not None and g.code() == h2c.ENHANCE_YOUR_CALM
        opened = (g.last_stream_id() + 1) // 2
        assert opened <= wire_h2.PREMATURE_RESET_MIN_STREAMS + 50
        # at most one upstream connection per stream routed, never one per stream sent
        assert await be.settled_accepts() <= opened
        await _get_ok(port)
        await rt.drain()
        await be.close()

    run(main())


def test_a_client_resetting_less_than_half_its_streams_keeps_its_connection(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire_h2, "PREMATURE_RESET_S", 3600.0)

    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port))
        c = await RawH2.connect(proxy_port(rt))
        limit = wire_h2.PREMATURE_RESET_MIN_STREAMS
        done = 0
        sid = 1
        while done < limit // 2 + 10:  # complete ones first
            batch = list(range(sid, sid + 100, 2))
            sid += 100
            await c.send(b"".join(c.headers(s, request_fields(b"/ok")) for s in batch))
            f = await c.until(lambda f, last=batch[-1]: f.sid == last and f.flags & END_STREAM)
            assert f is not None
            done += len(batch)
        resets = 0
        while resets < limit // 2:  # then resets, short of half of all
            batch = list(range(sid, sid + 100, 2))
            sid += 100
            await c.send(b"".join(c.headers(s, request_fields(b"/hold"), end_stream=False) for s in batch)
                         + b"".join(rst(s) for s in batch))
            await c.sync()
            resets += len(batch)
        assert c.goaway() is None
        await c.send(c.headers(sid, request_fields(b"/still")))
        f = await c.until(lambda f: f.sid == sid and f.flags & END_STREAM)
        assert f is not None and c.status(sid) == 200
        await c.close()
        await rt.drain()
        await be.close()

    run(main())


def test_max_concurrent_streams_is_bounded_by_default_and_excess_streams_are_refused(run: Any) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port))
        c = await RawH2.connect(proxy_port(rt))
        f = await c.until(lambda f: f.type == SETTINGS and not f.flags)
        assert f is not None
        settings = {int.from_bytes(f.payload[i : i + 2], "big"): int.from_bytes(f.payload[i + 2 : i + 6], "big")
                    for i in range(0, len(f.payload), 6)}
        assert settings[0x3] == wire_h2.DEFAULT_MAX_STREAMS == 128
        # streams past it (sent before our SETTINGS could matter) are refused, not fatal
        n = wire_h2.DEFAULT_MAX_STREAMS + 3
        await c.send(b"".join(c.headers(s, request_fields(b"/hold"), end_stream=False) for s in range(1, 2 * n, 2)))
        await c.sync()
        refused = {s for s, code in c.resets().items() if code == h2c.REFUSED_STREAM}
        assert refused == {2 * n - 5, 2 * n - 3, 2 * n - 1}
        assert c.goaway() is None
        await c.close()
        await rt.drain()
        await be.close()

    run(main())


def test_a_connection_made_for_a_cancelled_request_goes_to_the_idle_pool(run: Any) -> None:
    """PendingH1: the request is abandoned while its connection is being made; the
    fresh connection is kept for the next request instead of being closed."""

    async def main() -> None:
        be = await CountingServer().start()
        parked = asyncio.Event()
        given: list[Any] = []
        # One connection at most, one waiter: what the abandoned connect gives back reaches
        # the waiter (an event, where a compiled Endpoint cannot be subclassed to watch it).
        ep = Endpoint("127.0.0.1", be.port, max_connections=1, max_waiters=1)
        loop = asyncio.get_running_loop()

        def waiter(conn: Any) -> None:
            given.append(conn)
            parked.set()

        class Owner:
            def __init__(self) -> None:
                self.events: list[Any] = []
                self.done = asyncio.Event()

            def on_upstream_event(self, ev: Any) -> None:
                self.events.append(ev)
                if ev.__class__.__name__ == "EndOfMessage":
                    self.done.set()

            def upstream_failed(self, exc: Any) -> None:
                raise AssertionError(f"failed: {exc}")

            def flush_writes(self) -> None:
                pass

        first = Owner()
        handle = open_h1(ep, first, b"GET", b"/gone", [(b"host", b"web")], BODY_NONE, loop)
        assert isinstance(handle, PendingH1)
        handle.cancel()  # before the connect could finish
        assert ep.checkout(waiter, fresh=True) is WAIT  # the connect holds the one slot
        await asyncio.wait_for(parked.wait(), 10)
        (conn0,) = given
        assert conn0 is not None and conn0.usable() and ep.connections == 1  # kept, not closed
        ep.give_back(conn0)  # and parked for the next request
        assert len(ep.idle) == 1
        second = Owner()
        conn = open_h1(ep, second, b"GET", b"/next", [(b"host", b"web")], BODY_NONE, loop)
        assert isinstance(conn, UpstreamH1)  # the parked connection, not a new connect
        conn.send_end(None)
        await asyncio.wait_for(second.done.wait(), 10)
        assert await be.settled_accepts() == 1
        assert [r.split(b"\r\n")[0] for r in be.requests] == [b"GET /next HTTP/1.1"]
        ep.close_idle()
        await be.close()

    run(main())


# -- 2. CONTINUATION floods ---------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"\x00"], ids=["empty", "one byte"])
def test_continuation_flood_gets_goaway_and_close(run: Any, payload: bytes) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port))
        port = proxy_port(rt)
        c = await RawH2.connect(port)
        flood = c.headers(1, request_fields(b"/f"), end_headers=False) + frame(CONTINUATION, 0, 1, payload) * 100_000
        try:
            await c.send(flood)
        except ConnectionError:
            pass
        await c.until_closed()
        g = c.goaway()
        assert g is not None and g.code() == h2c.ENHANCE_YOUR_CALM
        assert b"CONTINUATION" in g.payload[8:] or b"header block" in g.payload[8:]
        assert await be.settled_accepts() == 0
        await _get_ok(port)
        await rt.drain()
        await be.close()

    run(main())


def test_a_large_header_block_in_continuation_frames_is_forwarded(run: Any) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port))
        c = await RawH2.connect(proxy_port(rt))
        block = c.encoder.encode(request_fields(b"/big", extra=[(b"x-big", b"v" * 40000)]))
        step = 8192
        parts = [block[i : i + step] for i in range(0, len(block), step)]
        wire = frame(HEADERS, END_STREAM, 1, parts[0])
        for i, p in enumerate(parts[1:], 1):
            wire += frame(CONTINUATION, 0x4 if i == len(parts) - 1 else 0, 1, p)
        await c.send(wire)
        f = await c.until(lambda f: f.sid == 1 and f.flags & END_STREAM)
        assert f is not None and c.status(1) == 200
        assert b"x-big: " + b"v" * 40000 in be.requests[0]
        await c.close()
        await rt.drain()
        await be.close()

    run(main())


# -- 3. heads that never finish -------------------------------------------------------------------


async def _timed_out(c: RawH2) -> None:
    await c.until_closed()
    g = c.goaway()
    assert g is not None and g.code() == h2c.PROTOCOL_ERROR
    assert b"limits.headerReadTimeoutMs" in g.payload[8:]


def test_a_header_block_that_never_ends_is_timed_out(run: Any) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port, extra=_HEAD_TIMEOUT))
        c = await RawH2.connect(proxy_port(rt))
        await c.send(c.headers(1, request_fields(b"/ok")))  # one complete request first
        f = await c.until(lambda f: f.sid == 1 and f.flags & END_STREAM)
        assert f is not None
        conn = next(iter(rt.listeners[0].connections))
        assert conn.head_started == 0.0  # nothing pending after a whole request
        # then a block that only ever gets one-byte CONTINUATIONs (no PING to pace them:
        # nothing but CONTINUATION may come inside a block, RFC 9113 §6.10)
        block = c.encoder.encode(request_fields(b"/slow", extra=[(b"x-pad", b"p" * 20)]))
        await c.send(frame(HEADERS, END_STREAM, 3, block[:5]))
        for i in range(5, 10):
            await c.send(frame(CONTINUATION, 0, 3, block[i : i + 1]))
        await _timed_out(c)
        assert [r.split(b"\r\n")[0] for r in be.requests] == [b"GET /ok HTTP/1.1"]
        await rt.drain()
        await be.close()

    run(main())


def test_a_headers_frame_that_never_arrives_whole_is_timed_out(run: Any) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port, extra=_HEAD_TIMEOUT))
        c = await RawH2.connect(proxy_port(rt))
        whole = c.headers(1, request_fields(b"/never"))
        await c.send(whole[: len(whole) - 3])
        await _timed_out(c)
        await rt.drain()
        await be.close()

    run(main())


@pytest.mark.parametrize(
    "first", [PREFACE[:16], PREFACE, PREFACE + frame(SETTINGS, 0, 0)[:5]],
    ids=["part of the preface", "preface without SETTINGS", "part of SETTINGS"],
)
def test_a_preface_that_never_completes_is_timed_out(run: Any, first: bytes) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port, extra=_HEAD_TIMEOUT))
        c = await RawH2.connect(proxy_port(rt), preface=first)
        await _timed_out(c)
        assert c.frames[0].type == SETTINGS  # the server preface came first (RFC 9113 §3.4)
        await rt.drain()
        await be.close()

    run(main())


@pytest.mark.parametrize("h2_router", [False, True], ids=["http router", "h2 router"])
def test_an_http1_method_trickled_alone_gets_408(run: Any, h2_router: bool) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        yaml = (_h1_upstream_router(be.port, extra=_HEAD_TIMEOUT) if h2_router
                else router_yaml(f"/svc => /$/inet/127.0.0.1/{be.port}", extra=_HEAD_TIMEOUT))
        rt = await start_proxy(yaml)
        r, w = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        w.write(b"OPTIO")  # no target yet: llhttp reports nothing for these bytes
        data = await asyncio.wait_for(r.read(), 20)
        assert data.startswith(b"HTTP/1.1 408 ")
        assert b"limits.headerReadTimeoutMs" in data
        w.close()
        await rt.drain()
        await be.close()

    run(main())


def test_a_method_after_a_whole_request_in_the_same_read_gets_408(run: Any) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{be.port}", extra=_HEAD_TIMEOUT))
        r, w = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        w.write(b"GET /a HTTP/1.1\r\nHost: web\r\n\r\nOPT")
        data = await asyncio.wait_for(r.read(), 20)
        first, _, rest = data.partition(b"ok")
        assert first.startswith(b"HTTP/1.1 200 ") and rest.startswith(b"HTTP/1.1 408 ")
        w.close()
        await rt.drain()
        await be.close()

    run(main())


def test_whole_http1_requests_leave_no_head_timer_running(run: Any) -> None:
    """Reads that end a request without a final LF (a body's last byte) or hold only a
    chunk-size line do not start the header timer; only bytes of a new request do."""

    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{be.port}", extra=_HEAD_TIMEOUT))
        r, w = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        conn = next(iter(rt.listeners[0].connections))
        w.write(b"POST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc")
        assert await asyncio.wait_for(r.readexactly(len(_RESPONSE)), 20) == _RESPONSE
        assert conn.head_started == 0.0
        w.write(b"POST /b HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()
        w.write(b"3\r\n")  # a chunk-size line alone: a body arriving, not a head
        await w.drain()
        w.write(b"xyz\r\n0\r\n\r\nGE")  # the end, and the first bytes of the next request
        assert await asyncio.wait_for(r.readexactly(len(_RESPONSE)), 20) == _RESPONSE
        assert conn.head_started > 0.0
        w.write(b"T /c HTTP/1.1\r\nHost: web\r\n\r\n")
        assert await asyncio.wait_for(r.readexactly(len(_RESPONSE)), 20) == _RESPONSE
        assert conn.head_started == 0.0
        assert [q.split(b"\r\n")[0] for q in be.requests] == [
            b"POST /a HTTP/1.1", b"POST /b HTTP/1.1", b"GET /c HTTP/1.1"]
        w.close()
        await rt.drain()
        await be.close()

    run(main())


def test_an_undecided_connection_that_sends_nothing_is_closed_when_idle(run: Any) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(
            be.port, extra="  limits:\n    headerReadTimeoutMs: 60000\n    idleTimeoutMs: 200\n"))
        r, w = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        assert await asyncio.wait_for(r.read(), 20) == b""  # closed, nothing said
        w.close()
        await rt.drain()
        await be.close()

    run(main())


# -- 8. bytes HTTP/1.1 refuses in a target or host ---------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        request_fields("/caf\u00e9".encode()),
        request_fields(b"/a\x80b"),
        request_fields(b"/", authority="caf\u00e9".encode()),
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h\xffst")],
    ],
    ids=[":path utf-8", ":path 0x80", ":authority utf-8", "host 0xff"],
)
def test_non_ascii_in_path_or_authority_is_a_malformed_request(run: Any, fields: list[tuple[bytes, bytes]]) -> None:
    async def main() -> None:
        be = await CountingServer().start()
        rt = await start_proxy(_h1_upstream_router(be.port))
        port = proxy_port(rt)
        c = await RawH2.connect(port)
        await c.send(c.headers(1, fields))
        await c.sync()
        assert c.resets() == {1: h2c.PROTOCOL_ERROR}  # RFC 9113 §8.1.1: a stream error
        await c.send(c.headers(3, request_fields(b"/fine")))  # the connection goes on
        f = await c.until(lambda f: f.sid == 3 and f.flags & END_STREAM)
        assert f is not None and c.status(3) == 200
        assert [r.split(b"\r\n")[0] for r in be.requests] == [b"GET /fine HTTP/1.1"]
        await c.close()
        # the HTTP/1.1 listener refuses the same bytes
        r, w = await asyncio.open_connection("127.0.0.1", port)
        path = dict(fields).get(b":path", b"/")
        host = dict(fields).get(b":authority") or dict(fields).get(b"host", b"web")
        w.write(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert (await asyncio.wait_for(r.read(), 20)).startswith(b"HTTP/1.1 400 ")
        w.close()
        assert len(be.requests) == 1
        await rt.drain()
        await be.close()

    run(main())


def test_goaway_frames_seen_are_well_formed() -> None:
    """The raw client's own frame reader agrees with the codec's GOAWAY layout."""
    from .h2_raw import Frame

    f = Frame(GOAWAY, 0, 0, b"\x00\x00\x00\x07\x00\x00\x00\x0bwhy")
    assert f.last_stream_id() == 7 and f.code() == h2c.ENHANCE_YOUR_CALM
