"""The delegator's explanation (docs/dtab.md §12): how a path was resolved, step by step. Pure.

Unlike `bind`, the explanation expands every alternative and every union member, turns
a namer error into an `exception` node where it happens, and remembers for each node
the path being explained and the dentry that produced it. `delegate_json` renders the
simplified tree as the plain dicts `/delegator.json` returns (docs/dtab.md §12.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .bind import Namers, Table
from .errors import DtabError, NamerError
from .namer import namer_lookup
from .path import Path
from .table import Dentry, Dtab
from .tree import EMPTY, FAIL, NEG, Alt, Bound, Leaf, NameTree, Union

#: Linkerd's delegator uses its own depth limit and message (docs/dtab.md §8.2, last lines).
MAX_DEPTH: Final = 100
MAX_DEPTH_MESSAGE: Final = "Max recursion level reached."


class DelegationDepthExceeded(DtabError):
    def __init__(self) -> None:
        super().__init__(MAX_DEPTH_MESSAGE)


# -- the explanation tree (dentry None is the "no dentry" root marker) ----------------------


@dataclass(frozen=True, slots=True)
class DNode:
    kind: str  # delegate alt union leaf neg fail empty exception
    path: Path
    dentry: Dentry | None
    children: tuple[DNode, ...] = ()
    weights: tuple[float, ...] = ()  # union only, parallel to children
    bound: Bound | None = None  # leaf only
    message: str = ""  # exception only

    def with_dentry(self, dentry: Dentry | None) -> DNode:
        return DNode(self.kind, self.path, dentry, self.children, self.weights, self.bound, self.message)


def explain(table: Table, path: Path, *, namers: Namers = (), max_depth: int = MAX_DEPTH) -> DNode:
    """The simplified explanation tree of `path` (docs/dtab.md §12.3, §12.4)."""
    return simplify_explanation(_Explainer(table, namers, max_depth).explain(path, None, 0))


class _Explainer:
    __slots__ = ("table", "namers", "max_depth")

    def __init__(self, table: Table, namers: Namers, max_depth: int) -> None:
        self.table = table
        self.namers = namers
        self.max_depth = max_depth

    def _matches(self, path: Path) -> list[tuple[Dentry, NameTree]]:
        matches = getattr(self.table, "matches", None)
        if matches is not None:
            result: list[tuple[Dentry, NameTree]] = matches(path)
            return result
        return Dtab.EMPTY.matches(path)

    def explain(self, path: Path, dentry: Dentry | None, depth: int) -> DNode:
        if depth > self.max_depth:
            raise DelegationDepthExceeded()
        found = self._matches(path)
        if not found:
            try:
                answer = namer_lookup(self.namers, path)
            except NamerError as exc:
                return DNode("exception", path, dentry, message=str(exc))
            if answer is NEG:
                return DNode("neg", path, dentry)
            return self.convert(answer, path, dentry, depth)
        converted = tuple(self.convert(t, path, e, depth) for e, t in found)
        if len(converted) == 1:
            return DNode("delegate", path, dentry, converted)
        return DNode("alt", path, dentry, converted)

    def convert(self, tree: NameTree, path: Path, dentry: Dentry | None, depth: int) -> DNode:
        """A lookup's answer as nodes that carry `path` and `dentry` (docs/dtab.md §12.3 step 1)."""
        if isinstance(tree, Leaf):
            if isinstance(tree.value, Bound):
                return DNode("leaf", path, dentry, bound=tree.value)
            return self.explain(tree.value, dentry, depth + 1)
        if isinstance(tree, Alt):
            return DNode("alt", path, dentry, tuple(self._member(t, path, dentry, depth) for t in tree.trees))
        if isinstance(tree, Union):
            return DNode(
                "union",
                path,
                dentry,
                tuple(self._member(w.tree, path, dentry, depth) for w in tree.weighted),
                tuple(w.weight for w in tree.weighted),
            )
        if tree is FAIL:
            return DNode("fail", path, dentry)
        if tree is EMPTY:
            return DNode("empty", path, dentry)
        return DNode("neg", Path.EMPTY, dentry)  # an explicit `~`, rendered as "~"

    def _member(self, tree: NameTree, path: Path, dentry: Dentry | None, depth: int) -> DNode:
        """An alt/union member; too deep a chain below it becomes an exception node here."""
        try:
            return self.convert(tree, path, dentry, depth)
        except DelegationDepthExceeded as exc:
            return DNode("exception", path, dentry, message=str(exc))


