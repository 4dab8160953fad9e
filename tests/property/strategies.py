"""Hypothesis strategies for the routing language: paths with arbitrary byte elements,
prefixes with wildcards, name trees (weights, atoms, nesting, and the one- and zero-member
nodes only hand-built trees have), and dtabs with duplicate and overlapping prefixes.

Two alphabets: `elems()` draws any non-empty bytes (for printing/reading), `small_elems()`
draws from a handful of labels so that generated dtabs and paths actually match each other.
"""

from __future__ import annotations

from hypothesis import strategies as st

from dtab import EMPTY, FAIL, NEG, Alt, Dentry, Dtab, Leaf, NameTree, Path, Prefix, Union, Weighted

#: a few labels, including ones with meaning ('$' for system paths, '#' for namers)
SMALL_LABELS = (b"a", b"b", b"c", b"$", b"#")

#: system destinations the binder resolves without a dtab entry (§6.2), plus an unknown namer
SYSTEM_LEAVES = (
    "/$/inet/127.0.0.1/8080",
    "/$/inet/9090",
    "/$/inet/10.0.0.1/80/extra",
    "/$/nil",
    "/$/fail",
    "/$/nosuchnamer",
)


def elems() -> st.SearchStrategy[bytes]:
    """Any non-empty byte string, biased towards showable text and single odd bytes."""
    return st.one_of(
        st.binary(min_size=1, max_size=6),
        st.text(
            alphabet="abcXYZ019_:.#$%-",
            min_size=1,
            max_size=6,
        ).map(str.encode),
        st.sampled_from([b"*", b"/", b" ", b"\\", b"\x00", b"\xff", "é".encode(), b"#", b"$"]),
    )


def small_elems() -> st.SearchStrategy[bytes]:
    return st.sampled_from(SMALL_LABELS)


def paths(elem: st.SearchStrategy[bytes] | None = None, max_size: int = 5) -> st.SearchStrategy[Path]:
    return st.lists(elem if elem is not None else elems(), max_size=max_size).map(lambda es: Path(tuple(es)))


def prefixes(elem: st.SearchStrategy[bytes] | None = None, max_size: int = 4) -> st.SearchStrategy[Prefix]:
    item = st.one_of(st.none(), elem if elem is not None else elems())
    return st.lists(item, max_size=max_size).map(lambda es: Prefix(tuple(es)))


def exact_weights() -> st.SearchStrategy[float]:
    """Non-negative weights with at most two decimals, so printing loses nothing."""
    return st.one_of(
        st.just(1.0),
        st.integers(min_value=0, max_value=100_000).map(lambda k: k / 100),
    )


def any_weights() -> st.SearchStrategy[float]:
    """Any finite non-negative weight of a sane size (printing rounds these)."""
    return st.one_of(
        exact_weights(),
        st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False).map(abs),
        st.sampled_from([0.125, 2.675, 0.005, 1.005, 0.015, 0.999, 1.001, 1e-7]),
    )


def atoms() -> st.SearchStrategy[NameTree]:
    return st.sampled_from([NEG, FAIL, EMPTY])


def name_trees(
    leaf_paths: st.SearchStrategy[Path] | None = None,
    weights: st.SearchStrategy[float] | None = None,
    *,
    canonical: bool = True,
    max_leaves: int = 12,
) -> st.SearchStrategy[NameTree]:
    """Trees of `Leaf(Path)`, atoms, `Alt` and `Union`, nested.

    canonical=True: every Alt/Union has at least two members, which is what the parser
    makes (so read(show(t)) == t holds when weights are exact). canonical=False also makes
    zero- and one-member nodes (hand-built trees; docs/dtab.md §4.4 rule 1, §9.1).
    """
    leaf = (leaf_paths if leaf_paths is not None else paths()).map(Leaf)
    weight = weights if weights is not None else exact_weights()
    base = st.one_of(leaf, leaf, atoms())
    min_members = 2 if canonical else 0

    def extend(children: st.SearchStrategy[NameTree]) -> st.SearchStrategy[NameTree]:
        alts = st.lists(children, min_size=min_members, max_size=4).map(lambda ts: Alt(tuple(ts)))
        unions = st.lists(st.builds(Weighted, weight, children), min_size=min_members, max_size=4).map(
            lambda ws: Union(tuple(ws))
        )
        return st.one_of(alts, unions)

    return st.recursive(base, extend, max_leaves=max_leaves)


