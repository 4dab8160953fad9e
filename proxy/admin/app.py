"""The admin server (aiohttp, its own port, loopback by default; never on the data path).

Endpoints:

* ``GET /admin/ping`` (``pong``), ``GET /admin/ready`` (503 while starting or draining)
* ``GET /config.json``: the effective config, secrets redacted, dtabs as they are now
* ``GET /admin/dtabs``: every router's base dtab and its version;
  ``GET|PUT /admin/dtabs/<router>``: one dtab, versioned by ``ETag``; a PUT with
  ``If-Match`` is a compare-and-swap (412 on conflict, 400 naming the parse error's
  offset, line and column) and takes effect at once
* ``GET|POST /delegator.json`` (spec §12.1, byte for byte) and ``GET /delegator``, the page
* ``GET /admin/decisions.json``: recent routing decisions of real requests, explained;
  ``POST /admin/whatif.json``: where those requests would go under a proposed dtab;
  ``GET|PUT /admin/sampling``: the decision sampling rate
* ``POST /admin/traffic.json``: live traffic for the playground's tree (each client's
  requests over the last minute, each endpoint's state)
* ``GET /admin/metrics/prometheus``: every metric, rendered now (and only now)

It reads runtime snapshots and swaps dtabs through ``Runtime.set_dtab``; the data plane
never imports this package.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from importlib import resources
from typing import Any, Final

from aiohttp import web

import dtab

from ..telemetry.metrics import Telemetry
from ..telemetry.traffic import TrafficWindow
from . import delegator

log = logging.getLogger(__name__)

PROMETHEUS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_DECISIONS: Final = 1000  # a bound on one answer, whatever `limit` asks for


class Admin:
    """The running admin server: `address` is (host, port); `cleanup()` stops it."""

    def __init__(self, runner: web.AppRunner, address: tuple[str, int], handlers: Handlers) -> None:
        self.runner = runner
        self.address = address
        self.handlers = handlers

    async def cleanup(self) -> None:
        self.handlers.close()
        await self.runner.cleanup()


def dtab_version(table: dtab.Dtab) -> str:
    """The ETag of a dtab: a digest of its printed form, so a change made any other way
    (a reload, SIGHUP) is seen by the next compare-and-swap too."""
    digest = hashlib.sha256(table.show().encode("utf-8")).hexdigest()[:16]
    return f'"{digest}"'


def _if_match(header: str, current: str) -> bool:
    """RFC 9110 §13.1.1: `*` or any listed entity tag, by strong comparison (a weak tag
    never matches)."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or current in tags


def syntax_error_json(prefix: str, exc: dtab.DtabSyntaxError) -> dict[str, Any]:
    text, offset = exc.text, exc.offset
    line_start = text.rfind("\n", 0, offset) + 1
    return {
        "error": f"{prefix}: {exc}",
        "offset": offset,
        "line": text.count("\n", 0, offset) + 1,
        "column": offset - line_start + 1,
    }


def _text(status: int, text: str = "") -> web.Response:
    return web.Response(status=status, text=text) if text else web.Response(status=status)


def _page() -> bytes:
    return resources.files(__package__).joinpath("static/delegator.html").read_bytes()


