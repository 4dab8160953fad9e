"""Upstream HTTP/1.1: pooled keep-alive connections, each the handle of one exchange.

`open_h1(endpoint, owner, method, target, headers, body_mode, loop)` starts a request and
returns a handle at once: a warm connection from the endpoint's pool, or a pending one
that buffers until a connection is made (or one is given back, when the endpoint is at
`client.hostConnectionPool.maxSize`). The downstream side (an HTTP/1.1 connection
or an HTTP/2 stream) only ever uses the handle API and the owner callbacks below, so it
never knows whether it talks to a pooled connection, a fresh one, or another protocol.

The handle API and owner callbacks are `proxy.upstream.contracts.Handle` and `Owner`; the
owner is normally an `Attempt`, which keeps the endpoint's books: connections here only
count themselves open and closed (`Endpoint.checkout`/`closed`) and never touch the
endpoint's request or health state. A failure on a reused connection that had received
nothing is marked `stale` (the peer closed it while it idled): the attempt decides
whether to replay. Body modes are `contracts.BODY_*`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Final

from ..codec.h1 import (
    LAST_CHUNK,
    EndOfMessage,
    ResponseHead,
    ResponseReader,
    encode_chunk,
    encode_request_head,
    encode_trailers,
)
from ..errors import BadResponse, ConnectFailed, PeerProtocolError, UpstreamFailed, WriteFailed
from ..upstream.contracts import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, HIGH_WATER, LOW_WATER, SINK
from ..upstream.endpoint import CONNECT, Endpoint

log = logging.getLogger(__name__)

__all__ = ["BODY_CHUNKED", "BODY_LENGTH", "BODY_NONE", "HIGH_WATER", "LOW_WATER", "UpstreamH1", "open_h1"]

_CHUNKED_LINE: Final = b"transfer-encoding: chunked\r\n\r\n"


def set_nodelay(transport: Any) -> None:
    """TCP_NODELAY on the transport's socket. uvloop sets it on every TCP handle (TLS
    ones run over one), so its transports are left alone: asking for the socket there
    makes a socket object that lives as long as the connection. asyncio sets it on the
    sockets it connects, not on those it accepts."""
    if transport.__class__.__module__ == "uvloop.loop":
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass


class UpstreamH1:
    """One keep-alive connection to an endpoint; while attached, the exchange handle."""

    __slots__ = (
        "transport", "reader", "owner", "endpoint", "closed", "reused", "got_bytes", "peer",
        "_chunked", "_req_ended", "_resp_ended", "_keep_alive", "_loop", "_paused", "_counted", "uses",
        "reap_mark", "reap_since",
    )  # fmt: skip

    def __init__(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
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
        self._paused = False
        self._counted = True  # still counted in endpoint.connections (until `closed` once)
        self.uses = 0  # exchanges carried: the idle reaper tells a parked connection by it
        self.reap_mark = -1
        self.reap_since = 0.0

    # -- pool ------------------------------------------------------------------------------

    def usable(self) -> bool:
        return not self.closed and self.owner is None

    def attach(self, owner: Any, head: bytes, method: bytes, body_mode: int, *, reused: bool) -> None:
        self.owner = owner
        self.uses += 1
        self.reused = reused
        self.got_bytes = False
        self._chunked = body_mode == BODY_CHUNKED
        self._req_ended = False
        self._resp_ended = False
        self._keep_alive = True
        self.reader.expect(method)
        self.transport.write(head)
        if self.transport.get_write_buffer_size() > HIGH_WATER:
            owner.pause_client_reads()

    def idle_for(self, now: float) -> float:
        """How long this pooled connection has carried nothing, as the idle reaper (one
        sweep a second, proxy/runtime.py) sees it; 0.0 when it is in use."""
        if self.owner is not None or self.closed:
            return 0.0
        if self.uses != self.reap_mark:
            self.reap_mark = self.uses
            self.reap_since = now
            return 0.0
        return now - self.reap_since

    def write_raw(self, data: bytes) -> None:
        """Bytes already framed for this exchange (a pending handle's buffer)."""
        self.transport.write(data)

    def _detach(self) -> None:
        """The exchange is over on both sides: back to the pool, or closed."""
        self.owner = None
        if self._paused:
            self._paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        if self._keep_alive and not self.closed:
            if self.endpoint.give_back(self):
                return
        self.close()

    # -- handle API (downstream -> upstream) ---------------------------------------------------

    def send_body(self, data: bytes) -> None:
        if self.owner is None or self.closed:
            return
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
        self.owner = None
        self.close()

    def set_owner(self, owner: Any) -> None:
        """The exchange's events go to `owner` from now on."""
        self.owner = owner

    def discard(self, complete: bool) -> None:
        if complete and self._req_ended and not self.closed:
            self.owner = SINK  # read the rest of the response, then back to the pool
            if self._resp_ended:
                self._detach()
        else:
            self.cancel()

    def start_tunnel(self, down: Any) -> None:
        self.owner = None
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
            self._fail(BadResponse(f"bad response from {self.endpoint}: {exc}"))
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
                cur = self.owner
                if cur is not None:
                    owner = cur  # handed over (the attempt committed the response), or a sink
                elif self.peer is None:  # the exchange ended part-way through the batch
                    self.close()
                    return
                else:
                    return  # a 101 turned the connection into a tunnel
            # isinstance of a compiled class: a type check, and a typed `ev` after it
            # (`ev.__class__` and `ev.status` on an untyped event were lookups by name).
            if isinstance(ev, EndOfMessage):
                self._resp_ended = True
                owner.on_upstream_event(ev)
                if self.owner is owner:
                    if self._req_ended:
                        self._detach()
                    else:
                        # Answered before the upload ended: the rest of it is not wanted,
                        # and this connection cannot carry another exchange.
                        self.owner = None
                        self.close()
                continue
            if isinstance(ev, ResponseHead) and ev.status >= 200 and not ev.keep_alive:
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
        if self._counted:
            self._counted = False
            self.endpoint.closed(self)
        if self.peer is not None:
            self.peer.close()
            self.peer = None
            return
        if self.owner is not None:
            if self._req_ended:
                self._fail(UpstreamFailed(f"connection to {self.endpoint} lost"))
            else:
                self._fail(WriteFailed(f"connection to {self.endpoint} lost while the request was sent"))

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_client_reads()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_client_reads()

    def _fail(self, exc: UpstreamFailed) -> None:
        owner = self.owner
        self.close()
        if owner is None:
            return
        self.owner = None
        if self.reused and not self.got_bytes:
            # The peer had closed this pooled connection while it idled (the classic pool
            # race): the request may never have been read. The attempt decides on a replay.
            exc.stale = True  # type: ignore[attr-defined]
        owner.upstream_failed(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class PendingH1:
    """The handle until a connection is ready (made, or given back to a waiting
    exchange): buffers, then hands over."""

    __slots__ = ("owner", "endpoint", "parts", "method", "body_mode", "ended", "trailers", "conn", "cancelled",
                 "size", "loop", "connect_timeout")  # fmt: skip

    def __init__(self, owner: Any, endpoint: Endpoint, head: bytes, method: bytes, body_mode: int,
                 loop: asyncio.AbstractEventLoop, connect_timeout: float | None) -> None:  # fmt: skip
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
        self.loop = loop
        self.connect_timeout = connect_timeout

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

    def set_owner(self, owner: Any) -> None:
        self.owner = owner
        if self.conn is not None:
            self.conn.set_owner(owner)

    def cancel(self) -> None:
        if self.conn is not None:
            self.conn.cancel()
            return
        if not self.cancelled:
            self.cancelled = True
            self.endpoint.cancel_wait(self.given)

    def discard(self, complete: bool) -> None:
        if self.conn is not None:
            self.conn.discard(complete)
        else:
            self.cancel()

    def start_tunnel(self, down: Any) -> None:
        assert self.conn is not None
        self.conn.start_tunnel(down)

    def tunnel_write(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.tunnel_write(data)

    def tunnel_eof(self) -> None:
        if self.conn is not None:
            self.conn.tunnel_eof()

    def connect(self) -> None:
        """Open a new connection (already counted in endpoint.connections)."""
        ep = self.endpoint
        loop = self.loop
        coro: Any = loop.create_connection(lambda: UpstreamH1(ep, loop), ep.host, ep.port)
        if self.connect_timeout:  # client.connectTimeoutMs: per new connection, never per request
            coro = asyncio.wait_for(coro, self.connect_timeout)
        fut = asyncio.ensure_future(coro)
        fut.add_done_callback(self.connected)

    def given(self, conn: UpstreamH1 | None) -> None:
        """A waiting exchange's turn: a pooled connection given back to it, or (None)
        room to open one, already counted."""
        if self.cancelled:
            if conn is None:
                self.endpoint.closed(None)  # the room goes unused: pass it on
            elif not self.endpoint.give_back(conn):
                conn.close()
            return
        if conn is None:
            self.connect()
        else:
            self._attach(conn, reused=True)

    def connect_or_wait(self) -> None:
        """Open a connection, or wait for one at `client.hostConnectionPool.maxSize`
        (raises Overloaded past `maxWaiters`)."""
        got = self.endpoint.checkout(self.given, fresh=True)
        if got is CONNECT:
            self.connect()

    def connected(self, fut: asyncio.Future[Any]) -> None:
        ep = self.endpoint
        if fut.cancelled() or fut.exception() is not None:
            exc = None if fut.cancelled() else fut.exception()
            ep.closed(None)
            if self.cancelled:
                return
            self.cancelled = True
            why = "cancelled" if exc is None else str(exc) or ("timed out" if isinstance(exc, TimeoutError) else type(exc).__name__)
            self.owner.upstream_failed(ConnectFailed(f"Unable to connect to {ep.host}:{ep.port}: {why}"))
            return
        conn: UpstreamH1 = fut.result()[1]
        if self.cancelled:
            # The exchange was abandoned while connecting (a client reset, a timeout): the
            # new connection carries nothing yet, so it joins the pool instead of closing.
            if not ep.give_back(conn):
                conn.close()
            return
        self._attach(conn, reused=False)

    def _attach(self, conn: UpstreamH1, *, reused: bool) -> None:
        self.conn = conn
        head, rest = self.parts[0], self.parts[1:]
        self.parts = []
        conn.attach(self.owner, head, self.method, self.body_mode, reused=reused)
        if rest:
            conn.write_raw(b"".join(rest))  # already framed when buffered
        if self.ended:
            conn.send_end(self.trailers)
        if self.size > HIGH_WATER:
            self.owner.resume_client_reads()


def open_h1(
    endpoint: Endpoint,
    owner: Any,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body_mode: int,
    loop: asyncio.AbstractEventLoop,
    fresh: bool = False,
    *,
    connect_timeout: float | None = None,
) -> Any:
    """Start a request to `endpoint`; returns the exchange handle (see the module doc).
    `headers` is not changed (a retry sends the same list again)."""
    head = encode_request_head(method, target, headers)
    if body_mode == BODY_CHUNKED:
        head = head[:-2] + _CHUNKED_LINE  # the head ends with the empty line
    conn = None if fresh else endpoint.take_idle()
    if conn is not None:
        conn.attach(owner, head, method, body_mode, reused=True)
        return conn
    pending = PendingH1(owner, endpoint, head, method, body_mode, loop, connect_timeout)
    pending.connect_or_wait()
    return pending if pending.conn is None else pending.conn
