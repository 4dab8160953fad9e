"""docs/dtab.md §6.2: the `/$` global namer — inet shapes, fail/nil, unknown names, and Linkerd's
optional `io.buoyant.*` rewriting namers (the re-entry mechanism itself is required)."""

from __future__ import annotations

import pytest

from dtab import (
    EMPTY,
    FAIL,
    NEG,
    Bound,
    Inet,
    Leaf,
    NameTree,
    UnknownNamer,
    bind,
    read_dtab,
    system_lookup,
)
from tests.unit.dtab import P, show_bound

# path -> (bound id, residual, host or None when unspecified (localhost), port)
INET_CASES = [
    ("/$/inet/10.0.0.1/80", "/$/inet/10.0.0.1/80", "/", "10.0.0.1", 80),
    ("/$/inet/10.0.0.1/80/a/b", "/$/inet/10.0.0.1/80", "/a/b", "10.0.0.1", 80),
    ("/$/inet/127.1/8080", "/$/inet/127.1/8080", "/", "127.1", 8080),  # host text verbatim
    ("/$/inet/web.example.com/443/x", "/$/inet/web.example.com/443", "/x", "web.example.com", 443),
    ("/$/inet/1234/5678", "/$/inet/1234/5678", "/", "1234", 5678),  # 4-element form first
    ("/$/inet/8080", "/$/inet/8080", "/", None, 8080),  # no host: localhost
    ("/$/inet/8080/x/y", "/$/inet/8080", "/x/y", None, 8080),  # "x" is no port, so 3-element form
    ("/$/fixedinet/10.0.0.1/80/x", "/$/fixedinet/10.0.0.1/80", "/x", "10.0.0.1", 80),
    ("/$/fixedinet/8080", "/$/fixedinet/8080", "/", None, 8080),
    ("/$/fixedinet/1234/5678/z", "/$/fixedinet/1234/5678", "/z", "1234", 5678),
]

# path -> atom
ATOM_CASES: list[tuple[str, NameTree]] = [
    ("/$/fail", FAIL),
    ("/$/fail/x", FAIL),
    ("/$/fail/x/y/z", FAIL),
    ("/$/nil", EMPTY),
    ("/$/nil/x", EMPTY),
    ("/$/nil/x/y", EMPTY),
    ("/", NEG),
    ("/foo", NEG),
    ("/foo/$/inet/1.2.3.4/80", NEG),
    ("/#/io.l5d.fs/web", NEG),  # the global namer answers Neg for /# paths
    ("/inet/10.0.0.1/80", NEG),
    ("/%24/inet/1.2.3.4/80", NEG),  # no URL decoding
]

# paths that fall to the /$/<name> rule with no such namer: an error, not Neg
UNKNOWN_CASES = [
    "/$/inet",
    "/$/inet/localhost/http",  # non-numeric port
    "/$/inet/localhost",
    "/$/fixedinet",
    "/$/nosuchnamer",
    "/$/nosuchnamer/x",
    "/$/com.twitter.finagle.Whatever/x",
]


@pytest.mark.parametrize(("path", "bound_id", "residual", "host", "port"), INET_CASES)
def test_inet_shapes(path: str, bound_id: str, residual: str, host: str | None, port: int) -> None:
    tree = system_lookup(P(path))
    assert isinstance(tree, Leaf)
    bound = tree.value
    assert isinstance(bound, Bound)
    assert bound.id == P(bound_id)
    assert bound.residual == P(residual)
    assert isinstance(bound.addr, Inet)
    assert bound.addr.port == port
    if host is not None:
        assert bound.addr == Inet(host, port)


@pytest.mark.parametrize(("path", "tree"), ATOM_CASES)
def test_atoms(path: str, tree: NameTree) -> None:
    assert system_lookup(P(path)) == tree


@pytest.mark.parametrize("path", UNKNOWN_CASES)
def test_unknown_namer_is_an_error(path: str) -> None:
    with pytest.raises(UnknownNamer):
        system_lookup(P(path))


@pytest.mark.parametrize("path", UNKNOWN_CASES)
def test_unknown_namer_fails_bind(path: str) -> None:
    with pytest.raises(UnknownNamer):
        bind(read_dtab("/a => " + path), P("/a"))


def test_bound_ids_compare_by_id_and_residual_not_addr() -> None:
    assert Bound(P("/x"), P("/r"), addr=Inet("a", 1)) == Bound(P("/x"), P("/r"), addr=Inet("b", 2))
    assert Bound(P("/x")) == Bound(P("/x"), P("/"))
    assert Bound(P("/x"), P("/r")) != Bound(P("/x"), P("/s"))
    assert Bound(P("/x")) != Bound(P("/y"))


def test_bind_through_inet_keeps_short_host_in_id() -> None:
    result = bind(read_dtab("/svc => /$/inet/127.1/8080"), P("/svc/a"))
    assert show_bound(result) == "/$/inet/127.1/8080"
    assert isinstance(result, Leaf)
    assert result.value.residual == P("/a")


# --- optional io.buoyant.* rewriting namers ------------------------------------------

