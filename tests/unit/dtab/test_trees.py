"""docs/dtab.md §4: name-tree lexing, grammar, single-term rules, printing and weight rounding."""

from __future__ import annotations

import pytest

from dtab import EMPTY, FAIL, NEG, Alt, DtabSyntaxError, Leaf, NameTree, Path, Union, Weighted, read_tree
from tests.unit.dtab import A, L, U, error_location

# text -> tree (§4.3)
PARSE_CASES: list[tuple[str, NameTree]] = [
    ("/a", L("/a")),
    ("~", NEG),
    ("!", FAIL),
    ("$", EMPTY),
    ("/", L("/")),
    ("! | ~ | $", A(FAIL, NEG, EMPTY)),
    ("/a | /b | /c", A(L("/a"), L("/b"), L("/c"))),
    ("/a & /b & /c", U(L("/a"), L("/b"), L("/c"))),
    # '&' binds tighter than '|'
    ("/a & /b | /c", A(U(L("/a"), L("/b")), L("/c"))),
    ("/a | /b & /c", A(L("/a"), U(L("/b"), L("/c")))),
    # single-term rules: a lone union member's weight is discarded at parse time
    ("0.5 * /b", L("/b")),
    ("0.5 * /a | /b", A(L("/a"), L("/b"))),
    ("2 * ~", NEG),
    # parentheses only group
    ("((/a))", L("/a")),
    ("(((/a | /b)))", A(L("/a"), L("/b"))),
    # nested groups are not flattened
    ("/a | (/b | /c)", A(L("/a"), A(L("/b"), L("/c")))),
    ("(/a | /b) | /c", A(A(L("/a"), L("/b")), L("/c"))),
    ("(/a & /b) & /c", U(U(L("/a"), L("/b")), L("/c"))),
    ("/a & (/b & /c)", U(L("/a"), U(L("/b"), L("/c")))),
    ("(/a & /b) | (/c & /d)", A(U(L("/a"), L("/b")), U(L("/c"), L("/d")))),
    ("(/b | /c) & /d", U(A(L("/b"), L("/c")), L("/d"))),
    (
        "1 * /foo & 2 * /bar | .5 * /bar & .5 * /baz",
        A(U((1.0, L("/foo")), (2.0, L("/bar"))), U((0.5, L("/bar")), (0.5, L("/baz")))),
    ),
    ("3 * (2 * /a & /b) & /c", U((3.0, U((2.0, L("/a")), L("/b"))), L("/c"))),
    ("0.3*/a & 0.7*/b", U((0.3, L("/a")), (0.7, L("/b")))),
    # number forms: "1.", ".5", "007", "0"
    ("1. * /a & /b", U((1.0, L("/a")), L("/b"))),
    (".5 * /a & /b", U((0.5, L("/a")), L("/b"))),
    ("007 * /a & /b", U((7.0, L("/a")), L("/b"))),
    ("0 * /a & /b", U((0.0, L("/a")), L("/b"))),
    ("0.125 * /a & /b", U((0.125, L("/a")), L("/b"))),
    ("2*/a&/b", U((2.0, L("/a")), L("/b"))),
    ("2 *  /a & /b", U((2.0, L("/a")), L("/b"))),
    # atoms inside unions and alternations
    ("/a & $", U(L("/a"), EMPTY)),
    ("9 * /a & 1 * $", U((9.0, L("/a")), EMPTY)),
    ("~ | /a", A(NEG, L("/a"))),
    ("(! | /a) | /b", A(A(FAIL, L("/a")), L("/b"))),
    # whitespace and comments (§4.1)
    ("  /a  |  /b  ", A(L("/a"), L("/b"))),
    ("/a|/b", A(L("/a"), L("/b"))),
    ("\t/a\n|\r\n/b\x0b&\x0c/c", A(L("/a"), U(L("/b"), L("/c")))),
    ("/a # note\n | /b", A(L("/a"), L("/b"))),
    ("/a #x", L("/a")),
    ("/b#x", L("/b#x")),  # '#' inside a label is part of it
    ("# leading comment\n/a", L("/a")),
    ("(/a)#c", L("/a")),  # a delimiter before '#' starts a comment
    ("!#c", FAIL),
    ("~#c", NEG),
    ("$#c", EMPTY),
    ("/a |# c\n /b", A(L("/a"), L("/b"))),
    ("/a &# c\n /b", U(L("/a"), L("/b"))),
    ("2 *# c\n /a & /b", U((2.0, L("/a")), L("/b"))),
    ("(# c\n /a | /b # d\n)", A(L("/a"), L("/b"))),
    ("/\\x61\\x20\\x62", Leaf(Path((b"a b",)))),
]

