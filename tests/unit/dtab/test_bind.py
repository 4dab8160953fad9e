"""docs/dtab.md §8 (binding) and §6.3 (configured namers): the lookup chain, the case-by-case bind
rules, the depth limit, and every worked example of §8.4."""

from __future__ import annotations

import pytest

from dtab import (
    EMPTY,
    FAIL,
    NEG,
    Alt,
    BindError,
    Bound,
    Dtab,
    Leaf,
    MaxDepthExceeded,
    NamerError,
    NameTree,
    Union,
    Weighted,
    bind,
    compile,
    local_dtab,
    read_dtab,
    read_tree,
)
from tests.unit.dtab import (
    A,
    BindingNamer,
    ErrorNamer,
    L,
    P,
    RewriteNamer,
    U,
    ids,
    namer_entry,
    show_bound,
)

A1 = "/$/inet/10.0.0.1/80"
A2 = "/$/inet/10.0.0.2/80"
K8S = "/svc => /#/io.l5d.k8s/default/http"


def k8s() -> list[tuple[object, object]]:
    # io.l5d.k8s consumes namespace/port/service
    return [namer_entry("/#/io.l5d.k8s", BindingNamer("/#/io.l5d.k8s", consume=3))]


def error_namers() -> list[tuple[object, object]]:
    return [namer_entry("/#/error", ErrorNamer("/#/error"))]


def rewriting_test_namer() -> list[tuple[object, object]]:
    # §8.4 ex. 7: `/$/…testnamer` rewrites to /rewritten/by/test/namer
    return [namer_entry("/$/testnamer", RewriteNamer("/rewritten/by/test/namer"))]


# (dtab, path, namers factory or None, expected result printed with bound ids)
BIND_CASES = [
    # §8.4 worked examples
    ("/foo=>/bar;/bar=>/$/inet/8080", "/foo", None, "/$/inet/8080"),  # 1
    (f"/a => {A1}; /a => /nowhere", "/a", None, A1),  # 2 fallback
    (f"/a => {A1}; /a => !", "/a", None, "!"),  # 3 no fallback past failure
    (f"/a => $ | /b; /b => {A1}", "/a", None, "$"),  # 4 Empty stops fallback
    ("/svc => /$/inet/127.0.0.1/8080", "/svc/foo/bar", None, "/$/inet/127.0.0.1/8080"),  # 5
    (f"/a => /b & /c; /b => {A1}", "/a", None, A1),  # 6 union pruning
    (f"/a => 0.5*/b & 0.5*!; /b => {A1}", "/a", None, A1),
    (f"/a => /b & /$/nil; /b => {A1}", "/a", None, f"{A1} & $"),
    (  # 7 weights survive binding per level
        "/foo => /bar;"
        "/foo => 3 * /baz & 2 * /booz & /$/testnamer;"
        "/rewritten/by/test/namer => /$/inet/7070;"
        "/baz => 3 * /$/inet/8080 & 2 * /$/inet/9090;"
        "/booz => ~",
        "/foo",
        rewriting_test_namer,
        "3.00*(3.00*/$/inet/8080 & 2.00*/$/inet/9090) & /$/inet/7070",
    ),
    (f"/a => {A1} | /#/error", "/a", error_namers, A1),  # 8
    (f"/a => /#/error & {A1}", "/a", error_namers, A1),
    # §5.3 precedence
    (f"/a/b => {A1}; /a => {A2}", "/a/b", None, A2),
    (f"/a => {A2}; /a/b => {A1}", "/a/b", None, A1),
    # §8.1 consequences with a configured namer
    ("/svc=>/#/io.l5d.fs; /#/io.l5d.fs/web=>~", "/svc/web", "fs", "/#/io.l5d.fs/web"),
    ("/svc=>/#/io.l5d.fs; /#/io.l5d.fs/web=>~; /#/io.l5d.fs/web=>~", "/svc/web", "fs", "~"),
    (f"/svc=>/#/io.l5d.fs; /#/io.l5d.fs/web=>{A1}", "/svc/web", "fs", A1),
    ("/svc=>/#/io.l5d.fs", "/svc/web/x", "fs", "/#/io.l5d.fs/web"),
    # §6.3: a /# path with no configured namer is simply Neg
    ("/svc=>/#/io.l5d.fs", "/svc/web", None, "~"),
    ("", "/#/anything/at/all", None, "~"),
    # the dtab is asked first, so a dentry can shadow a system path (§6.2)
    ("/$/inet/1.2.3.4/80 => /$/inet/5.6.7.8/90", "/$/inet/1.2.3.4/80", None, "/$/inet/5.6.7.8/90"),
    ("/$ => ~; /$ => ~", "/$/inet/1.2.3.4/80", None, "~"),
    ("/$/fail => $", "/$/fail", None, "$"),
    # atoms and structure
    ("", "/nothing", None, "~"),
    ("/a => ~", "/a", None, "~"),
    ("/a => !", "/a", None, "!"),
    ("/a => $", "/a", None, "$"),
    ("/a => /$/fail", "/a", None, "!"),
    ("/a => /$/nil", "/a", None, "$"),
    ("/a => /$/fail/x | /b", "/a", None, "!"),
    ("/a => ~ | ~ | $", "/a", None, "$"),
    ("/a => /x | /y | /z", "/a", None, "~"),
    (f"/a => /x | /y | {A1}", "/a", None, A1),
    (f"/a => ! | {A1}", "/a", None, "!"),
    (f"/a => /x | ! | {A1}", "/a", None, "!"),
    (f"/a => {A1} & {A2}", "/a", None, f"{A1} & {A2}"),
    (f"/a => 0.2*{A1} & 0.8*{A2}", "/a", None, f"0.20*{A1} & 0.80*{A2}"),
    (f"/a => 0.2*{A1} & 0.8*/b; /b => /c; /c => {A2}", "/a", None, f"0.20*{A1} & 0.80*{A2}"),
    (f"/a => 2*/x & 3*{A1}", "/a", None, A1),  # lone survivor loses its weight
    ("/a => /x & ! & ~", "/a", None, "~"),  # nothing survives
    ("/a => $ & $", "/a", None, "$ & $"),
    (f"/a => (/x | {A1}) & {A2}", "/a", None, f"{A1} & {A2}"),  # no Alt in the result
    (f"/a => (! | {A1}) & {A2}", "/a", None, A2),
    (f"/a => /b | {A2}; /b => 2*{A1} & 3*$", "/a", None, f"2.00*{A1} & 3.00*$"),  # Alt returns a union
    (f"/a => 0.5*(0.5*{A1} & 0.5*/x) & {A2}", "/a", None, f"0.50*{A1} & {A2}"),
    # residual appended at every step
    ("/s => /$/inet/1.2.3.4/80/extra", "/s/x", None, "/$/inet/1.2.3.4/80"),
]


