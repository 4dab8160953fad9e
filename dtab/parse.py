"""A recursive-descent reader for paths, prefixes, name trees and dtabs (docs/dtab.md §2–§5).

Grammar (whitespace and `#` comments may stand between tokens, never inside `=>` and
never between path elements):

    dtab     = [ dentry ( ";" dentry )* [ ";" ] ]
    dentry   = prefix "=>" tree
    prefix   = "/" [ pelem ( "/" pelem )* ]          pelem = "*" | label
    tree     = union ( "|" union )*
    union    = weighted ( "&" weighted )*
    weighted = [ number "*" ] simple                 a lone member's weight is dropped
    simple   = "(" tree ")" | path | "!" | "~" | "$"
    path     = "/" [ label ( "/" label )* ]
    label    = ( showable | "\\x" hex hex )+
    number   = digits and at most one ".", not "." alone

Errors are `DtabSyntaxError` with Finagle's wording and the offending character marked:
`'=' expected but ' ' found at '/a[ ]= >/b'`. Runs of showable characters are taken
with one regex match, because an `l5d-dtab` header is parsed per request.
"""

from __future__ import annotations

import math
import re
from typing import Final

from .errors import DtabSyntaxError
from .path import WILDCARD, Path, Prefix
from .table import Dentry, Dtab
from .tree import DEFAULT_WEIGHT, EMPTY, FAIL, NEG, Alt, Leaf, NameTree, Union, Weighted

_LABEL_RUN: Final = re.compile(r"[0-9A-Za-z_:.#$%\-]+")
_SHOWABLE: Final = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_:.#$%-")
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_DIGITS: Final = frozenset("0123456789")
# Java's Character.isWhitespace (docs/dtab.md §4.1): ASCII controls 9-13 and 28-31, space, and the
# Unicode space separators except the no-break ones (U+00A0, U+2007, U+202F).
_WS: Final = frozenset(
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2008\u2009\u200a\u2028\u2029\u205f\u3000"
)
_EOI: Final = ""


