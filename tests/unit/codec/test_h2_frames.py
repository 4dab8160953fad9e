"""The HTTP/2 frame layer in `proxy.codec.h2` (RFC 9113), both sides, fed raw frames:
every connection and stream error an h2spec-style conformance run checks, CONTINUATION
sequencing, padding, SETTINGS and PING, flow control in both directions, and interop
with `h2` as the independent peer."""

from __future__ import annotations

import struct
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from proxy.codec import h2 as c
from proxy.errors import PeerProtocolError

REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"x")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"x")]


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">HBBBL", n >> 8, n & 0xFF, ftype, flags, sid) + payload


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        hi, lo, ftype, flags, sid = struct.unpack_from(">HBBBL", data, pos)
        n = (hi << 8) | lo
        out.append((ftype, flags, sid, data[pos + 9 : pos + 9 + n]))
        pos += 9 + n
    assert pos == len(data)
    return out


SETTINGS = frame(4, 0, 0)
SETTINGS_ACK = frame(4, 1, 0)
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20


def headers(sid: int, fields: list[tuple[bytes, bytes]] = REQ, flags: int = END_STREAM | END_HEADERS,
            enc: hpack.Encoder | None = None) -> bytes:
    return frame(1, flags, sid, (enc or hpack.Encoder()).encode(fields))


def data(sid: int, payload: bytes, flags: int = 0) -> bytes:
    return frame(0, flags, sid, payload)


def rst(sid: int, code: int) -> bytes:
    return frame(3, 0, sid, struct.pack(">L", code))


def window_update(sid: int, inc: int) -> bytes:
    return frame(8, 0, sid, struct.pack(">L", inc))


def setting(ident: int, value: int) -> bytes:
    return frame(4, 0, 0, struct.pack(">HL", ident, value))


def server(**kw: Any) -> c.H2Codec:
    codec = c.H2Codec(client_side=False, **kw)
    out = frames(codec.take_output())
    assert out[0][0] == 4 and out[0][1] == 0  # the server preface is SETTINGS
    assert codec.feed(c.PREFACE + SETTINGS) == [(c.SETTINGS, 0, None, 0, False)]
    assert frames(codec.take_output()) == [(4, 1, 0, b"")]  # acknowledged
    return codec


def goaway_code(codec: c.H2Codec, wire: bytes) -> int:
    with pytest.raises(PeerProtocolError):
        codec.feed(wire)
    out = [f for f in frames(codec.take_output()) if f[0] == 7]
    assert len(out) == 1
    return int(struct.unpack(">LL", out[0][3][:8])[1])


def rst_codes(codec: c.H2Codec) -> list[tuple[int, int]]:
    return [(f[2], struct.unpack(">L", f[3])[0]) for f in frames(codec.take_output()) if f[0] == 3]


# -- connection errors (RFC 9113 §5.4.1): GOAWAY with the right code --------------------------

