"""The process: uvloop, namers, routers, listeners, the admin server, signals and drain.

`Runtime.start(config)` builds one `Router` per configured router and one `Listener` per
server; a reload (SIGHUP, or a change of the config file or its resource files, polled
every 500 ms) builds new routers and swaps each listener's reference, so requests in
flight finish on the snapshot they started with. Listeners, namers and warm client
pools are kept where their configuration did not change. A reload is all or nothing:
everything that can fail (namers, TLS contexts, binding new ports) happens before
anything is swapped, and is undone if a step fails. SIGTERM drains: stop accepting, let
in-flight requests finish within the grace period, close, exit 0.

With `workers: N` (proxy/workers.py) the same class plays two more roles: in each worker
process (`role="worker"`: listeners with SO_REUSEPORT, no admin server, no file polling;
the main process tells it what to apply), and in the main process (`role="main"`: a
routing-only copy, namers and router snapshots without listeners, behind the admin
server, whose reloads the supervisor fans out to the workers).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import socket
from functools import partial
from typing import Any, Final

from config import Config, RouterConfig, ServerConfig
from dtab import Dtab

from .discovery.fs import FsNamer
from .discovery.k8s_router import RouterK8s
from .route.identify import IdentifierChain, make_identifier
from .route.router import Router
from .route.settings import ListenerSettings
from .route.trust import OverridePolicy
from .telemetry.metrics import Telemetry
from .telemetry.observe import Observability
from .wire.detect import protocol_factory
from .wire.h1 import ServerH1
from .wire.tls import alpn_for, server_context
from .wire.upstream_h1 import open_h1
from .wire.upstream_h2 import make_h2_opener

log = logging.getLogger(__name__)

#: A connection idle this long lets go of what only a request in flight needs (its
#: deadline timer: re-arming one per request would cost more than keeping it).
SHED_AFTER_S: Final = 1.0

#: How often pooled upstream connections are checked against their idle time
#: (client.hostConnectionPool.idleTimeMs, default client.idleTimeoutMs): a second is far
#: below any useful idle time, and a sweep costs one look per pooled connection.
REAP_INTERVAL_S: Final = 1.0
#: How often the config file and its resource files are checked for changes. Half a
#: second keeps an edit-to-effect delay well under the 1 s the namers aim for, and a
#: stat of a few files costs microseconds.
CONFIG_POLL_S: Final = 0.5
#: The listen backlog: connections the kernel completes before the proxy accepts them.
BACKLOG: Final = 1024


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
        allow_destinations=list(ov.allow_destinations) if ov.allow_destinations is not None else None,
    )


class Listener:
    """One server socket and what its connections share: the settings snapshot (swapped
    whole on reload and on a dtab change), the connections, the requests in flight."""

    settings: ListenerSettings

    __slots__ = (
        "settings", "loop", "connections", "server", "config", "address", "_idle_timeout",
        "_header_timeout", "_stream_idle_timeout", "_sweeper", "closed_event", "protocol", "in_flight", "_bound",
        "reuse_port",
    )  # fmt: skip

    def __init__(
        self, router: Router, rc: RouterConfig, sc: ServerConfig, loop: asyncio.AbstractEventLoop, *,
        reuse_port: bool = False,
    ) -> None:  # fmt: skip
        self.loop = loop
        self.reuse_port = reuse_port  # a worker: the port is shared with the other workers
        self.connections: set[Any] = set()
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._bound: tuple[socket.socket, Any] | None = None  # bind(): (socket, TLS context)
        self.closed_event = asyncio.Event()
        self.protocol = rc.protocol
        self.in_flight = 0
        self.apply(rc, sc, router)

    @property
    def router(self) -> Router:
        return self.settings.router

    @router.setter
    def router(self, router: Router) -> None:
        self.settings = self.settings.with_router(router)  # one reference: new requests see it

    def apply(self, rc: RouterConfig, sc: ServerConfig, router: Router | None = None) -> None:
        """Take a router's and server's settings: at start, and when a reload keeps this
        listener (same address, protocol and TLS). One reference swap; connections read
        the snapshot per request."""
        self.config = sc
        self._idle_timeout = rc.limits.idle_timeout_ms / 1000
        self._header_timeout = rc.limits.header_read_timeout_ms / 1000
        self._stream_idle_timeout = (rc.limits.stream_idle_timeout_ms or 0) / 1000
        # The client protocol's opener (see wire.upstream_h1): one per listener, chosen here.
        connect_timeout = rc.client.connect_timeout_ms / 1000 or None
        opener = (
            make_h2_opener(rc.client.tls, connect_timeout)
            if rc.client.protocol == "h2"
            else partial(open_h1, connect_timeout=connect_timeout)
        )
        self.settings = ListenerSettings(
            router if router is not None else self.settings.router,
            rc.limits,
            sc,
            rc.timeout_ms / 1000 if rc.timeout_ms else None,
            build_policy(rc, sc),
            opener,
            add_via=rc.add_via,
            add_forwarded=rc.add_forwarded,
        )

    def connection_closed(self, conn: ServerH1) -> None:
        if not self.connections and self.server is None:
            self.closed_event.set()

    def bind(self) -> None:
        """Everything about starting that can fail, without accepting anything yet: the
        TLS context, and a socket bound and listening (the port is taken; connections
        wait in the backlog until `start`). A reload binds every new listener before it
        changes anything; `close_unstarted` gives the port back if it is undone."""
        sc = self.config
        ctx = server_context(sc.tls, alpn_for(self.protocol)) if sc.tls is not None else None
        self._bound = (bind_socket(sc.ip, sc.port, BACKLOG, reuse_port=self.reuse_port), ctx)
        self.address = self._bound[0].getsockname()[:2]

    def close_unstarted(self) -> None:
        bound, self._bound = self._bound, None
        if bound is not None:
            bound[0].close()

    async def start(self) -> None:
        """Accept connections (binding first unless `bind` did)."""
        if self._bound is None:
            self.bind()
        assert self._bound is not None
        sock, ctx = self._bound
        self._bound = None
        try:
            self.server = await self.loop.create_server(
                protocol_factory(self, self.protocol, ctx is not None), sock=sock, backlog=BACKLOG, ssl=ctx,
            )
        except BaseException:
            sock.close()
            raise
        self.closed_event.clear()
        if self._sweeper is None or self._sweeper.cancelled():
            self._schedule_sweep()

    def stop_accepting(self) -> None:
        """Close the listening socket; connections already accepted go on (a reload
        that moves this address to a new listener, or a drain)."""
        if self.server is not None:
            self.server.close()
            self.server = None

    def _schedule_sweep(self) -> None:
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        """Close keep-alive connections idle past the limit, and time out a request head
        that has been arriving for longer than `limits.headerReadTimeoutMs` (a slowloris
        client sends a byte now and then, so idleness alone never fires): on HTTP/1.1 a
        head from its first byte (408), on HTTP/2 the preface and first SETTINGS and each
        header block (GOAWAY), and a connection whose protocol is not decided yet. Each
        connection notes when its pending head began (`head_started`, 0 for none); the
        codecs have no clock. One timer per listener, not one per connection or request."""
        now = self.loop.time()
        idle_limit = self._idle_timeout
        head_limit = self._header_timeout
        stream_limit = self._stream_idle_timeout
        for conn in list(self.connections):
            started = getattr(conn, "head_started", 0.0)
            if started and head_limit and now - started > head_limit:
                conn.head_timeout(head_limit)
            elif conn.idle():
                quiet = now - conn.last_active
                if quiet > idle_limit:
                    conn.close_when_idle()
                elif quiet >= SHED_AFTER_S:
                    conn.shed()  # what only a request in flight needs (a pending deadline timer)
            elif stream_limit:  # limits.streamIdleTimeoutMs: requests that move nothing
                conn.sweep_streams(now, stream_limit)
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
    """`role`: "single" (one process, as without workers), "worker" (one of N processes
    behind SO_REUSEPORT listeners; no admin server, no polling) or "main" (the supervisor's
    routing-only copy: no listeners). `dtabs`: base dtabs that replace the config's at
    start (a restarted worker takes the ones the admin API set since)."""

    def __init__(
        self, config: Config, *, config_path: str | None = None, role: str = "single",
        dtabs: dict[str, Dtab] | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.config_path = config_path
        self.role = role
        self._start_dtabs = dtabs or {}
        #: The supervisor (proxy/workers.py) in the main process; None elsewhere.
        self.workers: Any = None
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
        self._reaper: asyncio.TimerHandle | None = None
        self._fingerprint: tuple[tuple[str, int, int], ...] = config.inputs
        self.reloads = 0  # completed reloads (tests and the admin server read it)
        self._reloaded = asyncio.Condition()
        self.swapped = asyncio.Event()  # set, and replaced, at every router swap
        self.k8s: dict[str, RouterK8s] = {}  # router label -> its transformers, API routes, stored dtab
        if self.telemetry is not None:
            # Endpoint states and ejections are read from the routers' clients at scrape.
            self.telemetry.clients_source = lambda: {lb: r.clients.clients() for lb, r in self.routers.items()}
            from .discovery.k8s_router import metric_lines

            self.telemetry.collectors.append(lambda: metric_lines([n for _, n in self.namers], self.k8s))

    def _reap(self) -> None:
        """Close upstream connections idle too long, in every router's client pools."""
        now = self.loop.time()
        for router in self.routers.values():
            router.clients.reap_idle(now)
        self._reaper = self.loop.call_later(REAP_INTERVAL_S, self._reap)

    @classmethod
    def bare(cls, *, telemetry: bool = True) -> Runtime:
        """A runtime with no config, namers or listeners, for tools that build routers and
        listeners by hand (bench/micro drives the wire with fake transports)."""
        rt = cls.__new__(cls)
        rt.namers = []
        rt.k8s = {}
        rt._unsubscribe = {}
        rt.telemetry = Telemetry() if telemetry else None
        rt.observe = Observability(rt.telemetry)
        return rt

    async def start(self) -> None:
        await self.observe.apply(self.config, self.loop)
        for nc in self.config.namers:
            namer = await _start_namer(nc)
            self.namers.append((namer.bind_prefix, namer))
        await self._prepare_k8s(self.config)
        for rc in self.config.routers:
            self.routers[rc.label] = self._build_router(rc, base=self._start_dtabs.get(rc.label))
            if self.role == "main":
                continue  # the workers listen
            for sc in rc.servers:
                lst = Listener(self.routers[rc.label], rc, sc, self.loop, reuse_port=self.role == "worker")
                await lst.start()
                self.listeners.append(lst)
                log.info("router %s listening on %s:%d", rc.label, *(lst.address or ("?", 0)))
        if self.config.admin is not None and self.role != "worker":
            from .admin.app import start_admin

            self.admin = await start_admin(self, self.config.admin.ip, self.config.admin.port)
        if self.config_path is not None and self.role != "worker":
            self._watcher = self.loop.create_task(self._watch(), name="config watcher")
        self._reaper = self.loop.call_later(REAP_INTERVAL_S, self._reap)
        self.ready = True

    def _build_router(
        self, rc: RouterConfig, clients: Any = None, base: Dtab | None = None, *,
        namers: list[tuple[Any, Any]] | None = None, pending: dict[str, list[Any]] | None = None,
        k8s: dict[str, RouterK8s] | None = None,
    ) -> Router:
        """A router snapshot, subscribed to its namers' name changes. With `pending`
        (a reload being prepared) its unsubscribers are put there and the replaced
        snapshot stays subscribed until `_commit_subscriptions`; otherwise the swap of
        subscriptions happens now. `k8s`: the API watchers the new config's routers
        use (a reload being prepared), else the running ones."""
        namers = self.namers if namers is None else namers
        rk = (self.k8s if k8s is None else k8s).get(rc.label)
        rules = rc.rules
        if rk is not None:
            rules = rc.rules + rk.rules()  # the routing resources watched from the API
            if base is None:
                base = rk.stored_dtab()  # with a dtabStore, a reload never reverts the stored dtab
        router = Router(
            rc.label,
            rc.dtab if base is None else base,
            identifier=build_identifier(rc),
            namers=namers,
            dst_prefix=rc.dst_prefix,
            config=rc,
            clients=clients,
            rules=rules,
            hash_on=rc.hash_on,
            stats=self.telemetry.router(rc.label) if self.telemetry is not None else None,
            transform=rk.transform if rk is not None else None,
            obs=observe.router(rc) if (observe := getattr(self, "observe", None)) is not None else None,
        )
        fresh = []
        for _, namer in namers:
            sub = getattr(namer, "subscribe_names", None)
            if sub is not None:
                fresh.append(sub(lambda *_: router.clear_routes()))
        fresh = [u for u in fresh if callable(u)]
        if pending is not None:
            pending[rc.label] = fresh
        else:
            self._commit_subscriptions(rc.label, fresh)
        return router

    def _commit_subscriptions(self, label: str, fresh: list[Any]) -> None:
        unsubs = getattr(self, "_unsubscribe", None)
        if unsubs is None:
            return
        for unsubscribe in unsubs.pop(label, ()):  # the replaced snapshot no longer needs to hear about names
            unsubscribe()
        unsubs[label] = fresh

    def _swap(self, old: Router, new: Router) -> None:
        self.routers[new.label] = new
        for lst in self.listeners:
            if lst.router is old:
                lst.router = new  # one reference: new requests see the new snapshot
        swapped, self.swapped = self.swapped, asyncio.Event()
        swapped.set()  # wakes whoever waits for a router to change (a worker confirming a stored dtab)

    # -- Kubernetes: transformers, routing resources and stored dtabs (proxy/discovery/k8s_router.py)

    async def _prepare_k8s(self, cfg: Config, plan: _Plan | None = None) -> dict[str, RouterK8s]:
        """What `cfg`'s routers take from the API: the running watchers where a router's
        transformers/resources/dtabStore are unchanged, new ones (started) elsewhere.
        With a plan (a reload), new and replaced watchers are noted there for the
        commit or the undo; without one (start), the result is in force at once."""
        from .discovery.k8s_router import RouterK8s, config_key, wanted

        running = dict(self.k8s)
        out: dict[str, RouterK8s] = {}
        for rc in cfg.routers:
            if not wanted(rc):
                continue
            k = running.get(rc.label)
            if k is not None and config_key(rc) == k.key:
                out[rc.label] = running.pop(rc.label)
                continue
            k = RouterK8s(rc, self._k8s_changed)
            if plan is not None:
                plan.k8s_new.append(k)  # stopped on undo
            await k.start()
            out[rc.label] = k
        if plan is not None:
            plan.k8s = out
            plan.k8s_old = list(running.values())  # stopped after the commit
        else:
            self.k8s = out
        return out

    def _k8s_changed(self, label: str) -> None:
        """The API changed a router's rules or stored dtab: a new snapshot, same clients.
        Without a store the base dtab in use stays (an admin PUT survives a route change)."""
        old = self.routers.get(label)
        k = self.k8s.get(label)
        if old is None or k is None:
            return
        base = k.stored_dtab()
        self._swap(old, self._build_router(old.config, clients=old.clients, base=base if base is not None else old.base.dtab))
        k.mark_applied()

    def dtab_store(self, label: str) -> Any:
        """The router's `DtabStore` (proxy/discovery/k8s_dtab.py), or None: the admin
        server writes a PUT through it."""
        k = self.k8s.get(label)
        return k.store if k is not None else None

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
            # A worker reloads when the main process says so (so all of them agree);
            # a SIGHUP sent to it alone changes nothing.
            loop.add_signal_handler(signal.SIGHUP, self.reload if self.role != "worker" else _ignore_hup)
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
        """Load the config file and apply it, all or nothing: a config that does not
        load, or does not apply (a new server's port is busy), changes nothing; the
        running one stays whole and the log says why. True when applied."""
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
                if self.workers is not None:  # the main process: every worker, all or nothing
                    await self.workers.apply_config(cfg)
                else:
                    await self.apply_config(cfg)
            except (OSError, ValueError) as exc:  # a listener, namer or TLS context failed
                log.warning("reload refused, keeping the running config: %s", exc)
                self._fingerprint = cfg.inputs  # tried again when a file changes, not on every poll
                return False
            except Exception:  # our bug; the running config is still whole
                log.error("reload failed, keeping the running config", exc_info=True)
                self._fingerprint = cfg.inputs
                return False
            self._fingerprint = cfg.inputs
            self.reloads += 1
            on = f", on {self.workers.count} workers" if self.workers is not None else ""
            log.info("reloaded %s (%d routers%s)", self.config_path, len(cfg.routers), on)
        async with self._reloaded:
            self._reloaded.notify_all()
        return True

    async def wait_reloads(self, count: int) -> None:
        """Return once `count` reloads have completed (for tests and tooling)."""
        async with self._reloaded:
            await self._reloaded.wait_for(lambda: self.reloads >= count)

    async def apply_config(self, cfg: Config) -> None:
        """Make the running process match `cfg`, all or nothing.

        Prepare (`_prepare`): start new namers, build every router snapshot, check each
        kept listener's new settings, bind every new listener, and only when all of
        them are bound start accepting on them. A failure there undoes what was
        prepared and raises: the running config is untouched. Commit (`_commit`, no
        await, so nothing can split it): swap each router by one reference and apply
        kept listeners' settings. Then listeners no longer wanted drain and replaced
        namers stop. Namers, listeners and client pools whose configuration is
        unchanged are kept."""
        plan = await self.prepare_config(cfg)
        await self.commit_config(cfg, plan)

    async def prepare_config(self, cfg: Config) -> _Plan:
        """The first half of `apply_config`: everything that can fail, undone if it does.
        The workers' supervisor prepares every process before it commits any."""
        plan = _Plan()
        try:
            await self._prepare(cfg, plan)
        except BaseException:
            await self._undo(plan)
            raise
        return plan

    async def abort_config(self, plan: _Plan) -> None:
        """Undo a prepared plan that will not be committed (another worker refused)."""
        await self._undo(plan)

    async def commit_config(self, cfg: Config, plan: _Plan) -> None:
        """The second half: the swap (no await), then old resources are let go."""
        self.commit_now(cfg, plan)
        await self.release(cfg, plan)

    def commit_now(self, cfg: Config, plan: _Plan) -> None:
        """The swap of a prepared plan: one step of the loop, nothing can split it."""
        self._commit(cfg, plan)
        # What settle_heap froze at start (the first config among it) may be garbage
        # now; frozen, a cycle of it would never be collected.
        gc.unfreeze()

    async def release(self, cfg: Config, plan: _Plan) -> None:
        """After the swap: listeners no longer wanted drain, replaced namers stop."""
        grace = (cfg.admin.shutdown_grace_ms if cfg.admin else 10_000) / 1000
        await asyncio.gather(*(lst.drain(grace) for lst in plan.retire))
        for _, namer in plan.old_namers:
            stop = getattr(namer, "stop", None)
            if stop is not None:
                await stop()
        for k in plan.k8s_old:
            await k.stop()

    async def _prepare(self, cfg: Config, plan: _Plan) -> None:
        # Access logs and span exporters first: the new routers use them. An undo puts
        # the running config's back (telemetry/observe.py keeps what did not change).
        plan.observe = True
        await self.observe.apply(cfg, self.loop)
        now, then = self.config.admin, cfg.admin
        if now is not None and then is not None and (now.ip, now.port) != (then.ip, then.port):
            log.warning("reload: a new admin.ip or admin.port takes effect at the next start "
                        "(admin.auth and admin.hosts apply now)")  # fmt: skip
        if cfg.workers != self.config.workers and self.role != "worker":
            log.warning("reload: workers: %s takes effect at the next start (running with %s)",
                        cfg.workers, self.workers.count if self.workers is not None else 1)  # fmt: skip
        namers_changed = cfg.namers != self.config.namers
        plan.namers = self.namers
        if namers_changed:
            plan.namers = []
            for nc in cfg.namers:
                namer = await _start_namer(nc)
                plan.new_namers.append(namer)
                plan.namers.append((namer.bind_prefix, namer))
            plan.old_namers = self.namers
        await self._prepare_k8s(cfg, plan)
        old_configs = {rc.label: rc for rc in self.config.routers}
        for rc in cfg.routers:
            old = self.routers.get(rc.label)
            prev = old_configs.get(rc.label)
            keep_clients = old is not None and prev is not None and prev.client == rc.client and not namers_changed
            new = self._build_router(
                rc, clients=old.clients if keep_clients and old is not None else None,
                namers=plan.namers, pending=plan.subscriptions, k8s=plan.k8s,
            )
            plan.routers.append((rc, old, new, keep_clients))
            wanted = list(rc.servers)  # a list: several servers may ask for port 0
            for lst in [x for x in self.listeners if old is not None and x.router is old]:
                at = next((i for i, sc in enumerate(wanted) if (sc.ip, sc.port) == (lst.config.ip, lst.config.port)), None)
                if at is not None and wanted[at].tls == lst.config.tls and lst.protocol == rc.protocol:
                    sc = wanted.pop(at)
                    Listener(new, rc, sc, self.loop)  # settings that do not build fail here, not at commit
                    plan.keep.append((lst, rc, sc))
                else:  # gone, or the same address with new TLS or protocol: rebind
                    plan.retire.append(lst)
            if self.role != "main":  # the main process's copy has no listeners
                plan.bind.extend((new, rc, sc) for sc in wanted)
        live = {rc.label for rc in cfg.routers}
        for label in [lb for lb in self.routers if lb not in live]:
            gone = self.routers[label]
            plan.retire.extend(x for x in self.listeners if x.router is gone)
        # Bind every new listener before any accepts. One whose address a retiring
        # listener holds binds last, once that one stopped accepting (a port cannot be
        # listened on twice); an undo makes the retiring one accept again.
        later = []
        for router, rc, sc in plan.bind:
            lst = Listener(router, rc, sc, self.loop, reuse_port=self.role == "worker")
            if sc.port and any(sc.port == x.config.port and _overlaps(sc.ip, x.config.ip) for x in plan.retire):
                later.append(lst)
                continue
            lst.bind()
            plan.bound.append(lst)
        for lst in later:
            sc = lst.config
            for x in plan.retire:
                if x.server is not None and sc.port == x.config.port and _overlaps(sc.ip, x.config.ip):
                    x.stop_accepting()
                    plan.paused.append(x)
            lst.bind()
            plan.bound.append(lst)
        for lst in plan.bound:
            await lst.start()  # listening already: this starts accepting

    async def _undo(self, plan: _Plan) -> None:
        """Give back what `_prepare` took; the running config was never touched."""
        for lst in plan.bound:
            if lst.server is not None:
                await lst.drain(0)  # accepted in the moment before the undo: closed
            else:
                lst.close_unstarted()
        for lst in plan.paused:  # accept again where it stopped to make room
            try:
                await lst.start()
            except OSError as exc:
                log.error("reload undo: router %s could not listen on %s:%d again: %s",
                          lst.router.label, lst.config.ip, lst.config.port, exc)  # fmt: skip
        for fresh in plan.subscriptions.values():
            for unsubscribe in fresh:
                unsubscribe()
        for _, _, new, keep_clients in plan.routers:
            if not keep_clients:
                new.clients.close_idle()
        for namer in plan.new_namers:
            await namer.stop()
        for k in plan.k8s_new:
            await k.stop()
        if plan.observe:
            await self.observe.apply(self.config, self.loop)

    def _commit(self, cfg: Config, plan: _Plan) -> None:
        self.namers = plan.namers
        if plan.k8s is not None:
            self.k8s = plan.k8s
        for rc, old, new, keep_clients in plan.routers:
            if old is not None:
                self._swap(old, new)
                if not keep_clients:
                    old.clients.close_idle()
            else:
                self.routers[rc.label] = new
            self._commit_subscriptions(rc.label, plan.subscriptions.get(rc.label, []))
        for lst, rc, sc in plan.keep:
            lst.apply(rc, sc)
        live = {rc.label for rc in cfg.routers}
        for label in [lb for lb in self.routers if lb not in live]:
            gone = self.routers.pop(label)
            for unsubscribe in self._unsubscribe.pop(label, ()):
                unsubscribe()
            gone.clients.close_idle()
        for lst in plan.retire:
            self.listeners.remove(lst)
            lst.stop_accepting()
        for lst in plan.bound:
            self.listeners.append(lst)
            log.info("router %s listening on %s:%d", lst.router.label, *(lst.address or ("?", 0)))
        self.config = cfg

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
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        # Stop accepting first, in this same step: once /admin/ready says 503, no new
        # connection is taken (a load balancer that reads it must not race the close).
        for lst in self.listeners:
            lst.stop_accepting()
        self.draining = True
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        grace = (self.config.admin.shutdown_grace_ms if self.config.admin else 10_000) / 1000
        log.info("draining (grace %.1fs)", grace)
        if self.workers is not None:
            await self.workers.drain(grace)
        await asyncio.gather(*(lst.drain(grace) for lst in self.listeners))
        for r in self.routers.values():
            r.clients.close_idle()
        for _, namer in self.namers:
            stop = getattr(namer, "stop", None)
            if stop is not None:
                await stop()
        for k in self.k8s.values():
            await k.stop()
        await self.observe.close()  # the last lines and spans of the requests just drained
        if self.admin is not None:
            await self.admin.cleanup()
        log.info("drained")


