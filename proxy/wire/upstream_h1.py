"""Upstream HTTP/1.1: pooled keep-alive connections, each the handle of one exchange.

`open_h1(endpoint, owner, method, target, headers, body_mode)` starts a request and
returns a handle at once: a warm connection from the endpoint's pool, or a pending one
that buffers until the connection is made. The downstream side (an HTTP/1.1 connection
or an HTTP/2 stream) only ever uses the handle API and the owner callbacks below, so it
never knows whether it talks to a pooled connection, a fresh one, or another protocol.

Handle API (downstream -> upstream):
    send_body(data)          request body bytes (already de-chunked)
    send_end(trailers|None)  the request is complete
    pause_reading() / resume_reading()   the downstream's write buffer is full / drained
    cancel()                 abandon the exchange (client gone, timeout): the connection closes
    start_tunnel(down_transport)  after a 101: relay raw bytes both ways
Owner callbacks (upstream -> downstream):
    on_upstream_event(ev)    ResponseHead (1xx included), Body, EndOfMessage from codec.h1
    upstream_failed(exc)     a ProxyError; `exc.retryable` when nothing reached the peer
    pause_client_reads() / resume_client_reads()   our write buffer is full / drained

Body modes: BODY_NONE (no body: send_end follows at once), BODY_LENGTH (a
`content-length` header is in `headers`), BODY_CHUNKED (re-chunked on the way).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Final

from ..codec.h1 import LAST_CHUNK, ResponseReader, encode_chunk, encode_request_head, encode_trailers
from ..errors import ConnectFailed, PeerProtocolError, UpstreamFailed

log = logging.getLogger(__name__)

BODY_NONE: Final = 0
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2

#: Write-buffer water marks: above HIGH the other side stops reading until below LOW.
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024

_IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
_CHUNKED_HEADER: Final = (b"transfer-encoding", b"chunked")


def set_nodelay(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass


class UpstreamH1(asyncio.Protocol):
    """One keep-alive connection to an endpoint; while attached, the exchange handle."""

    __slots__ = (
        "transport", "reader", "owner", "endpoint", "closed", "reused", "got_bytes", "peer",
        "_chunked", "_req_ended", "_resp_ended", "_keep_alive", "_replay", "_loop", "_paused",
        "_method",
    )

    def __init__(self, endpoint: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self._loop = loop
        self.transport: Any = None
        self.reader = ResponseReader()
        self.owner: Any = None
        self.closed = False
        self.reused = False
        self.got_bytes = False
        self.peer: Any = None  # set after a 101: raw bytes go straight there
        self._chunked = False
        self._req_ended = False
        self._resp_ended = False
        self._keep_alive = True
        self._replay: bytes | None = None
        self._paused = False
        self._method = b""

    # -- pool ------------------------------------------------------------------------------

    def usable(self) -> bool:
        return not self.closed and self.owner is None

    def attach(self, owner: Any, head: bytes, method: bytes, body_mode: int, *, reused: bool) -> None:
        self.owner = owner
        self.reused = reused
        self.got_bytes = False
        self._method = method
        self._chunked = body_mode == BODY_CHUNKED
        self._req_ended = False
        self._resp_ended = False
        self._keep_alive = True
        # A bodiless idempotent request on a reused connection may be replayed once if
        # the peer had closed the connection while it idled (the classic pool race).
        self._replay = head if reused and body_mode == BODY_NONE and method in _IDEMPOTENT else None
        self.reader.expect(method)
        self.transport.write(head)
        if self.transport.get_write_buffer_size() > HIGH_WATER:
            owner.pause_client_reads()

    def _detach(self) -> None:
        """The exchange is over on both sides: back to the pool, or closed."""
        self.owner = None
        ep = self.endpoint
        ep.outstanding -= 1
        if self._paused:
            self._paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        if self._keep_alive and not self.closed:
            if ep.give_back(self):
                return
        self.close()

    # -- handle API (downstream -> upstream) ---------------------------------------------------

    def send_body(self, data: bytes) -> None:
        if self.owner is None or self.closed:
            return
        self._replay = None
        self.transport.write(encode_chunk(data) if self._chunked else data)

    def send_end(self, trailers: Any = None) -> None:
        if self.owner is None:
            return
        self._req_ended = True
        if self._chunked and not self.closed:
            self.transport.write(encode_trailers(trailers) if trailers else LAST_CHUNK)
        if self._resp_ended:
            self._detach()

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def cancel(self) -> None:
        if self.owner is not None:
            self.owner = None
            self.endpoint.outstanding -= 1
        self.close()

    def start_tunnel(self, down: Any) -> None:
        self.owner = None
        self.endpoint.outstanding -= 1
        self.peer = down
        tail = self.reader.upgrade_tail
        if tail:
            down.write(tail)
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    def tunnel_write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def tunnel_eof(self) -> None:
        t = self.transport
        if t is not None and not self.closed:
            if t.can_write_eof():
                t.write_eof()
            else:
                self.close()

    # -- protocol callbacks --------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        set_nodelay(transport)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)
            return
        owner = self.owner
        if owner is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        self.got_bytes = True
        try:
            events = self.reader.feed(data)
        except PeerProtocolError as exc:
            self._fail(UpstreamFailed(f"bad response from {self.endpoint}: {exc}"))
            return
        self._deliver(owner, events)

    def _deliver(self, owner: Any, events: list[Any]) -> None:
        try:
            self._deliver_events(owner, events)
        finally:
            owner.flush_writes()  # one write to the client per upstream read

    def _deliver_events(self, owner: Any, events: list[Any]) -> None:
        for ev in events:
            if self.owner is not owner:
                if self.peer is None:  # the exchange ended part-way through the batch
                    self.close()
                return  # or a 101 turned the connection into a tunnel
            if ev.__class__ is _EOM_CLASS:
                self._resp_ended = True
                owner.on_upstream_event(ev)
                if self.owner is owner and self._req_ended:
                    self._detach()
                elif self.owner is owner and not self._req_ended:
                    # Answered before the upload ended: this connection cannot carry another
                    # request, and the rest of the upload is not wanted.
                    self._keep_alive = False
                continue
            if ev.__class__ is _HEAD_CLASS and ev.status >= 200:
                self._replay = None
                if not ev.keep_alive:
                    self._keep_alive = False
            owner.on_upstream_event(ev)

    def eof_received(self) -> bool:
        if self.peer is not None:
            # The upstream finished the tunnel: the client's side ends too (its own
            # half-close, if any, has already been passed on).
            self.peer.close()
            return False
        owner = self.owner
        if owner is not None:
            try:
                events = self.reader.feed_eof()
            except PeerProtocolError as exc:
                self._fail(UpstreamFailed(f"{self.endpoint} closed the connection mid-response: {exc}"))
                return False
            self._keep_alive = False
            self._deliver(owner, events)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None:
            self.peer.close()
            self.peer = None
            return
        if self.owner is not None:
            self._fail(UpstreamFailed(f"connection to {self.endpoint} lost"))
        else:
            self.endpoint.discard(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_client_reads()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_client_reads()

    def _fail(self, exc: UpstreamFailed) -> None:
        owner, replay = self.owner, self._replay
        self.close()
        if owner is None:
            return
        self.owner = None
        ep = self.endpoint
        if replay is not None and not self.got_bytes:
            # The pooled connection was dead before our request reached the peer: replay
            # once on another connection. The endpoint's outstanding count moves with it.
            handle = _open_on(ep, owner, replay, self._method, BODY_NONE, self._loop, allow_replay=False)
            if self._req_ended:
                handle.send_end(None)
            owner.rebind_upstream(handle)
            return
        ep.outstanding -= 1
        ep.failures += 1
        owner.upstream_failed(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class PendingH1:
    """The handle while the connection is being made: buffers, then hands over."""

    __slots__ = ("owner", "endpoint", "parts", "method", "body_mode", "ended", "trailers", "conn", "cancelled", "size")

    def __init__(self, owner: Any, endpoint: Any, head: bytes, method: bytes, body_mode: int) -> None:
        self.owner = owner
        self.endpoint = endpoint
        self.parts: list[bytes] = [head]
        self.method = method
        self.body_mode = body_mode
        self.ended = False
        self.trailers: Any = None
        self.conn: UpstreamH1 | None = None
        self.cancelled = False
        self.size = len(head)

    def send_body(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.send_body(data)
            return
        if self.cancelled:
            return
        self.parts.append(encode_chunk(data) if self.body_mode == BODY_CHUNKED else data)
        self.size += len(data)
        if self.size > HIGH_WATER:
            self.owner.pause_client_reads()

    def send_end(self, trailers: Any = None) -> None:
        conn = self.conn
        if conn is not None:
            conn.send_end(trailers)
            return
        self.ended = True
        self.trailers = trailers

    def pause_reading(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def resume_reading(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def cancel(self) -> None:
        if self.conn is not None:
            self.conn.cancel()
            return
        if not self.cancelled:
            self.cancelled = True
            self.endpoint.outstanding -= 1

    def start_tunnel(self, down: Any) -> None:
        assert self.conn is not None
        self.conn.start_tunnel(down)

    def tunnel_write(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.tunnel_write(data)

    def tunnel_eof(self) -> None:
        if self.conn is not None:
            self.conn.tunnel_eof()

    def connected(self, fut: asyncio.Future[Any]) -> None:
        ep = self.endpoint
        if self.cancelled:
            if not fut.cancelled() and fut.exception() is None:
                # Abandoned while connecting (the client reset its stream): the connection
                # is fresh and unused, so it goes to the idle pool for the next request
                # instead of being thrown away (a burst of such resets would otherwise
                # cost one connection each).
                ep.failures = 0
                conn: UpstreamH1 = fut.result()[1]
                if not ep.give_back(conn):
                    conn.close()
            return
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            self.cancelled = True
            ep.outstanding -= 1
            ep.failures += 1
            why = "cancelled" if exc is None else str(exc) or ("timed out" if isinstance(exc, TimeoutError) else type(exc).__name__)
            err = ConnectFailed(f"Unable to connect to {ep.host}:{ep.port}: {why}")
            self.owner.upstream_failed(err)
            return
        ep.failures = 0
        conn = fut.result()[1]
        self.conn = conn
        body_mode = self.body_mode
        head, rest = self.parts[0], self.parts[1:]
        conn.attach(self.owner, head, self.method, body_mode, reused=False)
        if rest:
            conn.transport.write(b"".join(rest))  # already framed when buffered
        if self.ended:
            conn.send_end(self.trailers)
        if self.size > HIGH_WATER:
            self.owner.resume_client_reads()


def _open_on(
    endpoint: Any, owner: Any, head: bytes, method: bytes, body_mode: int, loop: asyncio.AbstractEventLoop,
    *, allow_replay: bool = True, connect_timeout: float | None = None,
) -> Any:
    conn = endpoint.take_idle()
    if conn is not None:
        conn.attach(owner, head, method, body_mode, reused=allow_replay)
        return conn
    pending = PendingH1(owner, endpoint, head, method, body_mode)
    coro: Any = loop.create_connection(lambda: UpstreamH1(endpoint, loop), endpoint.host, endpoint.port)
    if connect_timeout:  # client.connectTimeoutMs: per new connection, never per request
        coro = asyncio.wait_for(coro, connect_timeout)
    fut = asyncio.ensure_future(coro)
    fut.add_done_callback(pending.connected)
    return pending


def open_h1(
    endpoint: Any,
    owner: Any,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body_mode: int,
    loop: asyncio.AbstractEventLoop,
    *,
    connect_timeout: float | None = None,
) -> Any:
    """Start a request to `endpoint`; returns the exchange handle (see module doc).
    The caller has counted the request in `endpoint.outstanding`; the handle uncounts it."""
    if body_mode == BODY_CHUNKED:
        headers.append(_CHUNKED_HEADER)
    head = encode_request_head(method, target, headers)
    return _open_on(endpoint, owner, head, method, body_mode, loop, connect_timeout=connect_timeout)


_HEAD_CLASS: Any = None
_EOM_CLASS: Any = None


def _bind_classes() -> None:
    global _HEAD_CLASS, _EOM_CLASS
    from ..codec.h1 import EndOfMessage, ResponseHead

    _HEAD_CLASS, _EOM_CLASS = ResponseHead, EndOfMessage


_bind_classes()
