"""Upstream HTTP/2: one multiplexed connection per endpoint, a stream per exchange.

`make_h2_opener(tls)` returns an opener with `open_h1`'s signature, so the listener
picks a client protocol once and the downstream side (an HTTP/1.1 connection or an
HTTP/2 stream) never knows which one it talks to. The handle API and the owner
callbacks are the ones documented in `upstream_h1`; responses reach the owner as
`codec.h1` events (`ResponseHead` with version b"2", `Body`, `EndOfMessage` carrying
the trailers), which is what makes h1 <-> h2 translation fall out of the interface.

Pooling: an endpoint's `idle` list holds its HTTP/2 connections (including one still
connecting). A request takes the first connection with a free stream slot, respecting
the peer's SETTINGS_MAX_CONCURRENT_STREAMS, and opens another connection when every
one is full. Streams opened before the peer's SETTINGS arrive wait in the connection.

Flow control forwards (item 5 of the design): DATA from the upstream is acknowledged
only after the owner took it and did not ask us to pause (its write buffer is below
its high-water mark); request DATA that the upstream's window cannot take waits in the
codec, and the owner stops reading (acknowledging) its client until it drains.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import Any, Final, cast

from ..codec import h2 as h2c
from ..codec.h1 import Body, EndOfMessage, ResponseHead
from ..errors import ConnectFailed, Overloaded, PeerProtocolError, ProxyError, UpstreamFailed
from ..upstream.contracts import BODY_NONE, HIGH_WATER, LOW_WATER
from ..upstream.endpoint import Endpoint
from .render import reason
from .upstream_h1 import set_nodelay

log = logging.getLogger(__name__)

#: Streams we put on a connection before the peer's SETTINGS say how many it takes:
#: RFC 9113 §6.5.2 recommends peers allow at least 100.
ASSUMED_MAX_STREAMS: Final = 100
#: Our own cap when the peer sets no limit: past a few hundred streams one connection's
#: single event-loop callback chain becomes the bottleneck, and a second connection is cheap.
MAX_STREAMS_PER_CONNECTION: Final = 1000

# Fields that never go on an HTTP/2 request: connection-specific ones (RFC 9113
# §8.2.2), `host` (becomes :authority, §8.3.1), `te` (re-added as `trailers`).
_DROP: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host", b"te")
)
_TE_TRAILERS: Final = (b"te", b"trailers")
_EOM: Final = EndOfMessage(None)


class StreamResetError(UpstreamFailed):
    """The upstream reset the stream; `reset_code` is the RST_STREAM error code, so an
    HTTP/2 downstream can pass the same reset on (cancellation travels both ways)."""

    def __init__(self, message: str, reset_code: int) -> None:
        super().__init__(message)
        self.reset_code = reset_code


class RefusedError(UpstreamFailed):
    """GOAWAY or REFUSED_STREAM: the upstream did not process the stream at all."""

    retryable = True
    kind = "refused"


class H2Exchange:
    """One request on an upstream HTTP/2 connection: the handle the owner holds."""

    __slots__ = ("conn", "owner", "endpoint", "sid", "headers", "end_at_start", "pending", "ended",
                 "trailers", "done", "unacked", "paused", "blocked", "resp_ended", "started_resp")

    def __init__(self, conn: UpstreamH2, owner: Any, endpoint: Any, headers: list[tuple[bytes, bytes]], body_mode: int) -> None:
        self.conn = conn
        self.owner = owner
        self.endpoint = endpoint
        self.sid = 0  # 0: not started yet (waiting for the connection or a stream slot)
        self.headers = headers
        self.end_at_start = body_mode == BODY_NONE
        self.pending: list[bytes] | None = None  # body sent before the stream started
        self.ended = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.done = False
        self.unacked = 0  # received bytes the owner has not let us acknowledge yet
        self.paused = False  # owner's write buffer is full: hold acknowledgements
        self.blocked = False  # our send queue is above high water: owner paused
        self.resp_ended = False
        self.started_resp = False

    # -- handle API ----------------------------------------------------------------------

    def send_body(self, data: bytes) -> None:
        if self.done or not data:
            return
        sid = self.sid
        if not sid:
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            if sum(map(len, self.pending)) > HIGH_WATER and not self.blocked:
                self.blocked = True
                self.owner.pause_client_reads()
            return
        conn = self.conn
        queued = conn.codec.send_data(sid, data)
        conn.want_flush()
        if queued > h2c.SEND_HIGH_WATER and not self.blocked:
            self.blocked = True
            self.owner.pause_client_reads()

    def send_end(self, trailers: Any = None) -> None:
        if self.done:
            return
        self.ended = True
        self.trailers = trailers or None
        sid = self.sid
        if sid and not self.end_at_start:
            conn = self.conn
            conn.codec.end_stream(sid, self.trailers)
            conn.want_flush()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        n = self.unacked
        if n and self.sid and not self.done:
            self.unacked = 0
            self.conn.codec.ack(self.sid, n)
            self.conn.want_flush()

    def cancel(self) -> None:
        """The owner abandons the call: RST_STREAM(CANCEL) upstream; the connection stays."""
        if self.done:
            return
        self.owner = None
        self._finish()
        conn = self.conn
        if self.sid:
            conn.codec.reset(self.sid, h2c.CANCEL)
            conn.want_flush()
        conn.stream_closed(self)

    def set_owner(self, owner: Any) -> None:
        """The exchange's events go to `owner` from now on."""
        self.owner = owner

    def discard(self, complete: bool) -> None:
        """A stream's rest is cheap to refuse: RST_STREAM(CANCEL), the connection stays."""
        self.cancel()

    def start_tunnel(self, down: Any) -> None:  # pragma: no cover - no 101 on HTTP/2
        down.close()

    def tunnel_eof(self) -> None:  # pragma: no cover
        return

    def tunnel_write(self, data: bytes) -> None:  # pragma: no cover
        return

    def _finish(self) -> None:
        self.done = True

    # -- connection side -------------------------------------------------------------------

    def start(self, sid: int) -> None:
        self.sid = sid
        conn = self.conn
        codec = conn.codec
        end_now = self.end_at_start or (self.ended and not self.pending and self.trailers is None)
        codec.send_headers(sid, self.headers, end_stream=end_now)
        self.headers = []
        if end_now:
            self.end_at_start = True
            return
        pending, self.pending = self.pending, None
        if pending:
            codec.send_data(sid, b"".join(pending))
            if self.blocked and codec.buffered(sid) <= h2c.SEND_LOW_WATER:
                self.blocked = False
                self.owner.resume_client_reads()
        if self.ended:
            codec.end_stream(sid, self.trailers)

    def fail(self, exc: ProxyError) -> None:
        owner = self.owner
        if self.done:
            return
        self._finish()
        self.owner = None
        if owner is not None:
            owner.upstream_failed(exc)
            owner.flush_writes()