CONNECTION_ERRORS = [
    ("DATA on stream 0", data(0, b"x"), c.PROTOCOL_ERROR),
    ("DATA on an idle stream", data(1, b"x"), c.PROTOCOL_ERROR),
    ("RST_STREAM on an idle stream", rst(1, 8), c.PROTOCOL_ERROR),
    ("WINDOW_UPDATE on an idle stream", window_update(1, 1), c.PROTOCOL_ERROR),
    ("CONTINUATION on an idle stream", frame(9, END_HEADERS, 1, b"\x82"), c.PROTOCOL_ERROR),
    ("HEADERS on stream 0", headers(0), c.PROTOCOL_ERROR),
    ("HEADERS on an even stream", headers(2), c.PROTOCOL_ERROR),
    ("frame above SETTINGS_MAX_FRAME_SIZE", data(1, b"x" * 16385), c.FRAME_SIZE_ERROR),
    ("HEADERS above SETTINGS_MAX_FRAME_SIZE", frame(1, 5, 1, b"\x82" * 16385), c.FRAME_SIZE_ERROR),
    ("undecodable header block", frame(1, 5, 1, b"\xff\xff\xff\xff\xff\xff\x01"), c.COMPRESSION_ERROR),
    ("index 0", frame(1, 5, 1, b"\x80"), c.COMPRESSION_ERROR),
    ("table size update above the setting", frame(1, 5, 1, b"\x3f\xe2\x1f\x82"), c.COMPRESSION_ERROR),
    ("table size update at the end", frame(1, 5, 1, b"\x82\x86\x84\x20"), c.COMPRESSION_ERROR),
    ("PRIORITY on stream 0", frame(2, 0, 0, b"\x00\x00\x00\x01\x10"), c.PROTOCOL_ERROR),
    ("PRIORITY of an idle stream on itself", frame(2, 0, 1, b"\x00\x00\x00\x01\x10"), c.PROTOCOL_ERROR),
    ("RST_STREAM on stream 0", rst(0, 8), c.PROTOCOL_ERROR),
    ("RST_STREAM of 3 bytes", frame(3, 0, 1, b"\x00\x00\x08"), c.FRAME_SIZE_ERROR),
    ("SETTINGS ack with a payload", frame(4, 1, 0, b"\x00\x01\x00\x00\x10\x00"), c.FRAME_SIZE_ERROR),
    ("SETTINGS on a stream", frame(4, 0, 1, b""), c.PROTOCOL_ERROR),
    ("SETTINGS of 5 bytes", frame(4, 0, 0, b"\x00\x01\x00\x00\x10"), c.FRAME_SIZE_ERROR),
    ("SETTINGS_ENABLE_PUSH 2", setting(2, 2), c.PROTOCOL_ERROR),
    ("SETTINGS_INITIAL_WINDOW_SIZE 2^31", setting(4, 1 << 31), c.FLOW_CONTROL_ERROR),
    ("SETTINGS_MAX_FRAME_SIZE 16383", setting(5, 16383), c.PROTOCOL_ERROR),
    ("SETTINGS_MAX_FRAME_SIZE 2^24", setting(5, 1 << 24), c.PROTOCOL_ERROR),
    ("PING on a stream", frame(6, 0, 1, b"12345678"), c.PROTOCOL_ERROR),
    ("PING of 6 bytes", frame(6, 0, 0, b"123456"), c.FRAME_SIZE_ERROR),
    ("GOAWAY on a stream", frame(7, 0, 1, b"\x00" * 8), c.PROTOCOL_ERROR),
    ("WINDOW_UPDATE of 0 on the connection", window_update(0, 0), c.PROTOCOL_ERROR),
    ("WINDOW_UPDATE of 3 bytes", frame(8, 0, 0, b"\x00\x00\x01"), c.FRAME_SIZE_ERROR),
    ("connection window above 2^31-1", window_update(0, (1 << 31) - 1), c.FLOW_CONTROL_ERROR),
    ("PUSH_PROMISE from a client", frame(5, 4, 1, b"\x00\x00\x00\x02\x82"), c.PROTOCOL_ERROR),
    ("CONTINUATION after END_HEADERS", headers(1, flags=END_HEADERS) + frame(9, 4, 1, b""), c.PROTOCOL_ERROR),
    ("CONTINUATION on stream 0", headers(1, flags=0) + frame(9, 4, 0, b""), c.PROTOCOL_ERROR),
    ("CONTINUATION on another stream", headers(1, flags=0) + frame(9, 4, 3, b""), c.PROTOCOL_ERROR),
    ("PRIORITY inside a header block", headers(1, flags=0) + frame(2, 0, 1, b"\x00\x00\x00\x00\x10"),
     c.PROTOCOL_ERROR),
    ("unknown frame inside a header block", headers(1, flags=0) + frame(0xFA, 0, 1, b""), c.PROTOCOL_ERROR),
    ("DATA inside a header block", headers(1, flags=0) + data(1, b"x"), c.PROTOCOL_ERROR),
    ("CONTINUATION after DATA", headers(1, POST, flags=END_HEADERS) + data(1, b"x") + frame(9, 4, 1, b""),
     c.PROTOCOL_ERROR),
    ("DATA pad length beyond the frame", data(1, b"\x05abc", PADDED), c.PROTOCOL_ERROR),
    ("HEADERS pad length beyond the frame", frame(1, 5 | PADDED, 1, b"\x09\x82\x86\x84"), c.PROTOCOL_ERROR),
    ("stream id below one already opened", headers(5) + headers(3), c.PROTOCOL_ERROR),
    ("HEADERS on a stream closed by the client's reset",
     headers(1, flags=END_HEADERS) + rst(1, 8) + headers(1), c.STREAM_CLOSED),
    ("DATA on a stream closed by the client's reset",
     headers(1, POST, flags=END_HEADERS) + rst(1, 8) + data(1, b"x"), c.STREAM_CLOSED),
    ("content-length above the DATA",
     headers(1, [*POST, (b"content-length", b"3")], END_HEADERS) + data(1, b"ab", END_STREAM), c.PROTOCOL_ERROR),
    ("DATA beyond content-length",
     headers(1, [*POST, (b"content-length", b"3")], END_HEADERS) + data(1, b"ab") + data(1, b"cd"),
     c.PROTOCOL_ERROR),
]