def showable_trees(weights: st.SearchStrategy[float] | None = None) -> st.SearchStrategy[NameTree]:
    """Trees whose printed form is defined: no zero-member nodes (one-member nodes allowed)."""
    leaf = paths().map(Leaf)
    weight = weights if weights is not None else any_weights()

    def extend(children: st.SearchStrategy[NameTree]) -> st.SearchStrategy[NameTree]:
        alts = st.lists(children, min_size=1, max_size=4).map(lambda ts: Alt(tuple(ts)))
        unions = st.lists(st.builds(Weighted, weight, children), min_size=1, max_size=4).map(
            lambda ws: Union(tuple(ws))
        )
        return st.one_of(alts, unions)

    return st.recursive(st.one_of(leaf, atoms()), extend, max_leaves=10)


def dtabs(
    elem: st.SearchStrategy[bytes] | None = None,
    dst: st.SearchStrategy[NameTree] | None = None,
    *,
    max_entries: int = 8,
) -> st.SearchStrategy[Dtab]:
    """Dtabs whose prefixes come from a small pool, so entries repeat and overlap
    (including the empty prefix and wildcards)."""
    el = elem if elem is not None else small_elems()
    dst_trees = dst if dst is not None else name_trees(paths(el, max_size=3), max_leaves=4)
    # strategies are built once, here: building them inside a draw is slow
    pool_s = st.lists(prefixes(el, max_size=3), min_size=1, max_size=4)
    entries_s = st.lists(st.tuples(st.integers(0, 4), dst_trees), max_size=max_entries)

    def assemble(parts: tuple[list[Prefix], bool, list[tuple[int, NameTree]]]) -> Dtab:
        pool, with_empty, entries = parts
        if with_empty:
            pool = [*pool, Prefix(())]
        return Dtab(tuple(Dentry(pool[i % len(pool)], tree) for i, tree in entries))

    return st.tuples(pool_s, st.booleans(), entries_s).map(assemble)


def routing_trees(max_leaves: int = 3) -> st.SearchStrategy[NameTree]:
    """Small destination trees for bind properties: small-alphabet paths and system paths."""
    from dtab import read_path

    leaf_path = st.one_of(
        paths(small_elems(), max_size=3),
        paths(small_elems(), max_size=3),
        st.sampled_from(SYSTEM_LEAVES).map(read_path),
    )
    return name_trees(leaf_path, exact_weights(), canonical=False, max_leaves=max_leaves)


def routing_dtabs() -> st.SearchStrategy[Dtab]:
    return dtabs(small_elems(), routing_trees(), max_entries=5)


def dtab_and_path(table: st.SearchStrategy[Dtab] | None = None) -> st.SearchStrategy[tuple[Dtab, Path]]:
    """A dtab and a path that often matches it: one of its prefixes with every wildcard
    filled in, plus a random suffix (or sometimes an unrelated path)."""
    el = small_elems()
    choice = st.tuples(
        table if table is not None else dtabs(),
        st.integers(0, 4),  # 0: an unrelated path
        st.integers(0, 7),  # which dentry's prefix
        st.lists(el, min_size=4, max_size=4),  # wildcard fillers
        st.lists(el, max_size=3),  # suffix
        paths(el, max_size=4),
    )

    def assemble(parts: tuple[Dtab, int, int, list[bytes], list[bytes], Path]) -> tuple[Dtab, Path]:
        d, mode, index, fill, tail, other = parts
        if not d.dentries or mode == 0:
            return d, other
        prefix = d.dentries[index % len(d.dentries)].prefix
        head = tuple(fill[i % len(fill)] if e is None else e for i, e in enumerate(prefix.elems))
        return d, Path(head + tuple(tail))

    return choice.map(assemble)