# tree -> printed (§4.4)
SHOW_CASES: list[tuple[NameTree, str]] = [
    (NEG, "~"),
    (FAIL, "!"),
    (EMPTY, "$"),
    (L("/"), "/"),
    (A(FAIL, NEG, EMPTY), "! | ~ | $"),
    (U(L("/a"), L("/b")), "/a & /b"),
    (U((0.3, L("/a")), (0.7, L("/b"))), "0.30*/a & 0.70*/b"),  # no spaces around the weight's '*'
    (A(U(L("/a"), L("/b")), L("/c")), "/a & /b | /c"),
    (A(L("/a"), A(L("/b"), L("/c"))), "/a | (/b | /c)"),
    (A(A(L("/a"), L("/b")), L("/c")), "(/a | /b) | /c"),
    (U(A(L("/b"), L("/c")), L("/d")), "(/b | /c) & /d"),
    (U(U(L("/a"), L("/b")), L("/c")), "(/a & /b) & /c"),
    (U((3.0, U((2.0, L("/a")), L("/b"))), L("/c")), "3.00*(2.00*/a & /b) & /c"),
    (U(L("/a"), (2.0, A(L("/b"), L("/c")))), "/a & 2.00*(/b | /c)"),
    # rule 1: one-member nodes print as their member, weight dropped (the parser never makes them)
    (Union((Weighted(0.5, L("/a")),)), "/a"),
    (Alt((L("/a"),)), "/a"),
    (A(Alt((L("/a"),)), L("/b")), "/a | /b"),
    (U(Union((Weighted(7.0, L("/a")),)), L("/b")), "/a & /b"),
    (A(Alt((A(L("/a"), L("/b")),)), L("/c")), "(/a | /b) | /c"),
    (U(Alt((A(L("/a"), L("/b")),)), L("/c")), "(/a | /b) & /c"),
    (U(Union((Weighted(2.0, U(L("/a"), L("/b"))),)), L("/c")), "(/a & /b) & /c"),
    (Alt((Alt((A(L("/a"), L("/b")),)),)), "/a | /b"),
    # ...and in the member's own context: a one-member Alt holding a union is not "a nested Alt"
    (A(L("/a"), Alt((U(L("/b"), L("/c")),))), "/a | /b & /c"),
    (A(L("/a"), Union((Weighted(3.0, U(L("/b"), L("/c"))),))), "/a | /b & /c"),
    (U(L("/a"), Union((Weighted(3.0, L("/b")),))), "/a & /b"),
    (U((2.0, Alt((L("/b"),))), L("/c")), "2.00*/b & /c"),
    (Leaf(Path((b"a b",))), "/\\x61\\x20\\x62"),
    (U((0.5, Leaf(Path((b"*",)))), L("/b")), "0.50*/\\x2a & /b"),
]

# text -> printed after reading (§4.4 table)
READ_SHOW_CASES = [
    ("! | ~ | $", "! | ~ | $"),
    ("1 * /foo & 2 * /bar | .5 * /bar & .5 * /baz", "/foo & 2.00*/bar | 0.50*/bar & 0.50*/baz"),
    ("(/b | /c) & /d", "(/b | /c) & /d"),
    ("(/a & /b) | (/c & /d)", "/a & /b | /c & /d"),
    ("/a | (/b | /c)", "/a | (/b | /c)"),
    ("(/a | /b) | /c", "(/a | /b) | /c"),
    ("3 * (2 * /a & /b) & /c", "3.00*(2.00*/a & /b) & /c"),
    ("0.125 * /a & /b", "0.13*/a & /b"),
    ("0.5 * /b", "/b"),
    ("0.5 * /a | /b", "/a | /b"),
    ("((/a))", "/a"),
    ("  /a   &   /b  # c", "/a & /b"),
    ("1.0 * /a & 1 * /b", "/a & /b"),  # weight exactly 1.0 prints no "W*"
]

# weight -> printed (round-half-up on the shortest repr, §4.4)
WEIGHTS = [
    (0.125, "0.13"),
    (2.675, "2.68"),
    (0.333, "0.33"),
    (9.0, "9.00"),
    (1.5, "1.50"),
    (0.0, "0.00"),
    (0.5, "0.50"),
    (1.005, "1.01"),  # Python's "%.2f" gives 1.00
    (0.015, "0.02"),  # Python's "%.2f" gives 0.01
    (0.005, "0.01"),
    (0.004, "0.00"),
    (0.995, "1.00"),
    (1.001, "1.00"),  # not exactly 1.0, so the weight is printed
    (0.999, "1.00"),
    (1e-05, "0.00"),
    (100.0, "100.00"),
    (12345.675, "12345.68"),
    (250.0, "250.00"),
]

