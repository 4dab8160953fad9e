"""THE hot path for HTTP/2 and gRPC: the downstream connection and its streams.

`ServerH2` is one downstream HTTP/2 connection (h2c with prior knowledge, or TLS with
ALPN `h2`; `detect` decides). Each request stream becomes a `_Stream`, which routes
exactly as `ServerH1._open` does (header pass, override check, identify, bind, pick,
l5d headers) and then plays the *owner* role of the upstream handle API documented in
`upstream_h1`: the same `server.open_upstream` gives it an HTTP/1.1 or an HTTP/2
upstream, and responses come back as `codec.h1` events either way. So h2 -> h1 and
h2 -> h2 are one code path; h1 -> h2 is `ServerH1` over `upstream_h2`.

gRPC specifics live here too: `grpc-timeout` becomes the stream's deadline (the
tighter of it and the router timeout) and is re-written upstream with the time left;
a call the proxy fails itself is answered trailers-only with a gRPC status
(`codec.grpc.error_trailers`), never a bare 502; resets travel both ways.

Flow control forwards: request DATA is acknowledged to the client only once handed to
the upstream and the upstream has not asked the client to pause; response DATA the
client's window cannot take waits in the codec, and the upstream is paused while more
than SEND_HIGH_WATER waits. Output is batched: everything queued during a read or a
loop iteration leaves in one write. While the connection's write buffer is above its
high-water mark it reads nothing (a client that does not read cannot make us queue
without end), and control frames queued unsent are bounded (`h2c.MAX_QUEUED_CONTROL`).

No task per stream: timers are loop handles; everything else is a callback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from time import monotonic
from typing import Any, Final

from ..codec import grpc
from ..codec import h2 as h2c
from ..codec.h1 import Body, EndOfMessage, ResponseHead
from ..errors import BadRequest, BadResponse, BodyTooLarge, PeerProtocolError, ProxyError, StreamIdle, Timeout
from ..route.l5d import (
    encode_l5d_err,
    err_body,
)
from ..route.request import DL_ATTEMPT, DL_IDLE, DL_ROUTER, REQUEST_FIELDS, RoutedRequest
from ..route.settings import Listener
from ..upstream.contracts import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, HIGH_WATER, LOW_WATER
from .render import public_message
from .upstream_h1 import set_nodelay

log = logging.getLogger(__name__)

#: Concurrent streams a client may open when the server config sets no
#: `maxConcurrentRequests` (SETTINGS_MAX_CONCURRENT_STREAMS). Behind an HTTP/1.1 upstream
#: every concurrent stream may hold an upstream connection, so this is also how many
#: upstream connections one client connection can make the proxy hold. 128 is nginx's
#: default; Envoy's edge guidance, Apache and h2o use 100, Go 250. RFC 9113 §6.5.2 asks
#: for no less than 100 so parallelism is not needlessly limited; the bench's widest
#: shape (1 connection x 64 streams) fits with room, and gRPC clients queue calls above
#: the limit instead of failing them.
DEFAULT_MAX_STREAMS: Final = 128
#: Rapid reset (CVE-2023-44487): a client that opens streams and resets them at once
#: costs the proxy the routing, an upstream request (and, behind HTTP/1.1, a connection)
#: each, and costs itself two small frames. As Envoy does since 1.27.1, a reset is
#: *premature* when it ends a stream the client opened less than PREMATURE_RESET_S ago and
#: whose response was not complete (our own resets of malformed or refused streams count
#: too); once PREMATURE_RESET_MIN_STREAMS streams were opened on a connection and at least
#: half of them ended prematurely, it gets GOAWAY(ENHANCE_YOUR_CALM) and is closed. Envoy's
#: numbers (1 s, 500 streams, 50%): short enough that a browser cancelling navigations or a
#: gRPC client cancelling calls never comes near, while an attack pays for one connection
#: per 500 streams at most (nginx instead caps new streams per read at twice its 128).
PREMATURE_RESET_S: Final = 1.0
PREMATURE_RESET_MIN_STREAMS: Final = 500
#: How long a connection we ended with GOAWAY keeps reading (and dropping) what the
#: client still sends, so the GOAWAY is read before the close (see `_close_now`). A
#: client that read it closes at once; one that keeps sending is cut off after this.
CLOSE_LINGER_S: Final = 2.0

# Request fields HTTP/2 handles itself (RFC 9113 §8.3.1, §8.2.3); the rest of the
# special ones are the shared table's (route/request.py).
_H_HOST: Final = -1
_H_COOKIE: Final = -2
_REQ_SPECIAL: Final = {**REQUEST_FIELDS, b"host": _H_HOST, b"cookie": _H_COOKIE}
# Response fields never forwarded onto HTTP/2 (RFC 9113 §8.2.2), whatever the upstream.
_RESP_DROP: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade")
)
_STATUS: Final = {s: (b":status", b"%d" % s) for s in range(100, 600)}
_VIA: Final = (b"via", b"2 dtabproxy")
_TEXT_PLAIN: Final = (b"content-type", b"text/plain; charset=utf-8")
_RETRYABLE: Final = (b"l5d-retryable", b"true")


class _View:
    """The request view identifiers read: `:authority` and `:path` by name, `host`
    falling back to `:authority`, other fields by first value."""

    __slots__ = ("method", "target", "version", "_req")

    def __init__(self, req: h2c.Request) -> None:
        self.method = req.method
        self.target = req.path
        self.version = b"2"
        self._req = req

    def headers(self, name: bytes) -> bytes | None:
        req = self._req
        if name == b":authority":
            return req.authority
        if name == b":path":
            return req.path
        for n, v in req.headers:
            if n == name:
                return v
        if name == b"host":
            return req.authority
        return None


class _Stream(RoutedRequest):
    """One request stream: routes (wire/routing.py, as HTTP/1.1 does), then owns its
    upstream exchange (see upstream_h1)."""

    __slots__ = ("conn", "sid", "req_done", "resp_started", "resp_done", "is_grpc", "timer",
                 "unacked", "acks_paused", "up_paused", "head_out", "head_only", "head_at", "call_at",
                 "by_router", "settings", "opened_at", "rt_entry")

    def __init__(self, conn: ServerH2, sid: int) -> None:
        self._init_routing(conn._server.settings.router, conn._server)
        self.conn = conn
        self.sid = sid
        self.req_done = False
        self.resp_started = False  # response HEADERS went out (or are deferred to the flush)
        self.resp_done = False
        self.is_grpc = False
        self.timer: asyncio.TimerHandle | None = None
        self.unacked = 0
        self.acks_paused = False  # the upstream asked us to stop crediting the client
        self.up_paused = False  # we asked the upstream to stop (client window or buffer full)
        self.head_out: list[tuple[bytes, bytes]] | None = None  # final response head, not sent yet
        self.head_only = False
        self.head_at = 0.0  # loop time by which the response head must come (0.0: no limit)
        self.call_at = 0.0  # loop time that ends the whole call (grpc-timeout; 0.0: none)
        self.by_router = False  # head_at is the router's timeoutMs (else the request's deadline)
        self.settings = conn._server.settings  # the listener's, when the stream opened
        self.opened_at = conn.last_active  # the read that opened it (rapid-reset accounting)
        self.rt_entry: list[Any] | None = None  # its place in the connection's router-timeout queue

    # -- opening -------------------------------------------------------------------------

    def open(self, req: h2c.Request, ended: bool) -> None:
        """Set the forwarded fields apart, prepare (route/request.py), start the attempt."""
        conn = self.conn
        settings = self.settings
        self._router = settings.router
        if req.method == b"CONNECT":
            raise BadRequest("CONNECT is not supported over HTTP/2")
        limit = conn._body_limit
        if limit is not None and req.content_length is not None and req.content_length > limit:
            raise BodyTooLarge(limit)  # before anything goes upstream
        self.is_grpc = grpc.is_grpc(req.content_type)
        self.head_only = req.method == b"HEAD"
        clear = settings.clear_context
        host: bytes | None = req.authority
        cookies: list[bytes] | None = None
        extras: list[tuple[bytes, bytes]] | None = None
        out: list[tuple[bytes, bytes]] = [(b"host", b"")]  # placeholder, filled below
        special = _REQ_SPECIAL
        sig_header = settings.sig_header
        for item in req.headers:
            name = item[0]
            kind = special.get(name)
            if kind is None:
                if name[0] == 108 and name.startswith(b"l5d-"):  # 108: "l", no slice per field
                    if name == sig_header:
                        if extras is None:
                            extras = []
                        extras.append(item)
                        continue
                    if clear:
                        continue
                out.append(item)
            elif kind > 0:  # consumed by the shared step
                if extras is None:
                    extras = []
                extras.append(item)
            elif kind == _H_HOST:
                if host is None:  # :authority wins (RFC 9113 §8.3.1)
                    host = item[1]
            elif req.cookies > 1:  # RFC 9113 §8.2.3: one field for HTTP/1.1
                if cookies is None:
                    cookies = []
                cookies.append(item[1])
            else:
                out.append(item)
        if host is not None:
            out[0] = (b"host", host)
        # Else the request named no authority (RFC 9113 §8.3.1 omits :authority then) and
        # the placeholder stays: an empty Host, which RFC 9112 §3.2 prescribes for an
        # HTTP/1.1 request whose target has no authority (an HTTP/2 upstream gets no
        # :authority from it). The endpoint's address is not the request's authority.
        if settings.sig_strip is not None:  # the override signature never goes on
            sig = settings.sig_strip
            out = [h for h in out if h[0] != sig]
        if cookies is not None:
            out.append((b"cookie", b"; ".join(cookies)))
        if ended:
            body_mode = BODY_NONE
        elif req.content_length is not None:
            body_mode = BODY_LENGTH
        else:
            body_mode = BODY_CHUNKED
        self._prepare(
            settings, conn._loop, _View(req), req.headers, extras, out, conn._peer_ip, host,
            req.method, req.path, b"2", body_mode, conn._scheme, _VIA,
        )
        if self.resp_done:
            return  # answered already (it failed while starting)
        # The request's deadline (service.totalTimeoutMs, l5d-ctx-deadline, grpc-timeout)
        # runs from now; the router's timeoutMs from the end of the request
        # (`request_end`). A gRPC deadline bounds the whole call.
        dl = self._deadline_at
        if dl:
            loop = conn._loop
            self.head_at = loop.time() + (dl - monotonic())
            if self._grpc_timeout_ns is not None:
                self.call_at = self.head_at
            if not ended:  # else request_end follows at once and arms the tighter one
                self.timer = loop.call_at(self.head_at, self.on_timeout)

    def _router_timeout(self) -> None:
        """The request is complete: the router's timeoutMs starts (or a tighter deadline
        stays)."""
        timeout = self.settings.timeout
        if timeout is not None:
            loop = self.conn._loop
            at = loop.time() + timeout
            if not self.head_at or at < self.head_at:
                self.head_at = at
                self.by_router = True
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
                if not self.conn.router_deadline(self, at):
                    self.timer = loop.call_at(at, self.on_timeout)
                return
        if self.head_at and self.timer is None:
            self.timer = self.conn._loop.call_at(self.head_at, self.on_timeout)

    # -- request side ----------------------------------------------------------------------

    def data(self, data: bytes, flow_len: int) -> None:
        up = self._up
        if up is not None and data:
            n = self._bytes_in + len(data)
            limit = self.conn._body_limit
            if limit is not None and n > limit:  # never forward a byte past the limit
                self._up = None
                up.cancel()
                self.upstream_failed(BodyTooLarge(limit))  # 413, or a reset once answering
            else:
                self._bytes_in = n
                up.send_body(data)
        if self.acks_paused and self._up is not None:
            self.unacked += flow_len
        else:
            self.conn._codec.ack(self.sid, flow_len)

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self.req_done = True
        if self._up is not None:
            self._up.send_end(trailers)
            if not self.resp_started:
                self._router_timeout()
        if self.resp_done:
            self.finish()

    # -- owner callbacks (upstream -> downstream) --------------------------------------------

    def on_upstream_event(self, ev: Any) -> None:
        # isinstance of a compiled class: a type check, and a typed `ev` after it.
        conn = self.conn
        codec = conn._codec
        if isinstance(ev, Body):
            data = ev.data
            if self.head_only or not data:
                return  # a bodiless response's HEADERS wait for its end (END_STREAM on them)
            if self.head_out is not None:
                self._send_head(False)
            self._bytes_out += len(data)
            queued = codec.send_data(self.sid, data)
            conn.want_flush()
            if queued > h2c.SEND_HIGH_WATER and not self.up_paused and self._up is not None:
                self.up_paused = True
                self._up.pause_reading()
        elif isinstance(ev, ResponseHead):
            self._response_head(ev)
        elif isinstance(ev, EndOfMessage):
            self.resp_done = True
            self._up = None
            trailers = ev.trailers
            if trailers:
                clear = self.settings.clear_context
                trailers = [h for h in trailers if h[0] not in _RESP_DROP and not (clear and h[0][:4] == b"l5d-")]
            if self.head_out is not None:
                self._send_head(not trailers)
                if trailers:
                    codec.send_headers(self.sid, trailers, end_stream=True)
            else:
                codec.end_stream(self.sid, trailers or None)
            conn.want_flush()
            if self.req_done:
                self.finish()
            else:
                self._stop_request()

    def _response_head(self, ev: ResponseHead) -> None:
        status = ev.status
        conn = self.conn
        clear = self.settings.clear_context
        status_field = _STATUS.get(status)
        if status_field is None or status == 101:
            # The upstream's fault (RFC 9113 §8.6: no 101 on HTTP/2): 502, and the attempt
            # is cancelled, which closes a connection a 101 took out of HTTP/1.1.
            self.respond_error(BadResponse(f"upstream answered status {status}, which HTTP/2 cannot carry"))
            return
        out = [status_field]
        if not clear:
            out += [h for h in ev.headers if h[0] not in _RESP_DROP]
        else:  # an edge: no l5d- field goes back (docs/dtab.md §13.5)
            inner_err = False  # an inner proxy's l5d-err
            for h in ev.headers:
                name = h[0]
                if name in _RESP_DROP:
                    continue
                if name[:4] == b"l5d-":
                    if name == b"l5d-err":
                        inner_err = True
                    continue
                out.append(h)
            if inner_err and status >= 200 and status != 204 and status != 304:
                # The body of an inner proxy's error is cleared: the response ends with its
                # HEADERS (END_STREAM) or its trailers, and says no length (a gRPC error's
                # trailers-only form keeps its shape).
                out = [h for h in out if h[0] != b"content-length"]
                self.head_only = True
        route = self._route
        if route is not None and route.actions is not None:  # matched rules' response edits
            out = route.actions.edit_response(out)
        if status < 200:  # interim: pass it on now, the final response follows
            conn._codec.send_headers(self.sid, out)
            conn.want_flush()
            return
        self.resp_started = True
        self._status = status
        # The router timeout covers the wait for the response head, as on HTTP/1.1; a
        # gRPC deadline covers the whole call (the client gives up at that point).
        entry = self.rt_entry
        if entry is not None:
            entry[1] = None
            self.rt_entry = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.call_at:
            self.timer = conn._loop.call_at(self.call_at, self.on_timeout)
        # Held until the next event or the end of this loop iteration, so a response
        # that is all here (head, body, end) leaves as HEADERS+DATA, and a bodiless or
        # trailers-only one as a single HEADERS with END_STREAM.
        self.head_out = out
        conn.defer_head(self)

    def _send_head(self, end_stream: bool) -> None:
        head, self.head_out = self.head_out, None
        if head is not None:
            self.conn._codec.send_headers(self.sid, head, end_stream=end_stream)

    def upstream_failed(self, exc: ProxyError) -> None:
        if exc.__class__ is Timeout and not self.resp_done:  # client.requestAttemptTimeoutMs
            self._count_deadline(DL_ATTEMPT)
        self._up = None
        if self.resp_done:
            return
        if self.head_out is not None:  # nothing sent yet: answer with the error instead
            self.head_out = None
            self.resp_started = False
        conn = self.conn
        code = getattr(exc, "reset_code", None)
        if code is not None or self.resp_started:
            self._fclass = exc.stage
            if not self._status:
                self._status = exc.status
            # Cancellation travels both ways: the client sees the upstream's reset (or
            # a cut response as INTERNAL_ERROR, the stream-level form of a dropped body).
            self.resp_done = True
            self.req_done = True
            conn._codec.reset(self.sid, h2c.INTERNAL_ERROR if code is None else code)
            conn.want_flush()
            self.finish()
            return
        self.respond_error(exc)

    def flush_writes(self) -> None:
        """The upstream finished delivering one read's events: write them now."""
        self.conn.flush()

    def pause_client_reads(self) -> None:
        self.acks_paused = True

    def resume_client_reads(self) -> None:
        self.acks_paused = False
        n = self.unacked
        if n:
            self.unacked = 0
            self.conn._codec.ack(self.sid, n)
            self.conn.want_flush()

    # -- endings -------------------------------------------------------------------------------

    def on_timeout(self) -> None:
        self.timer = None
        entry = self.rt_entry
        if entry is not None:
            entry[1] = None
            self.rt_entry = None
        if self.resp_done:
            return
        before_head = not self.resp_started or self.head_out is not None
        self._count_deadline(DL_ROUTER if self.by_router and before_head else None)
        up, self._up = self._up, None
        if up is not None:
            up.cancel()
        if not self.resp_started or self.head_out is not None:
            self.head_out = None
            self.resp_started = False
            name = self._route.service.show() if self._route is not None else "the destination"
            if self.by_router:
                timeout = self.settings.timeout or 0.0
                self.respond_error(Timeout(f"exceeded {timeout * 1000:.0f} ms to {name}"))
            else:
                self.respond_error(Timeout(f"the request's deadline passed waiting for {name}"))
        else:
            conn = self.conn
            self._fclass = "timeout"
            self.resp_done = self.req_done = True
            conn._codec.reset(self.sid, h2c.CANCEL)
            conn.want_flush()
            self.finish()

    def stream_idle(self, limit: float) -> None:
        """limits.streamIdleTimeoutMs: no byte moved either way for `limit` seconds."""
        self._count_deadline(DL_IDLE)
        up, self._up = self._up, None
        if up is not None:
            up.cancel()
        if not self.resp_started or self.head_out is not None:
            self.head_out = None
            self.resp_started = False
            self.respond_error(StreamIdle(
                f"no bytes moved either way for {limit * 1000:.0f} ms (limits.streamIdleTimeoutMs)",
                client_slow=not self.req_done,
            ))  # fmt: skip
            return
        self._fclass = "timeout"
        self.resp_done = self.req_done = True
        self.conn._codec.reset(self.sid, h2c.CANCEL)
        self.conn.want_flush()
        self.finish()

    def respond_error(self, exc: ProxyError) -> None:
        """Answer a failure the proxy found itself: trailers-only for gRPC, else a
        status with `l5d-err` and a text body (docs/dtab.md §13.4)."""
        conn = self.conn
        up, self._up = self._up, None
        if up is not None:
            up.cancel()
        codec = conn._codec
        terse = self.settings.policy.terse_for(conn._peer_ip)  # an edge's untrusted caller: no details
        message = public_message(exc) if terse else str(exc) or type(exc).__name__
        self.resp_started = True
        self.resp_done = True
        self._status, self._fclass = exc.status, exc.stage
        self._ferr = exc  # the error log's cause (telemetry/observe.py)
        if self.is_grpc:
            l5d_err = None if terse else encode_l5d_err(message)
            codec.send_headers(self.sid, grpc.error_trailers(exc, l5d_err, message=message), end_stream=True)
        else:
            body = err_body(message)
            fields = [_STATUS.get(exc.status) or (b":status", b"502"), _TEXT_PLAIN, (b"content-length", b"%d" % len(body))]
            if not terse:
                fields.append((b"l5d-err", encode_l5d_err(message)))
                if exc.retryable:
                    fields.append(_RETRYABLE)
            if body and not self.head_only:
                codec.send_headers(self.sid, fields)
                codec.send_data(self.sid, body, end_stream=True)
            else:
                codec.send_headers(self.sid, fields, end_stream=True)
        conn.want_flush()
        if self.req_done:
            self.finish()
        else:
            self._stop_request()

    def _stop_request(self) -> None:
        """The response is complete before the request: RFC 9113 §8.1 lets a server
        stop the rest with RST_STREAM(NO_ERROR), once the response has left."""
        self.req_done = True
        codec = self.conn._codec
        if not codec.buffered(self.sid):
            codec.reset(self.sid, h2c.NO_ERROR)
        self.finish()

    def client_reset(self) -> None:
        """The client reset the stream (or went away): cancel upstream."""
        if not self.resp_done:
            self._status, self._fclass = 499, "cancelled"  # nginx's code for a client gone
        self.req_done = self.resp_done = True
        up, self._up = self._up, None
        if up is not None:
            up.cancel()
        self.finish()

    def finish(self) -> None:
        entry = self.rt_entry
        if entry is not None:
            entry[1] = None
            self.rt_entry = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn = self.conn
        if conn._streams.pop(self.sid, None) is not None:
            self._account()
            if conn._closing and not conn._streams:
                conn.want_flush()
                conn._close_soon = True


