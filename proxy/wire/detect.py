"""Which protocol a new downstream connection speaks, decided once per connection.

Owns: the choice between `ServerH1` and `ServerH2` for a listener. Over TLS the ALPN
result decides (`h2` -> HTTP/2, `http/1.1` or none -> HTTP/1.1, RFC 9113 §3.2). In
clear text an `h2` router looks at the first bytes: the HTTP/2 client preface (prior
knowledge, RFC 9113 §3.3) selects HTTP/2, anything else HTTP/1.1, so one port serves
both. Bytes that are neither the preface nor an HTTP/1.x request line are an invalid
preface: GOAWAY(PROTOCOL_ERROR) and close (RFC 9113 §3.4), lingering as `ServerH2` does
(our side ends after the GOAWAY, what the client still sends is read and dropped until it
closes too or `CLOSE_LINGER_S` passes, so no TCP reset destroys the GOAWAY unread); an
HTTP/0.9 line (`GET /`)
goes to `ServerH1`, which answers it 400 and closes. An `http` router in clear
text gets `ServerH1` directly, with no detection.

Must not: parse beyond the 24-byte preface, or stay in the data path: once decided,
the transport is handed to the chosen protocol (`set_protocol`) with what was read.

While undecided the connection is one of the listener's, so its sweep applies: idle
past `limits.idleTimeoutMs` it closes, and a preface or first line arriving for longer
than `limits.headerReadTimeoutMs` is handed to the protocol it began, which answers the
timeout as it would its own (GOAWAY, or 408).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from ..codec.h2 import PREFACE
from .h1 import ServerH1
from .h2 import CLOSE_LINGER_S, ServerH2

log = logging.getLogger(__name__)

_PREFACE_LEN: Final = len(PREFACE)
#: The first line an HTTP/1.x client sends ends with one of these (RFC 9112 §3).
_HTTP1_VERSIONS: Final = frozenset((b" HTTP/1.1", b" HTTP/1.0"))
#: Bytes to wait for a first line before letting the HTTP/1.1 codec judge (and refuse) it.
_MAX_FIRST_LINE: Final = 8192 + 64
#: GOAWAY, last stream 0, PROTOCOL_ERROR (RFC 9113 §6.8): frame header then payload.
_GOAWAY_PROTOCOL_ERROR: Final = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x01"


def _is_http09(line: bytes) -> bool:
    """`GET /path`: an HTTP/0.9 request line (a method, one space, an origin-form target,
    no version). Its client reads a text answer, so it is handed to the HTTP/1.1 side to
    be refused in a form it can read, not sent an HTTP/2 GOAWAY."""
    method, sp, target = line.partition(b" ")
    return bool(sp) and method.isalpha() and method.isupper() and target[:1] == b"/" and b" " not in target


class Detect:
    """Holds a connection until its protocol is known, then hands it over."""

    __slots__ = ("_server", "_transport", "_buf", "_h2_allowed", "last_active", "head_started", "_refused")

    def __init__(self, server: Any, h2_allowed: bool) -> None:
        self._server = server
        self._transport: Any = None
        self._buf = b""
        self._h2_allowed = h2_allowed
        self.last_active = 0.0
        self.head_started = 0.0  # when the first byte arrived (the listener's sweep reads it)
        self._refused = False  # GOAWAY sent: what still arrives is dropped until the close

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self.last_active = self._server.loop.time()
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            proto = sslobj.selected_alpn_protocol()
            if proto == "h2" and self._h2_allowed:
                self._hand_over(ServerH2(self._server))
                return
            if proto is not None or not self._h2_allowed:
                self._hand_over(ServerH1(self._server))
                return
            # No ALPN at all: fall through to looking at the first bytes.
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after our GOAWAY: read and dropped
        self.last_active = self._server.loop.time()
        if not self.head_started:
            self.head_started = self.last_active
        buf = self._buf + data
        n = min(len(buf), _PREFACE_LEN)
        if buf[:n] != PREFACE[:n]:
            self._buf = buf
            # Not the HTTP/2 preface: HTTP/1.x if the first line says so. Anything else is
            # an invalid preface, a connection error of type PROTOCOL_ERROR (RFC 9113
            # §3.4), not an HTTP/1.1 400 that an HTTP/2 client would read as a frame.
            eol = buf.find(b"\n")
            if eol < 0:
                if len(buf) < _MAX_FIRST_LINE:
                    return  # wait for the rest of the first line
                self._hand_over(ServerH1(self._server))  # the h1 codec answers the limit
                return
            line = buf[:eol].rstrip(b"\r")
            if line[-9:] in _HTTP1_VERSIONS or _is_http09(line):
                self._hand_over(ServerH1(self._server))  # HTTP/0.9 gets its 400 there
            else:
                self._refuse()
        elif n == _PREFACE_LEN:
            self._buf = buf
            self._hand_over(ServerH2(self._server))
        else:
            self._buf = buf  # a prefix of the preface: wait for the rest

    def _refuse(self) -> None:
        """GOAWAY(PROTOCOL_ERROR), then a lingering close: closing with the client's bytes
        unread would send a TCP reset, which can destroy the GOAWAY before it is read."""
        t = self._transport
        self._buf = b""
        self._refused = True
        self.head_started = 0.0
        if t is not None:
            t.write(_GOAWAY_PROTOCOL_ERROR)
            if t.can_write_eof():
                t.write_eof()
                self._server.loop.call_later(CLOSE_LINGER_S, t.close)
            else:
                t.close()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        return None  # nothing is written before the hand-over but a refusal

    def resume_writing(self) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._leave()
        self._server.connection_closed(self)

    def _leave(self) -> None:
        self._server.connections.discard(self)

    # The listener's sweep and drain see an undecided connection as they see the others.

    def idle(self) -> bool:
        return True

    def shed(self) -> None:
        pass

    def close_when_idle(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def head_timeout(self, limit: float) -> None:
        """The preface or first line took too long: the protocol it began answers."""
        if self._refused:
            return
        buf = self._buf
        h2 = self._h2_allowed and PREFACE.startswith(buf[:_PREFACE_LEN])
        proto = ServerH2(self._server) if h2 else ServerH1(self._server)
        self._hand_over(proto)
        proto.head_timeout(limit)

    def _hand_over(self, proto: Any) -> None:
        t = self._transport
        self._transport = None
        if t is None:
            return
        t.set_protocol(proto)
        proto.connection_made(t)
        self._leave()  # after the new protocol joined: drain never sees the set empty between
        buf, self._buf = self._buf, b""
        if buf and not t.is_closing():
            proto.data_received(buf)
            if proto.head_started:  # the head it is reading began here, not at the hand-over
                proto.head_started = self.head_started


def protocol_factory(server: Any, protocol: str, tls: bool) -> Callable[[], Any]:
    """The listener's protocol factory for a router `protocol` ("http" | "h2")."""
    if protocol == "h2":
        return lambda: Detect(server, True)
    if tls:
        return lambda: Detect(server, False)
    return lambda: ServerH1(server)
