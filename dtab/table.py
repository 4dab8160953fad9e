"""Dentries and dtabs (docs/dtab.md §5, §7): values, printing, concatenation and lookup. Pure.

`Dtab.lookup` is the reference rewrite step: it walks the entries last to first and is
linear in the table; the data plane uses `compile.CompiledDtab`, which gives the same
answers from a prefix index.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from .path import Path, Prefix
from .tree import NEG, Alt, Leaf, NameTree, map_leaves
from .tree import show as show_tree


@dataclass(frozen=True, slots=True)
class Dentry:
    """One rule, `prefix => dst`."""

    prefix: Prefix
    dst: NameTree

    @staticmethod
    def read(text: str) -> Dentry:
        from .parse import read_dentry

        return read_dentry(text)

    def show(self) -> str:
        return f"{self.prefix.show()}=>{show_tree(self.dst)}"  # no spaces (docs/dtab.md §5.2)

    def __str__(self) -> str:
        return self.show()


def rewrite(dst: NameTree, residual: Path) -> NameTree:
    """The destination with the unmatched suffix appended to every leaf (docs/dtab.md §7 step 1)."""
    if not residual.elems:
        return dst
    if isinstance(dst, Leaf) and isinstance(dst.value, Path):  # the common case, made cheap
        return Leaf(dst.value + residual)
    return map_leaves(dst, lambda v: Leaf(v + residual) if isinstance(v, Path) else Leaf(v))


@dataclass(frozen=True, slots=True)
class Dtab:
    """An ordered list of dentries; later entries take precedence."""

    dentries: tuple[Dentry, ...]

    EMPTY: ClassVar[Dtab]

    @staticmethod
    def read(text: str) -> Dtab:
        from .parse import read_dtab

        return read_dtab(text)

    def show(self) -> str:
        """The printed form that travels in `l5d-ctx-dtab`: `;`-joined, no spaces."""
        return ";".join(d.show() for d in self.dentries)

    def __str__(self) -> str:
        return self.show()

    def __len__(self) -> int:
        return len(self.dentries)

    def __iter__(self) -> Iterator[Dentry]:
        return iter(self.dentries)

    def __add__(self, other: Dtab) -> Dtab:
        if not other.dentries:
            return self
        if not self.dentries:
            return other
        return Dtab(self.dentries + other.dentries)

    def lookup(self, path: Path) -> NameTree:
        """One rewrite step (docs/dtab.md §7): every matching entry, last first, as an Alt."""
        results: list[NameTree] = []
        elems = path.elems
        for d in reversed(self.dentries):
            if d.prefix.matches(path):
                results.append(rewrite(d.dst, Path(elems[len(d.prefix.elems) :])))
        if not results:
            return NEG
        return results[0] if len(results) == 1 else Alt(tuple(results))

    def matches(self, path: Path) -> list[tuple[Dentry, NameTree]]:
        """Every matching entry, last first, with its rewritten destination."""
        elems = path.elems
        return [
            (d, rewrite(d.dst, Path(elems[len(d.prefix.elems) :])))
            for d in reversed(self.dentries)
            if d.prefix.matches(path)
        ]


Dtab.EMPTY = Dtab(())
