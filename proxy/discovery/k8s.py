"""The `io.l5d.k8s` namer: service discovery from the Kubernetes API, in Linkerd 1's shape.

A dtab reaches it as `/#/io.l5d.k8s/<namespace>/<port>/<service>[/<label value>]/rest`
(the first segments lower-cased, as Linkerd does). `<port>` is a Service port name, or a
number that goes through the Service's `port` to the port the endpoints serve it on
(its `targetPort`, whether a number or a container port name). With `labelSelector`
(a label key, Linkerd's meaning) one more segment is the label's value, and only a
Service carrying that label with that value answers.

Endpoints come from the Service's EndpointSlices (`discovery.k8s.io/v1`, label
`kubernetes.io/service-name`): the ready endpoints, and only when none is ready the
serving-but-terminating ones (as kube-proxy does, so a rollout's last pods still take
traffic); where the API serves no EndpointSlices, from core v1 Endpoints. Each address
carries its `nodeName` as metadata for the transformers.

Services and their endpoints are kept in memory from list-then-watch streams
(`k8s_api.Reflector`), cluster-wide or for one namespace and service (the daemonset
transformer's scope), so `lookup` is synchronous and reads memory only. A name that
exists keeps one `EndpointSet` for good, updated in place (one tuple swap), so a bound
tree cached by a router sees endpoint churn without being rebuilt; a Service that does
not exist (or lacks the port) binds `NEG`, so `|` falls through. `version` and the
names subscribers change only when a Service appears, disappears or changes its ports
or label, which is when cached bindings may be stale.

Owns: the in-memory copy of Services and endpoints. Must not: touch sockets or routers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import aiohttp

from dtab import NEG, Bound, Leaf, NameTree, Path, Prefix

from .endpoints import BOUND, Addr, EndpointSet
from .k8s_api import ApiError, ApiTarget, Backoff, K8sApi, NotFound, Reflector, api_target, collection_path

if TYPE_CHECKING:
    from config import NamerConfig

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = Path.of("io.l5d.k8s")
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
#: How long `start` waits for the first list before routers start anyway (names then
#: bind to pending sets, and are bound again once the lists are in).
START_WAIT_S: Final = 10.0

NamesCallback = Callable[["K8sNamer"], None]


class SvcPort(NamedTuple):
    name: str
    port: int
    protocol: str


class Service(NamedTuple):
    ports: tuple[SvcPort, ...]
    labels: Mapping[str, str]


class Ep(NamedTuple):
    """One endpoint of a slice: its address and conditions."""

    host: str
    ready: bool
    serving: bool
    terminating: bool
    node: str | None


class Slice(NamedTuple):
    service: str
    ports: tuple[tuple[str, int], ...]  # (name, port), TCP only
    endpoints: tuple[Ep, ...]


NameKey = tuple[str, str, str, str | None]  # namespace, port segment, service, label value


class K8sNamer:
    """`io.l5d.k8s`: names are `/<namespace>/<port>/<service>`, answered at `/#/<prefix>`.

    `namespace`/`service` narrow what is watched (None: the whole cluster); the
    transformers use a narrowed namer for the daemonset's own service."""

    __slots__ = (
        "target", "api", "id_prefix", "bind_prefix", "label_selector", "namespace", "service", "version",
        "mode", "_services", "_slices", "_by_service", "_endpoints", "_sets", "_names_of", "_pinned",
        "_name_subscribers", "_reflectors", "_task", "_synced", "_ready", "_pending", "start_wait_s",
    )  # fmt: skip

    def __init__(self, target: ApiTarget, prefix: Path = DEFAULT_PREFIX, *, label_selector: str | None = None,
                 namespace: str | None = None, service: str | None = None) -> None:  # fmt: skip
        self.target = target
        self.api = K8sApi(target)
        full = prefix if prefix.elems[:1] == (b"#",) else Path((b"#", *prefix.elems))
        self.id_prefix: Path = full
        self.bind_prefix: Prefix = Prefix(full.elems)
        self.label_selector = label_selector
        self.namespace = namespace
        self.service = service
        self.version = 0
        self.mode: str | None = None  # "endpointslices" or "endpoints", once discovered
        self._services: dict[tuple[str, str], Service] = {}
        self._slices: dict[tuple[str, str], Slice] = {}  # (namespace, slice name)
        self._by_service: dict[tuple[str, str], set[str]] = {}  # (namespace, service) -> slice names
        self._endpoints: dict[tuple[str, str], tuple[tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str | None], ...]], ...]] = {}
        self._sets: dict[NameKey, EndpointSet] = {}
        self._names_of: dict[tuple[str, str], set[NameKey]] = {}  # (namespace, service) -> names with a set
        self._pinned: set[NameKey] = set()  # kept even while the name does not exist
        self._name_subscribers: tuple[NamesCallback, ...] = ()
        self._reflectors: list[Reflector] = []
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._ready = False  # every list is in: lookups answer from complete data
        # What every name binds to before the first lists are in: one set that stays
        # pending (routes are bound again when the lists arrive), so names asked for
        # meanwhile, by anyone's Host header, cost nothing to keep.
        self._pending = EndpointSet()
        self.start_wait_s = START_WAIT_S

    @classmethod
    def from_config(cls, config: NamerConfig, environ: Mapping[str, str] | None = None) -> K8sNamer:
        """Raises `ApiConfigError` when the API is in-cluster and the pod's environment
        is missing."""
        api = config.api
        target = api_target(api.host if api else None, api.port if api else None, environ=environ)
        return cls(target, config.prefix, label_selector=config.label_selector)

    def __repr__(self) -> str:
        scope = f" {self.namespace}/{self.service}" if self.service else ""
        return f"<K8sNamer {self.id_prefix.show()} {self.target.show()}{scope} v{self.version}>"

    # -- the namer interface ------------------------------------------------------------

    def lookup(self, path: Path) -> NameTree:
        """`/<ns>/<port>/<svc>[/<value>]/rest…` -> the bound name with residual
        `/rest…`, or `NEG` when the Service or its port does not exist. Memory only."""
        n = 4 if self.label_selector else 3
        elems = path.elems
        if len(elems) < n:
            return NEG
        try:
            segs = [e.decode("utf-8").lower() for e in elems[:n]]
        except UnicodeDecodeError:
            return NEG
        key: NameKey = (segs[0], segs[1], segs[2], segs[3] if n == 4 else None)
        endpoints = self._sets.get(key)
        if not self._ready:
            endpoints = endpoints or self._pending
        elif endpoints is None:
            if self._port_name(key) is None:
                return NEG
            endpoints = self._add_set(key)
        elif endpoints.state != BOUND:
            return NEG  # a pinned name (the daemonset's) that does not exist now
        ident = Path(tuple(s.encode("utf-8") for s in segs))
        return Leaf(Bound(self.id_prefix + ident, Path(elems[n:]), endpoints))

    def endpoints(self, namespace: str, port: str, service: str, label_value: str | None = None) -> EndpointSet:
        """The live set of a name, kept for good even while the Service does not exist
        (then `NEG`): the daemonset transformer follows its proxies' service this way."""
        key: NameKey = (namespace.lower(), port.lower(), service.lower(), label_value)
        self._pinned.add(key)
        return self._sets.get(key) or self._add_set(key)

    def _add_set(self, key: NameKey) -> EndpointSet:
        endpoints = self._sets[key] = EndpointSet()
        self._names_of.setdefault((key[0], key[2]), set()).add(key)
        self._refresh(key, endpoints)
        return endpoints

    def _drop_set(self, key: NameKey) -> None:
        del self._sets[key]
        names = self._names_of.get((key[0], key[2]))
        if names is not None:
            names.discard(key)
            if not names:
                del self._names_of[(key[0], key[2])]

    def subscribe_names(self, callback: NamesCallback) -> Callable[[], None]:
        """Call `callback(self)` whenever a name may bind differently (a Service came,
        went, or changed its ports or label); returns the unsubscribe function."""
        self._name_subscribers = (*self._name_subscribers, callback)

        def unsubscribe() -> None:
            subs = list(self._name_subscribers)
            if callback in subs:
                subs.remove(callback)
                self._name_subscribers = tuple(subs)

        return unsubscribe

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the watches and wait (up to `start_wait_s`) for their first lists, so
        lookups answer from complete data as soon as this returns when the API is up."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"k8s namer {self.id_prefix.show()}")
        try:
            await asyncio.wait_for(self._synced.wait(), self.start_wait_s)
            log.info("k8s namer %s: %s from %s (%d services)", self.id_prefix.show(), self.mode,
                     self.target.show(), len(self._services))  # fmt: skip
        except TimeoutError:
            log.warning("k8s namer %s: no answer from %s within %.0fs; names stay pending until it answers",
                        self.id_prefix.show(), self.target.show(), self.start_wait_s)  # fmt: skip

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for r in self._reflectors:
            await r.stop()
        self._reflectors = []
        await self.api.close()

    @property
    def reflectors(self) -> list[Reflector]:
        return list(self._reflectors)

    async def _run(self) -> None:
        """Find out whether the API serves EndpointSlices, then list and watch."""
        backoff = Backoff()
        while self.mode is None:
            try:
                slices = await self.api.serves("discovery.k8s.io/v1", "endpointslices")
                self.mode = "endpointslices" if slices else "endpoints"
            except NotFound:
                self.mode = "endpoints"
            except (ApiError, OSError, TimeoutError, ValueError) as exc:
                log.warning("k8s namer %s: API discovery at %s failed: %s", self.id_prefix.show(), self.target.show(), exc)
                await asyncio.sleep(backoff.next_s())
            except aiohttp.ClientError as exc:  # not reachable yet
                log.warning("k8s namer %s: cannot reach %s: %s", self.id_prefix.show(), self.target.show(), exc)
                await asyncio.sleep(backoff.next_s())
        ns = self.namespace
        svc_params: dict[str, str] = {}
        if self.service is not None:
            svc_params["fieldSelector"] = f"metadata.name={self.service}"
        elif self.label_selector:
            svc_params["labelSelector"] = self.label_selector  # only Services that carry the label
        where = f"{ns}/{self.service}" if self.service else (ns or "all namespaces")
        services = Reflector(self.api, collection_path("v1", "services", ns), params=svc_params,
                             what=f"services ({where})", on_list=self._services_listed,
                             on_event=self._service_event)  # fmt: skip
        if self.mode == "endpointslices":
            selector = SERVICE_NAME_LABEL + (f"={self.service}" if self.service else "")
            eps = Reflector(self.api, collection_path("discovery.k8s.io/v1", "endpointslices", ns),
                            params={"labelSelector": selector}, what=f"endpointslices ({where})",
                            on_list=self._slices_listed, on_event=self._slice_event)  # fmt: skip
        else:
            params = {"fieldSelector": f"metadata.name={self.service}"} if self.service else {}
            eps = Reflector(self.api, collection_path("v1", "endpoints", ns), params=params,
                            what=f"endpoints ({where})", on_list=self._endpoints_listed,
                            on_event=self._endpoints_event)  # fmt: skip
        self._reflectors = [services, eps]
        for r in self._reflectors:
            r.start()
        await services.synced.wait()
        await eps.synced.wait()
        self._ready = True
        self._refresh_all()
        self._names_changed()
        self._synced.set()

    # -- Services -------------------------------------------------------------------------

    def _services_listed(self, items: list[dict[str, Any]]) -> None:
        new: dict[tuple[str, str], Service] = {}
        for obj in items:
            parsed = _service(obj)
            if parsed is not None:
                new[parsed[0]] = parsed[1]
        old, self._services = self._services, new
        changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        if changed and self._ready:
            self._refresh_services(changed)
            self._names_changed()

    def _service_event(self, kind: str, obj: dict[str, Any]) -> None:
        parsed = _service(obj)
        if parsed is None:
            return
        key, info = parsed
        old = self._services.get(key)
        if kind == "DELETED":
            if old is None:
                return
            del self._services[key]
        else:
            if old == info:
                return  # a status or annotation change: nothing that binds differently
            self._services[key] = info
        if self._ready:
            self._refresh_services({key})
            self._names_changed()

    # -- EndpointSlices ------------------------------------------------------------------

    def _slices_listed(self, items: list[dict[str, Any]]) -> None:
        old = self._slices
        self._slices = {}
        self._by_service = {}
        for obj in items:
            parsed = _slice(obj)
            if parsed is not None:
                self._put_slice(*parsed)
        touched = {(ns, s.service) for (ns, _), s in old.items()} | {(ns, s.service) for (ns, _), s in self._slices.items()}
        if self._ready:
            self._refresh_services(touched)

    def _slice_event(self, kind: str, obj: dict[str, Any]) -> None:
        parsed = _slice(obj)
        if parsed is None:
            return
        key, info = parsed
        old = self._slices.get(key)
        if old is not None:
            names = self._by_service.get((key[0], old.service))
            if names is not None:
                names.discard(key[1])
                if not names:
                    del self._by_service[(key[0], old.service)]
            del self._slices[key]
        if kind != "DELETED":
            self._put_slice(key, info)
        if not self._ready:
            return
        touched = {(key[0], info.service)}
        if old is not None:
            touched.add((key[0], old.service))
        self._refresh_services(touched)

    def _put_slice(self, key: tuple[str, str], info: Slice) -> None:
        self._slices[key] = info
        self._by_service.setdefault((key[0], info.service), set()).add(key[1])

    # -- core v1 Endpoints (where the API has no EndpointSlices) -------------------------

    def _endpoints_listed(self, items: list[dict[str, Any]]) -> None:
        old = self._endpoints
        self._endpoints = {}
        for obj in items:
            parsed = _endpoints(obj)
            if parsed is not None:
                self._endpoints[parsed[0]] = parsed[1]
        if self._ready:
            self._refresh_services({k for k in old.keys() | self._endpoints.keys() if old.get(k) != self._endpoints.get(k)})

    def _endpoints_event(self, kind: str, obj: dict[str, Any]) -> None:
        parsed = _endpoints(obj)
        if parsed is None:
            return
        key, subsets = parsed
        if kind == "DELETED":
            if self._endpoints.pop(key, None) is None:
                return
        else:
            if self._endpoints.get(key) == subsets:
                return
            self._endpoints[key] = subsets
        if self._ready:
            self._refresh_services({key})

    # -- from the copy to the endpoint sets --------------------------------------------------

    def _port_name(self, key: NameKey) -> str | None:
        """The Service port a name means (its name; "" for a single unnamed port), or
        None when the Service, its label value or the port does not exist."""
        ns, port, svc, value = key
        info = self._services.get((ns, svc))
        if info is None:
            return None
        if self.label_selector and info.labels.get(self.label_selector) != value:
            return None
        if port.isdigit():
            number = int(port)
            for p in info.ports:
                if p.port == number and p.protocol == "TCP":
                    return p.name
            return None
        for p in info.ports:
            if p.name == port and p.protocol == "TCP":
                return p.name
        return None

    def _refresh_services(self, services: Iterable[tuple[str, str]]) -> None:
        names_of, sets = self._names_of, self._sets
        for svc in services:
            for key in list(names_of.get(svc, ())):
                self._refresh(key, sets[key])

    def _refresh_all(self) -> None:
        for key, endpoints in list(self._sets.items()):
            self._refresh(key, endpoints)

    def _refresh(self, key: NameKey, endpoints: EndpointSet) -> None:
        """Recompute one name's addresses from the copy (one swap, or no change)."""
        if not self._ready:
            return  # stays pending until every list is in
        port_name = self._port_name(key)
        if port_name is None:
            endpoints.set_neg()
            if key not in self._pinned:
                self._drop_set(key)  # a name that does not exist is not kept (lookups are by anyone's Host)
            return
        ns, svc = key[0], key[2]
        if self.mode == "endpointslices":
            addrs, meta = self._slice_addrs(ns, svc, port_name)
        else:
            addrs, meta = self._endpoints_addrs(ns, svc, port_name)
        endpoints.update(addrs, meta)

    def _slice_addrs(self, ns: str, svc: str, port_name: str) -> tuple[list[Addr], dict[Addr, dict[str, str]]]:
        ready: list[Addr] = []
        fallback: list[Addr] = []
        meta: dict[Addr, dict[str, str]] = {}
        for name in sorted(self._by_service.get((ns, svc), ())):
            s = self._slices[(ns, name)]
            number = next((p for n, p in s.ports if n == port_name), None)
            if number is None:
                continue
            for ep in s.endpoints:
                addr = (ep.host, number)
                if ep.ready:
                    ready.append(addr)
                elif ep.serving and ep.terminating:
                    fallback.append(addr)
                else:
                    continue
                if ep.node:
                    meta[addr] = {"nodeName": ep.node}
        chosen = ready or fallback
        return chosen, {a: meta[a] for a in chosen if a in meta}

    def _endpoints_addrs(self, ns: str, svc: str, port_name: str) -> tuple[list[Addr], dict[Addr, dict[str, str]]]:
        addrs: list[Addr] = []
        meta: dict[Addr, dict[str, str]] = {}
        for ports, hosts in self._endpoints.get((ns, svc), ()):
            number = next((p for n, p in ports if n == port_name), None)
            if number is None:
                continue
            for host, node in hosts:
                addrs.append((host, number))
                if node:
                    meta[(host, number)] = {"nodeName": node}
        return addrs, meta

    def _names_changed(self) -> None:
        self.version += 1
        for callback in self._name_subscribers:
            try:
                callback(self)
            except Exception:  # one broken subscriber must not starve the others
                log.error("k8s namer names subscriber %r failed", callback, exc_info=True)

    # -- admin ------------------------------------------------------------------------------

    def state_json(self) -> dict[str, Any]:
        """What the namer knows (Linkerd's /namer_state shape, roughly)."""
        return {
            "prefix": self.id_prefix.show(), "api": self.target.show(), "mode": self.mode, "ready": self._ready,
            "services": len(self._services), "endpointSlices": len(self._slices),
            "names": {"/".join(x for x in k if x is not None): v.to_json() for k, v in sorted(self._sets.items(), key=lambda kv: str(kv[0]))},
            "watches": {r.what: r.stats() for r in self._reflectors},
        }  # fmt: skip


