"""The admin server (aiohttp, its own port, loopback by default; never on the data path).

Health (`/admin/ping`, `/admin/ready`), the effective config (`/config.json`), the
per-router dtabs (`/admin/dtabs`), and the delegator's JSON API (`/delegator.json`,
spec §12). Reads runtime snapshots; the data plane never imports this module.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

import dtab

log = logging.getLogger(__name__)


class Admin:
    def __init__(self, runner: web.AppRunner, address: tuple[str, int]) -> None:
        self.runner = runner
        self.address = address

    async def cleanup(self) -> None:
        await self.runner.cleanup()


def make_app(rt: Any) -> web.Application:
    app = web.Application()

    async def ping(_: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def ready(_: web.Request) -> web.Response:
        if rt.ready and not rt.draining:
            return web.Response(text="ready")
        return web.Response(status=503, text="draining" if rt.draining else "starting")

    async def config_json(_: web.Request) -> web.Response:
        from config import to_json

        return web.json_response(to_json(rt.config))

    async def dtabs(_: web.Request) -> web.Response:
        return web.json_response({label: r.base.dtab.show() for label, r in rt.routers.items()})

    async def delegator_json(request: web.Request) -> web.Response:
        if request.method == "POST":
            if request.content_type != "application/json":
                return web.Response(status=415)
            body = await request.text()
            try:
                data = json.loads(body)
                ns, dtab_text, path_text = data.get("namespace"), data["dtab"], data["path"]
                if not isinstance(dtab_text, str) or not isinstance(path_text, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError, AttributeError):
                return web.Response(status=400, text=f"Malformed delegation request: {body}")
        else:
            ns = request.query.get("namespace")
            dtab_text = request.query.get("dtab", "")
            path_text = request.query.get("path", "")
        try:
            table = dtab.read_dtab(dtab_text)
        except dtab.DtabSyntaxError as exc:
            return web.Response(status=400, text=f"Invalid dtab: {exc}")
        try:
            path = dtab.read_path(path_text)
        except dtab.DtabSyntaxError as exc:
            return web.Response(status=400, text=f"Invalid path: {exc}")
        namers: tuple[Any, ...] = ()
        if ns is not None:
            router = rt.routers.get(ns)
            if router is None:
                return web.Response(status=501, text=f"Name Interpreter for {ns} cannot show delegations")
            namers = router.namers
        try:
            result = dtab.delegate_json(table, path, namers=namers)
        except dtab.DtabError as exc:
            return web.Response(status=500, text=str(exc))
        return web.json_response(result)

    app.router.add_get("/admin/ping", ping)
    app.router.add_get("/admin/ready", ready)
    app.router.add_get("/config.json", config_json)
    app.router.add_get("/admin/dtabs", dtabs)
    app.router.add_route("*", "/delegator.json", _only_get_post(delegator_json))
    return app


def _only_get_post(handler: Any) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "POST"):
            return web.Response(status=405)
        result: web.StreamResponse = await handler(request)
        return result

    return wrapped


async def start_admin(rt: Any, ip: str, port: int) -> Admin:
    runner = web.AppRunner(make_app(rt), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ip, port, reuse_address=True)
    await site.start()
    server = site._server
    addr = ("127.0.0.1", port)
    if server is not None and server.sockets:  # type: ignore[attr-defined]
        addr = server.sockets[0].getsockname()[:2]  # type: ignore[attr-defined]
    log.info("admin listening on %s:%d", *addr)
    return Admin(runner, addr)