class UpstreamH2:
    """One HTTP/2 connection to an endpoint, carrying many exchanges."""

    __slots__ = ("endpoint", "loop", "codec", "transport", "streams", "waiting", "closed", "goaway",
                 "_flush_scheduled", "max_streams", "connected", "_write_paused", "scheme", "active", "_counted",
                 "uses", "reap_mark", "reap_since")

    def __init__(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop, scheme: bytes) -> None:
        self.endpoint = endpoint
        self.loop = loop
        self.codec = h2c.H2Codec(client_side=True)
        self.transport: Any = None
        self.streams: dict[int, H2Exchange] = {}
        self.waiting: deque[H2Exchange] = deque()
        self.closed = False
        self.goaway = False
        self._flush_scheduled = False
        self.max_streams = ASSUMED_MAX_STREAMS
        self.connected = False
        self._write_paused = False
        self.scheme = scheme
        self.active = 0  # started plus waiting exchanges
        endpoint.opened()
        self._counted = True  # counted in endpoint.connections until `_uncount`
        self.uses = 0  # streams opened: the idle reaper tells an unused connection by it
        self.reap_mark = -1
        self.reap_since = 0.0

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.endpoint.closed(self)

    # -- pool ------------------------------------------------------------------------------

    def usable(self) -> bool:
        return False  # never handed out by Endpoint.take_idle (that is HTTP/1's pool)

    def idle_for(self, now: float) -> float:
        """How long this connection has carried no stream (see UpstreamH1.idle_for)."""
        if self.active or self.closed or not self.connected:
            return 0.0
        if self.uses != self.reap_mark:
            self.reap_mark = self.uses
            self.reap_since = now
            return 0.0
        return now - self.reap_since

    def has_room(self) -> bool:
        return not self.closed and not self.goaway and self.active < self.max_streams

    def open(self, owner: Any, headers: list[tuple[bytes, bytes]], body_mode: int) -> H2Exchange:
        ex = H2Exchange(self, owner, self.endpoint, headers, body_mode)
        self.active += 1
        self.uses += 1
        if self.connected and len(self.streams) < self.max_streams and not self.waiting:
            self._start(ex)
            self.want_flush()
        else:
            self.waiting.append(ex)
        return ex

    def _start(self, ex: H2Exchange) -> None:
        sid = self.codec.next_stream_id()
        self.streams[sid] = ex
        try:
            ex.start(sid)
        except ProxyError as exc:
            self.streams.pop(sid, None)
            self.active -= 1
            ex.fail(exc)

    def _start_waiting(self) -> None:
        waiting = self.waiting
        while waiting and len(self.streams) < self.max_streams and not self.closed and not self.goaway:
            self._start(waiting.popleft())
        self.want_flush()

    def stream_closed(self, ex: H2Exchange) -> None:
        if ex.sid:
            if self.streams.pop(ex.sid, None) is None:
                return
        else:
            try:
                self.waiting.remove(ex)
            except ValueError:
                return
        self.active -= 1
        if self.waiting and self.connected:
            self._start_waiting()
        elif self.goaway and not self.streams and not self.waiting:
            self.close()

    # -- output batching -------------------------------------------------------------------

    def want_flush(self) -> None:
        # Everything sent during one loop iteration (many streams' requests, acks)
        # leaves in one write: the flush runs once, after the current callbacks.
        if not self._flush_scheduled and self.transport is not None:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        t = self.transport
        if t is None or self.closed and t.is_closing():
            return
        data = self.codec.take_output()
        if data:
            t.write(data)

    # -- protocol callbacks ----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        set_nodelay(transport)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            proto = sslobj.selected_alpn_protocol()
            if proto is not None and proto != "h2":
                self._fail_all(ConnectFailed(f"{self.endpoint} does not speak HTTP/2 over TLS (ALPN {proto})"))
                self.close()
                return
        # Streams start when the peer's SETTINGS arrive (a SETTINGS event), so its
        # SETTINGS_MAX_CONCURRENT_STREAMS is known before the first one: one round trip,
        # once per connection.
        self.flush()

    def connect_failed(self, exc: BaseException | None) -> None:
        ep = self.endpoint
        self.closed = True
        self._uncount()
        self._fail_all(ConnectFailed(f"Unable to connect to {ep.host}:{ep.port}: {exc or 'cancelled'}"))

    def data_received(self, data: bytes) -> None:
        codec = self.codec
        try:
            events = codec.feed(data)
        except PeerProtocolError as exc:
            self.flush()
            self._fail_all(UpstreamFailed(f"bad HTTP/2 from {self.endpoint}: {exc}"))
            self.close()
            return
        streams = self.streams
        # Owners that got events: each is told once, at the end, to write what it holds
        # (the `flush_writes` owner callback: one downstream write per upstream read).
        touched: list[Any] = []
        for kind, sid, payload, flow, ended in events:
            if kind == h2c.DATA:
                ex = streams.get(sid)
                if ex is None or ex.owner is None:
                    codec.ack(sid, flow)  # nobody wants it; keep the connection window open
                    if ended and ex is not None:
                        self._ended(sid)
                    continue
                owner = ex.owner
                if not touched or touched[-1] is not owner:
                    touched.append(owner)
                if payload:
                    owner.on_upstream_event(Body(payload))
                if ex.paused:
                    ex.unacked += flow
                else:
                    codec.ack(sid, flow)
                if ended:
                    self._ended(sid)
                continue
            if kind == h2c.SETTINGS:
                self.max_streams = min(codec.remote_max_streams, MAX_STREAMS_PER_CONNECTION)
                self.connected = True
                continue
            if kind == h2c.GOAWAY:
                self._goaway(sid, payload)
                continue
            ex = streams.get(sid)
            if ex is None:
                continue
            if ex.owner is not None and (not touched or touched[-1] is not ex.owner):
                touched.append(ex.owner)
            if kind == h2c.HEADERS:
                self._response(sid, payload)
                if ended:
                    self._ended(sid)
            elif kind == h2c.TRAILERS:
                if ex.owner is not None:
                    try:
                        ex.trailers = h2c.read_response(payload, trailers=True)[1]
                    except PeerProtocolError as exc:
                        self._stream_error(ex, exc)
                        continue
                    ex.resp_ended = True
                self._ended(sid)
            elif kind == h2c.INFORMATIONAL:
                if ex.owner is not None:
                    try:
                        status, fields, _ = h2c.read_response(payload)
                    except PeerProtocolError as exc:
                        self._stream_error(ex, exc)
                        continue
                    ex.owner.on_upstream_event(ResponseHead(status, reason(status), b"2", fields))
            elif kind == h2c.RESET:
                codec.forget(sid)
                streams.pop(sid, None)
                self.active -= 1
                code = payload
                if code == h2c.REFUSED_STREAM and not ex.started_resp:
                    ex.fail(RefusedError(f"{self.endpoint} refused the stream"))
                else:
                    ex.fail(StreamResetError(f"{self.endpoint} reset the stream (error code {code})", code))
        drained = codec.drained
        if drained:
            codec.drained = []
            for sid in drained:
                ex = streams.get(sid)
                if ex is not None and ex.blocked and ex.owner is not None and not self._write_paused:
                    ex.blocked = False
                    ex.owner.resume_client_reads()
        if self.waiting and len(streams) < self.max_streams:
            self._start_waiting()
        self.flush()
        for owner in touched:
            owner.flush_writes()

    def _response(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        ex = self.streams.get(sid)
        if ex is None or ex.owner is None:
            return
        try:
            status, out, length = h2c.read_response(fields)
        except PeerProtocolError as exc:
            self._stream_error(ex, exc)
            return
        ex.started_resp = True
        ex.owner.on_upstream_event(ResponseHead(status, reason(status), b"2", out, True, False, length))

    def _ended(self, sid: int) -> None:
        ex = self.streams.pop(sid, None)
        if ex is None:
            return
        self.active -= 1
        owner = ex.owner
        trailers = ex.trailers if ex.resp_ended else None
        ex._finish()
        ex.owner = None
        if not (ex.ended or ex.end_at_start) or ex.pending or self.codec.buffered(sid):
            # Answered before the upload ended: the rest of the upload is not wanted
            # (RFC 9113 §8.1); stop the stream from our side too.
            self.codec.reset(sid, h2c.NO_ERROR)
        if owner is not None:
            owner.on_upstream_event(EndOfMessage(trailers) if trailers else _EOM)
        if self.goaway and not self.streams and not self.waiting:
            self.close()

    def _stream_error(self, ex: H2Exchange, exc: PeerProtocolError) -> None:
        """A malformed response (RFC 9113 §8.1.1): reset the stream, fail the exchange."""
        self.streams.pop(ex.sid, None)
        self.active -= 1
        self.codec.reset(ex.sid, h2c.PROTOCOL_ERROR)
        ex.fail(UpstreamFailed(f"bad response from {self.endpoint}: {exc}"))

    def _goaway(self, last_sid: int, code: Any) -> None:
        self.goaway = True
        self.endpoint.discard(self)
        # Streams above last_stream_id were never processed (RFC 9113 §6.8).
        for sid in [s for s in self.streams if s > last_sid]:
            ex = self.streams.pop(sid)
            self.active -= 1
            ex.fail(RefusedError(f"{self.endpoint} sent GOAWAY (error code {int(code)}) before processing the stream"))
        while self.waiting:
            self.active -= 1
            self.waiting.popleft().fail(RefusedError(f"{self.endpoint} is going away"))
        if not self.streams:
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._uncount()
        self._fail_all(UpstreamFailed(f"connection to {self.endpoint} lost"))

    def _fail_all(self, exc: ProxyError) -> None:
        streams, self.streams = self.streams, {}
        waiting, self.waiting = self.waiting, deque()
        self.active = 0
        for ex in streams.values():
            ex.fail(exc)
        for ex in waiting:
            # Never sent: the caller may try elsewhere.
            ex.fail(exc if isinstance(exc, ConnectFailed) else RefusedError(str(exc)))

    def pause_writing(self) -> None:
        self._write_paused = True
        for ex in self.streams.values():
            if ex.owner is not None:
                ex.owner.pause_client_reads()

    def resume_writing(self) -> None:
        self._write_paused = False
        for ex in self.streams.values():
            if ex.owner is not None and not ex.blocked:
                ex.owner.resume_client_reads()

    def close(self) -> None:
        """Close now if nothing is in flight, else after the last stream (GOAWAY first)."""
        self.endpoint.discard(self)
        if self.streams and not self.closed:
            if not self.goaway:
                self.goaway = True
                self.codec.close(h2c.NO_ERROR)
                self.want_flush()
            return
        self.closed = True
        t = self.transport
        if t is not None:
            self.flush()
            t.close()


def _busy(conn: UpstreamH2) -> int:
    return conn.active


def _request_headers(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], scheme: bytes) -> list[tuple[bytes, bytes]]:
    authority = b""
    path = target
    if target[:1] != b"/" and target != b"*":
        # absolute-form (RFC 9112 §3.2.2): the authority and path come from the target
        sep = target.find(b"://")
        if sep > 0:
            rest = target[sep + 3 :]
            slash = rest.find(b"/")
            authority = rest if slash < 0 else rest[:slash]
            path = b"/" if slash < 0 else rest[slash:]
    out = [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", path)]
    drop = _DROP
    for item in headers:
        name = item[0]
        if name in drop:
            if name == b"host" and not authority:
                authority = item[1]
                out[2] = (b":authority", authority)
            continue
        out.append(item)
    if not authority:
        del out[2]  # RFC 9113 §8.3.1: omit rather than send it empty
    out.append(_TE_TRAILERS)
    return out


def make_h2_opener(tls: Any = None, connect_timeout: float | None = None) -> Any:
    """An opener (`open_h1`'s signature) for HTTP/2 upstreams: h2c, or TLS with ALPN
    `h2` when the client config has `tls`."""
    ctx: ssl.SSLContext | None = None
    server_name: str | None = None
    if tls is not None:
        from .tls import client_context

        ctx = client_context(tls, alpn=("h2",))
        server_name = tls.common_name
    scheme = b"https" if ctx is not None else b"http"

    def open_h2(
        endpoint: Endpoint,
        owner: Any,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body_mode: int,
        loop: asyncio.AbstractEventLoop,
        fresh: bool = False,
    ) -> H2Exchange:
        """Start a request to `endpoint`; returns the exchange handle."""
        fields = _request_headers(method, target, headers, scheme)
        for conn in endpoint.idle:
            if conn.has_room():
                return conn.open(owner, fields, body_mode)  # type: ignore[no-any-return]
        limit = endpoint.max_connections
        if limit is not None and endpoint.connections >= limit:
            # client.hostConnectionPool.maxSize: no new connection; the stream waits for a
            # slot on the least busy one, within maxWaiters queued streams per endpoint.
            live = [c for c in endpoint.idle if not c.closed and not c.goaway]
            queued = sum(len(c.waiting) for c in live)
            if not live or queued >= endpoint.max_waiters:
                raise Overloaded(
                    f"{endpoint.host}:{endpoint.port} has {endpoint.connections} HTTP/2 connections "
                    f"(client.hostConnectionPool.maxSize {limit}) and {queued} streams waiting "
                    f"(client.hostConnectionPool.maxWaiters {endpoint.max_waiters})"
                )
            return min(live, key=_busy).open(owner, fields, body_mode)  # type: ignore[no-any-return]
        conn = UpstreamH2(endpoint, loop, scheme)
        endpoint.idle.append(conn)  # joinable while it connects: no connection storm
        ex = conn.open(owner, fields, body_mode)
        if ctx is not None:
            coro = loop.create_connection(cast(Any, lambda: conn), endpoint.host, endpoint.port, ssl=ctx,
                                          server_hostname=server_name or endpoint.host)
        else:
            coro = loop.create_connection(cast(Any, lambda: conn), endpoint.host, endpoint.port)
        if connect_timeout:  # client.connectTimeoutMs: per new connection, never per request
            coro = asyncio.wait_for(coro, connect_timeout)
        fut = asyncio.ensure_future(coro)

        def connected(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                conn.connect_failed(None)
            elif f.exception() is not None:
                conn.connect_failed(f.exception())

        fut.add_done_callback(connected)
        return ex

    return open_h2


open_h2 = make_h2_opener(None)