# (namer, residual given to it, expected rewritten path or "~")
REWRITES = [
    ("io.buoyant.hostportPfx", "/pfx/web:8080/rest", "/pfx/web/8080/rest"),
    ("io.buoyant.hostportPfx", "/pfx/web:http", "/pfx/web/http"),
    ("io.buoyant.hostportPfx", "/pfx/a:b:c/x", "~"),
    ("io.buoyant.hostportPfx", "/pfx/web/x", "~"),
    ("io.buoyant.hostportPfx", "/pfx/web:" + "p" * 63, "/pfx/web/" + "p" * 63),
    ("io.buoyant.hostportPfx", "/pfx/web:" + "p" * 64, "~"),
    ("io.buoyant.hostportPfx", "/pfx", "~"),
    ("io.buoyant.porthostPfx", "/pfx/web:8080/rest", "/pfx/8080/web/rest"),
    ("io.buoyant.porthostPfx", "/pfx/a:b:c", "~"),
    ("io.buoyant.http.anyMethod", "/GET/svc/x", "/svc/x"),
    ("io.buoyant.http.anyMethod", "/DELETE/a", "/a"),
    ("io.buoyant.http.anyMethod", "/get/svc", "~"),
    ("io.buoyant.http.anyMethod", "/G3T/svc", "~"),
    ("io.buoyant.http.anyMethodPfx", "/pfx/POST/a/b", "/pfx/a/b"),
    ("io.buoyant.http.anyMethodPfx", "/pfx/post/a", "~"),
    ("io.buoyant.http.anyHost", "/foo.buoyant.io/resource/name", "/resource/name"),
    ("io.buoyant.http.anyHost", "/web:8080/x", "/x"),
    ("io.buoyant.http.anyHost", "/we_b-1.x/y", "/y"),
    ("io.buoyant.http.anyHost", "/\\x61\\x20\\x62/x", "~"),
    ("io.buoyant.http.anyHostPfx", "/pfx/foo.buoyant.io/resource/name", "/pfx/resource/name"),
    ("io.buoyant.http.anyHostPfx", "/pfx/\\x61\\x2f/x", "~"),
    ("io.buoyant.http.subdomainOf", "/buoyant.io/foo.buoyant.io/resource/name", "/foo/resource/name"),
    ("io.buoyant.http.subdomainOf", "/buoyant.io/foo.buoyant.io:8080/r", "/foo/r"),
    ("io.buoyant.http.subdomainOf", "/buoyant.io/foo.example.com/r", "~"),
    ("io.buoyant.http.subdomainOf", "/buoyant.io/buoyant.io/r", "~"),
    (
        "io.buoyant.http.subdomainOfPfx",
        "/buoyant.io/pfx/foo.buoyant.io/resource/name",
        "/pfx/foo/resource/name",
    ),
    ("io.buoyant.http.subdomainOfPfx", "/buoyant.io/pfx/foo.buoyant.io:80/r", "/pfx/foo/r"),
    ("io.buoyant.http.subdomainOfPfx", "/buoyant.io/pfx/foo.other.io/r", "~"),
    ("io.buoyant.http.domainToPath", "/foo.buoyant.io/resource/name", "/io/buoyant/foo/resource/name"),
    ("io.buoyant.http.domainToPath", "/localhost/x", "/localhost/x"),
    (
        "io.buoyant.http.domainToPathPfx",
        "/pfx/foo.buoyant.io/resource/name",
        "/pfx/io/buoyant/foo/resource/name",
    ),
]


def _optional(path: str) -> NameTree:
    try:
        return system_lookup(P(path))
    except UnknownNamer:
        pytest.skip("io.buoyant.* namers are optional (docs/dtab.md §6.2) and not implemented")


@pytest.mark.parametrize(("name", "residual", "expected"), REWRITES)
def test_rewriting_namer(name: str, residual: str, expected: str) -> None:
    tree = _optional(f"/$/{name}{residual}")
    if expected == "~":
        assert tree == NEG
    else:
        assert tree == Leaf(P(expected))  # an unbound path, to be bound again


@pytest.mark.parametrize("name", sorted({r[0] for r in REWRITES}))
def test_rewriting_namer_empty_input_is_neg(name: str) -> None:
    assert _optional(f"/$/{name}") == NEG


def test_rinet() -> None:
    tree = _optional("/$/io.buoyant.rinet/8080/10.0.0.1")
    assert isinstance(tree, Leaf)
    assert isinstance(tree.value, Bound)
    assert tree.value.id == P("/$/io.buoyant.rinet/8080/10.0.0.1")
    assert tree.value.addr == Inet("10.0.0.1", 8080)
    assert _optional("/$/io.buoyant.rinet/8080") == NEG


def test_rewritten_path_reenters_the_dtab() -> None:
    _optional("/$/io.buoyant.http.anyMethodPfx/svc2/GET/web")
    table = read_dtab("/svc => /$/io.buoyant.http.anyMethodPfx/svc2; /svc2/web => /$/inet/10.0.0.1/80")
    assert show_bound(bind(table, P("/svc/GET/web"))) == "/$/inet/10.0.0.1/80"
    table = read_dtab("/http => /$/io.buoyant.hostportPfx/inet; /inet => /$/inet")
    result = bind(table, P("/http/10.0.0.9:8080/rest"))
    assert show_bound(result) == "/$/inet/10.0.0.9/8080"
    assert isinstance(result, Leaf)
    assert result.value.residual == P("/rest")
