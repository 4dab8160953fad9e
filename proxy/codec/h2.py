"""HTTP/2 framing (RFC 9113) for the data plane: a sans-IO adapter over `h2`.

Owns: one configured `H2Connection` per connection (server or client side), the
send-side flow-control queues (DATA that the peer's window cannot take yet waits here,
in order, with the stream's END_STREAM or trailers behind it), and the RFC 9113 §8
checks on field sections in both directions: request and response pseudo-headers,
connection-specific fields, `te`, field-name case and characters, CR/LF/NUL and
surrounding whitespace in values, and a `content-length` that is not plain digits or
disagrees with itself. h2's own header validation is switched off because this one
pass does the same checks and also produces the split (pseudo, regular) the proxy
needs; h2 still enforces that DATA matches `content-length`.

Must not: touch sockets, loops or clocks; import asyncio or anything from `proxy` but
`proxy.errors`. Output accumulates inside h2 and is taken once per batch
(`take_output`), so one read's worth of frames becomes one write.

h2 is pure Python and costs tens of microseconds per frame, so the adapter does no
per-frame work of its own on the common path: events are h2's own objects, handed on
as they are; the queues are touched only when a window is short.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import hpack.table
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from proxy.errors import LocalProtocolError, PeerProtocolError

log = logging.getLogger(__name__)

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

NO_ERROR: Final = int(ErrorCodes.NO_ERROR)
PROTOCOL_ERROR: Final = int(ErrorCodes.PROTOCOL_ERROR)
INTERNAL_ERROR: Final = int(ErrorCodes.INTERNAL_ERROR)
REFUSED_STREAM: Final = int(ErrorCodes.REFUSED_STREAM)
CANCEL: Final = int(ErrorCodes.CANCEL)
ENHANCE_YOUR_CALM: Final = int(ErrorCodes.ENHANCE_YOUR_CALM)

# The h2 event classes the wire layer dispatches on (re-exported so `proxy.wire`
# needs no h2 import of its own).
RequestReceived: Final = h2.events.RequestReceived
ResponseReceived: Final = h2.events.ResponseReceived
InformationalResponseReceived: Final = h2.events.InformationalResponseReceived
TrailersReceived: Final = h2.events.TrailersReceived
DataReceived: Final = h2.events.DataReceived
StreamEnded: Final = h2.events.StreamEnded
StreamReset: Final = h2.events.StreamReset
ConnectionTerminated: Final = h2.events.ConnectionTerminated
RemoteSettingsChanged: Final = h2.events.RemoteSettingsChanged
WindowUpdated: Final = h2.events.WindowUpdated

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


def _config(client_side: bool) -> h2.config.H2Configuration:
    # Bytes in and out (header_encoding None); h2's header validation and
    # normalisation off: `read_request` / `read_response` below check the same
    # RFC 9113 §8 rules in one pass, and outbound sections are built by the proxy
    # from fields it has already checked.
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        split_outbound_cookies=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )


_SERVER_CONFIG: Final = _config(False)
_CLIENT_CONFIG: Final = _config(True)


def _quiet_hpack() -> None:
    # hpack calls `log.debug` several times per field; with logging at INFO each call
    # still walks Logger.isEnabledFor. Disabling that one logger makes the check the
    # first attribute test (`disabled`), which is measurable at 10k requests/s.
    logging.getLogger("hpack.hpack").disabled = True
    logging.getLogger("hpack.table").disabled = True


_quiet_hpack()


class _SendQueue:
    """DATA waiting for flow-control window on one stream, and what ends the stream."""

    __slots__ = ("chunks", "size", "end", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.end = False
        self.trailers: list[tuple[bytes, bytes]] | None = None


class H2Codec:
    """One HTTP/2 connection, either side. Bytes in, h2 events out; sends queue behind
    the peer's flow-control window. After `feed`, `drained` lists streams whose queue
    fell below `SEND_LOW_WATER` (their producers may resume)."""

    __slots__ = ("conn", "_queues", "drained", "client_side")

    def __init__(
        self,
        *,
        client_side: bool,
        max_concurrent_streams: int | None = None,
        max_header_list_size: int = 65536,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
    ) -> None:
        conn = h2.connection.H2Connection(_CLIENT_CONFIG if client_side else _SERVER_CONFIG)
        values: dict[SettingCodes, int] = {
            SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
        }
        if client_side:
            values[SettingCodes.ENABLE_PUSH] = 0  # the proxy never accepts pushes
        if max_concurrent_streams is not None:
            values[SettingCodes.MAX_CONCURRENT_STREAMS] = max_concurrent_streams
        conn.local_settings = h2.settings.Settings(client=client_side, initial_values=values)
        # h2 reads the header-list limit from its decoder, not from the settings object.
        conn.decoder.max_header_list_size = max_header_list_size
        conn.encoder = FieldEncoder()  # type: ignore[assignment]  # see FieldEncoder
        conn.initiate_connection()
        if connection_window > 65535:  # RFC 9113 §6.9.2: the connection window starts at 65535
            conn.increment_flow_control_window(connection_window - 65535)
        self.conn = conn
        self.client_side = client_side
        self._queues: dict[int, _SendQueue] = {}
        self.drained: list[int] = []

    # -- input -------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Any]:
        """h2 events for `data`. A connection error raises PeerProtocolError; h2 has
        already queued the GOAWAY, so the caller writes `take_output()` and closes."""
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            raise PeerProtocolError(f"HTTP/2 connection error: {exc}") from None
        if self._queues:
            ev: Any
            for ev in events:
                cls = ev.__class__
                if cls is WindowUpdated:
                    sid = ev.stream_id
                    if sid == 0:
                        self._flush_all()
                    elif sid in self._queues:
                        self._flush(sid)
                elif cls is RemoteSettingsChanged:
                    self._flush_all()
        return events

    # -- output ------------------------------------------------------------------------

    def take_output(self) -> bytes:
        return self.conn.data_to_send()

    def send_headers(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        try:
            self.conn.send_headers(sid, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError:
            log.debug("headers for closed stream %d dropped", sid)
        except h2.exceptions.ProtocolError as exc:
            raise LocalProtocolError(f"cannot send headers on stream {sid}: {exc}") from None

    def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> int:
        """Send or queue `data`; returns the bytes now queued on the stream."""
        q = self._queues.get(sid)
        if q is None:
            conn = self.conn
            n = len(data)
            try:
                if n <= conn.max_outbound_frame_size and n <= conn.local_flow_control_window(sid):
                    conn.send_data(sid, data, end_stream=end_stream)  # the common case: one frame
                    return 0
            except h2.exceptions.StreamClosedError:
                return 0
            except h2.exceptions.ProtocolError as exc:
                raise LocalProtocolError(f"cannot send data on stream {sid}: {exc}") from None
            q = self._queues[sid] = _SendQueue()
        if data:
            q.chunks.append(data)
            q.size += len(data)
        if end_stream:
            q.end = True
        self._flush(sid)
        q = self._queues.get(sid)
        return 0 if q is None else q.size

    def end_stream(self, sid: int, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """END_STREAM after any queued DATA: as trailers when given, else an empty DATA."""
        q = self._queues.get(sid)
        if q is not None:
            q.end = True
            q.trailers = trailers
            self._flush(sid)
            return
        if trailers:
            self.send_headers(sid, trailers, end_stream=True)
        else:
            self.send_data(sid, b"", end_stream=True)

    def buffered(self, sid: int) -> int:
        q = self._queues.get(sid)
        return 0 if q is None else q.size

    def reset(self, sid: int, code: int = CANCEL) -> None:
        self._queues.pop(sid, None)
        try:
            self.conn.reset_stream(sid, code)
        except h2.exceptions.ProtocolError:  # already closed: nothing to reset
            pass

    def forget(self, sid: int) -> None:
        """The stream is gone (reset by the peer): drop what was queued for it."""
        self._queues.pop(sid, None)

    def ack(self, sid: int, size: int) -> None:
        """`size` flow-controlled bytes of `sid` were delivered onward: credit the peer.
        h2 batches the WINDOW_UPDATEs (it sends one when half a window is consumed)."""
        if size:
            try:
                self.conn.acknowledge_received_data(size, sid)
            except h2.exceptions.ProtocolError:  # pragma: no cover - h2 ignores closed streams
                pass

    def close(self, code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """GOAWAY (RFC 9113 §6.8): streams above `last_stream_id` were not processed."""
        try:
            self.conn.close_connection(error_code=code, last_stream_id=last_stream_id)
        except h2.exceptions.ProtocolError:  # already closed
            pass

    def next_stream_id(self) -> int:
        return int(self.conn.get_next_available_stream_id())

    @property
    def remote_max_streams(self) -> int:
        return int(self.conn.remote_settings.max_concurrent_streams)

    @property
    def highest_inbound_stream_id(self) -> int:
        return int(self.conn.highest_inbound_stream_id)

    # -- flow control --------------------------------------------------------------------

    def _flush_all(self) -> None:
        for sid in list(self._queues):
            self._flush(sid)

    def _flush(self, sid: int) -> None:
        q = self._queues[sid]
        conn = self.conn
        chunks = q.chunks
        was_high = q.size >= SEND_LOW_WATER
        try:
            while chunks:
                window = conn.local_flow_control_window(sid)
                if window <= 0:
                    break
                limit = min(window, conn.max_outbound_frame_size)
                chunk = chunks[0]
                if len(chunk) <= limit:
                    chunks.popleft()
                    q.size -= len(chunk)
                    last = not chunks and q.end and q.trailers is None
                    conn.send_data(sid, chunk, end_stream=last)
                    if last:
                        del self._queues[sid]
                        return
                else:
                    conn.send_data(sid, chunk[:limit])
                    chunks[0] = chunk[limit:]
                    q.size -= limit
            if not chunks and q.end:
                del self._queues[sid]
                if q.trailers is not None:
                    conn.send_headers(sid, q.trailers, end_stream=True)
                else:
                    conn.send_data(sid, b"", end_stream=True)
                return
        except h2.exceptions.StreamClosedError:
            self._queues.pop(sid, None)
            return
        except h2.exceptions.ProtocolError as exc:
            self._queues.pop(sid, None)
            raise LocalProtocolError(f"cannot send data on stream {sid}: {exc}") from None
        if not chunks:
            del self._queues[sid]
        if was_high and q.size < SEND_LOW_WATER:
            self.drained.append(sid)


class FieldEncoder:
    """HPACK encoding (RFC 7541) without a dynamic table, installed as the connection's
    encoder in place of hpack's.

    Why: the proxy forwards header sections it did not write, many with per-request
    values (`l5d-reqid`, `l5d-ctx-trace`, grpc-timeout). hpack's encoder Huffman-codes
    each such value byte by byte in Python, inserts it into the dynamic table (evicting
    others), and searches that table linearly per field: it was a fifth of the
    proxy's CPU per request. Here each field is an index into the static table or a
    literal *without indexing* (§6.2.2), plain (non-Huffman) strings, and the encoded
    bytes of a field are cached by (name, value), so a repeated field costs one dict
    probe. The price is larger header blocks (no dynamic-table references), which on
    service networks costs far less than the CPU. A field that arrived never-indexed
    is sent never-indexed (§7.1.3: intermediaries must keep that representation).

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
        self._pending_update = True  # h2 sets this when the peer's SETTINGS change it

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        cache = _field_cache
        parts = [_SIZE_ZERO] if self._pending_update else []
        self._pending_update = False
        append = parts.append
        for h in headers:
            b = cache.get(h)
            if b is None or h.__class__ is _NeverIndexed:
                b = _encode_field(h)
            append(b)
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


