"""Routes from the Kubernetes API: a router's `resources: {kind: io.l5d.k8s, namespaces}`.

The same resources `dtabproxy import` and a `resources:` directory read from files (SMI
`TrafficSplit` v1alpha1-4 with their `HTTPRouteGroup`s, Istio `VirtualService` +
`DestinationRule`, Gateway API `HTTPRoute`/`GRPCRoute`) are watched in the listed
namespaces and translated by the same importer (`config.importers`) into match rules,
validated as if written in the config (`config.load.load_rules`). Whenever the set of
resources changes, the translation is redone (after a 50 ms pause that gathers a
`kubectl apply` of many objects into one) and, if the rules differ, `on_change` is
called: the runtime builds a new router snapshot and swaps one reference, so requests
in flight finish on the snapshot they started with.

A resource (or part of one) that cannot be translated is listed in `untranslated`
(shown in /config.json, counted in a metric, logged once when it appears); the rest
applies. A group the API does not serve (Istio or the Gateway API not installed) is
asked for again every 30 s, so installing it later is picked up.

Owns: the copy of those resources and their translation. Must not: touch routers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import aiohttp

from config.schema import RuleConfig

from .k8s_api import MISSING_RETRY_S, ApiError, ApiTarget, Backoff, K8sApi, Reflector, collection_path

log = logging.getLogger(__name__)

#: (group, plural, kind): what the importers read.
KINDS: Final = (
    ("split.smi-spec.io", "trafficsplits", "TrafficSplit"),
    ("specs.smi-spec.io", "httproutegroups", "HTTPRouteGroup"),
    ("networking.istio.io", "virtualservices", "VirtualService"),
    ("networking.istio.io", "destinationrules", "DestinationRule"),
    ("gateway.networking.k8s.io", "httproutes", "HTTPRoute"),
    ("gateway.networking.k8s.io", "grpcroutes", "GRPCRoute"),
)
#: A burst of changes (one `kubectl apply -f dir/`) is translated once.
SETTLE_S: Final = 0.05
SOURCE: Final = "kubernetes"  # the "file" an imported rule names as its origin

ObjKey = tuple[str, str, str]  # kind, namespace, name


class RouteWatcher:
    """Watches the routing resources of some namespaces; `rules` is the current
    translation (a tuple, replaced whole), `untranslated` what could not be used."""

    __slots__ = (
        "target", "api", "namespaces", "label", "on_change", "rules", "untranslated", "applied", "synced",
        "_objects", "_reflectors", "_tasks", "_timer", "_groups", "_resolved", "_reported", "translations",
    )  # fmt: skip

    def __init__(self, target: ApiTarget, namespaces: tuple[str, ...], *, label: str,
                 on_change: Callable[[RouteWatcher], None]) -> None:  # fmt: skip
        self.target = target
        self.api = K8sApi(target)
        self.namespaces = namespaces
        self.label = label
        self.on_change = on_change
        self.rules: tuple[RuleConfig, ...] = ()
        self.untranslated: tuple[str, ...] = ()
        self.applied: tuple[str, ...] = ()  # `Kind ns/name` of every resource translated
        self.translations = 0
        self.synced = asyncio.Event()
        self._objects: dict[ObjKey, dict[str, Any]] = {}
        self._reflectors: list[Reflector] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._groups: dict[str, str | None] = {}  # group -> version watched (None: not served)
        # Set once a group is known to be served (its watches started) or not.
        self._resolved = {g: asyncio.Event() for g, _, _ in KINDS}
        self._reported: set[str] = set()

    @property
    def reflectors(self) -> list[Reflector]:
        return list(self._reflectors)

    def __repr__(self) -> str:
        return f"<RouteWatcher {self.label} {','.join(self.namespaces)} rules={len(self.rules)}>"

    async def start(self, wait_s: float = 10.0) -> None:
        """Start watching; wait (up to `wait_s`) for the first lists, so the router's
        first snapshot already has the rules when the API is up."""
        loop = asyncio.get_running_loop()
        for group in dict.fromkeys(g for g, _, _ in KINDS):
            self._tasks.append(loop.create_task(self._watch_group(group), name=f"k8s routes {group}"))
        ready = loop.create_task(self._all_synced())
        self._tasks.append(ready)
        try:
            await asyncio.wait_for(asyncio.shield(ready), wait_s)
        except TimeoutError:
            log.warning("router %s: routing resources from %s not listed within %.0fs; they apply when they are",
                        self.label, self.target.show(), wait_s)  # fmt: skip

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        for r in self._reflectors:
            await r.stop()
        await self.api.close()

    async def _all_synced(self) -> None:
        for event in self._resolved.values():
            await event.wait()
        for r in list(self._reflectors):
            await r.synced.wait()
        self._translate()
        self.synced.set()

    async def _watch_group(self, group: str) -> None:
        """Find the version of `group` that serves each kind (preferred first), then
        watch those kinds in every namespace; a group not served is asked for again."""
        backoff = Backoff()
        while True:
            try:
                versions = await self.api.group_versions(group)
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("router %s: API discovery of %s failed: %s", self.label, group, exc)
                await asyncio.sleep(backoff.next_s())
                continue
            if versions is None:
                if group not in self._groups:
                    log.info("router %s: the API does not serve %s; asking again every %.0fs",
                             self.label, group, MISSING_RETRY_S)  # fmt: skip
                self._groups[group] = None
                self._resolved[group].set()
                await asyncio.sleep(MISSING_RETRY_S)
                continue
            break
        started = False
        for _, plural, kind in (k for k in KINDS if k[0] == group):
            version = await self._version_for(group, versions, plural)
            if version is None:
                continue
            for ns in self.namespaces:
                r = Reflector(self.api, collection_path(f"{group}/{version}", plural, ns),
                              what=f"{plural}.{group} ({ns})",
                              on_list=partial(self._listed, kind, ns, f"{group}/{version}"),
                              on_event=partial(self._event, kind, ns, f"{group}/{version}"))  # fmt: skip
                self._reflectors.append(r)
                r.start()
                started = True
            log.info("router %s: watching %s %s in %s", self.label, kind, f"{group}/{version}", ", ".join(self.namespaces))
        self._groups[group] = versions[0] if started else None
        self._resolved[group].set()

    async def _version_for(self, group: str, versions: list[str], plural: str) -> str | None:
        backoff = Backoff()
        for v in versions:
            while True:
                try:
                    if await self.api.serves(f"{group}/{v}", plural):
                        return v
                    break
                except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning("router %s: API discovery of %s/%s failed: %s", self.label, group, v, exc)
                    await asyncio.sleep(backoff.next_s())
        return None

    # -- the copy --------------------------------------------------------------------------------

    def _listed(self, kind: str, ns: str, gv: str, items: list[dict[str, Any]]) -> None:
        for key in [k for k in self._objects if k[0] == kind and k[1] == ns]:
            del self._objects[key]
        for obj in items:
            self._put(kind, ns, gv, obj)
        self._schedule()

    def _event(self, kind: str, ns: str, gv: str, type_: str, obj: dict[str, Any]) -> None:
        if type_ == "DELETED":
            name = str((obj.get("metadata") or {}).get("name") or "")
            self._objects.pop((kind, ns, name), None)
        else:
            self._put(kind, ns, gv, obj)
        self._schedule()

    def _put(self, kind: str, ns: str, gv: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str):
            return
        # List items of some servers carry no kind/apiVersion: the collection says them.
        doc = dict(obj)
        doc["kind"] = kind
        doc["apiVersion"] = gv
        doc["metadata"] = {**(obj.get("metadata") or {}), "namespace": ns}
        self._objects[(kind, ns, name)] = doc

    def _schedule(self) -> None:
        if not self.synced.is_set():
            return  # the first translation happens once every list is in
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SETTLE_S, self._settled)

    def _settled(self) -> None:
        self._timer = None
        self._translate()

    def _translate(self) -> None:
        from config.importers import import_documents
        from config.load import load_rules

        docs = [(SOURCE, doc) for _, doc in sorted(self._objects.items())]
        result = import_documents(docs)
        rule_docs = result.as_rules()
        rules, problems = load_rules(rule_docs)
        # Unconditional entries (splits, default routes) first, so conditional rules win.
        rules.sort(key=lambda r: bool(r.match))
        untranslated = tuple(result.untranslated) + tuple(problems)
        for item in untranslated:
            if item not in self._reported:
                log.warning("router %s: not translated from the API: %s", self.label, item)
        self._reported = set(untranslated)
        self.translations += 1
        applied = tuple(t.ref for t in result.translations)
        if tuple(rules) == self.rules and untranslated == self.untranslated and applied == self.applied:
            return
        changed = tuple(rules) != self.rules
        self.rules = tuple(rules)
        self.untranslated = untranslated
        self.applied = applied
        if changed:
            log.info("router %s: %d rules from %d routing resources in %s", self.label, len(self.rules),
                     len(applied), ", ".join(self.namespaces))  # fmt: skip
            try:
                self.on_change(self)
            except Exception:  # our bug: the watch goes on with the old snapshot
                log.error("router %s: applying the routing resources failed", self.label, exc_info=True)

    def status_json(self) -> dict[str, Any]:
        return {
            "kind": "io.l5d.k8s", "namespaces": list(self.namespaces), "api": self.target.show(),
            "synced": self.synced.is_set(), "applied": list(self.applied), "rules": len(self.rules),
            "untranslated": list(self.untranslated),
            "groups": {g: v for g, v in sorted(self._groups.items())},
        }  # fmt: skip