class _Plan:
    """What a reload prepared, so it can be committed whole or undone whole."""

    def __init__(self) -> None:
        self.namers: list[tuple[Any, Any]] = []  # the namers the new routers use
        self.new_namers: list[Any] = []  # started for this reload (stopped on undo)
        self.old_namers: list[tuple[Any, Any]] = []  # replaced (stopped after commit)
        self.routers: list[tuple[RouterConfig, Router | None, Router, bool]] = []  # rc, old, new, clients kept
        self.subscriptions: dict[str, list[Any]] = {}  # new routers' namer unsubscribers
        self.keep: list[tuple[Listener, RouterConfig, ServerConfig]] = []
        self.retire: list[Listener] = []
        self.bind: list[tuple[Router, RouterConfig, ServerConfig]] = []
        self.bound: list[Listener] = []  # bound and listening, not accepting yet
        self.paused: list[Listener] = []  # retiring listeners that stopped accepting early
        self.k8s: dict[str, Any] | None = None  # router label -> its API watchers (None: unchanged)
        self.k8s_new: list[Any] = []  # started for this reload (stopped on undo)
        self.k8s_old: list[Any] = []  # replaced (stopped after commit)
        self.observe = False  # access logs and exporters were re-applied (undo re-applies the old)


def _overlaps(a: str, b: str) -> bool:
    """Whether two listen addresses on one port collide: the same address, or a
    wildcard and an address of its family (`::` covers IPv4 too, dual-stack)."""
    if a == b:
        return True
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return any(x.is_unspecified and (x.version == y.version or x.version == 6) for x, y in ((ia, ib), (ib, ia)))


