"""A small Kubernetes API server for tests: the real protocol, as far as dtabproxy uses it.

No kube-apiserver can run on the test machines, so this one speaks what the proxy's
client (proxy/discovery/k8s_api.py) and `kubectl` would see on the wire:

* discovery: `/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`;
  a group can be switched off (an API server without EndpointSlices);
* collections (cluster-wide and per namespace) with `labelSelector` (`k`, `!k`, `k=v`,
  `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`), `fieldSelector` (`metadata.name`,
  `metadata.namespace`), `limit`/`continue` (a continue token from a compacted version
  is 410 Gone), and the list's `metadata.resourceVersion`;
* watches, `?watch=true` and the legacy `/api/v1/watch/...` paths: a chunked stream of
  one JSON event per line; from a `resourceVersion` the history is replayed, from none
  the current objects come as synthetic ADDED; an object entering or leaving a selector
  is ADDED or DELETED for that watch; `BOOKMARK` events when the test asks (only to
  watches that allow them); a version older than the compaction point is an `ERROR`
  event carrying a 410 Status; `timeoutSeconds` ends the stream cleanly;
* objects: GET, POST (201; 409 AlreadyExists), PUT (a stale `metadata.resourceVersion`
  is 409 Conflict; none means unconditional), DELETE;
* bearer tokens (401 for any other), so token rotation can be tested.

Test controls (in-process): `put`/`delete` objects directly, `bookmark()`, `compact()`,
`expire_watches()` (ERROR 410 to every watch), `end_watches()`, `drop_watches()` (cut),
`fail_next(n, status)`, and counters of lists and watches per collection.

Run standalone for the e2e tests: `python -m tests.k8s.apiserver --port 0` prints
`apiserver listening on http://127.0.0.1:<port>` and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import re
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    versions: tuple[str, ...]  # served versions, the preferred first
    plural: str
    kind: str
    namespaced: bool = True

    def gv(self, version: str | None = None) -> str:
        v = version or self.versions[0]
        return v if not self.group else f"{self.group}/{v}"


KINDS: tuple[Kind, ...] = (
    Kind("", ("v1",), "services", "Service"),
    Kind("", ("v1",), "endpoints", "Endpoints"),
    Kind("", ("v1",), "pods", "Pod"),
    Kind("", ("v1",), "namespaces", "Namespace", namespaced=False),
    Kind("discovery.k8s.io", ("v1",), "endpointslices", "EndpointSlice"),
    Kind("l5d.io", ("v1alpha1",), "dtabs", "DTab"),
    Kind("split.smi-spec.io", ("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"), "trafficsplits", "TrafficSplit"),
    Kind("specs.smi-spec.io", ("v1alpha4", "v1alpha3"), "httproutegroups", "HTTPRouteGroup"),
    Kind("networking.istio.io", ("v1beta1", "v1alpha3"), "virtualservices", "VirtualService"),
    Kind("networking.istio.io", ("v1beta1", "v1alpha3"), "destinationrules", "DestinationRule"),
    Kind("gateway.networking.k8s.io", ("v1",), "httproutes", "HTTPRoute"),
    Kind("gateway.networking.k8s.io", ("v1",), "grpcroutes", "GRPCRoute"),
)


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Failure" if code >= 400 else "Success", "message": message,
                           "reason": reason, "code": code}  # fmt: skip
    if details is not None:
        out["details"] = details
    return out


class BadSelector(ValueError):
    pass


_REQ = re.compile(r"^\s*(!)?\s*([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def parse_label_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """`a=b,!c,d in (x,y)` -> [(op, key, values)]. Ops: exists, !exists, =, !=, in, notin."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if not p.strip():
            if text.strip():
                raise BadSelector(f"invalid selector: {text!r}")
            continue
        m = _REQ.match(p)
        if m is None:
            raise BadSelector(f"unable to parse requirement: {p!r}")
        neg, key, op, value, setop, values = m.groups()
        if neg and (op or setop):
            raise BadSelector(f"unable to parse requirement: {p!r}")
        if neg:
            out.append(("!exists", key, ()))
        elif op in ("=", "=="):
            out.append(("=", key, (value,)))
        elif op == "!=":
            out.append(("!=", key, (value,)))
        elif setop:
            out.append((setop, key, tuple(v.strip() for v in values.split(",") if v.strip())))
        else:
            out.append(("exists", key, ()))
    return out