@pytest.mark.parametrize(("wire", "code"), [(w, code) for _, w, code in CONNECTION_ERRORS],
                         ids=[name for name, _, _ in CONNECTION_ERRORS])
def test_connection_errors(wire: bytes, code: int) -> None:
    codec = server()
    assert goaway_code(codec, wire) == code
    assert codec.feed(headers(101)) == []  # nothing more is read


def test_invalid_preface_and_a_preface_without_settings() -> None:
    codec = c.H2Codec(client_side=False)
    codec.take_output()
    assert goaway_code(codec, b"GET / HTTP/1.1\r\n\r\n") == c.PROTOCOL_ERROR
    codec = c.H2Codec(client_side=False)
    codec.take_output()
    assert goaway_code(codec, c.PREFACE + frame(6, 0, 0, b"12345678")) == c.PROTOCOL_ERROR


def test_concurrency_limit_refuses_the_stream_and_goaway_reports_the_last_stream() -> None:
    codec = server(max_concurrent_streams=2)
    enc = hpack.Encoder()
    codec.feed(headers(1, flags=END_HEADERS, enc=enc) + headers(3, flags=END_HEADERS, enc=enc))
    # §5.1.2: a stream error; REFUSED_STREAM (§8.7: not processed, safe to retry)
    assert codec.feed(headers(5, enc=enc)) == []
    assert rst_codes(codec) == [(5, c.REFUSED_STREAM)]
    assert codec.resets == 1
    # the connection lives on: a stream ends, the next one is taken (the block was decoded,
    # so the HPACK context is intact)
    codec.feed(rst(1, c.CANCEL))
    assert codec.feed(headers(7, enc=enc))[0][:2] == (c.HEADERS, 7)
    assert goaway_code(codec, data(0, b"x")) == c.PROTOCOL_ERROR
    codec = server(max_concurrent_streams=2)
    codec.feed(headers(1, flags=END_HEADERS) + headers(3, flags=END_HEADERS))
    codec.close(c.NO_ERROR)
    ((_, _, _, body),) = [f for f in frames(codec.take_output()) if f[0] == 7]
    assert struct.unpack(">LL", body) == (3, c.NO_ERROR)


# -- stream errors (RFC 9113 §5.4.2): RST_STREAM, the connection lives on -----------------------

STREAM_ERRORS = [
    ("DATA on a half-closed (remote) stream", data(1, b"x"), c.STREAM_CLOSED),
    ("HEADERS on a half-closed (remote) stream", headers(1), c.STREAM_CLOSED),
    ("PRIORITY of 4 bytes", frame(2, 0, 1, b"\x80\x00\x00\x01"), c.FRAME_SIZE_ERROR),
    ("PRIORITY on itself", frame(2, 0, 1, b"\x00\x00\x00\x01\x10"), c.PROTOCOL_ERROR),
    ("WINDOW_UPDATE of 0", window_update(1, 0), c.PROTOCOL_ERROR),
    ("stream window above 2^31-1", window_update(1, (1 << 31) - 1), c.FLOW_CONTROL_ERROR),
]


@pytest.mark.parametrize(("wire", "code"), [(w, code) for _, w, code in STREAM_ERRORS],
                         ids=[name for name, _, _ in STREAM_ERRORS])
def test_stream_errors(wire: bytes, code: int) -> None:
    codec = server()
    events = codec.feed(headers(1) + wire)
    assert events[0][:2] == (c.HEADERS, 1)
    assert events[-1] == (c.RESET, 1, code, 0, False)  # the user forgets the stream
    assert rst_codes(codec) == [(1, code)]
    codec.feed(data(1, b"late"))  # late frames on a stream we reset are ignored
    assert codec.feed(headers(3))[0][:2] == (c.HEADERS, 3)


