"""ResponseReader: framing by status and request method (HEAD, CONNECT, 1xx, 204,
304), read-until-close bodies, upgrades, strictness, limits, split feeds."""

from __future__ import annotations

import pytest

from proxy.codec.h1 import Body, EndOfMessage, ResponseHead, ResponseReader
from proxy.errors import PeerProtocolError

from .test_h1_request import merged


def reader_for(*methods: bytes, **limits) -> ResponseReader:
    reader = ResponseReader(**limits)
    for m in methods:
        reader.expect(m)
    return reader


def parse(data: bytes, *methods: bytes, eof: bool = False, **limits):
    """Events from one feed, checked equal to those of a byte-at-a-time feed; with
    `eof`, feed_eof's events are included. Returns (events, reader)."""
    reader = reader_for(*methods, **limits)
    whole = reader.feed(data) + (reader.feed_eof() if eof else [])
    split_reader = reader_for(*methods, **limits)
    split = []
    for i in range(len(data)):
        split += split_reader.feed(data[i : i + 1])
    if eof:
        split += split_reader.feed_eof()
    assert merged(split) == merged(whole)
    assert split_reader.upgrade_tail == reader.upgrade_tail
    return merged(whole), reader


def reject(data: bytes, *methods: bytes, **limits) -> PeerProtocolError:
    with pytest.raises(PeerProtocolError) as whole:
        reader_for(*methods, **limits).feed(data)
    reader = reader_for(*methods, **limits)
    with pytest.raises(PeerProtocolError):
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
    return whole.value


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_content_length_response():
    events, _ = parse(OK, b"GET")
    assert events == [
        ResponseHead(200, b"OK", b"1.1", [(b"content-length", b"2")], True, False, 2),
        Body(b"ok"),
        EndOfMessage(),
    ]


def test_chunked_response_with_trailers():
    events, _ = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: \r\n\r\n",
        b"POST",
    )
    assert events[0].chunked and events[0].content_length is None
    assert events[1:] == [
        Body(b"abc"),
        EndOfMessage([(b"grpc-status", b"0"), (b"grpc-message", b"")]),
    ]


