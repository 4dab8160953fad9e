"""A router's base dtab stored in the cluster: namerd's Kubernetes storage shape.

`dtabStore: {kind: io.l5d.k8s, namespace, name}` makes the router's dtab the custom
resource

    apiVersion: l5d.io/v1alpha1
    kind: DTab                      # plural `dtabs` (deploy/15-dtab-crd.yaml)
    metadata: {name: outgoing, namespace: dtabproxy}
    dentries:
    - {prefix: /svc, dst: /#/io.l5d.k8s/default/http}

watched (list-then-watch on `metadata.name`), so a `kubectl edit` applies on every proxy
at once. A write (`PUT /admin/dtabs/<router>`) goes to the API with the object's
`resourceVersion` as the compare-and-swap: the admin's ETag is that version, and a
version the API no longer has (its 409 Conflict) is the caller's 412. The answer of a
successful write is applied at once (read-your-writes); the watch then brings the same
version, and events older than it are skipped meanwhile.

While the object does not exist the router runs on the dtab of its config, and a write
creates it (which needs `create` on dtabs). A stored dentry that does not parse keeps
the last good dtab in place and is reported (`error`, the log).

Owns: the copy of one DTab object. Must not: touch routers (`on_change` does).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any, Final

import aiohttp

from dtab import Dentry, Dtab, DtabSyntaxError, read_dtab

from .k8s_api import (
    ApiError,
    ApiTarget,
    Conflict,
    K8sApi,
    NotFound,
    Reflector,
    collection_path,
    resource_version,
)

log = logging.getLogger(__name__)

GROUP_VERSION: Final = "l5d.io/v1alpha1"
PLURAL: Final = "dtabs"
KIND: Final = "DTab"


class StoreConflict(Exception):
    """The version written against is not the stored one (412 to the caller)."""

    def __init__(self, current: str | None) -> None:
        super().__init__("the stored dtab changed since that version was read")
        self.current = current  # the ETag now, when known


class StoreError(Exception):
    """The API refused or could not be reached (the message says which)."""


def etag(rv: str) -> str:
    return f'"{rv}"'


def dtab_of(obj: dict[str, Any]) -> Dtab:
    """The dtab of a DTab object; `DtabSyntaxError`/`ValueError` naming the entry."""
    entries = obj.get("dentries")
    if entries is None:
        return Dtab.EMPTY
    if not isinstance(entries, list):
        raise ValueError("dentries: expected a list of {prefix, dst}")
    parts: list[Dentry] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("prefix"), str) or not isinstance(e.get("dst"), str):
            raise ValueError(f"dentries[{i}]: expected {{prefix: <prefix>, dst: <name tree>}}")
        text = f"{e['prefix']} => {e['dst']}"
        try:
            parts.extend(read_dtab(text).dentries)
        except DtabSyntaxError as exc:
            raise ValueError(f"dentries[{i}]: {exc}") from None
    return Dtab(tuple(parts))


def dentries_of(table: Dtab) -> list[dict[str, str]]:
    from dtab.tree import show as show_tree

    return [{"prefix": d.prefix.show(), "dst": show_tree(d.dst)} for d in table.dentries]


class DtabStore:
    """One DTab object, watched. `dtab` is None while the object does not exist."""

    __slots__ = (
        "target", "api", "namespace", "name", "label", "on_change", "dtab", "resource_version", "error",
        "synced", "_obj", "reflector", "_written", "writes", "conflicts",
    )  # fmt: skip

    def __init__(self, target: ApiTarget, namespace: str, name: str, *, label: str,
                 on_change: Callable[[DtabStore], None]) -> None:  # fmt: skip
        self.target = target
        self.api = K8sApi(target)
        self.namespace = namespace
        self.name = name
        self.label = label
        self.on_change = on_change
        self.dtab: Dtab | None = None
        self.resource_version: str | None = None
        self.error: str | None = None
        self.synced = asyncio.Event()
        self.writes = 0
        self.conflicts = 0
        self._obj: dict[str, Any] | None = None
        self._written: str | None = None  # the version our last write made, until the watch shows it
        self.reflector = Reflector(
            self.api, collection_path(GROUP_VERSION, PLURAL, namespace), params={"fieldSelector": f"metadata.name={name}"},
            what=f"dtab {namespace}/{name}", on_list=self._listed, on_event=self._event, on_missing=self._missing,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"<DtabStore {self.namespace}/{self.name} rv={self.resource_version}>"

    @property
    def ref(self) -> str:
        return f"{KIND} {self.namespace}/{self.name}"

    def etag(self) -> str | None:
        return etag(self.resource_version) if self.resource_version else None

    async def start(self, wait_s: float = 10.0) -> None:
        self.reflector.start()
        try:
            await asyncio.wait_for(self.reflector.synced.wait(), wait_s)
        except TimeoutError:
            log.warning("router %s: %s not read from %s within %.0fs; the config's dtab applies until it is",
                        self.label, self.ref, self.target.show(), wait_s)  # fmt: skip
        self.synced.set()

    async def stop(self) -> None:
        await self.reflector.stop()
        await self.api.close()

    # -- from the API --------------------------------------------------------------------------

    def _missing(self) -> None:
        log.warning("router %s: the API does not serve %s (apply deploy/15-dtab-crd.yaml); the config's dtab applies",
                    self.label, GROUP_VERSION)  # fmt: skip

    def _listed(self, items: list[dict[str, Any]]) -> None:
        self._written = None  # a list is the whole truth
        mine = [o for o in items if (o.get("metadata") or {}).get("name") == self.name]
        self._apply(mine[0] if mine else None)

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        if (obj.get("metadata") or {}).get("name") != self.name:
            return
        rv = resource_version(obj)
        if self._written is not None:
            if rv != self._written:
                return  # older than what our own write already applied
            self._written = None
        self._apply(None if kind == "DELETED" else obj)

    def _apply(self, obj: dict[str, Any] | None) -> None:
        if obj is None:
            if self._obj is None and self.dtab is None:
                return
            self._obj, self.dtab, self.resource_version, self.error = None, None, None, None
            log.warning("router %s: %s was deleted; the config's dtab applies", self.label, self.ref)
            self.on_change(self)
            return
        rv = resource_version(obj)
        try:
            table = dtab_of(obj)
        except ValueError as exc:
            self._obj, self.resource_version = obj, rv  # writes still compare against it
            self.error = f"{self.ref} (resourceVersion {rv}): {exc}"
            log.warning("router %s: %s; keeping the dtab in use", self.label, self.error)
            return
        self._obj, self.resource_version, self.error = obj, rv, None
        if table == self.dtab:
            return
        self.dtab = table
        log.info("router %s: dtab from %s (resourceVersion %s, %d dentries)", self.label, self.ref, rv, len(table.dentries))
        self.on_change(self)

    # -- writes --------------------------------------------------------------------------------

    async def write(self, table: Dtab, if_match: str | None) -> str:
        """Store `table`; the new ETag. `if_match` is the caller's `If-Match` (None:
        against the version known here; `*`: any existing version). Raises
        `StoreConflict` (412) or `StoreError`."""
        rv = self._precondition(if_match)
        base = self._obj
        path = collection_path(GROUP_VERSION, PLURAL, self.namespace)
        try:
            if base is None:  # no object known: create it (409 AlreadyExists if our copy is behind)
                if if_match is not None and if_match.strip() == "*":  # `*` needs one (RFC 9110 §13.1.1)
                    raise StoreConflict(None)
                body: dict[str, Any] = {"apiVersion": GROUP_VERSION, "kind": KIND,
                                        "metadata": {"name": self.name, "namespace": self.namespace},
                                        "dentries": dentries_of(table)}  # fmt: skip
                obj = await self.api.request("POST", path, body=body)
            else:
                body = copy.deepcopy(base)
                body["apiVersion"], body["kind"] = GROUP_VERSION, KIND
                body["dentries"] = dentries_of(table)
                body["metadata"]["resourceVersion"] = rv  # the compare-and-swap, done by the API
                obj = await self.api.request("PUT", f"{path}/{self.name}", body=body)
        except Conflict:  # stale version, or created meanwhile
            self.conflicts += 1
            raise StoreConflict(self.etag()) from None
        except NotFound:  # deleted meanwhile: the version asked for is gone
            self.conflicts += 1
            raise StoreConflict(None) from None
        except ApiError as exc:
            raise StoreError(f"the API refused to store {self.ref}: {exc}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StoreError(f"cannot reach the API at {self.target.show()} to store {self.ref}: {exc}") from None
        if not isinstance(obj, dict):
            raise StoreError(f"the API answered the write of {self.ref} with something else than the object")
        self.writes += 1
        new_rv = resource_version(obj)
        self._written = new_rv or None
        self._apply(obj)
        return etag(new_rv)

    def _precondition(self, if_match: str | None) -> str:
        """The resourceVersion to write against."""
        current = self.resource_version or ""
        if if_match is None:
            return current
        tags = [t.strip() for t in if_match.split(",") if t.strip()]
        if "*" in tags:
            return current
        strong = [t[1:-1] for t in tags if len(t) >= 2 and t[0] == '"' and t[-1] == '"']  # weak tags never match
        if current and current in strong:
            return current
        if len(strong) == 1:
            return strong[0]  # maybe newer than our copy: the API decides
        raise StoreConflict(self.etag())

    def status_json(self) -> dict[str, Any]:
        return {
            "kind": "io.l5d.k8s", "namespace": self.namespace, "name": self.name, "api": self.target.show(),
            "resourceVersion": self.resource_version, "exists": self._obj is not None, "error": self.error,
            "watch": self.reflector.stats(),
        }  # fmt: skip