def test_headers_depending_on_themselves_and_a_second_headers_without_end_stream() -> None:
    codec = server()
    prio = b"\x00\x00\x00\x01\x10"
    assert codec.feed(frame(1, 5 | PRIORITY, 1, prio + hpack.Encoder().encode(REQ))) == []
    assert rst_codes(codec) == [(1, c.PROTOCOL_ERROR)]
    codec = server()
    enc = hpack.Encoder()
    events = codec.feed(headers(1, POST, END_HEADERS, enc) + headers(1, [(b"x", b"y")], END_HEADERS, enc))
    assert events[-1] == (c.RESET, 1, c.PROTOCOL_ERROR, 0, False)  # §8.1: trailers must end the stream


def test_data_after_end_stream_on_a_closed_stream_is_stream_closed() -> None:
    codec = server()
    codec.feed(headers(1))
    codec.send_headers(1, [(b":status", b"200")], end_stream=True)
    codec.take_output()
    assert goaway_code(codec, data(1, b"x")) == c.STREAM_CLOSED


# -- frames that must be accepted ---------------------------------------------------------------


def test_ping_settings_unknown_frames_flags_and_reserved_bit() -> None:
    codec = server()
    assert codec.feed(frame(6, 0, 0, b"abcdefgh") + frame(6, 1, 0, b"ignored!")) == []
    assert frames(codec.take_output()) == [(6, 1, 0, b"abcdefgh")]  # only the non-ACK is answered
    assert codec.feed(frame(0xFA, 0xFF, 0, b"??") + setting(0x99, 7) + SETTINGS_ACK) == [
        (c.SETTINGS, 0, None, 0, False)]
    assert frames(codec.take_output()) == [(4, 1, 0, b"")]
    # unknown flags on HEADERS, the reserved bit set on the stream id
    events = codec.feed(frame(1, 0xFF & ~(PADDED | PRIORITY), 0x80000001, hpack.Encoder().encode(REQ)))
    assert events == [(c.HEADERS, 1, REQ, 0, True)]
    # GOAWAY and RST_STREAM with unknown error codes are events, not errors
    assert codec.feed(rst(1, 0xABCD)) == [(c.RESET, 1, 0xABCD, 0, False)]
    assert codec.feed(frame(7, 0, 0, struct.pack(">LL", 1, 0xABCD) + b"debug")) == [
        (c.GOAWAY, 1, 0xABCD, 0, False)]


def test_continuation_padding_and_priority_and_byte_by_byte_input() -> None:
    block = hpack.Encoder().encode([*POST, (b"x-long", b"v" * 100)])
    wire = (
        frame(1, PADDED | PRIORITY, 1, b"\x03" + b"\x00\x00\x00\x00\x10" + block[:10] + b"\x00" * 3)
        + frame(9, 0, 1, block[10:50])
        + frame(9, END_HEADERS, 1, block[50:])
        + data(1, b"\x02hello\x00\x00", PADDED)
        + data(1, b"", END_STREAM)
    )
    want = [(c.HEADERS, 1, [*POST, (b"x-long", b"v" * 100)], 0, False),
            (c.DATA, 1, b"hello", 8, 0), (c.DATA, 1, b"", 0, END_STREAM)]
    codec = server()
    assert codec.feed(wire) == want
    codec = server()
    got: list[Any] = []
    for i in range(len(wire)):
        got += codec.feed(wire[i : i + 1])
    assert got == want


def test_after_our_goaway_new_streams_are_refused() -> None:
    codec = server()
    codec.feed(headers(1))
    codec.close(c.NO_ERROR, 1)
    assert frames(codec.take_output()) == [(7, 0, 0, struct.pack(">LL", 1, 0))]
    assert codec.feed(headers(3)) == []
    assert rst_codes(codec) == [(3, c.REFUSED_STREAM)]
    codec.send_headers(1, [(b":status", b"204")], end_stream=True)  # stream 1 still finishes
    assert frames(codec.take_output())[0][:3] == (1, END_STREAM | END_HEADERS, 1)


# -- flow control ---------------------------------------------------------------------------------


