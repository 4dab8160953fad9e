"""The HTTP/1.1 data plane over loopback: real sockets, in-process backends, on both
asyncio and uvloop."""

from __future__ import annotations

from typing import Any

from .harness import Backend, Client, proxy_port, read_response, router_yaml, start_proxy


async def _setup(dtab_text: str, *names: str, **kw: Any) -> tuple[Any, list[Backend]]:
    backends = [await Backend(n).start() for n in names]
    text = dtab_text
    for i, b in enumerate(backends):
        text = text.replace(f"{{{i}}}", str(b.port))
    rt = await start_proxy(router_yaml(text, **kw))
    return rt, backends


async def _teardown(rt: Any, backends: list[Backend]) -> None:
    await rt.drain()
    for b in backends:
        await b.close()


def test_routes_by_host_and_adds_linkerd_headers(run: Any) -> None:
    async def main() -> None:
        rt, (web,) = await _setup("/svc/web => /$/inet/127.0.0.1/{0}", "web")
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/hello?x=1", {"Host": "web", "X-Custom": "yes"})
        assert r.status == 200
        assert r.body == b"web GET /hello?x=1"
        seen = web.seen[0]
        assert seen.header("x-custom") == "yes"
        assert seen.header("l5d-dst-service") == "/svc/web"
        assert seen.header("l5d-dst-client") == f"/$/inet/127.0.0.1/{web.port}"
        assert seen.header("l5d-dst-residual") is None
        reqid = seen.header("l5d-reqid")
        assert reqid is not None and len(reqid) == 16
        assert seen.header("l5d-ctx-trace") is not None
        assert seen.header("l5d-ctx-dtab") is None
        await c.close()
        await _teardown(rt, [web])

    run(main())


def test_residual_header_and_keep_alive_reuses_one_upstream_connection(run: Any) -> None:
    async def main() -> None:
        rt, (web,) = await _setup("/svc => /$/inet/127.0.0.1/{0}", "web")
        c = await Client.connect(proxy_port(rt))
        for i in range(5):
            r = await c.request("GET", f"/{i}", {"Host": "web"})
            assert r.status == 200 and r.body == f"web GET /{i}".encode()
        assert web.seen[0].header("l5d-dst-residual") == "/web"
        assert {s.conn_id for s in web.seen} == {1}  # one pooled upstream connection
        await c.close()
        await _teardown(rt, [web])

    run(main())


def test_pipelined_requests_are_answered_in_order(run: Any) -> None:
    async def main() -> None:
        rt, (a, b) = await _setup("/svc/a => /$/inet/127.0.0.1/{0}; /svc/b => /$/inet/127.0.0.1/{1}", "a", "b")
        c = await Client.connect(proxy_port(rt))
        raw = b"".join(
            f"GET /{i} HTTP/1.1\r\nHost: {'ab'[i % 2]}\r\n\r\n".encode() for i in range(6)
        )
        await c.send_raw(raw)
        bodies = [(await read_response(c.reader)).body for _ in range(6)]
        assert bodies == [f"{'ab'[i % 2]} GET /{i}".encode() for i in range(6)]
        await c.close()
        await _teardown(rt, [a, b])

    run(main())


