"""The codec's last framing rules: Connection-nominated fields (RFC 9110 §7.6.1), the
h2c upgrade and HTTP2-Settings never forwarded, HTTP/1.0 without Host, HTTP/0.9 request
lines, and the request body limit. Every case is fed whole and in small pieces."""

from __future__ import annotations

import pytest

from proxy.codec import h1
from proxy.codec.h1 import Body, EndOfMessage, RequestHead, RequestReader, ResponseReader
from proxy.errors import BodyTooLarge, PeerProtocolError


def merged(events):
    out = []
    for ev in events:
        if isinstance(ev, Body) and out and isinstance(out[-1], Body):
            out[-1] = Body(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def feed_in(data: bytes, step: int, **kw):
    reader = RequestReader(**kw)
    events = []
    for i in range(0, len(data), step):
        events += reader.feed(data[i : i + step])
    return reader, merged(events)


def parse(data: bytes, **kw):
    """Events for `data`, the same whole and fed 1, 2 and 7 bytes at a time."""
    reader, whole = feed_in(data, len(data) or 1, **kw)
    for step in (1, 2, 7):
        assert feed_in(data, step, **kw)[1] == whole, step
    return whole


def reject(data: bytes, **kw) -> PeerProtocolError:
    """The error for `data`, the same whole and fed in pieces."""
    errors = []
    for step in (len(data), 1, 2, 7):
        with pytest.raises(PeerProtocolError) as exc:
            feed_in(data, step, **kw)
        errors.append(exc.value)
    assert len({(type(e), e.status, str(e)) for e in errors}) == 1
    return errors[0]


def response(data: bytes, method: bytes = b"GET") -> list[object]:
    reader = ResponseReader()
    reader.expect(method)
    return reader.feed(data)


# -- Connection-nominated fields (item 11, item 14) ----------------------------------------


@pytest.mark.parametrize(
    ("nominated", "body"),
    [
        (b"Content-Length", b"Content-Length: 5\r\n\r\nhello"),
        (b"content-length, keep-alive", b"Content-Length: 5\r\n\r\nhello"),
        (b"Host", b"Content-Length: 0\r\n\r\n"),
    ],
)
def test_request_nominating_a_field_for_every_recipient_is_refused(nominated, body):
    # Forwarding it without that field would drop the body's framing (or the Host of an
    # HTTP/1.1 request); forwarding it with the field ignores the client. Neither: 400.
    err = reject(b"POST / HTTP/1.1\r\nHost: h\r\nConnection: " + nominated + b"\r\n" + body)
    assert err.status == 400
    assert "Connection header nominates" in str(err) and nominated.split(b",")[0].lower().decode() in str(err)


def test_nominated_content_length_in_a_second_connection_field_is_refused():
    err = reject(b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 2\r\nConnection: content-length\r\n\r\nab")
    assert err.status == 400


def test_request_nominating_transfer_encoding_keeps_its_body():
    # The proxy drops Transfer-Encoding and re-frames the body itself, so naming it as
    # hop-by-hop changes nothing: every byte is still delivered.
    events = parse(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    assert events[0].chunked and events[1:] == [Body(b"hello"), EndOfMessage()]


def test_other_nominated_request_fields_are_left_for_the_proxy_to_drop():
    (head, end) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n")
    assert (b"x-hop", b"1") in head.headers and head.extras == [(b"connection", b"x-hop")]


def test_response_drops_the_fields_its_connection_header_nominates():
    (head, end) = response(
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\nX-Keep: k\r\n"
        b"Connection: x-other\r\nX-Other: o\r\nContent-Length: 0\r\n\r\n"
    )
    names = [n for n, _ in head.headers]
    assert b"x-secret" not in names and b"x-other" not in names and (b"x-keep", b"k") in head.headers
    assert names.count(b"connection") == 2  # the wire drops these itself
    assert not head.plain and end == EndOfMessage()


def test_nominated_fields_leave_the_trailers_of_that_message_only():
    """RFC 9110 §7.6.1 removes a nominated field wherever it is, header or trailer
    section; the next message's trailers are its own."""
    events = parse(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: x-hop, keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nX-Hop: 1\r\nX-Keep: 2\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: x-hop\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\nX-Hop: 3\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Hop: 4\r\n\r\n"
    )
    ends = [e for e in events if isinstance(e, EndOfMessage)]
    assert ends == [EndOfMessage([(b"x-keep", b"2")]), EndOfMessage(), EndOfMessage([(b"x-hop", b"4")])]
    reader = ResponseReader()
    for _ in range(3):
        reader.expect(b"GET")
    events = reader.feed(
        b"HTTP/1.1 103 Early Hints\r\nConnection: x-a\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\nX-Secret: s\r\nX-A: a\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Secret: t\r\n\r\n"
    )
    ends = [e for e in events if isinstance(e, EndOfMessage)]
    assert ends == [EndOfMessage([(b"x-a", b"a")]), EndOfMessage([(b"x-secret", b"t")])]


def test_response_nominations_apply_to_interim_and_101_responses():
    reader = ResponseReader()
    reader.expect(b"GET")
    events = reader.feed(
        b"HTTP/1.1 103 Early Hints\r\nConnection: x-a\r\nX-A: 1\r\nLink: </s>\r\n\r\n"
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade, x-b\r\nUpgrade: websocket\r\nX-B: 2\r\n\r\n"
    )
    assert [n for n, _ in events[0].headers] == [b"connection", b"link"]
    assert (b"upgrade", b"websocket") in events[1].headers  # the wire re-adds Upgrade on a 101
    assert all(n != b"x-b" for n, _ in events[1].headers)


def test_response_nominating_content_length_is_refused():
    with pytest.raises(PeerProtocolError, match="Content-Length") as exc:
        response(b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok")
    assert exc.value.status == 502


def test_plain_responses_stay_plain_and_untouched():
    (head, _) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n")
    assert head.plain and head.headers == [(b"content-length", b"0"), (b"x-a", b"1")]


def test_scan_marks_only_heads_that_need_the_second_pass():
    def odd(headers):
        return h1._scan(headers, False, 400)[7]

    assert not odd([(b"host", b"h"), (b"connection", b"keep-alive")])
    assert not odd([(b"connection", b"close, TE"), (b"te", b"trailers")])
    assert not odd([(b"connection", b"Upgrade")])
    assert odd([(b"connection", b"x-hop")])
    assert odd([(b"upgrade", b"websocket")])
    assert odd([(b"http2-settings", b"AAMAAABk")])


# -- h2c upgrade smuggling (item 12) ------------------------------------------------------------


H2C = (
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)
NEXT = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"


def test_h2c_only_upgrade_is_an_ordinary_request_and_http_goes_on():
    events = parse(H2C + NEXT)
    head = events[0]
    assert isinstance(head, RequestHead) and not head.upgrade
    assert head.headers == [(b"host", b"h"), (b"connection", b"Upgrade, HTTP2-Settings")]
    assert head.extras == [(b"connection", b"Upgrade, HTTP2-Settings")]
    assert events[1] == EndOfMessage()
    assert events[2].target == b"/next" and events[3] == EndOfMessage()
    reader = RequestReader()
    reader.feed(H2C + NEXT)
    assert not reader.upgraded and reader.upgrade_tail == b""


def test_h2c_upgrade_with_a_body_delivers_the_body_and_goes_on():
    data = (
        b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: HTTP2-Settings, upgrade\r\nUpgrade: H2C\r\n"
        b"HTTP2-Settings: AAMAAABk\r\nContent-Length: 5\r\n\r\nhello" + NEXT
    )
    events = parse(data)
    assert not events[0].upgrade and events[0].content_length == 5
    assert events[1:3] == [Body(b"hello"), EndOfMessage()]
    assert events[3].target == b"/next"


def test_h2c_with_connection_close_ignores_what_follows():
    events = parse(H2C.replace(b"Upgrade, HTTP2-Settings", b"upgrade, close") + NEXT)
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert not events[0].keep_alive


def test_h2c_among_other_offers_is_removed_and_the_rest_upgrades():
    reader = RequestReader()
    events = reader.feed(
        b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c, websocket\r\n"
        b"Upgrade: h2c/1\r\n\r\n\x81\x00"
    )
    head = events[0]
    assert head.upgrade and (b"upgrade", b"websocket") in head.headers
    assert [v for n, v in head.headers if n == b"upgrade"] == [b"websocket"]
    assert reader.upgraded and reader.upgrade_tail == b"\x81\x00"


def test_http2_settings_alone_is_dropped_and_the_head_is_plain():
    (head, _) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nHTTP2-Settings: AAMA\r\nAccept: */*\r\n\r\n")
    assert head.headers == [(b"host", b"h"), (b"accept", b"*/*")] and head.plain


def test_h2c_without_connection_upgrade_is_dropped_too():
    (head, _) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n")
    assert head.headers == [(b"host", b"h")] and head.plain and not head.upgrade


def test_h2c_upgrade_with_a_chunked_body_is_refused():
    err = reject(H2C.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
    assert err.status == 501


def test_connect_with_an_h2c_upgrade_field_stays_a_tunnel():
    reader = RequestReader()
    events = reader.feed(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\nUpgrade: h2c\r\n\r\nxyz")
    assert events[0].upgrade and events[0].headers == [(b"host", b"db:5432")]
    assert reader.upgraded and reader.upgrade_tail == b"xyz"


# -- HTTP/1.0 without Host (item 10) ---------------------------------------------------------------


def test_http10_without_host_gets_an_empty_host_first():
    (head, _) = parse(b"GET /x HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert head.headers == [(b"host", b""), (b"accept", b"*/*")]
    assert head.version == b"1.0" and head.plain


def test_http10_absolute_form_without_host_keeps_its_target():
    (head, _) = parse(b"GET http://web.test/x HTTP/1.0\r\n\r\n")
    assert head.target == b"http://web.test/x" and head.headers == [(b"host", b"")]


# -- HTTP/0.9 (item 13) -----------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"GET /\r\n", b"GET /\n", b"GET /index.html?a=b\r\n", b"DELETE /x\r\n"])
def test_http09_request_line_is_answered_at_once(line):
    err = reject(line)
    assert err.status == 400 and "HTTP/0.9" in str(err)


def test_http09_line_after_a_whole_request():
    reader = RequestReader()
    with pytest.raises(PeerProtocolError, match="HTTP/0.9"):
        reader.feed(NEXT + b"GET /\r\n")
    assert [type(e) for e in reader.take_events()] == [RequestHead, EndOfMessage]


@pytest.mark.parametrize("body", [b"abc", b"abc\r", b"GET /"])
def test_http09_line_right_after_a_content_length_body(body):
    """A Content-Length body needs no line break after it: the HTTP/0.9 line that follows
    its last byte in the same read is still seen whole (it once waited for fields)."""
    first = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    reader = RequestReader()
    with pytest.raises(PeerProtocolError, match="HTTP/0.9"):
        reader.feed(first + b"GET /\r\n")
    assert merged(reader.take_events())[1:] == [Body(body), EndOfMessage()]


def test_a_field_after_a_body_that_reads_like_the_line_waits():
    """The body check looks at this read's last body piece only where the head began in
    this read; a field value ending like the request line is still a field."""
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nabGET / HTTP/1.1\r\nX-A: GET /\r\n"
    reader = RequestReader()
    events = reader.feed(data)
    assert [type(e) for e in events] == [RequestHead, Body, EndOfMessage] and reader.in_head()


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # a request line: fields follow
        b"GET / HTTP/1.1\r\nX-A: GET /\r\n",  # a field that reads like an HTTP/0.9 line
        b"GET /abc HTTP/1.1\r\nX-A:GET /abc\r\n",
        b"GET /abc HTTP/1.1\r\nX-A: 1\r\nX-B: GET /abc\r\n",
        b"GET /a",
    ],
)
def test_incomplete_http11_heads_wait(data):
    for step in (len(data), 1, 2, 3, 5):
        reader, events = feed_in(data, step)
        assert events == [] and reader.in_head()


# -- the request body limit -------------------------------------------------------------------------


def test_content_length_above_the_limit_fails_at_the_head():
    err = reject(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n", max_body_bytes=10)
    assert isinstance(err, BodyTooLarge) and err.status == 413 and err.grpc_status == 8
    assert "more than 10 bytes" in str(err) and "limits.maxRequestBodyBytes" in str(err)
    reader = RequestReader(max_body_bytes=10)
    with pytest.raises(BodyTooLarge):
        reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
    assert reader.take_events() == []  # nothing of that request is handed on


def test_content_length_at_the_limit_passes():
    events = parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789", max_body_bytes=10)
    assert events[1:] == [Body(b"0123456789"), EndOfMessage()]


def test_chunked_body_at_the_limit_passes_and_the_count_starts_again():
    one = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n"
    events = parse(one + one, max_body_bytes=10)
    assert [e for e in events if isinstance(e, Body)] == [Body(b"abcdefghij"), Body(b"abcdefghij")]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_chunked_body_past_the_limit_never_hands_on_a_byte_beyond_it(step):
    data = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nabcdefgh\r\n4\r\nZZZZ\r\n0\r\n\r\n"
    reader = RequestReader(max_body_bytes=10)
    got = []
    with pytest.raises(BodyTooLarge):
        for i in range(0, len(data), step):
            got += reader.feed(data[i : i + step])
    got += reader.take_events()
    body = b"".join(e.data for e in got if isinstance(e, Body))
    assert len(body) <= 10 and b"abcdefghZZZZ".startswith(body)  # never a byte past the limit
    assert not any(isinstance(e, EndOfMessage) for e in got)
    with pytest.raises(BodyTooLarge):  # the error is sticky
        reader.feed(b"x")


def test_no_limit_counts_nothing():
    reader = RequestReader()
    events = reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert events[1] == Body(b"abc") and reader._body_left is None


def test_a_zero_limit_allows_only_empty_bodies():
    assert parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", max_body_bytes=0)[1] == EndOfMessage()
    assert reject(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx", max_body_bytes=0).status == 413


def test_request_target_limit():
    ok = b"GET /" + b"a" * 15 + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert parse(ok, max_target=16)[0].target == b"/" + b"a" * 15
    err = reject(ok.replace(b"/", b"/b", 1), max_target=16)
    assert err.status == 414 and "16 bytes" in str(err)

