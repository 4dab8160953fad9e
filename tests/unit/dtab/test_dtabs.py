"""docs/dtab.md §5: dentry and dtab syntax, printing, concatenation and order-based precedence."""

from __future__ import annotations

import pytest

from dtab import NEG, Dentry, Dtab, DtabSyntaxError, Leaf, Prefix, bind, read_dtab, read_prefix, read_tree
from tests.unit.dtab import A, L, P, U, error_location

A1 = "/$/inet/10.0.0.1/80"
A2 = "/$/inet/10.0.0.2/80"


def D(*entries: tuple[str, str]) -> Dtab:
    return Dtab(tuple(Dentry(read_prefix(p), read_tree(t)) for p, t in entries))


# text -> dentries (prefix text, tree text)
PARSE_CASES = [
    ("", ()),
    ("   ", ()),
    ("\n\t\n", ()),
    ("# only a comment", ()),
    ("# one\n# two\n", ()),
    ("/a=>/b", (("/a", "/b"),)),
    ("/a => /b;", (("/a", "/b"),)),  # one trailing ';'
    ("/a => /b ;  ", (("/a", "/b"),)),
    ("  /a=>/b;/c=>/d  ", (("/a", "/b"), ("/c", "/d"))),
    ("/a => /b;\n/c => /d;\n", (("/a", "/b"), ("/c", "/d"))),
    ("/a=>/b;/a=>/c", (("/a", "/b"), ("/a", "/c"))),  # duplicates are kept, in order
    ("/ => !", (("/", "!"),)),
    ("/=>~", (("/", "~"),)),
    ("/a/*/c => /d", (("/a/*/c", "/d"),)),
    ("/\\x2a => /d", (("/\\x2a", "/d"),)),
    ("/a => (/b | /c) & /d", (("/a", "(/b | /c) & /d"),)),
    ("/a => 0.3*/b & 0.7*/c", (("/a", "0.3*/b & 0.7*/c"),)),
    ("/a => /b | /c; /d => $", (("/a", "/b | /c"), ("/d", "$"))),
    # comments (§4.1): '#' right after '/' or inside a label belongs to the label
    ("/#foo => /biz  # note", (("/#foo", "/biz"),)),
    ("/a => /b#x", (("/a", "/b#x"),)),
    ("/a => /b #x\n;/c=>/d", (("/a", "/b"), ("/c", "/d"))),
    ("/a => /b; # note\n/c => /d", (("/a", "/b"), ("/c", "/d"))),
    ("/a=>/b;# trailing comment", (("/a", "/b"),)),
    ("/a # c\n => /b", (("/a", "/b"),)),
    ("/a =># c\n /b", (("/a", "/b"),)),
    (
        "/svc => /#/io.l5d.k8s/default/http; # k8s\n/host/world => /srv/world-v2;\n",
        (("/svc", "/#/io.l5d.k8s/default/http"), ("/host/world", "/srv/world-v2")),
    ),
    (
        "/smitten=>/USA/CA/SF/Octavia/432; /iceCreamStore=>/smitten; /iceCreamStore=>/humphrys",
        (
            ("/smitten", "/USA/CA/SF/Octavia/432"),
            ("/iceCreamStore", "/smitten"),
            ("/iceCreamStore", "/humphrys"),
        ),
    ),
]

# text -> printed (§5.2)
SHOW_CASES = [
    (
        "/svc => /#/io.l5d.k8s/default/http; /host/world => /srv/world-v2;",
        "/svc=>/#/io.l5d.k8s/default/http;/host/world=>/srv/world-v2",
    ),
    ("", ""),
    ("# nothing", ""),
    ("/a => /b", "/a=>/b"),
    ("/a => /b | /c", "/a=>/b | /c"),
    ("/a => 0.3*/b & 0.7*/c", "/a=>0.30*/b & 0.70*/c"),
    ("/a => (/b | /c) & /d", "/a=>(/b | /c) & /d"),
    ("/a/*/c => /d; /\\x2a => /e", "/a/*/c=>/d;/\\x2a=>/e"),
    ("/ => !; /a => ~; /b => $", "/=>!;/a=>~;/b=>$"),
    ("/a=>/b;/a=>/c;/a=>/d", "/a=>/b;/a=>/c;/a=>/d"),
    ("/svc/web => 9 * /svc/web-v1 & 1 * /$/nil", "/svc/web=>9.00*/svc/web-v1 & /$/nil"),
    ("/a => 0.5 * /b", "/a=>/b"),
    ("/#foo => /biz  # note", "/#foo=>/biz"),
]

