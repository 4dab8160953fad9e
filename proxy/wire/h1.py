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
from collections.abc import Callable
from time import monotonic
from typing import Any, Final

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
    BadResponse,
    Overloaded,
    PeerProtocolError,
    ProxyError,
    StreamIdle,
    Timeout,
)
from ..route.l5d import strip_l5d_response
from ..route.request import DL_ATTEMPT, DL_IDLE, DL_ROUTER, RoutedRequest, drop_set
from ..route.settings import Listener
from ..upstream.contracts import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, HIGH_WATER, LOW_WATER
from .render import error_response
from .upstream_h1 import set_nodelay

log = logging.getLogger(__name__)

_VIA: Final = (b"via", b"1.1 dtabproxy")
_RESP_DROP: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade")
)

_CHUNKED: Final = (b"transfer-encoding", b"chunked")
_CONN_CLOSE: Final = (b"connection", b"close")
_CONN_KEEP_ALIVE: Final = (b"connection", b"keep-alive")
_CONN_UPGRADE: Final = (b"connection", b"upgrade")
_NO_CONTENT: Final = (b"content-length", b"0")
_PAUSE_QUEUE: Final = 1  # too many pipelined events queued
_PAUSE_UPSTREAM: Final = 2  # the upstream cannot take more request body yet
#: Pipelined events queued behind an in-flight request before reads pause.
MAX_QUEUED_EVENTS: Final = 64


def _request_begun(data: bytes, events: list[Any], q: list[Any], req_done: bool, reader: RequestReader) -> bool:
    """Whether `data` (just fed) ends inside the start line of a request whose target
    llhttp has not reached yet. Between messages any bytes but empty lines begin one;
    after a message that ended in this read, only bytes that follow its end do (its last
    body piece is then not the read's tail)."""
    if reader.upgraded:
        return False  # the bytes after an upgrade head belong to the tunnel
    if events:
        if events[-1].__class__ is not EndOfMessage:
            return False  # a body is arriving
        prev = events[-2] if len(events) > 1 else None
        return not (prev.__class__ is Body and data.endswith(prev.data))
    if q:  # nothing new: the reader is where the last queued event left it
        return q[-1].__class__ is EndOfMessage and bool(data.strip(b"\r\n"))
    return req_done and bool(data.strip(b"\r\n"))


_NO_FIELDS: Final[list[tuple[bytes, bytes]]] = []

#: Request readers a listener keeps between messages; more are made when more
#: connections read at once, and dropped when they come back to a full pool.
READER_POOL: Final = 256


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


