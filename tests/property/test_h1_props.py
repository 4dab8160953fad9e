"""Properties of the HTTP/1.1 codec: encoded messages parse back to themselves however
the bytes are split, and any input either yields events or raises PeerProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.codec.h1 import (
    Body,
    EndOfMessage,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    encode_chunk,
    encode_request_head,
    encode_response_head,
    encode_trailers,
)
from proxy.errors import PeerProtocolError

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Names the codec interprets; generated fields stay clear of them.
RESERVED = {b"content-length", b"transfer-encoding", b"host", b"connection", b"expect",
            b"upgrade", b"te", b"trailer", b"keep-alive"}  # fmt: skip
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"TRACE"]
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/"


def binary(min_size: int = 0, max_size: int = 64) -> st.SearchStrategy[bytes]:
    # Not st.binary(): it puts bytes into hypothesis's choice sequences, whose cache
    # then compares bytes with ints on a hash collision -- a BytesWarning under -bb.
    return st.lists(st.integers(0, 255), min_size=min_size, max_size=max_size).map(bytes)


names = st.text(TCHAR, min_size=1, max_size=20).map(str.encode).filter(lambda n: n.lower() not in RESERVED)
# field-value: VCHAR / obs-text with inner SP/HTAB, no leading or trailing whitespace.
vchar = st.sampled_from([bytes([c]) for c in (*range(0x21, 0x7F), *range(0x80, 0x100))])
values = st.one_of(
    st.just(b""),
    st.builds(
        lambda first, middle, last: first + middle + last,
        vchar,
        st.lists(st.one_of(vchar, st.sampled_from([b" ", b"\t"])), max_size=20).map(b"".join),
        vchar,
    ),
    vchar,
)
fields = st.lists(st.tuples(names, values), max_size=12)
targets = st.builds(
    lambda path, query: b"/" + path + (b"?" + query if query is not None else b""),
    st.text(PCHAR, max_size=40).map(str.encode),
    st.none() | st.text(PCHAR + "?", max_size=20).map(str.encode),
)
bodies = st.lists(binary(1, 64), max_size=5)  # the chunks as sent


@st.composite
def requests(draw):
    method = draw(st.sampled_from(METHODS))
    target = draw(targets)
    headers = [(b"Host", b"example.test")] + draw(fields)
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    chunks = draw(bodies) if framing != "none" else []
    trailers = draw(fields) if framing == "chunked" else []
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % sum(map(len, chunks))))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    return method, target, headers, framing, chunks, trailers


def encode_request(req) -> bytes:
    method, target, headers, framing, chunks, trailers = req
    wire = encode_request_head(method, target, headers)
    if framing == "length":
        wire += b"".join(chunks)
    elif framing == "chunked":
        wire += b"".join(map(encode_chunk, chunks)) + encode_trailers(trailers)
    return wire


def lower(headers):
    return [(n.lower(), v) for n, v in headers]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def group(events):
    """[(head, body bytes, trailers)] for each complete message."""
    out = []
    for ev in events:
        if isinstance(ev, RequestHead | ResponseHead):
            out.append([ev, b"", None, False])
        elif isinstance(ev, Body):
            out[-1][1] += ev.data
        else:
            assert isinstance(ev, EndOfMessage)
            out[-1][2] = ev.trailers
            out[-1][3] = True
    return out


@given(st.lists(requests(), min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=12))
def test_encoded_requests_parse_back_however_split(reqs, cuts):
    wire = b"".join(map(encode_request, reqs))
    reader = RequestReader()
    events = []
    for piece in split(wire, cuts):
        events += reader.feed(piece)
    messages = group(events)
    assert len(messages) == len(reqs)
    for (method, target, headers, framing, chunks, trailers), (head, body, got_trailers, ended) in zip(
        reqs, messages, strict=True
    ):
        assert ended
        assert (head.method, head.target, head.version) == (method, target, b"1.1")
        assert head.headers == lower(headers)
        assert head.chunked is (framing == "chunked")
        assert body == b"".join(chunks)
        assert got_trailers == (lower(trailers) or None)
        assert head.keep_alive and not head.upgrade
    assert reader.feed_eof() == []


STATUSES = st.sampled_from([200, 201, 204, 206, 301, 304, 400, 404, 418, 500, 503, 299, 599])


@st.composite
def responses(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD"]))
    interim = draw(st.lists(st.sampled_from([100, 103]), max_size=2))
    status = draw(STATUSES)
    reason = draw(st.none() | st.text(TCHAR + " ", max_size=12).map(str.encode).map(bytes.strip))
    headers = draw(fields)
    framing = draw(st.sampled_from(["length", "chunked"]))
    chunks = draw(bodies)
    trailers = draw(fields) if framing == "chunked" else []
    no_body = method == b"HEAD" or status in (204, 304)
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % sum(map(len, chunks))))
    else:
        headers.append((b"Transfer-Encoding", b"chunked"))
    wire = b"".join(encode_response_head(s, None, []) for s in interim)
    wire += encode_response_head(status, reason, headers)
    if no_body:
        chunks, trailers = [], []
    elif framing == "length":
        wire += b"".join(chunks)
    else:
        wire += b"".join(map(encode_chunk, chunks)) + encode_trailers(trailers)
    return method, interim, status, headers, chunks, trailers, wire


@given(st.lists(responses(), min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=12))
def test_encoded_responses_parse_back_however_split(resps, cuts):
    reader = ResponseReader()
    for method, *_ in resps:
        reader.expect(method)
    events = []
    for piece in split(b"".join(r[-1] for r in resps), cuts):
        events += reader.feed(piece)
    expected = []
    for _method, interim, status, _headers, chunks, trailers, _ in resps:
        expected += [(s, b"", None, False) for s in interim]
        expected.append((status, b"".join(chunks), lower(trailers) or None, True))
    got = [(h.status, body, t, ended) for h, body, t, ended in group(events)]
    assert got == expected
    heads = [e for e in events if isinstance(e, ResponseHead) and e.status >= 200]
    assert [h.headers for h in heads] == [lower(r[3]) for r in resps]
    assert reader.feed_eof() == []


# Totality: arbitrary input never escapes as anything but PeerProtocolError, and the
# outcome does not depend on how the input is split.

FRAGMENTS = [
    b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n",
    b"HTTP/1.1 101 Switching\r\n", b"POST /x HTTP/1.0\r\n", b"CONNECT a:1 HTTP/1.1\r\n",
    b"Host: h\r\n", b"Host: a\r\n", b"Content-Length: 3\r\n", b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n",
    b"Connection: close\r\n", b"Connection: upgrade\r\n", b"Upgrade: ws\r\n",
    b"Expect: 100-continue\r\n", b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00",
    b"3\r\nabc\r\n", b"0\r\n\r\n", b"0\r\nT: 1\r\n\r\n", b"ffffffffffffffffff\r\n",
    b"5;e=1\r\n", b"abc", b"\xff",
]  # fmt: skip


@st.composite
def mutated(draw):
    """Valid pipelined messages with a few bytes inserted, deleted or replaced, so
    the readers are driven past the first line into every state."""
    if draw(st.booleans()):
        data = b"".join(map(encode_request, draw(st.lists(requests(), min_size=1, max_size=3))))
    else:
        data = b"".join(r[-1] for r in draw(st.lists(responses(), min_size=1, max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        blob = draw(st.one_of(st.sampled_from(FRAGMENTS), binary(1, 4)))
        if edit == "insert":
            data = data[:at] + blob + data[at:]
        elif edit == "delete":
            data = data[:at] + data[at + len(blob) :]
        else:
            data = data[:at] + blob + data[at + len(blob) :]
    return data


inputs = st.one_of(
    mutated(),
    binary(0, 300),
    st.lists(st.sampled_from(FRAGMENTS), max_size=25).map(b"".join),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), binary(0, 8)), max_size=25).map(b"".join),
)


def outcome(make, pieces):
    reader = make()
    events = []
    try:
        for piece in pieces:
            events += reader.feed(piece)
        events += reader.feed_eof()
    except PeerProtocolError as exc:
        assert 400 <= exc.status <= 599
        return ("error", exc.status)
    merged = []
    for ev in events:
        if isinstance(ev, Body) and merged and isinstance(merged[-1], Body):
            merged[-1] = Body(merged[-1].data + ev.data)
        else:
            merged.append(ev)
    return ("ok", merged, reader.upgrade_tail)


def response_reader(methods):
    def make():
        reader = ResponseReader()
        for m in methods:
            reader.expect(m)
        return reader

    return make


@given(inputs, st.lists(st.integers(0, 400), max_size=10))
def test_request_reader_is_total(data, cuts):
    whole = outcome(RequestReader, [data])
    assert outcome(RequestReader, split(data, cuts)) == whole


@given(inputs, st.lists(st.sampled_from([b"GET", b"HEAD", b"CONNECT", b"POST"]), max_size=4),
       st.lists(st.integers(0, 400), max_size=10))  # fmt: skip
def test_response_reader_is_total(data, methods, cuts):
    whole = outcome(response_reader(methods), [data])
    assert outcome(response_reader(methods), split(data, cuts)) == whole


@pytest.mark.slow
@settings(max_examples=5000, suppress_health_check=[HealthCheck.too_slow])
@given(inputs, st.lists(st.sampled_from([b"GET", b"HEAD", b"CONNECT"]), max_size=4),
       st.lists(st.integers(0, 400), max_size=10))  # fmt: skip
def test_readers_are_total_long(data, methods, cuts):
    assert outcome(RequestReader, split(data, cuts)) == outcome(RequestReader, [data])
    make = response_reader(methods)
    assert outcome(make, split(data, cuts)) == outcome(make, [data])
