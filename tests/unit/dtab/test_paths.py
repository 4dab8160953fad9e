"""docs/dtab.md §2 (paths): the byte model, reading, printing and the §2.4 parse-error format."""

from __future__ import annotations

import pytest

from dtab import DtabError, DtabSyntaxError, Path, read_path
from tests.unit.dtab import error_location

SHOWABLE = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_:.#$%-"

# §2.3 table: elements -> printed form.
SHOW_CASES = [
    ((b"foo", b"bar"), "/foo/bar"),
    ((), "/"),
    ((b"a b",), "/\\x61\\x20\\x62"),
    ((b"a/b",), "/\\x61\\x2f\\x62"),
    ((b"*",), "/\\x2a"),
    ((b"web:8080",), "/web:8080"),
    (("é".encode(),), "/\\xc3\\xa9"),
    ((b"\xff",), "/\\xff"),
    ((SHOWABLE.encode(),), "/" + SHOWABLE),
    # one non-showable byte escapes the whole element, lower-case hex; others stay plain
    ((b"ok", b"A\x00"), "/ok/\\x41\\x00"),
    ((b"\xab\xcd",), "/\\xab\\xcd"),
]

# text -> elements (successful standalone reads, §2.2)
READ_CASES = [
    ("/", ()),
    ("/foo/bar", (b"foo", b"bar")),
    ("/\\x66\\x6f\\x6F", (b"foo",)),  # escapes of showable bytes
    ("/\\xFF", (b"\xff",)),  # hex digits in either case
    ("/\\xc3\\xa9", ("é".encode(),)),
    ("/web:8080", (b"web:8080",)),
    ("/" + SHOWABLE, (SHOWABLE.encode(),)),
    ("/a\\x2fb", (b"a/b",)),
    ("/\\x2a", (b"*",)),
    ("/#/io.l5d.k8s", (b"#", b"io.l5d.k8s")),
    ("/s#/foo", (b"s#", b"foo")),
    ("/foo#bar", (b"foo#bar",)),  # '#' inside a label is a label character
    ("/$/inet/127.1/8080", (b"$", b"inet", b"127.1", b"8080")),
    # whitespace and comments around a standalone path are skipped (§2.2)
    ("  /foo  ", (b"foo",)),
    ("\t/foo\n", (b"foo",)),
    ("/foo # note", (b"foo",)),
    ("# lead\n/foo", (b"foo",)),
    ("# lead\n /foo # trail\n  ", (b"foo",)),
    (" / ", ()),
]

# §2.4: the three quoted examples, whole message.
FULL_MESSAGES = [
    ("/foo^bar", "end of input expected but '^' found at '/foo[^]bar'"),
    ("/foo/bar/", "label char expected but end of input found at '/foo/bar/[]'"),
    ("invalid-param", "'/' expected but 'i' found at '[i]nvalid-param'"),
]

# Other path errors (§2.2): input -> bracketed location (§2.4 marker).
ERROR_LOCATIONS = [
    ("", "[]"),
    ("a", "[a]"),
    ("foo/bar", "[f]oo/bar"),
    ("/a/", "/a/[]"),
    ("/a//b", "/a/[/]b"),
    ("//", "/[/]"),
    ("/a b", "/a [b]"),
    ("/a /b", "/a [/]b"),  # whitespace is never allowed between elements
    ("/\\X41", "/\\[X]41"),  # upper-case X
    ("/\\x4", "/\\x4[]"),  # one hex digit
    ("/\\x4g", "/\\x4[g]"),
    ("/\\?", "/\\[?]"),
    ("/a\\", "/a\\[]"),
    ("/a*", "/a[*]"),
    ("/é", "/[é]"),  # non-ASCII only as escapes
    ("/a/é", "/a/[é]"),
    ("/a!", "/a[!]"),
    ("/a|b", "/a[|]b"),
    ("/a=>/b", "/a[=]>/b"),
    ("   ", "   []"),
    ("# only a comment", "# only a comment[]"),
]

# characters that §2.2 says can only appear as escapes
NOT_SHOWABLE = " *~!+@=&|();,?[]{}'\"^\\"


