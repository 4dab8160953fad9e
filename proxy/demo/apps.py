"""Demo backends for the hello/world walkthrough: `hello` and `world` (v1 and v2).

Each runs as its own process:

    python -m proxy.demo.apps world --port 7778 --text world
    python -m proxy.demo.apps world --port 7779 --text earth
    python -m proxy.demo.apps hello --port 7777 --proxy 127.0.0.1:4140

`world` answers `world (<ip>)`. `hello` calls `world` *through the proxy* (`Host: world`),
forwarding every `l5d-ctx-*` header it received, then answers
`Hello (<ip>) <world's body>!!`. Propagating the context headers is the application's
half of Linkerd's contract: it is how a per-request dtab override given to the first hop
(`l5d-dtab`, turned into `l5d-ctx-dtab` by the proxy) also steers the second hop.
`<ip>` is `$POD_IP` when set (Kubernetes), else the listening address, else (when
listening on a wildcard) the local address of the connection.

For tests and for curious users, `world` reports what context reached it: response
header `x-seen-l5d-ctx` carries the `l5d-ctx-dtab` value(s) it received and `x-seen-l5d`
the names of every `l5d-*` header it received; `hello` copies both onto its own answer.

Readiness: once listening, a backend prints `ready <port>` on stdout (the real port, so
`--port 0` works) and optionally writes the port to `--ready-file`. If it cannot listen,
it prints `error <message naming the port>` and exits 2. SIGTERM or SIGINT drains: stop
accepting, close idle keep-alive connections, finish requests in flight, exit 0.

This module owns a small HTTP/1.1 server and client on asyncio streams. They are demo
code, not the hot path: the proxy never imports this module, and this module imports
nothing from the proxy and no aiohttp, so a backend starts quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence

log = logging.getLogger(__name__)

# Limits. These apps only ever see tiny requests; the bounds exist so that a stray
# client can't make them buffer without end. 64 KiB of head is above every common
# server default (nginx and Node use 8-16 KiB) so real clients never hit it.
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
IDLE_TIMEOUT_S = 60.0  # keep-alive connections idle longer than this are closed
UPSTREAM_TIMEOUT_S = 10.0  # hello -> proxy -> world, whole exchange
DRAIN_GRACE_S = 5.0  # requests still running this long after SIGTERM are cut
MAX_IDLE_CLIENT_CONNS = 16  # hello's keep-alive pool towards the proxy
LINGER_S = 2.0  # lingering close after an error answer: how long, and
LINGER_MAX_BYTES = 1024 * 1024  # how much input to swallow, before closing anyway

CRLF = b"\r\n"
HEAD_END = b"\r\n\r\n"
CTX_PREFIX = b"l5d-ctx-"
L5D_PREFIX = b"l5d-"
CTX_DTAB = b"l5d-ctx-dtab"
SEEN_CTX = b"x-seen-l5d-ctx"
SEEN_L5D = b"x-seen-l5d"
TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")
HTTP11 = b"HTTP/1.1"
HTTP10 = b"HTTP/1.0"
_HEX = b"0123456789abcdefABCDEF"
_DIGITS = b"0123456789"

_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    505: b"HTTP Version Not Supported",
}


class HttpError(Exception):
    """A message this module can't accept; `status` is what a server answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UpstreamError(Exception):
    """hello could not get an answer from world (connect, timeout, bad response)."""


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed before any response byte arrived."""


class Request:
    """One parsed request. Header names are lower-cased; values are raw bytes."""

    __slots__ = ("body", "headers", "method", "target", "version")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body


class Response:
    """What a handler returns; the server adds framing (content-length, connection)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.status = status
        self.body = body
        self.headers = [TEXT_PLAIN, *headers]


