"""Paths and prefixes (docs/dtab.md §2, §3): values, printing and matching. Pure.

A path is a tuple of non-empty byte strings. Printing escapes a whole element when any
of its bytes is outside the 69 showable characters, so printing then reading is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

#: The 69 characters a label may show unescaped (docs/dtab.md §2.2).
SHOWABLE_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_:.#$%-"
SHOWABLE = frozenset(SHOWABLE_CHARS.encode())


def show_elem(elem: bytes) -> str:
    """One element as the parser reads it back: plain when all bytes are showable,
    otherwise every byte as `\\xNN` (lower-case hex), as Finagle prints it."""
    if elem and SHOWABLE.issuperset(elem):
        return elem.decode("ascii")
    return "".join(f"\\x{b:02x}" for b in elem)


@dataclass(frozen=True, slots=True)
class Path:
    """An ordered list of byte-string elements; `/` alone is the empty path."""

    elems: tuple[bytes, ...]

    EMPTY: ClassVar[Path]

    @staticmethod
    def of(*elems: str | bytes) -> Path:
        return Path(tuple(e.encode() if isinstance(e, str) else e for e in elems))

    @staticmethod
    def read(text: str) -> Path:
        from .parse import read_path

        return read_path(text)

    def show(self) -> str:
        if not self.elems:
            return "/"
        return "/" + "/".join(map(show_elem, self.elems))

    def __str__(self) -> str:
        return self.show()

    def __len__(self) -> int:
        return len(self.elems)

    def __add__(self, other: Path) -> Path:
        if not other.elems:
            return self
        if not self.elems:
            return other
        return Path(self.elems + other.elems)

    def startswith(self, other: Path) -> bool:
        n = len(other.elems)
        return self.elems[:n] == other.elems

    def take(self, n: int) -> Path:
        return Path(self.elems[:n])

    def drop(self, n: int) -> Path:
        return Path(self.elems[n:]) if n else self


Path.EMPTY = Path(())

#: The wildcard element of a prefix (`*`): matches exactly one element, captures nothing.
WILDCARD = None


@dataclass(frozen=True, slots=True)
class Prefix:
    """The left side of a dentry: a path whose elements may be the wildcard (`None`)."""

    elems: tuple[bytes | None, ...]

    EMPTY: ClassVar[Prefix]

    @staticmethod
    def read(text: str) -> Prefix:
        from .parse import read_prefix

        return read_prefix(text)

    @staticmethod
    def of_path(path: Path) -> Prefix:
        return Prefix(path.elems)

    def show(self) -> str:
        if not self.elems:
            return "/"
        return "/" + "/".join("*" if e is None else show_elem(e) for e in self.elems)

    def __str__(self) -> str:
        return self.show()

    def __len__(self) -> int:
        return len(self.elems)

    def matches(self, path: Path) -> bool:
        """docs/dtab.md §3.2: element-wise, byte-exact; `*` is exactly one element."""
        elems = path.elems
        if len(self.elems) > len(elems):
            return False
        for p, x in zip(self.elems, elems, strict=False):
            if p is not None and p != x:
                return False
        return True


Prefix.EMPTY = Prefix(())
