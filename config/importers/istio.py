"""Istio `VirtualService` (+ `DestinationRule` subsets) -> dentries and match rules.

Each `spec.http[i]` route of a VirtualService becomes, for each of `spec.hosts`:

* no `match` (a catch-all) and no rewrites: a base entry
  `/svc/<host> => w1 * /svc/<dest1>[-<subset>] & ...`;
* otherwise a rule in the group `VirtualService/<ns>/<name>` (first match wins, as
  in Istio), whose `match` blocks are the route's `match` list (ORed) and whose
  dentry is the same weighted union. A subset `v1` of host `web` is the name
  `/svc/web-v1`; the DestinationRule's labels say which pods that is.

Istio features that are not routing by name (retries, timeouts, fault injection,
mirroring, CORS, redirects, direct responses, TCP/TLS routes, gateways) are reported.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from .common import (
    Index,
    Names,
    Translation,
    dentry,
    entries_text,
    header_edits,
    routes_to_itself,
    short_host,
    union,
    unknown_keys,
)

_HTTP_ROUTE_KEYS = ("name", "match", "route", "rewrite", "headers")
_UNSUPPORTED_ROUTE = {
    "redirect": "redirects are answered by Istio itself, not routed",
    "directResponse": "direct responses are answered by Istio itself, not routed",
    "delegate": "delegation to another VirtualService is not translated",
    "timeout": "per-route timeouts are not translated (the router has timeoutMs)",
    "retries": "retries are not translated",
    "fault": "fault injection is not translated",
    "mirror": "mirroring is not translated",
    "mirrors": "mirroring is not translated",
    "mirrorPercentage": "mirroring is not translated",
    "mirror_percent": "mirroring is not translated",
    "mirrorPercent": "mirroring is not translated",
    "corsPolicy": "CORS is not translated",
}
_FATAL = ("redirect", "directResponse", "delegate")


def translate_destination_rule(doc: dict[str, Any], t: Translation, names: Names) -> None:
    unknown_keys(t, doc, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    spec = doc.get("spec") or {}
    unknown_keys(t, spec, "spec", ("host", "subsets"), "traffic policies, exportTo and workload selectors are not translated")
    host = str(spec.get("host", ""))
    for i, s in enumerate(spec.get("subsets") or ()):
        if not isinstance(s, dict):
            continue
        unknown_keys(t, s, f"spec.subsets[{i}]", ("name", "labels"), "subset traffic policies are not translated")
        labels = ",".join(f"{k}={v}" for k, v in (s.get("labels") or {}).items())
        t.notes.append(f"subset {s.get('name')} of {host} is the name {names.subset(host, str(s.get('name')))}; "
                       f"bind it to the endpoints labelled {labels or '(no labels)'}")  # fmt: skip


def translate_virtual_service(doc: dict[str, Any], t: Translation, index: Index, names: Names) -> None:
    unknown_keys(t, doc, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    spec = doc.get("spec") or {}
    for k in ("tcp", "tls"):
        if spec.get(k):
            t.skip(f"spec.{k}", f"{k.upper()} routes are not translated (HTTP only)")
    if "exportTo" in spec:
        t.skip("spec.exportTo", "visibility is not translated")
    unknown_keys(t, spec, "spec", ("hosts", "gateways", "http", "tcp", "tls", "exportTo"))
    hosts = []
    wild: list[str] = []
    for i, h in enumerate(spec.get("hosts") or ()):
        if not isinstance(h, str) or not h:
            t.skip(f"spec.hosts[{i}]", f"expected a host name, got {h!r}")
        elif h == "*" or (h.startswith("*.") and "*" not in h[1:]):
            wild.append(h)
        elif "*" in h:
            t.skip(f"spec.hosts[{i}]", f"a wildcard is only valid as the whole host or its first label, got {h!r}")
        else:
            hosts.append(names.service(h))
    if spec.get("gateways"):
        if wild:  # a wildcard-host resource is for the edge: "the router it is loaded into" is that gateway
            t.notes.append(f"{t.ref}: spec.gateways {list(spec['gateways'])}: load it into the router that is that gateway")
        else:
            t.skip("spec.gateways", "gateway binding is not translated; the rules apply to every request of the router")
    if not hosts and not wild:
        t.skip("spec.hosts", "no host to route")
        return
    group = f"VirtualService/{t.namespace}/{t.name}"
    if hosts:
        _translate_routes(spec, t, index, names, hosts, group, None)
    if wild:
        _translate_wildcard(spec, t, index, names, wild, group + "/*" if hosts else group)
    # Named and wildcard hosts read the same routes: say each thing once.
    t.untranslated[:] = list(dict.fromkeys(t.untranslated))
    t.notes[:] = list(dict.fromkeys(t.notes))


#: The logical name of a wildcard-host VirtualService: not under the services' prefix,
#: so its entries can never rewrite a destination's own name (no loop).
VS_ROOT = "/vs"


def _translate_wildcard(spec: dict[str, Any], t: Translation, index: Index, names: Names, wild: list[str],
                        group: str) -> None:  # fmt: skip
    """`hosts: ['*']` (or `*.example.com`): the routes apply to every request of the
    router the resource is loaded into (for `*.example.com`, every request whose
    authority is under example.com). A dentry cannot say "any name" (`/svc/* => /svc/frontend`
    also matches `/svc/frontend` and would rewrite it forever), so each rule names the
    request (`service`) `/vs/<namespace>/<name>` and routes that name; the destinations
    keep their usual names and bind through the router's dtab."""
    vname = f"{VS_ROOT}/{t.namespace}/{t.name}"
    t.notes.append(
        f"{t.ref}: hosts {wild!r} "
        + ("match every request, so its routes apply to every request of the router it is loaded into (the edge)"
           if "*" in wild else f"match every request whose authority is under {', '.join(w[2:] for w in wild)}")
        + f": each such request is routed by the name {vname} (rule key `service`) instead of its identified name,"
        " and its destinations bind through the router's dtab"
        + ("; the named hosts keep their own entries" if group.endswith("/*") else "")
    )  # fmt: skip
    _translate_routes(spec, t, index, names, [vname], group, (vname, None if "*" in wild else wild))


