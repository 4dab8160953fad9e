"""Identification: a request head -> the logical name the router binds (docs/dtab.md §11).

Owns the identifier kinds (`io.l5d.header.token`, `io.l5d.header`, `io.l5d.methodAndHost`,
`io.l5d.path`, `io.l5d.static`, `io.l5d.header.path`) and the chain that tries them in
order. Everything configurable is decided once, when a router is built; per request an
identifier reads a few header values and, on a memo hit, returns an already-built answer.

It must not do I/O, touch asyncio, or bind names: it imports `dtab` and `proxy.errors`
only. Bytes stay bytes: header values and the request target become path elements
as they are (no decoding, no case folding except the host of methodAndHost).

The request view is any object with these attributes (see `RequestHead`):

* `method`  — e.g. b"GET"
* `target`  — the request-target as sent (b"/a/b?x=y"); for HTTP/2 the `:path`
* `version` — b"1.1", b"1.0", or b"2" for HTTP/2
* `headers` — a dict of lower-case name -> first value, or a callable with the same
  meaning (returns None when absent). HTTP/2 requests carry `:authority` and `:path`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple, Protocol

from dtab import DtabSyntaxError, Path, read_path
from proxy.errors import BadRequest

log = logging.getLogger(__name__)

HeaderLookup = Callable[[bytes], "bytes | None"]

#: Entries per identifier memo. The key space is what clients send (Host values, URL
#: segments), so it must be bounded; 4096 names covers a large mesh, and clearing when
#: full costs one rebuild per name instead of LRU bookkeeping on every hit.
MEMO_SIZE = 4096  # not Final: tests lower it, and the compiled module reads it at run time

#: How much of the request-target an `Unknown destination` message quotes: the message
#: goes into `l5d-err`, which is cut at 8 KiB anyway.
_TARGET_QUOTE_MAX: Final = 1024

_DEFAULT_PREFIX: Final = Path((b"svc",))


class RequestHead:
    """The minimal request view identifiers read (the wire layer may pass its own
    object with the same attributes)."""

    __slots__ = ("headers", "method", "target", "version")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes = b"1.1",
        headers: Mapping[bytes, bytes] | HeaderLookup | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = {} if headers is None else headers


class RequestView(Protocol):
    method: bytes
    target: bytes
    version: bytes
    headers: Any  # Mapping[bytes, bytes] or HeaderLookup


class Identified(NamedTuple):
    """A logical name, and the request-target to forward when the identifier rewrote it
    (`io.l5d.path` with `consume: true`); None means forward the target unchanged."""

    path: Path
    rewritten_target: bytes | None = None


class Identifier(Protocol):
    """One identifier kind. `identify` returns `Identified`, or a `str` giving the reason
    it declines (the chain moves on), or raises `BadRequest` (the chain stops)."""

    kind: str

    def identify(self, req: RequestView, lookup: HeaderLookup) -> Identified | str: ...


# -- helpers ---------------------------------------------------------------------------


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """(path, query) of a request-target; the query keeps its `?` and is b"" when absent.

    An absolute-form target (`http://host:port/p?q`, RFC 9112 §3.2.2, sent to proxies)
    is reduced to its path, so identifiers see the same thing for both forms; an
    authority with no path means `/`."""
    q = target.find(b"?")
    if q < 0:
        path, query = target, b""
    else:
        path, query = target[:q], target[q:]
    if path[:1] != b"/" and b"://" in path:
        scheme_end = path.find(b"://")
        slash = path.find(b"/", scheme_end + 3)
        path = b"/" if slash < 0 else path[slash:]
    return path, query


def url_segments(path: bytes) -> list[bytes]:
    """The `/`-separated pieces of a URL path without the leading piece and without
    trailing empty pieces (docs/dtab.md §11): b"/a/b/" -> [b"a", b"b"]; b"/a//b" keeps the
    middle b""."""
    pieces = path.split(b"/")
    while pieces and not pieces[-1]:
        pieces.pop()
    return pieces[1:]


def _authority_fallback(name: bytes) -> bytes | None:
    # HTTP/2 carries the authority in `:authority`, HTTP/1 in `Host` (RFC 9113 §8.3.1
    # allows either on h2), so a router configured for one still identifies the other.
    if name == b"host":
        return b":authority"
    if name == b":authority":
        return b"host"
    return None


# Option readers: an option set to None counts as not given, so a config object whose
# unset fields are None can be passed through as it is.


def _header_name(options: Mapping[str, Any], key: str, default: str) -> tuple[str, bytes]:
    value = options.get(key)
    if value is None:
        value = default
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty header name, not {value!r}")
    return value, value.lower().encode("latin-1")


def _positive_int(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be an integer >= 1, not {value!r}")
    return value


def _flag(options: Mapping[str, Any], key: str) -> bool:
    value = options.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {value!r}")
    return value


def _read_header_path(value: bytes) -> Path:
    # latin-1 keeps one character per byte, so the parser's offsets point at the byte
    # that is wrong; any non-ASCII byte is a syntax error there (docs/dtab.md §2.2).
    try:
        return read_path(value.decode("latin-1"))
    except DtabSyntaxError as exc:
        raise BadRequest(str(exc)) from None


# -- identifier kinds --------------------------------------------------------------------


def _first_segments(
    memo: dict[bytes, Identified], prefix: tuple[bytes, ...], segs: list[bytes], n: int, where: str, value: bytes
) -> Identified | None:
    """The name of the first `n` segments (memoised per segments), None when there are
    fewer. An empty one (`/a//b`) is an error, not a decline: a path element is never
    empty (docs/dtab.md §2.1), so the name cannot exist; the URL is malformed."""
    if len(segs) < n:
        return None
    head = segs[:n] if len(segs) > n else segs
    key = b"/".join(head)
    found = memo.get(key)
    if found is None:
        if not all(head):
            raise BadRequest(f"empty segment in {where} {value.decode('latin-1')}")
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        found = memo[key] = Identified(Path((*prefix, *head)))
    return found


class HeaderTokenIdentifier:
    """`io.l5d.header.token`: the whole header value as one element, as sent (no case
    folding, port kept): `Host: Web.Example:8080` -> `/svc/Web.Example:8080`."""

    __slots__ = ("_absent", "_absent_http10", "_fallback", "_memo", "_name", "_prefix", "header", "kind")

    def __init__(self, prefix: Path, header: str = "Host") -> None:
        self.kind = "io.l5d.header.token"
        self.header = header
        self._name = header.lower().encode("latin-1")
        self._fallback = _authority_fallback(self._name)
        self._prefix = prefix.elems
        self._absent = f"{header} header is absent"
        # HTTP/1.0 may omit Host (RFC 9112 §3.2), so such a request is valid HTTP and
        # only this identifier cannot name it: say which, and what can.
        self._absent_http10 = (
            f"{header} header is absent: {self.kind} names requests by it, and an HTTP/1.0 request "
            "may omit Host (io.l5d.methodAndHost, io.l5d.path or io.l5d.static name it without one)"
        )
        self._memo: dict[bytes, Identified] = {}  # the answer itself: nothing to build on a hit

    def identify(self, req: RequestView, lookup: HeaderLookup) -> Identified | str:
        value = lookup(self._name)
        if not value and self._fallback is not None:
            value = lookup(self._fallback)
        if not value:
            if req.version == b"1.0" and self._name == b"host":
                return self._absent_http10
            return self._absent
        memo = self._memo
        found = memo.get(value)
        if found is None:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            found = memo[value] = Identified(Path((*self._prefix, value)))
        return found


class HeaderPathIdentifier:
    """`io.l5d.header`: the header value read as a path (`l5d-name: /web/v2` ->
    `/svc/web/v2`); a value that is not path syntax is an error (400)."""

    __slots__ = ("_absent", "_memo", "_name", "_prefix", "header", "kind")

    def __init__(self, prefix: Path, header: str = "l5d-name") -> None:
        self.kind = "io.l5d.header"
        self.header = header
        self._name = header.lower().encode("latin-1")
        self._prefix = prefix
        self._absent = f"{header} header is absent"
        self._memo: dict[bytes, Identified] = {}

    def identify(self, req: RequestView, lookup: HeaderLookup) -> Identified | str:
        value = lookup(self._name)
        if not value:
            return self._absent
        memo = self._memo
        found = memo.get(value)
        if found is None:
            found = Identified(self._prefix + _read_header_path(value))  # errors: not memoised
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[value] = found
        return found


class MethodAndHostIdentifier:
    """`io.l5d.methodAndHost`: `/svc/1.1/GET/host` (host lower-cased, port kept) or
    `/svc/1.0/GET` (no host); with `httpUriInDst` the URL path is appended, read with
    the path grammar (the root adds nothing; a trailing slash or a non-showable
    character does not parse, which fails the request)."""

    __slots__ = ("_memo", "_prefix", "http_uri_in_dst", "kind")

    def __init__(self, prefix: Path, http_uri_in_dst: bool = False) -> None:
        self.kind = "io.l5d.methodAndHost"
        self.http_uri_in_dst = http_uri_in_dst
        self._prefix = prefix.elems
        self._memo: dict[tuple[bytes, bytes, bytes, bytes], Identified] = {}

    def identify(self, req: RequestView, lookup: HeaderLookup) -> Identified | str:
        version = req.version
        if version == b"1.1":
            host = lookup(b"host")
            if not host:
                return "HTTP/1.1 request missing hostname"
        elif version == b"1.0":
            host = b""  # HTTP/1.0 names carry no host (docs/dtab.md §11)
        else:
            return f"Unknown HTTP version HTTP/{version.decode('latin-1')}"
        upath = split_target(req.target)[0] if self.http_uri_in_dst else b""
        key = (version, req.method, host, upath)
        memo = self._memo
        found = memo.get(key)
        if found is None:
            if host:
                elems = (*self._prefix, version, req.method, host.lower())
            else:
                elems = (*self._prefix, version, req.method)
            path = Path(elems)
            if upath:
                path = path + _read_header_path(upath)
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            found = memo[key] = Identified(path)
        return found


class PathIdentifier:
    """`io.l5d.path`: the first `segments` URL path segments, as raw bytes (only those
    are examined: `/a/b/!` identifies as `/svc/a/b`). With `consume` the forwarded
    target loses them: the rest joined with `/`, the original trailing slash kept,
    `/` when nothing is left, the query re-appended unchanged (docs/dtab.md §11)."""

    __slots__ = ("_memo", "_prefix", "_too_few", "consume", "kind", "segments")

    def __init__(self, prefix: Path, segments: int = 1, consume: bool = False) -> None:
        if segments < 1:
            raise ValueError(f"segments must be >= 1, not {segments}")
        self.kind = "io.l5d.path"
        self.segments = segments
        self.consume = consume
        self._prefix = prefix.elems
        self._too_few = "not enough segments in path"
        self._memo: dict[bytes, Identified] = {}

    def identify(self, req: RequestView, lookup: HeaderLookup) -> Identified | str:
        upath, query = split_target(req.target)
        segs = url_segments(upath)
        n = self.segments
        found = _first_segments(self._memo, self._prefix, segs, n, "path", upath)
        if found is None:
            return self._too_few
        if not self.consume:
            return found
        rest = segs[n:]
        if not rest:
            return Identified(found.path, b"/" + query)
        trailing = b"/" if upath[-1:] == b"/" else b""
        return Identified(found.path, b"/" + b"/".join(rest) + trailing + query)


class StaticIdentifier:
    """`io.l5d.static`: every request gets `prefix ++ path`; never declines."""

    __slots__ = ("_identified", "kind", "path")

    def __init__(self, prefix: Path, path: Path) -> None:
        self.kind = "io.l5d.static"
        self.path = path
        self._identified = Identified(prefix + path)

    def identify(self, req: RequestView, lookup: HeaderLookup) -> Identified | str:
        return self._identified


class HeaderSegmentsIdentifier:
    """`io.l5d.header.path` (HTTP/2 and gRPC): the first `segments` segments of the
    `:path` pseudo-header (or of the named header), so `/hello.Greeter/SayHello` ->
    `/svc/hello.Greeter`. On HTTP/1 `:path` is the request-target's path. Segments are
    raw bytes, as for `io.l5d.path` (Linkerd reads the whole value with the path
    grammar; taking bytes means a method name never makes the service unroutable)."""

    __slots__ = ("_is_path", "_memo", "_name", "_prefix", "_too_few", "header", "kind", "segments")

    def __init__(self, prefix: Path, segments: int = 1, header: str = ":path") -> None:
        if segments < 1:
            raise ValueError(f"segments must be >= 1, not {segments}")
        self.kind = "io.l5d.header.path"
        self.header = header
        self.segments = segments
        self._name = header.lower().encode("latin-1")
        self._is_path = self._name == b":path"
        self._prefix = prefix.elems
        self._too_few = f"Path must have at least {segments} segment(s)"
        self._memo: dict[bytes, Identified] = {}

    def identify(self, req: RequestView, lookup: HeaderLookup) -> Identified | str:
        value = lookup(self._name)
        if value is None and self._is_path:
            value = req.target
        if not value:
            return self._too_few
        segs = url_segments(split_target(value)[0])
        found = _first_segments(self._memo, self._prefix, segs, self.segments, self.header, value)
        return self._too_few if found is None else found


# -- construction from configuration -------------------------------------------------------

_OPTIONS: Final[dict[str, frozenset[str]]] = {
    "io.l5d.header.token": frozenset({"header"}),
    "io.l5d.header": frozenset({"header"}),
    "io.l5d.methodAndHost": frozenset({"httpUriInDst"}),
    "io.l5d.path": frozenset({"segments", "consume"}),
    "io.l5d.static": frozenset({"path"}),
    "io.l5d.header.path": frozenset({"segments", "header"}),
}

KINDS: Final = frozenset(_OPTIONS)


def make_identifier(
    kind: str, options: Mapping[str, Any], dst_prefix: Path = _DEFAULT_PREFIX, protocol: str = "http"
) -> Identifier:
    """One identifier from its config block (`kind` plus options, Linkerd's key names).

    Raises ValueError, naming the kind and the option, for an unknown kind, an unknown
    option or a bad value, so configuration errors surface when the router is built."""
    allowed = _OPTIONS.get(kind)
    if allowed is None:
        raise ValueError(f"unknown identifier kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    extra = set(options) - allowed - {"kind"}
    if extra:
        raise ValueError(f"{kind}: unknown option(s) {', '.join(sorted(extra))}")
    try:
        if kind == "io.l5d.header.token":
            default = ":authority" if protocol == "h2" else "Host"
            return HeaderTokenIdentifier(dst_prefix, _header_name(options, "header", default)[0])
        if kind == "io.l5d.header":
            return HeaderPathIdentifier(dst_prefix, _header_name(options, "header", "l5d-name")[0])
        if kind == "io.l5d.methodAndHost":
            return MethodAndHostIdentifier(dst_prefix, _flag(options, "httpUriInDst"))
        if kind == "io.l5d.path":
            return PathIdentifier(
                dst_prefix, _positive_int(options, "segments", 1), _flag(options, "consume")
            )
        if kind == "io.l5d.static":
            value = options.get("path")
            if isinstance(value, Path):
                return StaticIdentifier(dst_prefix, value)
            if not isinstance(value, str):
                raise ValueError(f"path is required and must be a path, not {value!r}")
            try:
                return StaticIdentifier(dst_prefix, read_path(value))
            except DtabSyntaxError as exc:
                raise ValueError(f"path: {exc}") from None
        # io.l5d.header.path
        return HeaderSegmentsIdentifier(
            dst_prefix,
            _positive_int(options, "segments", 1),
            _header_name(options, "header", ":path")[0],
        )
    except ValueError as exc:
        raise ValueError(f"{kind}: {exc}") from None


#: Linkerd's option key -> the attribute name of a config object.
_ATTRIBUTES: Final = {
    "header": "header",
    "httpUriInDst": "http_uri_in_dst",
    "segments": "segments",
    "consume": "consume",
    "path": "path",
}


def _block_options(block: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(block, Mapping):
        kind = block.get("kind")
        options = {k: v for k, v in block.items() if k != "kind"}
    else:
        kind = getattr(block, "kind", None)
        # only the fields of this kind: the others hold their defaults
        options = {k: getattr(block, _ATTRIBUTES[k], None) for k in _OPTIONS.get(str(kind), ())}
    if not isinstance(kind, str):
        raise ValueError(f"identifier needs a kind, got {block!r}")
    return kind, options


def _describe(req: RequestView) -> str:
    target = req.target
    if len(target) > _TARGET_QUOTE_MAX:
        target = target[:_TARGET_QUOTE_MAX] + b"..."
    return f'Request("{req.method.decode("latin-1")} {target.decode("latin-1")}")'


class IdentifierChain:
    """Identifiers tried in order (docs/dtab.md §11): the first that identifies wins, a decline
    passes to the next, an error stops the chain. Nothing identified, or an error, is
    `BadRequest` (400) with `Unknown destination: Request("GET /x") / ⟨reason⟩`, the
    wording of Linkerd's UnknownDst; when several declined, every reason is listed,
    `; `-separated, in chain order."""

    __slots__ = ("_single", "identifiers")

    def __init__(self, identifiers: Sequence[Identifier]) -> None:
        if not identifiers:
            raise ValueError("an identifier chain needs at least one identifier")
        self.identifiers = tuple(identifiers)
        self._single = self.identifiers[0] if len(self.identifiers) == 1 else None

    @classmethod
    def from_config(
        cls,
        config: Any,
        dst_prefix: Path = _DEFAULT_PREFIX,
        protocol: str = "http",
    ) -> IdentifierChain:
        """From a router's `identifier` value: one block or a sequence of them, or None
        (the default, `io.l5d.header.token` on Host, or `:authority` for h2). A block is
        a mapping with Linkerd's keys (`kind`, `httpUriInDst`, ...) or an object with
        `kind` and snake_case attributes (`http_uri_in_dst`, ...) such as the validated
        config's `IdentifierConfig`."""
        if config is None:
            blocks: Sequence[Any] = [{"kind": "io.l5d.header.token"}]
        elif isinstance(config, Mapping) or hasattr(config, "kind"):
            blocks = [config]
        else:
            blocks = config
        identifiers = []
        for block in blocks:
            kind, options = _block_options(block)
            identifiers.append(make_identifier(kind, options, dst_prefix, protocol))
        return cls(identifiers)

    def identify(self, req: RequestView) -> Identified:
        headers = req.headers
        lookup: HeaderLookup = headers.get if isinstance(headers, dict) else headers
        single = self._single
        if single is not None:  # the common configuration, without the loop
            try:
                result = single.identify(req, lookup)
            except BadRequest as exc:
                raise BadRequest(f"Unknown destination: {_describe(req)} / {exc}") from None
            if isinstance(result, str):
                raise BadRequest(f"Unknown destination: {_describe(req)} / {result}")
            return result
        reasons: list[str] = []
        for identifier in self.identifiers:
            try:
                result = identifier.identify(req, lookup)
            except BadRequest as exc:
                raise BadRequest(f"Unknown destination: {_describe(req)} / {exc}") from None
            if not isinstance(result, str):
                return result
            reasons.append(result)
        raise BadRequest(f"Unknown destination: {_describe(req)} / {'; '.join(reasons)}")