@pytest.mark.parametrize(("elems", "printed"), SHOW_CASES)
def test_show(elems: tuple[bytes, ...], printed: str) -> None:
    assert Path(elems).show() == printed


@pytest.mark.parametrize(("elems", "printed"), SHOW_CASES)
def test_show_then_read_is_exact(elems: tuple[bytes, ...], printed: str) -> None:
    assert read_path(printed) == Path(elems)
    assert read_path(printed).elems == elems


@pytest.mark.parametrize(("text", "elems"), READ_CASES)
def test_read(text: str, elems: tuple[bytes, ...]) -> None:
    path = read_path(text)
    assert path == Path(elems)
    assert all(isinstance(e, bytes) for e in path.elems)


def test_path_read_and_of_agree_with_read_path() -> None:
    assert Path.read("/foo/bar") == read_path("/foo/bar") == Path.of("foo", "bar")
    assert Path.of(b"\xff") == Path((b"\xff",))


@pytest.mark.parametrize("char", list(SHOWABLE))
def test_every_showable_char_prints_plain(char: str) -> None:
    assert Path.of(char).show() == "/" + char
    assert read_path("/" + char) == Path.of(char)


@pytest.mark.parametrize("char", list(NOT_SHOWABLE))
def test_non_showable_char_prints_escaped_and_is_rejected_raw(char: str) -> None:
    elem = ("x" + char + "y").encode()
    assert Path((elem,)).show() == "/" + "".join(f"\\x{b:02x}" for b in elem)
    with pytest.raises(DtabSyntaxError):
        read_path("/x" + char + "y")


@pytest.mark.parametrize("byte", [0, 0x1F, 0x7F, 0x80, 0xFF])
def test_control_and_high_bytes_escape_lowercase(byte: int) -> None:
    assert Path((bytes([byte]),)).show() == f"/\\x{byte:02x}"


def test_equality_is_bytewise() -> None:
    assert read_path("/a") != read_path("/A")
    assert read_path("/\\x41") == read_path("/A")
    assert read_path("/a/b") != read_path("/a\\x2fb")  # one element vs two


def test_concatenation_and_length() -> None:
    assert read_path("/a/b") + read_path("/c") == read_path("/a/b/c")
    assert read_path("/") + read_path("/c") == read_path("/c")
    assert read_path("/c") + read_path("/") == read_path("/c")
    assert len(read_path("/a/b/c")) == 3
    assert len(read_path("/")) == 0


@pytest.mark.parametrize(("text", "message"), FULL_MESSAGES)
def test_quoted_error_messages(text: str, message: str) -> None:
    with pytest.raises(DtabSyntaxError) as info:
        read_path(text)
    assert str(info.value) == message
    assert info.value.text == text


@pytest.mark.parametrize(
    ("text", "location"), ERROR_LOCATIONS + [(t, m.split(" at ")[1][1:-1]) for t, m in FULL_MESSAGES]
)
def test_error_location(text: str, location: str) -> None:
    with pytest.raises(DtabSyntaxError) as info:
        read_path(text)
    err = info.value
    assert error_location(err) == f"'{location}'"
    # the offset is the index of the bracketed character (len(text) at the end)
    assert err.offset == location.index("[")
    assert err.text == text
    assert " expected but " in str(err)


def test_syntax_error_is_a_dtab_error_and_value_error() -> None:
    with pytest.raises(DtabError):
        read_path("nope")
    with pytest.raises(ValueError):
        read_path("nope")


@pytest.mark.parametrize(
    ("text", "expected", "found"),
    [
        ("", "'/'", "end of input"),
        ("/\\X41", "'x'", "'X'"),
        ("/\\x4g", "hex char", "'g'"),
        ("/a//b", "label char", "'/'"),
    ],
)
def test_error_names_expected_and_found(text: str, expected: str, found: str) -> None:
    with pytest.raises(DtabSyntaxError) as info:
        read_path(text)
    assert str(info.value).startswith(f"{expected} expected but {found} found at ")