def _namers(kind: object) -> list[tuple[object, object]]:
    if kind is None:
        return []
    if kind == "fs":
        return [namer_entry("/#/io.l5d.fs", BindingNamer("/#/io.l5d.fs", consume=1))]
    return kind()  # type: ignore[operator]


@pytest.mark.parametrize(("dtab", "path", "namers", "expected"), BIND_CASES)
def test_bind(dtab: str, path: str, namers: object, expected: str) -> None:
    result = bind(read_dtab(dtab), P(path), namers=_namers(namers))
    assert show_bound(result) == expected


@pytest.mark.parametrize(("dtab", "path", "namers", "expected"), BIND_CASES)
def test_bind_compiled_agrees(dtab: str, path: str, namers: object, expected: str) -> None:
    table = read_dtab(dtab)
    plain = bind(table, P(path), namers=_namers(namers))
    compiled = bind(compile(table), P(path), namers=_namers(namers))
    assert compiled == plain
    assert show_bound(compiled) == expected


def _no_alt(tree: NameTree) -> bool:
    if isinstance(tree, Alt):
        return False
    if isinstance(tree, Union):
        return all(_no_alt(w.tree) for w in tree.weighted)
    return True


def _leaves_bound(tree: NameTree) -> bool:
    if isinstance(tree, Leaf):
        return isinstance(tree.value, Bound)
    if isinstance(tree, Union):
        return all(_leaves_bound(w.tree) for w in tree.weighted)
    return True


@pytest.mark.parametrize(("dtab", "path", "namers", "expected"), BIND_CASES)
def test_bind_result_shape(dtab: str, path: str, namers: object, expected: str) -> None:
    # §8.2: the result contains no Alt node and every leaf is a bound name
    result = bind(read_dtab(dtab), P(path), namers=_namers(namers))
    assert _no_alt(result)
    assert _leaves_bound(result)


