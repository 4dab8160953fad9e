"""Ambiguous framing is answered 400 and the connection closed; nothing reaches the
backend that it could frame differently (request smuggling, RFC 9112 §6.1, §6.3, §11.2)."""

from __future__ import annotations

import asyncio
from typing import Any

import h2.events
import pytest

from .grpc_helpers import H2Client, h2_router_yaml
from .harness import Backend, Client, proxy_port, read_response, router_yaml, start_proxy

ATTACKS = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n",
    "two-different-cl": b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    "cl-list-differs": b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4, 5\r\n\r\nabcd",
    "cl-signed": b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: +4\r\n\r\nabcd",
    "te-not-final-chunked": b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te-unknown": b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-http10": b"POST / HTTP/1.0\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: web\r\nX-A: one\r\n two\r\n\r\n",
    "bare-lf-header": b"GET / HTTP/1.1\r\nHost: web\nX-A: b\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: web\r\nContent-Length : 4\r\n\r\nabcd",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-missing-crlf": b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\x00b\r\n\r\n",
    "no-host-11": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: web\r\nHost: other\r\n\r\n",
    "bad-version": b"GET / HTTP/2.0\r\nHost: web\r\n\r\n",
    "not-http": b"NOT HTTP\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_ambiguous_framing_is_400_and_closes(run: Any, name: str) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        writer.write(ATTACKS[name])
        data = await reader.read()  # the proxy closes after its answer
        assert data.startswith(b"HTTP/1.1 400 "), data[:200]
        assert data.count(b"HTTP/1.1 ") == 1
        assert web.seen == []
        writer.close()
        await rt.drain()
        await web.close()

    run(main())