class Handlers:
    """The request handlers over one runtime."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.page = _page()
        self.delegate_timeout_s = delegator.DELEGATE_TIMEOUT_S
        # The playground's live shares: snapshots of the counters every few seconds.
        self.traffic: TrafficWindow | None = None
        tel = self.telemetry
        if tel is not None:
            self.traffic = TrafficWindow(tel)
            try:
                self.traffic.start(asyncio.get_running_loop())
            except RuntimeError:  # built outside a loop (a test of the routes): sampled on demand
                self.traffic.sample()

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()

    @property
    def telemetry(self) -> Telemetry | None:
        return getattr(self.rt, "telemetry", None)

    # -- health and config --------------------------------------------------------------

    async def ping(self, _: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def ready(self, _: web.Request) -> web.Response:
        rt = self.rt
        if rt.draining:
            return _text(503, "draining")
        if not rt.ready:
            return _text(503, "starting")
        return web.Response(text="ready")

    async def config_json(self, _: web.Request) -> web.Response:
        from config import to_json

        out = to_json(self.rt.config)
        for r in out.get("routers", ()):
            live = self.rt.routers.get(r.get("label"))
            if live is not None:  # a PUT or a reload may have changed it since start
                r["dtab"] = live.base.dtab.show()
        return web.json_response(out, dumps=_dumps)

    # -- dtabs ---------------------------------------------------------------------------

    def _router_json(self, label: str, router: Any) -> dict[str, Any]:
        table = router.base.dtab
        namers = [p.show() for p, _ in router.namers]
        return {"dtab": table.show(), "version": dtab_version(table), "namers": namers}

    async def dtabs(self, _: web.Request) -> web.Response:
        out = {label: self._router_json(label, r) for label, r in self.rt.routers.items()}
        return web.json_response(out, dumps=_dumps)

    async def dtab_get(self, request: web.Request) -> web.Response:
        label = request.match_info["router"]
        router = self.rt.routers.get(label)
        if router is None:
            return web.json_response({"error": f"no router {label!r}"}, status=404)
        table = router.base.dtab
        return web.Response(text=table.show(), headers={"ETag": dtab_version(table)})

    async def dtab_put(self, request: web.Request) -> web.Response:
        label = request.match_info["router"]
        body = await request.text()
        if request.content_type == "application/json":
            try:
                data = json.loads(body)
                text = data["dtab"]
                if not isinstance(text, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                return web.json_response({"error": 'expected {"dtab": "<dtab text>"}'}, status=400)
        else:
            text = body
        # No await from here on: the compare and the swap happen in one step of the loop.
        router = self.rt.routers.get(label)
        if router is None:
            return web.json_response({"error": f"no router {label!r}"}, status=404)
        current = dtab_version(router.base.dtab)
        if_match = request.headers.get("If-Match")
        if if_match is not None and not _if_match(if_match, current):
            return web.json_response(
                {"error": "the dtab changed since that version was read", "version": current},
                status=412,
                headers={"ETag": current},
            )
        try:
            table = dtab.read_dtab(text)
        except dtab.DtabSyntaxError as exc:
            return web.json_response(syntax_error_json("Invalid dtab", exc), status=400)
        self.rt.set_dtab(label, table)
        version = dtab_version(table)
        log.info("router %s: dtab replaced through the admin API (%d dentries, version %s)", label, len(table), version)
        return web.json_response({"dtab": table.show(), "version": version}, headers={"ETag": version})

    # -- the delegator (spec §12) ----------------------------------------------------------

    async def delegator_json(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            if request.content_type != "application/json":
                return _text(415)
            body = await request.text()
            try:
                data = json.loads(body)
                ns, dtab_text, path_text = data.get("namespace"), data["dtab"], data["path"]
                if not isinstance(dtab_text, str) or not isinstance(path_text, str):
                    raise TypeError
                if ns is not None and not isinstance(ns, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError, AttributeError):
                return _text(400, f"Malformed delegation request: {body}")
        elif request.method == "GET":
            ns = request.query.get("namespace")
            dtab_text = request.query.get("dtab", "")
            path_text = request.query.get("path", "")
        else:
            return _text(405)
        try:
            table = dtab.read_dtab(dtab_text)
        except dtab.DtabSyntaxError as exc:
            return _text(400, f"Invalid dtab: {exc}")
        try:
            path = dtab.read_path(path_text)
        except dtab.DtabSyntaxError as exc:
            return _text(400, f"Invalid path: {exc}")
        namers: Any = ()
        if ns is not None:
            router = self.rt.routers.get(ns)
            if router is None:
                return _text(501, f"Name Interpreter for {ns} cannot show delegations")
            namers = router.namers
        try:
            result = await delegator.delegate(table, path, namers, self.delegate_timeout_s)
        except TimeoutError:
            return _text(503, "Request timed out.")
        except dtab.DtabError as exc:  # the depth limit outside any alt/union (spec §12.2)
            return _text(500, str(exc))
        return web.json_response(result, dumps=_dumps)

    async def delegator_page(self, _: web.Request) -> web.Response:
        return web.Response(body=self.page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})  # fmt: skip

    # -- decisions and what-if ---------------------------------------------------------------

    def _decisions(self, label: str) -> list[tuple[Any, ...]]:
        tel = self.telemetry
        if tel is None or label not in tel.routers:
            return []
        return tel.routers[label].decisions.entries()

    async def decisions(self, request: web.Request) -> web.Response:
        label = request.query.get("router", "")
        if label not in self.rt.routers:
            return web.json_response({"error": f"no router {label!r}"}, status=404)
        try:
            limit = min(int(request.query.get("limit", "50")), MAX_DECISIONS)
            since = int(request.query.get("since", "0"))
        except ValueError:
            return web.json_response({"error": "limit and since are integers"}, status=400)
        tel = self.telemetry
        rate = tel.routers[label].decisions.sample_rate if tel is not None and label in tel.routers else None
        return web.json_response(
            {"router": label, "sample_rate": rate, "decisions": delegator.decisions_json(self._decisions(label), limit, since)},
            dumps=_dumps,
        )

    async def what_if(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return _text(415)
        try:
            data = await request.json()
            label, text = data["router"], data["dtab"]
            limit = min(int(data.get("limit", 50)), MAX_DECISIONS)
            if not isinstance(label, str) or not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response({"error": 'expected {"router": "...", "dtab": "...", "limit": N}'}, status=400)
        if label not in self.rt.routers:
            return web.json_response({"error": f"no router {label!r}"}, status=404)
        try:
            proposed = dtab.read_dtab(text)
        except dtab.DtabSyntaxError as exc:
            return web.json_response(syntax_error_json("Invalid dtab", exc), status=400)
        results = delegator.what_if(self._decisions(label), proposed, limit)
        return web.json_response({"router": label, "results": results}, dumps=_dumps)

    async def traffic_json(self, request: web.Request) -> web.Response:
        """`POST {"router", "path", "dtab"}`: for each client the name binds to under
        `dtab` (what the playground draws), its endpoints' states (failure accrual) and
        the requests of that service each one ended over the last minute."""
        if request.content_type != "application/json":
            return _text(415)
        try:
            data = await request.json()
            label, path_text, text = data["router"], data["path"], data.get("dtab", "")
            if not all(isinstance(v, str) for v in (label, path_text, text)):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response({"error": 'expected {"router": "...", "path": "...", "dtab": "..."}'}, status=400)
        router = self.rt.routers.get(label)
        if router is None:
            return web.json_response({"error": f"no router {label!r}"}, status=404)
        try:
            table = dtab.read_dtab(text)
            path = dtab.read_path(path_text)
        except dtab.DtabSyntaxError as exc:
            return web.json_response(syntax_error_json("Invalid input", exc), status=400)
        if self.traffic is None:
            return web.json_response({"error": "telemetry is off"}, status=404)
        counts, window_s = self.traffic.window(label, path.show())
        return web.json_response(delegator.traffic_json(router, table, path, counts, window_s), dumps=_dumps)

    async def sampling(self, request: web.Request) -> web.Response:
        tel = self.telemetry
        if tel is None:
            return web.json_response({"error": "telemetry is off"}, status=404)
        if request.method == "PUT":
            try:
                rate = float(request.query["rate"])
                if not 0.0 <= rate <= 1.0:
                    raise ValueError
            except (KeyError, ValueError):
                return web.json_response({"error": "rate must be a number from 0 to 1"}, status=400)
            tel.set_sample_rate(rate)
        return web.json_response({label: rs.decisions.sample_rate for label, rs in tel.routers.items()})

    # -- metrics ---------------------------------------------------------------------------------

    async def prometheus(self, _: web.Request) -> web.Response:
        tel = self.telemetry
        body = tel.render() if tel is not None else b""
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TYPE})

    async def index(self, _: web.Request) -> web.Response:
        raise web.HTTPFound("/delegator")


def _dumps(obj: Any) -> str:
    # Compact, like Linkerd's (Jackson's) output: the delegator vectors compare bytes.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def make_app(rt: Any, h: Handlers | None = None) -> web.Application:
    h = h or Handlers(rt)
    app = web.Application()
    r = app.router
    r.add_get("/", h.index)
    r.add_get("/admin/ping", h.ping)
    r.add_get("/admin/ready", h.ready)
    r.add_get("/config.json", h.config_json)
    r.add_get("/admin/dtabs", h.dtabs)
    r.add_get("/admin/dtabs/{router}", h.dtab_get)
    r.add_put("/admin/dtabs/{router}", h.dtab_put)
    r.add_route("*", "/delegator.json", h.delegator_json)
    r.add_get("/delegator", h.delegator_page)
    r.add_get("/admin/decisions.json", h.decisions)
    r.add_post("/admin/whatif.json", h.what_if)
    r.add_post("/admin/traffic.json", h.traffic_json)
    r.add_route("GET", "/admin/sampling", h.sampling)
    r.add_route("PUT", "/admin/sampling", h.sampling)
    r.add_get("/admin/metrics/prometheus", h.prometheus)
    return app


async def start_admin(rt: Any, ip: str, port: int) -> Admin:
    handlers = Handlers(rt)
    runner = web.AppRunner(make_app(rt, handlers), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ip, port, reuse_address=True)
    await site.start()
    addr: tuple[str, int] = (ip, port)
    server: Any = site._server  # aiohttp keeps the asyncio server private; port 0 needs it
    if server is not None and server.sockets:
        host, port = server.sockets[0].getsockname()[:2]
        addr = (host, port)
    log.info("admin listening on %s:%d", *addr)
    return Admin(runner, addr, handlers)