class ClientResponse:
    """A response read by `HttpClient`."""

    __slots__ = ("body", "headers", "keep_alive", "reason", "status")

    def __init__(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    def header(self, name: bytes) -> bytes | None:
        return header_value(self.headers, name)


Handler = Callable[[Request, str], Awaitable[Response]]


# ---------------------------------------------------------------------------- parsing


def header_values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """All field lines of `name` combined with ", " (RFC 9110 §5.3), or None if absent."""
    values = header_values(headers, name)
    return b", ".join(values) if values else None


def _tokens(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [t.strip().lower() for v in header_values(headers, name) for t in v.split(b",") if t.strip()]


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Split a message head (without its final blank line) into the start line and the
    header fields, names lower-cased. Raises HttpError(400) on a malformed field."""
    lines = head.split(CRLF)
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            # obs-fold: RFC 9112 §5.2 lets a server reject it; these apps never need it.
            raise HttpError(400, "obsolete line folding")
        name, sep, value = line.partition(b":")
        if not sep or not name or name.strip(b" \t") != name:
            # RFC 9112 §5.1: no whitespace between field name and colon, ever.
            raise HttpError(400, "malformed header field")
        value = value.strip(b" \t")
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise HttpError(400, "control character in header value")  # RFC 9110 §5.5
        headers.append((name.lower(), value))
    return lines[0], headers


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The next message head, or None on a clean end of stream before any byte."""
    while True:
        try:
            head = await reader.readuntil(HEAD_END)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip(CRLF):
                raise HttpError(400, "connection closed inside a message head") from None
            return None
        except asyncio.LimitOverrunError:
            raise HttpError(431, "message head too large") from None
        # RFC 9112 §2.2: ignore empty lines received before the start line.
        head = head.lstrip(CRLF)
        if head:
            return head[: -len(HEAD_END)]


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    """A chunked body (RFC 9112 §7.1); chunk extensions and trailers are read and dropped."""
    parts: list[bytes] = []
    total = 0
    try:
        while True:
            line = await reader.readuntil(CRLF)
            size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
            # int(x, 16) would also take "0x1f", "+1" and "1_0"; the grammar is HEXDIG only.
            if not size_text or size_text.strip(_HEX) or len(size_text) > 16:
                raise HttpError(400, "bad chunk size")
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise HttpError(413, "body too large")
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != CRLF:
                raise HttpError(400, "chunk not followed by CRLF")
        while await reader.readuntil(CRLF) != CRLF:  # trailer section
            pass
    except asyncio.IncompleteReadError:
        raise HttpError(400, "connection closed inside a chunked body") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "chunk line too long") from None
    return b"".join(parts)


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    values = [t.strip() for v in header_values(headers, b"content-length") for t in v.split(b",")]
    if not values:
        return None
    # RFC 9110 §8.6: a list of identical values may be treated as one; anything else is an error.
    if len(set(values)) != 1 or not values[0] or values[0].strip(_DIGITS) or len(values[0]) > 18:
        raise HttpError(400, "bad content-length")
    return int(values[0])


async def _read_body(
    reader: asyncio.StreamReader, headers: Sequence[tuple[bytes, bytes]], *, limit: int
) -> bytes | None:
    """A body framed by transfer-encoding or content-length; None when neither is present."""
    codings = _tokens(headers, b"transfer-encoding")
    length = _content_length(headers)
    if codings:
        if length is not None:
            # RFC 9112 §6.3 (3): both present is a smuggling vector; refuse rather than guess.
            raise HttpError(400, "both transfer-encoding and content-length")
        if codings != [b"chunked"]:
            raise HttpError(501, "unsupported transfer-encoding")
        return await _read_chunked(reader, limit)
    if length is None:
        return None
    if length > limit:
        raise HttpError(413, "body too large")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise HttpError(400, "connection closed inside a body") from None


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None = None
) -> Request | None:
    """The next request on a connection, or None when the client closed it cleanly.
    `writer`, when given, is used to send `100 Continue` (RFC 9110 §10.1.1)."""
    head = await _read_head(reader)
    if head is None:
        return None
    start, headers = parse_head(head)
    parts = start.split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in (HTTP11, HTTP10):
        raise HttpError(505 if version.startswith(b"HTTP/") else 400, "unsupported HTTP version")
    if version == HTTP11 and not header_values(headers, b"host"):
        raise HttpError(400, "missing host")  # RFC 9112 §3.2
    if writer is not None and version == HTTP11 and _tokens(headers, b"expect") == [b"100-continue"]:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, headers, limit=MAX_BODY_BYTES)
    return Request(method, target, version, headers, body or b"")


