"""Edges of one HTTP/1.1 exchange over real sockets, in raw bytes both ways: an inner
proxy's error at a clearContext edge (docs/dtab.md §13.5), an upgrade the upstream
declines, a 101 nobody asked for, a broken request pipelined behind a busy exchange,
trailers and the Connection header, an HTTP/0.9 line right after a body, and the
override signature field. Every wait is on bytes or an event, bounded only so a hang
fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from proxy.errors import PeerProtocolError

from .harness import Backend, Client, proxy_port, read_fields, read_response, router_yaml, start_proxy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
WAIT_S = 10.0  # an upper bound only: a hang fails instead of blocking


class RawUpstream:
    """A backend that runs `handler(reader, writer, n)` for its n-th connection (from 1)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _heads(reader: asyncio.StreamReader) -> list[bytes]:
    """Request heads until the proxy closes the connection (test peer: trusts its input)."""
    heads = []
    while True:
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
        except asyncio.IncompleteReadError:
            return heads


async def _read_trailers(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[str, str]]]:
    """A chunked body and its trailer fields (test peer: trusts its input)."""
    body = b""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            return body, await read_fields(reader)
        body += await reader.readexactly(size)
        await reader.readline()


# -- 1. an inner proxy's error at a clearContext edge ------------------------------------------------

INNER_ERR_BODY = b"No hosts are available for /#/io.l5d.k8s/prod/http/web, Dtab.base=[/svc=>/#/io.l5d.k8s/prod/http]"


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_edge_clears_the_body_of_an_inner_proxy_error(run: Any, framing: str) -> None:
    """docs/dtab.md §13.5: the caller of an edge gets the inner error's status, no l5d-*
    field and no body (it names dtabs and addresses), framed as empty; the connection
    stays usable. Another server of the same proxy (not clearContext) keeps it all."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            err = b"x-inner: err" in head
            start = b"HTTP/1.1 502 Bad Gateway\r\nl5d-err: No+hosts+are+available\r\nl5d-retryable: true\r\n" if err else b"HTTP/1.1 200 OK\r\n"
            body = INNER_ERR_BODY if err else b"fine"
            if framing == "length" or not err:
                writer.write(start + b"content-length: %d\r\n\r\n%s" % (len(body), body))
            elif framing == "chunked":
                writer.write(start + b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            else:
                writer.write(start + b"connection: close\r\n\r\n" + body)
                await writer.drain()
                return
            await writer.drain()

    async def main() -> None:
        up = await RawUpstream(handle).start()
        dtab = f"/svc => /$/inet/127.0.0.1/{up.port}"
        rt = await start_proxy(router_yaml(dtab, server_extra="    clearContext: true\n  - ip: 127.0.0.1\n    port: 0\n"))
        c = await Client.connect(proxy_port(rt, 0))
        for _ in range(2):  # the second on the same connection: the framing was right
            r = await asyncio.wait_for(c.request("GET", "/", {"Host": "web", "x-inner": "err"}), WAIT_S)
            assert r.status == 502 and r.body == b""
            assert r.header("content-length") == "0" and r.header("transfer-encoding") is None
            assert not [n for n, _ in r.headers if n.startswith("l5d-")]
        r = await asyncio.wait_for(c.request("GET", "/", {"Host": "web"}), WAIT_S)
        assert r.status == 200 and r.body == b"fine"
        await c.close()
        inside = await Client.connect(proxy_port(rt, 1))  # a mesh-internal server: untouched
        r = await asyncio.wait_for(inside.request("GET", "/", {"Host": "web", "x-inner": "err"}), WAIT_S)
        assert r.status == 502 and r.body == INNER_ERR_BODY and r.header("l5d-err") == "No+hosts+are+available"
        await inside.close()
        await rt.drain()
        up.close()

    run(main())


def test_edge_strips_l5d_fields_from_interim_heads_and_trailers(run: Any) -> None:
    """docs/dtab.md §13.5 on HTTP/1.1 as on HTTP/2: a 1xx head and the trailers of a
    chunked response lose their l5d-* fields at an edge; other fields pass."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nl5d-ctx-hint: inner\r\nlink: </style.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n"
            b"0\r\nl5d-ctx-trailer: inner\r\nx-checksum: 1\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async def main() -> None:
        up = await RawUpstream(handle).start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{up.port}", server_extra="    clearContext: true\n"))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(b"GET / HTTP/1.1\r\nHost: web\r\nTE: trailers\r\n\r\n")

        async def read() -> None:
            interim = await read_response(c.reader)
            assert interim.status == 103 and interim.headers == [("link", "</style.css>")]
            line = await c.reader.readline()
            assert line.startswith(b"HTTP/1.1 200 ")
            fields = dict(await read_fields(c.reader))
            assert fields["transfer-encoding"] == "chunked"
            body, trailers = await _read_trailers(c.reader)
            assert body == b"ok" and trailers == [("x-checksum", "1")]

        await asyncio.wait_for(read(), WAIT_S)
        await c.close()
        await rt.drain()
        up.close()

    run(main())


