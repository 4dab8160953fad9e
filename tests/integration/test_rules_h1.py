"""Match rules over real sockets (HTTP/1.1), on asyncio and uvloop: cookie and header
routing, rewrites, response header edits, and what travels downstream."""

from __future__ import annotations

from typing import Any

from .harness import Backend, Client, proxy_port, router_yaml, start_proxy

RULES = """\
  rules:
  - name: feature-branch
    match: {cookies: {shop_session-id: 4f9e11}}
    dtab: /svc/frontend => /svc/frontend-myfeature
  - name: api
    match: {path: {prefix: /api/}, method: [GET, POST]}
    dtab: /svc/frontend => /svc/api
    rewrite: {uri: {prefix: /api/, replacement: /v2/}, authority: api.internal}
    requestHeaders: {set: {x-route: api}, remove: [x-secret]}
    responseHeaders: {add: {x-served-by: api}, remove: [x-backend]}
"""


async def _setup() -> tuple[Any, list[Backend]]:
    names = ("frontend", "myfeature", "api")
    backends = [await Backend(n).start() for n in names]
    ports = dict(zip(names, (b.port for b in backends), strict=True))
    dtab = (f"/svc/frontend => /$/inet/127.0.0.1/{ports['frontend']}; "
            f"/svc/frontend-myfeature => /$/inet/127.0.0.1/{ports['myfeature']}; "
            f"/svc/api => /$/inet/127.0.0.1/{ports['api']}")  # fmt: skip
    rt = await start_proxy(router_yaml(dtab, extra=RULES))
    return rt, backends


def test_cookie_routes_to_the_feature_branch(run: Any) -> None:
    async def main() -> None:
        rt, backends = await _setup()
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "frontend", "Cookie": "a=1; shop_session-id=4f9e11"})
        assert r.body == b"myfeature GET /"
        r = await c.request("GET", "/", {"Host": "frontend", "Cookie": "shop_session-id=other"})
        assert r.body == b"frontend GET /"
        seen = backends[1].seen[0]
        # The rules' entries bind this request but never travel downstream.
        assert seen.header("l5d-ctx-dtab") is None
        assert seen.header("l5d-dst-service") == "/svc/frontend"
        r = await c.request("GET", "/", {"Host": "frontend", "Cookie": "shop_session-id=4f9e11",
                                         "l5d-dtab": "/svc/x => /svc/y"})  # fmt: skip
        assert r.body == b"myfeature GET /"
        assert backends[1].seen[-1].header("l5d-ctx-dtab") == "/svc/x=>/svc/y"
        await c.close()
        await rt.drain()
        for b in backends:
            await b.close()

    run(main())


def test_rewrites_and_header_edits(run: Any) -> None:
    async def main() -> None:
        rt, backends = await _setup()
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/api/items?id=1", {"Host": "frontend", "X-Secret": "s", "X-Route": "old"})
        assert r.status == 200
        assert r.body == b"api GET /v2/items?id=1"
        assert r.header("x-served-by") == "api"
        assert r.header("x-backend") is None
        seen = backends[2].seen[0]
        assert seen.header("host") == "api.internal"
        assert seen.header("x-secret") is None
        assert [v for n, v in seen.headers if n == "x-route"] == ["api"]
        r = await c.request("DELETE", "/api/items", {"Host": "frontend"})  # method not matched
        assert r.body == b"frontend DELETE /api/items"
        assert r.header("x-backend") == "frontend"
        await c.close()
        await rt.drain()
        for b in backends:
            await b.close()

    run(main())


def test_no_route_message_shows_the_rule_entries(run: Any) -> None:
    async def main() -> None:
        b = await Backend("x").start()
        rules = "  rules:\n  - name: dead\n    match: {headers: {x-dead: '1'}}\n    dtab: /svc/web => !\n"
        rt = await start_proxy(router_yaml(f"/svc/web => /$/inet/127.0.0.1/{b.port}", extra=rules))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web", "X-Dead": "1"})
        assert r.status == 502
        # A failed tree (`!`) does not fall back to the base entry; the message lists it.
        assert b"/svc/web=>!" in r.body.replace(b" ", b"") or "/svc/web=>!" in (r.header("l5d-err") or "").replace(" ", "")
        r = await c.request("GET", "/", {"Host": "web"})
        assert r.status == 200
        await c.close()
        await rt.drain()
        await b.close()

    run(main())
