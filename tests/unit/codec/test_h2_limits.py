"""What bounds an abusive HTTP/2 peer in `proxy.codec.h2`: header blocks bounded in
CONTINUATION frames and in bytes with frame overhead (the 2024 CONTINUATION floods),
what the wire layer's header-read timer reads (`reading_head`, `blocks_in`), the reset
counter the rapid-reset accounting compares, refused streams, the bound on control
frames queued unsent (ping and settings floods), and one rule with the
HTTP/1.1 reader for the bytes of a request's target and host."""

from __future__ import annotations

import struct

import hpack
import pytest

from proxy.codec import h1
from proxy.codec import h2 as c
from proxy.errors import PeerProtocolError

from .test_h2_frames import (
    END_HEADERS,
    END_STREAM,
    POST,
    REQ,
    SETTINGS,
    data,
    frame,
    frames,
    goaway_code,
    headers,
    rst,
    rst_codes,
    server,
)

CONTINUATION = 9


def goaway(codec: c.H2Codec) -> tuple[int, int, bytes]:
    ((_, _, _, body),) = [f for f in frames(codec.take_output()) if f[0] == 7]
    last, code = struct.unpack_from(">LL", body)
    return last, code, body[8:]


# -- CONTINUATION floods ------------------------------------------------------------------------


def test_empty_continuation_frames_are_bounded_in_number() -> None:
    codec = server()
    codec.feed(headers(1, flags=0))  # no END_HEADERS: a block is open
    limit = codec._max_cont_frames
    # the default block budget (64 KiB list + a frame) needs 5 full frames; 8 spare
    assert limit == (65536 + 16384) // 16384 + 8
    codec.feed(frame(CONTINUATION, 0, 1) * limit)  # up to the limit: still reading
    assert codec.reading_head()
    with pytest.raises(PeerProtocolError, match="CONTINUATION"):
        codec.feed(frame(CONTINUATION, 0, 1))
    _, code, debug = goaway(codec)
    assert code == c.ENHANCE_YOUR_CALM and b"CONTINUATION frames" in debug
    assert codec.feed(frame(CONTINUATION, 0, 1)) == []  # nothing more is read
    assert not codec.reading_head()


def test_a_block_counts_its_frame_headers_against_its_byte_budget() -> None:
    codec = server(max_header_list_size=100)  # budget: 100 + 16384 bytes
    codec.feed(headers(1, flags=0))
    full = frame(CONTINUATION, 0, 1, b"\x00" * 16384)
    assert goaway_code(codec, full + full) == c.ENHANCE_YOUR_CALM  # far past it
    # 16484 payload bytes in all, exactly the budget without frame headers; with the
    # three frames' 27 bytes it is past it
    codec = server(max_header_list_size=100)
    codec.feed(frame(1, 0, 1, b""))
    assert goaway_code(codec, full + frame(CONTINUATION, 0, 1, b"\x00" * 100)) == c.ENHANCE_YOUR_CALM


def test_a_large_block_in_small_frames_within_the_limits_is_read() -> None:
    fields = [*POST, (b"x-big", b"v" * 40000)]
    block = hpack.Encoder().encode(fields)
    step = 8192  # fragmenting at half the frame size still fits
    parts = [block[i : i + step] for i in range(0, len(block), step)]
    wire = frame(1, 0, 1, parts[0])
    for i, p in enumerate(parts[1:], 1):
        wire += frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, 1, p)
    codec = server()
    assert codec.feed(wire) == [(c.HEADERS, 1, fields, 0, False)]
    assert codec.blocks_in == 1 and not codec.reading_head()


# -- what the header-read timer reads -----------------------------------------------------------


def test_reading_head_from_the_preface_to_each_block() -> None:
    codec = c.H2Codec(client_side=False)
    codec.take_output()
    codec.feed(c.PREFACE[:10])
    assert codec.reading_head()  # part of the preface
    codec.feed(c.PREFACE[10:])
    assert codec.reading_head()  # the preface without its SETTINGS
    codec.feed(SETTINGS[:5])
    assert codec.reading_head()
    codec.feed(SETTINGS[5:])
    assert not codec.reading_head()
    enc = hpack.Encoder()
    h = headers(1, POST, END_HEADERS, enc)
    codec.feed(h[:2])
    assert codec.reading_head()  # a frame header so short its type is unknown yet
    codec.feed(h[2:12])
    assert codec.reading_head() and codec.blocks_in == 0  # part of a HEADERS frame
    codec.feed(h[12:])
    assert not codec.reading_head() and codec.blocks_in == 1
    d = data(1, b"x" * 100)
    codec.feed(d[:50])
    assert not codec.reading_head()  # part of a DATA frame is a body, not a head
    codec.feed(d[50:] + headers(3, flags=END_STREAM, enc=enc))  # HEADERS without END_HEADERS
    assert codec.reading_head() and codec.blocks_in == 1
    codec.feed(frame(CONTINUATION, 0, 3, b""))
    assert codec.reading_head() and codec.blocks_in == 1  # the same block, still open
    codec.feed(frame(CONTINUATION, END_HEADERS, 3, b""))
    assert not codec.reading_head() and codec.blocks_in == 2


# -- resets and refused streams -----------------------------------------------------------------


def test_resets_count_every_stream_that_ended_in_a_reset_and_nothing_else() -> None:
    codec = server(max_concurrent_streams=1)
    enc = hpack.Encoder()
    codec.feed(headers(1, POST, END_HEADERS, enc) + data(1, b"x", END_STREAM))
    assert codec.resets == 0
    codec.send_headers(1, [(b":status", b"200")], end_stream=True)
    codec.feed(headers(3, POST, END_HEADERS, enc) + headers(5, POST, END_HEADERS, enc))
    assert codec.resets == 1 and rst_codes(codec) == [(5, c.REFUSED_STREAM)]  # over the limit
    events = codec.feed(rst(3, c.CANCEL))
    assert events == [(c.RESET, 3, c.CANCEL, 0, False)] and codec.resets == 2
    codec.feed(headers(7, POST, END_HEADERS, enc) + frame(8, 0, 7, b"\x00\x00\x00\x00"))  # stream error
    assert codec.resets == 3
    codec.reset(7)  # our own reset of a stream already gone: not counted
    assert codec.resets == 3


