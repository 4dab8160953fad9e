"""THE hot path: HTTP/1.1 in and out, as `asyncio.Protocol`s over the sans-IO codec.

`ServerH1` is one downstream connection. It parses requests, asks the router where each
goes, borrows a keep-alive `UpstreamH1` from the chosen endpoint (or connects one), and
streams the request body up and the response back, with backpressure both ways:
whichever side's write buffer fills pauses the other side's reads. Pipelined requests
are answered in order, one exchange at a time. No task per request: connection set-up
is a future with a callback; everything else is a protocol callback.

The exchange state lives on the `ServerH1` itself (one request in flight per
connection), so a request allocates no exchange object.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from dtab import Dtab

from ..codec.h1 import (
    LAST_CHUNK,
    Body,
    EndOfMessage,
    RequestHead,
    RequestReader,
    ResponseHead,
    encode_chunk,
    encode_response_head,
    encode_trailers,
)
from ..errors import (
    PeerProtocolError,
    ProxyError,
    Timeout,
)
from .render import error_response
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

# Request fields the proxy consumes or re-writes: the l5d- ones every protocol has, and
# HTTP/1.1's hop-by-hop ones (RFC 9110 §7.6.1).
_H_DTAB, _H_CTX_DTAB, _H_DEADLINE, _H_TRACE, _H_DROP = H_DTAB, H_CTX_DTAB, H_DEADLINE, H_TRACE, H_DROP
_H_TRACE_EXT = H_TRACE_EXT
_H_CONNECTION: Final = 6
_H_UPGRADE: Final = 7
_REQ_SPECIAL: Final = {
    **L5D_REQUEST_FIELDS,
    b"connection": _H_CONNECTION,
    b"keep-alive": _H_DROP,
    b"proxy-connection": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    b"transfer-encoding": _H_DROP,
    b"upgrade": _H_UPGRADE,
}
_RESP_DROP: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade")
)

_CHUNKED: Final = (b"transfer-encoding", b"chunked")
_CONN_CLOSE: Final = (b"connection", b"close")
_CONN_KEEP_ALIVE: Final = (b"connection", b"keep-alive")
_CONN_UPGRADE: Final = (b"connection", b"upgrade")
_CONN_KEEP: Final = frozenset((b"close", b"keep-alive", b"upgrade"))
_PAUSE_QUEUE: Final = 1  # too many pipelined events queued
_PAUSE_UPSTREAM: Final = 2  # the upstream cannot take more request body yet
#: Pipelined events queued behind an in-flight request before reads pause.
MAX_QUEUED_EVENTS: Final = 64


class _HeaderLookup:
    """The request view identifiers read: first value by lower-case name. One per
    connection, re-pointed at each request, so identifying allocates nothing."""

    __slots__ = ("method", "target", "version", "_headers")

    def __init__(self) -> None:
        self.method = self.target = self.version = b""
        self._headers: list[tuple[bytes, bytes]] = []

    def point(self, head: RequestHead) -> _HeaderLookup:
        self.method = head.method
        self.target = head.target
        self.version = head.version
        self._headers = head.headers
        return self

    def headers(self, name: bytes) -> bytes | None:
        for n, v in self._headers:
            if n == name:
                return v
        return None


class ServerH1(RoutedRequest, asyncio.Protocol):
    """Downstream HTTP/1.1 connection: parse, route, forward. Never blocks."""

    __slots__ = (
        "_server", "_loop", "_transport", "_reader", "_queue", "_peer_ip",
        "_busy", "_req_done", "_resp_started", "_resp_done", "_discard", "_close_after",
        "_up", "_head", "_resp_chunked", "_resp_head_only", "_client_keep_alive", "_timer",
        "_paused", "_tunnel", "last_active", "_pumping", "_deadline", "_view", "_wbuf",
        "head_started",
    )

    def __init__(self, server: Any) -> None:
        self._server = server  # the listener's shared state: router ref, limits, flags
        self._init_routing(server.router)
        self._loop = server.loop
        self._transport: Any = None
        lim = server.limits
        self._reader = RequestReader(max_header_bytes=lim.max_header_bytes, max_headers=lim.max_headers)
        self._queue: deque[Any] = deque()
        self._peer_ip = ""
        self._busy = False
        self._req_done = True
        self._resp_started = False
        self._resp_done = True
        self._discard = False
        self._close_after = False
        self._up: Any = None  # the upstream exchange handle (see upstream_h1)
        self._head: RequestHead | None = None
        self._resp_chunked = False
        self._resp_head_only = False
        self._client_keep_alive = True
        self._timer: asyncio.TimerHandle | None = None
        self._paused = 0  # why our reading is paused: _PAUSE_QUEUE | _PAUSE_UPSTREAM
        self._tunnel = False
        self.last_active = 0.0
        self._pumping = False
        self._deadline = 0.0  # when the current request times out (0: no deadline)
        self._view = _HeaderLookup()
        self._wbuf: list[bytes] | None = None  # response bytes batched per upstream read
        self.head_started = 0.0  # when the request head now arriving began (0: none)

    # -- connection lifecycle ------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # uvloop's are not asyncio.Transport subclasses
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer_ip = peer[0] if peer else ""
        set_nodelay(transport)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.last_active = self._loop.time()
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        up, self._up = self._up, None
        if up is not None:  # the client went away mid-exchange (or closed a tunnel)
            up.cancel()
        if self._busy:
            if not self._tunnel:
                self._status, self._fclass = 499, "cancelled"  # nginx's code for a client gone
            self._account()  # a tunnel (after its 101) ends here, when either side closes
        self._busy = False
        self._server.connections.discard(self)
        self._server.connection_closed(self)

    def idle(self) -> bool:
        return not self._busy and not self._queue

    def close_when_idle(self) -> None:
        """Drain: close now if idle, else after the current response."""
        self._close_after = True
        if self.idle() and self._transport is not None:
            self._transport.close()

    # -- downstream bytes ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._tunnel:
            up = self._up
            if up is not None:
                up.tunnel_write(data)
            return
        now = self.last_active = self._loop.time()
        q = self._queue
        reader = self._reader
        try:
            q.extend(reader.feed(data))
        except PeerProtocolError as exc:
            self._bad_input(exc)
            return
        if reader.in_head():  # a head is still arriving: the sweeper times it out
            if not self.head_started:
                self.head_started = now
        elif self.head_started:
            self.head_started = 0.0
        self._pump()
        if len(q) > MAX_QUEUED_EVENTS:
            self._pause(_PAUSE_QUEUE)

    def head_timeout(self, limit: float) -> None:
        """A request head took longer than `limits.headerReadTimeoutMs` to arrive: 408,
        after any responses still owed, then close."""
        self.head_started = 0.0
        exc = PeerProtocolError(
            f"request header read timed out after {limit * 1000:.0f} ms (limits.headerReadTimeoutMs)", status=408
        )
        self._queue.append(exc)
        self._pump()

    def _bad_input(self, exc: PeerProtocolError) -> None:
        """The request stream broke. Whole requests parsed before the error are still
        answered, in order; the 400 follows them and the connection closes."""
        events = self._reader.take_events()
        end = 0
        for i, ev in enumerate(events):
            if ev.__class__ is EndOfMessage:
                end = i + 1
        q = self._queue
        if self._busy and not self._req_done and not any(e.__class__ is EndOfMessage for e in events[:end]) and not any(
            e.__class__ is EndOfMessage for e in q
        ):
            # The error is inside the body being forwarded now: that exchange cannot end.
            q.clear()
            up, self._up = self._up, None
            if up is not None:
                up.cancel()
            if self._resp_started:
                self._abort()
            else:
                self._resp_done = True
                self._write_error(exc, close=True)
            return
        q.extend(events[:end])
        q.append(exc)  # answered after the responses already owed, then close
        self._pump()

    def eof_received(self) -> bool:
        if self._tunnel:  # pass the half-close on; the tunnel ends when the peer closes too
            if self._up is not None:
                self._up.tunnel_eof()
            return True
        # A half-closed client may still want its response (RFC 9112 §9.6 allows it).
        if self.idle():
            return False
        self._close_after = True
        return True

    def _pump(self) -> None:
        if self._pumping:  # a request finished inside the loop below: it continues there
            return
        self._pumping = True
        try:
            self._pump_events()
        finally:
            self._pumping = False

    def _pump_events(self) -> None:
        q = self._queue
        while q:
            ev = q[0]
            cls = ev.__class__
            if cls is Body:
                q.popleft()
                if not self._discard and self._up is not None:
                    self._bytes_in += len(ev.data)
                    self._up.send_body(ev.data)
            elif cls is RequestHead:
                if self._busy:
                    break
                q.popleft()
                self._start(ev)
            elif cls is EndOfMessage:
                q.popleft()
                self._request_end(ev.trailers)
            else:  # a PeerProtocolError: the request stream cannot be parsed further
                if self._busy:
                    break
                q.clear()
                self._write_error(ev, close=True)
                self._status, self._fclass = ev.status, ev.stage
                self._account()  # a request that could not be parsed: unrouted
                return
        if self._paused & _PAUSE_QUEUE and len(q) < MAX_QUEUED_EVENTS // 2:
            self._resume(_PAUSE_QUEUE)

    # -- one exchange --------------------------------------------------------------------

    def _start(self, head: RequestHead) -> None:
        if head.target[:1] != b"/" and head.method != b"CONNECT":
            _origin_form(head)
        self._busy = True
        self._head = head
        self._req_done = False
        self._resp_started = False
        self._resp_done = False
        self._discard = False
        self._client_keep_alive = head.keep_alive
        if not head.keep_alive:
            self._close_after = True
        server = self._server
        self._router = server.router  # a reload swapped it: new requests use the new snapshot
        try:
            self._open(head)
        except ProxyError as exc:
            self._fail_early(exc)
            return
        if server.timeout is not None:
            # One timer per connection, re-armed lazily: requests only move the deadline.
            self._deadline = self._loop.time() + server.timeout
            if self._timer is None:
                self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _open(self, head: RequestHead) -> None:
        """Identify, assemble the local dtab, bind, pick, and start the upstream request."""
        server = self._server
        clear = server.clear_context
        ctx_vals: list[bytes] = []
        user_vals: list[bytes] = []
        deadline_vals: list[bytes] | None = None
        trace_val: bytes | None = None
        trace_ext: list[tuple[bytes, bytes]] | None = None
        conn_tokens: bytes | None = None
        upgrade: bytes | None = None
        special = _REQ_SPECIAL
        sig_header = server.sig_header
        sig: bytes | None = None
        headers = head.headers
        extras = head.extras
        if extras is None:  # plain: nothing to drop or read, forward the fields as they came
            out = headers.copy()
        else:
            # The codec listed the few hop-by-hop and l5d- fields while it scanned the
            # head; everything else is filtered in one comprehension, not a Python loop.
            drop = _drop_set(sig_header)
            if clear:  # spec §13.5: no l5d- field from the caller goes on, none is read
                out = [h for h in headers if h[0] not in drop and not h[0].startswith(b"l5d-")]
            else:
                out = [h for h in headers if h[0] not in drop]
            for name, value in extras:
                kind = special.get(name)
                if kind is None:
                    if name == sig_header and not clear:
                        sig = value
                    continue  # another l5d- field: forwarded (or cleared) above
                if clear and name[0] == 108:  # an l5d- field the proxy consumes
                    continue
                if kind == _H_DTAB:
                    user_vals.append(value)
                elif kind == _H_CTX_DTAB:
                    ctx_vals.append(value)
                elif kind == _H_DEADLINE:
                    if deadline_vals is None:
                        deadline_vals = []
                    deadline_vals.append(value)
                elif kind == _H_TRACE:
                    trace_val = value
                elif kind == _H_TRACE_EXT:  # W3C/B3 context (telemetry/tracing.py)
                    if trace_ext is None:
                        trace_ext = []
                    trace_ext.append((name, value))
                elif kind == _H_CONNECTION:
                    conn_tokens = value if conn_tokens is None else conn_tokens + b"," + value
                elif kind == _H_UPGRADE:
                    upgrade = value
        if sig is None and (ctx_vals or user_vals) and sig_header[:4] != b"l5d-" and server.policy.hmac_header:
            sig = self._view.point(head).headers(sig_header)  # a signature field not named l5d-*
        if conn_tokens is not None:  # names listed in Connection are hop-by-hop too
            listed = {t.strip().lower() for t in conn_tokens.split(b",")}
            listed -= _CONN_KEEP
            if listed:
                out = [h for h in out if h[0] not in listed]

        # Local dtab (spec §10): trusted override sources only, within limits.
        if ctx_vals or user_vals:
            local, local_key = server.check_override(self._peer_ip, ctx_vals, user_vals, sig)
        else:
            local, local_key = Dtab.EMPTY, b""

        endpoint, acts, ident = self._route_request(
            server, self._view.point(head), headers, local, local_key, out, trace_val, deadline_vals,
            self._peer_ip, self._view.headers(b"host"), trace_ext=trace_ext,
        )
        if head.upgrade and upgrade is not None:
            out.append(_CONN_UPGRADE)
            out.append((b"upgrade", upgrade))

        if head.chunked:
            body_mode = BODY_CHUNKED
        elif head.content_length:
            body_mode = BODY_LENGTH
        else:
            body_mode = BODY_NONE
        target = ident.rewritten_target if ident.rewritten_target is not None else head.target
        if acts is not None:
            target = acts.rewrite_target(target)  # a matched rule's URI rewrite
        self._up = server.open_upstream(endpoint, self, head.method, target, out, body_mode, self._loop)

    def rebind_upstream(self, handle: Any) -> None:
        """The upstream replaced its handle (a stale pooled connection was replayed)."""
        self._up = handle

    def _fail_early(self, exc: ProxyError) -> None:
        """A failure before anything went upstream: answer, then skip the request body."""
        head = self._head
        assert head is not None
        if head.chunked or (head.content_length or 0) > self._server.discard_limit:
            self._close_after = True  # don't read an unbounded body just to throw it away
        self._discard = True
        self._resp_done = True
        self._write_error(exc, close=self._close_after)
        if self._close_after:
            self._finish()

    def _request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        self._req_done = True
        if not self._discard and self._up is not None:
            self._up.send_end(trailers)
        if self._resp_done:
            self._finish()

    # -- upstream events -----------------------------------------------------------------

    def on_upstream_event(self, ev: Any) -> None:
        """One response event. Bytes for the client collect in `_wbuf` and go out in one
        write when the upstream's batch ends (`flush_writes`): a head, a body and its end
        usually arrive together, and each write may be a syscall."""
        cls = ev.__class__
        buf = self._wbuf
        if buf is None:
            buf = self._wbuf = []
        if cls is Body:
            if not self._resp_head_only:
                self._bytes_out += len(ev.data)
                buf.append(encode_chunk(ev.data) if self._resp_chunked else ev.data)
        elif cls is ResponseHead:
            if ev.status < 200 and ev.status != 101:  # 1xx: pass it on, the final one follows
                buf.append(encode_response_head(ev.status, ev.reason, [h for h in ev.headers if h[0] not in _RESP_DROP]))
                return
            self._response_head(ev)
        elif cls is EndOfMessage:
            if self._resp_chunked:
                buf.append(encode_trailers(ev.trailers) if ev.trailers else LAST_CHUNK)
            self.flush_writes()
            self._response_end()

    def flush_writes(self) -> None:
        buf = self._wbuf
        if buf:
            self._wbuf = None
            t = self._transport
            if t is not None:
                t.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def _response_head(self, ev: ResponseHead) -> None:
        head = self._head
        assert head is not None
        self._resp_started = True
        self._status = ev.status
        # The timeout covers the wait for a response, as in Linkerd; a streamed body may
        # take as long as it takes. The timer itself stays armed for later requests.
        self._deadline = 0.0
        status = ev.status
        clear = self._server.clear_context
        if ev.plain:
            out = ev.headers.copy()
        elif clear:
            out = [h for h in ev.headers if h[0] not in _RESP_DROP and not h[0].startswith(b"l5d-")]
        else:
            out = [h for h in ev.headers if h[0] not in _RESP_DROP]
        route = self._route
        if route is not None and route.actions is not None:  # matched rules' response header edits
            out = route.actions.edit_response(out)
        self._resp_head_only = head.method == b"HEAD"
        bodyless = self._resp_head_only or status in (204, 304)
        self._resp_chunked = False
        if status == 101:
            out.append(_CONN_UPGRADE)
            for n, v in ev.headers:
                if n == b"upgrade":
                    out.append((n, v))
        elif not bodyless and ev.content_length is None:
            if head.version == b"1.1":
                self._resp_chunked = True  # re-chunk a body that ends at close
                out.append(_CHUNKED)
            else:
                self._close_after = True  # HTTP/1.0 client: the body ends when we close
        elif self._resp_head_only and ev.chunked:
            out.append(_CHUNKED)  # HEAD mirrors GET's framing (RFC 9110 §9.3.2)
        if self._close_after:
            out.append(_CONN_CLOSE)
        elif head.version == b"1.0":
            out.append(_CONN_KEEP_ALIVE)
        buf = self._wbuf
        if buf is None:
            buf = self._wbuf = []
        buf.append(encode_response_head(status, ev.reason, out))
        if status == 101:
            self.flush_writes()
            self._start_tunnel()

    def _response_end(self) -> None:
        self._resp_done = True
        self._up = None  # the handle returns itself to the pool when both sides are done
        if not self._req_done:
            self._discard = True  # answered before the upload ended: drop the rest
            head = self._head
            if head is not None and (head.chunked or (head.content_length or 0) > self._server.discard_limit):
                self._close_after = True
                self._finish()
            return
        self._finish()

    def upstream_failed(self, exc: ProxyError) -> None:
        self._up = None
        if self._resp_done:
            return
        if not self._resp_started:
            self._respond_error(exc)
        else:  # the response is cut short: the client must see the connection end
            self._abort()

    # -- endings -------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if not deadline or not self._busy or self._resp_started:
            return
        if self._loop.time() < deadline:  # an earlier request's timer: wait for this one
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._on_timeout()

    def _on_timeout(self) -> None:
        self._deadline = 0.0
        if not self._busy or self._resp_done:
            return
        up, self._up = self._up, None
        if up is not None:
            up.cancel()
        if not self._resp_started:
            name = self._route.service.show() if self._route is not None else "the destination"
            self._respond_error(Timeout(f"exceeded {self._server.timeout * 1000:.0f} ms to {name}"))
        else:
            self._abort()

    def _respond_error(self, exc: ProxyError) -> None:
        """Answer a failure after the exchange started; skip any body still to come."""
        if not self._req_done:
            self._discard = True
            head = self._head
            if head is not None and (head.chunked or (head.content_length or 0) > self._server.discard_limit):
                self._close_after = True
        self._resp_done = True
        self._write_error(exc, close=self._close_after)
        if self._req_done or self._close_after:
            self._finish()

    def _write_error(self, exc: ProxyError, *, close: bool) -> None:
        self.flush_writes()
        if self._busy:
            self._status = exc.status
            self._fclass = exc.stage
            self._ferr = exc  # the error log's cause (telemetry/observe.py)
        t = self._transport
        if t is None:
            return
        head = self._head
        is_head = head is not None and head.method == b"HEAD" and self._busy
        t.write(error_response(exc, close=close, clear_context=self._server.clear_context, head=is_head))
        if close:
            t.close()

    def _abort(self) -> None:
        self.flush_writes()
        if self._busy:
            if self._fclass is None:
                self._fclass = "upstream"  # the response was cut short
            self._account()
        self._busy = False
        t = self._transport
        if t is not None:
            t.abort()

    def _finish(self) -> None:
        self._deadline = 0.0
        self._account()
        self._busy = False
        self._head = None
        self._route = None
        t = self._transport
        if t is None:
            return
        if self._close_after:
            self._queue.clear()
            t.close()
            return
        if self._queue:
            self._pump()

    # -- backpressure --------------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        was = self._paused
        self._paused = was | reason
        if not was and self._transport is not None:
            self._transport.pause_reading()

    def _resume(self, reason: int) -> None:
        was = self._paused
        self._paused = was & ~reason
        if was and not self._paused and self._transport is not None:
            self._transport.resume_reading()

    def pause_client_reads(self) -> None:  # the upstream's write buffer is full
        self._pause(_PAUSE_UPSTREAM)

    def resume_client_reads(self) -> None:
        self._resume(_PAUSE_UPSTREAM)

    def pause_writing(self) -> None:  # our client reads slower than the upstream sends
        if self._up is not None:
            self._up.pause_reading()

    def resume_writing(self) -> None:
        if self._up is not None:
            self._up.resume_reading()

    # -- upgrade (WebSocket) ---------------------------------------------------------------

    def _start_tunnel(self) -> None:
        """After a 101, bytes flow unparsed both ways until either side closes."""
        self._tunnel = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        up = self._up
        if up is None or self._transport is None:
            self._abort()
            return
        up.start_tunnel(self._transport)
        tail = self._reader.upgrade_tail
        if tail:
            up.tunnel_write(tail)


def _origin_form(head: RequestHead) -> None:
    """An absolute-form target (`GET http://world/x HTTP/1.1`, what an `http_proxy` client
    sends): its authority replaces Host (RFC 9112 §3.2.2) and the upstream, an origin
    server, gets the origin form (§3.2.1). `*` (OPTIONS) is left alone."""
    t = head.target
    i = t.find(b"://")
    if i <= 0:
        return
    rest = t[i + 3 :]
    end = len(rest)
    for sep in (b"/", b"?", b"#"):
        j = rest.find(sep)
        if 0 <= j < end:
            end = j
    authority = rest[:end].rpartition(b"@")[2]  # userinfo is never forwarded
    path = rest[end:].partition(b"#")[0]
    head.target = path if path[:1] == b"/" else b"/" + path
    if authority:
        head.headers = [(b"host", authority)] + [h for h in head.headers if h[0] != b"host"]


_DROP_SETS: dict[bytes, frozenset[bytes]] = {}


def _drop_set(sig_header: bytes) -> frozenset[bytes]:
    """The request fields never forwarded: hop-by-hop ones, the l5d- ones the proxy
    consumes or rewrites, and the override signature field (its name is configured)."""
    drop = _DROP_SETS.get(sig_header)
    if drop is None:
        drop = _DROP_SETS[sig_header] = frozenset(_REQ_SPECIAL) | {sig_header}
    return drop


def make_protocol_factory(server: Any) -> Callable[[], ServerH1]:
    return lambda: ServerH1(server)