def _translate_routes(spec: dict[str, Any], t: Translation, index: Index, names: Names, hosts: list[str], group: str,
                      wildcard: tuple[str, list[str] | None] | None) -> None:  # fmt: skip
    """The `http` routes for the names in `hosts`, as base entries and rules of `group`;
    `wildcard` (name, authority patterns or None for all) turns every route into a rule
    that names the request."""
    caught = None
    for i, route in enumerate(spec.get("http") or ()):
        where = f"spec.http[{i}]"
        if not isinstance(route, dict):
            t.skip(where, "expected a mapping")
            continue
        if caught is not None:
            t.skip(where, f"unreachable: spec.http[{caught}] before it matches every request")
            continue
        for k, why in _UNSUPPORTED_ROUTE.items():
            if k in route:
                t.skip(f"{where}.{k}", why)
        unknown_keys(t, route, where, (*_HTTP_ROUTE_KEYS, *_UNSUPPORTED_ROUTE))
        if any(k in route for k in _FATAL):
            t.skip(where, "the route has no destination to translate; it is left out")
            continue
        dst = _destinations(route, t, where, index, names)
        if dst is None:
            continue
        union_text, dest_edits, branches = dst
        if any(routes_to_itself(t, f"{where}.route", h, branches) for h in hosts):
            continue
        req, resp = _header_edits(route.get("headers"), t, f"{where}.headers")
        for side, edits in dest_edits:
            (req if side == "request" else resp).append(edits)
        rewrite = route.get("rewrite") or {}
        unknown_keys(t, rewrite, f"{where}.rewrite", ("uri", "authority", "uriRegexRewrite"))
        blocks = _match_blocks(route.get("match"), t, where)
        if blocks is None:
            continue
        every = not blocks
        if wildcard is not None and wildcard[1] is not None:
            # `*.example.com`: each block also needs an authority under a pattern (ORed
            # blocks, one per pattern); a block with its own authority keeps it.
            blocks = [{**b, "authority": w} for b in (blocks or [{}]) if "authority" not in b for w in wildcard[1]] + [
                b for b in blocks if "authority" in b
            ]
        entries = entries_text([dentry(h, union_text) for h in hosts])
        base_rule: dict[str, Any] = {"group": group, "source": f"{t.ref} ({t.file})", "dtab": entries}
        if wildcard is not None:
            base_rule["service"] = wildcard[0]
        if req:
            base_rule["requestHeaders"] = _merge(req)
        if resp:
            base_rule["responseHeaders"] = _merge(resp)
        label = str(route.get("name") or i)
        if every:
            caught = i
            if not rewrite and not req and not resp and wildcard is None:
                t.dtab.extend(dentry(h, union_text) for h in hosts)
                continue
        # A prefix URI rewrite replaces the prefix its own block matched, so such a
        # route becomes one rule per block; otherwise one rule with ORed blocks.
        groups = [[b] for b in blocks] if rewrite.get("uri") and len(blocks) > 1 else [blocks]
        for n, bs in enumerate(groups):
            rule = {"name": f"{group}/{label}" + (f"/{n}" if len(groups) > 1 else ""), **base_rule}
            if bs:
                rule["match"] = bs if len(bs) > 1 else bs[0]
            rw = _rewrite(rewrite, bs, t, f"{where}.rewrite")
            if rw:
                rule["rewrite"] = rw
            t.rules.append(_ordered(rule))


