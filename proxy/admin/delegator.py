"""What the admin server says about routing: the delegator's tree with live addresses
(docs/dtab.md §12), recent routing decisions of real requests with the path each one took
through the tree, and a what-if that re-binds those decisions under a proposed dtab.

Runs on the admin's requests only, never per proxied request: decisions are stored as
references by `proxy.telemetry.metrics.Decisions` and rendered here, when asked.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from typing import Any, Final

import dtab
from dtab import Bound, Dtab, Inet, Leaf, NameTree, Path, Union
from dtab.delegate import DNode, dentry_json, node_json

log = logging.getLogger(__name__)

#: docs/dtab.md §12.1: the delegator waits this long for pending addresses, then answers 503.
DELEGATE_TIMEOUT_S: Final = 2.0
PENDING: Final = {"type": "pending"}


# -- the delegation tree, with addresses ------------------------------------------------------


def _leaves(node: DNode) -> Iterable[Bound]:
    stack = [node]
    while stack:
        n = stack.pop()
        if n.kind == "leaf" and n.bound is not None:
            yield n.bound
        stack.extend(n.children)


async def _addr_json(addr: Any) -> dict[str, Any]:
    """The §12.5 addr of one bound name, once it is no longer pending."""
    if isinstance(addr, Inet):
        known: dict[str, Any] = addr.to_json()
        if known.get("type") != "pending":
            return known
        # A DNS name: resolve it as the data plane would (numeric addresses, docs/dtab.md §12.5).
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return {"type": "failed", "cause": f"{addr.host}: {exc.strerror or exc}"}
        ips = list(dict.fromkeys(info[4][0] for info in infos))
        return {"type": "bound", "addrs": [{"ip": ip, "port": addr.port, "meta": {}} for ip in ips], "meta": {}}
    to_json = getattr(addr, "to_json", None)
    if to_json is None:
        return {"type": "neg"}
    current: dict[str, Any] = to_json()
    subscribe = getattr(addr, "subscribe", None)
    if current.get("type") != "pending" or subscribe is None:
        return current
    # A namer's EndpointSet that has not heard yet: wait for its first change.
    changed = asyncio.get_running_loop().create_future()

    def on_change(_: Any) -> None:
        if not changed.done():
            changed.set_result(None)

    unsubscribe = subscribe(on_change)
    try:
        while current.get("type") == "pending":
            await changed
            changed = asyncio.get_running_loop().create_future()
            current = to_json()
    finally:
        unsubscribe()
    return current


async def delegate(table: Any, path: Path, namers: Any = (), timeout_s: float = DELEGATE_TIMEOUT_S) -> dict[str, Any]:
    """The `/delegator.json` body. Raises `TimeoutError` when an address stays pending
    for `timeout_s`, and `dtab.DtabError` when the whole explanation fails (depth)."""
    if isinstance(table, Dtab):  # a prefix index: a big table is explained in O(depth), not O(size)
        table = dtab.compile(table)
    node = dtab.explain(table, path, namers=namers)
    addrs: dict[int, Any] = {}
    for b in _leaves(node):
        addrs.setdefault(id(b.addr), b.addr)
    resolved: dict[int, dict[str, Any]] = {}
    if addrs:
        keys = list(addrs)
        async with asyncio.timeout(timeout_s):
            results = await asyncio.gather(*(_addr_json(addrs[k]) for k in keys))
        resolved = dict(zip(keys, results, strict=True))
    return node_json(node, lambda b: resolved.get(id(b.addr), PENDING))


# -- recent decisions -------------------------------------------------------------------------


def _trail(node: DNode, target: Path) -> list[tuple[DNode, int]] | None:
    """The nodes from the root to the first leaf (in binding order) bound to `target`,
    each with the index of the child taken."""
    if node.kind == "leaf":
        return [] if node.bound is not None and node.bound.id == target else None
    for i, child in enumerate(node.children):
        below = _trail(child, target)
        if below is not None:
            return [(node, i), *below]
    return None


def _dentry_text(node: DNode) -> str | None:
    d = node.dentry
    return None if d is None else f"{d.prefix.show()} => {d.dst.show()}"


def rules_json(route: Any) -> list[dict[str, Any]]:
    """The match rules a route was bound with, each with its own dentries (in the
    delegator's dentry shape), so a page can show them as rules, not as base dtab."""
    return [{"name": r.name, "dentries": [dentry_json(d) for d in r.dtab.dentries]}
            for r in getattr(route, "rules", ()) if r.dtab.dentries]  # fmt: skip


def _table(base: Any, route: Any) -> Any:
    """The table a route's name was bound with: base ++ matched rules ++ ctx ++ user."""
    rules = getattr(route, "rules_dtab", Dtab.EMPTY)
    extra = rules + route.local if rules.dentries else route.local
    if not extra.dentries:
        return base
    return dtab.OverlayTable(base if not isinstance(base, Dtab) else dtab.compile(base), extra)


def explain_decision(router: Any, route: Any, bound: Bound | None) -> dict[str, Any]:
    """Which dentries rewrote the name (and which rule each came from), and which union
    branch was taken, for a request that went to `bound`: the first path through the
    explanation tree that reaches it."""
    rules = rules_json(route)
    if bound is None:
        return {"dentries": [], "dentry_rules": [], "branches": [], "trail": [], "rules": rules}
    table: Any = _table(router.base, route)
    try:
        root = dtab.explain(table, route.service, namers=router.namers)
    except dtab.DtabError as exc:
        return {"dentries": [], "dentry_rules": [], "branches": [], "trail": [], "rules": rules, "error": str(exc)}
    steps = _trail(root, bound.id)
    if steps is None:  # the base dtab changed since: nothing in today's tree leads there
        return {"dentries": [], "dentry_rules": [], "branches": [], "trail": [], "rules": rules,
                "error": "not reachable under the current dtab"}  # fmt: skip
    dentries: list[str] = []
    branches: list[dict[str, Any]] = []
    nodes = [n for n, _ in steps] + [steps[-1][0].children[steps[-1][1]] if steps else root]
    for n in nodes:
        text = _dentry_text(n)
        if text is not None and (not dentries or dentries[-1] != text):
            dentries.append(text)
    for n, i in steps:
        if n.kind == "union":
            total = sum(n.weights)
            branches.append({
                "path": n.path.show(),
                "index": i,
                "weight": n.weights[i],
                "share": (n.weights[i] / total) if total > 0 else 1 / len(n.weights),
                "to": n.children[i].path.show(),
            })
    by_text = {f"{d['prefix']} => {d['dst']}": r["name"] for r in rules for d in r["dentries"]}
    return {"dentries": dentries, "dentry_rules": [by_text.get(t) for t in dentries], "branches": branches,
            "trail": [i for _, i in steps], "rules": rules}  # fmt: skip


def decisions_json(entries: Iterable[tuple[Any, ...]], limit: int, since: int = 0) -> list[dict[str, Any]]:
    """The newest `limit` decisions after sequence number `since`, newest first."""
    picked = [e for e in entries if e[0] > since][-limit:] if limit > 0 else []
    memo: dict[tuple[int, int, Path | None], dict[str, Any]] = {}
    out = []
    for seq, t, router, route, bound, endpoint, status, latency_s in reversed(picked):
        key = (id(router), id(route), bound.id if bound is not None else None)
        why = memo.get(key)
        if why is None:
            why = memo[key] = explain_decision(router, route, bound)
        out.append({
            "seq": seq,
            "time": t,
            "router": router.label,
            "service": route.service.show(),
            "override": route.local.show(),
            "client": bound.id.show() if bound is not None else None,
            "residual": bound.residual.show() if bound is not None and bound.residual.elems else None,
            "endpoint": f"{endpoint[0]}:{endpoint[1]}" if endpoint is not None else None,
            "status": status,
            "latency_ms": round(latency_s * 1000, 3),
            **why,
        })
    return out


# -- what-if ----------------------------------------------------------------------------------


def shares(tree: NameTree) -> dict[str, float]:
    """The fraction of requests each bound id gets under a bound tree (docs/dtab.md §9.3)."""
    if isinstance(tree, Leaf):
        v = tree.value
        return {v.id.show(): 1.0} if isinstance(v, Bound) else {}
    if isinstance(tree, Union):
        members = [(w.weight, shares(w.tree)) for w in tree.weighted]
        total = sum(w for w, _ in members)
        out: dict[str, float] = {}
        for w, sub in members:
            frac = (w / total) if total > 0 else 1 / len(members)
            for k, share in sub.items():
                out[k] = out.get(k, 0.0) + frac * share
        return out
    return {}  # Neg, Fail, Empty: nowhere


def verdict(before: str | None, after: list[dict[str, Any]]) -> tuple[float, str]:
    """(the share that stays, the verdict): `same` when the destination does not change
    (no route before and none after included), `split` when part of such traffic would
    go elsewhere, `moved` when all of it would (a request that had no route and would
    now have one moved too)."""
    if before is None:
        return (1.0, "same") if not after else (0.0, "moved")
    kept = next((a["share"] for a in after if a["id"] == before), 0.0)
    return kept, "same" if kept >= 1.0 - 1e-9 else "split" if kept > 0 else "moved"


def what_if(entries: Iterable[tuple[Any, ...]], proposed: Dtab, limit: int) -> list[dict[str, Any]]:
    """For each recent decision: where it would go if `proposed` were the base dtab (the
    matched rules and the request's override still apply, as they did)."""
    base = dtab.compile(proposed)
    memo: dict[tuple[int, int], dict[str, Any]] = {}
    out = []
    for seq, _t, router, route, bound, _endpoint, _status, _latency in reversed(list(entries)[-limit:]):
        key = (id(router), id(route))
        after = memo.get(key)
        if after is None:
            table: Any = _table(base, route)
            try:
                tree = dtab.bind(table, route.service, namers=router.namers)
                after = {"after": [{"id": k, "share": v} for k, v in shares(tree).items()], "bound": tree.show()}
            except dtab.DtabError as exc:
                after = {"after": [], "bound": None, "error": str(exc)}
            memo[key] = after
        before = bound.id.show() if bound is not None else None
        kept, verdict_ = verdict(before, after["after"])
        out.append({
            "seq": seq,
            "service": route.service.show(),
            "override": route.local.show(),
            "before": before,
            **after,
            "kept": kept,
            "verdict": verdict_,
            "rules": [r.name for r in getattr(route, "rules", ())],
        })
    return out


# -- live traffic -----------------------------------------------------------------------------


def traffic_json(router: Any, table: Dtab, path: Path, counts: dict[str, dict[str, int]], window_s: float) -> dict[str, Any]:
    """For each client `path` binds to under `table`: requests it ended for that
    service over the window (`counts`: client id -> endpoint -> n) and its endpoints,
    each with its state as failure accrual sees it (`Endpoint.state`)."""
    out: dict[str, Any] = {"router": router.label, "service": path.show(), "window_s": round(window_s, 1), "clients": {}}
    try:
        tree = dtab.bind(dtab.compile(table), path, namers=router.namers)
    except dtab.DtabError as exc:
        out["error"] = str(exc)
        return out
    for leaf in dtab.evaluate(tree) or ():
        if not isinstance(leaf, Bound):
            continue
        cid = leaf.id.show()
        if cid in out["clients"]:
            continue
        client = router.clients.get(leaf)
        static = getattr(client, "_static", None)  # an /$/inet client's one endpoint
        eps = [static] if static is not None else client.endpoints()
        seen = counts.get(cid, {})
        endpoints = []
        for ep in eps:
            addr = f"[{ep.host}]:{ep.port}" if ":" in ep.host else f"{ep.host}:{ep.port}"
            endpoints.append({"addr": addr, "state": ep.state, "requests": seen.get(f"{ep.host}:{ep.port}", 0)})
        out["clients"][cid] = {"requests": sum(seen.values()), "endpoints": endpoints}
    return out