# residuals: (dtab, path, expected id, expected residual)
RESIDUAL_CASES = [
    ("/svc => /$/inet/127.0.0.1/8080", "/svc/foo/bar", "/$/inet/127.0.0.1/8080", "/foo/bar"),
    ("/svc => /$/inet/127.0.0.1/8080", "/svc", "/$/inet/127.0.0.1/8080", "/"),
    (f"/a/b => {A1}; /a => {A2}", "/a/b", A2, "/b"),
    ("/s => /$/inet/1.2.3.4/80/extra", "/s/x", "/$/inet/1.2.3.4/80", "/extra/x"),
    ("/a => /b; /b => /$/inet/8080/r", "/a/x/y", "/$/inet/8080", "/r/x/y"),
    ("/a/* => /$/inet/9090", "/a/skip/kept", "/$/inet/9090", "/kept"),
]


@pytest.mark.parametrize(("dtab", "path", "bound_id", "residual"), RESIDUAL_CASES)
def test_residual(dtab: str, path: str, bound_id: str, residual: str) -> None:
    result = bind(read_dtab(dtab), P(path))
    assert isinstance(result, Leaf)
    assert isinstance(result.value, Bound)
    assert result.value.id == P(bound_id)
    assert result.value.residual == P(residual)


def test_configured_namer_residual_and_id() -> None:
    namer = BindingNamer("/#/io.l5d.fs", consume=1)
    result = bind(
        read_dtab("/svc=>/#/io.l5d.fs"), P("/svc/web/a/b"), namers=[namer_entry("/#/io.l5d.fs", namer)]
    )
    assert namer.calls == [P("/web/a/b")]  # the namer sees what follows its prefix
    assert isinstance(result, Leaf)
    assert result.value.id == P("/#/io.l5d.fs/web")
    assert result.value.residual == P("/a/b")


# --- §8.4 example 8: an error in an alternative does not fall through ------------------


def test_error_in_first_alternative_fails_the_bind() -> None:
    with pytest.raises(NamerError, match="error naming /#/error"):
        bind(read_dtab(f"/a => /#/error | {A1}"), P("/a"), namers=error_namers())


def test_error_in_union_member_is_ignored_when_another_succeeds() -> None:
    result = bind(read_dtab(f"/a => /#/error & {A1}"), P("/a"), namers=error_namers())
    assert show_bound(result) == A1


def test_union_of_only_errors_fails_with_the_first() -> None:
    namers = [namer_entry("/#/e1", ErrorNamer("/#/e1")), namer_entry("/#/e2", ErrorNamer("/#/e2"))]
    with pytest.raises(NamerError) as info:
        bind(read_dtab("/a => /#/e1/x & /#/e2/y"), P("/a"), namers=namers)
    assert str(info.value) == "error naming /#/e1/x"


def test_error_namer_is_never_consulted_after_success() -> None:
    namer = ErrorNamer("/#/error")
    result = bind(read_dtab(f"/a => {A1} | /#/error"), P("/a"), namers=[namer_entry("/#/error", namer)])
    assert show_bound(result) == A1
    assert namer.calls == []


def test_error_stops_the_alternation_even_if_a_later_member_binds() -> None:
    with pytest.raises(BindError):
        bind(read_dtab(f"/a => /x | /$/nosuchnamer | {A1}"), P("/a"))


# --- §8.1: namers only on an exactly-Neg lookup ------------------------------------------


def test_namers_not_asked_when_lookup_is_not_exactly_neg() -> None:
    namer = BindingNamer("/#/io.l5d.fs")
    entry = [namer_entry("/#/io.l5d.fs", namer)]
    result = bind(read_dtab("/svc=>/#/io.l5d.fs; /#/io.l5d.fs/web => ~ | ~"), P("/svc/web"), namers=entry)
    assert result == NEG
    assert namer.calls == []


def test_namers_tried_in_configuration_order_and_fall_through_on_neg() -> None:
    first = BindingNamer("/#/io.l5d.fs", consume=1, neg_for=("/web/x/y",))
    second = BindingNamer("/#/io.l5d.fs", consume=2)
    namers = [namer_entry("/#/io.l5d.fs", first), namer_entry("/#/io.l5d.fs", second)]
    result = bind(read_dtab(""), P("/#/io.l5d.fs/web/x/y"), namers=namers)
    assert show_bound(result) == "/#/io.l5d.fs/web/x"
    assert first.calls == [P("/web/x/y")]
    assert second.calls == [P("/web/x/y")]
    # when the first answers, the second is not asked
    result = bind(read_dtab(""), P("/#/io.l5d.fs/api/x"), namers=namers)
    assert show_bound(result) == "/#/io.l5d.fs/api"
    assert second.calls == [P("/web/x/y")]


