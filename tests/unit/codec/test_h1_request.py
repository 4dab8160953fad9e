"""RequestReader: framing, strictness (each rule pinned to an input), limits, pipelining,
upgrades, and split-feed equivalence."""

from __future__ import annotations

import pytest

from proxy.codec import h1
from proxy.codec.h1 import Body, EndOfMessage, RequestHead, RequestReader
from proxy.errors import LocalProtocolError, PeerProtocolError


def merged(events):
    """Adjacent Body events joined: how a body is split depends on the feeds."""
    out = []
    for ev in events:
        if isinstance(ev, Body) and out and isinstance(out[-1], Body):
            out[-1] = Body(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def parse(data: bytes, **limits):
    """Events from one feed, checked equal to the events of a byte-at-a-time feed."""
    whole = merged(RequestReader(**limits).feed(data))
    reader = RequestReader(**limits)
    pieces = []
    for i in range(len(data)):
        pieces += reader.feed(data[i : i + 1])
    assert merged(pieces) == whole
    return whole


def reject(data: bytes, **limits) -> PeerProtocolError:
    """The error for `data`, fed whole and byte by byte (same status both ways)."""
    with pytest.raises(PeerProtocolError) as whole:
        RequestReader(**limits).feed(data)
    reader = RequestReader(**limits)
    with pytest.raises(PeerProtocolError) as split:
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
    assert split.value.status == whole.value.status
    return whole.value


GET = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n"


def test_simple_get():
    head, end = parse(GET)
    assert head == RequestHead(b"GET", b"/a?b=c", b"1.1", [(b"host", b"example.com"), (b"user-agent", b"t")])
    assert end == EndOfMessage(None)
    assert head.keep_alive and not head.chunked and head.content_length is None


def test_names_lowercased_values_stripped_order_kept():
    (head, _) = parse(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-B:  two words \t \r\nx-a:\t1\r\nX-B: 3\r\nEmpty:\r\n\r\n"
    )
    assert head.headers == [
        (b"host", b"h"),
        (b"x-b", b"two words"),
        (b"x-a", b"1"),
        (b"x-b", b"3"),
        (b"empty", b""),
    ]


def test_obs_text_in_values_is_kept():
    (head, _) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9\tok\r\n\r\n")
    assert head.headers[1] == (b"x", b"caf\xc3\xa9\tok")


def test_content_length_body():
    events = parse(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
    assert events[0].content_length == 5 and not events[0].chunked
    assert events[1:] == [Body(b"hello"), EndOfMessage()]


def test_content_length_zero_and_leading_zeros():
    assert parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")[1:] == [EndOfMessage()]
    events = parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 003\r\n\r\nabc")
    assert events[0].content_length == 3 and events[1] == Body(b"abc")


def test_body_waits_for_all_bytes():
    reader = RequestReader()
    events = reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello")
    assert [type(e) for e in events] == [RequestHead, Body]
    assert reader.feed(b"world") == [Body(b"world"), EndOfMessage()]


def test_chunked_with_extensions_and_trailers():
    events = parse(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;name=value;q="quoted ext"\r\nhello\r\n'
        b"6;x\r\n world\r\n"
        b"0;last=1\r\nX-Checksum: abc \r\nX-Other: 1\r\n\r\n"
    )
    assert events[0].chunked and events[0].content_length is None
    assert events[1:] == [
        Body(b"hello world"),
        EndOfMessage([(b"x-checksum", b"abc"), (b"x-other", b"1")]),
    ]


def test_chunked_without_trailers_and_uppercase_hex():
    events = parse(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n"
    )
    assert events[1:] == [Body(b"0123456789"), EndOfMessage(None)]


def test_transfer_encoding_lines_form_one_list():
    # RFC 9110 §5.3: field lines with the same name are one comma-separated list.
    err = reject(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert err.status == 501
    assert reject(BASE + b"Transfer-Encoding:\r\n\r\n").status == 400


def test_pipelined_requests_in_one_feed_come_in_order():
    data = (
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"PUT /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
        b"HEAD /4 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    events = parse(data)
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [(h.method, h.target) for h in heads] == [
        (b"GET", b"/1"),
        (b"POST", b"/2"),
        (b"PUT", b"/3"),
        (b"HEAD", b"/4"),
    ]
    assert [type(e).__name__ for e in events] == [
        "RequestHead", "EndOfMessage",
        "RequestHead", "Body", "EndOfMessage",
        "RequestHead", "Body", "EndOfMessage",
        "RequestHead", "EndOfMessage",
    ]  # fmt: skip


def test_leading_empty_line_is_ignored():
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request.
    assert parse(b"\r\n" + GET)[0].target == b"/a?b=c"


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive", True),
        (b"1.1", b"foo, Close", False),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
        (b"1.0", b"foo,keep-alive", True),
        (b"1.0", b"close", False),
    ],
)
def test_keep_alive(version, connection, keep_alive):
    data = b"GET / HTTP/" + version + b"\r\nHost: h\r\n"
    if connection is not None:
        data += b"Connection: " + connection + b"\r\n"
    head = parse(data + b"\r\n")[0]
    assert head.version == version
    assert head.keep_alive is keep_alive


def test_input_after_a_closing_request_is_ignored():
    reader = RequestReader()
    events = reader.feed(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert reader.feed(b"garbage that would not parse") == []


def test_http10_without_host_gets_an_empty_one():
    # RFC 9112 §3.2: Host is required in HTTP/1.1 only; the request goes upstream as
    # HTTP/1.1, which carries an empty Host when the target has no authority.
    head = parse(b"GET / HTTP/1.0\r\n\r\n")[0]
    assert head.version == b"1.0" and head.headers == [(b"host", b"")] and head.plain
    assert parse(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")[0].headers == [(b"host", b"h")]


def test_absolute_form_asterisk_form_and_empty_host():
    assert parse(b"GET http://x.test/p?q HTTP/1.1\r\nHost: x.test\r\n\r\n")[0].target == (
        b"http://x.test/p?q"
    )
    assert parse(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")[0].target == b"*"
    assert parse(b"GET / HTTP/1.1\r\nHost:\r\n\r\n")[0].headers == [(b"host", b"")]
    assert parse(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")[0].headers == [(b"host", b"[::1]:8080")]


@pytest.mark.parametrize(
    ("expect", "version", "flag"),
    [(b"100-continue", b"1.1", True), (b"100-Continue", b"1.1", True),
     (b"100-continue", b"1.0", False), (b"something", b"1.1", False)],
)  # fmt: skip
def test_expect_continue(expect, version, flag):
    data = b"POST / HTTP/" + version + b"\r\nHost: h\r\nExpect: " + expect
    head = parse(data + b"\r\nContent-Length: 1\r\n\r\nx")[0]
    assert head.expect_continue is flag


def test_expect_continue_absent():
    assert parse(GET)[0].expect_continue is False


# Strictness: every rule below is something llhttp, a backend or a cache could read
# differently from us. Each input must be refused with a status, not guessed at.

BASE = b"POST / HTTP/1.1\r\nHost: h\r\n"


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        # RFC 9112 §6.1 / §6.3: Content-Length and Transfer-Encoding together.
        (BASE + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "Content-Length"),
        (BASE + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, "Content-Length"),
        (BASE + b"Transfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello", 400, "Content-Length"),
        # Content-Length values.
        (BASE + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400, "Content-Length"),
        (BASE + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400, "Content-Length"),
        (BASE + b"Content-Length: 5, 5\r\n\r\nhello", 400, "Content-Length"),
        (BASE + b"Content-Length: +5\r\n\r\nhello", 400, "Content-Length"),
        (BASE + b"Content-Length: -1\r\n\r\nhello", 400, "Content-Length"),
        (BASE + b"Content-Length: 0x5\r\n\r\nhello", 400, "Content-Length"),
        (BASE + b"Content-Length: \r\n\r\nhello", 400, "Content-Length"),
        (BASE + b"Content-Length: 1 2\r\n\r\nhello", 400, "Content-Length"),
        (BASE + b"Content-Length: 99999999999999999999999\r\n\r\n", 400, "Content-Length"),
        # Transfer codings.
        (BASE + b"Transfer-Encoding: gzip\r\n\r\nhello", 400, "chunked"),
        (BASE + b"Transfer-Encoding: chunked, gzip\r\n\r\nhello", 400, "Transfer-Encoding"),
        (BASE + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, "Transfer-Encoding"),
        (BASE + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "Transfer-Encoding"),
        (BASE + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "transfer coding"),
        (BASE + b"Transfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n", 501, "transfer coding"),
        (BASE + b"Transfer-Encoding: identity\r\n\r\n", 400, "chunked"),
        (BASE + b"Transfer-Encoding: chunked;x=1\r\n\r\n0\r\n\r\n", 400, "chunked"),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "HTTP/1.0"),
        # Line endings and field syntax.
        (BASE + b"X: a\r\n b\r\n\r\n", 400, "whitespace"),  # obs-fold
        (BASE + b"X: a\r\n\tb\r\n\r\n", 400, "whitespace"),  # obs-fold with a tab
        (b"GET / HTTP/1.1\nHost: h\r\n\r\n", 400, "malformed"),  # bare LF after the start line
        (BASE + b"X: a\n\r\n", 400, "malformed"),  # bare LF after a field
        (BASE + b"X: a\r\n\n", 400, "malformed"),  # bare LF for the empty line
        (BASE + b"X: a\rb\r\n\r\n", 400, "malformed"),  # bare CR in a value
        (BASE + b"X: a\x00b\r\n\r\n", 400, "malformed"),  # NUL in a value
        (BASE + b"X: a\x01b\r\n\r\n", 400, "malformed"),  # CTL in a value
        (BASE + b"X: a\x7fb\r\n\r\n", 400, "malformed"),  # DEL in a value
        (BASE + b"X : a\r\n\r\n", 400, "malformed"),  # whitespace before the colon
        (BASE + b"X\t: a\r\n\r\n", 400, "malformed"),
        (BASE + b"X(: a\r\n\r\n", 400, "malformed"),  # separator in a name
        (BASE + b"X\x80: a\r\n\r\n", 400, "malformed"),  # non-ASCII in a name
        (BASE + b": a\r\n\r\n", 400, "malformed"),  # empty name
        (BASE + b"No colon\r\n\r\n", 400, "malformed"),
        (b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400, "malformed"),  # space before the first field
        # Chunk framing.
        (BASE + b"Transfer-Encoding: chunked\r\n\r\ng\r\nhello\r\n0\r\n\r\n", 400, "chunk"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400, "chunk"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400, "chunk"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", 400, "chunk"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n\r\n0\r\n\r\n", 400, "chunk"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", 400, "overflow"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n", 400, "extension"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n5;a b\r\nhello\r\n0\r\n\r\n", 400, "malformed"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400, "malformed"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n", 400, "chunk data"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n", 400, "chunk data"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", 400, "chunk data"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\n", 400, "malformed"),
        (BASE + b"Transfer-Encoding: chunked\r\n\r\n0\r\nT: a\x00\r\n\r\n", 400, "malformed"),
        # Request line.
        (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "method"),
        (b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "method"),
        (b" GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "method"),
        (b"GET /\r\nHost: h\r\n\r\n", 400, "version"),  # no version (HTTP/0.9 style)
        (b"GET / HTTP/0.9\r\nHost: h\r\n\r\n", 400, "version"),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 400, "version"),
        (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 400, "version"),
        (b"GET / http/1.1\r\nHost: h\r\n\r\n", 400, "malformed"),
        (b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400, "malformed"),
        (b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400, "malformed"),
        (b"GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 400, "malformed"),
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 400, "malformed"),
        (b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n", 400, "malformed"),
        (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400, "target"),
        (b"CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n", 400, "target"),
        (b"CONNECT h HTTP/1.1\r\nHost: h\r\n\r\n", 400, "target"),
        (b"CONNECT h:x HTTP/1.1\r\nHost: h\r\n\r\n", 400, "target"),
        (b"DESCRIBE / RTSP/1.0\r\nHost: h\r\n\r\n", 400, "method"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "malformed"),
        # Host (RFC 9112 §3.2).
        (b"GET / HTTP/1.1\r\n\r\n", 400, "missing Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "more than one Host"),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host"),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "Host"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "Host"),
        (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400, "Host"),
        # CONNECT has no content (RFC 9110 §9.3.6).
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 2\r\n\r\nab", 400, "CONNECT"),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "CONNECT"),
        # An upgrade body we cannot delimit.
        (b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, "upgrade"),
    ],
)  # fmt: skip
def test_rejected(data, status, words):
    err = reject(data)
    assert err.status == status
    assert words.lower() in str(err).lower()


def test_error_is_sticky():
    reader = RequestReader()
    with pytest.raises(PeerProtocolError) as first:
        reader.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(PeerProtocolError) as again:
        reader.feed(GET)
    assert again.value is first.value


def test_an_error_after_good_requests_still_raises():
    reader = RequestReader()
    with pytest.raises(PeerProtocolError):
        reader.feed(GET + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")


# Limits.


def test_header_bytes_limit_431_names_the_limit():
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 2000 + b"\r\n\r\n"
    err = reject(big, max_header_bytes=1024)
    assert err.status == 431
    assert str(err) == "request header fields too large: more than 1024 bytes"


def test_header_bytes_limit_counts_all_fields():
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 90) for i in range(20))
    err = reject(b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n", max_header_bytes=1024)
    assert err.status == 431


def test_header_bytes_under_the_limit_pass_even_when_fed_in_pieces():
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 900 + b"\r\n\r\n"
    assert parse(data, max_header_bytes=1024)[0].headers[1] == (b"x", b"a" * 900)


def test_big_body_does_not_count_as_head():
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + b"b" * 5000
    events = RequestReader(max_header_bytes=1024).feed(data)
    assert events[1] == Body(b"b" * 5000)


def test_incomplete_head_is_bounded_across_feeds():
    reader = RequestReader(max_header_bytes=1024)
    reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX: ")
    with pytest.raises(PeerProtocolError) as exc:
        for _ in range(100):
            reader.feed(b"a" * 100)  # never ends: must fail long before memory grows
    assert exc.value.status == 431


def test_header_count_limit():
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(10))
    err = reject(b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n", max_headers=10)
    assert err.status == 431
    assert str(err) == "request header fields too large: more than 10 header fields"
    assert parse(b"GET / HTTP/1.1\r\nHost: h\r\n" + fields[:-8] + b"\r\n", max_headers=10)


def test_target_limit_414():
    err = reject(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: h\r\n\r\n", max_target=64)
    assert err.status == 414
    assert "64" in str(err)
    assert parse(b"GET /" + b"a" * 63 + b" HTTP/1.1\r\nHost: h\r\n\r\n", max_target=64)


def test_target_limit_when_the_target_never_ends():
    reader = RequestReader(max_target=64)
    reader.feed(b"GET /")
    with pytest.raises(PeerProtocolError) as exc:
        for _ in range(10):
            reader.feed(b"a" * 10)
    assert exc.value.status == 414


def test_trailer_limits():
    trailers = b"".join(b"T-%d: 1\r\n" % i for i in range(10))
    data = BASE + b"Transfer-Encoding: chunked\r\n\r\n0\r\n" + trailers + b"\r\n"
    assert reject(data, max_headers=5).status == 400
    big = BASE + b"Transfer-Encoding: chunked\r\n\r\n0\r\nT: " + b"x" * 2000 + b"\r\n\r\n"
    assert "trailer" in str(reject(big, max_header_bytes=1024))


# Upgrades and CONNECT.


def test_connect_stops_parsing_and_keeps_the_tail():
    reader = RequestReader()
    events = reader.feed(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n\x00\x01binary")
    head = events[0]
    assert head.method == b"CONNECT" and head.target == b"db.internal:5432" and head.upgrade
    assert events[1:] == [EndOfMessage()]
    assert reader.upgraded and reader.upgrade_tail == b"\x00\x01binary"
    assert reader.feed(b"GET / HTTP/1.1\r\n") == []  # tunnel bytes now, not HTTP
    assert reader.upgrade_tail == b"\x00\x01binaryGET / HTTP/1.1\r\n"


def test_websocket_upgrade():
    reader = RequestReader()
    events = reader.feed(
        b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x05hello"
    )
    assert events[0].upgrade and events[1:] == [EndOfMessage()]
    assert reader.upgraded and reader.upgrade_tail == b"\x81\x05hello"


def test_upgrade_header_without_connection_token_is_a_normal_request():
    reader = RequestReader()
    events = reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n" + GET)
    assert not events[0].upgrade and not reader.upgraded
    assert len(events) == 4


def test_upgrade_request_with_a_body_delivers_the_body_first():
    data = (
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: example/2\r\n"
        b"Content-Length: 5\r\n\r\nhelloPRI * HTTP/2.0"
    )
    reader = RequestReader()
    events = reader.feed(data)
    assert events[0].upgrade and events[0].content_length == 5
    assert events[1:] == [Body(b"hello"), EndOfMessage()]
    assert reader.upgrade_tail == b"PRI * HTTP/2.0"
    # The same bytes one at a time.
    reader = RequestReader()
    split = []
    for i in range(len(data)):
        split += reader.feed(data[i : i + 1])
    assert merged(split) == events
    assert reader.upgrade_tail == b"PRI * HTTP/2.0"


def test_declined_upgrade_resumes_http():
    reader = RequestReader()
    events = reader.feed(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n" + GET[:20]
    )
    assert reader.upgraded and len(events) == 2
    assert reader.decline_upgrade() == []  # the tail is half a request
    assert not reader.upgraded
    events = reader.feed(GET[20:])
    assert events[0].target == b"/a?b=c" and events[1] == EndOfMessage()


def test_declined_upgrade_while_its_body_is_still_arriving():
    reader = RequestReader()
    reader.feed(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 4\r\n\r\nab"
    )
    assert reader.decline_upgrade() == []
    events = reader.feed(b"cd" + GET)
    assert events[:2] == [Body(b"cd"), EndOfMessage()]
    assert events[2].target == b"/a?b=c"


def test_decline_without_upgrade_is_our_bug():
    with pytest.raises(LocalProtocolError):
        RequestReader().decline_upgrade()


# End of input.


def test_feed_eof_between_requests_is_clean():
    reader = RequestReader()
    reader.feed(GET)
    assert reader.feed_eof() == []


@pytest.mark.parametrize(
    "partial",
    [b"GET / HTTP/1.1\r\nHost: h\r\n", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab"],
)
def test_feed_eof_mid_request_raises(partial):
    reader = RequestReader()
    reader.feed(partial)
    with pytest.raises(PeerProtocolError, match="middle of a request"):
        reader.feed_eof()


def test_feed_eof_mid_upgrade_body_raises():
    reader = RequestReader()
    reader.feed(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 5\r\n\r\nab"
    )
    with pytest.raises(PeerProtocolError):
        reader.feed_eof()


def test_feed_eof_after_an_error_reraises_it():
    reader = RequestReader()
    with pytest.raises(PeerProtocolError) as first:
        reader.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(PeerProtocolError) as again:
        reader.feed_eof()
    assert again.value is first.value


def test_events_compare_by_value_and_show_their_fields():
    assert Body(b"a") == Body(b"a") and Body(b"a") != Body(b"b")
    assert Body(b"a") != EndOfMessage()
    assert repr(Body(b"a")) == "Body(data=b'a')"
    assert "method=b'GET'" in repr(parse(GET)[0])


def test_incomplete_head_with_too_many_fields_fails_at_the_end_of_the_feed():
    reader = RequestReader(max_headers=5)
    with pytest.raises(PeerProtocolError) as exc:
        reader.feed(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(8)))
    assert exc.value.status == 431


# Defence in depth: llhttp refuses these before our checks run, but the rules must
# hold on their own should llhttp ever accept them.


@pytest.mark.parametrize(
    ("headers", "http10", "words"),
    [
        ([(b"content-length", b"5, 5")], False, "invalid Content-Length"),
        ([(b"content-length", b"5"), (b"content-length", b"6")], False, "conflicting"),
        ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], False, "both"),
        ([(b"transfer-encoding", b"chunked, chunked")], False, "more than once"),
        ([(b"transfer-encoding", b"chunked")], True, "HTTP/1.0"),
    ],
)
def test_framing_rules_without_llhttp(headers, http10, words):
    with pytest.raises(PeerProtocolError, match=words) as exc:
        h1._scan(headers, http10, 400)
    assert exc.value.status == 400


def test_repeated_equal_content_length_collapses_without_llhttp():
    assert h1._scan([(b"content-length", b"5"), (b"content-length", b"5")], False, 400)[1] == 5


def test_unknown_target_form_without_llhttp():
    with pytest.raises(PeerProtocolError, match="invalid request target"):
        RequestReader()._check_target(b"GET", b"urn:x")


def test_plain_marks_heads_a_proxy_may_forward_without_walking_them() -> None:
    from proxy.codec.h1 import RequestReader as Reader

    def head(extra: bytes) -> object:
        (h, *_) = Reader().feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n")
        return h

    assert head(b"Accept: */*\r\nContent-Length: 0\r\n").plain is True  # type: ignore[attr-defined]
    for extra in (b"Connection: close\r\n", b"Keep-Alive: 5\r\n", b"TE: trailers\r\n", b"Trailer: x\r\n",
                  b"Upgrade: h2c\r\nConnection: upgrade\r\n", b"Proxy-Connection: x\r\n",
                  b"l5d-dtab: /a=>/b\r\n", b"L5D-Ctx-Foo: 1\r\n"):
        assert head(extra).plain is False, extra  # type: ignore[attr-defined]


def test_version_is_read_per_message_in_a_pipeline():
    # The version of a head that keeps the connection without a Connection field is
    # HTTP/1.1 with no call to httptools (codec/h1.py `_version`); a Connection field
    # in one message must not leak into the next one's reading, either way.
    events = RequestReader().feed(
        b"GET /a HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
        b"GET /d HTTP/1.0\r\nHost: h\r\n\r\n"
    )
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [(h.target, h.version, h.keep_alive) for h in heads] == [
        (b"/a", b"1.0", True),
        (b"/b", b"1.1", True),
        (b"/c", b"1.1", True),
        (b"/d", b"1.0", False),
    ]
