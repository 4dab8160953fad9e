"""HTTP/1.1 message framing (RFC 9112) for the data plane: sans-IO, on httptools.

Owns: turning request bytes (server side) and response bytes (client side) into
head / body / end-of-message events, the framing rules a proxy must enforce so that
no backend can frame a forwarded message differently from us (request smuggling),
the head-size limits, and the encoders for heads, chunks and trailers.

Must not: touch sockets, loops or clocks; import asyncio or anything from `proxy`
but `proxy.errors`; decode bytes on the hot path.

llhttp (inside httptools) runs in its strict mode: no leniency flag is ever set, so
bare LF, obs-fold, CR/NUL/CTL in values, whitespace before the colon, bad chunk
sizes and extensions, a missing CRLF after chunk data, duplicate Content-Length and
Content-Length with Transfer-Encoding are rejected by llhttp itself. What llhttp
accepts but a proxy must not is checked in `on_headers_complete`: the HTTP version
(llhttp takes 0.9 and 2.0), transfer codings other than a single final `chunked`,
Transfer-Encoding in HTTP/1.0, Host rules, target forms, status code range and
reason-phrase characters. The unit tests pin each rule to a failing input.

Rarer heads get a second pass, flagged by the same scan so a plain head pays nothing:
a Connection header that nominates Content-Length or Host is refused (RFC 9110 §7.6.1),
a response loses the fields its Connection header nominates, the trailers of either
side lose them too (the same section: "any header or trailer field(s)"), and
`Upgrade: h2c` and HTTP2-Settings are removed (a request that offered only h2c is not an upgrade). An
HTTP/1.0 request without Host gets an empty one, an HTTP/0.9 request line (which llhttp
would hold, waiting for fields) is refused as soon as it ends, and a request body may be
bounded (`max_body_bytes`: 413).

Two httptools limits shape the code. It skips the body of a request that asks for an
upgrade, so such a body (Content-Length only) is cut out of the tunnel bytes here.
And it cannot be told that a response has no body, so responses to HEAD and 2xx
responses to CONNECT are cut at the end of their head: while one is outstanding,
input is fed to llhttp in pieces that end after each CRLFCRLF (a head ends at the
first one), and the parser is replaced after such a head.

Known limits, all from llhttp and none a framing risk: only llhttp's fixed method
list is accepted (an extension method gets 400); "GET / RTSP/1.0" reads as HTTP/1.0
because httptools does not report the protocol name; a doubled space in the request
line is tolerated; a repeated, equal Content-Length is refused (RFC 9110 §8.6 allows
refusing or collapsing).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, ClassVar, Final

import httptools

from proxy.errors import BodyTooLarge, LocalProtocolError, PeerProtocolError

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

_OWS: Final = b" \t"
_CRLF: Final = b"\r\n"
_HEAD_END: Final = b"\r\n\r\n"
_HTTP_10: Final = b"1.0"
_HTTP_11: Final = b"1.1"
# httptools reports the version as a str; anything but these two is refused (llhttp
# itself accepts 0.9, a missing version, and 2.0).
_VERSIONS: Final = {"1.1": _HTTP_11, "1.0": _HTTP_10}
_HEAD: Final = b"HEAD"
_CONNECT: Final = b"CONNECT"
_OPTIONS: Final = b"OPTIONS"
_SPECIAL_METHODS: Final = (_HEAD, _CONNECT)  # responses to these are cut at the head
_CHUNKED: Final = b"chunked"
_CLOSE: Final = b"close"
_KEEP_ALIVE: Final = b"keep-alive"
_KEEP_ALIVE_VALUES: Final = frozenset((b"keep-alive", b"Keep-Alive"))
_CONTINUE: Final = b"100-continue"
# llhttp parses RTSP/1.0 request lines too; these methods only exist there.
_RTSP_ONLY: Final = frozenset(
    (
        b"DESCRIBE",
        b"ANNOUNCE",
        b"SETUP",
        b"PLAY",
        b"PAUSE",
        b"TEARDOWN",
        b"GET_PARAMETER",
        b"SET_PARAMETER",
        b"REDIRECT",
        b"RECORD",
        b"FLUSH",
    )
)
# Fields that decide framing or connection handling; everything else passes through.
# The small ints keep the per-field test to one dict probe and int comparisons.
_CL, _TE, _HOST, _CONN, _EXPECT, _HOP, _ODD, _TRACE = 1, 2, 3, 4, 5, 6, 7, 8
_FRAMING: Final = {
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"host": _HOST,
    b"connection": _CONN,
    b"expect": _EXPECT,
    # The other hop-by-hop fields (RFC 9110 §7.6.1): they only make a head not `plain`.
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
    # Hop-by-hop too, and the head needs a second look (`_hop_request`): an Upgrade may
    # offer h2c and HTTP2-Settings goes with it (RFC 7540 §3.2, deprecated by RFC 9113
    # §3.1); neither is ever forwarded.
    b"upgrade": _ODD,
    b"http2-settings": _ODD,
    # Trace context a proxy re-writes (W3C Trace Context, B3): listed with the extras
    # too, so a head without them stays plain; the dict probe above already happens.
    b"traceparent": _TRACE,
    b"b3": _TRACE,
    b"x-b3-traceid": _TRACE,
    b"x-b3-spanid": _TRACE,
    b"x-b3-parentspanid": _TRACE,
    b"x-b3-sampled": _TRACE,
    b"x-b3-flags": _TRACE,
}
_H2C: Final = b"h2c"
_UPGRADE: Final = b"upgrade"
_HTTP2_SETTINGS: Final = b"http2-settings"
# Connection options whose fields the proxy already drops or re-frames itself (RFC 9110
# §7.6.1, RFC 9112 §6.1): naming them in Connection changes nothing. Any other option
# sends the head through `_hop_request` / `_hop_response`.
_OWN_OPTIONS: Final = frozenset(
    (b"close", b"keep-alive", b"upgrade", b"te", b"trailer", b"proxy-connection",
     b"transfer-encoding", b"http2-settings", b"connection")
)  # fmt: skip
# Fields a Connection header may not nominate: they are meant for every recipient
# (RFC 9110 §7.6.1: "a sender MUST NOT send a connection option corresponding to a field
# that is intended for all recipients of the content"). Dropping Content-Length would
# leave the body unframed on the next hop; dropping Host would leave an HTTP/1.1
# request without one. So such a message is refused, never forwarded half-stripped.
_END_TO_END: Final = frozenset((b"content-length", b"host"))
_L: Final = 0x6C  # b"l": the first byte of an l5d- field name
# RFC 9112 §3.2 / RFC 3986 §3.2.2: uri-host [ ":" port ] -- unreserved, pct-encoded,
# sub-delims, ":" and the IP-literal brackets. `translate(None, chars)` deletes them,
# so a valid value translates to b"" (one C pass instead of a regex).
_HOST_CHARS: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:[]"
# RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ); llhttp lets CTLs by.
_REASON_CHARS: Final = bytes([9, 32, *range(0x21, 0x7F), *range(0x80, 0x100)])
# Checking a value with `translate` builds a table from the allowed characters each
# time (a few thousand instructions); the common values are known good instead: the
# registered reason phrases, and Host values seen valid before (bounded: hosts come
# from clients).
_KNOWN_REASONS: Final = frozenset(s.phrase.encode("latin-1") for s in HTTPStatus) | {b""}
_GOOD_HOSTS: set[bytes] = set()
_GOOD_HOSTS_MAX: Final = 4096

# Reader states.
_IDLE: Final = 0  # between messages
_IN_HEAD: Final = 1  # start line or fields being read
_IN_BODY: Final = 2  # body with a known end (Content-Length, chunked, or none)
_UNTIL_EOF: Final = 3  # response body delimited by the connection closing (RFC 9112 §6.3 item 8)

# Why a response head stopped the parser (ResponseReader._detach).
_NO_BODY: Final = 1  # response to HEAD: the next response follows the head
_TUNNEL: Final = 2  # 2xx to CONNECT: the connection is a tunnel after the head


_DERIVED: Final = frozenset(("plain", "extras"))  # hints computed from the headers, not values


class _Event:
    """Value semantics and a readable repr for the event classes (tests, trace logs).
    `FIELDS` names each class's fields (its `__slots__`, which a compiled class does
    not keep)."""

    __slots__: tuple[str, ...] = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __eq__(self, other: object) -> bool:
        # `plain` is derived from the headers (a hint for forwarding), not part of the value.
        return type(self) is type(other) and all(
            getattr(self, s) == getattr(other, s) for s in self.FIELDS if s not in _DERIVED
        )

    __hash__ = None  # type: ignore[assignment]  # mutable value objects

    def __repr__(self) -> str:
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.FIELDS)
        return f"{type(self).__name__}({fields})"


class RequestHead(_Event):
    """A request's start line and header section.

    `headers` keep wire order with lowercase names and values stripped of OWS.
    `content_length` is None when the request has no Content-Length (no body unless
    `chunked`). `upgrade` is set for CONNECT and for `Connection: upgrade` with an
    Upgrade field; after such a head the reader stops (see `RequestReader`).
    """

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "keep_alive",
        "chunked",
        "content_length",
        "upgrade",
        "expect_continue",
        "extras",
        "plain",
    )
    FIELDS: ClassVar[tuple[str, ...]] = (
        "method",
        "target",
        "version",
        "headers",
        "keep_alive",
        "chunked",
        "content_length",
        "upgrade",
        "expect_continue",
        "extras",
        "plain",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: Headers,
        keep_alive: bool = True,
        chunked: bool = False,
        content_length: int | None = None,
        upgrade: bool = False,
        expect_continue: bool = False,
        extras: Headers | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        # The hop-by-hop, trace-context and l5d- fields (also in `headers`), None when there are none;
        # `plain` says the same as a flag (see _scan).
        self.extras = extras
        self.plain = extras is None


class ResponseHead(_Event):
    """A response's status line and header section.

    A 1xx other than 101 is interim: no Body or EndOfMessage follows it, the final
    response comes next. Responses to HEAD, 204 and 304 are followed directly by
    EndOfMessage; their `chunked`/`content_length` report the fields as sent, which a
    proxy forwards unchanged. `upgrade` is set for 101 and for a 2xx to CONNECT.
    """

    __slots__ = (
        "status",
        "reason",
        "version",
        "headers",
        "keep_alive",
        "chunked",
        "content_length",
        "upgrade",
        "plain",
    )
    FIELDS: ClassVar[tuple[str, ...]] = (
        "status",
        "reason",
        "version",
        "headers",
        "keep_alive",
        "chunked",
        "content_length",
        "upgrade",
        "plain",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        headers: Headers,
        keep_alive: bool = True,
        chunked: bool = False,
        content_length: int | None = None,
        upgrade: bool = False,
        plain: bool = False,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        self.upgrade = upgrade
        self.plain = plain  # no hop-by-hop and no l5d- field (see _scan)


class Body(_Event):
    """A piece of decoded body (chunk framing removed). Pieces follow the input."""

    __slots__ = ("data",)
    FIELDS: ClassVar[tuple[str, ...]] = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EndOfMessage(_Event):
    """The message is complete; `trailers` holds a chunked body's trailer section
    (lowercase names), or None when it had none."""

    __slots__ = ("trailers",)
    FIELDS: ClassVar[tuple[str, ...]] = ("trailers",)

    def __init__(self, trailers: Headers | None = None) -> None:
        self.trailers = trailers


# Shared instance for the common case: events are facts, nobody mutates them.
_EOM: Final = EndOfMessage(None)

RequestEvent = RequestHead | Body | EndOfMessage
ResponseEvent = ResponseHead | Body | EndOfMessage


class _Detach(Exception):
    """Raised from a callback to stop llhttp at the end of a response head."""


def _scan(
    headers: Headers, http10: bool, status: int
) -> tuple[bool, int | None, bool, int, bytes | None, bytes | None, Headers | None, bool]:
    """Framing fields of a header section: (chunked, content_length, keep_alive,
    number of Host fields, first Host, Expect, extras, odd). `extras` lists the hop-by-hop,
    trace-context and `l5d-` fields, None when there are none (the head is `plain`): this loop already
    looks at every name, so a proxy need not walk the fields again to find the few it
    must drop or read. `odd` says the head needs a second pass (an Upgrade or
    HTTP2-Settings field, or a Connection option beyond the proxy's own): rare, so the
    common head pays one flag for it. Raises PeerProtocolError(status)."""
    length: int | None = None
    te: bytes | None = None
    conn: bytes | None = None
    hosts = 0
    host: bytes | None = None
    expect: bytes | None = None
    extras: Headers | None = None  # the fields that make the head not plain, in order
    odd = False
    framing = _FRAMING
    for item in headers:
        name, value = item
        if name not in framing:
            if name[0] == _L and name.startswith(b"l5d-"):
                if extras is None:
                    extras = []
                extras.append(item)
        else:
            kind = framing[name]
            if kind == _CL:
                # RFC 9110 §8.6: 1*DIGIT. llhttp already refuses signs, lists and
                # duplicates (even equal ones); this keeps the rule local and explicit.
                if not value.isdigit():
                    raise PeerProtocolError(f"invalid Content-Length: {value!r}", status=status)
                n = int(value)
                if length is not None and n != length:
                    raise PeerProtocolError("conflicting Content-Length values", status=status)
                length = n
            elif kind == _HOST:
                hosts += 1
                if host is None:
                    host = value
            elif kind == _EXPECT:
                expect = value
            else:
                if kind == _CONN:
                    conn = value if conn is None else conn + b"," + value
                elif kind == _TE:
                    te = value if te is None else te + b"," + value
                elif kind == _ODD:
                    odd = True
                if extras is None:
                    extras = []
                extras.append(item)
    chunked = False
    if te is not None:
        if http10:
            # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty
            # framing; an HTTP/1.0 hop may not even understand it.
            raise PeerProtocolError("Transfer-Encoding in an HTTP/1.0 message", status=status)
        if length is not None:
            # RFC 9112 §6.1: never pick one of the two (llhttp also refuses this).
            raise PeerProtocolError("both Content-Length and Transfer-Encoding present", status=status)
        if te != _CHUNKED:
            _check_codings(te, status)
        chunked = True
    if conn is None:
        keep_alive = not http10
    elif conn in _KEEP_ALIVE_VALUES:  # what most clients send
        keep_alive = True
    else:
        tokens = _tokens(conn)
        if _CLOSE in tokens:
            keep_alive = False
        else:
            keep_alive = not http10 or _KEEP_ALIVE in tokens
        if not odd:
            odd = not _OWN_OPTIONS.issuperset(tokens)
    return chunked, length, keep_alive, hosts, host, expect, extras, odd


def _tokens(value: bytes) -> list[bytes]:
    if b"," not in value:
        return [value.strip(_OWS).lower()]
    return [t for t in (item.strip(_OWS).lower() for item in value.split(b",")) if t]


def _check_codings(te: bytes, status: int) -> None:
    codings = _tokens(te)
    if not codings or codings[-1] != _CHUNKED:
        # RFC 9112 §6.3 item 4: for a request the body length is then unknown (400);
        # a response would run to the connection's close, which we do not forward.
        raise PeerProtocolError(f"Transfer-Encoding does not end in chunked: {te!r}", status=status)
    if _CHUNKED in codings[:-1]:
        raise PeerProtocolError(f"chunked applied more than once: {te!r}", status=status)
    if len(codings) > 1:
        # RFC 9112 §6.1: a coding we do not implement gets 501. We only forward the
        # decoded chunked body, so any other coding would be lost on the next hop.
        raise PeerProtocolError(
            f"unsupported transfer coding: {te!r}", status=501 if status == 400 else status
        )


def _nominated(headers: Headers) -> set[bytes]:
    """The field names Connection headers list (RFC 9110 §7.6.1), beyond the options the
    proxy handles itself (`_OWN_OPTIONS`)."""
    names: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            names.update(_tokens(value))
    names -= _OWN_OPTIONS
    names.discard(b"")
    return names


def _show_names(names: Iterable[bytes]) -> str:
    return ", ".join(sorted(n.decode("latin-1") for n in names))


_EXTRA_KINDS: Final = frozenset((_TE, _CONN, _HOP, _ODD, _TRACE))


def _extras_of(headers: Headers) -> Headers | None:
    """The hop-by-hop and l5d- fields of a head, as `_scan` lists them (for a head the
    second pass changed)."""
    framing = _FRAMING
    out = [h for h in headers if framing.get(h[0]) in _EXTRA_KINDS or h[0].startswith(b"l5d-")]
    return out or None


def _without_h2c(value: bytes) -> bytes:
    """An Upgrade value without the `h2c` offer (RFC 9110 §7.8: a list of
    protocol-name["/"protocol-version]); b"" when nothing else was offered."""
    kept = [
        p for p in (item.strip(_OWS) for item in value.split(b","))
        if p and p.partition(b"/")[0].lower() != _H2C
    ]  # fmt: skip
    return b", ".join(kept)


def _head_size(headers: Headers) -> int:
    # Bytes the fields take on the wire, without optional whitespace: `name: value\r\n`.
    return sum(len(n) + len(v) + 4 for n, v in headers)


class _Reader:
    """What request and response readers share: limits, failure, trailers."""

    __slots__ = (
        "_parser",
        "_events",
        "_headers",
        "_state",
        "_error",
        "_closed",
        "_slow",
        "_keep_alive",
        "_feed_len",
        "_start_len",
        "_span",
        "_max_header_bytes",
        "_max_headers",
        "upgraded",
        "upgrade_tail",
        "_side",
        "_status",
        "_nominated",
        "_conn_seen",
    )
    _parser: Any  # httptools' request or response parser, made by the side's reader

    def _init(self, max_header_bytes: int, max_headers: int, side: str, status: int) -> None:
        self._events: list[RequestHead | ResponseHead | Body | EndOfMessage] = []
        self._headers: Headers = []  # fresh and empty at each message's start
        self._state = _IDLE
        self._error: PeerProtocolError | None = None
        self._closed = False  # a message without keep-alive ended: ignore what follows
        self._slow = False  # any of error / closed / upgraded / upgrade body: not the fast path
        self._keep_alive = True
        self._feed_len = 0
        self._start_len = 0  # length of the feed in which the current head began
        self._span = 0  # bytes of later feeds while that head was incomplete
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self.upgraded = False
        self.upgrade_tail = b""
        self._side = side  # "request" / "response", for messages
        self._status = status  # HTTP status our errors carry
        # The field names an odd head's Connection header nominates (beyond the proxy's
        # own options), with the list that collects that message's trailers: they lose
        # those fields too. Tied to the list, so a plain head need not reset it.
        self._nominated: tuple[set[bytes], Headers] | None = None
        self._conn_seen = False  # the message being read has a Connection field

    def _fail(self, message: str, status: int | None = None) -> PeerProtocolError:
        err = PeerProtocolError(message, status=self._status if status is None else status)
        self._error = err
        self._slow = True
        return err

    def _too_large(self, what: str) -> PeerProtocolError:
        # 431 on the server side (RFC 6585 §5); the client side keeps its 502.
        return self._fail(
            f"{self._side} header fields too large: more than {what}",
            431 if self._status == 400 else None,
        )

    def _check_head(self, headers: Headers, extra: int) -> None:
        """Called when the cheap test trips: too many fields, or the feeds that carried
        this head add up to more than the limit. Then measure what we hold (fields,
        plus the start line's parts in `extra`)."""
        if len(headers) > self._max_headers:
            raise self._too_large(f"{self._max_headers} header fields")
        if extra + _head_size(headers) > self._max_header_bytes:
            raise self._too_large(f"{self._max_header_bytes} bytes")

    def _check_partial(self) -> None:
        """After a feed that left a head or trailer section incomplete: bound it."""
        if self._state == _IN_HEAD:
            # Every byte of a feed after the one where the head began is head.
            if self._span > self._max_header_bytes:
                raise self._too_large(f"{self._max_header_bytes} bytes")
            if len(self._headers) > self._max_headers:
                raise self._too_large(f"{self._max_headers} header fields")
        else:
            self._check_trailers(self._headers)

    def _check_trailers(self, trailers: Headers) -> None:
        if len(trailers) > self._max_headers:
            raise self._fail(f"trailer section too large: more than {self._max_headers} fields")
        if _head_size(trailers) > self._max_header_bytes:
            raise self._fail(f"trailer section too large: more than {self._max_header_bytes} bytes")

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        err = self._error
        if err is None:
            if self._closed:
                return  # bytes after a `Connection: close` message: not ours to read
            cause = exc.__context__
            if isinstance(exc, httptools.HttpParserCallbackError) and cause is not None:
                raise cause  # a callback failed with something that is not ours: a bug
            err = self._fail(f"malformed {self._side}: {exc}")
        raise err

    # httptools callbacks shared by both sides.

    def on_header(self, name: bytes, value: bytes) -> None:
        # Lowercase once, here; llhttp leaves trailing OWS in the value (RFC 9110 §5.5),
        # which few values have: a test of the last byte spares the call.
        name = name.lower()
        if len(name) == 10 and name == b"connection":
            self._conn_seen = True
        n = len(value)
        if n and (value[n - 1] == 32 or value[n - 1] == 9):
            value = value.rstrip(_OWS)
        self._headers.append((name, value))

    def _version(self) -> bytes:
        """The message's HTTP version. httptools formats it as text per call (a
        str.format, the costliest call of a plain head); llhttp accepts only 0.9, 1.0,
        1.1 and 2.0, and only 1.1 keeps the connection without a Connection field, so
        a head without one that keeps the connection is HTTP/1.1 and needs no call."""
        parser = self._parser
        if not self._conn_seen and parser.should_keep_alive():
            return _HTTP_11
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise self._fail(f"unsupported HTTP version {parser.get_http_version()}")
        return version

    def on_body(self, body: bytes) -> None:
        self._events.append(Body(body))

    def _end_message(self) -> None:
        trailers = self._headers
        if trailers:
            self._check_trailers(trailers)
            self._headers = []
            nominated = self._nominated
            if nominated is not None and nominated[1] is trailers:
                # RFC 9110 §7.6.1: a nominated field is removed from the trailers as well.
                names = nominated[0]
                trailers = [h for h in trailers if h[0] not in names]
            self._events.append(EndOfMessage(trailers) if trailers else _EOM)
        else:
            self._events.append(_EOM)
        self._state = _IDLE
        if not self._keep_alive:
            self._closed = self._slow = True


class RequestReader(_Reader):
    """HTTP/1.1 request framing for the server side. Bytes in, events out; no I/O.

    `feed` returns RequestHead, Body and EndOfMessage events in order, across any
    number of pipelined requests, and raises PeerProtocolError (400; 431 or 414 for
    a limit, 501 for a transfer coding we do not implement) -- the connection is
    then unusable. After a head with `upgrade` set and its EndOfMessage, `upgraded`
    is True and the bytes that followed collect in `upgrade_tail` (later feeds are
    appended there) for the caller to tunnel; `decline_upgrade` resumes HTTP/1.1 if
    the upstream refused. Input after a request without keep-alive is ignored.

    `max_body_bytes` (None: no limit) bounds a request's content: a Content-Length
    above it fails at the head, a chunked body when it grows past it (413 either way),
    so no piece beyond the limit is ever returned. An `Upgrade: h2c` offer and
    HTTP2-Settings are removed from the head; a request that offered nothing else is
    not an upgrade (h2c smuggling: the proxy would tunnel HTTP/2 past its routing).
    An HTTP/1.0 request without Host gets an empty one (see `on_headers_complete`).
    """

    __slots__ = ("_target", "_max_target", "_upgrade_body", "_declined", "_max_body", "_body_left", "_line", "home")

    def __init__(
        self,
        *,
        max_header_bytes: int = 65536,
        max_headers: int = 100,
        max_target: int = 8192,
        max_body_bytes: int | None = None,
    ) -> None:
        # 64 KiB of fields and 100 fields: the common server defaults (nginx's
        # large_client_header_buffers allow 4x8k, Go's net/http 1 MB, Node 16 KiB);
        # 8 KiB of target is the limit most servers and CDNs apply (RFC 9112 §3
        # recommends supporting at least 8000 octets).
        self._init(max_header_bytes, max_headers, "request", 400)
        self._target = b""
        self._max_target = max_target
        self._upgrade_body = 0  # Content-Length still to cut out of the tunnel bytes
        self._declined = False  # llhttp saw an upgrade that offered only h2c: resume HTTP/1.1
        self._max_body = max_body_bytes
        self._body_left: int | None = None  # bytes a chunked body may still add (None: uncounted)
        self._line = b""  # the end of a head still in its request line (_check_request_line)
        self._parser = httptools.HttpRequestParser(self)  # looks our callbacks up once
        self.home: list[Any] | None = None  # the pool it returns to between messages, if any

    def at_rest(self) -> bool:
        """Between messages, with nothing of a next one parsed, no error, no upgrade and
        no end of connection: it could read another connection's requests. (The bytes
        of a method alone leave no trace here; the caller knows whether any came.)"""
        return self._state == _IDLE and not self._slow and not self._upgrade_body and not self._declined

    def feed(self, data: bytes) -> list[RequestEvent]:
        if self._slow:
            self._feed_slow(data)
        else:
            self._parse(data)
        events = self._events
        self._events = []
        return events  # type: ignore[return-value]

    def in_head(self) -> bool:
        """Part of a request head has arrived and its end has not (for the header-read
        timeout: the wire layer notes when a head started arriving)."""
        return self._state == _IN_HEAD

    def take_events(self) -> list[RequestEvent]:
        """After `feed` raised: the events parsed before the error (the caller may still
        answer the whole requests among them; the rest belongs to the bad request)."""
        events = self._events
        self._events = []
        return events  # type: ignore[return-value]

    def feed_eof(self) -> list[RequestEvent]:
        """The client closed its side. Raises if a request was cut short."""
        if self._error is not None:
            raise self._error
        if self._upgrade_body or (self._state != _IDLE and not self.upgraded):
            raise self._fail("connection closed in the middle of a request")
        return []

    def decline_upgrade(self) -> list[RequestEvent]:
        """The upstream answered the upgrade or CONNECT with an ordinary response:
        go back to parsing HTTP/1.1, starting with the bytes held in `upgrade_tail`."""
        if not self.upgraded:
            raise LocalProtocolError("no upgrade to decline")
        tail = self.upgrade_tail
        self.upgraded = False
        self.upgrade_tail = b""
        self._slow = bool(self._upgrade_body) or self._closed
        self._parser = httptools.HttpRequestParser(self)
        return self.feed(tail)

    def _feed_slow(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        left = self._upgrade_body
        if left:
            if len(data) < left:
                if data:
                    self._events.append(Body(data))
                self._upgrade_body = left - len(data)
                return
            self._events.append(Body(data[:left]))
            self._events.append(_EOM)
            self._upgrade_body = 0
            if not self._keep_alive:  # as _end_message: nothing after it is read
                self._closed = True
            self._slow = self.upgraded or self._closed
            data = data[left:]
        if self.upgraded:
            self.upgrade_tail += data
        elif data and not self._closed:
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        self._feed_len = len(data)
        if self._state == _IN_HEAD:
            self._span += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._state = _IDLE
            if self._declined:
                # Not an upgrade after all (only h2c was offered): the request ended
                # (once its Content-Length body is cut out below); HTTP/1.1 goes on.
                self._declined = False
                self._parser = httptools.HttpRequestParser(self)
                self._slow = bool(self._upgrade_body) or self._closed
            else:
                self.upgraded = self._slow = True
            self._feed_slow(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        else:
            if self._state == _IN_HEAD or self._headers:
                self._check_partial()
                if self._state == _IN_HEAD and not self._headers:
                    self._check_request_line(data)

    def _check_request_line(self, data: bytes) -> None:
        """After a feed that left a head with no field yet: if the request line has
        ended without a version (`GET /`, HTTP/0.9), llhttp would wait for fields the
        client never sends, so answer now (RFC 9112 §3: an HTTP/1.x request line ends
        with the version). The last bytes of the head are kept across feeds (never more
        than the line we compare with), so a line split over reads is judged whole. A
        header line never equals `method SP target`: llhttp refuses a field name with a
        space in it."""
        full = self._parser.get_method() + b" " + self._target
        tail = self._line + data if self._span else data  # _span 0: the head began in this feed
        self._line = tail[-(len(full) + 3) :]  # LF + line + CR: enough to see the line whole
        if tail[-1:] != b"\n":
            return
        line = tail[:-2] if tail[-2:-1] == b"\r" else tail[:-1]
        if not line:
            return
        # Without an LF, `line` runs from the feed where the target began (or is longer
        # than `full`, cut above): so a suffix of `full` is the request line itself.
        if b"\n" not in line and full.endswith(line):
            raise self._http09()
        if not line.endswith(full):
            return
        # The request line is `full` when what precedes it ends the previous message: a
        # line break, or the last body piece of a message that ended in this feed (a
        # Content-Length body needs no line break after it); the head then began here.
        before = line[: len(line) - len(full)]
        if not before or before[-1] == 0x0A:
            raise self._http09()
        events = self._events
        if not self._span and len(events) > 1 and events[-1].__class__ is EndOfMessage:
            prev = events[-2]
            if prev.__class__ is Body and before.endswith(prev.data):
                raise self._http09()

    def _http09(self) -> PeerProtocolError:
        return self._fail("HTTP/0.9 request (no HTTP version in the request line) is not supported")

    def on_body(self, body: bytes) -> None:
        left = self._body_left
        if left is not None:  # a chunked body under a limit: count before handing it on
            left -= len(body)
            if left < 0:
                raise self._body_too_large()
            self._body_left = left
        self._events.append(Body(body))

    def _body_too_large(self) -> PeerProtocolError:
        err = self._error = BodyTooLarge(self._max_body or 0)
        self._slow = True
        return err

    # httptools callbacks (request side). There is no on_message_begin: on_url is
    # always the first callback of a request, and one fewer Python call per request
    # is measurable.

    def on_url(self, url: bytes) -> None:
        if self._state == _IN_HEAD:
            target = self._target + url  # the target spans feeds
        else:
            self._state = _IN_HEAD
            self._start_len = self._feed_len
            self._span = 0
            self._conn_seen = False
            target = url
        if len(target) > self._max_target:
            # RFC 9110 §15.5.15
            raise self._fail(f"request target too long: more than {self._max_target} bytes", 414)
        self._target = target

    def on_headers_complete(self) -> None:
        parser = self._parser
        headers = self._headers
        self._headers = []  # collects trailers, if any
        self._state = _IN_BODY
        target = self._target
        version = self._version()
        method: bytes = parser.get_method()
        # Cheap test first: the feeds that carried this head bound its size.
        if len(headers) > self._max_headers or self._start_len + self._span > self._max_header_bytes:
            self._check_head(headers, len(method) + len(target) + 12)
        chunked, length, keep_alive, hosts, host, expect, extras, odd = _scan(headers, version is _HTTP_10, 400)
        # RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one ever, and valid.
        if hosts != 1:
            if hosts:
                raise self._fail("more than one Host header")
            if version is _HTTP_11:
                raise self._fail("missing Host header")
            # HTTP/1.0 may omit Host. The request goes upstream as HTTP/1.1, which must
            # carry one, empty when the target has no authority (RFC 9112 §3.2); an
            # absolute-form target's authority replaces it (§3.2.2). Identifiers see
            # an empty Host as none.
            headers.insert(0, (b"host", b""))
        elif host and host not in _GOOD_HOSTS:
            if host.translate(None, _HOST_CHARS):
                raise self._fail(f"invalid Host header: {host!r}")
            if len(_GOOD_HOSTS) >= _GOOD_HOSTS_MAX:
                _GOOD_HOSTS.clear()
            _GOOD_HOSTS.add(host)
        if method in _RTSP_ONLY:
            raise self._fail(f"unsupported method {method!r}")
        if target[:1] != b"/" or method == _CONNECT:
            self._check_target(method, target)
        max_body = self._max_body
        if max_body is not None:
            if length is not None and length > max_body:
                # RFC 9110 §15.5.14: refused before a byte of it is read or forwarded.
                raise self._body_too_large()
            self._body_left = max_body if chunked else None
        upgrade: bool = parser.should_upgrade()
        if odd:
            headers, extras, upgrade = self._hop_request(headers, upgrade, method)
        if upgrade or (odd and self._declined):
            if method == _CONNECT:
                if chunked or length:
                    # RFC 9110 §9.3.6: a CONNECT request has no content.
                    raise self._fail("CONNECT request with content")
            elif chunked:
                # httptools skips an upgrade request's body, and we can only find
                # the end of a Content-Length body in the bytes it leaves us.
                raise self._fail("chunked body on a request with Upgrade is not supported", 501)
            elif length:
                self._upgrade_body = length
        self._keep_alive = keep_alive
        self._events.append(
            RequestHead(
                method,
                target,
                version,
                headers,
                keep_alive,
                chunked,
                length,
                upgrade,
                # RFC 9110 §10.1.1: ignored in an HTTP/1.0 request.
                expect is not None and version is _HTTP_11 and expect.lower() == _CONTINUE,
                extras,
            )
        )

    def _hop_request(self, headers: Headers, upgrade: bool, method: bytes) -> tuple[Headers, Headers | None, bool]:
        """The second pass over a head `_scan` marked odd: refuse a Connection header
        that nominates a field meant for every recipient, remove HTTP2-Settings and
        the `h2c` offer from Upgrade. Returns (headers, extras, upgrade). (The other
        nominated fields are dropped from the head by the proxy with the rest of the
        hop-by-hop ones, and from the trailers here, in `_end_message`.)"""
        nominated = _nominated(headers)
        bad = nominated & _END_TO_END
        if bad:
            raise self._fail(
                f"Connection header nominates {_show_names(bad)}, a field for every recipient (RFC 9110 §7.6.1)"
            )
        if nominated:
            self._nominated = (nominated, self._headers)  # this message's trailers, to come
        out: Headers = []
        offered = False  # an Upgrade protocol other than h2c is left
        for item in headers:
            name = item[0]
            if name == _UPGRADE:
                value = _without_h2c(item[1])
                if not value:
                    continue
                offered = True
                if value != item[1]:
                    item = (name, value)
            elif name == _HTTP2_SETTINGS:
                continue
            out.append(item)
        if upgrade and not offered and method != _CONNECT:
            # llhttp already stopped for an upgrade: resume HTTP/1.1 after this request.
            upgrade = False
            self._declined = True
        return out, _extras_of(out), upgrade

    def _check_target(self, method: bytes, target: bytes) -> None:
        # RFC 9112 §3.2: origin-form for everything, absolute-form (proxies), the
        # authority-form only for CONNECT and the asterisk-form only for OPTIONS.
        # (Origin-form with a method other than CONNECT never gets here.)
        if method == _CONNECT:
            host, colon, port = target.rpartition(b":")
            if colon and host and port.isdigit() and not host.translate(None, _HOST_CHARS):
                return
        elif target == b"*":
            if method == _OPTIONS:
                return
        elif b"://" in target:
            return
        raise self._fail(f"invalid request target for {method.decode()}: {target!r}")

    def on_message_complete(self) -> None:
        if self._upgrade_body:
            # The body is still in the bytes llhttp skipped; EndOfMessage follows it.
            self._state = _IDLE
            return
        self._end_message()


class ResponseReader(_Reader):
    """HTTP/1.1 response framing for the client side. Bytes in, events out; no I/O.

    Call `expect(method)` before each request is written; responses are matched to
    those methods in order (a HEAD response has no body, a 2xx to CONNECT opens a
    tunnel). `feed` raises PeerProtocolError (status 502) for anything malformed or
    unsolicited; `feed_eof` ends a body delimited by the close, or raises if a
    response was cut short. After an upgrade (101, or 2xx to CONNECT) `upgraded` is
    True and later bytes collect in `upgrade_tail`.
    """

    __slots__ = ("_reason", "_methods", "_special", "_carry", "_interim", "_detach")

    def __init__(self, *, max_header_bytes: int = 65536, max_headers: int = 100) -> None:
        self._init(max_header_bytes, max_headers, "response", 502)
        self._reason = b""
        self._methods: deque[bytes] = deque()
        self._special = 0  # HEAD / CONNECT requests outstanding: feed in pieces
        self._carry = b""  # last 3 bytes fed, so a CRLFCRLF across feeds is found
        self._interim = False
        self._detach = 0
        self._parser = httptools.HttpResponseParser(self)

    def expect(self, method: bytes) -> None:
        self._methods.append(method)
        if method in _SPECIAL_METHODS:
            if not self._special:
                self._carry = b""
            self._special += 1

    def feed(self, data: bytes) -> list[ResponseEvent]:
        if self._slow:
            if self._error is not None:
                raise self._error
            if self.upgraded:
                self.upgrade_tail += data
        elif self._special:
            self._parse_pieces(data)
        else:
            self._parse(data)
        events = self._events
        self._events = []
        return events  # type: ignore[return-value]

    def feed_eof(self) -> list[ResponseEvent]:
        """The upstream closed its side."""
        if self._error is not None:
            raise self._error
        if self.upgraded or self._closed:
            return []
        state = self._state
        if state == _UNTIL_EOF:
            self._end_message()
            self._closed = self._slow = True
        elif state != _IDLE:
            raise self._fail("connection closed before the response was complete")
        events = self._events
        self._events = []
        return events  # type: ignore[return-value]

    def _parse(self, data: bytes) -> None:
        self._feed_len = len(data)
        if self._state == _IN_HEAD:
            self._span += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = self._slow = True
            self.upgrade_tail = data[exc.args[0] :]
        except httptools.HttpParserError as exc:
            if not self._detach:
                self._parse_failed(exc)
        else:
            if self._state == _IN_HEAD or self._headers:
                self._check_partial()

    def _parse_pieces(self, data: bytes) -> None:
        # A head ends at its first CRLFCRLF, so when every piece ends after one, the
        # head of a HEAD/CONNECT response ends exactly where a piece does.
        carry = self._carry
        window = carry + data
        base = len(carry)
        self._carry = window[-3:]
        size = len(data)
        start = 0
        search = 0
        while start < size:
            i = window.find(_HEAD_END, search)
            if i < 0:
                end = size
            else:
                search = i + 1  # overlapping: "\r\n\r\n\r\n" ends twice
                end = i + 4 - base  # > start: the carry is shorter than CRLFCRLF
            self._parse(data[start:end])
            detach = self._detach
            if detach:
                self._detach = 0
                self._state = _IDLE
                if detach == _TUNNEL:
                    self.upgraded = self._slow = True
                    self.upgrade_tail = data[end:]
                    return
                if self._closed:
                    return
                self._parser = httptools.HttpResponseParser(self)  # llhttp awaits a body
                if not self._special:
                    if end < size:
                        self._parse(data[end:])
                    return
            elif self._slow:  # upgraded (101) or closed
                if self.upgraded:
                    self.upgrade_tail += data[end:]
                return
            start = end

    def _pop_method(self) -> bytes:
        try:
            method = self._methods.popleft()
        except IndexError:
            raise self._fail("response without a request") from None
        if method in _SPECIAL_METHODS:
            self._special -= 1
        return method

    # httptools callbacks (response side).

    def on_message_begin(self) -> None:
        self._state = _IN_HEAD
        self._conn_seen = False
        self._reason = b""
        self._start_len = self._feed_len
        self._span = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        parser = self._parser
        headers = self._headers
        self._headers = []
        self._state = _IN_BODY
        version = self._version()
        status: int = parser.get_status_code()
        if not 100 <= status <= 599:
            raise self._fail(f"invalid status code {status}")  # RFC 9110 §15
        reason = self._reason
        if reason not in _KNOWN_REASONS and reason.translate(None, _REASON_CHARS):
            raise self._fail(f"invalid reason phrase: {reason!r}")
        if len(headers) > self._max_headers or self._start_len + self._span > self._max_header_bytes:
            self._check_head(headers, len(reason) + 15)
        chunked, length, keep_alive, _, _, _, extras, odd = _scan(headers, version is _HTTP_10, 502)
        if odd:
            headers = self._hop_response(headers)
        events = self._events
        if status < 200 and status != 101:
            # RFC 9110 §15.2: interim, no content; the request is still unanswered.
            if chunked or length:
                raise self._fail(f"{status} response with content")
            self._interim = True
            events.append(ResponseHead(status, reason, version, headers, True, False, None))
            return
        method = self._pop_method()
        if status == 101:
            if not parser.should_upgrade():
                # RFC 9110 §7.8: 101 names the protocol in Upgrade (hop-by-hop).
                raise self._fail("101 response without Connection: upgrade and Upgrade")
            self._keep_alive = False  # the connection leaves HTTP/1.1
            events.append(ResponseHead(status, reason, version, headers, False, False, None, True))
            return
        if method == _HEAD:
            # RFC 9110 §9.3.2: no content, whatever the framing fields say.
            events.append(ResponseHead(status, reason, version, headers, keep_alive, chunked, length))
            self._keep_alive = keep_alive
            self._end_message()
            self._detach = _NO_BODY
            raise _Detach
        if method == _CONNECT and 200 <= status < 300:
            # RFC 9112 §6.3 item 2: a tunnel from the empty line on; framing
            # fields in this response are ignored.
            events.append(ResponseHead(status, reason, version, headers, False, False, None, True))
            events.append(_EOM)
            self._detach = _TUNNEL
            raise _Detach
        if not chunked and length is None and status != 204 and status != 304:
            keep_alive = False  # the body runs to the close
            self._state = _UNTIL_EOF
        self._keep_alive = keep_alive
        events.append(ResponseHead(status, reason, version, headers, keep_alive, chunked, length, False, extras is None))

    def _hop_response(self, headers: Headers) -> Headers:
        """The second pass over a head `_scan` marked odd: remove the fields its
        Connection header nominates (RFC 9110 §7.6.1: a proxy removes them before
        forwarding, whatever the downstream protocol; its trailers lose them in
        `_end_message`) and HTTP2-Settings. The
        proxy's own hop-by-hop fields (Connection, Upgrade, ...) stay for the wire to
        drop or rewrite. A nominated Content-Length is refused (502): the body it frames
        must be framed again downstream, so it cannot be a hop's private field."""
        nominated = _nominated(headers)
        if b"content-length" in nominated:
            raise self._fail("Connection header nominates Content-Length, a field for every recipient (RFC 9110 §7.6.1)")
        if nominated:
            self._nominated = (set(nominated), self._headers)  # this message's trailers lose them too
        nominated.add(_HTTP2_SETTINGS)
        return [h for h in headers if h[0] not in nominated]

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._state = _IDLE
            return
        self._end_message()


# Encoders. Header names must be tokens (the parser guarantees it for forwarded
# fields; the proxy's own are constants); CR, LF and NUL anywhere are refused.

_STATUS_LINES: Final = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("latin-1")) for s in HTTPStatus}
_REASONS: Final = {s.value: s.phrase.encode("latin-1") for s in HTTPStatus}
LAST_CHUNK: Final = b"0\r\n\r\n"
_LAST_CHUNK_LINE: Final = b"0\r\n"
_REQUEST_LINE_END: Final = b" HTTP/1.1\r\n"


_CR_LF_NUL: Final = b"\r\n\x00"
_COLON_SP: Final = b": "


def _encode(first: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    # One join for the whole head, its pieces appended as they are: no string per field
    # (a join per field, then one for the head, costs a third more; a %-format per field
    # more still: bench/micro/codec_h1.py). Compiled, each (name, value) is unpacked once
    # with a type check; typed `Any`, `h[0]` and `h[1]` were generic subscripts.
    parts = [first]
    for h in headers:
        parts.append(h[0])
        parts.append(_COLON_SP)
        parts.append(h[1])
        parts.append(_CRLF)
    lines = (len(parts) - 1) // 4 + 2  # the start line, the fields, the empty line
    parts.append(_CRLF)
    out = b"".join(parts)
    # One C pass instead of a test per field: the head holds exactly one CR and one LF
    # per line (the separators written here) and no NUL, so deleting every CR, LF and
    # NUL removes exactly 2 bytes per line unless a field or the start line held one.
    # Such a byte would let a value end the head early on the next hop (response
    # splitting / smuggling). (Half the cost of counting CR and LF and then looking for
    # NUL: three passes.)
    if len(out) - len(out.translate(None, _CR_LF_NUL)) != 2 * lines:
        raise LocalProtocolError("CR, LF or NUL in a header field or start line")
    return out


def encode_request_head(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """`METHOD target HTTP/1.1`, the fields, and the empty line."""
    return _encode(method + b" " + target + _REQUEST_LINE_END, headers)


def encode_response_head(status: int, reason: bytes | None, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """`HTTP/1.1 status reason`, the fields, and the empty line. `reason` None uses
    the registered phrase; the common lines are built at import."""
    if reason is None or reason == _REASONS.get(status):
        line = _STATUS_LINES.get(status)
        if line is None:
            if not 100 <= status <= 599:
                raise LocalProtocolError(f"invalid status code {status}")
            line = b"HTTP/1.1 %d \r\n" % status
    else:
        if not 100 <= status <= 599:
            raise LocalProtocolError(f"invalid status code {status}")
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    return _encode(line, headers)


def encode_chunk(data: bytes) -> bytes:
    """One chunk. Empty data gives b"": a zero-size chunk would end the body."""
    if not data:
        return b""
    return b"".join((b"%x\r\n" % len(data), data, _CRLF))


def encode_trailers(trailers: Iterable[tuple[bytes, bytes]] | None) -> bytes:
    """The last chunk with a trailer section (LAST_CHUNK when there is none)."""
    if not trailers:
        return LAST_CHUNK
    return _encode(_LAST_CHUNK_LINE, trailers)