def test_namer_with_overridden_prefix() -> None:
    namers = [namer_entry("/#/disco", BindingNamer("/#/disco"))]
    result = bind(read_dtab("/svc => /#/disco"), P("/svc/web"), namers=namers)
    assert show_bound(result) == "/#/disco/web"


def test_namer_only_matches_whole_prefix_elements() -> None:
    namer = BindingNamer("/#/io.l5d.fs")
    result = bind(read_dtab(""), P("/#/io.l5d.fsx/web"), namers=[namer_entry("/#/io.l5d.fs", namer)])
    assert result == NEG
    assert namer.calls == []


def test_rewriting_namer_result_reenters_the_dtab() -> None:
    namer = RewriteNamer("/target")
    namers = [namer_entry("/#/rw", namer)]
    result = bind(read_dtab(f"/target/x => {A1}"), P("/#/rw/x"), namers=namers)
    assert show_bound(result) == A1
    assert namer.calls == [P("/x")]


def test_namer_answer_tree_is_bound_like_any_other() -> None:
    class TreeNamer:
        def lookup(self, path: object) -> NameTree:
            return read_tree(f"/nowhere | 2*{A1} & 3*/b")

    result = bind(read_dtab(f"/b => {A2}"), P("/#/t"), namers=[namer_entry("/#/t", TreeNamer())])
    assert show_bound(result) == f"2.00*{A1} & 3.00*{A2}"


def test_unknown_system_namer_is_an_error() -> None:
    with pytest.raises(BindError):
        bind(read_dtab("/a => /$/nosuchnamer/x"), P("/a"))
    with pytest.raises(BindError):
        bind(read_dtab("/a => /$/inet/localhost/http"), P("/a"))  # non-numeric port (§6.2)


# --- §8.2: direct cases on trees -------------------------------------------------------

TREE_CASES: list[tuple[NameTree, str]] = [
    (NEG, "~"),
    (FAIL, "!"),
    (EMPTY, "$"),
    (Alt(()), "~"),
    (Union(()), "~"),
    (Alt((L(A1),)), A1),
    (Union((Weighted(0.25, L(A1)),)), A1),  # the weight disappears
    (Union((Weighted(0.25, L("/nowhere")),)), "~"),
    (A(NEG, EMPTY, L(A1)), "$"),
    (A(NEG, NEG), "~"),
    (A(FAIL, L(A1)), "!"),
    (A(L("/nowhere"), L(A1), L(A2)), A1),
    (U((0.5, NEG), (0.5, FAIL)), "~"),
    (U(EMPTY, EMPTY), "$ & $"),
    (U((0.5, L(A1)), (0.0, L(A2))), f"0.50*{A1} & 0.00*{A2}"),
    (Leaf(Bound(P("/my/id"), P("/r"))), "/my/id"),  # a bound leaf is itself
]


@pytest.mark.parametrize(("tree", "expected"), TREE_CASES)
def test_bind_tree(tree: NameTree, expected: str) -> None:
    assert show_bound(bind(Dtab.EMPTY, tree)) == expected


def test_bound_leaf_keeps_its_residual() -> None:
    leaf = Leaf(Bound(P("/my/id"), P("/r")))
    assert bind(Dtab.EMPTY, leaf) == leaf


def test_alt_result_union_keeps_weights_exactly() -> None:
    result = bind(read_dtab(f"/a => 0.125*{A1} & 2.675*{A2}"), P("/a"))
    assert isinstance(result, Union)
    assert [w.weight for w in result.weighted] == [0.125, 2.675]
    assert ids(result) == U((0.125, L(A1)), (2.675, L(A2)))


# --- §8.2 depth arithmetic (bind-088/089) ------------------------------------------------


def _chain(n: int) -> Dtab:
    """n rewrites /p0=>/p1 … /p(n-1)=>/pn, then /pn => A1."""
    entries = [f"/p{i}=>/p{i + 1}" for i in range(n)] + [f"/p{n}=>{A1}"]
    return read_dtab(";".join(entries))


