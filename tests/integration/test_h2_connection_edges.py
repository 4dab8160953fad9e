"""Edges of the HTTP/2 side over real sockets, with raw frames or the `h2` library as
the client: an inner proxy's error at a clearContext edge, a request without
:authority behind an HTTP/1.1 upstream, a 101 from HTTP/1.1, trailers and Connection,
the override signature field, a bad first line refused without a reset, floods of
control frames from a client that does not read, reading paused above the write
buffer's high-water mark, and streams accounted when their connection ends under them.
Every wait is on bytes or an event, bounded only so a hang fails."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from proxy.codec import h2 as h2c
from proxy.wire import h2 as wire_h2

from .grpc_helpers import H2Client, h2_router_yaml
from .h2_raw import (
    DATA,
    END_STREAM,
    HEADERS,
    PING,
    PREFACE,
    SETTINGS,
    WINDOW_UPDATE,
    RawH2,
    frame,
    ping,
    request_fields,
)
from .harness import Backend, proxy_port, start_proxy
from .test_h1_exchange_edges import INNER_ERR_BODY, WAIT_S, RawUpstream


def _router(port: int, *, identifier: str = "    kind: io.l5d.header.token\n", extra: str = "",
            server_extra: str = "") -> str:
    """An h2 router (label `grpc`) whose /svc/web is an HTTP/1.1 upstream on `port`."""
    return h2_router_yaml(f"/svc/web => /$/inet/127.0.0.1/{port}", upstream="http", identifier=identifier,
                          extra=extra, server_extra=server_extra)


def _blocks(c: RawH2, sid: int) -> list[list[tuple[bytes, bytes]]]:
    """The header blocks the proxy sent on `sid`, decoded (its encoder indexes nothing)."""
    return [[(bytes(n), bytes(v)) for n, v in c.decoder.decode(f.payload, raw=True)]
            for f in c.frames if f.sid == sid and f.type == HEADERS]


def _server_h2(rt: Any) -> wire_h2.ServerH2:
    (proto,) = [p for p in rt.listeners[0].connections if isinstance(p, wire_h2.ServerH2)]
    return proto


async def _connect_small(port: int, preface: bytes = PREFACE + frame(SETTINGS, 0, 0)) -> RawH2:
    """A raw client whose socket takes little before it pushes back (small buffers)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # so drain() waits for the proxy to read
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    r, w = await asyncio.open_connection(sock=sock)
    w.transport.set_write_buffer_limits(0)  # and drain() waits for the kernel: the proxy runs between writes
    c = RawH2(r, w)
    await c.send(preface)
    return c


