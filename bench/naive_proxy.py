"""The floor: the reverse proxy anyone would write in ten minutes with aiohttp.

An aiohttp server whose one handler forwards the request through a shared
`ClientSession` and copies the answer back (hop-by-hop headers dropped, body read
whole). It is here so that dtabproxy's figures can be read against "the easy Python
version"; it must stay naive (no custom protocol code), or it stops being that.

Run: python -m bench.naive_proxy --port P --upstream 127.0.0.1:BACKEND
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import ClientSession, TCPConnector, web

log = logging.getLogger(__name__)

# RFC 9110 §7.6.1: connection-specific fields are not forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",  # aiohttp sets it from the body it sends
        "host",
    }
)


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    base = f"http://{upstream}"

    async def start(app: web.Application) -> None:
        # limit=0: no connection cap, like a proxy that opens what the load needs.
        app["session"] = ClientSession(connector=TCPConnector(limit=0), auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read() if request.can_read_body else None
        session: ClientSession = request.app["session"]
        async with session.request(
            request.method, base + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as resp:
            payload = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=resp.status, body=payload, headers=out)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.naive_proxy", description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="host:port of the backend")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
    web.run_app(
        make_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=4096,
        loop=loop,
    )


if __name__ == "__main__":
    main()
