"""Edges of the HTTP/1.1 data plane: trust rules, clearContext, timeouts, pooled-connection
replay, 100-continue, Upgrade tunnels, identifiers that rewrite the target, live fs namers."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .harness import Backend, Client, proxy_port, read_response, router_yaml, start_proxy


def test_untrusted_source_gets_403_naming_the_rule(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        extra = "  overrides:\n    trust:\n      cidrs: [10.0.0.0/8]\n"
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra=extra))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": "/svc/web => /$/inet/169.254.169.254/80"})
        assert r.status == 403
        assert b"overrides.trust.cidrs" in r.body
        assert "overrides.trust.cidrs" in (r.header("l5d-err") or "")
        assert web.seen == []  # refused before routing
        r = await c.request("GET", "/", {"Host": "web"})
        assert r.status == 200
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_override_limits_and_allow_prefixes(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        extra = "  overrides:\n    maxBytes: 64\n    maxEntries: 2\n    allowPrefixes: [/svc/world]\n"
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra=extra))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": "/svc/world => /a;" * 10})
        assert r.status == 431 and b"overrides.maxBytes 64" in r.body
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": "/svc/world=>/a;/svc/world=>/b;/svc/world=>/c"})
        assert r.status == 431 and b"overrides.maxEntries 2" in r.body
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": "/svc/web => /$/inet/169.254.169.254/80"})
        assert r.status == 403 and b"overrides.allowPrefixes" in r.body
        r = await c.request("GET", "/", {"Host": "world", "l5d-dtab": "/svc/world => /svc/web"})
        assert r.status == 200 and r.body == b"web GET /"
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_clear_context_strips_l5d_headers_both_ways(run: Any) -> None:
    async def main() -> None:
        web, evil = await Backend("web").start(), await Backend("evil").start()
        rt = await start_proxy(router_yaml(
            f"/svc/web => /$/inet/127.0.0.1/{web.port}; /svc/evil => /$/inet/127.0.0.1/{evil.port}",
            server_extra="    clearContext: true\n"))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": "/svc/web => /svc/evil", "l5d-ctx-foo": "x"})
        assert r.status == 200 and r.body == b"web GET /"
        seen = web.seen[0]
        assert seen.header("l5d-ctx-foo") is None
        assert seen.header("l5d-ctx-dtab") is None
        assert seen.header("l5d-dst-service") == "/svc/web"  # the proxy's own headers still go
        r = await c.request("GET", "/", {"Host": "nowhere"})
        assert r.status == 502 and r.body == b"no route to the requested service" and r.header("l5d-err") is None
        await c.close()
        await rt.drain()
        await web.close()
        await evil.close()

    run(main())


async def _silent_server() -> tuple[asyncio.AbstractServer, int, list[bytes]]:
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read(65536))
        await reader.read()  # never answers
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], got


def test_router_timeout_answers_503(run: Any) -> None:
    async def main() -> None:
        server, port, _ = await _silent_server()
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{port}", extra="  timeoutMs: 200\n"))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "slow"})
        assert r.status == 503
        assert b"exceeded 200 ms" in r.body
        await c.close()
        await rt.drain()
        server.close()

    run(main())


def test_stale_pooled_connection_is_replayed_for_idempotent_requests(run: Any) -> None:
    async def main() -> None:
        # A backend that answers one request per connection but claims keep-alive, then closes.
        conns = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal conns
            conns += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{port}"))
        c = await Client.connect(proxy_port(rt))
        for _ in range(4):
            r = await c.request("GET", "/", {"Host": "x"})
            assert r.status == 200 and r.body == b"ok"
        assert conns >= 4
        await c.close()
        await rt.drain()
        server.close()

    run(main())


def test_expect_100_continue_is_relayed(run: Any) -> None:
    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"expect: 100-continue" in head.lower()
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            body = await reader.readexactly(5)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n" + body)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{port}"))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        interim = await read_response(c.reader)
        assert interim.status == 100
        await c.send_raw(b"hello")
        final = await read_response(c.reader)
        assert final.status == 200 and final.body == b"hello"
        await c.close()
        await rt.drain()
        server.close()

    run(main())


def test_upgrade_is_tunnelled_after_101(run: Any) -> None:
    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            assert b"upgrade: websocket" in head and b"connection: upgrade" in head
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            await writer.drain()
            while data := await reader.read(1024):
                writer.write(data.upper())
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{port}"))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        r = await c.reader.readuntil(b"\r\n\r\n")
        assert r.startswith(b"HTTP/1.1 101 ")
        await c.send_raw(b"ping")
        assert await c.reader.readexactly(4) == b"PING"
        await c.send_raw(b"more bytes")
        assert await c.reader.readexactly(10) == b"MORE BYTES"
        await c.close()
        await rt.drain()
        server.close()

    run(main())


def test_path_identifier_consumes_segments(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        ident = "    kind: io.l5d.path\n    segments: 2\n    consume: true"
        rt = await start_proxy(router_yaml(f"/svc/mysvc/sub => /$/inet/127.0.0.1/{web.port}", identifier=ident))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/mysvc/sub/some/path?other=stuff", {"Host": "x"})
        assert r.status == 200
        assert web.seen[0].target == "/some/path?other=stuff"
        r = await c.request("GET", "/", {"Host": "x"})
        assert r.status == 400 and "Unknown destination" in (r.body.decode())
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_fs_namer_edit_takes_effect_without_restart(run: Any, tmp_path: Any) -> None:
    async def main() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        disco = tmp_path / "disco"
        disco.mkdir()
        (disco / "web").write_text(f"127.0.0.1 {a.port}\n")
        yaml = (
            f"namers:\n- kind: io.l5d.fs\n  rootDir: {disco}\n  pollIntervalMs: 50\n"
            + router_yaml("/svc => /#/io.l5d.fs")
        )
        rt = await start_proxy(yaml)
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web"})
        assert r.body == b"a GET /"
        r = await c.request("GET", "/", {"Host": "api"})
        assert r.status == 502
        namer = rt.namers[0][1]
        changed = asyncio.Event()
        namer.endpoints(b"web").subscribe(lambda *_: changed.set())
        new = disco / "web.tmp"
        new.write_text(f"127.0.0.1 {b.port}\n")
        os.replace(new, disco / "web")
        await asyncio.wait_for(changed.wait(), 5)
        r = await c.request("GET", "/", {"Host": "web"})
        assert r.body == b"b GET /"
        names = asyncio.Event()
        namer.subscribe_names(lambda *_: names.set())
        (disco / "api").write_text(f"127.0.0.1 {a.port}\n")
        await asyncio.wait_for(names.wait(), 5)
        r = await c.request("GET", "/", {"Host": "api"})
        assert r.status == 200 and r.body == b"a GET /"
        await c.close()
        await rt.drain()
        await a.close()
        await b.close()

    run(main())


def test_slow_request_head_gets_408_after_header_read_timeout(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        extra = "  limits:\n    headerReadTimeoutMs: 200\n    idleTimeoutMs: 60000\n"
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra=extra))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
        writer.write(b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ")  # and never the rest
        data = await reader.read()  # the sweeper answers and closes
        assert data.startswith(b"HTTP/1.1 408 ")
        assert b"limits.headerReadTimeoutMs" in data
        assert web.seen == []
        writer.close()
        await rt.drain()
        await web.close()

    run(main())


def test_forwarded_and_via_when_configured(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        extra = "  addForwarded: true\n  addVia: true\n"
        rt = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{web.port}", extra=extra))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web:8080"})
        assert r.status == 200
        seen = web.seen[0]
        assert seen.header("forwarded") == 'for=127.0.0.1;proto=http;host="web:8080"'
        assert seen.header("via") == "1.1 dtabproxy"
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_identifier_list_is_tried_in_order(run: Any) -> None:
    async def main() -> None:
        a, b, s = await Backend("a").start(), await Backend("b").start(), await Backend("s").start()
        ident = (
            "  - kind: io.l5d.header\n    header: x-name\n"
            "  - kind: io.l5d.methodAndHost\n    httpUriInDst: true\n"
        )
        dtab = (
            f"/svc/named => /$/inet/127.0.0.1/{a.port};"
            f"/svc/1.1/GET/web/api => /$/inet/127.0.0.1/{b.port};"
            f"/svc/static => /$/inet/127.0.0.1/{s.port}"
        )
        rt = await start_proxy(router_yaml(dtab, identifier=ident))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/x", {"Host": "web", "x-name": "/named"})  # the first identifies
        assert r.body == b"a GET /x"
        r = await c.request("GET", "/api", {"Host": "WEB"})  # declined, then method and lower-cased host
        assert r.body == b"b GET /api"
        assert b.seen[0].header("l5d-dst-service") == "/svc/1.1/GET/web/api"
        r = await c.request("GET", "/x", {"Host": "web", "x-name": "not a path"})  # an error stops the chain
        assert r.status == 400 and b"Unknown destination" in r.body
        await c.close()
        await rt.drain()
        static = await start_proxy(router_yaml(dtab, identifier="    kind: io.l5d.static\n    path: /static"))
        c = await Client.connect(proxy_port(static))
        r = await c.request("GET", "/anything", {"Host": "whatever"})
        assert r.body == b"s GET /anything"
        await c.close()
        await static.drain()
        for x in (a, b, s):
            await x.close()

    run(main())


def test_hmac_signed_override_from_an_untrusted_source(run: Any) -> None:
    async def main() -> None:
        from proxy.route.trust import sign

        web, v2 = await Backend("web").start(), await Backend("v2").start()
        key = "0123456789abcdef0123"
        extra = f"  overrides:\n    trust:\n      cidrs: [10.0.0.0/8]\n      hmac: {{header: x-dtab-sig, key: '{key}'}}\n"
        dtab = f"/svc/web => /$/inet/127.0.0.1/{web.port}; /srv/v2 => /$/inet/127.0.0.1/{v2.port}"
        rt = await start_proxy(router_yaml(dtab, extra=extra))
        c = await Client.connect(proxy_port(rt))
        override = "/svc/web => /srv/v2"
        good = sign(key.encode(), [], [override.encode()]).decode()
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": override, "x-dtab-sig": good})
        assert r.status == 200 and r.body == b"v2 GET /"
        assert v2.seen[0].header("x-dtab-sig") is None  # the signature is not forwarded
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": override, "x-dtab-sig": "00" * 32})
        assert r.status == 403 and b"overrides.trust.hmac" in r.body
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": override})
        assert r.status == 403 and b"missing" in r.body
        await c.close()
        await rt.drain()
        await web.close()
        await v2.close()

    run(main())


def test_absolute_form_targets_use_their_authority_and_go_upstream_in_origin_form(run: Any) -> None:
    async def main() -> None:
        world = await Backend("world").start()
        rt = await start_proxy(router_yaml(f"/svc/world => /$/inet/127.0.0.1/{world.port}"))
        c = await Client.connect(proxy_port(rt))
        # What a client configured with http_proxy sends (RFC 9112 §3.2.2).
        r = await c.request("GET", "http://world/hello?x=1", {"Host": "ignored"})
        assert r.status == 200 and r.body == b"world GET /hello?x=1"
        seen = world.seen[0]
        assert seen.target == "/hello?x=1" and seen.header("host") == "world"
        assert seen.header("l5d-dst-service") == "/svc/world"
        r = await c.request("GET", "http://user@world?q", {"Host": "world"})
        assert r.status == 200 and world.seen[1].target == "/?q"
        await c.close()
        await rt.drain()
        await world.close()

    run(main())


def test_connect_timeout_fails_a_connect_that_never_completes() -> None:
    """client.connectTimeoutMs bounds each new upstream connection: a connect that never
    completes (a blackholed address) fails the request as a retryable connect failure."""
    from proxy.upstream.endpoint import Endpoint
    from proxy.wire.upstream_h1 import BODY_NONE, open_h1

    class Owner:
        def __init__(self) -> None:
            self.failed = asyncio.Event()
            self.exc: Exception | None = None

        def upstream_failed(self, exc: Exception) -> None:
            self.exc = exc
            self.failed.set()

        def pause_client_reads(self) -> None: ...

        def resume_client_reads(self) -> None: ...

    async def main() -> None:
        loop = asyncio.get_running_loop()
        never: asyncio.Future[Any] = loop.create_future()

        async def hang(*_a: Any, **_k: Any) -> Any:
            return await never

        loop.create_connection = hang  # type: ignore[method-assign]  # a plain asyncio loop
        ep = Endpoint("192.0.2.1", 80)
        owner = Owner()
        open_h1(ep, owner, b"GET", b"/", [(b"host", b"x")], BODY_NONE, loop, connect_timeout=0.05)
        await asyncio.wait_for(owner.failed.wait(), 10)
        assert owner.exc is not None and "Unable to connect to 192.0.2.1:80: timed out" in str(owner.exc)
        assert getattr(owner.exc, "retryable", False) is True
        assert ep.connections == 0  # the failed connection gave its pool slot back
        never.cancel()

    asyncio.run(main())
