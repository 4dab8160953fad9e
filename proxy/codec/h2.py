"""HTTP/2 (RFC 9113) and HPACK (RFC 7541) for the data plane, sans-IO, either side.

Owns: the frame layer (parsing, the stream state machine of RFC 9113 §5.1, SETTINGS
and their acknowledgement, PING, GOAWAY, flow control in both directions, CONTINUATION
sequencing, padding), an HPACK decoder (static and dynamic tables, Huffman strings), a
static-table-only HPACK encoder, the send-side flow-control queues (DATA that the
peer's window cannot take yet waits here, in order, with the stream's END_STREAM or
trailers behind it), the bound on control frames queued while the peer does not read
(`max_queued_control`), and the RFC 9113 §8 checks on field sections in both directions:
request and response pseudo-headers, connection-specific fields, `te`, field-name case
and characters, CR/LF/NUL and surrounding whitespace in values, and a `content-length`
that is not plain digits or disagrees with itself or with the DATA received.

Must not: touch sockets, loops or clocks; import asyncio or anything from `proxy` but
`proxy.errors`. Output accumulates here and is taken once per batch (`take_output`),
so one read's worth of frames becomes one write.

Why not the `h2` package: it is correct but costs tens of microseconds per frame in
pure Python (a frame object, a logging call and a state-machine transition per frame,
header validation passes, and a scan of every stream to count the open ones), which
made it most of the proxy's CPU per request. This layer does what a proxy needs in one
pass per frame, and hands events on as plain tuples:

    (HEADERS, sid, fields, 0, ended)       request (server side) / final response (client)
    (INFORMATIONAL, sid, fields, 0, False) 1xx response (client side)
    (TRAILERS, sid, fields, 0, True)
    (DATA, sid, data, flow_controlled_length, ended)
    (RESET, sid, error_code, 0, False)     the peer reset the stream, or we did for an
                                           error of its making (the user forgets it)
    (SETTINGS, 0, None, 0, False)          the peer's SETTINGS arrived (and were acked)
    (GOAWAY, last_stream_id, error_code, 0, False)

A connection error raises PeerProtocolError from `feed`, with the GOAWAY already queued.
`hpack` supplies the RFC's tables only; the tests use `h2` and `hpack` as the
independent peer.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from typing import Any, Final

# The RFC 7541 Appendix A static table and Appendix B Huffman code are data, taken from
# the `hpack` package (installed with `h2`) rather than retyped here.
from hpack import NeverIndexedHeaderTuple as _HpackNeverIndexed
from hpack.huffman_constants import REQUEST_CODES as _HUFFMAN_CODES
from hpack.huffman_constants import REQUEST_CODES_LENGTH as _HUFFMAN_LENGTHS
from hpack.table import HeaderTable as _HeaderTable
from mypy_extensions import mypyc_attr

from proxy.errors import LocalProtocolError, PeerProtocolError

log = logging.getLogger(__name__)

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 §7 error codes.
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

# Event kinds (the first element of each event tuple).
HEADERS: Final = 1
INFORMATIONAL: Final = 2
TRAILERS: Final = 3
DATA: Final = 4
RESET: Final = 5
SETTINGS: Final = 6
GOAWAY: Final = 7

#: Stream window we advertise. 1 MiB lets one stream fill a loopback or LAN link
#: without waiting on WINDOW_UPDATE round trips, and is the most a slow consumer can
#: make us hold per stream (the connection window below caps the sum).
DEFAULT_STREAM_WINDOW: Final = 1 << 20
#: Connection window we advertise: the bound on unforwarded bytes per connection.
DEFAULT_CONNECTION_WINDOW: Final = 4 << 20
#: Queued send bytes per stream above which the producer is paused, and below which
#: it resumes (same scale as the HTTP/1 write-buffer water marks).
SEND_HIGH_WATER: Final = 256 * 1024
SEND_LOW_WATER: Final = 64 * 1024

# Frame types (RFC 9113 §6) and flags.
_DATA: Final = 0x0
_HEADERS: Final = 0x1
_PRIORITY: Final = 0x2
_RST_STREAM: Final = 0x3
_SETTINGS: Final = 0x4
_PUSH_PROMISE: Final = 0x5
_PING: Final = 0x6
_GOAWAY: Final = 0x7
_WINDOW_UPDATE: Final = 0x8
_CONTINUATION: Final = 0x9
_END_STREAM: Final = 0x1
_ACK: Final = 0x1
_END_HEADERS: Final = 0x4
_PADDED: Final = 0x8
_PRIORITY_FLAG: Final = 0x20

#: The frame size we accept: the default SETTINGS_MAX_FRAME_SIZE, which we never raise
#: (larger frames only save a 9-byte header per 16 KiB).
_MAX_FRAME: Final = 16384
_MAX_WINDOW: Final = (1 << 31) - 1  # RFC 9113 §6.9.1
#: SETTINGS_HEADER_TABLE_SIZE we leave at its default: the dynamic table our decoder keeps.
_DECODER_TABLE_SIZE: Final = 4096
#: Closed streams remembered per connection, so a late frame on one is told apart from a
#: frame on a stream never opened (RFC 9113 §5.1). Frames for a stream we reset are
#: ignored for as long as it is remembered; a peer's are not that late in practice.
_CLOSED_MEMORY: Final = 1024
#: Control frames (PING and SETTINGS acknowledgements, RST_STREAM) that may wait unsent
#: before the connection ends with GOAWAY(ENHANCE_YOUR_CALM), when the user asks for the
#: bound (`max_queued_control`). A peer that sends PINGs, SETTINGS or streams to refuse
#: and never reads would otherwise grow our output without end (the 2019 "ping flood"
#: and "settings flood", CVE-2019-9512, CVE-2019-9515). 1000 is nghttp2's
#: max_outbound_ack and Envoy's max_outbound_control_frames default.
MAX_QUEUED_CONTROL: Final = 1000
#: Frame header bytes: what each frame of a header block costs on top of its payload. A
#: block's budget counts them, so empty CONTINUATION frames are not free (CVE-2024-27316,
#: CVE-2024-28182: floods of them held servers' memory and CPU without ever ending a block).
_FRAME_OVERHEAD: Final = 9
#: CONTINUATION frames one header block may take beyond the ones its byte budget needs
#: at full size. nghttp2 (and so Apache httpd, Node.js and curl) allows 8 in all after
#: the 2024 CONTINUATION-flood advisories; the block's byte budget (the header list limit
#: plus a frame) needs 5 at 16 KiB with the default 64 KiB list, so a peer that
#: fragments at 8 KiB still fits.
_SPARE_CONTINUATIONS: Final = 8

_FRAME_HEAD: Final = struct.Struct(">HBBBL")  # length (24 bits as 16+8), type, flags, stream id
_pack_head = _FRAME_HEAD.pack
_unpack_head = _FRAME_HEAD.unpack_from
_U32: Final = struct.Struct(">L")
_SETTING: Final = struct.Struct(">HL")
_GOAWAY_BODY: Final = struct.Struct(">LL")

_SETTINGS_ACK_FRAME: Final = _pack_head(0, 0, _SETTINGS, _ACK, 0)

# Closed-stream records (values of H2Codec._closed).
_GONE_IDLE: Final = 0  # never opened (and not implicitly closed by a higher one)
_GONE_RESET: Final = 1  # we reset it: late frames are expected and ignored (§5.1)
_GONE_CLOSED: Final = 2  # closed normally or by the peer's reset
_GONE_SKIPPED: Final = 3  # below a stream the peer opened, but never seen here


class _ConnError(Exception):
    """A connection error (RFC 9113 §5.4.1) found while parsing: GOAWAY with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- HPACK (RFC 7541) -------------------------------------------------------------------------

_STATIC: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b"", b""), *((bytes(n), bytes(v)) for n, v in _HeaderTable.STATIC_TABLE)
)
_STATIC_LEN: Final = len(_STATIC) - 1  # 61