def test_missing_reason_phrase():
    events, _ = parse(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", b"GET")
    assert events[0].reason == b""
    events, _ = parse(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", b"GET")
    assert events[0].status == 404 and events[0].reason == b""


def test_read_until_close():
    events, reader = parse(b"HTTP/1.1 200 OK\r\n\r\nsome body", b"GET", eof=True)
    assert not events[0].keep_alive and events[0].content_length is None
    assert events[1:] == [Body(b"some body"), EndOfMessage()]
    assert reader.feed_eof() == []  # idempotent


def test_read_until_close_http10():
    events, _ = parse(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody", b"GET", eof=True)
    assert events[0].version == b"1.0" and not events[0].keep_alive
    assert events[-1] == EndOfMessage()


def test_http10_keep_alive_response():
    events, _ = parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", b"GET")
    assert events[0].keep_alive


def test_connection_close_response_ignores_what_follows():
    reader = reader_for(b"GET", b"GET")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok" + OK)
    assert not events[0].keep_alive
    assert events[1:] == [Body(b"ok"), EndOfMessage()]
    assert reader.feed(b"junk") == [] and reader.feed_eof() == []


@pytest.mark.parametrize(
    "partial",
    [b"HTTP/1.1 200 OK\r\nContent-Le", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"],
)  # fmt: skip
def test_cut_short_response_raises_on_eof(partial):
    reader = reader_for(b"GET")
    reader.feed(partial)
    with pytest.raises(PeerProtocolError) as exc:
        reader.feed_eof()
    assert exc.value.status == 502
    assert "before the response was complete" in str(exc.value)


def test_eof_before_any_response_is_not_an_error_here():
    reader = reader_for(b"GET")
    assert reader.feed_eof() == []


def test_head_response_has_no_body_whatever_the_framing():
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"HTTP/1.1 200 OK\r\n\r\n" + OK
    )
    events, _ = parse(data, b"HEAD", b"HEAD", b"HEAD", b"GET")
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ResponseHead", "EndOfMessage"] * 3 + ["ResponseHead", "Body", "EndOfMessage"]
    assert events[0].content_length == 1234  # as sent: a proxy forwards it unchanged
    assert events[2].chunked
    assert events[7] == Body(b"ok")


def test_head_response_after_a_chunked_body_in_the_same_feed():
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\r\n\r\n\r\n0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n" + OK
    )
    events, _ = parse(data, b"GET", b"HEAD", b"GET")
    assert events[1] == Body(b"\r\n\r\n")
    assert [type(e).__name__ for e in events[3:]] == [
        "ResponseHead",
        "EndOfMessage",
        "ResponseHead",
        "Body",
        "EndOfMessage",
    ]


def test_head_response_across_feeds_with_the_blank_line_split():
    reader = reader_for(b"HEAD", b"GET")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    first = reader.feed(head[:-1])
    assert first == []
    rest = reader.feed(head[-1:] + OK)
    assert [type(e).__name__ for e in rest] == [
        "ResponseHead",
        "EndOfMessage",
        "ResponseHead",
        "Body",
        "EndOfMessage",
    ]


def test_head_response_with_connection_close():
    reader = reader_for(b"HEAD")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nxx")
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert not events[0].keep_alive
    assert reader.feed(b"more") == []


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(status):
    data = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status + OK
    events, _ = parse(data, b"GET", b"GET")
    assert events[0].status == status and events[1] == EndOfMessage()
    assert events[2].status == 200 and events[3] == Body(b"ok")


def test_204_keeps_the_connection():
    events, _ = parse(b"HTTP/1.1 204 No Content\r\n\r\n", b"DELETE")
    assert events[0].keep_alive and events[1:] == [EndOfMessage()]


@pytest.mark.parametrize("status", [100, 102, 103, 150])
def test_interim_responses_come_before_the_final_one(status):
    data = b"HTTP/1.1 %d Interim\r\nLink: </s.css>\r\n\r\n" % status + OK
    events, reader = parse(data, b"POST")
    assert events[0].status == status and events[0].headers == [(b"link", b"</s.css>")]
    assert events[1].status == 200  # no EndOfMessage after an interim head
    assert events[2:] == [Body(b"ok"), EndOfMessage()]


def test_several_interim_responses_and_pipelining():
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n" + OK + OK
    events, _ = parse(data, b"POST", b"GET")
    assert [getattr(e, "status", None) for e in events] == [100, 103, 200, None, None, 200, None, None]


def test_connect_2xx_opens_a_tunnel():
    events, reader = parse(
        b"HTTP/1.1 200 Connection Established\r\nContent-Length: 100\r\n\r\n\x16\x03\x01tls",
        b"CONNECT",
    )
    assert events[0].upgrade and events[1:] == [EndOfMessage()]
    assert reader.upgraded and reader.upgrade_tail == b"\x16\x03\x01tls"
    assert reader.feed(b"more") == [] and reader.upgrade_tail.endswith(b"more")
    assert reader.feed_eof() == []


def test_connect_refused_is_an_ordinary_response():
    events, reader = parse(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno" + OK, b"CONNECT", b"GET")
    assert not events[0].upgrade and events[1] == Body(b"no")
    assert not reader.upgraded and events[3].status == 200


def test_101_switching_protocols():
    events, reader = parse(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        b"GET",
    )
    assert events[0].status == 101 and events[0].upgrade
    assert events[1:] == [EndOfMessage()]
    assert reader.upgraded and reader.upgrade_tail == b"\x81\x00"


def test_101_while_pieces_are_fed_for_a_later_head():
    reader = reader_for(b"GET", b"HEAD")
    events = reader.feed(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nab\r\n\r\ncd"
    )
    assert events[0].upgrade and reader.upgrade_tail == b"ab\r\n\r\ncd"


def test_a_200_advertising_upgrade_is_not_an_upgrade():
    events, reader = parse(
        b"HTTP/1.1 200 OK\r\nUpgrade: h2,h2c\r\nConnection: Upgrade\r\nContent-Length: 2\r\n\r\nok",
        b"GET",
    )
    assert not events[0].upgrade and not reader.upgraded and events[1] == Body(b"ok")


def test_unsolicited_response_is_refused():
    err = reject(OK)
    assert err.status == 502 and "without a request" in str(err)


H = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "Content-Length"),
        (H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "Content-Length"),
        (H + b"Content-Length: abc\r\n\r\n", "Content-Length"),
        (H + b"Transfer-Encoding: gzip\r\n\r\nxx", "chunked"),
        (H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "transfer coding"),
        (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.0"),
        (b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", "version"),
        (b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", "status"),
        (b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", "status"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "status"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status"),
        (b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n", "reason"),
        (b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "malformed"),
        (H + b"X: a\r\n b\r\nContent-Length: 0\r\n\r\n", "whitespace"),
        (H + b"X : a\r\nContent-Length: 0\r\n\r\n", "malformed"),
        (H + b"X: \x00\r\nContent-Length: 0\r\n\r\n", "malformed"),
        (H + b"Transfer-Encoding: chunked\r\n\r\nz\r\n", "chunk"),
        (H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "chunk"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "101"),
        (b"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\nok", "content"),
        (b"HTTP/1.1 150 X\r\nTransfer-Encoding: chunked\r\n\r\n", "content"),
        (b"garbage\r\n\r\n", "malformed"),
    ],
)
def test_rejected(data, words):
    err = reject(data, b"GET")
    assert err.status == 502
    assert words.lower() in str(err).lower()


def test_limits():
    big = H + b"X: " + b"a" * 2000 + b"\r\nContent-Length: 0\r\n\r\n"
    err = reject(big, b"GET", max_header_bytes=1024)
    assert str(err) == "response header fields too large: more than 1024 bytes"
    assert err.status == 502
    many = H + b"".join(b"X-%d: 1\r\n" % i for i in range(11)) + b"\r\n"
    assert "10 header fields" in str(reject(many, b"GET", max_headers=10))


def test_incomplete_response_head_is_bounded():
    reader = reader_for(b"GET", max_header_bytes=1024)
    reader.feed(H + b"X: ")
    with pytest.raises(PeerProtocolError):
        for _ in range(100):
            reader.feed(b"a" * 100)


def test_error_is_sticky():
    reader = reader_for(b"GET")
    with pytest.raises(PeerProtocolError) as first:
        reader.feed(b"nonsense\r\n\r\n")
    with pytest.raises(PeerProtocolError) as again:
        reader.feed(OK)
    assert again.value is first.value
    with pytest.raises(PeerProtocolError):
        reader.feed_eof()


def test_closing_response_while_a_head_request_is_pending():
    reader = reader_for(b"GET", b"HEAD")
    events = reader.feed(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    )
    assert [type(e) for e in events] == [ResponseHead, Body, EndOfMessage]
    assert reader.feed(b"x") == [] and not reader.upgraded