# -- 1. an inner proxy's error at a clearContext edge ------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_h2_edge_clears_the_body_of_an_inner_proxy_error(run: Any, framing: str) -> None:
    """docs/dtab.md §13.5 on HTTP/2: the status, no l5d-* field, no content-length, and
    END_STREAM with no DATA payload; the connection goes on."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            start = b"HTTP/1.1 502 Bad Gateway\r\nl5d-err: No+hosts\r\nl5d-retryable: true\r\ncontent-type: text/plain\r\n"
            if framing == "length":
                writer.write(start + b"content-length: %d\r\n\r\n%s" % (len(INNER_ERR_BODY), INNER_ERR_BODY))
            else:
                writer.write(start + b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                             % (len(INNER_ERR_BODY), INNER_ERR_BODY))
            await writer.drain()

    async def main() -> None:
        up = await RawUpstream(handle).start()
        rt = await start_proxy(_router(up.port, server_extra="    clearContext: true\n"))
        c = await RawH2.connect(proxy_port(rt))
        for sid in (1, 3):
            await c.send(c.headers(sid, request_fields(b"/")))
            assert await c.until(lambda f, sid=sid: f.sid == sid and f.flags & END_STREAM) is not None
            assert not [f for f in c.frames if f.sid == sid and f.type == DATA and f.payload]
            (fields,) = _blocks(c, sid)
            assert (b":status", b"502") in fields and b"content-length" not in dict(fields)
            assert (b"content-type", b"text/plain") in fields
            assert not [n for n, _ in fields if n.startswith(b"l5d-")]
        assert c.goaway() is None
        await c.close()
        await rt.drain()
        up.close()

    run(main())


# -- 5. a request without :authority behind an HTTP/1.1 upstream -----------------------------------------


def test_h2_request_without_authority_goes_to_http1_with_an_empty_host(run: Any) -> None:
    """RFC 9113 §8.3.1: a request with no authority carries no :authority; RFC 9112 §3.2:
    an HTTP/1.1 request whose target has no authority sends an empty Host. The proxy
    does not invent one (the endpoint's address is not the request's authority)."""

    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(_router(web.port, identifier="    kind: io.l5d.path\n    segments: 1\n"))
        c = await H2Client.connect(proxy_port(rt))
        sid = c.start([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/web/x")])
        r = c.responses[sid]
        await asyncio.wait_for(r.done.wait(), WAIT_S)
        assert r.status == 200
        (seen,) = web.seen
        assert [v for n, v in seen.headers if n == "host"] == [""]
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


# -- 11. a status HTTP/2 cannot carry -------------------------------------------------------------------


def test_101_from_an_http1_upstream_to_an_h2_client_is_a_502(run: Any) -> None:
    """RFC 9113 §8.6: HTTP/2 has no 101. The upstream broke the exchange: 502 with
    l5d-err, not the 400 that would blame the client; its connection is closed."""
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()
        await reader.read()
        closed.set()

    async def main() -> None:
        up = await RawUpstream(handle).start()
        rt = await start_proxy(_router(up.port))
        c = await H2Client.connect(proxy_port(rt))
        r = await asyncio.wait_for(c.request(authority=b"web"), WAIT_S)
        assert r.status == 502 and b"101" in r.body
        assert b"101" in (r.header(b"l5d-err") or b"")
        await asyncio.wait_for(closed.wait(), WAIT_S)
        await c.close()
        await rt.drain()
        up.close()

    run(main())


# -- 6. trailers and the Connection header, to an HTTP/2 client ------------------------------------------


def test_trailer_fields_nominated_by_connection_do_not_reach_an_h2_client(run: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"2\r\nok\r\n0\r\nx-secret: s\r\nx-ok: 1\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        up = await RawUpstream(handle).start()
        rt = await start_proxy(_router(up.port))
        c = await H2Client.connect(proxy_port(rt))
        r = await asyncio.wait_for(c.request(authority=b"web"), WAIT_S)
        assert r.status == 200 and r.body == b"ok" and r.trailers == [(b"x-ok", b"1")]
        await c.close()
        await rt.drain()
        up.close()

    run(main())


# -- 12. the override signature field -----------------------------------------------------------------------


def test_h2_signature_field_not_named_l5d_is_never_forwarded(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        extra = "  overrides:\n    trust:\n      hmac: {header: x-dtab-sig, key: '0123456789abcdef0123'}\n"
        rt = await start_proxy(_router(web.port, extra=extra))
        c = await H2Client.connect(proxy_port(rt))
        for more in ([], [(b"l5d-ctx-foo", b"1")]):
            r = await asyncio.wait_for(c.request(authority=b"web", headers=[(b"x-dtab-sig", b"f" * 64), *more]), WAIT_S)
            assert r.status == 200
            assert web.seen[-1].header("x-dtab-sig") is None
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


# -- 8. a bad first line: GOAWAY, then a lingering close -----------------------------------------------------


def test_a_refused_first_line_gets_its_goaway_and_a_clean_close(run: Any) -> None:
    """Bytes that are neither the preface nor HTTP/1.x get GOAWAY(PROTOCOL_ERROR). The
    client's bytes still arriving are read and dropped, so the close is a FIN the client
    reads after the GOAWAY, not a TCP reset (which can destroy the GOAWAY unread)."""

    async def main() -> None:
        rt = await start_proxy(h2_router_yaml("/svc => /$/inet/127.0.0.1/1"))
        r, w = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        w.write(b"NOT A REQUEST LINE\r\n" + b"x" * (2 << 20))  # far more than one read
        got = b""
        reset = False

        async def read() -> None:
            nonlocal got, reset
            try:
                while data := await r.read(65536):
                    got += data
            except ConnectionResetError:
                reset = True

        await asyncio.wait_for(read(), WAIT_S)
        assert not reset
        assert got == frame(7, 0, 0, struct.pack(">LL", 0, h2c.PROTOCOL_ERROR))
        w.close()
        try:
            await w.wait_closed()
        except ConnectionError:
            pass
        await rt.drain()

    run(main())


# -- 9. floods from a client that does not read -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_control_frame_flood_from_a_client_that_never_reads_is_bounded(run: Any, kind: str) -> None:
    """CVE-2019-9512/9515: each PING or SETTINGS costs the client a few bytes and us an
    ACK. Once the socket takes no more, past MAX_QUEUED_CONTROL ACKs queued unsent the
    connection gets GOAWAY(ENHANCE_YOUR_CALM); our queued output stays that small."""
    one = ping(b"floodxxx") if kind == "ping" else frame(SETTINGS, 0, 0)
    ack_size = 17 if kind == "ping" else 9
    bound = (h2c.MAX_QUEUED_CONTROL + 1) * ack_size + 256  # the ACKs queued, a GOAWAY, a SETTINGS ACK

    async def main() -> None:
        rt = await start_proxy(_router(1))
        c = await _connect_small(proxy_port(rt))
        await c.sync()
        proto = _server_h2(rt)
        proto._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        batch = one * 200
        sent = 0
        largest = 0

        async def flood() -> None:
            nonlocal sent, largest
            while not proto._codec._dead and sent < (8 << 20):  # never reading
                c.writer.write(batch)
                await c.writer.drain()
                sent += len(batch)
                if proto._transport is not None:
                    largest = max(largest, proto._transport.get_write_buffer_size())

        await asyncio.wait_for(flood(), WAIT_S * 3)
        assert proto._codec._dead, f"no GOAWAY after {sent} bytes of {kind}; {largest} bytes queued"
        assert largest <= bound and proto._transport.get_write_buffer_size() <= bound
        frames = await c.until_closed()
        goaway = [f for f in frames if f.type == 7]
        assert len(goaway) == 1 and goaway[0].code() == h2c.ENHANCE_YOUR_CALM
        assert b"control frames" in goaway[0].payload[8:]
        await c.close()
        await rt.drain()

    run(main())


def test_reading_pauses_while_the_write_buffer_is_above_its_high_water_mark(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that opened a large window and does not read: once our write buffer
    passes the high-water mark the connection stops reading (so nothing it sends adds
    output), and reads again when the client catches up (a PING is answered)."""
    paused = asyncio.Event()
    pause_writing = wire_h2.ServerH2.pause_writing

    def spy(self: wire_h2.ServerH2) -> None:
        pause_writing(self)
        paused.set()

    monkeypatch.setattr(wire_h2.ServerH2, "pause_writing", spy)
    size = 8 << 20

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        chunk = b"y" * (1 << 20)
        for _ in range(size >> 20):
            writer.write(chunk)
            await writer.drain()
        await reader.read()

    async def main() -> None:
        up = await RawUpstream(handle).start()
        rt = await start_proxy(_router(up.port))
        big = (1 << 31) - 1
        settings = frame(SETTINGS, 0, 0, struct.pack(">HL", 0x4, big))
        c = await _connect_small(proxy_port(rt), PREFACE + settings + frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", big - 65535)))
        await c.sync()
        proto = _server_h2(rt)
        proto._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await c.send(c.headers(1, request_fields(b"/big")))
        await asyncio.wait_for(paused.wait(), WAIT_S)
        assert not proto._transport.is_reading()
        await c.sync()  # we read: the proxy's buffer drains, it reads again and answers
        f = await c.until(lambda f: f.sid == 1 and f.flags & END_STREAM)
        assert f is not None
        assert sum(len(f.payload) for f in c.frames if f.sid == 1 and f.type == DATA) == size
        await c.close()
        await rt.drain()
        up.close()

    run(main())


# -- 10. streams dropped with their connection are accounted -----------------------------------------------


@pytest.mark.parametrize("how", ["connection_error", "client_gone"])
def test_streams_of_a_connection_that_ends_are_accounted_once(run: Any, how: str) -> None:
    """A connection error (our GOAWAY) or a lost connection ends the streams in flight:
    each is cancelled upstream and counted once, as 499/cancelled, as HTTP/1.1 counts a
    client gone; its servers[].maxConcurrentRequests slot is given back."""
    got, upstream_closed = asyncio.Event(), asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /hold"):
            got.set()
            await reader.read()
            upstream_closed.set()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        up = await RawUpstream(handle).start()
        rt = await start_proxy(_router(up.port, server_extra="    maxConcurrentRequests: 1\n"))
        port = proxy_port(rt)
        c = await RawH2.connect(port)
        await c.send(c.headers(1, request_fields(b"/hold")))
        await asyncio.wait_for(got.wait(), WAIT_S)
        if how == "connection_error":
            await c.send(frame(PING, 0, 1, b"12345678"))  # PING on a stream: PROTOCOL_ERROR
            await c.until_closed()
            goaway = c.goaway()
            assert goaway is not None and goaway.code() == h2c.PROTOCOL_ERROR
        else:
            c.writer.transport.abort()
        await asyncio.wait_for(upstream_closed.wait(), WAIT_S)  # the proxy cancelled it
        assert rt.telemetry is not None
        (svc,) = [s for s in rt.telemetry.router("grpc").services() if s.labels[1] == "/svc/web"]
        assert svc.failures == {"cancelled": 1} and svc.successes == 0 and svc.in_flight == 0
        c2 = await RawH2.connect(port)  # the slot is free again
        await c2.send(c2.headers(1, request_fields(b"/ok")))
        f = await c2.until(lambda f: f.sid == 1 and f.flags & END_STREAM or f.type == 3)
        assert f is not None and c2.status(1) == 200
        await c2.close()
        await c.close()
        await rt.drain()
        up.close()

    run(main())