# §5.1 errors: text -> bracketed location
ERROR_LOCATIONS = [
    ("/a => /b\n/c => /d", "/a => /b\n[/]c => /d"),  # a newline is not a separator
    (";", "[;]"),
    (";/a=>/b", "[;]/a=>/b"),
    ("/a=>/b;;", "/a=>/b;[;]"),
    ("/a=>/b; ;", "/a=>/b; [;]"),
    ("/a=>/b;;/c=>/d", "/a=>/b;[;]/c=>/d"),
    ("/a = > /b", "/a =[ ]> /b"),  # '=>' is one token
    ("/a =", "/a =[]"),
    ("/a", "/a[]"),
    ("/a => ", "/a => []"),
    ("/a /b => /c", "/a [/]b => /c"),
    ("a => /b", "[a] => /b"),
    ("/a -> /b", "/a [-]> /b"),
    ("/a => /b, /c => /d", "/a => /b[,] /c => /d"),  # a comma is not a separator
    ("/a => /b;/c", "/a => /b;/c[]"),
    ("/a => /b/*", "/a => /b/[*]"),
    ("/a* => /b", "/a[*] => /b"),
    ("/a => (/b", "/a => (/b[]"),
]

# (text, expected token) for the '=' / '>' / '/' cases
EXPECTED_TOKENS = [
    ("/a = > /b", "'>'"),
    ("/a /b => /c", "'='"),
    (";", "'/'"),
    ("/a => /b\n/c => /d", "end of input"),
]


@pytest.mark.parametrize(("text", "entries"), PARSE_CASES)
def test_parse(text: str, entries: tuple[tuple[str, str], ...]) -> None:
    table = read_dtab(text)
    assert table == D(*entries)
    assert len(table) == len(entries)
    assert [d.prefix for d in table.dentries] == [read_prefix(p) for p, _ in entries]
    assert [d.dst for d in table.dentries] == [read_tree(t) for _, t in entries]


@pytest.mark.parametrize(("text", "printed"), SHOW_CASES)
def test_show(text: str, printed: str) -> None:
    assert read_dtab(text).show() == printed


@pytest.mark.parametrize(("text", "printed"), SHOW_CASES)
def test_printed_form_reads_back(text: str, printed: str) -> None:
    assert read_dtab(printed) == read_dtab(text)


def test_empty_dtab() -> None:
    assert read_dtab("") == Dtab.EMPTY == Dtab(())
    assert Dtab.EMPTY.show() == ""
    assert len(Dtab.EMPTY) == 0
    assert Dtab.EMPTY.lookup(P("/a")) == NEG


@pytest.mark.parametrize(("text", "location"), ERROR_LOCATIONS)
def test_error_location(text: str, location: str) -> None:
    with pytest.raises(DtabSyntaxError) as info:
        read_dtab(text)
    assert error_location(info.value) == f"'{location}'"
    assert info.value.offset == location.index("[")
    assert info.value.text == text


@pytest.mark.parametrize(("text", "expected"), EXPECTED_TOKENS)
def test_error_names_expected_token(text: str, expected: str) -> None:
    with pytest.raises(DtabSyntaxError) as info:
        read_dtab(text)
    assert str(info.value).startswith(f"{expected} expected but ")


def test_dentry_fields() -> None:
    (dentry,) = read_dtab("/a/* => 2 * /b & /c").dentries
    assert dentry.prefix == Prefix((b"a", None))
    assert dentry.dst == U((2.0, L("/b")), L("/c"))


def test_concatenation_appends_entries() -> None:
    d1 = read_dtab("/a=>/b;/c=>/d")
    d2 = read_dtab("/a=>/e")
    both = d1 + d2
    assert both == read_dtab("/a=>/b;/c=>/d;/a=>/e")
    assert len(both) == 3
    assert (d2 + d1).show() == "/a=>/e;/a=>/b;/c=>/d"
    assert d1 + Dtab.EMPTY == d1 == Dtab.EMPTY + d1


def test_appended_entries_take_precedence() -> None:
    d1 = read_dtab("/a=>/b")
    d2 = read_dtab("/a=>/c")
    assert (d1 + d2).lookup(P("/a/x")) == A(L("/c/x"), L("/b/x"))
    assert (d2 + d1).lookup(P("/a/x")) == A(L("/b/x"), L("/c/x"))


# §5.3: order in the table, not prefix length, decides precedence.
PRECEDENCE = [
    (f"/a/b => {A1}; /a => {A2}", "/a/b", A2, "/b"),
    (f"/a => {A2}; /a/b => {A1}", "/a/b", A1, "/"),
]


@pytest.mark.parametrize(("text", "path", "bound_id", "residual"), PRECEDENCE)
def test_order_decides_precedence(text: str, path: str, bound_id: str, residual: str) -> None:
    result = bind(read_dtab(text), P(path))
    assert isinstance(result, Leaf)
    assert result.value.id == P(bound_id)
    assert result.value.residual == P(residual)


def test_a_weight_too_large_for_a_double_is_a_syntax_error_at_the_number() -> None:
    """A 400-digit weight would be infinite, which no dtab can print back (and an
    override carrying one used to crash the connection while being printed)."""
    import pytest

    from dtab import DtabSyntaxError, read_dtab

    text = "/a => " + "9" * 400 + " * /b & /c"
    with pytest.raises(DtabSyntaxError) as err:
        read_dtab(text)
    assert err.value.offset == len("/a => ") and "finite weight expected" in str(err.value)
