"""The data plane's dtab: a prefix trie plus a bounded memo. Pure.

`Dtab.lookup` scans every entry, which is what Finagle does; a router with 10,000
entries would pay for all of them on every request. `compile(dtab)` indexes the
prefixes in a trie keyed by label (with a separate branch for `*`), so a lookup walks
the path's labels and visits only entries that can match. Answers are memoised per
path in a bounded dict owned by the compiled table, so the key is (table, path).
`CompiledDtab.lookup` gives exactly the answers of `Dtab.lookup` (a property test
proves it).
"""

from __future__ import annotations

from typing import Final

from .path import Path
from .table import Dentry, Dtab, rewrite
from .tree import NEG, Alt, NameTree

#: Bound on memoised answers per table. A path costs a few hundred bytes; 10,000 paths
#: cover every service of a large mesh and stay around a few MB.
MEMO_SIZE: Final = 10_000


class _Node:
    __slots__ = ("children", "wild", "ends")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node] = {}
        self.wild: _Node | None = None
        self.ends: list[int] = []  # indexes of the dentries whose prefix ends here


class CompiledDtab:
    """A `Dtab` indexed for lookup. Immutable once built; safe to share."""

    __slots__ = ("dtab", "_root", "_memo", "_memo_size", "_has_wild")

    def __init__(self, dtab: Dtab, memo_size: int = MEMO_SIZE) -> None:
        self.dtab = dtab
        self._root = _Node()
        self._memo: dict[Path, tuple[tuple[NameTree, ...], NameTree]] = {}
        self._memo_size = memo_size
        self._has_wild = False
        for i, d in enumerate(dtab.dentries):
            node = self._root
            for e in d.prefix.elems:
                if e is None:
                    self._has_wild = True
                    if node.wild is None:
                        node.wild = _Node()
                    node = node.wild
                else:
                    nxt = node.children.get(e)
                    if nxt is None:
                        nxt = node.children[e] = _Node()
                    node = nxt
            node.ends.append(i)

    def __len__(self) -> int:
        return len(self.dtab.dentries)

    def matching(self, path: Path) -> list[int]:
        """Indexes of the dentries whose prefix matches `path`, last entry first."""
        found: list[int] = []
        elems = path.elems
        if not self._has_wild:  # one node per depth: the common case, kept tight
            node: _Node | None = self._root
            for e in elems:
                assert node is not None
                if node.ends:
                    found.extend(node.ends)
                node = node.children.get(e)
                if node is None:
                    break
            else:
                if node is not None and node.ends:
                    found.extend(node.ends)
        else:
            nodes = [self._root]
            for e in elems:
                nxt: list[_Node] = []
                for n in nodes:
                    if n.ends:
                        found.extend(n.ends)
                    c = n.children.get(e)
                    if c is not None:
                        nxt.append(c)
                    if n.wild is not None:
                        nxt.append(n.wild)
                nodes = nxt
                if not nodes:
                    break
            else:
                for n in nodes:
                    found.extend(n.ends)
        found.sort(reverse=True)
        return found

    def matches(self, path: Path) -> list[tuple[Dentry, NameTree]]:
        dentries = self.dtab.dentries
        out = []
        for i in self.matching(path):
            d = dentries[i]
            out.append((d, rewrite(d.dst, Path(path.elems[len(d.prefix.elems) :]))))
        return out

    def results(self, path: Path) -> tuple[tuple[NameTree, ...], NameTree]:
        """(every rewritten destination last first, the lookup tree), memoised per path."""
        memo = self._memo
        hit = memo.get(path)
        if hit is not None:
            return hit
        idx = self.matching(path)
        dentries, elems = self.dtab.dentries, path.elems
        trees = tuple(rewrite(dentries[i].dst, Path(elems[len(dentries[i].prefix.elems) :])) for i in idx)
        tree = NEG if not trees else trees[0] if len(trees) == 1 else Alt(trees)
        if len(memo) >= self._memo_size:
            # A bound, not a policy: the newer half stays, rebuilt at once (amortised O(1);
            # deleting the oldest one at a time leaves holes that iteration walks past).
            items = list(memo.items())
            memo = self._memo = dict(items[len(items) // 2 :])
        hit = memo[path] = (trees, tree)
        return hit

    def lookup(self, path: Path) -> NameTree:
        """Same answer as `Dtab.lookup` (docs/dtab.md §7), memoised per path."""
        return self.results(path)[1]


class OverlayTable:
    """`base ++ local` for one request: the local (override) entries come later, so their
    matches are tried first. `local` is small and scanned; `base` is compiled."""

    __slots__ = ("base", "local")

    def __init__(self, base: CompiledDtab, local: Dtab) -> None:
        self.base = base
        self.local = local

    @property
    def dtab(self) -> Dtab:
        return self.base.dtab + self.local

    def lookup(self, path: Path) -> NameTree:
        mine = [t for _, t in self.local.matches(path)]
        base_trees, base_tree = self.base.results(path)
        if not mine:
            return base_tree
        trees = (*mine, *base_trees)
        return trees[0] if len(trees) == 1 else Alt(trees)

    def matches(self, path: Path) -> list[tuple[Dentry, NameTree]]:
        return self.local.matches(path) + self.base.matches(path)


def compile(dtab: Dtab, memo_size: int = MEMO_SIZE) -> CompiledDtab:  # noqa: A001 - the issue's name
    return CompiledDtab(dtab, memo_size)