# -- 2. an upgrade the upstream declines ---------------------------------------------------------------


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_declined_upgrade_leaves_the_connection_http(run: Any, pipelined: bool) -> None:
    """A WebSocket upgrade answered 403 (the upstream's refusal) or 502 (the proxy's own:
    nothing listens there): HTTP/1.1 goes on, and the next request on the connection,
    sent after the answer or pipelined right behind the upgrade, is served."""

    async def main() -> None:
        web = await Backend("web").start()
        dtab = f"/svc/web => /$/inet/127.0.0.1/{web.port}; /svc/gone => /$/inet/127.0.0.1/1"  # refused
        rt = await start_proxy(router_yaml(dtab))
        c = await Client.connect(proxy_port(rt))
        for host, refused, status in (("web", "status:403", 403), ("gone", "", 502)):
            upgrade = (f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"x-respond: {refused}\r\n\r\n").encode()
            follow = b"GET /next HTTP/1.1\r\nHost: web\r\n\r\n"
            await c.send_raw(upgrade + follow if pipelined else upgrade)
            r = await asyncio.wait_for(read_response(c.reader), WAIT_S)
            assert r.status == status
            if not pipelined:
                await c.send_raw(follow)
            r = await asyncio.wait_for(read_response(c.reader), WAIT_S)
            assert r.status == 200 and r.body == b"web GET /next"
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_an_upgrade_pipelined_behind_a_request_still_tunnels(run: Any) -> None:
    """The request before the upgrade ends first: that is no reason to give the upgrade
    up. The tunnel's first bytes, sent with both heads, reach the upstream after the 101."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            if b"upgrade: websocket" not in head:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            await writer.drain()
            while data := await reader.read(1024):
                writer.write(data.upper())
                await writer.drain()
            return

    async def main() -> None:
        up = await RawUpstream(handle).start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{up.port}"))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(b"GET /a HTTP/1.1\r\nHost: web\r\n\r\n"
                         b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nping")
        r = await asyncio.wait_for(read_response(c.reader), WAIT_S)
        assert r.status == 200 and r.body == b"ok"
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), WAIT_S)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert await asyncio.wait_for(c.reader.readexactly(4), WAIT_S) == b"PING"
        await c.close()
        await rt.drain()
        up.close()

    run(main())


# -- 3. a 101 nobody asked for ------------------------------------------------------------------------------


def test_101_to_a_request_without_upgrade_is_a_502(run: Any) -> None:
    """RFC 9110 §15.2.2: a server switches only to a protocol the request offered. A 101
    to a plain GET is the upstream's fault: 502 with l5d-err, no tunnel; the client's
    connection goes on (the next request reaches a fresh upstream connection)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            if n == 1:
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw")
                await writer.drain()
                await reader.read()
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async def main() -> None:
        up = await RawUpstream(handle).start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{up.port}"))
        c = await Client.connect(proxy_port(rt))
        r = await asyncio.wait_for(c.request("GET", "/", {"Host": "web"}), WAIT_S)
        assert r.status == 502 and b"101" in r.body and b"RFC 9110" in r.body
        assert "101" in (r.header("l5d-err") or "")
        r = await asyncio.wait_for(c.request("GET", "/", {"Host": "web"}), WAIT_S)
        assert r.status == 200 and r.body == b"ok"
        assert up.connections == 2
        await c.close()
        await rt.drain()
        up.close()

    run(main())


# -- 4. a broken request pipelined behind a busy exchange --------------------------------------------------


@pytest.mark.parametrize(("bad", "status", "limits"), [
    (b"zz\r\nab\r\n", 400, ""),  # not a chunk size
    (b"a\r\n0123456789\r\n", 413, "  limits:\n    maxRequestBodyBytes: 8\n"),  # over the body limit
])  # fmt: skip
def test_a_broken_pipelined_request_is_answered_after_the_owed_response_and_never_forwarded(
    run: Any, bad: bytes, status: int, limits: str
) -> None:
    """The second request's head and first chunk arrive while the first waits for its
    response; then its body breaks. The first is answered, then the second gets its
    4xx and the connection closes; the second never reaches the upstream."""
    got_first, release = asyncio.Event(), asyncio.Event()
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head.split(b"\r\n")[0])
            got_first.set()
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
            await writer.drain()

    async def broken(rt: Any) -> None:
        """Until the proxy has read the broken chunk: its connection holds the error,
        queued behind the owed response (read off the connection, since the compiled
        class cannot be patched). Each turn of the loop lets the proxy read."""
        for _ in range(100_000):
            conns = [c for lst in rt.listeners for c in lst.connections]
            if conns and any(isinstance(e, PeerProtocolError) for e in conns[0]._queue):
                return
            await asyncio.sleep(0)
        raise AssertionError("the proxy never read the broken chunk")

    async def main() -> None:
        up = await RawUpstream(handle).start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{up.port}", extra=limits))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(
            b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n"
        )
        await asyncio.wait_for(got_first.wait(), WAIT_S)
        await c.send_raw(bad)
        await asyncio.wait_for(broken(rt), WAIT_S)
        release.set()
        r = await asyncio.wait_for(read_response(c.reader), WAIT_S)
        assert r.status == 200 and r.body == b"first"
        r = await asyncio.wait_for(read_response(c.reader), WAIT_S)
        assert r.status == status and r.header("connection") == "close"
        assert await asyncio.wait_for(c.reader.read(), WAIT_S) == b""  # closed after it
        assert seen == [b"GET /1 HTTP/1.1"]
        await c.close()
        await rt.drain()
        up.close()

    run(main())