@mypyc_attr(native_class=False)  # a bytes subclass: compiled classes cannot extend bytes
class NeverIndexed(bytes):
    """The value of a field that arrived as "never indexed" (RFC 7541 §6.2.3): an
    intermediary must forward it with the same representation (§7.1.3). The mark is on
    the value, not the (name, value) pair: a pair may be rebuilt on the way (a compiled
    build keeps pairs unboxed), a value object travels as it is."""

    __slots__ = ()


def _build_huffman() -> tuple[list[int], list[int], list[int], frozenset[int]]:
    """The Huffman code as a binary tree: child arrays and the symbol at each leaf."""
    zero, one, sym = [-1], [-1], [-1]
    for s in range(257):
        code, n = _HUFFMAN_CODES[s], _HUFFMAN_LENGTHS[s]
        node = 0
        for i in range(n - 1, -1, -1):
            side = one if (code >> i) & 1 else zero
            nxt = side[node]
            if nxt < 0:
                nxt = len(sym)
                zero.append(-1)
                one.append(-1)
                sym.append(-1)
                side[node] = nxt
            node = nxt
        sym[node] = s
    # §5.2: padding is the most significant bits of EOS (all ones), at most 7 of them.
    accept, node = {0}, 0
    for _ in range(7):
        node = one[node]
        accept.add(node)
    return zero, one, sym, frozenset(accept)


_H_ZERO, _H_ONE, _H_SYM, _H_ACCEPT = _build_huffman()
#: Per tree node, the decoding of each next input byte: (node after it, bytes emitted),
#: node -1 when the byte completes EOS (an error, §5.2). A row is built the first time
#: its node is reached (2048 steps), so only the few nodes real strings visit cost
#: anything, and decoding is one table lookup per input byte.
_H_ROWS: list[list[tuple[int, bytes]] | None] = [None] * len(_H_SYM)


def _huffman_row(start: int) -> list[tuple[int, bytes]]:
    zero, one, sym = _H_ZERO, _H_ONE, _H_SYM
    row = []
    for byte in range(256):
        node, out = start, bytearray()
        for i in range(7, -1, -1):
            node = one[node] if (byte >> i) & 1 else zero[node]
            s = sym[node]
            if s >= 0:
                if s == 256:
                    node = -1
                    break
                out.append(s)
                node = 0
        row.append((node, bytes(out)))
    _H_ROWS[start] = row
    return row


class HpackError(Exception):
    """An undecodable header block: a connection error of COMPRESSION_ERROR (RFC 9113 §4.3)."""


#: Decoded Huffman strings by their encoded bytes. Most Huffman-coded values repeat
#: (user agents, content types, paths); bounded because they come from peers.
_HUFFMAN_CACHE_MAX: Final = 4096
_huffman_cache: dict[bytes, bytes] = {}


def huffman_decode(data: bytes) -> bytes:
    hit = _huffman_cache.get(data)
    if hit is not None:
        return hit
    rows = _H_ROWS
    node = 0
    parts = []
    for byte in data:
        row = rows[node] or _huffman_row(node)
        node, out = row[byte]
        if node < 0:
            raise HpackError("EOS in a Huffman-coded string")
        if out:
            parts.append(out)
    if node not in _H_ACCEPT:
        raise HpackError("invalid Huffman padding")
    result = b"".join(parts)
    if len(_huffman_cache) >= _HUFFMAN_CACHE_MAX:
        _huffman_cache.clear()
    _huffman_cache[data] = result
    return result