# §2.4 / §4.3 errors: text -> bracketed location
ERROR_LOCATIONS = [
    ("", "[]"),
    ("#", "#[]"),
    ("# only a comment\n", "# only a comment\n[]"),
    ("/foo &", "/foo &[]"),
    ("/foo |", "/foo |[]"),
    ("()", "([)]"),
    ("(/a", "(/a[]"),
    ("(/a | /b", "(/a | /b[]"),
    ("/a)", "/a[)]"),
    ("-1 * /a", "[-]1 * /a"),
    ("1e3 * /a", "1[e]3 * /a"),
    ("2 /a", "2 [/]a"),
    ("1.2.3 * /a", "1.2[.]3 * /a"),
    ("/a/*", "/a/[*]"),  # '*' only in prefixes
    ("/a & *", "/a & [*]"),
    ("/a /b", "/a [/]b"),
    ("/a | | /b", "/a | [|] /b"),
    ("& /a", "[&] /a"),
    ("| /a", "[|] /a"),
    ("a", "[a]"),
    ("/a b", "/a [b]"),
    ("/a ; /b", "/a [;] /b"),
    ("/a => /b", "/a [=]> /b"),
    ("+1 * /a", "[+]1 * /a"),
    ("2 * 3 * /a", "2 * [3] * /a"),
    ("/a//b", "/a/[/]b"),
    ("/a/", "/a/[]"),
    ("/\\X41", "/\\[X]41"),
]

# (text, expected-token) pairs where §2.4 names the token the parser wanted
EXPECTED_TOKENS = [
    ("()", "simple"),
    ("/foo &", "simple"),
    ("", "simple"),
    ("(/a", "')'"),
    ("2 /a", "'*'"),
    ("1e3 * /a", "'*'"),
    ("1.2.3 * /a", "number char"),
    ("/a)", "end of input"),
    ("/\\x4g", "hex char"),
]


@pytest.mark.parametrize(("text", "tree"), PARSE_CASES)
def test_parse(text: str, tree: NameTree) -> None:
    assert read_tree(text) == tree


@pytest.mark.parametrize(("tree", "printed"), SHOW_CASES)
def test_show(tree: NameTree, printed: str) -> None:
    assert tree.show() == printed


@pytest.mark.parametrize(("text", "printed"), READ_SHOW_CASES)
def test_read_then_show(text: str, printed: str) -> None:
    assert read_tree(text).show() == printed


@pytest.mark.parametrize(("text", "tree"), [c for c in PARSE_CASES if "0.125" not in c[0]])
def test_parsed_trees_round_trip_through_show(text: str, tree: NameTree) -> None:
    assert read_tree(read_tree(text).show()) == tree


@pytest.mark.parametrize(("weight", "printed"), WEIGHTS)
def test_weight_rounding(weight: float, printed: str) -> None:
    tree = U((weight, L("/a")), L("/b"))
    assert tree.show() == f"{printed}*/a & /b"


@pytest.mark.parametrize(("weight", "printed"), [w for w in WEIGHTS if "e" not in repr(w[0])])
def test_parsed_weight_keeps_full_precision(weight: float, printed: str) -> None:
    # routing uses the parsed float; only the printed form is rounded (§4.4)
    tree = read_tree(f"{weight!r} * /a & /b")
    assert isinstance(tree, Union)
    assert tree.weighted[0].weight == weight
    assert tree.weighted[1].weight == 1.0
    assert tree.show() == f"{printed}*/a & /b"


def test_weights_are_floats() -> None:
    tree = read_tree("3 * /a & /b")
    assert isinstance(tree, Union)
    assert all(type(w.weight) is float for w in tree.weighted)


def test_atoms_are_singletons() -> None:
    assert read_tree("~") is NEG
    assert read_tree("!") is FAIL
    assert read_tree("$") is EMPTY


@pytest.mark.parametrize(("text", "location"), ERROR_LOCATIONS)
def test_error_location(text: str, location: str) -> None:
    with pytest.raises(DtabSyntaxError) as info:
        read_tree(text)
    assert error_location(info.value) == f"'{location}'"
    assert info.value.offset == location.index("[")
    assert info.value.text == text


@pytest.mark.parametrize(("text", "expected"), EXPECTED_TOKENS)
def test_error_names_expected_token(text: str, expected: str) -> None:
    with pytest.raises(DtabSyntaxError) as info:
        read_tree(text)
    assert str(info.value).startswith(f"{expected} expected but ")


@pytest.mark.parametrize(
    "text", [".", ". * /a", "1.2.3", "-1 * /a", "1e3 * /a", "2 /a", "= >", "/a & ", "(/a))"]
)
def test_rejected(text: str) -> None:
    with pytest.raises(DtabSyntaxError):
        read_tree(text)


def test_lone_dot_is_not_a_weight() -> None:
    with pytest.raises(DtabSyntaxError) as info:
        read_tree(". * /a & /b")
    assert str(info.value).startswith("weight expected but '.' found")
