"""Gateway API `HTTPRoute` and `GRPCRoute` (gateway.networking.k8s.io) -> rules.

The route's logical name: a `Service` parent (the GAMMA mesh form) is `/svc/<service>`;
a `Gateway` parent routes its `hostnames`, each `/svc/<hostname>` (what the default
`io.l5d.header.token` identifier names a request by). Every (rule, match) pair becomes
one rule in the group `<Kind>/<ns>/<name>`, ordered by the Gateway API's precedence
(exact path, then longest prefix, then method, then most headers, then most query
parameters; for gRPC: service and method, then headers), so the first match wins as
the API specifies. A match of every request with no filters becomes a base entry.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from .common import (
    Names,
    Translation,
    dentry,
    entries_text,
    header_edits,
    routes_to_itself,
    union,
    unknown_keys,
)

_FILTER_SKIP = {
    "RequestRedirect": "redirects are answered by the gateway itself, not routed",
    "RequestMirror": "mirroring is not translated",
    "ExtensionRef": "extension filters are not translated",
    "CORS": "CORS is not translated",
}


def translate_route(doc: dict[str, Any], t: Translation, names: Names) -> None:
    grpc = t.kind == "GRPCRoute"
    unknown_keys(t, doc, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    spec = doc.get("spec") or {}
    unknown_keys(t, spec, "spec", ("parentRefs", "hostnames", "rules"))
    apexes = _apexes(spec, t, names)
    if not apexes:
        return
    group = f"{t.kind}/{t.namespace}/{t.name}"
    pairs: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    dst_of: dict[int, str] = {}
    order = 0
    for i, rule in enumerate(spec.get("rules") or ()):
        where = f"spec.rules[{i}]"
        if not isinstance(rule, dict):
            t.skip(where, "expected a mapping")
            continue
        unknown_keys(t, rule, where, ("name", "matches", "filters", "backendRefs"),
                     "timeouts, retries and session persistence are not translated")  # fmt: skip
        filters = _filters(rule.get("filters") or (), t, f"{where}.filters")
        if filters is None:
            continue
        branches = _backends(rule.get("backendRefs") or (), t, f"{where}.backendRefs", names)
        if branches is None or any(routes_to_itself(t, f"{where}.backendRefs", a, branches) for a in apexes):
            continue
        dst = union(branches)
        matches = rule.get("matches") or [{}]
        for k, m in enumerate(matches):
            mw = f"{where}.matches[{k}]"
            block, rank = (_grpc_match if grpc else _http_match)(m, t, mw)
            if block is None:
                continue
            rewrite = filters.get("rewrite") or {}
            uri = rewrite.get("uri")
            if uri is not None and "replacePrefix" in uri:
                path = block.get("path")
                if not isinstance(path, dict) or "segmentPrefix" not in path:
                    t.skip(f"{where}.filters", "ReplacePrefixMatch needs a PathPrefix match; the rule is left out")
                    continue
                rewrite = {**rewrite, "uri": {"prefix": path["segmentPrefix"], "replacement": uri["replacePrefix"]}}
            label = str(rule.get("name") or i)
            r: dict[str, Any] = {"name": f"{group}/{label}/{k}", "group": group, "source": f"{t.ref} ({t.file})"}
            if block:
                r["match"] = block
            r["dtab"] = entries_text([dentry(a, dst) for a in apexes])
            if rewrite:
                r["rewrite"] = rewrite
            for key in ("requestHeaders", "responseHeaders"):
                if key in filters:
                    r[key] = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in filters[key].items()}
            pairs.append(((*rank, order), r))
            dst_of[id(r)] = dst
            order += 1
    pairs.sort(key=lambda p: p[0])
    for n, (_, r) in enumerate(pairs):
        if "match" in r:
            t.rules.append(r)
            continue
        if set(r) == {"name", "group", "source", "dtab"}:
            t.dtab.extend(dentry(a, dst_of[id(r)]) for a in apexes)
        else:
            t.rules.append(r)  # a match of everything, with filters: the group's last rule
        for _, later in pairs[n + 1 :]:
            t.skip(later["name"], "unreachable: an earlier rule of the route matches every request")
        break


def _apexes(spec: dict[str, Any], t: Translation, names: Names) -> list[str]:
    out: list[str] = []
    gateway_parent = False
    for i, p in enumerate(spec.get("parentRefs") or ()):
        where = f"spec.parentRefs[{i}]"
        if not isinstance(p, dict):
            continue
        unknown_keys(t, p, where, ("group", "kind", "name", "namespace", "port", "sectionName"))
        for k in ("port", "sectionName"):
            if k in p:
                t.skip(f"{where}.{k}", "the route applies to every port of the router")
        kind = p.get("kind", "Gateway")
        if kind == "Service":
            name = names.service(str(p.get("name")), p.get("namespace"))
            if name not in out:
                out.append(name)
        else:
            gateway_parent = True
    if gateway_parent or not out:
        hosts = spec.get("hostnames") or ()
        for i, h in enumerate(hosts):
            if "*" in str(h):
                t.skip(f"spec.hostnames[{i}]", f"a wildcard hostname ({h}) is not one logical name")
                continue
            name = f"{names.prefix}/{h}"
            if name not in out:
                out.append(name)
        if not hosts and not out:
            t.skip("spec.hostnames", "a Gateway route for every hostname has no logical name to route; list hostnames")
    return out


def _backends(refs: Any, t: Translation, where: str, names: Names) -> list[tuple[str, Decimal]] | None:
    branches: list[tuple[str, Decimal]] = []
    for j, b in enumerate(refs):
        bw = f"{where}[{j}]"
        if not isinstance(b, dict) or "name" not in b:
            t.skip(bw, "expected a backend reference with a name")
            continue
        unknown_keys(t, b, bw, ("group", "kind", "name", "namespace", "port", "weight", "filters"))
        if b.get("filters"):
            t.skip(f"{bw}.filters", "per-backend filters are not translated")
        if b.get("kind", "Service") != "Service":
            t.skip(f"{bw}.kind", f"only Service backends are translated, not {b.get('kind')}")
            continue
        branches.append((names.service(str(b["name"]), b.get("namespace")), Decimal(str(b.get("weight", 1)))))
    if not branches:
        t.skip(where, "no backend: the Gateway API answers 500 here, which is not translated; the rule is left out")
        return None
    if all(w == 0 for _, w in branches):
        t.skip(where, "every weight is 0 (the Gateway API answers 500); a dtab union would spread traffic uniformly, so the rule is left out")
        return None
    return branches


def _filters(filters: Any, t: Translation, where: str) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for i, f in enumerate(filters):
        fw = f"{where}[{i}]"
        if not isinstance(f, dict):
            continue
        kind = f.get("type")
        if kind in _FILTER_SKIP:
            t.skip(fw, _FILTER_SKIP[kind])
            if kind == "RequestRedirect":
                t.skip(where, "a redirecting rule does not route; it is left out")
                return None
            continue
        if kind in ("RequestHeaderModifier", "ResponseHeaderModifier"):
            key = "requestHeaderModifier" if kind == "RequestHeaderModifier" else "responseHeaderModifier"
            mod = f.get(key) or {}
            unknown_keys(t, mod, f"{fw}.{key}", ("set", "add", "remove"))
            e = header_edits(
                ((str(h["name"]), str(h["value"])) for h in mod.get("set") or () if isinstance(h, dict)),
                ((str(h["name"]), str(h["value"])) for h in mod.get("add") or () if isinstance(h, dict)),
                (str(x) for x in mod.get("remove") or ()),
            )
            out["requestHeaders" if kind == "RequestHeaderModifier" else "responseHeaders"] = e
        elif kind == "URLRewrite":
            rw = f.get("urlRewrite") or {}
            unknown_keys(t, rw, f"{fw}.urlRewrite", ("hostname", "path"))
            r: dict[str, Any] = {}
            if rw.get("hostname"):
                r["authority"] = str(rw["hostname"])
            p = rw.get("path")
            if isinstance(p, dict):
                if p.get("type") == "ReplaceFullPath":
                    r["uri"] = {"path": str(p.get("replaceFullPath", "/"))}
                elif p.get("type") == "ReplacePrefixMatch":
                    r["uri"] = {"replacePrefix": str(p.get("replacePrefixMatch", "/"))}
                else:
                    t.skip(f"{fw}.urlRewrite.path", f"unknown path rewrite type {p.get('type')!r}")
            out["rewrite"] = r
        else:
            t.skip(fw, f"filter type {kind!r} is not translated")
    return out


def _http_match(m: Any, t: Translation, where: str) -> tuple[dict[str, Any] | None, tuple[Any, ...]]:
    if not isinstance(m, dict):
        t.skip(where, "expected a mapping")
        return None, ()
    unknown_keys(t, m, where, ("path", "headers", "queryParams", "method"))
    block: dict[str, Any] = {}
    path = m.get("path") or {"type": "PathPrefix", "value": "/"}
    ptype, pvalue = path.get("type", "PathPrefix"), str(path.get("value", "/"))
    exact = 0
    prefix_len = 0
    if ptype == "Exact":
        block["path"] = pvalue
        exact = 1
    elif ptype == "PathPrefix":
        if pvalue.rstrip("/"):
            # Gateway API prefixes match whole segments (`/api` is not `/apix`).
            block["path"] = {"segmentPrefix": pvalue.rstrip("/") or "/"}
        prefix_len = len(pvalue)
    elif ptype == "RegularExpression":
        block["path"] = {"regex": pvalue}
    else:
        t.skip(f"{where}.path.type", f"unknown path match type {ptype!r}; the match is left out")
        return None, ()
    headers = _named(m.get("headers") or (), t, f"{where}.headers", lower=True)
    query = _named(m.get("queryParams") or (), t, f"{where}.queryParams", lower=False)
    if headers is None or query is None:
        return None, ()
    if headers:
        block["headers"] = headers
    if query:
        block["query"] = query
    if m.get("method"):
        block["method"] = str(m["method"]).upper()
    # Precedence (HTTPRoute spec): exact path, longest prefix, method, headers, query.
    rank = (-exact, -prefix_len, -int("method" in block), -len(headers), -len(query))
    return block, (rank if block else (1,))  # a match of everything is tried last


def _grpc_match(m: Any, t: Translation, where: str) -> tuple[dict[str, Any] | None, tuple[Any, ...]]:
    if not isinstance(m, dict):
        t.skip(where, "expected a mapping")
        return None, ()
    unknown_keys(t, m, where, ("method", "headers"))
    block: dict[str, Any] = {}
    method = m.get("method") or {}
    unknown_keys(t, method, f"{where}.method", ("type", "service", "method"))
    mtype = method.get("type", "Exact")
    svc, meth = method.get("service"), method.get("method")
    if mtype == "Exact":
        if svc and meth:
            block["path"] = f"/{svc}/{meth}"
        elif svc:
            block["path"] = {"segmentPrefix": f"/{svc}"}
        elif meth:
            block["path"] = {"regex": f"/[^/]+/{re.escape(str(meth))}"}
    elif mtype == "RegularExpression":
        block["path"] = {"regex": f"/{svc or '[^/]+'}/{meth or '[^/]+'}"}
    else:
        t.skip(f"{where}.method.type", f"unknown method match type {mtype!r}; the match is left out")
        return None, ()
    headers = _named(m.get("headers") or (), t, f"{where}.headers", lower=True)
    if headers is None:
        return None, ()
    if headers:
        block["headers"] = headers  # gRPC metadata is ordinary HTTP/2 headers
    rank = (-int(bool(svc)), -int(bool(meth)), -len(headers))
    return block, (rank if block else (1,))


def _named(items: Any, t: Translation, where: str, *, lower: bool) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for i, h in enumerate(items):
        if not isinstance(h, dict) or "name" not in h:
            t.skip(f"{where}[{i}]", "expected name and value")
            return None
        unknown_keys(t, h, f"{where}[{i}]", ("type", "name", "value"))
        kind = h.get("type", "Exact")
        name = str(h["name"]).lower() if lower else str(h["name"])
        if kind == "Exact":
            out[name] = str(h.get("value", ""))
        elif kind == "RegularExpression":
            out[name] = {"regex": str(h.get("value", ""))}
        else:
            t.skip(f"{where}[{i}].type", f"unknown match type {kind!r}; the match is left out")
            return None
    return out
