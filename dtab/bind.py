"""Binding (docs/dtab.md §8): repeated lookup until only bound names and atoms remain. Pure.

`bind` is the one-shot form of Finagle's `Namer.bind`: the lookup chain is the dtab
first, the namers only when the lookup is exactly `Neg`; an `Alt` falls through `Neg`
only; a union keeps every member that bound to something and tolerates member errors
while one member succeeds; the depth limit is checked on every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .errors import BindError, MaxDepthExceeded
from .namer import Namer, namer_lookup
from .path import Path, Prefix
from .tree import EMPTY, FAIL, NEG, Alt, Bound, Leaf, NameTree, Union, Weighted, simplify

MAX_DEPTH = 100


class Table(Protocol):
    def lookup(self, path: Path) -> NameTree: ...


Namers = Sequence[tuple[Prefix | Path, Namer]]


def lookup_chain(table: Table, namers: Namers, path: Path) -> NameTree:
    """docs/dtab.md §8.1: the dtab's answer, or the namers' when the dtab's is exactly `Neg`."""
    tree = table.lookup(path)
    if tree is NEG:
        return namer_lookup(namers, path)
    return tree


def bind(
    table: Table,
    path_or_tree: Path | NameTree,
    *,
    namers: Namers = (),
    max_depth: int = MAX_DEPTH,
) -> NameTree:
    """Bind a logical path (or a tree of them) to a tree of `Bound` leaves with no `Alt`.

    Raises `BindError` (`MaxDepthExceeded`, `NamerError`, ...) when binding fails.
    """
    tree = Leaf(path_or_tree) if isinstance(path_or_tree, Path) else path_or_tree
    return _Binder(table, namers, max_depth).bind(tree, 0)


class _Binder:
    __slots__ = ("table", "namers", "max_depth")

    def __init__(self, table: Table, namers: Namers, max_depth: int) -> None:
        self.table = table
        self.namers = namers
        self.max_depth = max_depth

    def bind(self, tree: NameTree, depth: int) -> NameTree:
        if depth > self.max_depth:  # checked on every call, whatever the node (§8.2)
            raise MaxDepthExceeded(self.max_depth)
        if isinstance(tree, Leaf):
            value = tree.value
            if isinstance(value, Bound):
                return tree
            return self.bind(lookup_chain(self.table, self.namers, value), depth + 1)
        if isinstance(tree, Alt):
            trees = tree.trees
            if not trees:
                return NEG
            if len(trees) == 1:
                return self.bind(trees[0], depth)
            for t in trees:  # an error in a member fails the whole Alt: no fall-through
                bound = self.bind(t, depth)
                if bound is NEG:
                    continue
                return bound  # Fail stops too; Empty is a success
            return NEG
        if isinstance(tree, Union):
            weighted = tree.weighted
            if not weighted:
                return NEG
            if len(weighted) == 1:
                return self.bind(weighted[0].tree, depth)
            members: list[Weighted] = []
            first_error: BindError | None = None
            for w in weighted:
                try:
                    members.append(Weighted(w.weight, self.bind(w.tree, depth)))
                except BindError as exc:
                    if first_error is None:
                        first_error = exc
            if not members:
                assert first_error is not None
                raise first_error
            return simplify(Union(tuple(members)))
        assert tree is NEG or tree is FAIL or tree is EMPTY
        return tree