def wants_keep_alive(version: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """RFC 9112 §9.3: 1.1 persists unless `close`; 1.0 only with `keep-alive`."""
    tokens = _tokens(headers, b"connection")
    if b"close" in tokens:
        return False
    return version == HTTP11 or b"keep-alive" in tokens


def render_response(resp: Response, *, keep_alive: bool, version: bytes, head_only: bool) -> bytes:
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (resp.status, _REASONS.get(resp.status, b"Unknown")),
        b"content-length: %d\r\n" % len(resp.body),
    ]
    parts.extend(n + b": " + v + CRLF for n, v in resp.headers)
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    elif version == HTTP10:
        parts.append(b"connection: keep-alive\r\n")
    parts.append(CRLF)
    if not head_only:
        parts.append(resp.body)
    return b"".join(parts)


async def read_response(reader: asyncio.StreamReader, *, method: bytes) -> ClientResponse:
    """The next response on a client connection. Interim 1xx responses are skipped."""
    first = True
    while True:
        try:
            head = await _read_head(reader)
        except HttpError as exc:
            raise UpstreamError(f"bad response head: {exc}") from None
        if head is None:
            if first:
                raise _StaleConnection()
            raise UpstreamError("connection closed before the final response")
        first = False
        try:
            start, headers = parse_head(head)
        except HttpError as exc:
            raise UpstreamError(f"bad response head: {exc}") from None
        version, _, rest = start.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (HTTP11, HTTP10) or len(code) != 3 or code.strip(_DIGITS):
            raise UpstreamError(f"bad status line {start[:80]!r}")
        status = int(code)
        if status >= 200 or status == 101:
            break
    keep_alive = wants_keep_alive(version, headers)
    if method == b"HEAD" or status in (204, 304):
        return ClientResponse(status, reason, headers, b"", keep_alive)
    try:
        body = await _read_body(reader, headers, limit=MAX_BODY_BYTES)
    except HttpError as exc:
        raise UpstreamError(f"bad response body: {exc}") from None
    if body is None:
        # RFC 9112 §6.3 (8): no framing, so the body runs to the end of the connection.
        chunks: list[bytes] = []
        total = 0
        while chunk := await reader.read(65536):
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                raise UpstreamError("response body too large")
            chunks.append(chunk)
        body, keep_alive = b"".join(chunks), False
    return ClientResponse(status, reason, headers, body, keep_alive)


# ----------------------------------------------------------------------------- client


