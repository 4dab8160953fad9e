"""Encoders: heads, chunks and trailers, and their refusal of CR/LF/NUL injection;
each encoded message parses back to what was encoded."""

from __future__ import annotations

import pytest

from proxy.codec.h1 import (
    LAST_CHUNK,
    Body,
    EndOfMessage,
    RequestReader,
    ResponseReader,
    encode_chunk,
    encode_request_head,
    encode_response_head,
    encode_trailers,
)
from proxy.errors import LocalProtocolError


def test_request_head():
    out = encode_request_head(b"GET", b"/x?y", [(b"host", b"h"), (b"accept", b"*/*")])
    assert out == b"GET /x?y HTTP/1.1\r\nhost: h\r\naccept: */*\r\n\r\n"


def test_request_head_takes_any_iterable_and_no_headers():
    assert encode_request_head(b"GET", b"/", iter([(b"host", b"h")])) == (
        b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"
    )
    assert encode_request_head(b"GET", b"/", []) == b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("status", "reason", "line"),
    [
        (200, None, b"HTTP/1.1 200 OK\r\n"),
        (200, b"OK", b"HTTP/1.1 200 OK\r\n"),
        (404, None, b"HTTP/1.1 404 Not Found\r\n"),
        (200, b"Fine", b"HTTP/1.1 200 Fine\r\n"),
        (299, None, b"HTTP/1.1 299 \r\n"),
        (299, b"Custom", b"HTTP/1.1 299 Custom\r\n"),
        (502, b"", b"HTTP/1.1 502 \r\n"),
    ],
)
def test_response_status_lines(status, reason, line):
    assert encode_response_head(status, reason, [(b"a", b"b")]) == line + b"a: b\r\n\r\n"


@pytest.mark.parametrize("status", [99, 600, 1000])
@pytest.mark.parametrize("reason", [None, b"X"])
def test_response_invalid_status(status, reason):
    with pytest.raises(LocalProtocolError):
        encode_response_head(status, reason, [])


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x", b"a\r\nInjected: 1")],
        [(b"x", b"a\nb")],
        [(b"x", b"a\rb")],
        [(b"x", b"a\x00b")],
        [(b"x\r\ny", b"1")],
        [(b"ok", b"1"), (b"x", b"\r\n")],
    ],
)
def test_injection_refused(headers):
    with pytest.raises(LocalProtocolError):
        encode_request_head(b"GET", b"/", headers)
    with pytest.raises(LocalProtocolError):
        encode_response_head(200, None, headers)
    with pytest.raises(LocalProtocolError):
        encode_trailers(headers)


@pytest.mark.parametrize("target", [b"/\r\nX: 1", b"/\n", b"/\x00"])
def test_injection_in_request_line_refused(target):
    with pytest.raises(LocalProtocolError):
        encode_request_head(b"GET", target, [(b"host", b"h")])


def test_injection_in_reason_refused():
    with pytest.raises(LocalProtocolError):
        encode_response_head(200, b"OK\r\nSet-Cookie: x", [])


def test_chunks():
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert encode_chunk(b"") == b""  # never the last chunk by accident
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_trailers():
    assert encode_trailers(None) == LAST_CHUNK
    assert encode_trailers([]) == LAST_CHUNK
    assert encode_trailers([(b"grpc-status", b"0")]) == b"0\r\ngrpc-status: 0\r\n\r\n"


def test_encoded_request_parses_back():
    wire = (
        encode_request_head(b"POST", b"/p", [(b"host", b"h"), (b"transfer-encoding", b"chunked")])
        + encode_chunk(b"abc")
        + encode_chunk(b"")
        + encode_chunk(b"de")
        + encode_trailers([(b"t", b"1")])
    )
    events = RequestReader().feed(wire)
    assert events[0].headers == [(b"host", b"h"), (b"transfer-encoding", b"chunked")]
    assert events[1:] == [Body(b"abc"), Body(b"de"), EndOfMessage([(b"t", b"1")])]


def test_encoded_response_parses_back():
    wire = encode_response_head(201, None, [(b"content-length", b"3")]) + b"abc"
    reader = ResponseReader()
    reader.expect(b"POST")
    events = reader.feed(wire)
    assert (events[0].status, events[0].reason) == (201, b"Created")
    assert events[1:] == [Body(b"abc"), EndOfMessage()]
