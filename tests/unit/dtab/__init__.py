"""Conformance tests for `dtab` against docs/dtab.md, plus the small helpers they share.

The helpers build trees tersely (`L("/a")`, `A(...)`, `U(...)`), print bound trees with
each leaf shown as its bound id (the way docs/dtab.md §8.4 writes results), and provide test
namers (one that always errors, one that rewrites, one that binds). They never touch
the implementation's internals: only the public API of `dtab`.
"""

from __future__ import annotations

from collections.abc import Callable

from dtab import (
    Alt,
    Bound,
    Leaf,
    NamerError,
    NameTree,
    Path,
    Union,
    Weighted,
    read_path,
    read_prefix,
)


def P(text: str) -> Path:
    return read_path(text)


def L(text: str) -> Leaf:
    return Leaf(read_path(text))


def A(*trees: NameTree) -> Alt:
    return Alt(tuple(trees))


def U(*members: NameTree | tuple[float, NameTree]) -> Union:
    """`U(L("/a"), (2.0, L("/b")))`: a bare tree has the default weight 1.0."""
    weighted = []
    for m in members:
        if isinstance(m, tuple):
            weighted.append(Weighted(float(m[0]), m[1]))
        else:
            weighted.append(Weighted(1.0, m))
    return Union(tuple(weighted))


def map_leaves(tree: NameTree, fn: Callable[[object], object]) -> NameTree:
    """Rebuild `tree` with every leaf value replaced by `fn(value)` (atoms unchanged)."""
    if isinstance(tree, Leaf):
        return Leaf(fn(tree.value))  # type: ignore[arg-type]
    if isinstance(tree, Alt):
        return Alt(tuple(map_leaves(t, fn) for t in tree.trees))
    if isinstance(tree, Union):
        return Union(tuple(Weighted(w.weight, map_leaves(w.tree, fn)) for w in tree.weighted))
    return tree


def ids(tree: NameTree) -> NameTree:
    """The bound tree with each `Leaf(Bound)` replaced by `Leaf(bound.id)`."""
    return map_leaves(tree, lambda v: v.id if isinstance(v, Bound) else v)


def show_bound(tree: NameTree) -> str:
    """docs/dtab.md §8.4 prints bind results as trees whose leaves show the bound id."""
    return ids(tree).show()


def error_location(err: BaseException) -> str:
    """The `'…[x]…'` part of a §2.4 message (what follows ` found at `)."""
    text = str(err)
    marker = " found at "
    assert marker in text, text
    return text[text.index(marker) + len(marker) :]


class ErrorNamer:
    """A namer whose every lookup fails, as `/#/error` in the spec's examples (§8.4, §12.5):
    the message names the whole path, prefix included."""

    def __init__(self, prefix: str = "/#/error") -> None:
        self.prefix = read_path(prefix)
        self.calls: list[Path] = []

    def lookup(self, path: Path) -> NameTree:
        self.calls.append(path)
        raise NamerError(f"error naming {(self.prefix + path).show()}")


class RewriteNamer:
    """A namer that answers an unbound path (which re-enters the dtab, §6.2, §8.2)."""

    def __init__(self, target: str) -> None:
        self.target = read_path(target)
        self.calls: list[Path] = []

    def lookup(self, path: Path) -> NameTree:
        self.calls.append(path)
        return Leaf(self.target + path)


class BindingNamer:
    """A namer like io.l5d.fs / io.l5d.k8s: consumes `consume` elements of the residual and
    answers a bound name whose id is its prefix plus those elements; Neg if too short.
    `neg_for` lists residuals it answers Neg for (to test falling through to the next namer)."""

    def __init__(self, prefix: str, consume: int = 1, neg_for: tuple[str, ...] = ()) -> None:
        self.prefix = read_path(prefix)
        self.consume = consume
        self.neg_for = {read_path(p) for p in neg_for}
        self.calls: list[Path] = []

    def lookup(self, path: Path) -> NameTree:
        from dtab import NEG

        self.calls.append(path)
        if len(path) < self.consume or path in self.neg_for:
            return NEG
        head, rest = path.elems[: self.consume], path.elems[self.consume :]
        return Leaf(Bound(self.prefix + Path(head), Path(rest)))


def namer_entry(prefix: str, namer: object) -> tuple[object, object]:
    return (read_prefix(prefix), namer)