def parse_hostport(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `http://host:port/` (the `http_proxy` forms)."""
    text = text.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


class HttpClient:
    """A minimal HTTP/1.1 client for one (host, port), with a small keep-alive pool."""

    __slots__ = ("_host", "_idle", "_port", "_timeout_s")

    def __init__(self, host: str, port: int, *, timeout_s: float = UPSTREAM_TIMEOUT_S) -> None:
        self._host = host
        self._port = port
        self._timeout_s = timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(
        self,
        method: bytes,
        target: bytes,
        *,
        host: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes = b"",
    ) -> ClientResponse:
        parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, CRLF]
        parts.extend(n + b": " + v + CRLF for n, v in headers)
        if body or method in (b"POST", b"PUT", b"PATCH"):
            parts.append(b"content-length: %d\r\n" % len(body))
        parts.extend((CRLF, body))
        wire = b"".join(parts)
        # A request may be retried once on a fresh connection when a pooled one turns out
        # to have been closed by the server while idle, before any response byte: RFC 9112
        # §9.3.1 allows it for idempotent methods, and that race is inherent to keep-alive.
        retry_ok = method in (b"GET", b"HEAD", b"OPTIONS")
        while True:
            reused = bool(self._idle)
            reader, writer = self._idle.pop() if reused else await self._connect()
            try:
                async with asyncio.timeout(self._timeout_s):
                    writer.write(wire)
                    await writer.drain()
                    resp = await read_response(reader, method=method)
            except (_StaleConnection, ConnectionError) as exc:
                writer.close()
                if reused and retry_ok:
                    continue
                if isinstance(exc, _StaleConnection):
                    raise UpstreamError(f"{self._host}:{self._port} closed the connection without answering")
                raise UpstreamError(f"{self._host}:{self._port}: {exc}") from exc
            except TimeoutError:
                writer.close()
                raise UpstreamError(f"{self._host}:{self._port} did not answer within {self._timeout_s:g}s")
            except UpstreamError:
                writer.close()
                raise
            if resp.keep_alive and len(self._idle) < MAX_IDLE_CLIENT_CONNS:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return resp

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await asyncio.open_connection(self._host, self._port, limit=MAX_HEAD_BYTES)
        except TimeoutError:
            raise UpstreamError(f"connect to {self._host}:{self._port} timed out") from None
        except OSError as exc:
            raise UpstreamError(
                f"connect to {self._host}:{self._port} failed: {exc.strerror or exc}"
            ) from exc

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()


# ----------------------------------------------------------------------------- server


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Lingering close (RFC 9112 §9.6): after an error answer, stop sending and read what
    the client is still sending for a moment. Closing with unread input makes the kernel
    send a reset, which can destroy the answer before the client has read it."""
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    try:
        async with asyncio.timeout(LINGER_S):
            read = 0
            while read < LINGER_MAX_BYTES and (chunk := await reader.read(65536)):
                read += len(chunk)
    except TimeoutError:
        pass  # a client that keeps sending gets its reset after all


class _Connection:
    __slots__ = ("busy", "task", "writer")

    def __init__(self, writer: asyncio.StreamWriter, task: asyncio.Task[None] | None) -> None:
        self.writer = writer
        self.task = task
        self.busy = False


class Server:
    """An HTTP/1.1 listener that runs one handler, with keep-alive and a graceful drain."""

    __slots__ = ("_advertised_ip", "_conns", "_draining", "_handler", "_server")

    def __init__(self, handler: Handler, *, advertised_ip: str | None = None) -> None:
        self._handler = handler
        self._advertised_ip = advertised_ip
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._draining = False

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port. Raises OSError when the address is unusable."""
        self._server = await asyncio.start_server(
            self._serve_connection, host, port, limit=MAX_HEAD_BYTES, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        if self._advertised_ip is None and host not in ("", "0.0.0.0", "::"):
            self._advertised_ip = sockname[0]
        return int(sockname[1])

    async def drain(self, grace_s: float = DRAIN_GRACE_S) -> None:
        """Stop accepting; close idle connections now and busy ones after their response."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        tasks = []
        for conn in list(self._conns):
            if not conn.busy:
                conn.writer.close()  # the pending read sees end of stream and the loop ends
            if conn.task is not None:
                tasks.append(conn.task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("cut %d request(s) still running after %gs", len(pending), grace_s)
                await asyncio.wait(pending)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(writer, asyncio.current_task())
        self._conns.add(conn)
        ip = self._advertised_ip or str(writer.get_extra_info("sockname")[0])
        version = HTTP11
        try:
            while not self._draining:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT_S):
                        req = await read_request(reader, writer)
                except TimeoutError:
                    break
                if req is None:
                    break
                conn.busy = True
                version = req.version
                try:
                    resp = await self._handler(req, ip)
                except Exception:
                    log.error("handler failed for %r", req.target, exc_info=True)
                    resp = Response(500, b"internal error\n")
                keep_alive = wants_keep_alive(req.version, req.headers) and not self._draining
                writer.write(
                    render_response(
                        resp, keep_alive=keep_alive, version=req.version, head_only=req.method == b"HEAD"
                    )
                )
                await writer.drain()
                conn.busy = False
                if not keep_alive:
                    break
        except HttpError as exc:
            body = str(exc).encode() + b"\n"
            resp = Response(exc.status, body)
            try:
                writer.write(render_response(resp, keep_alive=False, version=version, head_only=False))
                await _linger(reader, writer)
            except (ConnectionError, RuntimeError):
                pass  # the peer is gone; nothing to tell it
        except ConnectionError:
            pass  # the client went away mid-exchange: nothing to answer
        finally:
            self._conns.discard(conn)
            writer.close()


# ------------------------------------------------------------------------------- apps


def world_handler(text: str) -> Handler:
    """`world (<ip>)`, echoing the context it received in `x-seen-l5d-ctx` / `x-seen-l5d`."""
    text_b = text.encode()

    async def handle(req: Request, ip: str) -> Response:
        headers = []
        dtab = header_value(req.headers, CTX_DTAB)
        if dtab is not None:
            headers.append((SEEN_CTX, dtab))
        names = [n for n, _ in req.headers if n.startswith(L5D_PREFIX)]
        if names:
            headers.append((SEEN_L5D, b", ".join(dict.fromkeys(names))))
        return Response(200, b"%s (%s)" % (text_b, ip.encode()), headers)

    return handle


def hello_handler(client: HttpClient, world_host: bytes) -> Handler:
    """`Hello (<ip>) <world's body>!!`, where world is reached through the proxy."""

    async def handle(req: Request, ip: str) -> Response:
        ip_b = ip.encode()
        # The application's contract in Linkerd: pass every l5d-ctx-* header on to the
        # calls this request causes. Nothing else (l5d-dtab in particular) is forwarded.
        ctx = [(n, v) for n, v in req.headers if n.startswith(CTX_PREFIX)]
        try:
            resp = await client.request(b"GET", b"/", host=world_host, headers=ctx)
        except UpstreamError as exc:
            log.warning("world call failed: %s", exc)
            return Response(502, b"Hello (%s) could not reach world: %s\n" % (ip_b, str(exc).encode()))
        seen = [(n, v) for n, v in resp.headers if n in (SEEN_CTX, SEEN_L5D)]
        if resp.status != 200:
            err = resp.header(b"l5d-err")
            detail = resp.body.strip()[:1024] or err or resp.reason
            return Response(502, b"Hello (%s) got %d from world: %s\n" % (ip_b, resp.status, detail), seen)
        return Response(200, b"Hello (%s) %s!!\n" % (ip_b, resp.body.strip()), seen)

    return handle


# ------------------------------------------------------------------------ entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proxy.demo.apps", description=__doc__.split("\n\n")[0])
    parser.add_argument("app", choices=("hello", "world"))
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on; 0 picks a free one")
    parser.add_argument("--text", default="world", help="world: the word to answer with (default world)")
    parser.add_argument(
        "--proxy",
        default=os.environ.get("http_proxy") or os.environ.get("HTTP_PROXY"),
        help="hello: host:port of the proxy to call world through (default $http_proxy)",
    )
    parser.add_argument("--world-host", default="world", help="hello: Host header of the world call")
    parser.add_argument("--ready-file", help="also write the bound port to this file once listening")
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="drain and exit when stdin closes (so children of a killed orchestrator don't linger)",
    )
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _listen_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use (cannot listen on {host}:{port})"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    client: HttpClient | None = None
    if args.app == "hello":
        if not args.proxy:
            print("error hello needs --proxy host:port (or $http_proxy)", flush=True)
            return 2
        try:
            proxy_host, proxy_port = parse_hostport(args.proxy)
        except ValueError as exc:
            print(f"error --proxy: {exc}", flush=True)
            return 2
        client = HttpClient(proxy_host, proxy_port)
        handler = hello_handler(client, args.world_host.encode())
    else:
        handler = world_handler(args.text)

    server = Server(handler, advertised_ip=os.environ.get("POD_IP") or None)
    try:
        port = await server.start(args.host, args.port)
    except OSError as exc:
        message = _listen_error(args.host, args.port, exc)
        log.error("%s: %s", args.app, message)
        print(f"error {message}", flush=True)
        return 2
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.ready_file)  # readers never see a half-written file
    print(f"ready {port}", flush=True)
    log.info("%s listening on %s:%d", args.app, args.host, port)

    if args.exit_on_stdin_eof:
        fd = sys.stdin.fileno()

        def on_stdin() -> None:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
                stop.set()

        loop.add_reader(fd, on_stdin)

    await stop.wait()
    log.info("%s draining", args.app)
    await server.drain()
    if client is not None:
        client.close()
    return 0


def run(args: argparse.Namespace) -> int:
    if args.loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if args.loop == "uvloop":
                raise
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(serve(args))
    return asyncio.run(serve(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=f"%(asctime)s {args.app}[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
