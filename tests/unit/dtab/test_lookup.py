"""docs/dtab.md §7: one rewrite step (`Dtab.lookup`), and §8 / DESIGN: `compile` gives the same answer."""

from __future__ import annotations

import pytest

from dtab import EMPTY, FAIL, NEG, Dtab, NameTree, compile, read_dtab, read_path
from tests.unit.dtab import A, L, P, U

# (dtab, path, lookup printed) — the §7 table first, then our own.
LOOKUP_CASES = [
    ("/a/*/c => /d", "/a/b/c/e/f", "/d/e/f"),
    (
        "/smitten=>/USA/CA/SF/Octavia/432; /iceCreamStore=>/smitten; /iceCreamStore=>/humphrys",
        "/iceCreamStore/try/allFlavors",
        "/humphrys/try/allFlavors | /smitten/try/allFlavors",
    ),
    ("/a => 0.3*/b & 0.7*/c", "/a/x", "0.30*/b/x & 0.70*/c/x"),
    ("/=>!", "/anything", "!"),
    ("/a=>~", "/a", "~"),
    ("/a=>~;/a=>~", "/a", "~ | ~"),
    ("/s => /s#/foo/bar", "/s#/foo/bar/crawler", "~"),
    # ours
    ("", "/a", "~"),
    ("/a => /b", "/a", "/b"),
    ("/a => /b", "/a/c/d", "/b/c/d"),
    ("/a => /b", "/", "~"),
    ("/a => /b | /c", "/a/x", "/b/x | /c/x"),
    ("/a => (/b | /c) & /d", "/a/x", "(/b/x | /c/x) & /d/x"),
    ("/a => /b | !", "/a/x", "/b/x | !"),
    ("/a => $ | ~", "/a/x", "$ | ~"),
    ("/a => /", "/a/x/y", "/x/y"),  # an empty destination path takes the residual
    ("/a => /b; /c => /d", "/a/x", "/b/x"),
    ("/a => /b; /c => /d", "/c/x", "/d/x"),
    ("/a => /b; /a/x => /c", "/a/x/y", "/c/y | /b/x/y"),  # last entry first
    ("/a/x => /c; /a => /b", "/a/x/y", "/b/x/y | /c/y"),
    ("/ => /r; /a => /b; /* => /w", "/a/z", "/w/z | /b/z | /r/a/z"),
    ("/a => /b; /a => /b", "/a", "/b | /b"),  # no de-duplication
    ("/a => /b | /c; /a => /d", "/a", "/d | (/b | /c)"),  # a matched Alt stays nested
    ("/a => ~; /a => /b", "/a", "/b | ~"),
    ("/svc => /#/io.l5d.k8s/default/http", "/svc/web", "/#/io.l5d.k8s/default/http/web"),
]


@pytest.mark.parametrize(("dtab", "path", "expected"), LOOKUP_CASES)
def test_lookup(dtab: str, path: str, expected: str) -> None:
    assert read_dtab(dtab).lookup(P(path)).show() == expected


@pytest.mark.parametrize(("dtab", "path", "expected"), LOOKUP_CASES)
def test_compiled_lookup_agrees(dtab: str, path: str, expected: str) -> None:
    table = read_dtab(dtab)
    compiled = compile(table)
    assert compiled.lookup(P(path)) == table.lookup(P(path))
    assert compiled.lookup(P(path)).show() == expected
    # asking twice (memoised) gives the same answer
    assert compiled.lookup(P(path)) == table.lookup(P(path))


# structural checks where the printed form would hide the difference
STRUCTURE_CASES: list[tuple[str, str, NameTree]] = [
    ("/a=>~", "/a", NEG),
    ("/=>!", "/x", FAIL),
    ("/a=>$", "/a/b", EMPTY),
    ("/a=>~;/a=>~", "/a", A(NEG, NEG)),
    ("/a => 0.3*/b & 0.7*/c", "/a/x", U((0.3, L("/b/x")), (0.7, L("/c/x")))),
    ("/a => /b; /a => /c", "/a/x", A(L("/c/x"), L("/b/x"))),
    ("/a => /b | (/c | /d)", "/a/x", A(L("/b/x"), A(L("/c/x"), L("/d/x")))),
    ("/a => /b; /a => /c | /d", "/a", A(A(L("/c"), L("/d")), L("/b"))),
]


@pytest.mark.parametrize(("dtab", "path", "tree"), STRUCTURE_CASES)
def test_lookup_structure(dtab: str, path: str, tree: NameTree) -> None:
    table = read_dtab(dtab)
    assert table.lookup(P(path)) == tree
    assert compile(table).lookup(P(path)) == tree


def test_lookup_keeps_weights_exactly() -> None:
    table = read_dtab("/a => 0.125*/b & 2.675*/c")
    assert table.lookup(P("/a")) == U((0.125, L("/b")), (2.675, L("/c")))


def test_lookup_of_non_showable_bytes() -> None:
    table = read_dtab("/\\xff/* => /\\x00")
    path = read_path("/\\xff/\\x01/\\x02")
    assert table.lookup(path) == L("/\\x00/\\x02")
    assert compile(table).lookup(path) == L("/\\x00/\\x02")


def test_compiled_keeps_its_dtab() -> None:
    table = read_dtab("/a=>/b;/c=>/d")
    assert compile(table).dtab == table
    assert compile(Dtab.EMPTY).lookup(P("/a")) == NEG


def test_compiled_large_table_agrees_on_many_paths() -> None:
    # a table big enough that an index matters; every path compared with the plain lookup
    entries = [f"/svc/s{i} => /#/io.l5d.k8s/ns{i % 7}/http/s{i}" for i in range(200)]
    entries += ["/svc => /#/io.l5d.k8s/default/http", "/*/s5 => /other", "/ => /root"]
    entries += [f"/svc/s{i} => ~" for i in range(0, 200, 17)]
    table = read_dtab(";".join(entries))
    compiled = compile(table)
    paths = [f"/svc/s{i}/rest" for i in range(210)] + ["/", "/svc", "/x/s5", "/x/s6/y", "/svc/s5"]
    for text in paths:
        assert compiled.lookup(P(text)) == table.lookup(P(text)), text
