"""What one router takes from the Kubernetes API, in one place for the runtime: its
interpreter transformers (`k8s_transform`), its routing resources (`k8s_routes`) and
its stored dtab (`k8s_dtab`). The runtime keeps one `RouterK8s` per router that has any
of them, replaces it when their configuration changes, and builds each router
snapshot from it (`transform`, `rules`, `stored_dtab`). When the API changes the rules
or the dtab, `on_change(label)` asks the runtime for a new snapshot.

Owns: starting and stopping those watchers. Must not: build or swap routers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from config import ConfigError
from config.schema import K8sApiConfig, RouterConfig, RuleConfig, TransformerConfig
from dtab import Dtab, NameTree

from .k8s import K8sNamer
from .k8s_api import ApiConfigError, ApiTarget, api_target
from .k8s_dtab import DtabStore
from .k8s_routes import RouteWatcher
from .k8s_transform import DaemonSet, LocalNode, Transformer, chain

log = logging.getLogger(__name__)


class K8sStartError(ConfigError):
    """A transformer, store or watcher cannot start as configured; the message names
    the config key (`source:line: key: ...`)."""


def target_of(api: K8sApiConfig, where: str, environ: Mapping[str, str] | None = None) -> ApiTarget:
    try:
        return api_target(api.host, api.port, environ=environ)
    except ApiConfigError as exc:
        raise K8sStartError(f"{where}: {exc}") from None


def config_key(rc: RouterConfig) -> tuple[Any, ...]:
    """What a `RouterK8s` is built from: equal keys, same watchers."""
    return (rc.transformers, rc.k8s_resources, rc.dtab_store, rc.dst_prefix)


def wanted(rc: RouterConfig) -> bool:
    return bool(rc.transformers) or rc.k8s_resources is not None or rc.dtab_store is not None


class RouterK8s:
    """The Kubernetes-fed parts of one router."""

    def __init__(self, rc: RouterConfig, on_change: Callable[[str], None], *,
                 environ: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.label = rc.label
        self.key = config_key(rc)
        self.config_dtab = rc.dtab
        self._on_change = on_change
        self._environ = os.environ if environ is None else environ
        self._rc = rc
        self.transformers: list[Transformer] = []
        self.namers: list[K8sNamer] = []  # the daemonset transformers' narrowed namers
        self.transform: Callable[[NameTree], NameTree] | None = None
        self.routes: RouteWatcher | None = None
        self.store: DtabStore | None = None
        self.started = False
        self.applied = 0  # snapshots swapped in for a change from the API
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def start(self) -> None:
        rc = self._rc
        source = rc.label
        try:
            for tc in rc.transformers:
                self.transformers.append(await self._transformer(tc))
            self.transform = chain(self.transformers)
            if rc.k8s_resources is not None:
                kr = rc.k8s_resources
                where = f"router {source}: resources {{kind: io.l5d.k8s}}"
                self.routes = RouteWatcher(target_of(kr.api, where, self._environ), kr.namespaces, label=rc.label,
                                           on_change=lambda _: self._on_change(self.label))  # fmt: skip
                await self.routes.start()
            if rc.dtab_store is not None:
                ds = rc.dtab_store
                where = f"router {source}: dtabStore"
                self.store = DtabStore(target_of(ds.api, where, self._environ), ds.namespace, ds.name, label=rc.label,
                                       on_change=lambda _: self._on_change(self.label))  # fmt: skip
                await self.store.start()
        except BaseException:
            await self.stop()
            raise
        self.started = True

    async def _transformer(self, tc: TransformerConfig) -> Transformer:
        env = self._environ
        if tc.kind == "io.l5d.k8s.localnode":
            node, ip = env.get("NODE_NAME") or None, env.get("POD_IP") or None
            if tc.host_network and not node:
                raise K8sStartError(f"{tc.where}: io.l5d.k8s.localnode with hostNetwork: true needs NODE_NAME "
                                    "(the node's name, from the downward API's spec.nodeName)")  # fmt: skip
            if not tc.host_network and not ip:
                raise K8sStartError(f"{tc.where}: io.l5d.k8s.localnode needs POD_IP (the pod's IP, from the downward "
                                    "API's status.podIP), or hostNetwork: true and NODE_NAME")  # fmt: skip
            return LocalNode(host_network=tc.host_network, node_name=node, pod_ip=ip, prefix=tc.prefix)
        assert tc.api is not None
        namer = K8sNamer(target_of(tc.api, tc.where, env), namespace=tc.namespace, service=tc.service)
        self.namers.append(namer)
        await namer.start()
        gateways = namer.endpoints(tc.namespace, tc.port, tc.service)
        return DaemonSet(gateways, host_network=tc.host_network, prefix=tc.prefix)

    async def stop(self) -> None:
        for t in self.transformers:
            t.close()
        for n in self.namers:
            await n.stop()
        if self.routes is not None:
            await self.routes.stop()
        if self.store is not None:
            await self.store.stop()

    def mark_applied(self) -> None:
        """The runtime swapped in a snapshot for a change from the API."""
        self.applied += 1
        for n, fut in self._waiters:
            if self.applied >= n and not fut.done():
                fut.set_result(None)
        self._waiters = [(n, f) for n, f in self._waiters if not f.done()]

    async def wait_applied(self, count: int) -> None:
        """Until `count` changes from the API have been swapped in (tests, tooling)."""
        if self.applied >= count:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((count, fut))
        await fut

    # -- what a snapshot is built from ------------------------------------------------------------

    def rules(self) -> tuple[RuleConfig, ...]:
        return self.routes.rules if self.routes is not None else ()

    def stored_dtab(self) -> Dtab | None:
        """The base dtab when a store decides it: the stored one, or while the object
        does not exist the config's; None without a store."""
        if self.store is None:
            return None
        return self.store.dtab if self.store.dtab is not None else self.config_dtab

    def status_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.routes is not None:
            out["resources"] = self.routes.status_json()
        if self.store is not None:
            out["dtabStore"] = self.store.status_json()
        if self.namers:
            out["daemonsets"] = [n.state_json() for n in self.namers]
        return out


