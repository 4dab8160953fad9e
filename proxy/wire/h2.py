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
loop iteration leaves in one write.

No task per stream: timers are loop handles; everything else is a callback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from dtab import Dtab

from ..codec import grpc
from ..codec import h2 as h2c
from ..codec.h1 import Body, EndOfMessage, ResponseHead
from ..errors import BadRequest, PeerProtocolError, ProxyError, Timeout
from ..route.l5d import (
    encode_l5d_err,
    err_body,
)
from .routing import (
    H_CTX_DTAB,
    H_DEADLINE,
    H_DROP,
    H_DTAB,
    H_TRACE,
    H_TRACE_EXT,
    L5D_REQUEST_FIELDS,
    RoutedRequest,
)
from .upstream_h1 import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, HIGH_WATER, LOW_WATER, set_nodelay

log = logging.getLogger(__name__)

#: Concurrent streams a client may open when the server config sets no limit. Each
#: stream holds a little state and at most its window of unforwarded bytes (the
#: connection window caps the sum), so the bound is on bookkeeping, not memory.
DEFAULT_MAX_STREAMS: Final = 1000

_H_DTAB, _H_CTX_DTAB, _H_DEADLINE, _H_TRACE, _H_DROP = H_DTAB, H_CTX_DTAB, H_DEADLINE, H_TRACE, H_DROP
_H_TRACE_EXT = H_TRACE_EXT
_H_GRPC_TIMEOUT: Final = 6
_H_HOST: Final = 7
_H_COOKIE: Final = 8
_REQ_SPECIAL: Final = {
    **L5D_REQUEST_FIELDS,
    b"grpc-timeout": _H_GRPC_TIMEOUT,
    b"host": _H_HOST,
    b"cookie": _H_COOKIE,
}
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

    __slots__ = ("conn", "sid", "up", "req_done", "resp_started", "resp_done", "is_grpc", "timer",
                 "unacked", "acks_paused", "up_paused", "head_out", "head_only", "timeout_s",
                 "deadline_call")

    def __init__(self, conn: ServerH2, sid: int) -> None:
        self._init_routing(conn._server.router)
        self.conn = conn
        self.sid = sid
        self.up: Any = None
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
        self.timeout_s = 0.0
        self.deadline_call = False  # grpc-timeout: the deadline bounds the whole call

    # -- opening -------------------------------------------------------------------------

    def open(self, req: h2c.Request, ended: bool) -> None:
        """Identify, assemble the local dtab, bind, pick, and start the upstream request."""
        conn = self.conn
        server = conn._server
        if req.method == b"CONNECT":
            raise BadRequest("CONNECT is not supported over HTTP/2")
        self.is_grpc = grpc.is_grpc(req.content_type)
        self.head_only = req.method == b"HEAD"
        clear = server.clear_context
        ctx_vals: list[bytes] = []
        user_vals: list[bytes] = []
        deadline_vals: list[bytes] | None = None
        trace_val: bytes | None = None
        trace_ext: list[tuple[bytes, bytes]] | None = None
        grpc_timeout: bytes | None = None
        host: bytes | None = req.authority
        cookies: list[bytes] | None = None
        out: list[tuple[bytes, bytes]] = [(b"host", b"")]  # placeholder, filled below
        special = _REQ_SPECIAL
        sig_header = server.sig_header
        sig: bytes | None = None
        for item in req.headers:
            name = item[0]
            kind = special.get(name)
            if kind is None:
                if name[0] == 108 and name.startswith(b"l5d-"):  # 108: "l", no slice per field
                    if clear:
                        continue
                    if name == sig_header:
                        sig = item[1]
                        continue
                out.append(item)
            elif clear and name.startswith(b"l5d-"):
                continue
            elif kind == _H_DTAB:
                user_vals.append(item[1])
            elif kind == _H_CTX_DTAB:
                ctx_vals.append(item[1])
            elif kind == _H_DEADLINE:
                if deadline_vals is None:
                    deadline_vals = []
                deadline_vals.append(item[1])
            elif kind == _H_TRACE:
                trace_val = item[1]
            elif kind == _H_TRACE_EXT:  # W3C/B3 context (telemetry/tracing.py)
                if trace_ext is None:
                    trace_ext = []
                trace_ext.append(item)
            elif kind == _H_GRPC_TIMEOUT:
                grpc_timeout = item[1]
            elif kind == _H_HOST:
                if host is None:  # :authority wins (RFC 9113 §8.3.1)
                    host = item[1]
            elif kind == _H_COOKIE:
                if req.cookies > 1:  # RFC 9113 §8.2.3: one field for HTTP/1.1
                    if cookies is None:
                        cookies = []
                    cookies.append(item[1])
                else:
                    out.append(item)
        if host is not None:
            out[0] = (b"host", host)
        else:
            del out[0]
        if cookies is not None:
            out.append((b"cookie", b"; ".join(cookies)))

        if ctx_vals or user_vals:
            local, local_key = server.check_override(conn._peer_ip, ctx_vals, user_vals, sig)
        else:
            local, local_key = Dtab.EMPTY, b""

        endpoint, acts, ident = self._route_request(
            server, _View(req), req.headers, local, local_key, out, trace_val, deadline_vals,
            conn._peer_ip, host, conn._scheme, _VIA, trace_ext,
        )
        timeout_s = server.timeout
        if grpc_timeout is not None:
            ns = grpc.parse_timeout(grpc_timeout)
            if ns is not None:
                t = ns / 1e9
                self.deadline_call = True
                if timeout_s is None or t < timeout_s:
                    timeout_s = t
                # The next hop gets what is left of the tighter deadline.
                out.append((grpc.TIMEOUT, grpc.format_timeout(int(timeout_s * 1e9))))

        if ended:
            body_mode = BODY_NONE
        elif req.content_length is not None:
            body_mode = BODY_LENGTH
        else:
            body_mode = BODY_CHUNKED
        target = ident.rewritten_target if ident.rewritten_target is not None else req.path
        if acts is not None:
            target = acts.rewrite_target(target)  # a matched rule's URI rewrite
        if timeout_s is not None:
            self.timeout_s = timeout_s
            self.timer = conn._loop.call_later(timeout_s, self.on_timeout)
        up = server.open_upstream(endpoint, self, req.method, target, out, body_mode, conn._loop)
        if not self.resp_done:  # it may have failed synchronously
            self.up = up

    def rebind_upstream(self, handle: Any) -> None:
        self.up = handle

    # -- request side ----------------------------------------------------------------------

    def data(self, data: bytes, flow_len: int) -> None:
        up = self.up
        if up is not None and data:
            self._bytes_in += len(data)
            up.send_body(data)
        if self.acks_paused and self.up is not None:
            self.unacked += flow_len
        else:
            self.conn._codec.ack(self.sid, flow_len)

    def request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self.req_done = True
        if self.up is not None:
            self.up.send_end(trailers)
        if self.resp_done:
            self.finish()

    # -- owner callbacks (upstream -> downstream) --------------------------------------------

    def on_upstream_event(self, ev: Any) -> None:
        cls = ev.__class__
        conn = self.conn
        codec = conn._codec
        if cls is Body:
            if self.head_out is not None:
                self._send_head(False)
            if self.head_only or not ev.data:
                return
            self._bytes_out += len(ev.data)
            queued = codec.send_data(self.sid, ev.data)
            conn.want_flush()
            if queued > h2c.SEND_HIGH_WATER and not self.up_paused and self.up is not None:
                self.up_paused = True
                self.up.pause_reading()
        elif cls is ResponseHead:
            self._response_head(ev)
        elif cls is EndOfMessage:
            self.resp_done = True
            self.up = None
            trailers = ev.trailers
            if trailers:
                clear = conn._server.clear_context
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
        clear = conn._server.clear_context
        status_field = _STATUS.get(status)
        if status_field is None or status == 101:
            self.upstream_failed(PeerProtocolError(f"upstream answered status {status}, which HTTP/2 cannot carry"))
            return
        out = [status_field]
        for h in ev.headers:
            name = h[0]
            if name in _RESP_DROP or (clear and name[:4] == b"l5d-"):
                continue
            out.append(h)
        route = self._route
        if route is not None and route.actions is not None:  # matched rules' response edits
            out = route.actions.edit_response(out)
        if status < 200:  # interim: pass it on now, the final response follows
            conn._codec.send_headers(self.sid, out)
            conn.want_flush()
            return
        self.resp_started = True
        self._status = status
        if self.timer is not None and not self.deadline_call:
            # The router timeout covers the wait for the response, as on HTTP/1.1; a
            # gRPC deadline covers the whole call (the client gave up at that point).
            self.timer.cancel()
            self.timer = None
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
        self.up = None
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
        if self.resp_done:
            return
        up, self.up = self.up, None
        if up is not None:
            up.cancel()
        if not self.resp_started or self.head_out is not None:
            self.head_out = None
            self.resp_started = False
            name = self._route.service.show() if self._route is not None else "the destination"
            self.respond_error(Timeout(f"exceeded {self.timeout_s * 1000:.0f} ms to {name}"))
        else:
            conn = self.conn
            self._fclass = "timeout"
            self.resp_done = self.req_done = True
            conn._codec.reset(self.sid, h2c.CANCEL)
            conn.want_flush()
            self.finish()

    def respond_error(self, exc: ProxyError) -> None:
        """Answer a failure the proxy found itself: trailers-only for gRPC, else a
        status with `l5d-err` and a text body (spec §13.4)."""
        conn = self.conn
        server = conn._server
        up, self.up = self.up, None
        if up is not None:
            up.cancel()
        codec = conn._codec
        clear = server.clear_context
        message = str(exc) or type(exc).__name__
        self.resp_started = True
        self.resp_done = True
        self._status, self._fclass = exc.status, exc.stage
        self._ferr = exc  # the error log's cause (telemetry/observe.py)
        if self.is_grpc:
            codec.send_headers(self.sid, grpc.error_trailers(exc, None if clear else encode_l5d_err(message)), end_stream=True)
        else:
            body = b"" if clear else err_body(message)
            fields = [_STATUS.get(exc.status) or (b":status", b"502"), _TEXT_PLAIN, (b"content-length", b"%d" % len(body))]
            if not clear:
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
        up, self.up = self.up, None
        if up is not None:
            up.cancel()
        self.finish()

    def finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn = self.conn
        if conn._streams.pop(self.sid, None) is not None:
            self._account()
            if conn._closing and not conn._streams:
                conn.want_flush()
                conn._close_soon = True