class ServerH1(RoutedRequest):
    """Downstream HTTP/1.1 connection: parse, route, forward. Never blocks."""

    __slots__ = (
        "_server", "_loop", "_transport", "_reader", "_queue", "_peer_ip",
        "_busy", "_req_done", "_resp_started", "_resp_done", "_discard", "_close_after",
        "_head", "_resp_chunked", "_resp_head_only", "_client_keep_alive", "_timer",
        "_paused", "_tunnel", "last_active", "_pumping", "_deadline", "_by_router", "_view", "_wbuf",
        "head_started", "_settings",
    )

    def __init__(self, server: Listener) -> None:
        self._server = server  # the listener: its settings snapshot, connections, loop
        settings = self._settings = server.settings  # re-read per request: a reload swaps it
        self._init_routing(settings.router, server)
        self._loop = server.loop
        self._transport: Any = None
        # Borrowed from the listener's pool when bytes come, given back when a response
        # ends with nothing of a next request read (`_finish`): an idle connection holds
        # no parser (about 1.3 KiB of the 3 an idle connection costs otherwise).
        self._reader: RequestReader | None = None
        # Events waiting behind the request in flight (pipelining). A list, not a deque:
        # it holds a few events at most, and an empty deque costs 600 bytes per idle
        # connection where an empty list costs 56.
        self._queue: list[Any] = []
        self._peer_ip = ""
        self._busy = False
        self._req_done = True
        self._resp_started = False
        self._resp_done = True
        self._discard = False
        self._close_after = False
        self._head: RequestHead | None = None
        self._resp_chunked = False
        self._resp_head_only = False
        self._client_keep_alive = True
        self._timer: asyncio.TimerHandle | None = None
        self._paused = 0  # why our reading is paused: _PAUSE_QUEUE | _PAUSE_UPSTREAM
        self._tunnel = False
        self.last_active = 0.0
        self._pumping = False
        self._deadline = 0.0  # loop time by which the response head must come (0: no limit)
        self._by_router = False  # that is the router's timeoutMs (else the request's deadline)
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
        self._release_slot()  # a tunnel held its slot until now
        self._server.connections.discard(self)
        self._server.connection_closed(self)

    def idle(self) -> bool:
        return not self._busy and not self._queue

    def shed(self) -> None:
        """Idle a while (the listener's sweep): drop what only a request in flight needs.
        The deadline timer is re-armed lazily (a request mostly moves it later), so it
        outlives its request by up to the router's timeoutMs; an idle connection lets it go."""
        t = self._timer
        if t is not None and not self._busy:
            t.cancel()
            self._timer = None
            self._deadline = 0.0

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
        if reader is None:
            reader = self._reader = self._borrow_reader()
        try:
            events = reader.feed(data)
        except PeerProtocolError as exc:
            self._bad_input(exc)
            return
        q.extend(events)
        # A head is still arriving: the sweeper times it out, counting from its first
        # byte. llhttp reports a request only from its target on, so the bytes of a
        # method alone (`OPTIONS `, sent a byte at a time) are told apart here; a read
        # that ends in LF (a head's end, a chunked body's end) never holds them.
        if reader.in_head() or (data[-1] != 0x0A and _request_begun(data, events, q, self._req_done, reader)):
            if events or not self.head_started:
                # Any event ended an earlier message, so this head began in this read.
                self.head_started = now
        elif self.head_started:
            self.head_started = 0.0
        self._pump()
        if len(q) > MAX_QUEUED_EVENTS:
            self._pause(_PAUSE_QUEUE)

    def _borrow_reader(self) -> RequestReader:
        settings = self._server.settings
        pool = settings.readers
        if pool:
            reader: RequestReader = pool.pop()
            return reader
        lim = settings.limits
        reader = RequestReader(
            max_header_bytes=lim.max_header_bytes, max_headers=lim.max_headers,
            max_target=lim.max_request_target_bytes, max_body_bytes=lim.max_request_body_bytes,
        )  # fmt: skip
        reader.home = pool  # a reload makes a new pool: this one, and its limits, then go
        return reader

    def sweep_streams(self, now: float, limit: float) -> None:
        """limits.streamIdleTimeoutMs: the request in flight moved no byte either way for
        `limit` seconds: it ends as an error on both sides."""
        if not self._busy or self._tunnel or not self._is_idle(now, limit):
            return
        self._count_deadline(DL_IDLE)
        up, self._up = self._up, None
        if up is not None:
            up.cancel()
        if self._resp_started:
            self._abort()  # the client must see the response end short
            return
        self._close_after = True  # a stalled upload is not read to its end
        self._respond_error(StreamIdle(
            f"no bytes moved either way for {limit * 1000:.0f} ms (limits.streamIdleTimeoutMs)",
            client_slow=not self._req_done,
        ))  # fmt: skip

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
        answered, in order; the 400 follows them and the connection closes. The broken
        request itself is never started: its head and body pieces, whether parsed in
        this read or queued from earlier ones behind a busy exchange, are dropped."""
        q = self._queue
        reader = self._reader
        if reader is not None:
            q.extend(reader.take_events())
        end = len(q)
        while end and q[end - 1].__class__ is not EndOfMessage:
            end -= 1
        if not end and self._busy and not self._req_done:
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
        while len(q) > end:
            q.pop()  # the broken request, not started: nothing of it goes upstream
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
            if isinstance(ev, Body):  # a type check, and a typed `ev` (not `ev.__class__` by name)
                del q[0]
                if not self._discard and self._up is not None:
                    self._bytes_in += len(ev.data)
                    self._up.send_body(ev.data)
            elif isinstance(ev, RequestHead):
                if self._busy:
                    break
                del q[0]
                self._start(ev)
            elif isinstance(ev, EndOfMessage):
                del q[0]
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
        settings = self._settings = server.settings  # a reload swapped it: new requests see it
        self._router = settings.router
        limit = settings.max_concurrent
        if limit is not None and not self._take_slot(limit):
            self._fail_early(Overloaded(f"{limit} requests in flight on this server (servers[].maxConcurrentRequests)"))
            return
        try:
            self._open(head, settings)
        except ProxyError as exc:
            self._fail_early(exc)
            return
        # The request's deadline (service.totalTimeoutMs, l5d-ctx-deadline) runs from now;
        # the router's timeoutMs from the end of the request (`_request_end`).
        dl = self._deadline_at
        if dl:
            self._by_router = False
            self._arm(self._loop.time() + (dl - monotonic()))
        else:
            self._deadline = 0.0

    def _arm(self, deadline: float) -> None:
        """One timer per connection, re-armed lazily: requests mostly move the deadline
        later, and the timer looks again when it fires; only an earlier one re-arms."""
        self._deadline = deadline
        t = self._timer
        if t is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
        elif t.when() > deadline:
            t.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _open(self, head: RequestHead, settings: Any) -> None:
        """Set the forwarded fields apart, prepare (route/request.py), start the attempt."""
        extras = head.extras
        if extras is None:  # plain: nothing to drop or read, forward the fields as they came
            out = head.headers.copy()
            if settings.sig_strip is not None:  # the override signature never goes on
                sig = settings.sig_strip
                out = [h for h in out if h[0] != sig]
        else:
            # The codec listed the few hop-by-hop and l5d- fields while it scanned the
            # head; everything else is filtered in one comprehension, not a Python loop.
            drop = drop_set(settings.sig_header)
            if settings.clear_context:  # docs/dtab.md §13.5: no l5d- field from the caller goes on
                out = [h for h in head.headers if h[0] not in drop and not h[0].startswith(b"l5d-")]
            else:
                out = [h for h in head.headers if h[0] not in drop]
        if head.chunked:
            body_mode = BODY_CHUNKED
        elif head.content_length:
            body_mode = BODY_LENGTH
        else:
            body_mode = BODY_NONE
        view = self._view.point(head)
        self._prepare(
            settings, self._loop, view, head.headers, extras, out, self._peer_ip, view.headers(b"host"),
            head.method, head.target, head.version, body_mode, b"http", _VIA, head.upgrade,
        )

    def _fail_early(self, exc: ProxyError) -> None:
        """A failure before anything went upstream: answer, then skip the request body."""
        head = self._head
        assert head is not None
        if head.chunked or (head.content_length or 0) > self._settings.discard_limit:
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
            timeout = self._settings.timeout
            if timeout is not None and not self._resp_started:  # the router's timeout starts now
                at = self._loop.time() + timeout
                if not self._deadline or at < self._deadline:
                    self._by_router = True
                    self._arm(at)
        if self._resp_done:
            self._finish()

    # -- upstream events -----------------------------------------------------------------

    def on_upstream_event(self, ev: Any) -> None:
        """One response event. Bytes for the client collect in `_wbuf` and go out in one
        write when the upstream's batch ends (`flush_writes`): a head, a body and its end
        usually arrive together, and each write may be a syscall."""
        buf = self._wbuf
        if buf is None:
            buf = self._wbuf = []
        if isinstance(ev, Body):  # a type check, and a typed `ev` (not `ev.__class__` by name)
            if not self._resp_head_only:
                self._bytes_out += len(ev.data)
                buf.append(encode_chunk(ev.data) if self._resp_chunked else ev.data)
        elif isinstance(ev, ResponseHead):
            if ev.status < 200 and ev.status != 101:  # 1xx: pass it on, the final one follows
                clear = self._settings.clear_context  # docs/dtab.md §13.5: interim heads too
                fields = [h for h in ev.headers if h[0] not in _RESP_DROP and not (clear and h[0][:4] == b"l5d-")]
                buf.append(encode_response_head(ev.status, ev.reason, fields))
                return
            self._response_head(ev)
        elif isinstance(ev, EndOfMessage):
            if self._resp_chunked:
                trailers = ev.trailers
                if trailers and self._settings.clear_context:  # docs/dtab.md §13.5: trailers too
                    trailers = [h for h in trailers if h[0][:4] != b"l5d-"]
                buf.append(encode_trailers(trailers) if trailers else LAST_CHUNK)
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
        status = ev.status
        self._resp_started = True
        self._status = status
        # The timeout covers the wait for a response, as in Linkerd; a streamed body may
        # take as long as it takes. The timer itself stays armed for later requests.
        self._deadline = 0.0
        self._resp_head_only = head.method == b"HEAD"
        if ev.plain:
            out = ev.headers.copy()
        elif self._settings.clear_context:
            out, inner_err = strip_l5d_response(h for h in ev.headers if h[0] not in _RESP_DROP)
            if inner_err and status >= 200 and status != 204 and status != 304 and status != 101:
                # docs/dtab.md §13.5: an edge clears the body of a response that carries an
                # inner proxy's error (its text names dtabs and addresses), as Linkerd does;
                # the caller gets the status with no content, framed as such.
                out = [h for h in out if h[0] != b"content-length"]
                out.append(_NO_CONTENT)
                self._resp_head_only = True  # the body's pieces are read and dropped
        else:
            out = [h for h in ev.headers if h[0] not in _RESP_DROP]
        route = self._route
        if route is not None and route.actions is not None:  # matched rules' response header edits
            out = route.actions.edit_response(out)
        bodyless = self._resp_head_only or status in (204, 304)
        self._resp_chunked = False
        if status == 101:
            if not (head.upgrade and self._upgrade is not None):
                self._resp_started = False  # nothing of this head goes to the client
                self._unasked_switch()
                return
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
        elif self._resp_head_only and ev.chunked and head.method == b"HEAD":
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

    def _unasked_switch(self) -> None:
        """101 to a request that asked for no upgrade: RFC 9110 §15.2.2 (a server must not
        switch to a protocol the request's Upgrade did not offer). The upstream broke the
        exchange: 502, and its connection, no longer HTTP/1.1, is closed."""
        up, self._up = self._up, None
        where = "the upstream"
        if up is not None:
            if up.endpoint is not None:
                where = str(up.endpoint)
            up.cancel()
        self._respond_error(BadResponse(
            f"{where} answered 101 Switching Protocols to a request that offered no Upgrade (RFC 9110 §15.2.2)"
        ))  # fmt: skip

    def _response_end(self) -> None:
        self._resp_done = True
        self._up = None  # the handle returns itself to the pool when both sides are done
        if not self._req_done:
            self._discard = True  # answered before the upload ended: drop the rest
            head = self._head
            if head is not None and (head.chunked or (head.content_length or 0) > self._settings.discard_limit):
                self._close_after = True
                self._finish()
            return
        self._finish()

    def upstream_failed(self, exc: ProxyError) -> None:
        if exc.__class__ is Timeout and not self._resp_done:  # client.requestAttemptTimeoutMs
            self._count_deadline(DL_ATTEMPT)
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
        self._count_deadline(DL_ROUTER if self._by_router else None)
        up, self._up = self._up, None
        if up is not None:
            up.cancel()
        if not self._resp_started:
            name = self._route.service.show() if self._route is not None else "the destination"
            if self._by_router:
                timeout = self._settings.timeout or 0.0
                self._respond_error(Timeout(f"exceeded {timeout * 1000:.0f} ms to {name}"))
            else:
                self._respond_error(Timeout(f"the request's deadline passed waiting for {name}"))
        else:
            self._abort()

    def _respond_error(self, exc: ProxyError) -> None:
        """Answer a failure after the exchange started; skip any body still to come."""
        if not self._req_done:
            self._discard = True
            head = self._head
            if head is not None and (head.chunked or (head.content_length or 0) > self._settings.discard_limit):
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
        t.write(error_response(exc, close=close, terse=self._settings.policy.terse_for(self._peer_ip), head=is_head))
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
        view = self._view  # nor hold the request's fields while the connection idles
        view._headers = _NO_FIELDS
        view.target = b""
        t = self._transport
        if t is None:
            return
        if self._close_after:
            self._queue.clear()
            t.close()
            return
        reader = self._reader
        if reader is None:
            return
        if reader.upgraded:
            # The request that asked to upgrade is the last one the reader parsed: this
            # one, unless a later head still waits in the queue. It ended without a 101.
            for ev in self._queue:
                if ev.__class__ is RequestHead:
                    break
            else:
                self._decline_upgrade()
        if self._queue:
            self._pump()
        elif not self.head_started and reader.at_rest():
            # Nothing of a next request read (not even a method's bytes, which only
            # head_started knows of): the reader goes back to the pool it came from.
            self._reader = None
            home = reader.home
            if home is not None and len(home) < READER_POOL:
                home.append(reader)

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

    def _decline_upgrade(self) -> None:
        """The exchange that asked to upgrade ended without a 101 (the upstream answered
        it, or the proxy did): the connection stays HTTP/1.1, and the bytes that followed
        the request, held for a tunnel, are parsed as the requests they are."""
        reader = self._reader
        if reader is None:  # (it read the upgrade, so it is there)
            return
        try:
            events = reader.decline_upgrade()
        except PeerProtocolError as exc:
            self._bad_input(exc)
            return
        self._queue.extend(events)
        if reader.in_head() and not self.head_started:
            self.head_started = self._loop.time()  # the header read timeout runs from now

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
        up = self._up = up.start_tunnel(self._transport)  # the connection itself from now on
        reader = self._reader
        tail = reader.upgrade_tail if reader is not None else b""
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


def make_protocol_factory(server: Listener) -> Callable[[], ServerH1]:
    return lambda: ServerH1(server)