def metric_lines(namers: list[Any], routers: Mapping[str, RouterK8s]) -> list[str]:
    """Prometheus lines for the watches, the routing resources and the dtab stores."""
    watches: list[tuple[str, Any]] = []
    for n in namers:
        if isinstance(n, K8sNamer):
            watches.extend((r.what, r) for r in n.reflectors)
    for k in routers.values():
        for n in k.namers:
            watches.extend((f"{k.label} daemonset {r.what}", r) for r in n.reflectors)
        if k.routes is not None:
            watches.extend((f"{k.label} {r.what}", r) for r in k.routes.reflectors)
        if k.store is not None:
            watches.append((f"{k.label} {k.store.reflector.what}", k.store.reflector))
    out: list[str] = []
    if watches:
        fams = (
            ("watch_synced", "gauge", "1 once a Kubernetes watch has listed its collection.", lambda r: int(r.synced.is_set())),
            ("watch_events_total", "counter", "Watch events applied (ADDED, MODIFIED, DELETED).", lambda r: r.events),
            ("watch_relists_total", "counter", "Lists forced by 410 Gone (a compacted resourceVersion).", lambda r: r.relists),
            ("watch_errors_total", "counter", "Failed lists and watches (each retried with backoff).", lambda r: r.errors),
        )  # fmt: skip
        for name, kind, help_text, value in fams:
            out += [f"# HELP dtabproxy_k8s_{name} {help_text}", f"# TYPE dtabproxy_k8s_{name} {kind}"]
            out += [f'dtabproxy_k8s_{name}{{watch="{_escape(w)}"}} {value(r)}' for w, r in watches]
    routes = [(k.label, k.routes) for k in routers.values() if k.routes is not None]
    if routes:
        out += ["# HELP dtabproxy_k8s_resources_applied Routing resources translated from the API, by router.",
                "# TYPE dtabproxy_k8s_resources_applied gauge"]  # fmt: skip
        out += [f'dtabproxy_k8s_resources_applied{{router="{_escape(lb)}"}} {len(w.applied)}' for lb, w in routes]
        out += ["# HELP dtabproxy_k8s_resources_untranslated Routing resources (or parts) from the API that could not be "
                "translated, by router (listed in /config.json).", "# TYPE dtabproxy_k8s_resources_untranslated gauge"]  # fmt: skip
        out += [f'dtabproxy_k8s_resources_untranslated{{router="{_escape(lb)}"}} {len(w.untranslated)}' for lb, w in routes]
    stores = [(k.label, k.store) for k in routers.values() if k.store is not None]
    if stores:
        out += ["# HELP dtabproxy_k8s_dtab_invalid 1 while the stored DTab does not parse (the last good dtab applies).",
                "# TYPE dtabproxy_k8s_dtab_invalid gauge"]  # fmt: skip
        out += [f'dtabproxy_k8s_dtab_invalid{{router="{_escape(lb)}"}} {int(s.error is not None)}' for lb, s in stores]
        out += ["# HELP dtabproxy_k8s_dtab_conflicts_total Dtab writes refused as stale (412).",
                "# TYPE dtabproxy_k8s_dtab_conflicts_total counter"]  # fmt: skip
        out += [f'dtabproxy_k8s_dtab_conflicts_total{{router="{_escape(lb)}"}} {s.conflicts}' for lb, s in stores]
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