# -- 6. trailers and the Connection header ------------------------------------------------------------------


def test_trailer_fields_nominated_by_connection_are_removed_both_ways(run: Any) -> None:
    """RFC 9110 §7.6.1: "any header or trailer field(s)" a Connection header names is
    removed before forwarding, in the request's trailers and in the response's."""
    request_trailers: list[list[tuple[str, str]]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        assert b"x-hop" not in head  # the nominated header field: dropped as before
        body, trailers = await _read_trailers(reader)
        request_trailers.append(trailers)
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: head\r\ntransfer-encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\nx-secret: trailer\r\nx-ok: 1\r\n\r\n" % (len(body), body)
        )
        await writer.drain()
        await reader.read()

    async def main() -> None:
        up = await RawUpstream(handle).start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{up.port}"))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(
            b"POST / HTTP/1.1\r\nHost: web\r\nConnection: x-hop\r\nX-Hop: head\r\nTE: trailers\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\nX-Hop: trailer\r\nX-Keep: 2\r\n\r\n"
        )

        async def read() -> tuple[list[tuple[str, str]], bytes, list[tuple[str, str]]]:
            assert (await c.reader.readline()).startswith(b"HTTP/1.1 200 ")
            fields = await read_fields(c.reader)
            body, trailers = await _read_trailers(c.reader)
            return fields, body, trailers

        fields, body, trailers = await asyncio.wait_for(read(), WAIT_S)
        assert request_trailers == [[("x-keep", "2")]]
        assert "x-secret" not in dict(fields) and body == b"body" and trailers == [("x-ok", "1")]
        await c.close()
        await rt.drain()
        up.close()

    run(main())


# -- 7. an HTTP/0.9 line right after a Content-Length body ----------------------------------------------------


def test_http09_line_right_after_a_body_is_answered_400_at_once(run: Any) -> None:
    """`GET /` (no version) follows the last byte of a Content-Length body in the same
    read: 400 after the first response, then close, without waiting for the header read
    timeout (a minute here, far past this test's bound)."""

    async def main() -> None:
        web = await Backend("web").start()
        limits = "  limits:\n    headerReadTimeoutMs: 60000\n    idleTimeoutMs: 60000\n"
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra=limits))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(b"POST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nx-respond: echo\r\n\r\nabcGET /\r\n")
        r = await asyncio.wait_for(read_response(c.reader), WAIT_S)
        assert r.status == 200 and r.body == b"abc"
        r = await asyncio.wait_for(read_response(c.reader), WAIT_S)
        assert r.status == 400 and b"HTTP/0.9" in r.body
        assert await asyncio.wait_for(c.reader.read(), WAIT_S) == b""
        assert [s.target for s in web.seen] == ["/a"]
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


# -- 12. the override signature field -------------------------------------------------------------------------------


def test_signature_field_not_named_l5d_is_never_forwarded(run: Any) -> None:
    """`overrides.trust.hmac.header` names the proxy's credential: with or without an
    override in the request, plain head or not, it never reaches the upstream."""

    async def main() -> None:
        web = await Backend("web").start()
        extra = "  overrides:\n    trust:\n      hmac: {header: x-dtab-sig, key: '0123456789abcdef0123'}\n"
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra=extra))
        c = await Client.connect(proxy_port(rt))
        for extra_fields in ([], [("l5d-ctx-foo", "1")], [("Connection", "x-a")]):
            r = await asyncio.wait_for(c.request("GET", "/", [("Host", "web"), ("X-Dtab-Sig", "f" * 64), *extra_fields]), WAIT_S)
            assert r.status == 200
            assert web.seen[-1].header("x-dtab-sig") is None
        assert len(web.seen) == 3
        await c.close()
        await rt.drain()
        await web.close()

    run(main())