def test_receive_windows_are_enforced_and_credited_in_batches() -> None:
    codec = server(stream_window=100, connection_window=65535)
    codec.feed(headers(1, POST, END_HEADERS))
    ev = codec.feed(data(1, b"x" * 60))
    assert ev == [(c.DATA, 1, b"x" * 60, 60, 0)]
    codec.ack(1, 60)  # above half the stream window: credited
    assert frames(codec.take_output()) == [(8, 0, 1, struct.pack(">L", 60))]
    assert codec.feed(data(1, b"x" * 100)) == [(c.DATA, 1, b"x" * 100, 100, 0)]
    assert codec.feed(data(1, b"x")) == [(c.RESET, 1, c.FLOW_CONTROL_ERROR, 0, False)]
    assert rst_codes(codec) == [(1, c.FLOW_CONTROL_ERROR)]
    codec = server(stream_window=1 << 20, connection_window=65535)
    codec.feed(headers(1, POST, END_HEADERS))
    for _ in range(4):
        codec.feed(data(1, b"x" * 16000))
    assert goaway_code(codec, data(1, b"x" * 1536)) == c.FLOW_CONTROL_ERROR


def test_send_queue_follows_the_peers_windows() -> None:
    codec = server()
    codec.feed(setting(4, 3) + headers(1))  # stream windows of 3 bytes
    codec.take_output()
    codec.send_headers(1, [(b":status", b"200")])
    assert codec.send_data(1, b"abcdefgh") == 5
    codec.end_stream(1, [(b"grpc-status", b"0")])
    out = frames(codec.take_output())
    assert [(f[0], f[3]) for f in out[1:]] == [(0, b"abc")]
    # §6.9.2: lowering the initial window makes the stream window negative
    codec.feed(setting(4, 1))
    codec.feed(window_update(1, 2))  # -2 + 2 = 0: nothing may be sent
    assert [f for f in frames(codec.take_output()) if f[0] == 0] == []
    codec.feed(window_update(1, 4))
    assert [(f[0], f[3]) for f in frames(codec.take_output()) if f[0] == 0] == [(0, b"defg")]
    codec.feed(window_update(1, 10))
    out = frames(codec.take_output())
    assert [(f[0], f[1]) for f in out] == [(0, 0), (1, END_STREAM | END_HEADERS)]  # trailers last
    assert codec.buffered(1) == 0 and 1 not in codec._streams
    # an empty DATA with END_STREAM needs no window
    codec.feed(setting(4, 0) + headers(3))
    codec.take_output()
    codec.send_headers(3, [(b":status", b"200")])
    codec.end_stream(3)
    assert frames(codec.take_output())[-1] == (0, END_STREAM, 3, b"")


def test_connection_window_blocks_every_stream_and_drains_in_order() -> None:
    codec = server()
    enc = hpack.Encoder()
    codec.feed(headers(1, enc=enc) + headers(3, enc=enc))
    codec.send_headers(1, [(b":status", b"200")])
    codec.send_headers(3, [(b":status", b"200")])
    big = b"y" * 65535
    assert codec.send_data(1, big) == 0  # the whole connection window, in 16 KiB frames
    assert codec.send_data(1, b"more", end_stream=True) == 4
    assert codec.send_data(3, b"three", end_stream=True) == 5
    sent = b"".join(f[3] for f in frames(codec.take_output()) if f[0] == 0)
    assert sent == big
    codec.feed(window_update(0, 100))  # stream 1's own window is spent too: only 3 goes
    assert [(f[2], f[1], f[3]) for f in frames(codec.take_output()) if f[0] == 0] == [(3, END_STREAM, b"three")]
    codec.feed(window_update(1, 100))
    assert [(f[2], f[1], f[3]) for f in frames(codec.take_output()) if f[0] == 0] == [(1, END_STREAM, b"more")]


# -- the client side ------------------------------------------------------------------------------


def _pair() -> tuple[c.H2Codec, h2.connection.H2Connection]:
    ours = c.H2Codec(client_side=True)
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    peer.initiate_connection()
    peer.receive_data(ours.take_output())
    assert ours.feed(peer.data_to_send()) == [(c.SETTINGS, 0, None, 0, False)]
    peer.receive_data(ours.take_output())
    return ours, peer