def _ordered(rule: dict[str, Any]) -> dict[str, Any]:
    order = ("name", "group", "source", "match", "service", "dtab", "rewrite", "requestHeaders", "responseHeaders")
    return {k: rule[k] for k in order if k in rule}


def _destinations(route: dict[str, Any], t: Translation, where: str, index: Index,
                  names: Names) -> tuple[str, list[tuple[str, dict[str, Any]]], list[tuple[str, Decimal]]] | None:  # fmt: skip
    dests = route.get("route") or []
    if not dests:
        t.skip(f"{where}.route", "no destination")
        return None
    branches: list[tuple[str, Decimal]] = []
    edits: list[tuple[str, dict[str, Any]]] = []
    for j, d in enumerate(dests):
        dw = f"{where}.route[{j}]"
        unknown_keys(t, d, dw, ("destination", "weight", "headers"))
        dest = d.get("destination") or {}
        unknown_keys(t, dest, f"{dw}.destination", ("host", "subset", "port"))
        if "port" in dest:
            t.skip(f"{dw}.destination.port", "the name routes to the service; its port comes from the namer")
        host = dest.get("host")
        if not isinstance(host, str):
            t.skip(f"{dw}.destination.host", "missing")
            continue
        subset = dest.get("subset")
        short = short_host(host, t.namespace)
        if subset is not None and index.subset(short, str(subset)) is None:
            t.notes.append(f"{t.ref}: subset {subset} of {host} is not defined by an imported DestinationRule")
        raw = d.get("weight")
        w = Decimal(100 if len(dests) == 1 else 0) if raw is None else Decimal(str(raw))
        branches.append((names.subset(host, str(subset)) if subset else names.service(host), w))
        if d.get("headers"):
            if len(dests) > 1:
                t.skip(f"{dw}.headers", "per-destination header edits of a split are not translated")
            else:
                req, resp = _header_edits(d["headers"], t, f"{dw}.headers")
                edits += [("request", e) for e in req] + [("response", e) for e in resp]
    if not branches:
        return None
    return union(branches), edits, branches