# -- reading API objects (defensively: a malformed object is skipped, never fatal) ---------


def _meta(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    m = obj.get("metadata")
    if not isinstance(m, dict):
        return None
    ns, name = m.get("namespace") or "default", m.get("name")
    if not isinstance(name, str) or not isinstance(ns, str):
        return None
    return ns, name


def _service(obj: Mapping[str, Any]) -> tuple[tuple[str, str], Service] | None:
    key = _meta(obj)
    if key is None:
        return None
    spec = obj.get("spec") or {}
    ports = []
    for p in (spec.get("ports") or ()) if isinstance(spec, dict) else ():
        if isinstance(p, dict) and isinstance(p.get("port"), int):
            ports.append(SvcPort(str(p.get("name") or ""), p["port"], str(p.get("protocol") or "TCP")))
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return key, Service(tuple(ports), {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {})


def _slice(obj: Mapping[str, Any]) -> tuple[tuple[str, str], Slice] | None:
    key = _meta(obj)
    if key is None:
        return None
    labels = (obj.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    if not isinstance(service, str) or not service:
        return None
    ports = []
    for p in obj.get("ports") or ():
        if isinstance(p, dict) and isinstance(p.get("port"), int) and (p.get("protocol") or "TCP") == "TCP":
            ports.append((str(p.get("name") or ""), p["port"]))
    eps = []
    for e in obj.get("endpoints") or ():
        if not isinstance(e, dict):
            continue
        addresses = e.get("addresses") or ()
        if not addresses or not isinstance(addresses[0], str):
            continue
        cond = e.get("conditions") or {}
        # API conventions: a nil `ready` or `serving` means true, a nil `terminating` false.
        ready = cond.get("ready") is not False
        serving = cond.get("serving", cond.get("ready")) is not False
        terminating = cond.get("terminating") is True
        node = e.get("nodeName")
        # Only the first address is used: "consumers must handle different types of
        # addresses in the context of their own capabilities" (EndpointSlice API).
        eps.append(Ep(addresses[0], ready, serving, terminating, node if isinstance(node, str) else None))
    return key, Slice(service, tuple(ports), tuple(eps))


def _endpoints(obj: Mapping[str, Any]) -> tuple[tuple[str, str], tuple[Any, ...]] | None:
    key = _meta(obj)
    if key is None:
        return None
    subsets = []
    for s in obj.get("subsets") or ():
        if not isinstance(s, dict):
            continue
        ports = tuple(
            (str(p.get("name") or ""), p["port"]) for p in s.get("ports") or ()
            if isinstance(p, dict) and isinstance(p.get("port"), int) and (p.get("protocol") or "TCP") == "TCP"
        )  # fmt: skip
        hosts = tuple(
            (a["ip"], a.get("nodeName") if isinstance(a.get("nodeName"), str) else None)
            for a in s.get("addresses") or () if isinstance(a, dict) and isinstance(a.get("ip"), str)
        )  # fmt: skip
        subsets.append((ports, hosts))
    return key, tuple(subsets)