class ServerH2:
    """Downstream HTTP/2 connection: streams routed and forwarded. Never blocks."""

    __slots__ = ("_server", "_loop", "_transport", "_codec", "_streams", "_peer_ip", "last_active",
                 "_flush_scheduled", "_deferred", "_write_paused", "_closing", "_close_soon", "_in_read",
                 "_scheme", "_body_limit", "head_started", "_head_blocks", "_opened", "_premature",
                 "_rt_queue", "_rt_next", "_rt_timer")

    def __init__(self, server: Listener) -> None:
        self._server = server
        self._loop = server.loop
        self._transport: Any = None
        self._codec: h2c.H2Codec = None  # type: ignore[assignment]  # made at connection_made
        self._streams: dict[int, _Stream] = {}
        self._peer_ip = ""
        self.last_active = 0.0
        self._flush_scheduled = False
        self._deferred: list[_Stream] = []
        self._write_paused = False
        self._closing = False  # GOAWAY sent or received: close when the last stream ends
        self._close_soon = False
        self._in_read = False
        self._scheme = b"http"
        self._body_limit: int | None = server.settings.limits.max_request_body_bytes
        # When the preface, a header block or a HEADERS frame now arriving began (0: none);
        # the listener's sweep times it out (limits.headerReadTimeoutMs), as for HTTP/1.1.
        self.head_started = 0.0
        self._head_blocks = 0  # the codec's blocks_in when head_started was set
        self._opened = 0  # streams the client opened, and those that ended prematurely
        self._premature = 0  # (see PREMATURE_RESET_S)
        # The router's timeoutMs of the streams waiting for a response head: one timeout
        # for the whole router, so deadlines come in the order requests end, and a queue
        # with one loop timer (at its head) replaces a timer per stream. Entries are
        # [deadline, stream]; a stream answered in time clears its entry's stream.
        self._rt_queue: list[list[Any]] = []
        self._rt_next = 0  # the queue's first live index (popped entries are skipped, then cut)
        self._rt_timer: asyncio.TimerHandle | None = None

    # -- connection lifecycle ----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer_ip = peer[0] if peer else ""
        self._scheme = b"https" if transport.get_extra_info("ssl_object") is not None else b"http"
        set_nodelay(transport)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        server = self._server
        limits = server.settings.limits
        max_streams = server.settings.max_concurrent or DEFAULT_MAX_STREAMS
        self._codec = h2c.H2Codec(
            client_side=False, max_concurrent_streams=max_streams, max_header_list_size=limits.max_header_bytes,
            max_queued_control=h2c.MAX_QUEUED_CONTROL,
        )  # fmt: skip
        transport.write(self._codec.take_output())
        self.last_active = self._loop.time()
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._drop_streams()
        if self._rt_timer is not None:
            self._rt_timer.cancel()
            self._rt_timer = None
        self._rt_queue = []
        self._rt_next = 0
        self._server.connections.discard(self)
        self._server.connection_closed(self)

    def idle(self) -> bool:
        return not self._streams

    def shed(self) -> None:
        """Idle a while (the listener's sweep): the router-timeout queue's timer, armed
        for a stream long answered, is dropped with the queue's empty entries."""
        t = self._rt_timer
        if t is not None and not self._streams:
            t.cancel()
            self._rt_timer = None
            self._rt_queue = []
            self._rt_next = 0

    # -- the router's timeoutMs, one timer per connection ------------------------------------

    def router_deadline(self, st: _Stream, at: float) -> bool:
        """Queue `st`'s router deadline; False when it would come before one already queued
        (the router's timeout changed on reload): the stream then keeps a timer of its own."""
        q = self._rt_queue
        if q and q[-1][0] > at:
            return False
        if self._transport is None:
            return False
        i, n = self._rt_next, len(q)
        while i < n and q[i][1] is None:  # answered in time, mostly in order: skipped here
            i += 1
        if i >= n:
            q.clear()
            i = 0
        elif i > 64 and i * 2 > n:  # cut what was skipped, in amortised O(1)
            del q[:i]
            i = 0
        self._rt_next = i
        entry: list[Any] = [at, st]
        st.rt_entry = entry
        q.append(entry)
        if self._rt_timer is None:
            self._rt_timer = self._loop.call_at(at, self._router_timeouts)
        return True

    def _router_timeouts(self) -> None:
        """The queue's timer: every stream whose deadline passed times out (those answered
        meanwhile left an empty entry), then the timer moves to the next live deadline."""
        self._rt_timer = None
        q = self._rt_queue
        i, n = self._rt_next, len(q)
        now = self._loop.time()
        due: list[_Stream] = []
        while i < n:
            at, st = q[i]
            if st is None:
                i += 1
                continue
            if at > now:
                break
            due.append(st)
            i += 1
        if i >= n:
            q.clear()
            i = 0
        elif i > 64 and i * 2 > n:  # cut what was skipped, in amortised O(1)
            del q[:i]
            i = 0
        self._rt_next = i
        if q:
            self._rt_timer = self._loop.call_at(q[i][0], self._router_timeouts)
        for st in due:
            st.on_timeout()

    def sweep_streams(self, now: float, limit: float) -> None:
        for st in list(self._streams.values()):
            if st._is_idle(now, limit):
                st.stream_idle(limit)
        self.flush()

    def close_when_idle(self) -> None:
        """Drain: GOAWAY now (streams in flight finish), close when the last one ends."""
        if not self._closing and self._transport is not None:
            self._closing = True
            self._codec.close(h2c.NO_ERROR, self._codec.highest_inbound_stream_id)
            self.want_flush()
        if not self._streams:
            self._close_soon = True
            self.want_flush()

    # -- downstream bytes --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = self.last_active = self._loop.time()
        codec = self._codec
        if codec.control_queued:
            if not self._transport.get_write_buffer_size():
                codec.control_queued = 0  # every control frame queued so far has left
            elif codec.control_queued > h2c.MAX_QUEUED_CONTROL:  # our own resets did it
                self._control_flood()
                return
        resets = codec.resets
        try:
            events = codec.feed(data)
        except PeerProtocolError as exc:
            self._connection_error(exc)
            return
        # A batch that reset streams (rare, so the check is one comparison otherwise):
        # streams opened and reset within it are never routed, and resets are counted.
        gone = self._resets_in(events, codec.resets - resets) if codec.resets != resets else None
        if gone is not None and self._too_many_resets():
            return
        self._in_read = True
        streams = self._streams
        try:
            for kind, sid, payload, flow, ended in events:
                if kind == h2c.DATA:
                    st = streams.get(sid)
                    if st is None:
                        codec.ack(sid, flow)  # nobody wants it; keep the connection window open
                    else:
                        st.data(payload, flow)
                        if ended and not st.req_done:
                            st.request_end(None)
                elif kind == h2c.HEADERS:
                    if gone is not None and sid in gone:
                        # Opened and reset in the same read: it would cost an upstream
                        # request (behind HTTP/1.1, a connection) nobody is waiting for.
                        self._opened += 1
                        self._premature += 1
                        if self._too_many_resets():
                            return
                    elif self._request(sid, payload, ended):
                        return  # closed for too many early resets
                elif kind == h2c.TRAILERS:
                    self._trailers(sid, payload)
                elif kind == h2c.RESET:
                    codec.forget(sid)
                    st = streams.get(sid)
                    if st is not None:
                        premature = not st.resp_done and now - st.opened_at < PREMATURE_RESET_S
                        st.client_reset()
                        if premature:
                            self._premature += 1
                            if self._too_many_resets():
                                return
                elif kind == h2c.GOAWAY:
                    self._closing = True  # the client opens nothing more
                    if not streams:
                        self._close_soon = True
            drained = codec.drained
            if drained:
                codec.drained = []
                for sid in drained:
                    st = streams.get(sid)
                    if st is not None and st.up_paused and not self._write_paused:
                        st.up_paused = False
                        if st._up is not None:
                            st._up.resume_reading()
        finally:
            self._in_read = False
        if codec.reading_head():
            blocks = codec.blocks_in
            if not self.head_started or blocks != self._head_blocks:
                self.head_started = now  # the timer runs per block (or preface), not per read
                self._head_blocks = blocks
        elif self.head_started:
            self.head_started = 0.0
        self.flush()

    def _resets_in(self, events: list[Any], resets: int) -> set[int]:
        """The streams a batch reset. `resets` also counts streams the codec refused or
        reset without telling us (no event): those were opened and ended prematurely."""
        gone = {ev[1] for ev in events if ev[0] == h2c.RESET}
        refused = resets - len(gone)
        if refused > 0:
            self._opened += refused
            self._premature += refused
        return gone

    def _too_many_resets(self) -> bool:
        """Past the premature-reset limit (see PREMATURE_RESET_S): GOAWAY(ENHANCE_YOUR_CALM),
        every stream is dropped, the connection closes. True when that happened."""
        opened = self._opened
        if opened < PREMATURE_RESET_MIN_STREAMS or self._premature * 2 < opened:
            return False
        _warn_limited("h2: closing the connection from %s: %d of %d streams reset early (rapid reset)",
                      self._peer_ip, self._premature, opened)
        self._codec.abort(h2c.ENHANCE_YOUR_CALM, f"{self._premature} of {opened} streams reset early")
        self._close_now()
        return True

    def head_timeout(self, limit: float) -> None:
        """The preface or a header block took longer than `limits.headerReadTimeoutMs`:
        GOAWAY(PROTOCOL_ERROR) and close. The block cannot be abandoned alone (the HPACK
        context needs it whole, RFC 9113 §4.3), so the connection ends; nginx sends the
        same code when a client times out mid-frame."""
        self.head_started = 0.0
        if self._transport is None:
            return
        log.debug("h2 header read timeout from %s", self._peer_ip)
        self._codec.abort(h2c.PROTOCOL_ERROR, f"header read timed out after {limit * 1000:.0f} ms "
                                              "(limits.headerReadTimeoutMs)")
        self._close_now()

    def eof_received(self) -> bool:
        return False

    def _request(self, sid: int, fields: list[tuple[bytes, bytes]], ended: bool) -> bool:
        """Open a request stream. True when the connection was closed instead (a
        malformed request past the premature-reset limit)."""
        self._opened += 1
        st = _Stream(self, sid)
        try:
            req = h2c.read_request(fields)
            if ended and req.content_length:
                # RFC 9113 §8.1.1: the DATA (none) must add up to content-length.
                raise PeerProtocolError("content-length with no DATA")
        except PeerProtocolError as exc:
            # RFC 9113 §8.1.1: a malformed request is a stream error of PROTOCOL_ERROR
            # (the HTTP/1.1 side's 400 for the same bytes is its only way to refuse one).
            log.debug("h2 malformed request from %s on stream %d: %s", self._peer_ip, sid, exc)
            self._codec.reset(sid, h2c.PROTOCOL_ERROR)
            self._premature += 1  # ended at once, by the client's doing
            return self._too_many_resets()
        limit = st.settings.max_concurrent
        if limit is not None and not st._take_slot(limit):
            # servers[].maxConcurrentRequests: refused before any processing, so the
            # client may retry it anywhere (RFC 9113 §8.7).
            self._codec.reset(sid, h2c.REFUSED_STREAM)
            return False
        self._streams[sid] = st
        try:
            st.open(req, ended)
        except ProxyError as perr:  # its own name: a compiled build types `exc` by the clause above
            st.is_grpc = grpc.is_grpc(req.content_type)
            st.req_done = ended
            st.respond_error(perr)
            return False
        if ended and not st.req_done:  # END_STREAM on HEADERS: the request is complete
            st.request_end(None)
        return False

    def _trailers(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        st = self._streams.get(sid)
        if st is None:
            return
        try:
            trailers = h2c.read_response(fields, trailers=True)[1]
        except PeerProtocolError:
            self._codec.reset(sid, h2c.PROTOCOL_ERROR)
            st.client_reset()
            return
        st.request_end(trailers)

    def _connection_error(self, exc: PeerProtocolError) -> None:
        """The codec found a connection error and queued GOAWAY: send it, drop every stream, close."""
        if self._codec.control_queued > h2c.MAX_QUEUED_CONTROL:
            _warn_limited("h2: closing the connection from %s: %s", self._peer_ip, exc)
        else:
            log.debug("h2 connection error from %s: %s", self._peer_ip, exc)
        self._close_now()

    def _control_flood(self) -> None:
        """More control frames queued than MAX_QUEUED_CONTROL while the client does not
        read, found as the next read begins (the codec's bound, reached by resets the
        wire sent; the codec stops its own floods itself): GOAWAY(ENHANCE_YOUR_CALM)."""
        n = self._codec.control_queued
        _warn_limited("h2: closing the connection from %s: %d control frames queued unsent", self._peer_ip, n)
        self._codec.abort(h2c.ENHANCE_YOUR_CALM, f"{n} control frames queued while the peer does not read")
        self._close_now()

    def _drop_streams(self) -> None:
        """The connection ends under its streams: each is cancelled upstream and
        accounted once, as a request whose client went away (499, cancelled)."""
        streams = self._streams
        if streams:
            for st in list(streams.values()):
                st.client_reset()  # its finish() takes it out of `streams` and accounts it
            streams.clear()
            self._close_soon = False  # the close is the caller's (it may linger)

    def _close_now(self) -> None:
        """GOAWAY is queued: send it, drop every stream, close. The close lingers: our
        side ends after the GOAWAY (FIN), and what the client still sends is read and
        dropped until it closes too or CLOSE_LINGER_S passes. Closing with its bytes
        unread would send a TCP reset, which can destroy the GOAWAY before the client
        reads it (nginx's lingering close, for the same reason)."""
        self.head_started = 0.0
        t = self._transport
        self._drop_streams()
        if t is not None:
            data = self._codec.take_output()
            if data:
                t.write(data)
            if t.can_write_eof():
                t.write_eof()
                self._loop.call_later(CLOSE_LINGER_S, t.close)
            else:
                t.close()

    # -- output batching -------------------------------------------------------------------

    def defer_head(self, st: _Stream) -> None:
        self._deferred.append(st)
        self.want_flush()

    def want_flush(self) -> None:
        # Inside data_received the flush at its end covers it; from an upstream
        # callback, one flush after this loop iteration carries every stream's frames.
        if not self._flush_scheduled and not self._in_read:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        deferred = self._deferred
        if deferred:
            self._deferred = []
            for st in deferred:
                if st.head_out is not None:
                    st._send_head(False)
        t = self._transport
        if t is None:
            return
        data = self._codec.take_output()
        if data:
            t.write(data)
        if self._close_soon and not self._streams:
            t.close()

    # -- backpressure ------------------------------------------------------------------------

    def pause_writing(self) -> None:  # our client reads slower than we write
        # Reading stops too: every frame read may add output (a PING's ACK, a SETTINGS
        # ACK, a refused stream's RST_STREAM, a new stream's response), so a client that
        # does not read cannot make our output grow past the high-water mark by more
        # than one read's worth (TCP pushes back on it meanwhile).
        self._write_paused = True
        t = self._transport
        if t is not None:
            t.pause_reading()
        for st in self._streams.values():
            if st._up is not None:
                st._up.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        t = self._transport
        if t is not None:
            t.resume_reading()
        for st in self._streams.values():
            if st._up is not None and not st.up_paused:
                st._up.resume_reading()


_warn_next = 0.0


def _warn_limited(msg: str, *args: Any) -> None:
    """A bad peer is worth a WARNING, but an attack must not flood the log: one a minute."""
    global _warn_next
    now = time.monotonic()
    if now >= _warn_next:
        _warn_next = now + 60.0
        log.warning(msg, *args)


def make_protocol_factory(server: Listener) -> Callable[[], ServerH2]:
    return lambda: ServerH2(server)