def test_abort_sends_one_goaway_with_the_reason_and_stops_reading() -> None:
    codec = server()
    codec.feed(headers(1) + headers(3))
    codec.close(c.NO_ERROR)
    codec.abort(c.ENHANCE_YOUR_CALM, "too many")
    out = [f for f in frames(codec.take_output()) if f[0] == 7]
    assert [struct.unpack_from(">LL", f[3]) for f in out] == [(3, c.NO_ERROR), (3, c.ENHANCE_YOUR_CALM)]
    assert out[1][3][8:] == b"too many"
    assert codec.feed(headers(5)) == []
    codec.abort(c.PROTOCOL_ERROR, "again")
    assert codec.take_output() == b""


# -- control frames queued unsent (ping and settings floods) ---------------------------------------


@pytest.mark.parametrize("flood", [frame(6, 0, 0, b"12345678"), frame(4, 0, 0)], ids=["ping", "settings"])
def test_control_frames_queued_unsent_are_bounded(flood: bytes) -> None:
    codec = server(max_queued_control=10)
    codec.control_queued = 0  # the user found its buffer empty (the preface's ack left)
    codec.feed(flood * 10)  # up to the bound: answered
    assert codec.control_queued == 10 and len(frames(codec.take_output())) == 10
    codec.control_queued = 0  # they left: the count starts again
    codec.feed(flood * 10)
    with pytest.raises(PeerProtocolError, match="control frames"):
        codec.feed(flood * 5)  # the 11th queued unsent: a flood
    _, code, debug = goaway(codec)
    assert code == c.ENHANCE_YOUR_CALM and b"queued while the peer does not read" in debug
    assert codec.feed(flood) == []


def test_resets_count_as_control_frames_and_no_bound_unless_asked() -> None:
    codec = server(max_queued_control=2)
    enc = hpack.Encoder()
    codec.control_queued = 0
    codec.feed(headers(1, POST, END_HEADERS, enc) + headers(3, POST, END_HEADERS, enc))
    codec.reset(1)  # the user's own reset counts, without raising there
    codec.reset(3)
    codec.feed(frame(6, 0, 0, b"12345678") * 0)
    assert codec.control_queued == 2
    with pytest.raises(PeerProtocolError, match="control frames"):
        codec.feed(frame(6, 0, 0, b"12345678"))
    unbounded = server()
    unbounded.feed(frame(6, 0, 0, b"12345678") * 5000)
    assert unbounded.control_queued == 5001 and len(frames(unbounded.take_output())) == 5000


# -- one rule for a request's target and host, HTTP/1.1 and HTTP/2 ---------------------------------


def _h1_accepts(raw: bytes) -> bool:
    try:
        events = h1.RequestReader().feed(raw)
    except PeerProtocolError:
        return False
    return bool(events)


def _h2_accepts(fields: list[tuple[bytes, bytes]]) -> bool:
    c._checked.clear()  # each case judged on its own
    try:
        c.read_request(fields)
    except PeerProtocolError:
        return False
    return True


def test_path_bytes_refused_by_the_http1_listener_are_refused_on_http2() -> None:
    for b in range(256):
        one = bytes((b,))
        h1_ok = _h1_accepts(b"GET /a" + one + b"b HTTP/1.1\r\nHost: x\r\n\r\n")
        h2_ok = _h2_accepts([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                             (b":path", b"/a" + one + b"b")])
        assert h1_ok == h2_ok, f"byte {b:#04x}: HTTP/1.1 {'accepts' if h1_ok else 'refuses'} it in a target"
    assert not _h2_accepts([(b":method", b"GET"), (b":scheme", b"http"), (b":path", "/café".encode())])


def test_host_bytes_refused_by_the_http1_listener_are_refused_in_authority_and_host() -> None:
    assert c._AUTHORITY_CHARS == h1._HOST_CHARS  # one set, held equal here
    for b in range(256):
        one = bytes((b,))
        if b in (0x0A, 0x0D):
            continue  # would end the h1 field line itself; h2 refuses them anyway (below)
        h1_ok = _h1_accepts(b"GET / HTTP/1.1\r\nHost: a" + one + b"b\r\n\r\n")
        auth_ok = _h2_accepts([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a" + one + b"b"),
                               (b":path", b"/")])
        host_ok = _h2_accepts([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                               (b"host", b"a" + one + b"b")])
        assert h1_ok == auth_ok, f"byte {b:#04x} in :authority"
        if b not in (0x09, 0x20):  # h1 strips them around the value; inside, both refuse
            assert h1_ok == host_ok, f"byte {b:#04x} in host"
    assert not _h2_accepts([*REQ[:3], (b":authority", b"user@x")])  # RFC 9113 §8.3.1: no userinfo
    assert not _h2_accepts([*REQ, (b"host", b"\xc3\xa9")])


def test_a_response_may_carry_any_host_field_without_poisoning_the_request_check() -> None:
    c._checked.clear()
    status, fields, _ = c.read_response([(b":status", b"200"), (b"host", b"caf\xc3\xa9")])
    assert status == 200 and fields == [(b"host", b"caf\xc3\xa9")]
    with pytest.raises(PeerProtocolError, match="host"):
        c.read_request([*REQ, (b"host", b"caf\xc3\xa9")])