def _header_edits(h: Any, t: Translation, where: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    req: list[dict[str, Any]] = []
    resp: list[dict[str, Any]] = []
    if not isinstance(h, dict):
        return req, resp
    unknown_keys(t, h, where, ("request", "response"))
    for side, out in (("request", req), ("response", resp)):
        ops = h.get(side)
        if not isinstance(ops, dict):
            continue
        unknown_keys(t, ops, f"{where}.{side}", ("set", "add", "remove"))
        e = header_edits(
            ((str(k), str(v)) for k, v in (ops.get("set") or {}).items()),
            ((str(k), str(v)) for k, v in (ops.get("add") or {}).items()),
            (str(x) for x in ops.get("remove") or ()),
        )
        if e:
            out.append(e)
    return req, resp


def _merge(edits: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in edits:
        for k in ("set", "add"):
            if k in e:
                out.setdefault(k, {}).update(e[k])
        if "remove" in e:
            out.setdefault("remove", []).extend(e["remove"])
    return out


def _string_match(sm: Any, t: Translation, where: str, kinds: tuple[str, ...] = ("exact", "prefix", "regex")) -> Any:
    """An Istio StringMatch -> our condition; `{}` (no kind) means "present"."""
    if not isinstance(sm, dict):
        t.skip(where, "expected a StringMatch mapping")
        return None
    given = [k for k in sm if k in kinds]
    unknown_keys(t, sm, where, kinds)
    if not given:
        return {"present": True} if not sm else None
    kind = given[0]
    return {kind: str(sm[kind])}


def _match_blocks(matches: Any, t: Translation, where: str) -> list[dict[str, Any]] | None:
    """The route's match list as our blocks; [] for "every request"; None when a
    block cannot be translated at all (the route is left out rather than widened)."""
    if not matches:
        return []
    blocks: list[dict[str, Any]] = []
    for k, m in enumerate(matches):
        mw = f"{where}.match[{k}]"
        if not isinstance(m, dict):
            t.skip(mw, "expected a mapping")
            return None
        block: dict[str, Any] = {}
        for key in ("scheme", "port", "sourceLabels", "gateways", "sourceNamespace", "statPrefix"):
            if key in m:
                t.skip(f"{mw}.{key}", "matching on it is not translated; the block is left out so it does not widen")
        if any(key in m for key in ("scheme", "port", "sourceLabels", "gateways", "sourceNamespace")):
            continue
        unknown_keys(t, m, mw, ("name", "uri", "method", "authority", "headers", "queryParams", "withoutHeaders",
                                "ignoreUriCase", "statPrefix", "scheme", "port", "sourceLabels", "gateways", "sourceNamespace"))  # fmt: skip
        if "uri" in m:
            c = _string_match(m["uri"], t, f"{mw}.uri")
            if c is None:
                continue
            if m.get("ignoreUriCase") and isinstance(c, dict):
                c = {**c, "ignoreCase": True}
            block["path"] = c
        if "method" in m:
            c = _string_match(m["method"], t, f"{mw}.method")
            if isinstance(c, dict) and "exact" in c:
                block["method"] = c["exact"].upper()
            else:
                t.skip(f"{mw}.method", "only an exact method is translated")
                continue
        if "authority" in m:
            c = _string_match(m["authority"], t, f"{mw}.authority")
            if c is None:
                continue
            block["authority"] = c
        headers: dict[str, Any] = {}
        for name, sm in (m.get("headers") or {}).items():
            if str(name).lower() == "cookie":
                one = _one_cookie(sm, t, f"{mw}.headers.{name}")
                if one is not None:
                    block.setdefault("cookies", {})[one[0]] = {"exact": one[1]}
                    continue
            c = _string_match(sm, t, f"{mw}.headers.{name}")
            if c is not None:
                headers[str(name).lower()] = c
        for name, sm in (m.get("withoutHeaders") or {}).items():
            c = _string_match(sm, t, f"{mw}.withoutHeaders.{name}")
            if c is not None:
                headers[str(name).lower()] = {**c, "invert": True} if "present" not in c else {"absent": True}
        if headers:
            block["headers"] = headers
        query: dict[str, Any] = {}
        for name, sm in (m.get("queryParams") or {}).items():
            c = _string_match(sm, t, f"{mw}.queryParams.{name}")
            if c is not None:
                query[str(name)] = c
        if query:
            block["query"] = query
        blocks.append(block)
    if not blocks:
        t.skip(f"{where}.match", "no block could be translated; the route is left out")
        return None
    if any(not b for b in blocks):
        return []  # an empty block matches every request
    return blocks


def _rewrite(rw: dict[str, Any], blocks: list[dict[str, Any]], t: Translation, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rw.get("authority"):
        out["authority"] = str(rw["authority"])
    uri = rw.get("uri")
    regex = rw.get("uriRegexRewrite")
    if uri is not None and regex is not None:
        t.skip(where, "uri and uriRegexRewrite together are not valid Istio; neither is translated")
        return out
    if regex is not None:
        if isinstance(regex, dict) and "match" in regex and "rewrite" in regex:
            out["uri"] = {"regex": str(regex["match"]), "replacement": str(regex["rewrite"])}
        else:
            t.skip(f"{where}.uriRegexRewrite", "expected match and rewrite")
    elif uri is not None:
        # Istio: a prefix-matched route has that prefix replaced; otherwise the path is.
        path = blocks[0].get("path") if len(blocks) == 1 else None
        if isinstance(path, dict) and "prefix" in path:
            out["uri"] = {"prefix": path["prefix"], "replacement": str(uri)}
        else:
            out["uri"] = {"path": str(uri)}
    return out


# RFC 6265 §4.1.1: cookie-name is a token; cookie-value is cookie-octets, optionally
# in double quotes (no CTLs, whitespace, DQUOTE, comma, semicolon or backslash).
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE = re.compile(r'"?[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"?')


def _one_cookie(sm: Any, t: Translation, where: str) -> tuple[str, str] | None:
    """A `Cookie` header condition that is `exact` one `name=value` pair: (name, value),
    matched as that cookie (so it still matches when other cookies share the header,
    as a browser sends them). Anything else keeps whole-header semantics. Either way
    the import report says which."""
    text = sm.get("exact") if isinstance(sm, dict) and set(sm) == {"exact"} else None
    if isinstance(text, str):
        name, eq, value = text.strip().partition("=")
        name, value = name.strip(), value.strip()
        if eq and _COOKIE_NAME.fullmatch(name) and _COOKIE_VALUE.fullmatch(value) and value.count('"') in (0, 2):
            value = value[1:-1] if value.startswith('"') else value
            t.notes.append(f"{t.ref}: {where}: exact {text!r} is one cookie: matched as the cookie {name} "
                           "(parsed from the Cookie header, so other cookies beside it do not matter)")  # fmt: skip
            return name, value
    kind = next(iter(sm), "present") if isinstance(sm, dict) and sm else "present"
    t.notes.append(f"{t.ref}: {where}: a {kind} match on the whole Cookie header as sent "
                   "(not one name=value pair: other cookies in the header, and their order, count)")  # fmt: skip
    return None