class ServerH2(asyncio.Protocol):
    """Downstream HTTP/2 connection: streams routed and forwarded. Never blocks."""

    __slots__ = ("_server", "_loop", "_transport", "_codec", "_streams", "_peer_ip", "last_active",
                 "_flush_scheduled", "_deferred", "_write_paused", "_closing", "_close_soon", "_in_read",
                 "_scheme")

    def __init__(self, server: Any) -> None:
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

    # -- connection lifecycle ----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer_ip = peer[0] if peer else ""
        self._scheme = b"https" if transport.get_extra_info("ssl_object") is not None else b"http"
        set_nodelay(transport)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        server = self._server
        limits = server.limits
        max_streams = getattr(server.config, "max_concurrent_requests", None) or DEFAULT_MAX_STREAMS
        self._codec = h2c.H2Codec(
            client_side=False, max_concurrent_streams=max_streams, max_header_list_size=limits.max_header_bytes
        )
        transport.write(self._codec.take_output())
        self.last_active = self._loop.time()
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        streams, self._streams = self._streams, {}
        for st in streams.values():
            st.client_reset()
        self._server.connections.discard(self)
        self._server.connection_closed(self)

    def idle(self) -> bool:
        return not self._streams

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
        self.last_active = self._loop.time()
        codec = self._codec
        try:
            events = codec.feed(data)
        except PeerProtocolError as exc:
            self._connection_error(exc)
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
                    self._request(sid, payload, ended)
                elif kind == h2c.TRAILERS:
                    self._trailers(sid, payload)
                elif kind == h2c.RESET:
                    codec.forget(sid)
                    st = streams.get(sid)
                    if st is not None:
                        st.client_reset()
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
                        if st.up is not None:
                            st.up.resume_reading()
        finally:
            self._in_read = False
        self.flush()

    def eof_received(self) -> bool:
        return False

    def _request(self, sid: int, fields: list[tuple[bytes, bytes]], ended: bool) -> None:
        st = _Stream(self, sid)
        try:
            req = h2c.read_request(fields)
            if ended and req.content_length:
                # RFC 9113 §8.1.1: the DATA (none) must add up to content-length.
                raise PeerProtocolError("content-length with no DATA")
        except PeerProtocolError:
            # RFC 9113 §8.1.1: a malformed request is a stream error of PROTOCOL_ERROR.
            self._codec.reset(sid, h2c.PROTOCOL_ERROR)
            return
        self._streams[sid] = st
        try:
            st.open(req, ended)
        except ProxyError as exc:
            st.is_grpc = grpc.is_grpc(req.content_type)
            st.req_done = ended
            st.respond_error(exc)
            return
        if ended and not st.req_done:  # END_STREAM on HEADERS: the request is complete
            st.request_end(None)

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
        log.debug("h2 connection error from %s: %s", self._peer_ip, exc)
        t = self._transport
        streams, self._streams = self._streams, {}
        for st in streams.values():
            st.client_reset()
        if t is not None:
            data = self._codec.take_output()
            if data:
                t.write(data)
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

    def pause_writing(self) -> None:  # our client reads slower than upstreams send
        self._write_paused = True
        for st in self._streams.values():
            if st.up is not None:
                st.up.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        for st in self._streams.values():
            if st.up is not None and not st.up_paused:
                st.up.resume_reading()


def make_protocol_factory(server: Any) -> Callable[[], ServerH2]:
    return lambda: ServerH2(server)
