"""Ambiguous framing is answered 400 and the connection closed; nothing reaches the
backend that it could frame differently (request smuggling, RFC 9112 §6.1, §6.3, §11.2)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .harness import Backend, proxy_port, router_yaml, start_proxy

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