def test_chunked_request_and_response_bodies_stream_through(run: Any) -> None:
    async def main() -> None:
        rt, (web,) = await _setup("/svc/web => /$/inet/127.0.0.1/{0}", "web")
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(
            b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nx-respond: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        r = await read_response(c.reader)
        assert r.status == 200
        assert r.header("transfer-encoding") == "chunked"
        assert r.body == b"web POST /up"
        assert web.seen[0].body == b"hello world"
        # a Content-Length request body on the same connection
        r = await c.request("PUT", "/x", {"Host": "web", "x-respond": "echo"}, body=b"abc" * 1000)
        assert r.body == b"abc" * 1000
        await c.close()
        await _teardown(rt, [web])

    run(main())


def test_response_without_length_is_rechunked_for_http11_clients(run: Any) -> None:
    async def main() -> None:
        rt, (web,) = await _setup("/svc/web => /$/inet/127.0.0.1/{0}", "web")
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/close", {"Host": "web", "x-respond": "close"})
        assert r.status == 200
        assert r.header("transfer-encoding") == "chunked"
        assert r.body == b"web GET /close"
        r = await c.request("GET", "/again", {"Host": "web"})  # the client connection survives
        assert r.body == b"web GET /again"
        await c.close()
        await _teardown(rt, [web])

    run(main())


def test_head_204_304_have_no_body(run: Any) -> None:
    async def main() -> None:
        rt, (web,) = await _setup("/svc/web => /$/inet/127.0.0.1/{0}", "web")
        c = await Client.connect(proxy_port(rt))
        r = await c.request("HEAD", "/", {"Host": "web"})
        assert r.status == 200 and r.body == b"" and r.header("content-length") == "10"
        r = await c.request("GET", "/", {"Host": "web", "x-respond": "status:204"})
        assert r.status == 204 and r.body == b""
        r = await c.request("GET", "/", {"Host": "web", "x-respond": "status:304"})
        assert r.status == 304 and r.body == b""
        r = await c.request("GET", "/last", {"Host": "web"})
        assert r.body == b"web GET /last"
        await c.close()
        await _teardown(rt, [web])

    run(main())


def test_l5d_dtab_override_is_honoured_and_forwarded_as_ctx(run: Any) -> None:
    async def main() -> None:
        rt, (v1, v2) = await _setup(
            "/srv/v1 => /$/inet/127.0.0.1/{0}; /srv/v2 => /$/inet/127.0.0.1/{1}; /svc/world => /srv/v1", "v1", "v2"
        )
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "world"})
        assert r.body == b"v1 GET /"
        r = await c.request("GET", "/", {"Host": "world", "l5d-dtab": "/svc/world => /srv/v2;"})
        assert r.body == b"v2 GET /"
        seen = v2.seen[0]
        assert seen.header("l5d-ctx-dtab") == "/svc/world=>/srv/v2"
        assert seen.header("l5d-dtab") is None
        r = await c.request("GET", "/", {"Host": "world", "l5d-ctx-dtab": "/svc/world=>/srv/v2"})
        assert r.body == b"v2 GET /"
        await c.close()
        await _teardown(rt, [v1, v2])

    run(main())


def test_bad_override_is_400_with_l5d_err_and_no_route_is_502(run: Any) -> None:
    async def main() -> None:
        rt, (web,) = await _setup("/svc/web => /$/inet/127.0.0.1/{0}", "web")
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": "/svc/web => "})
        assert r.status == 400
        assert r.header("l5d-err") is not None
        assert b"expected but end of input found" in r.body
        r = await c.request("GET", "/", {"Host": "nothing"})
        assert r.status == 502
        assert b"Unable to route request!" in r.body
        assert b"service name: /svc/nothing" in r.body
        assert r.header("l5d-err", ) is not None
        r = await c.request("GET", "/", {"Host": "web"})  # the connection is still good
        assert r.status == 200
        await c.close()
        await _teardown(rt, [web])

    run(main())


def test_connect_failure_is_502_retryable(run: Any) -> None:
    async def main() -> None:
        from proxy.runtime import free_port

        dead = free_port()
        rt, _ = await _setup(f"/svc/web => /$/inet/127.0.0.1/{dead}")
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web"})
        assert r.status == 502
        assert r.header("l5d-retryable") == "true"
        await c.close()
        await _teardown(rt, [])

    run(main())


def test_ctx_dtab_travels_across_two_proxy_hops(run: Any) -> None:
    async def main() -> None:
        v1, v2 = await Backend("v1").start(), await Backend("v2").start()
        hop2 = await start_proxy(router_yaml(
            f"/srv/v1 => /$/inet/127.0.0.1/{v1.port}; /srv/v2 => /$/inet/127.0.0.1/{v2.port}; /svc/world => /srv/v1", label="hop2"))
        hop1 = await start_proxy(router_yaml(f"/svc => /$/inet/127.0.0.1/{proxy_port(hop2)}", label="hop1"))
        c = await Client.connect(proxy_port(hop1))
        r = await c.request("GET", "/", {"Host": "world", "l5d-dtab": "/svc/world => /srv/v2"})
        assert r.body == b"v2 GET /"
        assert v2.seen[0].header("l5d-ctx-dtab") == "/svc/world=>/srv/v2"
        await c.close()
        await hop1.drain()
        await hop2.drain()
        await v1.close()
        await v2.close()

    run(main())