def test_chain_of_98_rewrites_binds() -> None:
    assert show_bound(bind(_chain(98), P("/p0"))) == A1
    assert show_bound(bind(compile(_chain(98)), P("/p0"))) == A1


def test_chain_of_99_rewrites_exceeds_the_limit() -> None:
    with pytest.raises(MaxDepthExceeded) as info:
        bind(_chain(99), P("/p0"))
    assert str(info.value) == "Max recursion level: 100 reached in Namer lookup"
    with pytest.raises(MaxDepthExceeded):
        bind(compile(_chain(99)), P("/p0"))


def test_max_depth_2() -> None:
    with pytest.raises(MaxDepthExceeded) as info:
        bind(read_dtab("/s => /s/srv"), P("/s/foo/bar"), max_depth=2)
    assert str(info.value) == "Max recursion level: 2 reached in Namer lookup"


@pytest.mark.parametrize(
    ("dtab", "path", "max_depth", "ok"),
    [
        # the bound leaf itself is one call deeper than the lookup that produced it
        (f"/a => {A1}", "/a", 2, True),
        (f"/a => /b; /b => {A1}", "/a", 2, False),
        (f"/a => /b; /b => {A1}", "/a", 3, True),
        ("", A1, 0, False),
        ("", A1, 1, True),
        # the lookup's Neg is itself bound one call deeper, and every call is checked
        ("/a => ~", "/a", 0, False),
        ("/a => ~", "/a", 1, True),
    ],
)
def test_depth_boundary(dtab: str, path: str, max_depth: int, ok: bool) -> None:
    if ok:
        bind(read_dtab(dtab), P(path), max_depth=max_depth)
    else:
        with pytest.raises(MaxDepthExceeded) as info:
            bind(read_dtab(dtab), P(path), max_depth=max_depth)
        assert str(info.value) == f"Max recursion level: {max_depth} reached in Namer lookup"


def test_depth_check_applies_to_bound_leaf_given_directly() -> None:
    # checked on every call, whatever the node (§8.2): depth 0 is fine for a tree
    leaf = Leaf(Bound(P("/id")))
    assert bind(Dtab.EMPTY, leaf, max_depth=0) == leaf


LOOPS = [
    "/iceCream => /youScream; /youScream => /weAllScream/for; /weAllScream/for => /iceCream",
    "/a => /a",
    "/a => /a/b",
    "/a => /b; /b => /a",
    "/a => /b | /c; /b => /a",
]


@pytest.mark.parametrize("dtab", LOOPS)
def test_loops_end_in_max_depth(dtab: str) -> None:
    first = read_dtab(dtab).dentries[0].prefix.show()
    with pytest.raises(MaxDepthExceeded) as info:
        bind(read_dtab(dtab), P(first))
    assert str(info.value) == "Max recursion level: 100 reached in Namer lookup"


def test_loop_in_union_member_is_ignored() -> None:
    result = bind(read_dtab(f"/loop => /loop/x; /a => /loop & {A1}"), P("/a"))
    assert show_bound(result) == A1


def test_loop_in_alternative_fails() -> None:
    with pytest.raises(MaxDepthExceeded):
        bind(read_dtab(f"/loop => /loop/x; /a => /loop | {A1}"), P("/a"))


# --- §8.4 examples 9 and 10: per-request overrides ------------------------------------


def test_per_request_override() -> None:
    table = read_dtab(K8S) + local_dtab([], ["/svc/web => /svc/web-v2"])
    assert show_bound(bind(table, P("/svc/web"), namers=k8s())) == "/#/io.l5d.k8s/default/http/web-v2"


def test_per_request_override_without_header_uses_router_dtab() -> None:
    table = read_dtab(K8S) + local_dtab([], [])
    assert show_bound(bind(table, P("/svc/web"), namers=k8s())) == "/#/io.l5d.k8s/default/http/web"


def test_fault_injection_override() -> None:
    table = read_dtab(K8S) + local_dtab([], ["/svc/web => 9 * /svc/web-v1 & 1 * /$/nil"])
    result = bind(table, P("/svc/web"), namers=k8s())
    assert show_bound(result) == "9.00*/#/io.l5d.k8s/default/http/web-v1 & $"
    assert isinstance(result, Union)
    assert [w.weight for w in result.weighted] == [9.0, 1.0]


def test_bind_accepts_a_tree_as_start() -> None:
    result = bind(read_dtab(f"/b => {A1}"), read_tree("/nowhere | /b"))
    assert show_bound(result) == A1
