"""The sans-IO pieces under the HTTP/2 data plane (no sockets): the static-table HPACK
encoder against hpack's decoder, the RFC 9113 §8 checks, and gRPC's timeout and
message encodings."""

from __future__ import annotations

import hpack
import pytest

from proxy.codec import grpc
from proxy.codec.h2 import FieldEncoder, read_request, read_response
from proxy.errors import PeerProtocolError, Timeout

REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/")]


def test_field_encoder_round_trips_through_hpack_and_keeps_never_indexed() -> None:
    enc, dec = FieldEncoder(), hpack.Decoder()
    fields = [*REQ, (b"user-agent", b"u" * 300), (b"x-new-name", b"v"), (b"accept", b"*/*"),
              hpack.NeverIndexedHeaderTuple(b"authorization", b"secret")]
    for _ in range(3):  # cached encodings decode the same
        out = dec.decode(enc.encode(fields), raw=True)
        assert [tuple(f) for f in out] == [tuple(f) for f in fields]
        assert isinstance(out[-1], hpack.NeverIndexedHeaderTuple)
    assert dec.header_table_size == 0  # the first block declared an empty dynamic table
    enc.header_table_size = 0  # a SETTINGS change: the next block starts with an update
    assert enc.encode([REQ[0]])[:1] == b"\x20"


@pytest.mark.parametrize(
    "extra",
    [
        [(b"connection", b"x")], [(b"keep-alive", b"1")], [(b"upgrade", b"h2c")], [(b"te", b"gzip")],
        [(b"x", b"a\rb")], [(b"x", b"a\nb")], [(b"x", b"a\x00b")], [(b"x", b" a")], [(b"Up", b"v")],
        [(b"content-length", b"1_0")], [(b"content-length", b"5"), (b"content-length", b"6")],
        [(b":path", b"/again")], [(b":status", b"200")],
    ],
)
def test_malformed_request_fields_are_refused(extra: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(PeerProtocolError):
        read_request(REQ + extra)


def test_request_fields_split_and_te_trailers_is_dropped() -> None:
    req = read_request([*REQ, (b"te", b"trailers"), (b"content-type", b"application/grpc"),
                        (b"content-length", b"7"), (b"cookie", b"a"), (b"cookie", b"b")])
    assert (req.method, req.path, req.authority, req.scheme) == (b"GET", b"/", b"web", b"http")
    assert req.content_length == 7 and req.cookies == 2 and grpc.is_grpc(req.content_type)
    assert all(n != b"te" for n, _ in req.headers)
    with pytest.raises(PeerProtocolError):
        read_request([(b"x", b"1"), *REQ])  # pseudo-header after a regular field
    with pytest.raises(PeerProtocolError):
        read_request([REQ[0], REQ[2], REQ[3]])  # no :scheme
    assert read_request([REQ[0], REQ[1], REQ[3]]).authority is None  # :authority is optional
    read_request([(b":method", b"CONNECT"), (b":authority", b"h:443")])


def test_response_fields() -> None:
    assert read_response([(b":status", b"204"), (b"x", b"y")]) == (204, [(b"x", b"y")], None)
    for bad in ([(b"x", b"y")], [(b":status", b"20")], [(b":status", b"200"), (b":status", b"200")],
                [(b":status", b"200"), (b"transfer-encoding", b"chunked")]):
        with pytest.raises(PeerProtocolError):
            read_response(bad)
    with pytest.raises(PeerProtocolError):
        read_response([(b":status", b"200")], trailers=True)


def test_grpc_timeout_parse_and_format() -> None:
    assert grpc.parse_timeout(b"5S") == 5_000_000_000
    assert grpc.parse_timeout(b"100m") == 100_000_000
    assert grpc.parse_timeout(b"1H") == 3_600_000_000_000
    for bad in (b"", b"S", b"5", b"5s", b"123456789S", b"-1S", b"1.5S"):
        assert grpc.parse_timeout(bad) is None
    assert grpc.format_timeout(250_000_000) == b"250000u"
    assert grpc.format_timeout(5_000_000_000) == b"5000000u"
    assert grpc.format_timeout(0) == b"1n"
    for ns in (1, 999, 123_456_789, 86_400_000_000_000):
        assert grpc.parse_timeout(grpc.format_timeout(ns)) <= ns  # never more time than is left


def test_grpc_message_encoding_and_error_trailers() -> None:
    assert grpc.encode_message("a b%é\n") == b"a b%25%C3%A9%0A"
    assert grpc.decode_message(b"a b%25%C3%A9%0A") == "a b%é\n"
    fields = dict(grpc.error_trailers(Timeout("too slow"), b"too+slow"))
    assert fields == {b":status": b"200", b"content-type": b"application/grpc", b"grpc-status": b"4",
                      b"grpc-message": b"too slow", b"l5d-err": b"too+slow"}
