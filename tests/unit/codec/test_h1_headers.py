"""proxy.codec.headers: hop-by-hop stripping (RFC 9110 §7.6.1) and lookups."""

from __future__ import annotations

from proxy.codec.headers import (
    HOP_BY_HOP,
    connection_options,
    get_all,
    get_first,
    has_token,
    split_tokens,
    strip_hop_by_hop,
)

HEADERS = [
    (b"host", b"h"),
    (b"connection", b"keep-alive, X-Private"),
    (b"keep-alive", b"timeout=5"),
    (b"x-private", b"secret"),
    (b"te", b"trailers"),
    (b"accept", b"a"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"websocket"),
    (b"proxy-connection", b"keep-alive"),
    (b"trailer", b"x-checksum"),
    (b"accept", b"b"),
]


def test_hop_by_hop_set():
    assert {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
            b"transfer-encoding", b"upgrade"} == HOP_BY_HOP  # fmt: skip


def test_strip_removes_hop_by_hop_and_connection_named_fields():
    assert strip_hop_by_hop(HEADERS) == [(b"host", b"h"), (b"accept", b"a"), (b"accept", b"b")]
    assert len(HEADERS) == 11  # input untouched


def test_strip_without_connection_header_returns_a_new_list():
    headers = [(b"host", b"h"), (b"te", b"trailers"), (b"x", b"1")]
    out = strip_hop_by_hop(headers)
    assert out == [(b"host", b"h"), (b"x", b"1")]
    assert out is not headers


def test_strip_with_several_connection_lines():
    headers = [(b"connection", b"a"), (b"a", b"1"), (b"connection", b" B ,, "), (b"b", b"2"), (b"c", b"3")]
    assert strip_hop_by_hop(headers) == [(b"c", b"3")]


def test_lookups():
    assert get_first(HEADERS, b"accept") == b"a"
    assert get_first(HEADERS, b"missing") is None
    assert get_all(HEADERS, b"accept") == [b"a", b"b"]
    assert get_all(HEADERS, b"missing") == []
    assert has_token(HEADERS, b"connection", b"x-private")
    assert has_token(HEADERS, b"connection", b"keep-alive")
    assert not has_token(HEADERS, b"connection", b"close")
    assert not has_token(HEADERS, b"missing", b"close")


def test_tokens():
    assert split_tokens(b" Keep-Alive ,,\tUpgrade ,") == [b"keep-alive", b"upgrade"]
    assert split_tokens(b"") == []
    assert connection_options(HEADERS) == frozenset((b"keep-alive", b"x-private"))