def _encode_field(h: Any) -> bytes:
    name, value = h[0], h[1]
    never = h.__class__ is _NeverIndexed
    if not never:
        idx = _STATIC_FULL.get((name, value))
        if idx is not None:
            return _integer(idx, 7, 0x80)  # §6.1 indexed field
    first = 0x10 if never else 0x00  # §6.2.3 never indexed / §6.2.2 without indexing
    name_idx = _STATIC_NAME.get(name)
    if name_idx is not None:
        b = _integer(name_idx, 4, first) + _string(value)
    else:
        b = bytes((first,)) + _string(name) + _string(value)
    if not never:
        cache = _field_cache
        if len(cache) >= _FIELD_CACHE_MAX:
            cache.clear()
        cache[(name, value)] = b
    return b


_STATIC_FULL: Final[dict[tuple[bytes, bytes], int]] = {}
_STATIC_NAME: Final[dict[bytes, int]] = {}
for _i, (_n, _v) in enumerate(hpack.table.HeaderTable.STATIC_TABLE, 1):
    _STATIC_FULL.setdefault((_n, _v), _i)
    _STATIC_NAME.setdefault(_n, _i)
_SIZE_ZERO: Final = b"\x20"  # §6.3 dynamic table size update to 0
_NeverIndexed: Final = hpack.NeverIndexedHeaderTuple
#: Encoded fields by (name, value); bounded because values come from peers.
_FIELD_CACHE_MAX: Final = 8192
_field_cache: dict[tuple[bytes, bytes], bytes] = {}


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

