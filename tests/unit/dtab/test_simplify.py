"""docs/dtab.md §9: `simplify` (evaluation-preserving, idempotent) and `evaluate` (address-set view)."""

from __future__ import annotations

import pytest

from dtab import EMPTY, FAIL, NEG, Alt, NameTree, Union, Weighted, evaluate, read_path, read_tree, simplify
from tests.unit.dtab import A, L, U

# §9.1 table: input text -> simplified text
SIMPLIFY_TEXT = [
    ("/a | ! | /b", "/a | !"),
    ("~ | ! | /b", "!"),
    ("! & /a", "/a"),
    ("! & ~", "~"),
    ("0.3*/a & 0.7*~", "/a"),
    ("0.3*/a & 0.7*/b & ~", "0.30*/a & 0.70*/b"),
    ("~ | $ | /blah", "$ | /blah"),
    ("(~ | ~) & /a", "/a"),
    ("(/a | !) | /b", "(/a | !) | /b"),
    ("(! | /a) | /b", "!"),
    # ours
    ("/a", "/a"),
    ("~", "~"),
    ("!", "!"),
    ("$", "$"),
    ("~ | ~", "~"),
    ("! | !", "!"),
    ("/a | /a", "/a | /a"),  # no de-duplication
    ("/a & /a", "/a & /a"),
    ("$ & ~", "$"),  # Empty members are kept
    ("$ & $", "$ & $"),
    ("! & ! & !", "~"),
    ("/a | (/b | /c)", "/a | (/b | /c)"),  # no flattening
    ("(/a & /b) & /c", "(/a & /b) & /c"),
    ("~ | (~ | /b)", "/b"),
    ("(/a & ~) | /b", "/a | /b"),
    ("2*(~ | /a) & 3*/b", "2.00*/a & 3.00*/b"),  # weights unchanged, no renormalisation
    ("2*(~ & ~) & 3*/b", "/b"),
    ("~ | 0.5*/a & 0.5*!", "/a"),
    ("/a | ~ | ! | /b", "/a | !"),
]

# structural cases, including one- and zero-member nodes the parser never makes
SIMPLIFY_TREES: list[tuple[NameTree, NameTree]] = [
    (Alt(()), NEG),
    (Union(()), NEG),
    (Alt((L("/a"),)), L("/a")),
    (Union((Weighted(0.5, L("/a")),)), L("/a")),
    (Alt((A(NEG, L("/a")),)), L("/a")),
    (Union((Weighted(0.5, FAIL),)), FAIL),  # a lone member is simplified, not dropped
    (Union((Weighted(0.5, NEG),)), NEG),
    (U((0.3, L("/a")), (0.7, NEG), (2.0, L("/b"))), U((0.3, L("/a")), (2.0, L("/b")))),
    (U((0.3, L("/a")), (0.7, FAIL)), L("/a")),
    (A(NEG, FAIL, L("/a")), FAIL),
    (A(L("/a"), FAIL, L("/b")), A(L("/a"), FAIL)),
    (A(L("/a"), Alt(()), L("/b")), A(L("/a"), L("/b"))),
    (A(Union(()), EMPTY), EMPTY),
    (U(Alt(()), L("/a"), Union(())), L("/a")),
    (A(Union((Weighted(1.0, FAIL),)), L("/a")), FAIL),
    (U((0.0, L("/a")), (0.0, EMPTY)), U((0.0, L("/a")), (0.0, EMPTY))),
]

# §9.2 evaluate table: text -> set of leaf paths, or None (negative or failed)
EVALUATE = [
    ("/ok & ~ & /blah & $", {"/ok", "/blah"}),
    ("$ & $ & $", set()),
    ("~ | $ | /blah", set()),
    ("! | /ok", None),  # failed
    ("/ok & !", {"/ok"}),
    ("! & ! & !", None),  # negative
    ("~ | /ok | !", {"/ok"}),
    # ours
    ("/a", {"/a"}),
    ("$", set()),
    ("~", None),
    ("!", None),
    ("/a | /b", {"/a"}),
    ("/a & /b", {"/a", "/b"}),
    ("/a & /a", {"/a"}),
    ("(~ | /a) & (! | /b)", {"/a"}),
    ("~ | ~", None),
    ("/a | !", {"/a"}),
    ("(/a & /b) | /c", {"/a", "/b"}),
    ("~ & ~ | /c", {"/c"}),
]


@pytest.mark.parametrize(("text", "expected"), SIMPLIFY_TEXT)
def test_simplify_table(text: str, expected: str) -> None:
    assert simplify(read_tree(text)).show() == expected


@pytest.mark.parametrize(("text", "expected"), SIMPLIFY_TEXT)
def test_simplify_idempotent_and_preserves_evaluation(text: str, expected: str) -> None:
    tree = read_tree(text)
    once = simplify(tree)
    assert simplify(once) == once
    assert evaluate(once) == evaluate(tree)


@pytest.mark.parametrize(("tree", "expected"), SIMPLIFY_TREES)
def test_simplify_structure(tree: NameTree, expected: NameTree) -> None:
    assert simplify(tree) == expected
    assert evaluate(simplify(tree)) == evaluate(tree)


def test_simplify_keeps_exact_weights() -> None:
    tree = simplify(read_tree("0.125*/a & 2.675*/b & ~"))
    assert tree == U((0.125, L("/a")), (2.675, L("/b")))


@pytest.mark.parametrize(("text", "expected"), EVALUATE)
def test_evaluate(text: str, expected: set[str] | None) -> None:
    result = evaluate(read_tree(text))
    if expected is None:
        assert result is None
    else:
        assert result == frozenset(read_path(p) for p in expected)
        assert isinstance(result, frozenset)


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (Alt(()), None),
        (Union(()), None),
        (Alt((L("/a"),)), {"/a"}),
        (Union((Weighted(0.0, L("/a")),)), {"/a"}),
        # a lone union member is evaluated as itself: Fail stays failed, so an enclosing
        # alternation stops there (consistent with simplify, §9.1 "equivalent under evaluation")
        (A(Union((Weighted(1.0, FAIL),)), L("/b")), None),
        (A(Union((Weighted(1.0, NEG),)), L("/b")), {"/b"}),
    ],
)
def test_evaluate_degenerate_nodes(tree: NameTree, expected: set[str] | None) -> None:
    result = evaluate(tree)
    if expected is None:
        assert result is None
    else:
        assert result == frozenset(read_path(p) for p in expected)