async def _start_namer(nc: Any) -> Any:
    """A started namer for a namer config (`io.l5d.fs` or `io.l5d.k8s`)."""
    if nc.kind == "io.l5d.k8s":
        from config import ConfigError

        from .discovery.k8s import K8sNamer
        from .discovery.k8s_api import ApiConfigError

        try:
            k8s = K8sNamer.from_config(nc)
        except ApiConfigError as exc:
            raise ConfigError(str(exc), key=f"namer {nc.prefix.show()}") from None
        await k8s.start()
        return k8s
    namer = FsNamer.from_config(nc)
    await namer.start()
    return namer


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


def _ignore_hup() -> None:
    log.info("SIGHUP ignored in a worker: send it to the main process, which reloads every worker")


def bind_socket(ip: str, port: int, backlog: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A TCP socket bound to `ip:port` and listening, as `loop.create_server` makes one
    (SO_REUSEADDR; IPv6 sockets IPv6-only). `reuse_port`: SO_REUSEPORT, so every worker
    binds the same port and the kernel spreads connections over their listening sockets.
    `listen=False`: only bound (the main process holds a port-0 choice for its workers:
    a socket that does not listen receives no connection). Raises OSError (a busy port)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((ip, port))
        if not listen:
            return sock
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def settle_heap() -> None:
    """Once started, before the first request: collect, then move every object made so far
    (modules, the parsed config, the compiled routing table) out of the collector's sight
    (`gc.freeze`). A full collection walks every tracked object while the loop waits; with
    a 10,000-entry dtab a third of them are the table, which traffic never frees. A reload
    unfreezes (`Runtime.commit_now`), so the first config can be collected once replaced."""
    gc.collect()
    gc.freeze()


async def serve(config: Config, *, config_path: str | None = None, ready_cb: Any = None) -> int:
    rt = Runtime(config, config_path=config_path)
    rt.install_signals()
    await rt.start()
    settle_heap()
    if ready_cb is not None:
        ready_cb(rt)
    await rt.wait()
    await rt.drain()
    # Drained: a second SIGTERM (a supervisor that did not see us exit yet) must not turn
    # this clean exit into death by signal while the loop shuts down. The loop's handlers
    # go first: closing the loop would reset the signals it still handles to the default.
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            rt.loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError, RuntimeError, NotImplementedError):  # not the main thread
            pass
    return 0