def simplify_explanation(node: DNode) -> DNode:
    """docs/dtab.md §12.4, applied once at the end."""
    kind = node.kind
    if kind == "delegate":
        child = simplify_explanation(node.children[0])
        if child.kind not in ("neg", "fail", "empty") and child.path == node.path:
            return child.with_dentry(node.dentry)
        return DNode("delegate", node.path, node.dentry, (child,))
    if kind == "alt":
        if not node.children:
            return DNode("neg", node.path, node.dentry)
        if len(node.children) == 1:
            return simplify_explanation(DNode("delegate", node.path, node.dentry, node.children))
        kept: list[DNode] = []
        for c in node.children:
            s = simplify_explanation(c)
            if s.kind == "alt" and s.path == node.path:
                kept.extend(s.children)
            else:
                kept.append(s)
        return DNode("alt", node.path, node.dentry, tuple(kept))
    if kind == "union":
        if not node.children:
            return DNode("neg", node.path, node.dentry)
        if len(node.children) == 1:
            return simplify_explanation(DNode("delegate", node.path, node.dentry, node.children))
        return DNode("union", node.path, node.dentry, tuple(map(simplify_explanation, node.children)), node.weights)
    return node


# -- JSON (docs/dtab.md §12.5) -----------------------------------------------------------------

AddrJson = Callable[[Bound], dict[str, Any]]


def default_addr_json(bound: Bound) -> dict[str, Any]:
    addr = bound.addr
    to_json = getattr(addr, "to_json", None)
    if to_json is not None:
        result: dict[str, Any] = to_json()
        return result
    return {"type": "neg"}


def dentry_json(d: Dentry) -> dict[str, str]:
    return {"prefix": d.prefix.show(), "dst": d.dst.show()}


def node_json(
    node: DNode, addr_json: AddrJson = default_addr_json, _dentries: dict[int, dict[str, str]] | None = None
) -> dict[str, Any]:
    """One node and its subtree as JSON. Every member of a union carries the union's
    dentry, so each dentry is printed once per render (`_dentries`, keyed by identity):
    a 1,000-member split otherwise prints its 1,000-member dentry 1,000 times."""
    if _dentries is None:
        _dentries = {}
    kind = node.kind
    out: dict[str, Any] = {"type": kind}
    if kind == "neg":
        out["path"] = node.path.show() if node.path.elems else "~"
    elif kind == "fail":
        p = node.path
        out["path"] = p.show() if p.elems[:2] == (b"$", b"fail") else "!"
    else:
        out["path"] = node.path.show()
    d = node.dentry
    if d is not None:
        shown = _dentries.get(id(d))
        if shown is None:
            shown = _dentries[id(d)] = dentry_json(d)
        out["dentry"] = dict(shown)  # a copy: callers may edit the result
    if kind == "delegate":
        out["delegate"] = node_json(node.children[0], addr_json, _dentries)
    elif kind == "alt":
        out["alt"] = [node_json(c, addr_json, _dentries) for c in node.children]
    elif kind == "union":
        out["union"] = [
            {"weight": w, "tree": node_json(c, addr_json, _dentries)}
            for w, c in zip(node.weights, node.children, strict=True)
        ]
    elif kind == "leaf":
        b = node.bound
        assert b is not None
        out["bound"] = {"addr": addr_json(b), "id": b.id.show(), "path": b.residual.show()}
    elif kind == "exception":
        out["message"] = node.message
    return out


def delegate_json(
    table: Table,
    path: Path,
    *,
    namers: Namers = (),
    addr_json: AddrJson = default_addr_json,
    max_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    """The `/delegator.json` body for `path` through `table` (docs/dtab.md §12.5).

    Raises `DelegationDepthExceeded` when a chain with no enclosing alt or union goes
    deeper than the limit (the whole request fails, docs/dtab.md §12.2).
    """
    return node_json(explain(table, path, namers=namers, max_depth=max_depth), addr_json)
