"""Name trees (docs/dtab.md §4, §9): Leaf, Alt, Union of Weighted, and the atoms NEG, FAIL, EMPTY.

Values are immutable and compare by value. `show()` follows docs/dtab.md §4.4 exactly (weights
with two decimals, rounded half-up from the shortest decimal form of the double, as
Java's `%.2f` does); `simplify` and `evaluate` follow §9. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, TypeAlias

from .path import Path


@dataclass(frozen=True, slots=True)
class Inet:
    """The address of a `/$/inet` bound name: a host (IP literal or DNS name) and a port.
    Resolving a DNS name is I/O, so the data plane does it, not this package."""

    host: str
    port: int

    def to_json(self) -> dict[str, Any]:
        ip = _numeric_ip(self.host)
        if ip is None:
            return {"type": "pending"}
        return {"type": "bound", "addrs": [{"ip": ip, "port": self.port, "meta": {}}], "meta": {}}


def _numeric_ip(host: str) -> str | None:
    """The numeric form of an IP literal, including the short IPv4 forms (`127.1`) that
    Java's resolver accepts; None for a DNS name (the caller resolves it)."""
    import ipaddress
    import socket  # inet_aton only: a pure parse, no I/O

    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if host and all(c.isdigit() or c == "." for c in host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Bound:
    """A bound name (docs/dtab.md §6.1). `id` names the replica set (the client); `residual` is
    what the namer did not consume. `addr` is the namer's live address set (an `Inet`, or
    an object with `to_json()`); it is not part of equality, since a client is its id."""

    id: Path
    residual: Path = Path.EMPTY
    addr: Any = field(default=None, compare=False, hash=False, repr=False)

    def show(self) -> str:
        return self.id.show()


@dataclass(frozen=True, slots=True)
class Leaf:
    """A name: a `Path` still to be bound, or a `Bound` name."""

    value: Path | Bound

    def show(self) -> str:
        return self.value.show()


@dataclass(frozen=True, slots=True)
class Alt:
    """Fallback: the first member that is not negative (`/a | /b`)."""

    trees: tuple[NameTree, ...]

    def show(self) -> str:
        return show(self)


@dataclass(frozen=True, slots=True)
class Weighted:
    weight: float
    tree: NameTree


@dataclass(frozen=True, slots=True)
class Union:
    """Traffic split over every non-negative member, by relative weight (`2*/a & /b`)."""

    weighted: tuple[Weighted, ...]

    def show(self) -> str:
        return show(self)


class _Atom:
    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def show(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return {"~": "NEG", "!": "FAIL", "$": "EMPTY"}[self._text]

    def __reduce__(self) -> str:  # singletons survive pickling and copying
        return repr(self)

    def __copy__(self) -> _Atom:
        return self

    def __deepcopy__(self, memo: object) -> _Atom:
        return self


NEG: Final = _Atom("~")  # no such name here: alternation falls through
FAIL: Final = _Atom("!")  # stop: alternation does not fall through
EMPTY: Final = _Atom("$")  # exists, with no endpoints: a non-negative result

NameTree: TypeAlias = Leaf | Alt | Union | _Atom

DEFAULT_WEIGHT: Final = 1.0
_CENT = Decimal("0.01")


def show_weight(weight: float) -> str:
    """Two decimals, half-up from the shortest repr (Java's `%.2f`): 0.125 -> 0.13."""
    return str(Decimal(repr(float(weight))).quantize(_CENT, rounding=ROUND_HALF_UP))


def show(tree: NameTree) -> str:
    """docs/dtab.md §4.4, rule 2 (top level)."""
    if isinstance(tree, Alt):
        if len(tree.trees) == 1:
            return show(tree.trees[0])
        if tree.trees:
            return " | ".join(map(_show_member, tree.trees))
    elif isinstance(tree, Union) and len(tree.weighted) == 1:
        return show(tree.weighted[0].tree)
    return _show_member(tree)


def _show_member(tree: NameTree) -> str:
    """Rule 3: an alternation member (or a non-Alt top level)."""
    if isinstance(tree, Alt) and len(tree.trees) == 1:  # rule 1: prints as its member
        return _show_member(tree.trees[0])
    if isinstance(tree, Union):
        if len(tree.weighted) == 1:
            return _show_member(tree.weighted[0].tree)
        if tree.weighted:
            return " & ".join(
                (_show_simple(w.tree) if w.weight == 1.0 else f"{show_weight(w.weight)}*{_show_simple(w.tree)}")
                for w in tree.weighted
            )
    return _show_simple(tree)


def _show_simple(tree: NameTree) -> str:
    """Rule 4: a leaf or atom as itself; a compound node in parentheses."""
    if isinstance(tree, Alt):
        if len(tree.trees) == 1:
            return _show_simple(tree.trees[0])
        return f"({show(tree)})" if tree.trees else "()"
    if isinstance(tree, Union):
        if len(tree.weighted) == 1:
            return _show_simple(tree.weighted[0].tree)
        return f"({show(tree)})" if tree.weighted else "()"
    return tree.show()


def map_leaves(tree: NameTree, f: Callable[[Path | Bound], NameTree]) -> NameTree:
    """Replace every leaf by `f(value)`, keeping structure and weights."""
    if isinstance(tree, Leaf):
        return f(tree.value)
    if isinstance(tree, Alt):
        return Alt(tuple(map_leaves(t, f) for t in tree.trees))
    if isinstance(tree, Union):
        return Union(tuple(Weighted(w.weight, map_leaves(w.tree, f)) for w in tree.weighted))
    return tree


def leaves(tree: NameTree) -> Iterator[Path | Bound]:
    """Every leaf value, left to right."""
    if isinstance(tree, Leaf):
        yield tree.value
    elif isinstance(tree, Alt):
        for t in tree.trees:
            yield from leaves(t)
    elif isinstance(tree, Union):
        for w in tree.weighted:
            yield from leaves(w.tree)


def simplify(tree: NameTree) -> NameTree:
    """docs/dtab.md §9.1. Evaluation-preserving and idempotent: simplify(simplify(t)) == simplify(t).
    No flattening of nested nodes, no de-duplication, no renormalised weights."""
    if isinstance(tree, Alt):
        kept: list[NameTree] = []
        for t in tree.trees:
            s = simplify(t)
            if s is NEG:
                continue
            kept.append(s)
            if s is FAIL:  # nothing after a failure is reachable
                break
        if not kept:
            return NEG
        return kept[0] if len(kept) == 1 else Alt(tuple(kept))
    if isinstance(tree, Union):
        if len(tree.weighted) == 1:  # a lone member is that member, whatever it is (§9.1)
            return simplify(tree.weighted[0].tree)
        members = [Weighted(w.weight, s) for w in tree.weighted if (s := simplify(w.tree)) is not NEG and s is not FAIL]
        if not members:
            return NEG
        return members[0].tree if len(members) == 1 else Union(tuple(members))
    return tree


def evaluate(tree: NameTree) -> frozenset[Path | Bound] | None:
    """docs/dtab.md §9.2: the set of leaves a tree can reach, or None when negative or failed."""
    result = _eval(tree)
    return result if isinstance(result, frozenset) else None


_FAILED: Final = object()


def _eval(tree: NameTree) -> frozenset[Path | Bound] | object | None:
    if isinstance(tree, Leaf):
        return frozenset((tree.value,))
    if tree is EMPTY:
        return frozenset()
    if tree is NEG:
        return None
    if tree is FAIL:
        return _FAILED
    if isinstance(tree, Alt):
        for t in tree.trees:
            r = _eval(t)
            if r is not None:
                return r  # a set, or failed: a failure stops the fallback
        return None
    assert isinstance(tree, Union)
    if len(tree.weighted) == 1:  # as Finagle: a one-member union evaluates as its member
        return _eval(tree.weighted[0].tree)
    sets = [r for w in tree.weighted if isinstance(r := _eval(w.tree), frozenset)]
    if not sets:
        return None  # negative even when every member failed (docs/dtab.md §9.2)
    return frozenset().union(*sets)
