"""The process: uvloop, namers, routers, listeners, the admin server, signals and drain.

`Runtime.start(config)` builds one `Router` per configured router and one `Listener` per
server; a reload builds new routers and swaps each listener's reference, so requests in
flight finish on the snapshot they started with. SIGTERM drains: stop accepting, let
in-flight requests finish within the grace period, close, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any, Final

from config import Config, RouterConfig, ServerConfig
from dtab import Dtab

from .discovery.fs import FsNamer
from .errors import ProxyError
from .route.identify import IdentifierChain, make_identifier
from .route.router import Router
from .route.trust import OverridePolicy
from .wire.detect import protocol_factory
from .wire.h1 import ServerH1
from .wire.tls import alpn_for, server_context
from .wire.upstream_h1 import open_h1
from .wire.upstream_h2 import make_h2_opener

log = logging.getLogger(__name__)

#: Parsed override results cached per (peer, header values): the same staging header
#: arrives on every request of a test session, and parsing costs more than a dict hit.
OVERRIDE_CACHE_SIZE: Final = 4096
#: Request bodies up to this size are read and dropped after an early error answer so
#: the connection stays usable; larger ones close the connection instead.
DISCARD_LIMIT: Final = 64 * 1024


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:  # plain asyncio still works, only slower
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def build_identifier(rc: RouterConfig) -> IdentifierChain:
    blocks = []
    for ic in rc.identifiers:
        options: dict[str, Any] = {"kind": ic.kind}
        if ic.header is not None:
            options["header"] = ic.header
        if ic.http_uri_in_dst:
            options["httpUriInDst"] = True
        if ic.segments is not None:
            options["segments"] = ic.segments
        if ic.consume:
            options["consume"] = True
        if ic.path is not None:
            options["path"] = ic.path.show()
        blocks.append(make_identifier(ic.kind, options, rc.dst_prefix, rc.protocol))
    return IdentifierChain(blocks)


def build_policy(rc: RouterConfig, sc: ServerConfig) -> OverridePolicy:
    ov = rc.overrides
    return OverridePolicy(
        trusted_cidrs=None if ov.cidrs is None else [str(n) for n in ov.cidrs],
        hmac_header=ov.hmac.header.encode() if ov.hmac is not None else None,
        hmac_key=ov.hmac.key if ov.hmac is not None else None,
        max_bytes=ov.max_bytes,
        max_entries=ov.max_entries,
        allow_prefixes=list(ov.allow_prefixes) if ov.allow_prefixes is not None else None,
        clear_context=sc.clear_context,
    )


class Listener:
    """One server socket and what its connections share: the current router, limits,
    the override policy, counters. `router` is swapped whole on reload."""

    __slots__ = (
        "router", "loop", "limits", "connections", "timeout", "clear_context", "policy",
        "sig_header", "add_via", "discard_limit", "requests", "failures", "server",
        "_override_cache", "config", "address", "_idle_timeout", "_sweeper", "closed_event",
        "open_upstream", "protocol",
    )

    def __init__(self, router: Router, rc: RouterConfig, sc: ServerConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.router = router
        self.loop = loop
        self.limits = rc.limits
        self.config = sc
        self.connections: set[ServerH1] = set()
        self.timeout: float | None = rc.timeout_ms / 1000 if rc.timeout_ms else None
        self.clear_context = sc.clear_context
        self.policy = build_policy(rc, sc)
        self.sig_header = self.policy.hmac_header or b"\x00"  # a name no header has
        self.add_via = rc.add_via
        self.discard_limit = DISCARD_LIMIT
        self.requests = 0
        self.failures = 0
        self.server: asyncio.AbstractServer | None = None
        self._override_cache: dict[tuple[Any, ...], tuple[Dtab, bytes]] = {}
        self.address: tuple[str, int] | None = None
        self._idle_timeout = rc.limits.idle_timeout_ms / 1000
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed_event = asyncio.Event()
        # The client protocol's opener (see wire.upstream_h1): one per listener, chosen here.
        self.open_upstream = make_h2_opener(rc.client.tls) if rc.client.protocol == "h2" else open_h1
        self.protocol = rc.protocol

    def check_override(
        self, peer_ip: str, ctx: list[bytes], user: list[bytes], sig: bytes | None
    ) -> tuple[Dtab, bytes]:
        key = (peer_ip, *ctx, b"\x00", *user, sig)
        hit = self._override_cache.get(key)
        if hit is not None:
            return hit
        local = self.policy.check(peer_ip, ctx, user, sig)
        result = (local, local.show().encode("latin-1"))
        cache = self._override_cache
        if len(cache) >= OVERRIDE_CACHE_SIZE:
            cache.clear()
        cache[key] = result
        return result

    def count_done(self) -> None:
        self.requests += 1

    def count_failure(self, exc: ProxyError) -> None:
        self.failures += 1

    def connection_closed(self, conn: ServerH1) -> None:
        if not self.connections and self.server is None:
            self.closed_event.set()

    async def start(self) -> None:
        sc = self.config
        ctx = server_context(sc.tls, alpn_for(self.protocol)) if sc.tls is not None else None
        self.server = await self.loop.create_server(
            protocol_factory(self, self.protocol, ctx is not None), sc.ip, sc.port,
            reuse_address=True, backlog=1024, ssl=ctx,
        )
        sock = self.server.sockets[0]
        self.address = sock.getsockname()[:2]
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        """Close keep-alive connections idle past the limit: one timer per listener,
        not one per connection or request."""
        now = self.loop.time()
        limit = self._idle_timeout
        for conn in list(self.connections):
            if conn.idle() and now - conn.last_active > limit:
                conn.close_when_idle()
        self._schedule_sweep()

    async def drain(self, grace: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in list(self.connections):
            conn.close_when_idle()
        if self.connections:
            try:
                await asyncio.wait_for(self.closed_event.wait(), grace)
            except TimeoutError:
                log.warning("drain: %d connections still busy after %.1fs; closing", len(self.connections), grace)
        for conn in list(self.connections):
            t = conn._transport
            if t is not None:
                t.abort()


class Runtime:
    def __init__(self, config: Config, *, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.loop = asyncio.get_event_loop()
        self.namers: list[tuple[Any, Any]] = []
        self.routers: dict[str, Router] = {}
        self.listeners: list[Listener] = []
        self.admin: Any = None
        self.ready = False
        self.draining = False
        self._stop = asyncio.Event()

    async def start(self) -> None:
        for nc in self.config.namers:
            if nc.kind == "io.l5d.fs":
                namer = FsNamer.from_config(nc)
                await namer.start()
                self.namers.append((namer.bind_prefix, namer))
        for rc in self.config.routers:
            self.routers[rc.label] = self._build_router(rc)
            for sc in rc.servers:
                lst = Listener(self.routers[rc.label], rc, sc, self.loop)
                await lst.start()
                self.listeners.append(lst)
                log.info("router %s listening on %s:%d", rc.label, *lst.address)  # type: ignore[str-format]
        if self.config.admin is not None:
            from .admin.app import start_admin

            self.admin = await start_admin(self, self.config.admin.ip, self.config.admin.port)
        self.ready = True

    def _build_router(self, rc: RouterConfig) -> Router:
        router = Router(
            rc.label,
            rc.dtab,
            identifier=build_identifier(rc),
            namers=self.namers,
            dst_prefix=rc.dst_prefix,
            config=rc,
        )
        for _, namer in self.namers:
            sub = getattr(namer, "subscribe_names", None)
            if sub is not None:
                sub(lambda *_: router.clear_routes())
        return router

    def set_dtab(self, label: str, table: Dtab) -> None:
        """Swap a router's base dtab: a new snapshot, same clients (pools stay warm)."""
        old = self.routers[label]
        new = Router(
            old.label, table, identifier=old.identifier, namers=old.namers,
            dst_prefix=old.dst_prefix, clients=old.clients, config=old.config,
        )
        self.routers[label] = new
        for lst in self.listeners:
            if lst.router is old:
                lst.router = new

    def install_signals(self) -> None:
        loop = self.loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError, AttributeError):
            pass

    def request_stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        if self.config_path is None:
            log.info("SIGHUP: no config file to reload")
            return
        from config import ConfigError, load_file

        try:
            cfg = load_file(self.config_path)
        except (ConfigError, OSError) as exc:
            log.warning("reload refused, keeping the running config: %s", exc)
            return
        for rc in cfg.routers:
            if rc.label in self.routers:
                self.set_dtab(rc.label, rc.dtab)
        log.info("reloaded %s", self.config_path)

    async def wait(self) -> None:
        await self._stop.wait()

    async def drain(self) -> None:
        self.draining = True
        grace = (self.config.admin.shutdown_grace_ms if self.config.admin else 10_000) / 1000
        log.info("draining (grace %.1fs)", grace)
        await asyncio.gather(*(lst.drain(grace) for lst in self.listeners))
        for r in self.routers.values():
            r.clients.close_idle()
        for _, namer in self.namers:
            stop = getattr(namer, "stop", None)
            if stop is not None:
                await stop()
        if self.admin is not None:
            await self.admin.cleanup()
        log.info("drained")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def serve(config: Config, *, config_path: str | None = None, ready_cb: Any = None) -> int:
    rt = Runtime(config, config_path=config_path)
    rt.install_signals()
    await rt.start()
    if ready_cb is not None:
        ready_cb(rt)
    await rt.wait()
    await rt.drain()
    return 0


