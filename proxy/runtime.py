"""The process: uvloop, namers, routers, listeners, the admin server, signals and drain.

`Runtime.start(config)` builds one `Router` per configured router and one `Listener` per
server; a reload (SIGHUP, or a change of the config file or its resource files, polled
every 500 ms) builds new routers and swaps each listener's reference, so requests in
flight finish on the snapshot they started with. Listeners, namers and warm client
pools are kept where their configuration did not change. SIGTERM drains: stop accepting, let
in-flight requests finish within the grace period, close, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from functools import partial
from typing import Any, Final

from config import Config, RouterConfig, ServerConfig
from dtab import Dtab

from .discovery.fs import FsNamer
from .route.identify import IdentifierChain, make_identifier
from .route.router import Router
from .route.trust import OverridePolicy
from .telemetry.metrics import Telemetry
from .telemetry.observe import Observability
from .wire.detect import protocol_factory
from .wire.h1 import ServerH1
from .wire.tls import alpn_for, server_context
from .wire.upstream_h1 import open_h1
from .wire.upstream_h2 import make_h2_opener

log = logging.getLogger(__name__)

#: Parsed override results cached per (peer, header values): the same staging header
#: arrives on every request of a test session, and parsing costs more than a dict hit.
OVERRIDE_CACHE_SIZE: Final = 4096
#: How often the config file and its resource files are checked for changes. Half a
#: second keeps an edit-to-effect delay well under the 1 s the namers aim for, and a
#: stat of a few files costs microseconds.
CONFIG_POLL_S: Final = 0.5
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
        "sig_header", "add_via", "add_forwarded", "discard_limit", "server",
        "_override_cache", "config", "address", "_idle_timeout", "_header_timeout", "_sweeper",
        "closed_event", "open_upstream", "protocol",
    )

    def __init__(self, router: Router, rc: RouterConfig, sc: ServerConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.router = router
        self.loop = loop
        self.connections: set[ServerH1] = set()
        self.discard_limit = DISCARD_LIMIT
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed_event = asyncio.Event()
        self.protocol = rc.protocol
        self.apply(rc, sc)

    def apply(self, rc: RouterConfig, sc: ServerConfig) -> None:
        """Take a router's and server's settings: at start, and when a reload keeps this
        listener (same address, protocol and TLS). Each is one reference swap;
        connections read them per request."""
        self.limits = rc.limits
        self.config = sc
        self.timeout: float | None = rc.timeout_ms / 1000 if rc.timeout_ms else None
        self.clear_context = sc.clear_context
        self.policy = build_policy(rc, sc)
        self.sig_header = self.policy.hmac_header or b"\x00"  # a name no header has
        self.add_via = rc.add_via
        self.add_forwarded = rc.add_forwarded
        self._idle_timeout = rc.limits.idle_timeout_ms / 1000
        self._header_timeout = rc.limits.header_read_timeout_ms / 1000
        self._override_cache: dict[tuple[Any, ...], tuple[Dtab, bytes]] = {}  # answers of one policy
        # The client protocol's opener (see wire.upstream_h1): one per listener, chosen here.
        connect_timeout = rc.client.connect_timeout_ms / 1000 or None
        self.open_upstream = (
            make_h2_opener(rc.client.tls, connect_timeout)
            if rc.client.protocol == "h2"
            else partial(open_h1, connect_timeout=connect_timeout)
        )

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
        """Close keep-alive connections idle past the limit, and answer 408 to a request
        head that has been arriving for longer than `limits.headerReadTimeoutMs` (a
        slowloris client sends a byte now and then, so idleness alone never fires). One
        timer per listener, not one per connection or request."""
        now = self.loop.time()
        idle_limit = self._idle_timeout
        head_limit = self._header_timeout
        for conn in list(self.connections):
            started = getattr(conn, "head_started", 0.0)
            if started and head_limit and now - started > head_limit:
                conn.head_timeout(head_limit)
            elif conn.idle() and now - conn.last_active > idle_limit:
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
        # Request metrics and sampled decisions (the admin server renders them). The
        # environment switch exists to measure what telemetry costs; it is not a feature.
        self.telemetry: Telemetry | None = None if os.environ.get("DTABPROXY_TELEMETRY") == "off" else Telemetry()
        self.observe = Observability(self.telemetry)  # access logs and span exporters
        self.ready = False
        self.draining = False
        self._stop = asyncio.Event()
        self._unsubscribe: dict[str, list[Any]] = {}  # router label -> namer unsubscribers
        self._reload_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._fingerprint: tuple[tuple[str, int, int], ...] = config.inputs
        self.reloads = 0  # completed reloads (tests and the admin server read it)
        self._reloaded = asyncio.Condition()

    async def start(self) -> None:
        await self.observe.apply(self.config, self.loop)
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
        if self.config_path is not None:
            self._watcher = self.loop.create_task(self._watch(), name="config watcher")
        self.ready = True

    def _build_router(self, rc: RouterConfig, clients: Any = None, base: Dtab | None = None) -> Router:
        router = Router(
            rc.label,
            rc.dtab if base is None else base,
            identifier=build_identifier(rc),
            namers=self.namers,
            dst_prefix=rc.dst_prefix,
            config=rc,
            clients=clients,
            rules=rc.rules,
            hash_on=rc.hash_on,
            stats=self.telemetry.router(rc.label) if self.telemetry is not None else None,
            obs=observe.router(rc) if (observe := getattr(self, "observe", None)) is not None else None,
        )
        unsubs = getattr(self, "_unsubscribe", None)
        old = unsubs.pop(rc.label, ()) if unsubs is not None else ()
        for unsubscribe in old:  # the replaced snapshot no longer needs to hear about names
            unsubscribe()
        fresh = []
        for _, namer in self.namers:
            sub = getattr(namer, "subscribe_names", None)
            if sub is not None:
                fresh.append(sub(lambda *_: router.clear_routes()))
        if unsubs is not None:
            unsubs[rc.label] = [u for u in fresh if callable(u)]
        return router

    def _swap(self, old: Router, new: Router) -> None:
        self.routers[new.label] = new
        for lst in self.listeners:
            if lst.router is old:
                lst.router = new  # one reference: new requests see the new snapshot

    def set_dtab(self, label: str, table: Dtab) -> None:
        """Swap a router's base dtab: a new snapshot, same clients (pools stay warm)
        and the same rules."""
        old = self.routers[label]
        self._swap(old, self._build_router(old.config, clients=old.clients, base=table))

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
        """SIGHUP: reload the config file (in a task: namers and listeners may start)."""
        if self.config_path is None:
            log.info("SIGHUP: no config file to reload")
            return
        self.loop.create_task(self.reload_now(), name="config reload")

    async def reload_now(self) -> bool:
        """Load the config file and apply it. A config that does not load changes
        nothing (the running one stays, the error is logged). True when applied."""
        if self.config_path is None:
            return False
        from config import ConfigError, load_file

        async with self._reload_lock:
            try:
                cfg = load_file(self.config_path)
            except (ConfigError, OSError) as exc:
                log.warning("reload refused, keeping the running config: %s", exc)
                self._fingerprint = _fingerprint(self.config_path, self.config)
                return False
            try:
                await self.apply_config(cfg)
            except OSError as exc:  # a new listener could not bind: keep what runs
                log.warning("reload incomplete: %s", exc)
                return False
            self._fingerprint = cfg.inputs
            self.reloads += 1
            log.info("reloaded %s (%d routers)", self.config_path, len(cfg.routers))
        async with self._reloaded:
            self._reloaded.notify_all()
        return True

    async def wait_reloads(self, count: int) -> None:
        """Return once `count` reloads have completed (for tests and tooling)."""
        async with self._reloaded:
            await self._reloaded.wait_for(lambda: self.reloads >= count)

    async def apply_config(self, cfg: Config) -> None:
        """Make the running process match `cfg`. Every router is rebuilt (rules and
        dtab compile once per snapshot) and swapped by one reference per listener;
        namers, listeners and client pools whose configuration is unchanged are kept."""
        await self.observe.apply(cfg, self.loop)  # before the routers that use them
        namers_changed = cfg.namers != self.config.namers
        old_namers = self.namers
        if namers_changed:
            fresh: list[tuple[Any, Any]] = []
            for nc in cfg.namers:
                if nc.kind == "io.l5d.fs":
                    namer = FsNamer.from_config(nc)
                    await namer.start()
                    fresh.append((namer.bind_prefix, namer))
            self.namers = fresh
        old_configs = {rc.label: rc for rc in self.config.routers}
        live = {rc.label for rc in cfg.routers}
        for rc in cfg.routers:
            old = self.routers.get(rc.label)
            prev = old_configs.get(rc.label)
            keep_clients = old is not None and prev is not None and prev.client == rc.client and not namers_changed
            new = self._build_router(rc, clients=old.clients if keep_clients and old is not None else None)
            if old is not None:
                self._swap(old, new)
                if not keep_clients:
                    old.clients.close_idle()
            else:
                self.routers[rc.label] = new
            await self._reconcile_listeners(rc, new)
        for label in [lb for lb in self.routers if lb not in live]:
            gone = self.routers.pop(label)
            for unsubscribe in self._unsubscribe.pop(label, ()):
                unsubscribe()
            for lst in [x for x in self.listeners if x.router is gone]:
                await self._retire(lst)
            gone.clients.close_idle()
        self.config = cfg
        if namers_changed:
            for _, namer in old_namers:
                stop = getattr(namer, "stop", None)
                if stop is not None:
                    await stop()

    async def _reconcile_listeners(self, rc: RouterConfig, router: Router) -> None:
        mine = [lst for lst in self.listeners if lst.router is router]
        wanted = list(rc.servers)  # a list: several servers may ask for port 0
        for lst in mine:
            at = next((i for i, sc in enumerate(wanted) if (sc.ip, sc.port) == (lst.config.ip, lst.config.port)), None)
            sc = wanted[at] if at is not None else None
            if sc is not None and sc.tls == lst.config.tls and lst.protocol == rc.protocol:
                del wanted[at]  # type: ignore[arg-type]
                lst.apply(rc, sc)
                continue
            await self._retire(lst)  # gone, or the same address with new TLS or protocol: rebind
        for sc in wanted:
            lst = Listener(router, rc, sc, self.loop)
            await lst.start()
            self.listeners.append(lst)
            log.info("router %s listening on %s:%d", rc.label, *lst.address)  # type: ignore[str-format]

    async def _retire(self, lst: Listener) -> None:
        self.listeners.remove(lst)
        grace = (self.config.admin.shutdown_grace_ms if self.config.admin else 10_000) / 1000
        await lst.drain(grace)

    async def _watch(self) -> None:
        """Poll the config file and its resource files; reload when one changed."""
        assert self.config_path is not None
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            if self.draining:
                return
            now = _fingerprint(self.config_path, self.config)
            if now != self._fingerprint:
                self._fingerprint = now
                log.info("config change seen in %s", self.config_path)
                await self.reload_now()

    async def wait(self) -> None:
        await self._stop.wait()

    async def drain(self) -> None:
        self.draining = True
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        grace = (self.config.admin.shutdown_grace_ms if self.config.admin else 10_000) / 1000
        log.info("draining (grace %.1fs)", grace)
        await asyncio.gather(*(lst.drain(grace) for lst in self.listeners))
        for r in self.routers.values():
            r.clients.close_idle()
        for _, namer in self.namers:
            stop = getattr(namer, "stop", None)
            if stop is not None:
                await stop()
        await self.observe.close()  # the last lines and spans of the requests just drained
        if self.admin is not None:
            await self.admin.cleanup()
        log.info("drained")


def _fingerprint(config_path: str, cfg: Config) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of the config file and of every resource file its
    routers read now (a file added to a resources directory counts as a change)."""
    from config.importers.common import resource_files

    paths = {os.path.abspath(config_path)}
    for rc in cfg.routers:
        paths.update(os.path.abspath(f) for f in resource_files(rc.resources))
    out = []
    for p in sorted(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        out.append((p, st.st_mtime_ns, st.st_size))
    return tuple(out)


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