class _Reader:
    __slots__ = ("s", "i", "n")

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.n = len(text)

    # -- tokens -------------------------------------------------------------------------

    def peek(self) -> str:
        return self.s[self.i] if self.i < self.n else _EOI

    def illegal(self, expected: str, found: str | None = None) -> DtabSyntaxError:
        s, i = self.s, self.i
        if found is None:
            found = "end of input" if i >= self.n else f"'{s[i]}'"
        shown = f"{s}[]" if i >= self.n else f"{s[:i]}[{s[i]}]{s[i + 1:]}"
        return DtabSyntaxError(f"{expected} expected but {found} found at '{shown}'", i, s)

    def maybe_eat(self, c: str) -> bool:
        if self.i < self.n and self.s[self.i] == c:
            self.i += 1
            return True
        return False

    def eat(self, c: str) -> None:
        if not self.maybe_eat(c):
            raise self.illegal(f"'{c}'")

    def skip_ws(self) -> None:
        s, n, i = self.s, self.n, self.i
        while i < n:
            c = s[i]
            if c == "#":  # a comment runs to the end of the line, newline included
                j = s.find("\n", i)
                i = n if j < 0 else j + 1
            elif c in _WS:
                i += 1
            else:
                break
        self.i = i

    def ensure_end(self) -> None:
        if self.i < self.n:
            raise self.illegal("end of input")

    # -- paths --------------------------------------------------------------------------

    def _is_label_start(self) -> bool:
        return self.i < self.n and (self.s[self.i] in _SHOWABLE or self.s[self.i] == "\\")

    def label(self) -> bytes:
        s, n = self.s, self.n
        if self.i >= n or not (s[self.i] in _SHOWABLE or s[self.i] == "\\"):
            raise self.illegal("label char")
        out = bytearray()
        while self.i < n:
            m = _LABEL_RUN.match(s, self.i)
            if m is not None:
                out += m.group().encode("ascii")
                self.i = m.end()
                continue
            if s[self.i] != "\\":
                break
            self.i += 1
            self.eat("x")
            hi = self._hex()
            lo = self._hex()
            out.append(int(hi + lo, 16))
        return bytes(out)

    def _hex(self) -> str:
        c = self.peek()
        if c and c in _HEX:
            self.i += 1
            return c
        raise self.illegal("hex char")

    def path(self) -> Path:
        self.skip_ws()
        self.eat("/")
        if not self._is_label_start():
            return Path.EMPTY
        elems = [self.label()]
        while self.maybe_eat("/"):
            elems.append(self.label())
        return Path(tuple(elems))

    def prefix(self) -> Prefix:
        self.skip_ws()
        self.eat("/")
        if not (self._is_label_start() or self.peek() == "*"):
            return Prefix.EMPTY
        elems: list[bytes | None] = []
        while True:
            if self.maybe_eat("*"):
                elems.append(WILDCARD)
            else:
                elems.append(self.label())
            if not self.maybe_eat("/"):
                break
        return Prefix(tuple(elems))

    # -- trees --------------------------------------------------------------------------

    def tree(self) -> NameTree:
        trees = [self.union()]
        self.skip_ws()
        while self.maybe_eat("|"):
            trees.append(self.union())
            self.skip_ws()
        return trees[0] if len(trees) == 1 else Alt(tuple(trees))

    def union(self) -> NameTree:
        members = [self.weighted()]
        self.skip_ws()
        while self.maybe_eat("&"):
            members.append(self.weighted())
            self.skip_ws()
        # A lone member's weight is dropped at parse time (docs/dtab.md §4.3).
        return members[0].tree if len(members) == 1 else Union(tuple(members))

    def weighted(self) -> Weighted:
        self.skip_ws()
        c = self.peek()
        if c and (c in _DIGITS or c == "."):
            weight = self.number()
            self.skip_ws()
            self.eat("*")
            self.skip_ws()
        else:
            weight = DEFAULT_WEIGHT
        return Weighted(weight, self.simple())

    def number(self) -> float:
        s, n = self.s, self.n
        start, seen_dot = self.i, False
        while self.i < n and (s[self.i] in _DIGITS or s[self.i] == "."):
            if s[self.i] == ".":
                if seen_dot:
                    raise self.illegal("number char")
                seen_dot = True
            self.i += 1
        text = s[start : self.i]
        if text == ".":  # Finagle reports the lone dot with the marker after it
            raise self.illegal("weight", "'.'")
        weight = float(text)
        if weight == math.inf:
            # A Java double would be Infinity, which prints as no weight reads back; a
            # weight that large says nothing a smaller one cannot, so it is refused.
            self.i = start
            raise self.illegal("finite weight", f"'{text[:20]}{'...' if len(text) > 20 else ''}'")
        return weight

    def simple(self) -> NameTree:
        self.skip_ws()
        c = self.peek()
        if c == "(":
            self.i += 1
            t = self.tree()
            self.skip_ws()
            self.eat(")")
            return t
        if c == "/":
            return Leaf(self.path())
        if c == "!":
            self.i += 1
            return FAIL
        if c == "~":
            self.i += 1
            return NEG
        if c == "$":
            self.i += 1
            return EMPTY
        raise self.illegal("simple")

    # -- dtabs --------------------------------------------------------------------------

    def dentry(self) -> Dentry:
        prefix = self.prefix()
        self.skip_ws()
        self.eat("=")
        self.eat(">")
        return Dentry(prefix, self.tree())

    def dtab(self) -> Dtab:
        dentries: list[Dentry] = []
        while True:
            self.skip_ws()
            if self.i < self.n:
                dentries.append(self.dentry())
                self.skip_ws()
            if not self.maybe_eat(";"):
                break
        return Dtab(tuple(dentries))


def read_path(text: str) -> Path:
    """A standalone path; surrounding whitespace and comments are skipped (docs/dtab.md §2.2)."""
    r = _Reader(text)
    p = r.path()
    r.skip_ws()
    r.ensure_end()
    return p


def read_prefix(text: str) -> Prefix:
    r = _Reader(text)
    p = r.prefix()
    r.skip_ws()
    r.ensure_end()
    return p


def read_tree(text: str) -> NameTree:
    r = _Reader(text)
    t = r.tree()
    r.skip_ws()
    r.ensure_end()
    return t


def read_dentry(text: str) -> Dentry:
    r = _Reader(text)
    d = r.dentry()
    r.skip_ws()
    r.ensure_end()
    return d


def read_dtab(text: str) -> Dtab:
    """A dtab; the empty string (or only whitespace and comments) is the empty dtab."""
    r = _Reader(text)
    d = r.dtab()
    r.skip_ws()
    r.ensure_end()
    return d
