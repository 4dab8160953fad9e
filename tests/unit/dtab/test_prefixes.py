"""docs/dtab.md §3: prefix syntax and printing, and matching (observed through `Dtab.lookup`)."""

from __future__ import annotations

import pytest

from dtab import NEG, Dentry, Dtab, DtabSyntaxError, Leaf, Path, Prefix, read_dtab, read_prefix
from tests.unit.dtab import L, P, error_location

# text -> elements (None is the wildcard)
READ_CASES = [
    ("/", ()),
    ("/*", (None,)),
    ("/a/*/c", (b"a", None, b"c")),
    ("/*/*", (None, None)),
    ("/\\x2a", (b"*",)),  # a literal star label
    ("/#/io.l5d.k8s", (b"#", b"io.l5d.k8s")),
    ("  /svc  # comment", (b"svc",)),
    ("/\\xc3\\xa9/*", ("é".encode(), None)),
]

# elements -> printed
SHOW_CASES = [
    ((), "/"),
    ((None,), "/*"),
    ((b"a", None, b"c"), "/a/*/c"),
    ((b"*",), "/\\x2a"),
    ((b"a b", None), "/\\x61\\x20\\x62/*"),
    ((b"svc", b"web"), "/svc/web"),
]

# standalone prefix errors (§3.1: '*' must be a whole element) -> bracketed location
PREFIX_ERRORS = [
    ("/foo*", "/foo[*]"),
    ("/*foo", "/*[f]oo"),
    ("/**", "/*[*]"),
    ("/a/*b", "/a/*[b]"),
    ("", "[]"),
    ("*", "[*]"),
    ("/a/", "/a/[]"),
    ("/a//b", "/a/[/]b"),
]

# the same mistakes inside a dentry: the prefix ends early and '=' is expected
DENTRY_PREFIX_ERRORS = [
    ("/foo* => /a", "/foo[*] => /a"),
    ("/*foo => /a", "/*[f]oo => /a"),
    ("/** => /a", "/*[*] => /a"),
]

# §3.2 matching: (dtab, path, lookup result printed)
MATCH_CASES = [
    ("/ => /x", "/", "/x"),  # the empty prefix matches the empty path
    ("/ => /x", "/a/b", "/x/a/b"),
    ("/* => /x", "/", "~"),  # '*' never matches zero elements
    ("/* => /x", "/a", "/x"),
    ("/* => /x", "/a/b", "/x/b"),  # exactly one element
    ("/*/* => /x", "/a", "~"),
    ("/*/* => /x", "/a/b/c", "/x/c"),
    ("/a/* => /b", "/a/x/y", "/b/y"),  # wildcards do not capture
    ("/a/* => /b", "/a", "~"),
    ("/a/*/c => /d", "/a/b/c/e/f", "/d/e/f"),
    ("/a/*/c => /d", "/a/b/x/e", "~"),
    ("/s => /x", "/s/crawler", "/x/crawler"),
    ("/s => /x", "/s#/foo", "~"),  # whole elements only
    ("/s => /x", "/sa", "~"),
    ("/sa => /x", "/s", "~"),  # a prefix longer than the path
    ("/A => /x", "/a", "~"),  # case-sensitive
    ("/%41 => /x", "/A", "~"),  # no URL decoding
    ("/%41 => /x", "/%41", "/x"),
    ("/\\x2a => /x", "/a", "~"),  # a literal star is not a wildcard
    ("/\\x2a => /x", "/\\x2a/b", "/x/b"),
    ("/\\xff => /x", "/\\xff", "/x"),
    ("/\\xff => /x", "/\\xfe", "~"),
]


@pytest.mark.parametrize(("text", "elems"), READ_CASES)
def test_read(text: str, elems: tuple[bytes | None, ...]) -> None:
    assert read_prefix(text) == Prefix(elems)


@pytest.mark.parametrize(("elems", "printed"), SHOW_CASES)
def test_show_and_round_trip(elems: tuple[bytes | None, ...], printed: str) -> None:
    assert Prefix(elems).show() == printed
    assert read_prefix(printed) == Prefix(elems)


def test_wildcard_differs_from_literal_star() -> None:
    assert read_prefix("/*") != read_prefix("/\\x2a")
    assert read_prefix("/\\x2a").elems == (b"*",)


@pytest.mark.parametrize(("text", "location"), PREFIX_ERRORS)
def test_prefix_errors(text: str, location: str) -> None:
    with pytest.raises(DtabSyntaxError) as info:
        read_prefix(text)
    assert error_location(info.value) == f"'{location}'"
    assert info.value.offset == location.index("[")


@pytest.mark.parametrize(("text", "location"), DENTRY_PREFIX_ERRORS)
def test_dentry_prefix_errors(text: str, location: str) -> None:
    with pytest.raises(DtabSyntaxError) as info:
        read_dtab(text)
    assert str(info.value).startswith("'=' expected but ")
    assert error_location(info.value) == f"'{location}'"


@pytest.mark.parametrize(("dtab", "path", "expected"), MATCH_CASES)
def test_matching_through_lookup(dtab: str, path: str, expected: str) -> None:
    assert read_dtab(dtab).lookup(P(path)).show() == expected


def test_residual_is_what_follows_the_match() -> None:
    table = Dtab((Dentry(Prefix((b"a", None)), L("/b")),))
    assert table.lookup(Path((b"a", b"\x00", b"z", b"\xff"))) == Leaf(Path((b"b", b"z", b"\xff")))


def test_no_match_is_exactly_neg() -> None:
    assert read_dtab("/a => /b").lookup(P("/c")) == NEG
