"""The admin server (aiohttp, its own port, loopback by default; never on the data path).

Endpoints:

* ``GET /admin/ping`` (``pong``), ``GET /admin/ready`` (503 while starting or draining)
* ``GET /config.json``: the effective config, secrets redacted, dtabs as they are now
* ``GET /admin/dtabs``: every router's base dtab and its version;
  ``GET|PUT /admin/dtabs/<router>``: one dtab, versioned by ``ETag``; a PUT with
  ``If-Match`` is a compare-and-swap (412 on conflict, 400 naming the parse error's
  offset, line and column) and takes effect at once
* ``GET|POST /delegator.json`` (docs/dtab.md §12.1, byte for byte) and ``GET /delegator``, the page
* ``GET /admin/decisions.json``: recent routing decisions of real requests, explained;
  ``POST /admin/whatif.json``: where those requests would go under a proposed dtab;
  ``GET|PUT /admin/sampling``: the decision sampling rate
* ``POST /admin/traffic.json``: live traffic for the playground's tree (each client's
  requests over the last minute, each endpoint's state)
* ``GET /admin/metrics/prometheus``: every metric, rendered now (and only now)

It reads runtime snapshots and swaps dtabs through ``Runtime.set_dtab``; the data plane
never imports this package.

With worker processes (``workers: N``, proxy/workers.py) this server runs in the main
process over its routing-only copy of the routers (dtabs, the delegator, the config), and
``rt.workers`` reaches the workers for the rest: a PUT is answered once every worker
applied it (the body's ``workers`` says which did, and why not), metrics are every
worker's summed as if one process, decisions and what-if are merged, and the proxy is
ready when every worker is.

Writes (every method but GET, HEAD and OPTIONS, except the POSTs that only compute an
answer: ``/delegator.json`` and ``/admin/whatif.json``) pass ``WriteGuard`` first: a
``Host`` that is an IP literal, ``localhost`` or a name in ``admin.hosts`` (a page on
another name that resolves here, DNS rebinding, gets 403), then the bearer token of
``admin.auth`` (401 with ``WWW-Authenticate: Bearer``). Without a token, an admin bound
to loopback accepts writes from its host and any other admin is read-only (403).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Final

from aiohttp import web

import dtab
from config import admin_token_problem, read_token_file

from ..telemetry.metrics import Telemetry
from ..telemetry.traffic import TrafficWindow
from . import delegator

log = logging.getLogger(__name__)

PROMETHEUS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_DECISIONS: Final = 1000  # a bound on one answer, whatever `limit` asks for
#: Methods that never change anything (RFC 9110 §9.2.1 "safe").
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: POST endpoints that compute an answer from their body and change nothing.
READ_POSTS: Final = frozenset({"/delegator.json", "/admin/whatif.json", "/admin/traffic.json"})
CHALLENGE: Final = 'Bearer realm="dtabproxy admin"'
#: Refused writes are logged at most this often: a client retrying in a loop, or
#: someone guessing tokens, must not flood the log.
REFUSAL_LOG_INTERVAL_S: Final = 10.0


def _host_name(host: str) -> str:
    """The host part of a `Host` value, lower case, without the port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WriteGuard:
    """Who may change the running proxy through the admin server.

    Reads `admin.auth` and `admin.hosts` from the runtime's current config on each
    write, so a reload applies them; a `tokenFile` is stat'ed on each write and re-read
    when it changed (a rotated Kubernetes Secret swaps the file). Whether the admin is
    loopback-only is fixed at start: the socket does not move on reload."""

    def __init__(self, rt: Any, ip: str) -> None:
        self.rt = rt
        self.ip = ip
        self.loopback = is_loopback(ip)
        self._auth: Any = None  # the AdminAuth the token below came from
        self._token: bytes | None = None
        self._file_stamp: tuple[int, int, int] | None = None
        self._file_problem: str | None = None
        self._logged_at = -REFUSAL_LOG_INTERVAL_S

    def warn_if_read_only(self) -> None:
        admin = self.rt.config.admin
        if not self.loopback and (admin is None or admin.auth is None):
            log.warning(
                "admin on %s has no admin.auth token and is not loopback: it is read-only "
                "(writes answer 403); set admin.auth.token or admin.auth.tokenFile to allow them",
                self.ip,
            )

    def _current_token(self, auth: Any) -> tuple[bytes | None, str | None]:
        """(the token, None), or (None, why no token can be checked now)."""
        if auth is not self._auth:  # first use, or a reload replaced it
            self._auth, self._token = auth, auth.token
            self._file_stamp, self._file_problem = None, None
        path = auth.token_file
        if path is not None:
            try:
                st = os.stat(path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stamp != self._file_stamp:
                    token = read_token_file(path)
                    problem = admin_token_problem(token)
                    self._file_stamp = stamp
                    if problem is None:
                        if self._token != token:
                            log.info("admin: the token in %s changed; using the new one", path)
                        self._token, self._file_problem = token, None
                    else:
                        self._file_problem = f"admin.auth.tokenFile {path}: {problem}"
            except OSError as exc:
                self._file_stamp = None
                self._file_problem = f"admin.auth.tokenFile {path} cannot be read: {exc.strerror}"
            if self._file_problem is not None:
                return None, self._file_problem
        return self._token, None

    def _refuse(self, request: web.Request, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_INTERVAL_S:
            self._logged_at = now
            log.warning("admin: %s %s from %s refused (%d): %s", request.method, request.path, request.remote, status, message)
        return web.json_response({"error": message}, status=status, headers=headers)

    def check(self, request: web.Request) -> web.Response | None:
        """None when `request` may proceed; else the refusal to send."""
        if request.method in SAFE_METHODS or (request.method == "POST" and request.path in READ_POSTS):
            return None
        admin = self.rt.config.admin
        hosts = admin.hosts if admin is not None else ()
        auth = admin.auth if admin is not None else None
        host = request.headers.get("Host")
        name = _host_name(host) if host is not None else ""
        if not (_is_ip(name) or name == "localhost" or name in hosts):
            shown = "no Host" if host is None else f"Host {host!r}"
            return self._refuse(request, 403, f"admin writes need a Host that is an IP address, localhost or "
                                              f"a name in admin.hosts; got {shown}")  # fmt: skip
        if auth is None:
            if self.loopback:
                return None
            return self._refuse(request, 403, f"the admin server on {self.ip} is read-only: it is not loopback "
                                              "and admin.auth sets no token")  # fmt: skip
        token, problem = self._current_token(auth)
        if token is None:
            return self._refuse(request, 503, f"admin writes are refused until the token can be read: {problem}")
        given = request.headers.get("Authorization", "")
        scheme, _, credentials = given.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return self._refuse(request, 401, "admin writes need Authorization: Bearer <the admin.auth token>",
                                {"WWW-Authenticate": CHALLENGE})  # fmt: skip
        # Constant time: how much of a guess matched must not show in the answer's timing.
        # Digests first, so the comparison's time does not depend on the lengths either.
        given_digest = hashlib.sha256(credentials.strip().encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(given_digest, hashlib.sha256(token).digest()):
            return self._refuse(request, 401, "the bearer token is not the admin.auth token",
                                {"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'})  # fmt: skip
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = self.check(request)
        if refusal is not None:
            return refusal
        return await handler(request)


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

    @property
    def workers(self) -> Any:
        """The supervisor of the worker processes (proxy/workers.py), or None."""
        return getattr(self.rt, "workers", None)

    # -- health and config --------------------------------------------------------------

    async def ping(self, _: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def ready(self, _: web.Request) -> web.Response:
        rt = self.rt
        if rt.draining:
            return _text(503, "draining")
        if not rt.ready:
            return _text(503, "starting")
        workers = self.workers
        if workers is not None and not workers.is_ready():
            waiting = ", ".join(str(w.index) for w in workers.workers if not w.ready)
            return _text(503, f"starting: workers {waiting} not ready")
        return web.Response(text="ready")

    async def config_json(self, _: web.Request) -> web.Response:
        from config import to_json

        out = to_json(self.rt.config)
        k8s = getattr(self.rt, "k8s", {})
        for r in out.get("routers", ()):
            live = self.rt.routers.get(r.get("label"))
            if live is not None:  # a PUT or a reload may have changed it since start
                r["dtab"] = live.base.dtab.show()
            if r.get("label") in k8s:  # what the API gave: resources applied and not, the store
                r["k8s"] = k8s[r["label"]].status_json()
        return web.json_response(out, dumps=_dumps)

    # -- dtabs ---------------------------------------------------------------------------

    def _store(self, label: str) -> Any:
        get = getattr(self.rt, "dtab_store", None)
        return get(label) if get is not None else None

    def _etag(self, label: str, table: dtab.Dtab) -> str:
        """With a dtabStore the ETag is the DTab object's resourceVersion; else a digest."""
        store = self._store(label)
        tag = store.etag() if store is not None else None
        return tag or dtab_version(table)

    def _router_json(self, label: str, router: Any) -> dict[str, Any]:
        table = router.base.dtab
        namers = [p.show() for p, _ in router.namers]
        out = {"dtab": table.show(), "version": self._etag(label, table), "namers": namers}
        store = self._store(label)
        if store is not None:
            out["store"] = store.status_json()
        return out

    async def dtabs(self, _: web.Request) -> web.Response:
        out = {label: self._router_json(label, r) for label, r in self.rt.routers.items()}
        return web.json_response(out, dumps=_dumps)

    async def dtab_get(self, request: web.Request) -> web.Response:
        label = request.match_info["router"]
        router = self.rt.routers.get(label)
        if router is None:
            return web.json_response({"error": f"no router {label!r}"}, status=404)
        table = router.base.dtab
        return web.Response(text=table.show(), headers={"ETag": self._etag(label, table)})

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
        store = self._store(label)
        if store is not None:  # written through to the cluster (proxy/discovery/k8s_dtab.py)
            return await self._put_stored(label, store, text, request.headers.get("If-Match"))
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
        out: dict[str, Any] = {"dtab": table.show(), "version": version}
        if self.workers is not None:  # answered once every worker swapped it too
            out["workers"] = await self.workers.set_dtab(label, table)
        return web.json_response(out, headers={"ETag": version})

    async def _put_stored(self, label: str, store: Any, text: str, if_match: str | None) -> web.Response:
        """A PUT on a router with a dtabStore: the DTab object's resourceVersion is the
        compare-and-swap, checked by the API (its 409 is our 412)."""
        from ..discovery.k8s_dtab import StoreConflict, StoreError

        try:
            table = dtab.read_dtab(text)
        except dtab.DtabSyntaxError as exc:
            return web.json_response(syntax_error_json("Invalid dtab", exc), status=400)
        try:
            version = await store.write(table, if_match)
        except StoreConflict as exc:
            headers = {"ETag": exc.current} if exc.current else {}
            return web.json_response({"error": f"{store.ref}: {exc}", "version": exc.current}, status=412, headers=headers)
        except StoreError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        log.info("router %s: dtab stored in %s through the admin API (%d dentries, version %s)",
                 label, store.ref, len(table), version)  # fmt: skip
        out: dict[str, Any] = {"dtab": table.show(), "version": version}
        if self.workers is not None:  # each worker's own watch brings it: wait (bounded) for them
            out["workers"] = await self.workers.await_dtab(label, table, version)
        return web.json_response(out, headers={"ETag": version})

    # -- the delegator (docs/dtab.md §12) --------------------------------------------------

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
        except dtab.DtabError as exc:  # the depth limit outside any alt/union (docs/dtab.md §12.2)
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
        if self.workers is not None:
            rows = await self.workers.decisions(label, limit, since)
        else:
            rows = delegator.decisions_json(self._decisions(label), limit, since)
        return web.json_response({"router": label, "sample_rate": rate, "decisions": rows}, dumps=_dumps)

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
        if self.workers is not None:
            results = await self.workers.what_if(label, proposed, limit)
        else:
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
            if self.workers is not None:  # answered once every worker took it (one that did not is restarted)
                await self.workers.set_sample_rate(rate)
        return web.json_response({label: rs.decisions.sample_rate for label, rs in tel.routers.items()})

    # -- metrics ---------------------------------------------------------------------------------

    async def prometheus(self, _: web.Request) -> web.Response:
        tel = self.telemetry
        if self.workers is not None:  # every worker's, summed as if one process
            body = await self.workers.render_metrics()
        else:
            body = tel.render() if tel is not None else b""
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TYPE})

    async def index(self, _: web.Request) -> web.Response:
        raise web.HTTPFound("/delegator")


def _dumps(obj: Any) -> str:
    # Compact, like Linkerd's (Jackson's) output: the delegator vectors compare bytes.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def make_app(rt: Any, h: Handlers | None = None, guard: WriteGuard | None = None) -> web.Application:
    h = h or Handlers(rt)
    guard = guard or WriteGuard(rt, rt.config.admin.ip if rt.config.admin is not None else "127.0.0.1")
    app = web.Application(middlewares=[guard.middleware])
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
    guard = WriteGuard(rt, ip)
    guard.warn_if_read_only()
    runner = web.AppRunner(make_app(rt, handlers, guard), access_log=None)
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