#: Fields already checked, by (name, value). hpack hands back the same objects for
#: indexed fields, so a repeated field costs one set probe instead of four scans.
#: Bounded because values come from peers; cleared when full.
_CHECKED_MAX: Final = 4096
_checked: set[tuple[bytes, bytes]] = set()


def _check_field(item: tuple[bytes, bytes]) -> None:
    """Name characters and case (§8.2.1), value characters (§8.2.1: no NUL, CR or LF,
    no leading or trailing whitespace) and connection-specific names (§8.2.2)."""
    name, value = item[0], item[1]
    if not name or name.translate(None, _NAME_CHARS):
        raise PeerProtocolError(f"invalid field name {name!r}")
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        raise PeerProtocolError(f"CR, LF or NUL in the value of {name.decode('latin-1')}")
    if value and (value[0] in (_SP, _HTAB) or value[-1] in (_SP, _HTAB)):
        raise PeerProtocolError(f"whitespace around the value of {name.decode('latin-1')}")
    if name in _CONNECTION_SPECIFIC:
        raise PeerProtocolError(f"connection-specific field {name.decode('latin-1')} in HTTP/2")
    if len(_checked) >= _CHECKED_MAX:
        _checked.clear()
    _checked.add((name, value))


def _check_pseudo_value(name: bytes, value: bytes) -> None:
    if not value:
        raise PeerProtocolError(f"empty {name.decode('latin-1')}")
    if b"\r" in value or b"\n" in value or b"\x00" in value or b" " in value:
        raise PeerProtocolError(f"invalid characters in {name.decode('latin-1')}")


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
            _check_field(item)
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