def labels_match(reqs: list[tuple[str, str, tuple[str, ...]]], labels: dict[str, str]) -> bool:
    for op, key, values in reqs:
        v = labels.get(key)
        if op == "exists" and v is None or op == "!exists" and v is not None:
            return False
        if op == "=" and v != values[0] or op == "!=" and v == values[0]:
            return False
        if op == "in" and v not in values or op == "notin" and v in values:
            return False
    return True


def parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    out = []
    for p in text.split(","):
        if not p.strip():
            continue
        m = re.match(r"^\s*([a-zA-Z.]+)\s*(==|=|!=)\s*(.*?)\s*$", p)
        if m is None:
            raise BadSelector(f"invalid field selector: {p!r}")
        name, op, value = m.groups()
        if name not in ("metadata.name", "metadata.namespace"):
            raise BadSelector(f'field label not supported: {name}')
        out.append((name, "!=" if op == "!=" else "=", value))
    return out


def fields_match(reqs: list[tuple[str, str, str]], obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    for name, op, value in reqs:
        actual = meta.get("name" if name == "metadata.name" else "namespace") or ""
        if (actual == value) != (op == "="):
            return False
    return True


@dataclass
class _Watch:
    kind: Kind
    version: str
    namespace: str | None
    labels: list[tuple[str, str, tuple[str, ...]]]
    fields: list[tuple[str, str, str]]
    bookmarks: bool
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = field(default_factory=asyncio.Queue)
    request: web.Request | None = None

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return labels_match(self.labels, meta.get("labels") or {}) and fields_match(self.fields, obj)


@dataclass
class _Change:
    rv: int
    kind: Kind
    old: dict[str, Any] | None
    new: dict[str, Any] | None


class ApiServer:
    """The server and its state. `await start()`, then `url`; `await stop()`."""

    def __init__(self, *, endpointslices: bool = True, tokens: set[str] | None = None,
                 host: str = "127.0.0.1", ssl: Any = None) -> None:  # fmt: skip
        self.host = host
        self.ssl = ssl
        self.port = 0
        self.disabled_groups: set[str] = set() if endpointslices else {"discovery.k8s.io"}
        self.tokens = tokens
        self.rv = 1
        self.compacted = 0
        self.objects: dict[Kind, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in KINDS}
        self.history: list[_Change] = []
        self.watches: list[_Watch] = []
        self.lists: Counter[str] = Counter()  # "plural" -> list requests
        self.watch_requests: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []  # (method, path?query)
        self._continues: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._fail: list[int] = []
        self._runner: web.AppRunner | None = None
        self.watch_opened = asyncio.Condition()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> ApiServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl, shutdown_timeout=0.1)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for w in list(self.watches):
            w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- test controls ----------------------------------------------------------------------

    def kind(self, plural: str, group: str | None = None) -> Kind:
        for k in KINDS:
            if k.plural == plural and (group is None or k.group == group):
                return k
        raise KeyError(plural)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects[self.kind(plural)].get((namespace, name))

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (no version check) and notify watches."""
        kind = self._kind_of(obj)
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace") or ("default" if kind.namespaced else "")
        if kind.namespaced:
            meta["namespace"] = ns
        return self._store(kind, ns, meta["name"], obj)

    def delete(self, plural: str, namespace: str, name: str) -> bool:
        kind = self.kind(plural)
        old = self.objects[kind].pop((namespace, name), None)
        if old is None:
            return False
        self.rv += 1
        self._record(_Change(self.rv, kind, old, None))
        return True

    def bookmark(self) -> None:
        """A BOOKMARK at the current version to every watch that allows them."""
        for w in self.watches:
            if w.bookmarks:
                w.queue.put_nowait(("BOOKMARK", {"kind": w.kind.kind, "apiVersion": w.kind.gv(w.version),
                                                 "metadata": {"resourceVersion": str(self.rv)}}))  # fmt: skip

    def compact(self) -> None:
        """Forget history up to now: a watch or continue from an older version is 410."""
        self.compacted = self.rv
        self.history = []
        self._continues.clear()

    def expire_watches(self) -> None:
        """What the real server does after a compaction: an ERROR event with a 410
        Status to every open watch, which then ends."""
        for w in self.watches:
            w.queue.put_nowait(("ERROR", status(410, "Expired", "too old resource version: 1 (2)")))
            w.queue.put_nowait(None)

    def end_watches(self) -> None:
        """End every watch cleanly after what is queued (what timeoutSeconds does)."""
        for w in self.watches:
            w.queue.put_nowait(None)

    def drop_watches(self) -> None:
        """Cut every watch connection without a clean end (a network failure)."""
        for w in list(self.watches):
            if w.request is not None and w.request.transport is not None:
                w.request.transport.abort()
            w.queue.put_nowait(None)

    def fail_next(self, count: int, code: int = 500) -> None:
        self._fail.extend([code] * count)

    async def wait_watches(self, plural: str, count: int) -> None:
        """Until `count` watch requests of `plural` have been made in all."""
        async with self.watch_opened:
            await self.watch_opened.wait_for(lambda: self.watch_requests[plural] >= count)

    # -- storage ------------------------------------------------------------------------------

    def _kind_of(self, obj: dict[str, Any]) -> Kind:
        api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group = api.split("/")[0] if "/" in api else ""
        for k in KINDS:
            if k.kind == kind and k.group == group:
                return k
        raise KeyError(f"{api} {kind}")

    def _store(self, kind: Kind, ns: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        old = self.objects[kind].get((ns, name))
        self.rv += 1
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        obj["apiVersion"] = kind.gv()
        obj["kind"] = kind.kind
        self.objects[kind][(ns, name)] = obj
        self._record(_Change(self.rv, kind, old, obj))
        return copy.deepcopy(obj)

    def _record(self, change: _Change) -> None:
        self.history.append(change)
        for w in self.watches:
            if w.kind is change.kind:
                ev = _event_for(w, change)
                if ev is not None:
                    w.queue.put_nowait(ev)

    # -- HTTP -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if self.tokens is not None:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                return _json(401, status(401, "Unauthorized", "Unauthorized"))
        if self._fail:
            code = self._fail.pop(0)
            return _json(code, status(code, "InternalError", "injected failure"))
        segs = [s for s in request.path.split("/") if s]
        try:
            return await self._route(request, segs)
        except BadSelector as exc:
            return _json(400, status(400, "BadRequest", str(exc)))

    async def _route(self, request: web.Request, segs: list[str]) -> web.StreamResponse:
        if segs == ["api"]:
            return _json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]})
        if segs == ["apis"]:
            return _json(200, {"kind": "APIGroupList", "apiVersion": "v1",
                               "groups": [self._group(g) for g in self._groups()]})  # fmt: skip
        if segs[:1] == ["api"] and len(segs) >= 2:
            group, version, rest = "", segs[1], segs[2:]
        elif segs[:1] == ["apis"] and len(segs) >= 2:
            group = segs[1]
            if group not in self._groups():
                return _not_found(f"the server could not find the requested resource ({request.path})")
            if len(segs) == 2:
                return _json(200, self._group(group))
            version, rest = segs[2], segs[3:]
        else:
            return _not_found("the server could not find the requested resource")
        kinds = [k for k in KINDS if k.group == group and version in k.versions and group not in self.disabled_groups]
        if not kinds:
            return _not_found(f"the server could not find the requested resource ({request.path})")
        if not rest:
            return _json(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": kinds[0].gv(version),
                               "resources": [{"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced,
                                              "kind": k.kind, "verbs": ["create", "delete", "get", "list", "update", "watch"]}
                                             for k in kinds]})  # fmt: skip
        watch = False
        if rest[0] == "watch":  # the legacy watch paths
            watch, rest = True, rest[1:]
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        kind = next((k for k in kinds if k.plural == rest[0]), None) if rest else None
        if kind is None or len(rest) > 2:
            return _not_found(f"the server could not find the requested resource ({request.path})")
        name = rest[1] if len(rest) == 2 else None
        q = request.query
        watch = watch or q.get("watch") in ("true", "1")
        if name is not None and watch:
            return await self._watch(request, kind, version, namespace, f"metadata.name={name}")
        if name is not None:
            return await self._object(request, kind, version, namespace or "", name)
        if request.method == "POST":
            return await self._create(request, kind, namespace or "")
        if request.method != "GET":
            return _json(405, status(405, "MethodNotAllowed", f"{request.method} is not allowed here"))
        if watch:
            return await self._watch(request, kind, version, namespace, q.get("fieldSelector", ""))
        return self._list(request, kind, version, namespace)

    def _groups(self) -> list[str]:
        return sorted({k.group for k in KINDS if k.group and k.group not in self.disabled_groups})

    def _group(self, group: str) -> dict[str, Any]:
        versions = next(k.versions for k in KINDS if k.group == group)
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def _selected(self, kind: Kind, namespace: str | None, request: web.Request) -> list[dict[str, Any]]:
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""))
        out = []
        for (ns, _), obj in sorted(self.objects[kind].items()):
            if namespace is not None and ns != namespace:
                continue
            meta = obj.get("metadata") or {}
            if labels_match(labels, meta.get("labels") or {}) and fields_match(fields, obj):
                out.append(obj)
        return out

    def _list(self, request: web.Request, kind: Kind, version: str, namespace: str | None) -> web.Response:
        self.lists[kind.plural] += 1
        q = request.query
        cont = q.get("continue")
        if cont:
            entry = self._continues.pop(cont, None)
            if entry is None:
                return _json(410, status(410, "Expired", "The provided continue parameter is too old to display a "
                                                        "consistent list result. You can start a new list without the continue parameter."))  # fmt: skip
            rv, items = entry
        else:
            rv, items = self.rv, [copy.deepcopy(o) for o in self._selected(kind, namespace, request)]
        limit = int(q.get("limit") or 0)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and len(items) > limit:
            token = base64.urlsafe_b64encode(json.dumps({"rv": rv, "id": uuid.uuid4().hex}).encode()).decode()
            self._continues[token] = (rv, items[limit:])
            items = items[:limit]
            meta["continue"] = token
            meta["remainingItemCount"] = len(self._continues[token][1])
        for i in items:
            i["apiVersion"] = kind.gv(version)
            # Built-in lists leave kind and apiVersion off their items; CRD lists keep them.
            if not kind.group or kind.group == "discovery.k8s.io":
                i.pop("apiVersion", None)
                i.pop("kind", None)
            else:
                i["kind"] = kind.kind
        return _json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.gv(version), "metadata": meta, "items": items})

    async def _watch(self, request: web.Request, kind: Kind, version: str, namespace: str | None,
                     field_selector: str) -> web.StreamResponse:  # fmt: skip
        q = request.query
        w = _Watch(kind, version, namespace, parse_label_selector(q.get("labelSelector", "")),
                   parse_field_selector(field_selector), q.get("allowWatchBookmarks") in ("true", "1"), request=request)  # fmt: skip
        rv_text = q.get("resourceVersion", "")
        if rv_text and rv_text != "0" and not rv_text.isdigit():
            return _json(400, status(400, "BadRequest", f"invalid resource version: {rv_text}"))
        self.watch_requests[kind.plural] += 1
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        initial: list[tuple[str, dict[str, Any]]] = []
        # Registered in the same step as the replay is computed: nothing falls between.
        if rv_text in ("", "0"):
            initial = [("ADDED", copy.deepcopy(o)) for o in self.objects[kind].values() if w.matches(o)]
        elif int(rv_text) < self.compacted:
            initial = [("ERROR", status(410, "Expired", f"too old resource version: {rv_text} ({self.compacted})"))]
            w.queue.put_nowait(None)
        else:
            since = int(rv_text)
            for change in self.history:
                if change.kind is kind and change.rv > since:
                    ev = _event_for(w, change)
                    if ev is not None:
                        initial.append(ev)
        self.watches.append(w)
        async with self.watch_opened:
            self.watch_opened.notify_all()
        timeout = float(q.get("timeoutSeconds") or 1800)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for ev in initial:
                await _write_event(resp, w, ev)
                if ev[0] == "ERROR":
                    return resp
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(w.queue.get(), left)
                except TimeoutError:
                    break
                if ev is None:
                    break
                await _write_event(resp, w, ev)
                if ev[0] == "ERROR":
                    break
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away, or drop_watches() cut it
        finally:
            if w in self.watches:
                self.watches.remove(w)
        return resp

    async def _object(self, request: web.Request, kind: Kind, version: str, ns: str, name: str) -> web.Response:
        store = self.objects[kind]
        current = store.get((ns, name))
        what = f'{kind.plural}{"." + kind.group if kind.group else ""} "{name}"'
        details = {"name": name, "group": kind.group, "kind": kind.plural}
        if request.method == "GET":
            if current is None:
                return _json(404, status(404, "NotFound", f"{what} not found", details))
            return _json(200, _versioned(current, kind, version))
        if request.method == "DELETE":
            if current is None:
                return _json(404, status(404, "NotFound", f"{what} not found", details))
            self.delete(kind.plural, ns, name)
            return _json(200, status(200, "", "", details))
        if request.method != "PUT":
            return _json(405, status(405, "MethodNotAllowed", f"{request.method} is not allowed here"))
        body = await _body(request)
        if body is None:
            return _json(400, status(400, "BadRequest", "the body is not a JSON object"))
        meta = body.get("metadata") or {}
        if meta.get("name") != name:
            return _json(400, status(400, "BadRequest", f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"))
        if current is None:
            return _json(404, status(404, "NotFound", f"{what} not found", details))
        rv = meta.get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            return _json(409, status(409, "Conflict", f"Operation cannot be fulfilled on {what}: the object has been "
                                                      "modified; please apply your changes to the latest version and try again", details))  # fmt: skip
        if kind.namespaced:
            body.setdefault("metadata", {})["namespace"] = ns
        body["metadata"].pop("resourceVersion", None)
        body["metadata"]["uid"] = current["metadata"]["uid"]
        body["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"]
        return _json(200, _versioned(self._store(kind, ns, name, body), kind, version))

    async def _create(self, request: web.Request, kind: Kind, ns: str) -> web.Response:
        body = await _body(request)
        if body is None or not (body.get("metadata") or {}).get("name"):
            return _json(400, status(400, "BadRequest", "the object needs metadata.name"))
        name = body["metadata"]["name"]
        if (ns, name) in self.objects[kind]:
            what = f'{kind.plural}{"." + kind.group if kind.group else ""} "{name}"'
            return _json(409, status(409, "AlreadyExists", f"{what} already exists",
                                     {"name": name, "group": kind.group, "kind": kind.plural}))  # fmt: skip
        if body.get("metadata", {}).get("resourceVersion"):
            return _json(400, status(400, "BadRequest", "resourceVersion should not be set on objects to be created"))
        if kind.namespaced:
            body["metadata"]["namespace"] = ns
        return _json(201, self._store(kind, ns, name, body))


def _event_for(w: _Watch, change: _Change) -> tuple[str, dict[str, Any]] | None:
    was, now = w.matches(change.old), w.matches(change.new)
    if now:
        assert change.new is not None
        return ("MODIFIED" if was else "ADDED", copy.deepcopy(change.new))
    if was:
        assert change.old is not None
        gone = copy.deepcopy(change.new if change.new is not None else change.old)
        gone["metadata"]["resourceVersion"] = str(change.rv)
        return ("DELETED", gone)
    return None


async def _write_event(resp: web.StreamResponse, w: _Watch, ev: tuple[str, dict[str, Any]]) -> None:
    kind, obj = ev
    if kind not in ("ERROR", "BOOKMARK"):
        obj = _versioned(obj, w.kind, w.version)
    await resp.write(json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n")


def _versioned(obj: dict[str, Any], kind: Kind, version: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["apiVersion"] = kind.gv(version)
    out["kind"] = kind.kind
    return out


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        doc = json.loads(await request.read())
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _json(code: int, doc: dict[str, Any]) -> web.Response:
    return web.Response(status=code, body=json.dumps(doc).encode(), content_type="application/json")


def _not_found(message: str) -> web.Response:
    return _json(404, status(404, "NotFound", message))


# -- standalone --------------------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> None:
    server = ApiServer(endpointslices=not args.no_endpointslices, host=args.host)
    server.port = args.port
    await server.start()
    print(f"apiserver listening on {server.url}", flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def on_stdin() -> None:
        if not sys.stdin.buffer.read1(4096):  # type: ignore[attr-defined]
            loop.remove_reader(sys.stdin.fileno())
            done.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await done.wait()
    await server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="A small Kubernetes API server for tests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--no-endpointslices", action="store_true", help="serve no discovery.k8s.io group")
    asyncio.run(_main(p.parse_args()))