def _varint(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """RFC 7541 §5.1: the continuation bytes of an integer whose prefix was full."""
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:  # no field, table or string in a 64 KiB block needs more
            raise HpackError("HPACK integer too large")


def _hstring(data: bytes, pos: int, end_of_block: int) -> tuple[bytes, int]:
    """RFC 7541 §5.2: a string literal at `pos`; returns it and the position after it."""
    b = data[pos]
    length = b & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _varint(data, pos, length)
    end = pos + length
    if end > end_of_block:
        raise HpackError("string literal runs past the header block")
    s = data[pos:end]
    if b & 0x80:
        s = huffman_decode(s)
    return s, end


class Decoder:
    """HPACK decoding with the dynamic table (RFC 7541 §2.3, §4). Fields come back as
    (name, value) tuples; a repeated indexed field is the same tuple object each time.

    `max_header_list_size` bounds the decoded section (RFC 9113 §6.5.2, counted as
    §4.1 counts table entries); going over raises HeaderListTooLarge."""

    __slots__ = ("_table", "_size", "_max_size", "max_header_list_size")

    def __init__(self, max_header_list_size: int = 65536) -> None:
        self._table: list[tuple[bytes, bytes]] = []  # newest last
        self._size = 0
        self._max_size = _DECODER_TABLE_SIZE
        self.max_header_list_size = max_header_list_size

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return self._decode(data)
        except IndexError:
            raise HpackError("truncated header block") from None

    def _field_at(self, idx: int) -> tuple[bytes, bytes]:
        if idx <= _STATIC_LEN:
            if idx == 0:
                raise HpackError("index 0")  # §6.1
            return _STATIC[idx]
        table = self._table
        i = len(table) - (idx - _STATIC_LEN)
        if i < 0:
            raise HpackError(f"index {idx} beyond the dynamic table")  # §2.3.3
        return table[i]

    def _decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        static = _STATIC
        table = self._table
        pos, n = 0, len(data)
        total, limit = 0, self.max_header_list_size
        while pos < n:
            b = data[pos]
            if b & 0x80:  # §6.1 indexed field
                idx = b & 0x7F
                pos += 1
                if idx == 0x7F:
                    idx, pos = _varint(data, pos, idx)
                if 0 < idx <= _STATIC_LEN:
                    field = static[idx]
                else:
                    i = len(table) - (idx - _STATIC_LEN)
                    if idx == 0 or i < 0:
                        raise HpackError(f"invalid index {idx}")
                    field = table[i]
            elif b & 0x40:  # §6.2.1 literal with incremental indexing
                idx = b & 0x3F
                pos += 1
                if idx == 0x3F:
                    idx, pos = _varint(data, pos, idx)
                if idx:
                    name = self._field_at(idx)[0]
                else:
                    name, pos = _hstring(data, pos, n)
                value, pos = _hstring(data, pos, n)
                field = (name, value)
                self._add(field)
                table = self._table
            elif b & 0x20:  # §6.3 dynamic table size update
                if out:  # §4.2: only at the start of a block
                    raise HpackError("dynamic table size update after a field")
                size = b & 0x1F
                pos += 1
                if size == 0x1F:
                    size, pos = _varint(data, pos, size)
                if size > _DECODER_TABLE_SIZE:
                    raise HpackError(f"dynamic table size {size} above SETTINGS_HEADER_TABLE_SIZE")
                self._max_size = size
                self._evict(size)
                continue
            else:  # §6.2.2 without indexing / §6.2.3 never indexed
                idx = b & 0x0F
                pos += 1
                if idx == 0x0F:
                    idx, pos = _varint(data, pos, idx)
                if idx:
                    name = self._field_at(idx)[0]
                else:
                    name, pos = _hstring(data, pos, n)
                value, pos = _hstring(data, pos, n)
                field = (name, NeverIndexed(value) if b & 0x10 else value)
            total += len(field[0]) + len(field[1]) + 32
            if total > limit:
                raise HeaderListTooLarge(f"header list larger than {limit} bytes")
            out.append(field)  # a method call compiles to PyList_Append; a bound `append` would not
        return out

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + 32
        if size > self._max_size:  # §4.4: an entry larger than the table empties it
            self._table = []
            self._size = 0
            return
        self._evict(self._max_size - size)
        self._table.append(field)
        self._size += size

    def _evict(self, room: int) -> None:
        table = self._table
        drop = 0
        while self._size > room:
            n, v = table[drop]
            self._size -= len(n) + len(v) + 32
            drop += 1
        if drop:
            del table[:drop]


class HeaderListTooLarge(HpackError):
    """The decoded header section exceeds SETTINGS_MAX_HEADER_LIST_SIZE."""


class FieldEncoder:
    """HPACK encoding (RFC 7541) without a dynamic table.

    Why: the proxy forwards header sections it did not write, many with per-request
    values (`l5d-reqid`, `l5d-ctx-trace`, grpc-timeout). A full encoder Huffman-codes
    each such value byte by byte in Python, inserts it into the dynamic table (evicting
    others), and searches that table per field: it was a fifth of the proxy's CPU per
    request. Here each field is an index into the static table or a literal *without
    indexing* (§6.2.2), plain (non-Huffman) strings: a static match or a cached name
    prefix, then the value's length and bytes, so a per-request value costs no more
    than a repeated one and nothing is cached per value. The price is
    larger header blocks (no dynamic-table references), which on service networks costs
    far less than the CPU. A field that arrived never-indexed is sent never-indexed
    (§7.1.3: intermediaries must keep that representation).

    The dynamic table this encoder uses has size 0, declared in the first block
    (§6.3), so no later SETTINGS_HEADER_TABLE_SIZE change can make it too large; a
    change is still acknowledged with an update in the next block, as decoders such as
    nghttp2 expect after they lower the setting.
    """

    __slots__ = ("_pending_update",)

    def __init__(self) -> None:
        self._pending_update = True

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._pending_update = True  # the peer's SETTINGS_HEADER_TABLE_SIZE changed

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        # One lookup by name (bytes keys hash once per object, and names decoded from
        # the static table are the same objects): the name's literal prefix, and the
        # static table's full entries for that name, if it has any (`:status: 200`).
        by_name, lengths = _by_name, _LENGTHS
        parts: list[bytes] = [_SIZE_ZERO] if self._pending_update else []
        self._pending_update = False
        for h in headers:
            if type(h) is not tuple:  # never indexed (or a caller's own tuple type)
                parts.append(_encode_field(h))
                continue
            name: bytes = h[0]
            value: bytes = h[1]
            entry = by_name.get(name)
            if entry is None:
                entry = _name_entry(name)
            full = entry[1]
            if full is not None:
                b = full.get(value)
                if b is not None:
                    parts.append(b)
                    continue
            n = len(value)
            parts.append(entry[0])
            parts.append(lengths[n] if n < 127 else _integer(n, 7, 0x00))
            parts.append(value)
        return b"".join(parts)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 §5.1: `value` with an N-bit prefix, high bits of the first byte `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return _integer(len(data), 7, 0x00) + data  # H bit clear: no Huffman (§5.2)


def _name_prefix(name: bytes, first: int) -> bytes:
    """A literal field's representation up to its value: §6.2.2 (without indexing,
    `first` 0x00) or §6.2.3 (never indexed, 0x10), the name by static index if it has
    one."""
    idx = _STATIC_NAME.get(name)
    return _integer(idx, 4, first) if idx is not None else bytes((first,)) + _string(name)


def _name_entry(name: bytes) -> tuple[bytes, dict[bytes, bytes] | None]:
    """The encoder's entry for a name outside the static table: its literal prefix,
    cached (the value after it is the only per-request part). Names come from peers, so
    the cache is bounded; the static table's names are never evicted."""
    entry = (_name_prefix(name, 0x00), None)
    if len(_by_name) >= _NAME_CACHE_MAX:
        _by_name.clear()
        _by_name.update(_STATIC_BY_NAME)
    _by_name[name] = entry
    return entry


def _encode_field(h: Any) -> bytes:
    name, value = h[0], h[1]
    if isinstance(value, NeverIndexed) or isinstance(h, _HpackNeverIndexed):
        return _name_prefix(name, 0x10) + _string(value)
    b = _STATIC_ENCODED.get((name, value))
    if b is not None:
        return b
    return _name_prefix(name, 0x00) + _string(value)


_STATIC_ENCODED: Final[dict[tuple[bytes, bytes], bytes]] = {}  # §6.1 indexed fields
_STATIC_NAME: Final[dict[bytes, int]] = {}
for _i in range(1, _STATIC_LEN + 1):
    _STATIC_ENCODED.setdefault(_STATIC[_i], _integer(_i, 7, 0x80))
    _STATIC_NAME.setdefault(_STATIC[_i][0], _i)
_SIZE_ZERO: Final = b"\x20"  # §6.3 dynamic table size update to 0
_LENGTHS: Final = tuple(bytes((n,)) for n in range(127))  # §5.2 short string lengths, H clear
_NAME_CACHE_MAX: Final = 4096
#: Per name: its literal prefix (§6.2.2, static name index when it has one) and the
#: static table's full entries for it (value -> §6.1 index), or None when it has none.
_STATIC_BY_NAME: Final[dict[bytes, tuple[bytes, dict[bytes, bytes] | None]]] = {}
for (_n, _v), _enc in _STATIC_ENCODED.items():
    _full = _STATIC_BY_NAME[_n][1] if _n in _STATIC_BY_NAME else {}
    assert _full is not None
    _full[_v] = _enc
    _STATIC_BY_NAME[_n] = (_name_prefix(_n, 0x00), _full)
_by_name: Final[dict[bytes, tuple[bytes, dict[bytes, bytes] | None]]] = dict(_STATIC_BY_NAME)


# -- the connection ---------------------------------------------------------------------------


class _Stream:
    """One stream's state (RFC 9113 §5.1) and flow-control windows; the send queue
    fields are used only when the peer's window is short."""

    __slots__ = ("sid", "send_window", "recv_window", "unacked", "local_closed", "remote_closed",
                 "response_seen", "content_length", "received", "no_body", "chunks", "queued",
                 "end_pending", "trailers")

    def __init__(self, sid: int, send_window: int, recv_window: int) -> None:
        self.sid = sid
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0  # received bytes the user has passed on, not yet credited
        self.local_closed = False  # we sent END_STREAM
        self.remote_closed = False  # the peer sent END_STREAM
        self.response_seen = False  # client side: the final response HEADERS arrived
        self.content_length: int | None = None  # what the DATA must add up to (§8.1.1)
        self.received = 0
        self.no_body = False  # client side: a HEAD request, whose response has no content
        self.chunks: deque[bytes] | None = None
        self.queued = 0
        self.end_pending = False
        self.trailers: list[tuple[bytes, bytes]] | None = None


def _content_length_of(fields: list[tuple[bytes, bytes]]) -> int | None:
    """The first well-formed content-length; a malformed one is the §8 checks' to refuse."""
    for name, value in fields:
        if name == b"content-length" and value.isdigit() and value.isascii():
            return int(value)
    return None


class H2Codec:
    """One HTTP/2 connection, either side. Bytes in, event tuples out (see the module
    docstring); sends queue behind the peer's flow-control window. After `feed`,
    `drained` lists streams whose queue fell below `SEND_LOW_WATER` (their producers
    may resume)."""

    __slots__ = (
        "client_side", "drained", "_out", "_buf", "_streams", "_closed", "_decoder", "_encoder",
        "_preface_left", "_settings_seen", "_dead", "_cont_sid", "_cont_flags", "_cont_parts",
        "_cont_size", "_cont_dep", "_highest_in", "_next_out", "_inbound_open", "_goaway_sent",
        "_send_window", "_recv_window", "_recv_unacked", "_conn_credit_at", "_stream_window",
        "_stream_credit_at", "_max_streams", "_max_block", "_remote_initial", "_remote_frame",
        "_remote_max_streams", "_remote_table_size", "_waiting", "_cont_frames", "_max_cont_frames",
        "resets", "blocks_in", "control_queued", "_max_control",
    )

    def __init__(
        self,
        *,
        client_side: bool,
        max_concurrent_streams: int | None = None,
        max_header_list_size: int = 65536,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        max_queued_control: int | None = None,
    ) -> None:
        self.client_side = client_side
        self.drained: list[int] = []
        self._out: list[bytes] = []
        self._buf = b""
        self._streams: dict[int, _Stream] = {}
        self._closed: dict[int, int] = {}  # recently closed stream -> _GONE_RESET / _GONE_CLOSED
        self._decoder = Decoder(max_header_list_size)
        self._encoder = FieldEncoder()
        self._preface_left = b"" if client_side else PREFACE  # the client preface still expected
        self._settings_seen = False  # §3.4: the peer's preface ends with SETTINGS
        self._dead = False  # a connection error was sent: nothing more is read
        self._cont_sid = 0  # a header block is open on this stream: only CONTINUATION may follow
        self._cont_flags = 0
        self._cont_parts: list[bytes] = []
        self._cont_size = 0
        self._cont_frames = 0
        self._cont_dep = -1
        # Streams this side saw end in a reset: the peer's RST_STREAM, a stream error or a
        # refused stream. The wire compares it across a `feed` (rapid-reset accounting),
        # so a batch without resets costs it nothing.
        self.resets = 0
        self.blocks_in = 0  # header blocks completed: tells one pending block from the next
        # Control frames queued since the user last found its write buffer empty (it sets
        # this to 0 then): past `max_queued_control`, a connection error.
        self.control_queued = 0
        self._max_control = max_queued_control if max_queued_control is not None else 1 << 62
        self._highest_in = 0  # the highest stream id the peer opened (GOAWAY's last_stream_id)
        self._next_out = 1 if client_side else 2
        self._inbound_open = 0
        self._goaway_sent = False
        self._send_window = 65535  # §6.9.2: the connection window starts at 65535
        self._recv_window = connection_window
        self._recv_unacked = 0
        # Credit is returned in batches, once half a window has been passed on: one
        # WINDOW_UPDATE per half window instead of one per DATA frame.
        self._conn_credit_at = max(connection_window // 2, 1)
        self._stream_window = stream_window
        self._stream_credit_at = max(stream_window // 2, 1)
        self._max_streams = max_concurrent_streams if max_concurrent_streams is not None else 1 << 31
        # The most header-block bytes (HEADERS plus CONTINUATION) we buffer: HPACK never
        # makes a field longer than its decoded size plus a few bytes, so a block past
        # this would decode past the header list limit anyway (RFC 9113 §10.5.1).
        self._max_block = max_header_list_size + _MAX_FRAME
        self._max_cont_frames = self._max_block // _MAX_FRAME + _SPARE_CONTINUATIONS
        self._remote_initial = 65535
        self._remote_frame = _MAX_FRAME
        self._remote_max_streams = 1 << 31  # §6.5.2: unlimited until the peer says
        self._remote_table_size = 4096
        self._waiting: dict[int, _Stream] = {}  # streams with a send queue
        out = self._out
        if client_side:
            out.append(PREFACE)
        # §6.5.2 settings we differ from the defaults on.
        settings = [_SETTING.pack(0x4, stream_window), _SETTING.pack(0x6, max_header_list_size)]
        if client_side:
            settings.append(_SETTING.pack(0x2, 0))  # the proxy never accepts pushes
        if max_concurrent_streams is not None:
            settings.append(_SETTING.pack(0x3, max_concurrent_streams))
        body = b"".join(settings)
        out.append(_pack_head(0, len(body), _SETTINGS, 0, 0) + body)
        if connection_window > 65535:
            out.append(_window_update(0, connection_window - 65535))

    # -- input -------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Any]:
        """Events for `data`. A connection error raises PeerProtocolError; the GOAWAY is
        already queued, so the caller writes `take_output()` and closes."""
        if self._dead:
            return []
        if self._buf:
            data = self._buf + data
            self._buf = b""
        events: list[Any] = []
        try:
            if self._preface_left:
                want = self._preface_left
                k = min(len(want), len(data))
                if data[:k] != want[:k]:
                    raise _ConnError(PROTOCOL_ERROR, "invalid connection preface")  # §3.4
                self._preface_left = want[k:]
                data = data[k:]
                if self._preface_left:
                    return events
            pos, n = 0, len(data)
            streams = self._streams
            while n - pos >= 9:
                # Typed: the five fields unboxed once, then native arithmetic (untyped,
                # every shift, mask and comparison below was a generic number operation).
                head: tuple[int, int, int, int, int] = _unpack_head(data, pos)
                hi, lo, ftype, flags, sid = head
                length = (hi << 8) | lo
                if length > _MAX_FRAME:
                    raise _ConnError(FRAME_SIZE_ERROR, f"frame of {length} bytes")  # §4.2
                end = pos + 9 + length
                if end > n:
                    break
                payload = data[pos + 9 : end]
                pos = end
                sid &= 0x7FFFFFFF  # §4.1: the reserved bit is ignored
                if self._cont_sid:
                    if ftype != _CONTINUATION or sid != self._cont_sid:
                        raise _ConnError(PROTOCOL_ERROR, "header block interrupted")  # §6.10
                    self._continuation(flags, payload, events)
                elif not self._settings_seen and ftype != _SETTINGS:
                    raise _ConnError(PROTOCOL_ERROR, "the preface must end with SETTINGS")  # §3.4
                elif ftype == _DATA:
                    self._data(flags, sid, payload, events, streams)
                elif ftype == _HEADERS:
                    self._headers(flags, sid, payload, events)
                elif ftype == _WINDOW_UPDATE:
                    self._window_update(sid, payload, events)
                elif ftype == _SETTINGS:
                    self._settings(flags, sid, payload, events)
                elif ftype == _RST_STREAM:
                    self._rst_stream(sid, payload, events)
                elif ftype == _PING:
                    if sid:
                        raise _ConnError(PROTOCOL_ERROR, "PING on a stream")  # §6.7
                    if length != 8:
                        raise _ConnError(FRAME_SIZE_ERROR, "PING length")
                    if not flags & _ACK:
                        self._out.append(_pack_head(0, 8, _PING, _ACK, 0) + payload)
                        self._control()
                elif ftype == _PRIORITY:
                    self._priority(sid, payload, events)
                elif ftype == _GOAWAY:
                    if sid:
                        raise _ConnError(PROTOCOL_ERROR, "GOAWAY on a stream")  # §6.8
                    if length < 8:
                        raise _ConnError(FRAME_SIZE_ERROR, "GOAWAY length")
                    last, code = _GOAWAY_BODY.unpack_from(payload)
                    events.append((GOAWAY, last & 0x7FFFFFFF, code, 0, False))
                elif ftype == _CONTINUATION:
                    raise _ConnError(PROTOCOL_ERROR, "CONTINUATION without a header block")  # §6.10
                elif ftype == _PUSH_PROMISE:
                    # A server never accepts one; a client said SETTINGS_ENABLE_PUSH=0 (§8.4).
                    raise _ConnError(PROTOCOL_ERROR, "PUSH_PROMISE")
                # §4.1, §5.5: frames of unknown type are ignored
            if pos < n:
                self._buf = data[pos:]
        except _ConnError as exc:
            self._fail(exc.code, str(exc))
            raise PeerProtocolError(f"HTTP/2 connection error: {exc}") from None
        except HpackError as hexc:  # its own name: a compiled build types `exc` by the clause above
            code = ENHANCE_YOUR_CALM if isinstance(hexc, HeaderListTooLarge) else COMPRESSION_ERROR
            self._fail(code, str(hexc))
            raise PeerProtocolError(f"HTTP/2 connection error: {hexc}") from None
        return events

    def _fail(self, code: int, message: str) -> None:
        log.debug("h2 connection error %d: %s", code, message)
        self._dead = True
        self._buf = b""
        self._cont_parts = []
        self._waiting.clear()
        if not self._goaway_sent or code:
            self._goaway_sent = True
            # The message goes along as GOAWAY's debug data (§6.8): the peer learns what
            # it did, in its own terms (it is about frames the peer sent).
            self._out.append(_goaway(self._highest_in, code, message.encode("ascii", "replace")))

    def abort(self, code: int, reason: str) -> None:
        """End the connection for a reason the user found (a limit, a timeout): GOAWAY
        with `code` and `reason` as debug data, then nothing more is read or sent. The
        caller writes `take_output()` and closes."""
        if not self._dead:
            self._fail(code, reason)

    def reading_head(self) -> bool:
        """Whether the peer is part-way through something that must arrive whole before
        any request can go on: the client preface and first SETTINGS, a header block
        (HEADERS without END_HEADERS, then CONTINUATION), or a HEADERS frame, or a frame
        header, only partly received. The wire layer times these out as it times out
        HTTP/1.1 heads (`limits.headerReadTimeoutMs`); with `blocks_in` it tells one
        block from the next. Called once per read, not per frame."""
        if self._cont_sid or not self._settings_seen:
            return not self._dead
        buf = self._buf
        return bool(buf) and (len(buf) < 4 or buf[3] == _HEADERS or buf[3] == _CONTINUATION)

    def _gone(self, sid: int) -> int:
        """What a stream id not in `_streams` is: idle, reset by us, or closed."""
        rec = self._closed.get(sid)
        if rec is not None:
            return rec
        if sid & 1 == (0 if self.client_side else 1):  # the peer's parity
            return _GONE_SKIPPED if sid <= self._highest_in else _GONE_IDLE
        return _GONE_SKIPPED if sid < self._next_out else _GONE_IDLE

    def _data(self, flags: int, sid: int, payload: bytes, events: list[Any], streams: dict[int, _Stream]) -> None:
        if not sid:
            raise _ConnError(PROTOCOL_ERROR, "DATA on stream 0")  # §6.1
        flow = len(payload)
        if flags & _PADDED:
            if not flow or payload[0] >= flow:
                raise _ConnError(PROTOCOL_ERROR, "DATA padding exceeds the frame")  # §6.1
            payload = payload[1 : flow - payload[0]]
        if flow > self._recv_window:
            raise _ConnError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")  # §6.9.1
        self._recv_window -= flow
        st = streams.get(sid)
        if st is None or st.remote_closed:
            self._credit(flow)  # nobody will pass these on: keep the connection window open
            if st is not None:  # half-closed (remote): §5.1
                self._stream_error(st, STREAM_CLOSED, events)
                return
            gone = self._gone(sid)
            if gone == _GONE_IDLE:
                raise _ConnError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")  # §5.1
            if gone != _GONE_RESET:
                raise _ConnError(STREAM_CLOSED, f"DATA on closed stream {sid}")  # §5.1
            return
        if self.client_side and not st.response_seen:
            self._credit(flow)
            self._stream_error(st, PROTOCOL_ERROR, events)  # §8.1: DATA before the response
            return
        if flow > st.recv_window:
            self._credit(flow)
            self._stream_error(st, FLOW_CONTROL_ERROR, events)  # §6.9.1
            return
        st.recv_window -= flow
        end = flags & _END_STREAM
        cl = st.content_length
        if cl is not None:
            st.received += len(payload)
            if st.received > cl or (end and st.received != cl):
                raise _ConnError(PROTOCOL_ERROR, "DATA disagrees with content-length")  # §8.1.1
        events.append((DATA, sid, payload, flow, end))
        if end:
            st.remote_closed = True
            if st.local_closed:
                self._close(st, _GONE_CLOSED)

    def _headers(self, flags: int, sid: int, payload: bytes, events: list[Any]) -> None:
        if not sid:
            raise _ConnError(PROTOCOL_ERROR, "HEADERS on stream 0")  # §6.2
        dep = -1
        if flags & (_PADDED | _PRIORITY_FLAG):
            start, stop = 0, len(payload)
            if flags & _PADDED:
                if not stop:
                    raise _ConnError(FRAME_SIZE_ERROR, "HEADERS too short for its padding")
                stop -= payload[0]
                start = 1
            if flags & _PRIORITY_FLAG:
                if len(payload) < start + 5:
                    raise _ConnError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
                dep = _U32.unpack_from(payload, start)[0] & 0x7FFFFFFF
                start += 5
            if stop < start:
                raise _ConnError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")  # §6.2
            payload = payload[start:stop]
        if flags & _END_HEADERS:
            self._header_block(sid, flags, payload, dep, events)
            return
        self._cont_sid = sid
        self._cont_flags = flags
        self._cont_parts = [payload]
        self._cont_size = len(payload) + _FRAME_OVERHEAD
        self._cont_frames = 0
        self._cont_dep = dep

    def _continuation(self, flags: int, payload: bytes, events: list[Any]) -> None:
        # Bounded in frames and in bytes with each frame's header counted, so neither
        # empty nor tiny CONTINUATION frames can keep a block open. ENHANCE_YOUR_CALM
        # (§7: "excessive load"): the frames break no rule of the protocol, there are
        # only too many of them; and the block cannot be skipped (the HPACK context
        # needs it, §4.3), so this is a connection error.
        self._cont_frames += 1
        self._cont_size += len(payload) + _FRAME_OVERHEAD
        if self._cont_frames > self._max_cont_frames:
            raise _ConnError(
                ENHANCE_YOUR_CALM, f"header block of more than {self._max_cont_frames} CONTINUATION frames"
            )
        if self._cont_size > self._max_block:
            raise _ConnError(ENHANCE_YOUR_CALM, f"header block larger than {self._max_block} bytes")
        if payload:
            self._cont_parts.append(payload)
        if flags & _END_HEADERS:
            sid, self._cont_sid = self._cont_sid, 0
            block = b"".join(self._cont_parts)
            self._cont_parts = []
            self._header_block(sid, self._cont_flags, block, self._cont_dep, events)

    def _header_block(self, sid: int, flags: int, block: bytes, dep: int, events: list[Any]) -> None:
        # Decoded first, whatever becomes of the stream: the dynamic table must see every
        # block (RFC 9113 §4.3).
        fields = self._decoder.decode(block)
        self.blocks_in += 1
        end = bool(flags & _END_STREAM)
        st = self._streams.get(sid)
        if st is not None:
            if dep == sid:
                self._stream_error(st, PROTOCOL_ERROR, events)  # §5.3.1 depends on itself
            elif st.remote_closed:
                self._stream_error(st, STREAM_CLOSED, events)  # §5.1 half-closed (remote)
            elif self.client_side and not st.response_seen:
                status = fields[0][1] if fields and fields[0][0] == b":status" else b""
                if len(status) == 3 and status[0] == 0x31:  # 1xx: informational, more follows
                    if end or status == b"101":
                        # §8.1 (an interim response cannot end the stream); §8.6: HTTP/2
                        # has no 101, so one is malformed (a proxy must not start a tunnel).
                        self._stream_error(st, PROTOCOL_ERROR, events)
                    else:
                        events.append((INFORMATIONAL, sid, fields, 0, False))
                    return
                st.response_seen = True
                if not st.no_body and status != b"204" and status != b"304":
                    st.content_length = _content_length_of(fields)
                    if end and st.content_length:
                        raise _ConnError(PROTOCOL_ERROR, "content-length with no DATA")  # §8.1.1
                events.append((HEADERS, sid, fields, 0, end))
                if end:
                    self._remote_end(st)
            elif not end:
                self._stream_error(st, PROTOCOL_ERROR, events)  # §8.1: trailers end the stream
            else:
                if st.content_length is not None and st.received != st.content_length:
                    raise _ConnError(PROTOCOL_ERROR, "DATA disagrees with content-length")  # §8.1.1
                events.append((TRAILERS, sid, fields, 0, True))
                self._remote_end(st)
            return
        if self.client_side or not sid & 1:
            gone = self._gone(sid)
            if gone == _GONE_RESET:
                return
            if gone == _GONE_CLOSED:
                raise _ConnError(STREAM_CLOSED, f"HEADERS on closed stream {sid}")  # §5.1
            raise _ConnError(PROTOCOL_ERROR, f"HEADERS on stream {sid}, which the peer cannot open")
        if sid <= self._highest_in:
            gone = self._gone(sid)
            if gone == _GONE_RESET:
                return
            if gone == _GONE_CLOSED:
                raise _ConnError(STREAM_CLOSED, f"HEADERS on closed stream {sid}")  # §5.1
            raise _ConnError(PROTOCOL_ERROR, f"stream {sid} below one already opened")  # §5.1.1
        self._highest_in = sid
        st = _Stream(sid, self._remote_initial, self._stream_window)
        self._streams[sid] = st
        self._inbound_open += 1
        if self._inbound_open > self._max_streams:
            # §5.1.2: a stream error, PROTOCOL_ERROR or REFUSED_STREAM; REFUSED_STREAM
            # tells the client nothing was processed, so it may retry (§8.7), and a client
            # that opened streams before our SETTINGS arrived keeps its connection.
            self._stream_error(st, REFUSED_STREAM, events, tell=False)
            return
        if dep == sid:
            self._stream_error(st, PROTOCOL_ERROR, events, tell=False)  # §5.3.1
            return
        if self._goaway_sent:
            # After our GOAWAY nothing new is processed; REFUSED_STREAM says it is safe
            # to retry elsewhere (§8.7).
            self._stream_error(st, REFUSED_STREAM, events, tell=False)
            return
        if not end:
            st.content_length = _content_length_of(fields)
        events.append((HEADERS, sid, fields, 0, end))
        if end:
            st.remote_closed = True

    def _remote_end(self, st: _Stream) -> None:
        st.remote_closed = True
        if st.local_closed:
            self._close(st, _GONE_CLOSED)

    def _priority(self, sid: int, payload: bytes, events: list[Any]) -> None:
        if not sid:
            raise _ConnError(PROTOCOL_ERROR, "PRIORITY on stream 0")  # §6.3
        st = self._streams.get(sid)
        if len(payload) != 5:
            if st is None:
                raise _ConnError(FRAME_SIZE_ERROR, "PRIORITY length")
            self._stream_error(st, FRAME_SIZE_ERROR, events)
            return
        if _U32.unpack_from(payload)[0] & 0x7FFFFFFF == sid:  # §5.3.1 depends on itself
            if st is None:
                raise _ConnError(PROTOCOL_ERROR, f"PRIORITY of stream {sid} depends on itself")
            self._stream_error(st, PROTOCOL_ERROR, events)
        # Otherwise ignored: RFC 9113 §5.3.2 deprecates the priority scheme.

    def _rst_stream(self, sid: int, payload: bytes, events: list[Any]) -> None:
        if len(payload) != 4:
            raise _ConnError(FRAME_SIZE_ERROR, "RST_STREAM length")  # §6.4
        if not sid:
            raise _ConnError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        st = self._streams.get(sid)
        if st is None:
            if self._gone(sid) == _GONE_IDLE:
                raise _ConnError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")  # §6.4
            return
        self._close(st, _GONE_CLOSED)
        self.resets += 1
        events.append((RESET, sid, _U32.unpack(payload)[0], 0, False))

    def _window_update(self, sid: int, payload: bytes, events: list[Any]) -> None:
        if len(payload) != 4:
            raise _ConnError(FRAME_SIZE_ERROR, "WINDOW_UPDATE length")  # §6.9
        inc = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not sid:
            if not inc:
                raise _ConnError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += inc
            if self._send_window > _MAX_WINDOW:
                raise _ConnError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")  # §6.9.1
            if self._waiting:
                self._flush_all()
            return
        st = self._streams.get(sid)
        if st is None:
            if self._gone(sid) == _GONE_IDLE:
                raise _ConnError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")  # §5.1
            return
        if not inc:
            self._stream_error(st, PROTOCOL_ERROR, events)  # §6.9
            return
        st.send_window += inc
        if st.send_window > _MAX_WINDOW:
            self._stream_error(st, FLOW_CONTROL_ERROR, events)  # §6.9.1
            return
        if st.chunks is not None:
            self._flush(st)

    def _settings(self, flags: int, sid: int, payload: bytes, events: list[Any]) -> None:
        if sid:
            raise _ConnError(PROTOCOL_ERROR, "SETTINGS on a stream")  # §6.5
        if flags & _ACK:
            if payload:
                raise _ConnError(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            if not self._settings_seen:
                raise _ConnError(PROTOCOL_ERROR, "the preface must end with SETTINGS")  # §3.4
            return
        if len(payload) % 6:
            raise _ConnError(FRAME_SIZE_ERROR, "SETTINGS length")
        self._settings_seen = True
        window_delta = 0
        for i in range(0, len(payload), 6):
            ident, value = _SETTING.unpack_from(payload, i)
            if ident == 0x1:  # HEADER_TABLE_SIZE
                if value != self._remote_table_size:
                    self._remote_table_size = value
                    self._encoder.header_table_size = value
            elif ident == 0x2:  # ENABLE_PUSH
                if value > 1 or (value and self.client_side):
                    raise _ConnError(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")  # §6.5.2
            elif ident == 0x3:
                self._remote_max_streams = value
            elif ident == 0x4:  # INITIAL_WINDOW_SIZE
                if value > _MAX_WINDOW:
                    raise _ConnError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                window_delta += value - self._remote_initial
                self._remote_initial = value
            elif ident == 0x5:  # MAX_FRAME_SIZE
                if not _MAX_FRAME <= value <= 0xFFFFFF:
                    raise _ConnError(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self._remote_frame = value
            elif ident == 0x8 and value > 1:  # ENABLE_CONNECT_PROTOCOL (RFC 8441 §3)
                raise _ConnError(PROTOCOL_ERROR, f"SETTINGS_ENABLE_CONNECT_PROTOCOL {value}")
            # MAX_HEADER_LIST_SIZE is advisory; unknown settings are ignored (§6.5.2)
        self._out.append(_SETTINGS_ACK_FRAME)
        self._control()
        if window_delta:
            # §6.9.2: every stream's window moves by the change, and may go negative.
            for st in self._streams.values():
                st.send_window += window_delta
                if st.send_window > _MAX_WINDOW:
                    raise _ConnError(FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
            if window_delta > 0 and self._waiting:
                self._flush_all()
        events.append((SETTINGS, 0, None, 0, False))

    def _stream_error(self, st: _Stream, code: int, events: list[Any], tell: bool = True) -> None:
        """RFC 9113 §5.4.2: RST_STREAM, and the user forgets the stream (a RESET event)."""
        self._out.append(_rst_frame(st.sid, code))
        self._close(st, _GONE_RESET)
        self.resets += 1
        if tell:
            events.append((RESET, st.sid, code, 0, False))
        self._control()

    def _control(self) -> None:
        """A control frame was queued in answer to the peer: bound them (MAX_QUEUED_CONTROL)."""
        n = self.control_queued = self.control_queued + 1
        if n > self._max_control:
            raise _ConnError(
                ENHANCE_YOUR_CALM,
                f"more than {self._max_control} control frames (PING and SETTINGS acks, RST_STREAM) "
                "queued while the peer does not read",
            )

    def _close(self, st: _Stream, how: int) -> None:
        sid = st.sid
        del self._streams[sid]
        if st.chunks is not None:
            st.chunks = None
            st.queued = 0
            self._waiting.pop(sid, None)
        if (sid & 1) != self.client_side:  # the peer opened it
            self._inbound_open -= 1
        closed = self._closed
        closed[sid] = how
        if len(closed) >= 2 * _CLOSED_MEMORY:
            # Keep the newest _CLOSED_MEMORY, rebuilt at once: amortised O(1) per stream.
            # (Deleting the oldest one at a time leaves holes at the front of the dict that
            # every `next(iter(...))` walks past: thousands of instructions per stream.)
            self._closed = dict(list(closed.items())[_CLOSED_MEMORY:])

    def _credit(self, n: int) -> None:
        if n:
            self._recv_unacked += n
            if self._recv_unacked >= self._conn_credit_at:
                self._out.append(_window_update(0, self._recv_unacked))
                self._recv_window += self._recv_unacked
                self._recv_unacked = 0

    # -- output ------------------------------------------------------------------------

    def take_output(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        return data

    def send_headers(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        st = self._streams.get(sid)
        if st is None:
            if not self.client_side or sid != self._next_out or self._dead:
                log.debug("headers for closed stream %d dropped", sid)
                return
            if self._goaway_sent:
                raise LocalProtocolError(f"cannot open stream {sid} after GOAWAY")
            st = self._streams[sid] = _Stream(sid, self._remote_initial, self._stream_window)
            self._next_out = sid + 2
            if headers and headers[0][1] == b"HEAD" and headers[0][0] == b":method":
                st.no_body = True
        elif st.local_closed or st.end_pending:
            log.debug("headers for ended stream %d dropped", sid)
            return
        block = self._encoder.encode(headers)
        flags = _END_STREAM if end_stream else 0
        size = len(block)
        limit = self._remote_frame
        out = self._out
        if size <= limit:
            out.append(_pack_head(size >> 8, size & 0xFF, _HEADERS, flags | _END_HEADERS, sid) + block)
        else:  # §6.10: the rest in CONTINUATION frames, back to back
            out.append(_pack_head(limit >> 8, limit & 0xFF, _HEADERS, flags, sid) + block[:limit])
            for i in range(limit, size, limit):
                part = block[i : i + limit]
                last = _END_HEADERS if i + limit >= size else 0
                out.append(_pack_head(len(part) >> 8, len(part) & 0xFF, _CONTINUATION, last, sid) + part)
        if end_stream:
            st.local_closed = True
            if st.remote_closed:
                self._close(st, _GONE_CLOSED)

    def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> int:
        """Send or queue `data`; returns the bytes now queued on the stream."""
        st = self._streams.get(sid)
        if st is None or st.local_closed or st.end_pending:
            return 0
        if st.chunks is None:
            n = len(data)
            if not n or (n <= self._send_window and n <= st.send_window and n <= self._remote_frame):
                # The common case: one frame, now (an empty one needs no window, §6.9.1).
                self._send_window -= n
                st.send_window -= n
                head = _pack_head(n >> 8, n & 0xFF, _DATA, _END_STREAM if end_stream else 0, sid)
                if n <= 4096:
                    self._out.append(head + data)
                else:
                    self._out.append(head)
                    self._out.append(data)
                if end_stream:
                    st.local_closed = True
                    if st.remote_closed:
                        self._close(st, _GONE_CLOSED)
                return 0
            st.chunks = deque()
            self._waiting[sid] = st
        if data:
            st.chunks.append(data)
            st.queued += len(data)
        if end_stream:
            st.end_pending = True
        self._flush(st)
        return st.queued

    def end_stream(self, sid: int, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """END_STREAM after any queued DATA: as trailers when given, else an empty DATA."""
        st = self._streams.get(sid)
        if st is None or st.local_closed or st.end_pending:
            return
        if st.chunks is not None:
            st.end_pending = True
            st.trailers = trailers
            self._flush(st)
        elif trailers:
            self.send_headers(sid, trailers, end_stream=True)
        else:
            self.send_data(sid, b"", end_stream=True)

    def buffered(self, sid: int) -> int:
        st = self._streams.get(sid)
        return 0 if st is None else st.queued

    def reset(self, sid: int, code: int = CANCEL) -> None:
        """RST_STREAM, unless the stream is already closed (§5.1: nothing is sent then)."""
        st = self._streams.get(sid)
        if st is not None and not self._dead:
            self._out.append(_rst_frame(sid, code))
            self._close(st, _GONE_RESET)
            self.control_queued += 1  # bounded by the user's check (it cannot raise here)

    def forget(self, sid: int) -> None:
        """The stream is gone (reset): nothing is kept for it (kept for callers' symmetry)."""
        st = self._streams.get(sid)
        if st is not None:
            self._close(st, _GONE_RESET)

    def ack(self, sid: int, size: int) -> None:
        """`size` flow-controlled bytes of `sid` were delivered onward: credit the peer,
        batched (one WINDOW_UPDATE when half a window has been consumed)."""
        if not size or self._dead:
            return
        self._recv_unacked += size
        if self._recv_unacked >= self._conn_credit_at:
            self._out.append(_window_update(0, self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        st = self._streams.get(sid)
        if st is not None and not st.remote_closed:
            st.unacked += size
            if st.unacked >= self._stream_credit_at:
                self._out.append(_window_update(sid, st.unacked))
                st.recv_window += st.unacked
                st.unacked = 0

    def close(self, code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """GOAWAY (RFC 9113 §6.8): streams above `last_stream_id` were not processed."""
        if self._goaway_sent or self._dead:
            return
        self._goaway_sent = True
        self._out.append(_goaway(self._highest_in if last_stream_id is None else last_stream_id, code))

    def next_stream_id(self) -> int:
        return self._next_out

    @property
    def remote_max_streams(self) -> int:
        return self._remote_max_streams

    @property
    def highest_inbound_stream_id(self) -> int:
        return self._highest_in

    # -- flow control --------------------------------------------------------------------

    def _flush_all(self) -> None:
        for st in list(self._waiting.values()):
            if st.chunks is not None:
                self._flush(st)

    def _flush(self, st: _Stream) -> None:
        chunks = st.chunks
        assert chunks is not None
        sid = st.sid
        out = self._out
        was_high = st.queued >= SEND_LOW_WATER
        ended = False
        while chunks:
            window = min(self._send_window, st.send_window, self._remote_frame)
            if window <= 0:
                break
            chunk = chunks[0]
            if len(chunk) > window:
                chunks[0] = chunk[window:]
                chunk = chunk[:window]
            else:
                chunks.popleft()
            n = len(chunk)
            st.queued -= n
            self._send_window -= n
            st.send_window -= n
            ended = not chunks and st.end_pending and st.trailers is None
            out.append(_pack_head(n >> 8, n & 0xFF, _DATA, _END_STREAM if ended else 0, sid))
            out.append(chunk)
        if chunks:
            if was_high and st.queued < SEND_LOW_WATER:
                self.drained.append(sid)
            return
        st.chunks = None
        del self._waiting[sid]
        if was_high:
            self.drained.append(sid)
        if not st.end_pending:
            return
        st.end_pending = False
        trailers, st.trailers = st.trailers, None
        if ended:  # the last DATA carried END_STREAM
            st.local_closed = True
            if st.remote_closed:
                self._close(st, _GONE_CLOSED)
        elif trailers is not None:
            self.send_headers(sid, trailers, end_stream=True)
        else:
            self.send_data(sid, b"", end_stream=True)


def _window_update(sid: int, n: int) -> bytes:
    return _pack_head(0, 4, _WINDOW_UPDATE, 0, sid) + _U32.pack(n)


def _rst_frame(sid: int, code: int) -> bytes:
    return _pack_head(0, 4, _RST_STREAM, 0, sid) + _U32.pack(code)


def _goaway(last_sid: int, code: int, debug: bytes = b"") -> bytes:
    debug = debug[: _MAX_FRAME - 8]
    n = 8 + len(debug)
    return _pack_head(n >> 8, n & 0xFF, _GOAWAY, 0, 0) + _GOAWAY_BODY.pack(last_sid, code) + debug


# -- RFC 9113 §8 field-section checks --------------------------------------------------------

_COLON: Final = 0x3A
_SP: Final = 0x20
_HTAB: Final = 0x09
# RFC 9110 §5.6.2 tchar, lower case only: HTTP/2 field names MUST be lower case
# (RFC 9113 §8.2.1). `translate(None, _NAME_CHARS)` deletes them, so a valid name
# translates to b"".
_NAME_CHARS: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
# RFC 9113 §8.2.2: connection-specific fields make a message malformed.
_CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
_REQUEST_PSEUDO: Final = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
# One rule for a request's target and host, whichever protocol brought it: what the
# HTTP/1.1 listener refuses (proxy/codec/h1.py), an HTTP/2 request may not carry either,
# or an HTTP/2 client could send an HTTP/1.1 backend bytes no HTTP/1.1 client could.
# :path: visible ASCII only (RFC 3986 §3.3, §3.4; llhttp's strict URL rule refuses CTLs,
# space, DEL and 0x80-0xFF). :authority and host: the Host header's characters (RFC 3986
# §3.2.2), which also leave out the userinfo RFC 9113 §8.3.1 forbids.
_TARGET_CHARS: Final = bytes(range(0x21, 0x7F))
# (The same set as h1's _HOST_CHARS; a unit test holds them equal. Not imported: a
# codec imports nothing from proxy but proxy.errors.)
_AUTHORITY_CHARS: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:[]"

#: Fields already checked, by (name, value). hpack hands back the same objects for
#: indexed fields, so a repeated field costs one set probe instead of four scans.
#: Bounded because values come from peers; cleared when full.
_CHECKED_MAX: Final = 4096
_checked: set[tuple[bytes, bytes]] = set()


def _check_field(item: tuple[bytes, bytes], request: bool = False) -> None:
    """Name characters and case (§8.2.1), value characters (§8.2.1: no NUL, CR or LF,
    no leading or trailing whitespace), connection-specific names (§8.2.2), and in a
    request the characters of `host` (see _AUTHORITY_CHARS)."""
    name, value = item[0], item[1]
    if not name or name.translate(None, _NAME_CHARS):
        raise PeerProtocolError(f"invalid field name {name!r}")
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        raise PeerProtocolError(f"CR, LF or NUL in the value of {name.decode('latin-1')}")
    if value and (value[0] in (_SP, _HTAB) or value[-1] in (_SP, _HTAB)):
        raise PeerProtocolError(f"whitespace around the value of {name.decode('latin-1')}")
    if name in _CONNECTION_SPECIFIC:
        raise PeerProtocolError(f"connection-specific field {name.decode('latin-1')} in HTTP/2")
    if name == b"host" and value.translate(None, _AUTHORITY_CHARS):
        if request:
            raise PeerProtocolError(f"invalid characters in host: {value!r}")
        return  # meaningless in a response; not cached, so a request carrying it is still checked
    if len(_checked) >= _CHECKED_MAX:
        _checked.clear()
    _checked.add((name, value))


def _check_pseudo_value(name: bytes, value: bytes) -> None:
    bad: bytes | bool
    if not value:
        raise PeerProtocolError(f"empty {name.decode('latin-1')}")
    if name == b":path":
        bad = value.translate(None, _TARGET_CHARS)
    elif name == b":authority":
        bad = value.translate(None, _AUTHORITY_CHARS)
    else:
        bad = b"\r" in value or b"\n" in value or b"\x00" in value or b" " in value
    if bad:
        raise PeerProtocolError(f"invalid characters in {name.decode('latin-1')}: {value!r}")
    # A pseudo-header's name starts with ':', which no regular field that passed
    # _check_field has, so both kinds share the set of fields already checked.
    if len(_checked) >= _CHECKED_MAX:
        _checked.clear()
    _checked.add((name, value))


def _content_length(value: bytes, previous: int | None) -> int:
    # int() would also take b"+1", b" 1" and b"1_0"; a backend reading such a value
    # differently could frame the body differently (RFC 9110 §8.6: 1*DIGIT).
    if not value.isdigit() or not value.isascii():
        raise PeerProtocolError(f"invalid content-length {value!r}")
    n = int(value)
    if previous is not None and previous != n:
        raise PeerProtocolError("conflicting content-length fields")
    return n


class Request:
    """A checked request field section: pseudo-headers apart, regular fields in order
    (`te` removed: it is hop-by-hop, and only `trailers` is allowed on HTTP/2)."""

    __slots__ = ("method", "scheme", "authority", "path", "protocol", "headers", "content_length",
                 "content_type", "cookies")

    def __init__(self) -> None:
        self.method = b""
        self.scheme: bytes | None = None
        self.authority: bytes | None = None
        self.path = b""
        self.protocol: bytes | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.content_type: bytes | None = None
        self.cookies = 0


def read_request(fields: list[tuple[bytes, bytes]]) -> Request:
    """Check a request's fields (RFC 9113 §8.2, §8.3.1); PeerProtocolError when the
    request is malformed (the stream is reset with PROTOCOL_ERROR, §8.1.1)."""
    req = Request()
    out = req.headers
    checked = _checked
    regular = False
    seen_pseudo: set[bytes] | None = None
    for item in fields:
        name = item[0]
        if name and name[0] == _COLON:
            if regular:
                raise PeerProtocolError("pseudo-header after a regular field")
            if name not in _REQUEST_PSEUDO:
                raise PeerProtocolError(f"unknown pseudo-header {name.decode('latin-1')}")
            if seen_pseudo is None:
                seen_pseudo = set()
            elif name in seen_pseudo:
                raise PeerProtocolError(f"duplicate {name.decode('latin-1')}")
            seen_pseudo.add(name)
            value = item[1]
            if item not in checked:
                _check_pseudo_value(name, value)
            if name == b":method":
                req.method = value
            elif name == b":path":
                req.path = value
            elif name == b":authority":
                req.authority = value
            elif name == b":scheme":
                req.scheme = value
            else:
                req.protocol = value
            continue
        regular = True
        if item not in checked:
            _check_field(item, True)
        if name == b"te":
            if item[1] != b"trailers":
                raise PeerProtocolError("te other than trailers in HTTP/2")
            continue
        if name == b"content-length":
            req.content_length = _content_length(item[1], req.content_length)
        elif name == b"content-type":
            req.content_type = item[1]
        elif name == b"cookie":
            req.cookies += 1
        out.append(item)
    if not req.method:
        raise PeerProtocolError("missing :method")
    if req.method == b"CONNECT" and req.protocol is None:
        # RFC 9113 §8.5: only :method and :authority.
        if req.scheme is not None or req.path or req.authority is None:
            raise PeerProtocolError("malformed CONNECT request")
    elif req.scheme is None or not req.path:
        raise PeerProtocolError("missing :scheme or :path")
    return req


def read_response(fields: list[tuple[bytes, bytes]], *, trailers: bool = False) -> tuple[int, list[tuple[bytes, bytes]], int | None]:
    """Check a response's (or trailer section's) fields; returns (status, regular
    fields, content-length). PeerProtocolError when malformed."""
    status = 0
    out: list[tuple[bytes, bytes]] = []
    checked = _checked
    regular = False
    length: int | None = None
    for item in fields:
        name = item[0]
        if name and name[0] == _COLON:
            if trailers or regular or status or name != b":status":
                raise PeerProtocolError(f"unexpected pseudo-header {name.decode('latin-1')}")
            value = item[1]
            if len(value) != 3 or not value.isdigit() or not value.isascii():
                raise PeerProtocolError(f"invalid :status {value!r}")
            status = int(value)
            if status < 100:
                raise PeerProtocolError(f"invalid :status {value!r}")
            continue
        regular = True
        if item not in checked:
            _check_field(item)
        if name == b"te":
            continue  # request-only; never forwarded
        if name == b"content-length":
            length = _content_length(item[1], length)
        out.append(item)
    if not trailers and not status:
        raise PeerProtocolError("missing :status")
    return status, out, length


__all__ = [
    "CANCEL",
    "DEFAULT_CONNECTION_WINDOW",
    "DEFAULT_STREAM_WINDOW",
    "INTERNAL_ERROR",
    "MAX_QUEUED_CONTROL",
    "NO_ERROR",
    "PREFACE",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "SEND_HIGH_WATER",
    "SEND_LOW_WATER",
    "H2Codec",
    "Request",
    "read_request",
    "read_response",
]