def test_client_exchange_with_h2_as_the_server() -> None:
    ours, peer = _pair()
    sid = ours.next_stream_id()
    ours.send_headers(sid, POST)
    ours.send_data(sid, b"q" * 40000)  # above one frame
    ours.end_stream(sid, [(b"x-trailer", b"1")])
    got = peer.receive_data(ours.take_output())
    body = b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived))
    assert body == b"q" * 40000
    assert any(isinstance(e, h2.events.TrailersReceived) for e in got)
    peer.send_headers(sid, [(b":status", b"103"), (b"link", b"</a>")])
    peer.send_headers(sid, [(b":status", b"200"), (b"content-length", b"5")])
    peer.send_data(sid, b"hello")
    peer.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    events = ours.feed(peer.data_to_send())
    assert [e[0] for e in events] == [c.INFORMATIONAL, c.HEADERS, c.DATA, c.TRAILERS]
    assert events[1][2] == [(b":status", b"200"), (b"content-length", b"5")]
    assert events[3] == (c.TRAILERS, sid, [(b"grpc-status", b"0")], 0, True)
    assert ours._streams == {}
    assert ours.next_stream_id() == sid + 2


def test_client_refuses_push_and_a_server_enabling_it() -> None:
    ours, peer = _pair()
    sid = ours.next_stream_id()
    ours.send_headers(sid, REQ, end_stream=True)
    peer.receive_data(ours.take_output())
    promise = frame(5, END_HEADERS, sid, b"\x00\x00\x00\x02" + hpack.Encoder().encode(REQ))
    assert goaway_code(ours, promise) == c.PROTOCOL_ERROR
    ours, _ = _pair()
    assert goaway_code(ours, setting(2, 1)) == c.PROTOCOL_ERROR


def test_client_resets_a_101_response() -> None:
    """RFC 9113 §8.6: HTTP/2 has no 101 (Switching Protocols); a peer sending one sent a
    malformed response, never a reason to tunnel."""
    ours, peer = _pair()
    sid = ours.next_stream_id()
    ours.send_headers(sid, REQ, end_stream=True)
    peer.receive_data(ours.take_output())
    events = ours.feed(frame(1, END_HEADERS, sid, hpack.Encoder().encode([(b":status", b"101")])))
    assert events == [(c.RESET, sid, c.PROTOCOL_ERROR, 0, False)]
    assert rst_codes(ours) == [(sid, c.PROTOCOL_ERROR)]


def test_client_head_response_and_content_length() -> None:
    ours, peer = _pair()
    sid = ours.next_stream_id()
    ours.send_headers(sid, [(b":method", b"HEAD"), *REQ[1:]], end_stream=True)
    peer.receive_data(ours.take_output())
    peer.send_headers(sid, [(b":status", b"200"), (b"content-length", b"99")], end_stream=True)
    assert ours.feed(peer.data_to_send())[0][4] is True  # no body for HEAD: fine
    sid = ours.next_stream_id()
    ours.send_headers(sid, REQ, end_stream=True)
    peer.receive_data(ours.take_output())
    peer.send_headers(sid, [(b":status", b"200"), (b"content-length", b"9")])
    peer.send_data(sid, b"short", end_stream=True)
    with pytest.raises(PeerProtocolError):
        ours.feed(peer.data_to_send())


def test_server_exchange_with_h2_as_the_client_many_streams() -> None:
    ours = server()
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    peer.initiate_connection()
    peer.data_to_send()
    peer.receive_data(ours.take_output())
    sids = []
    for i in range(50):
        sid = peer.get_next_available_stream_id()
        peer.send_headers(sid, [*POST, (b"x-i", b"%d" % i)])
        peer.send_data(sid, b"b%d" % i, end_stream=True)
        sids.append(sid)
    events = ours.feed(peer.data_to_send())
    assert [e[0] for e in events] == [c.HEADERS, c.DATA] * 50
    for sid in sids:
        ours.send_headers(sid, [(b":status", b"200"), (b"x-sid", b"%d" % sid)])
        ours.send_data(sid, b"r" * 1000, end_stream=True)
    got = peer.receive_data(ours.take_output())
    ended = [e.stream_id for e in got if isinstance(e, h2.events.StreamEnded)]
    assert ended == sids
    assert ours._streams == {} and ours._inbound_open == 0