def test_oversized_head_is_431_naming_the_limit(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        extra = "  limits:\n    maxHeaderBytes: 1024\n"
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra=extra))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        writer.write(b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        data = await reader.read()
        assert data.startswith(b"HTTP/1.1 431 ")
        assert b"1024" in data
        writer.close()
        await rt.drain()
        await web.close()

    run(main())


def test_error_after_a_good_pipelined_request_comes_after_its_response(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        writer.write(b"GET /ok HTTP/1.1\r\nHost: web\r\n\r\n" + ATTACKS["cl-and-te"])
        data = await reader.read()
        first = data.find(b"HTTP/1.1 200 ")
        second = data.find(b"HTTP/1.1 400 ")
        assert 0 <= first < second
        assert [s.target for s in web.seen] == ["/ok"]
        writer.close()
        await rt.drain()
        await web.close()

    run(main())


def test_bad_chunk_inside_a_forwarded_body_cancels_that_exchange(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        writer.write(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.write(b"zz\r\nnot a chunk\r\n0\r\n\r\n")
        data = await reader.read()
        assert data.startswith(b"HTTP/1.1 400 ")
        assert web.seen == []  # the backend never saw a complete request
        writer.close()
        await rt.drain()
        await web.close()

    run(main())


# -- issue 10, items 10-15 and the request body limit ------------------------------------------
#
# Each test sends raw bytes and asserts what the backend received (or that it received
# nothing) and what the client got.


class RawBackend:
    """An upstream that records every byte it receives and, once a request head has
    arrived on a connection, writes `reply` (if any) and keeps the connection open."""

    def __init__(self, reply: bytes = b"") -> None:
        self.reply = reply
        self.received = b""
        self.closed = asyncio.Event()  # a connection ended
        self._grew = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> RawBackend:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start = len(self.received)
        replied = False
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                self.received += data
                self._grew.set()
                if self.reply and not replied and b"\r\n\r\n" in self.received[start:]:
                    replied = True
                    writer.write(self.reply)
        except ConnectionError:
            return
        finally:
            writer.close()
            self.closed.set()

    async def wait_for(self, pattern: bytes) -> None:
        while pattern not in self.received:
            self._grew.clear()
            await self._grew.wait()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _exchange(port: int, data: bytes) -> bytes:
    """Send `data` and read until the proxy closes (bounded by the test's timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await reader.read()
    finally:
        writer.close()


def _head_and_body(data: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        n, _, v = line.partition(b":")
        fields[n.strip().lower()] = v.strip()
    return lines[0], fields, body


def test_http10_without_host_is_forwarded_with_an_empty_host(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        ident = "    kind: io.l5d.methodAndHost\n"
        rt = await start_proxy(router_yaml(f"/svc/1.0/GET => /$/inet/127.0.0.1/{web.port}", identifier=ident))
        data = await _exchange(proxy_port(rt), b"GET /old HTTP/1.0\r\nUser-Agent: lynx\r\n\r\n")
        status, fields, body = _head_and_body(data)
        assert status == b"HTTP/1.1 200 OK" and fields[b"connection"] == b"close"
        assert body == b"web GET /old"
        (seen,) = web.seen
        assert seen.header("host") == ""  # the upstream request is HTTP/1.1: Host present, empty
        assert seen.header("l5d-dst-service") == "/svc/1.0/GET"
        await rt.drain()
        await web.close()

    run(main())


def test_http10_absolute_form_without_host_takes_the_authority(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/svc/web => /$/inet/127.0.0.1/{web.port}"))
        data = await _exchange(proxy_port(rt), b"GET http://web/x HTTP/1.0\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"web GET /x")
        assert web.seen[0].header("host") == "web" and web.seen[0].target == "/x"
        await rt.drain()
        await web.close()

    run(main())


def test_http10_without_host_and_the_host_identifier_is_a_clear_400(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        data = await _exchange(proxy_port(rt), b"GET / HTTP/1.0\r\n\r\n")
        status, fields, body = _head_and_body(data)
        assert status.startswith(b"HTTP/1.1 400 ")
        assert b"io.l5d.header.token" in body and b"HTTP/1.0" in body and b"io.l5d.methodAndHost" in body
        assert web.seen == []
        await rt.drain()
        await web.close()

    run(main())


@pytest.mark.parametrize(
    "nominates", [b"Content-Length", b"keep-alive, content-length", b"Host"]
)
def test_connection_nominating_a_field_for_every_recipient_is_400(run: Any, nominates: bytes) -> None:
    async def main() -> None:
        web = await RawBackend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        data = await _exchange(
            proxy_port(rt),
            b"POST / HTTP/1.1\r\nHost: web\r\nConnection: " + nominates + b"\r\nContent-Length: 5\r\n\r\nhello",
        )
        assert data.startswith(b"HTTP/1.1 400 ") and data.count(b"HTTP/1.1 ") == 1
        assert b"Connection header nominates" in data
        assert web.received == b""  # refused, not forwarded without its framing
        await rt.drain()
        await web.close()

    run(main())


def test_connection_nominating_transfer_encoding_or_other_fields_keeps_every_body_byte(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(
            b"POST /te HTTP/1.1\r\nHost: web\r\nConnection: transfer-encoding, x-hop\r\nX-Hop: 1\r\n"
            b"Transfer-Encoding: chunked\r\nx-respond: echo\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        r = await read_response(c.reader)
        assert r.status == 200 and r.body == b"hello world"
        (seen,) = web.seen
        assert seen.body == b"hello world" and seen.header("x-hop") is None
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


H2C_UPGRADE = (
    b"GET /up HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)


def test_h2c_upgrade_is_never_forwarded_and_http_goes_on(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(H2C_UPGRADE)
        r = await read_response(c.reader)
        assert r.status == 200 and r.body == b"web GET /up"  # an ordinary response, no 101
        r = await c.request("POST", "/next", {"Host": "web", "x-respond": "echo"}, b"after")
        assert r.status == 200 and r.body == b"after"  # the same connection, still HTTP/1.1
        first = web.seen[0]
        assert first.header("upgrade") is None and first.header("http2-settings") is None
        assert first.header("connection") is None
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_h2c_upgrade_with_a_body_forwards_the_body(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(
            H2C_UPGRADE.replace(b"GET /up", b"POST /up").replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello")
            + b"GET /next HTTP/1.1\r\nHost: web\r\n\r\n"
        )
        assert (await read_response(c.reader)).status == 200
        assert (await read_response(c.reader)).body == b"web GET /next"
        assert [(s.target, s.body, s.header("upgrade")) for s in web.seen] == [("/up", b"hello", None), ("/next", b"", None)]
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_h2c_among_other_upgrade_offers_is_removed(run: Any) -> None:
    async def main() -> None:
        web = await RawBackend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(
            b"GET /chat HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c, websocket\r\nHTTP2-Settings: AAMA\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        r = await read_response(c.reader)
        assert r.status == 200 and r.body == b"no"
        line, fields, _ = _head_and_body(web.received)
        assert fields[b"upgrade"] == b"websocket" and fields[b"connection"] == b"upgrade"
        assert b"http2-settings" not in fields and b"h2c" not in web.received.lower()
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


@pytest.mark.parametrize("protocol", ["http", "h2"])
@pytest.mark.parametrize("line", [b"GET /\r\n", b"GET /index.html\n"])
def test_http09_request_is_answered_and_closed(run: Any, protocol: str, line: bytes) -> None:
    async def main() -> None:
        web = await RawBackend().start()
        dtab = f"/svc => /$/inet/127.0.0.1/{web.port}"
        yaml = router_yaml(dtab) if protocol == "http" else h2_router_yaml(dtab, upstream="http")
        rt = await start_proxy(yaml)
        data = await _exchange(proxy_port(rt), line)  # returns once the proxy has closed
        assert data.startswith(b"HTTP/1.1 400 ") and b"HTTP/0.9" in data
        assert web.received == b""
        await rt.drain()
        await web.close()

    run(main())


HOP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: secret\r\nX-Keep: kept\r\n"
    b"Connection: x-other\r\nX-Other: 2\r\nContent-Length: 2\r\n\r\nok"
)


def test_response_fields_nominated_by_connection_never_reach_an_http1_client(run: Any) -> None:
    async def main() -> None:
        web = await RawBackend(HOP_RESPONSE).start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web"})
        assert r.status == 200 and r.body == b"ok" and r.header("x-keep") == "kept"
        names = [n for n, _ in r.headers]
        assert "x-hop" not in names and "x-other" not in names and "connection" not in names
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_response_fields_nominated_by_connection_never_reach_an_h2_client(run: Any) -> None:
    async def main() -> None:
        web = await RawBackend(HOP_RESPONSE).start()
        rt = await start_proxy(
            h2_router_yaml(f"/svc/web => /$/inet/127.0.0.1/{web.port}", upstream="http",
                           identifier="    kind: io.l5d.header.token\n")
        )  # fmt: skip
        c = await H2Client.connect(proxy_port(rt))
        r = await c.request(b"GET", b"/", b"web")
        assert r.status == 200 and r.body == b"ok" and (b"x-keep", b"kept") in r.headers
        names = [n for n, _ in r.headers]
        assert b"x-hop" not in names and b"x-other" not in names and b"connection" not in names
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_response_nominating_content_length_is_502(run: Any) -> None:
    async def main() -> None:
        web = await RawBackend(b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}"))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web"})
        assert r.status == 502 and b"Content-Length" in r.body
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_dst_prefix_root_names_requests_without_a_prefix(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/web => /$/inet/127.0.0.1/{web.port}", extra="  dstPrefix: /\n"))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/x", {"Host": "web"})
        assert r.status == 200 and web.seen[0].header("l5d-dst-service") == "/web"
        r = await c.request("GET", "/x", {"Host": "other"})
        assert r.status == 502 and b"/other" in r.body  # named /other: no dentry binds it
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


# -- limits.maxRequestBodyBytes (and Linkerd's maxRequestKB, maxInitialLineKB) ---------------------

LIMIT = "  limits:\n    maxRequestBodyBytes: 10\n"
CHUNKED_HEAD = b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_content_length_above_the_limit_is_413_before_anything_goes_upstream(run: Any) -> None:
    async def main() -> None:
        web = await RawBackend().start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra=LIMIT))
        data = await _exchange(
            proxy_port(rt), b"POST / HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n"
        )
        status, fields, body = _head_and_body(data)
        assert status.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in data
        assert b"more than 10 bytes (limits.maxRequestBodyBytes)" in body
        assert web.received == b""
        await rt.drain()
        await web.close()

    run(main())


def test_chunked_body_past_the_limit_is_413_and_never_forwarded_past_it(run: Any) -> None:
    async def main() -> None:
        web = await RawBackend().start()  # never answers: the proxy's 413 is the answer
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra=LIMIT))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        writer.write(CHUNKED_HEAD + b"a\r\n" + b"x" * 10 + b"\r\n")
        await web.wait_for(b"x" * 10)  # the part within the limit streamed upstream
        writer.write(b"5\r\nZZZZZ\r\n0\r\n\r\n")
        data = await reader.read()
        assert data.startswith(b"HTTP/1.1 413 ") and b"limits.maxRequestBodyBytes" in data
        await web.closed.wait()  # the upstream exchange was cancelled
        assert b"Z" not in web.received.partition(b"\r\n\r\n")[2]  # the upstream body
        writer.close()
        await rt.drain()
        await web.close()

    run(main())


def test_chunked_body_past_the_limit_after_the_response_started_resets(run: Any) -> None:
    async def main() -> None:
        web = await RawBackend(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra=LIMIT))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        writer.write(CHUNKED_HEAD + b"a\r\n" + b"x" * 10 + b"\r\n")
        got = await reader.readuntil(b"abc\r\n")  # the response has started
        assert got.startswith(b"HTTP/1.1 200 ")
        writer.write(b"5\r\nZZZZZ\r\n")
        try:
            rest = await reader.read()
        except ConnectionError:
            rest = b""
        assert b"0\r\n\r\n" not in rest  # cut short: the client sees the connection end
        await web.closed.wait()
        body = web.received.partition(b"\r\n\r\n")[2]
        assert b"Z" not in body and b"x" * 10 in body
        writer.close()
        await rt.drain()
        await web.close()

    run(main())


def test_max_request_kb_is_enforced(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra="  maxRequestKB: 1\n"))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("POST", "/ok", {"Host": "web", "x-respond": "echo"}, b"y" * 1024)
        assert r.status == 200 and len(r.body) == 1024
        r = await c.request("POST", "/big", {"Host": "web"}, b"y" * 1025)
        assert r.status == 413 and b"more than 1024 bytes" in r.body
        assert [s.target for s in web.seen] == ["/ok"]
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_max_initial_line_kb_bounds_the_request_target(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra="  maxInitialLineKB: 1\n"))
        data = await _exchange(proxy_port(rt), b"GET /" + b"a" * 1024 + b" HTTP/1.1\r\nHost: web\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 414 ") and b"1024 bytes" in data
        assert web.seen == []
        await rt.drain()
        await web.close()

    run(main())


class _DataWatchingClient(H2Client):
    """H2Client with an event set whenever DATA arrives (to wait for a response to start)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.data_seen = asyncio.Event()

    def _event(self, ev: Any) -> None:
        super()._event(ev)
        if isinstance(ev, h2.events.DataReceived):
            self.data_seen.set()


def _h2_limited(port: int) -> str:
    return h2_router_yaml(f"/svc/web => /$/inet/127.0.0.1/{port}", upstream="http",
                          identifier="    kind: io.l5d.header.token\n", extra=LIMIT)  # fmt: skip


def test_h2_content_length_above_the_limit_is_413(run: Any) -> None:
    async def main() -> None:
        web = await RawBackend().start()
        rt = await start_proxy(_h2_limited(web.port))
        c = await H2Client.connect(proxy_port(rt))
        r = await c.request(b"POST", b"/", b"web", [(b"content-length", b"11")], b"x" * 11)
        assert r.status == 413 and b"limits.maxRequestBodyBytes" in r.body
        assert web.received == b"" and c.goaway is None  # a stream's answer; the connection stays
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_h2_data_past_the_limit_is_413_and_never_forwarded_past_it(run: Any) -> None:
    async def main() -> None:
        web = await RawBackend().start()
        rt = await start_proxy(_h2_limited(web.port))
        c = await H2Client.connect(proxy_port(rt))
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/up")]
        sid = c.start(fields, b"x" * 10, end=False)
        await web.wait_for(b"x" * 10)
        c.conn.send_data(sid, b"ZZZZZ")
        c.flush()
        r = c.responses[sid]
        await r.done.wait()
        assert r.status == 413 and b"limits.maxRequestBodyBytes" in r.body
        await web.closed.wait()
        assert b"Z" not in web.received.partition(b"\r\n\r\n")[2]
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_h2_data_past_the_limit_after_the_response_started_resets_the_stream(run: Any) -> None:
    async def main() -> None:
        web = await RawBackend(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n").start()
        rt = await start_proxy(_h2_limited(web.port))
        c = await _DataWatchingClient.connect(proxy_port(rt))
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/up")]
        sid = c.start(fields, b"x" * 10, end=False)
        r = c.responses[sid]
        await web.wait_for(b"x" * 10)
        while r.body != b"abc":  # the response has started: its head and first bytes arrived
            c.data_seen.clear()
            await c.data_seen.wait()
        c.conn.send_data(sid, b"ZZZZZ")
        c.flush()
        await r.done.wait()
        assert r.status == 200 and r.reset is not None  # cut short: the stream is reset
        await web.closed.wait()
        assert b"Z" not in web.received.partition(b"\r\n\r\n")[2]
        r2 = await c.request(b"GET", b"/", b"web", [(b"content-length", b"11")], b"x" * 11)
        assert r2.status == 413  # only that stream ended; the connection serves on
        await c.close()
        await rt.drain()
        await web.close()

    run(main())
