"""Real grpcio servers and clients for the proxy tests, without generated code.

Services are registered with grpcio's generic handlers and raw-bytes (de)serializers,
so no protoc or grpcio-tools is needed: a message is whatever bytes the test sends.
Servers run on grpcio's own threads; clients are synchronous, so async tests call
them through `loop.run_in_executor` and the proxy's loop stays free.

`Greeter` (`hello.Greeter`):
  SayHello        unary: b"<name>:" + request; request b"status:<code>:<details>" aborts
                  with that status, `grpc-status-details-bin` in the trailers; echoes
                  request metadata `x-echo` in initial metadata and `x-trailer` in trailers
  Headers         unary: the request metadata it saw, as `name=value` lines
  Count           server streaming: request b"<n>:<size>" -> n messages of size bytes
  Sum             client streaming: total bytes received, as ASCII
  Echo            bidi: each message back, prefixed by the server name
  Big             unary: request b"<size>" -> one message of `size` bytes
  Hang            unary: waits until the call is cancelled (or 30 s); records it
  Flaky           unary: the first `flaky` calls send their initial metadata, then fail
                  UNAVAILABLE (HEADERS then trailers: not trailers-only); later calls answer
  Drip            server streaming: request b"<n>:<gap_ms>" -> n messages, `gap_ms` apart
                  (a stream that outlives a router timeout); the elapsed seconds last
`AdService` (`hipstershop.AdService/GetAds`): answers the server's name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

_ident = lambda b: b  # noqa: E731  # raw bytes in and out

DETAILS_BIN = b"\x08\x05\x12\x04gone\xff\x00"  # arbitrary binary status details


class Greeter:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cancelled = threading.Event()
        self.hang_started = threading.Event()
        self.seen_metadata: list[dict[str, Any]] = []
        self.seen_timeouts: list[float | None] = []
        self.peers: list[str] = []  # "ipv4:127.0.0.1:<port>": one per upstream connection
        self.flaky = 0  # Flaky calls still to fail
        self.flaky_calls = 0

    def _record(self, context: grpc.ServicerContext) -> dict[str, Any]:
        md = dict(context.invocation_metadata())
        self.seen_metadata.append(md)
        self.seen_timeouts.append(context.time_remaining())
        self.peers.append(context.peer())
        return md

    def say_hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        md = self._record(context)
        if "x-echo" in md:
            context.send_initial_metadata((("x-echo", md["x-echo"]),))
        if "x-trailer" in md:
            context.set_trailing_metadata((("x-trailer", md["x-trailer"]),))
        if request.startswith(b"status:"):
            _, code, details = request.split(b":", 2)
            status = next(s for s in grpc.StatusCode if s.value[0] == int(code))
            context.set_trailing_metadata((("grpc-status-details-bin", DETAILS_BIN),))
            context.abort(status, details.decode())
        return self.name.encode() + b":" + request

    def headers(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        md = self._record(context)
        return "\n".join(f"{k}={v}" for k, v in sorted(md.items()) if isinstance(v, str)).encode()

    def count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        n, size = (int(x) for x in request.split(b":"))
        for i in range(n):
            yield (b"%d:" % i).ljust(size, b"x")

    def sum(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._record(context)
        total = 0
        for m in requests:
            total += len(m)
        return b"%d" % total

    def echo(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        for m in requests:
            yield self.name.encode() + b":" + m

    def big(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        return b"b" * int(request)

    def flaky_call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        self.flaky_calls += 1
        if self.flaky > 0:
            self.flaky -= 1
            context.send_initial_metadata((("x-flaky", "yes"),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return self.name.encode() + b":" + request

    def drip(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        n, gap_ms = (int(x) for x in request.split(b":"))
        t0 = time.monotonic()
        stop = threading.Event()
        for i in range(n):
            yield b"%d" % i
            if stop.wait(gap_ms / 1000):  # the backend's own pace: the scenario, not a test wait
                return
        yield b"%.3f" % (time.monotonic() - t0)

    def hang(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        if not context.add_callback(self.cancelled.set):
            self.cancelled.set()  # already terminated (cancelled before this thread ran)
        self.hang_started.set()
        deadline = time.monotonic() + 30
        while context.is_active() and time.monotonic() < deadline:
            self.cancelled.wait(0.05)
        return b"late"

    def handler(self) -> grpc.GenericRpcHandler:
        u = grpc.unary_unary_rpc_method_handler
        kw: dict[str, Any] = {"request_deserializer": _ident, "response_serializer": _ident}
        return grpc.method_handlers_generic_handler(
            "hello.Greeter",
            {
                "SayHello": u(self.say_hello, **kw),
                "Headers": u(self.headers, **kw),
                "Count": grpc.unary_stream_rpc_method_handler(self.count, **kw),
                "Sum": grpc.stream_unary_rpc_method_handler(self.sum, **kw),
                "Echo": grpc.stream_stream_rpc_method_handler(self.echo, **kw),
                "Big": u(self.big, **kw),
                "Hang": u(self.hang, **kw),
                "Drip": grpc.unary_stream_rpc_method_handler(self.drip, **kw),
                "Flaky": u(self.flaky_call, **kw),
            },
        )


class AdService:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def get_ads(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        return self.name.encode()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "hipstershop.AdService",
            {"GetAds": grpc.unary_unary_rpc_method_handler(
                self.get_ads, request_deserializer=_ident, response_serializer=_ident)},
        )


#: 16 MiB both ways: the tests send 4 MB+ messages (grpcio's default cap is 4 MiB).
MESSAGE_LIMIT = 16 * 1024 * 1024
_OPTIONS = [
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
]


class GrpcServer:
    """A grpcio server on 127.0.0.1 with the given services."""

    def __init__(self, *services: Any, tls: tuple[bytes, bytes] | None = None) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=_OPTIONS)
        for s in services:
            self.server.add_generic_rpc_handlers((s.handler(),))
        if tls is not None:
            creds = grpc.ssl_server_credentials([(tls[1], tls[0])])
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        else:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


def channel(port: int, *, root_cert: bytes | None = None, authority: str | None = None) -> grpc.Channel:
    options: list[tuple[str, Any]] = [*_OPTIONS, ("grpc.enable_http_proxy", 0)]
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    if root_cert is not None:
        options.append(("grpc.ssl_target_name_override", "localhost"))
        return grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_cert), options=options)
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=options)


def unary(ch: grpc.Channel, method: str) -> Any:
    return ch.unary_unary(method, request_serializer=_ident, response_deserializer=_ident)


def unary_stream(ch: grpc.Channel, method: str) -> Any:
    return ch.unary_stream(method, request_serializer=_ident, response_deserializer=_ident)


def stream_unary(ch: grpc.Channel, method: str) -> Any:
    return ch.stream_unary(method, request_serializer=_ident, response_deserializer=_ident)


def stream_stream(ch: grpc.Channel, method: str) -> Any:
    return ch.stream_stream(method, request_serializer=_ident, response_deserializer=_ident)


# -- raw HTTP/2 peers (on the h2 library; test peers, not the code under test) -----------------

import asyncio  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.errors  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import h2.settings  # noqa: E402


class H2Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.trailers: list[tuple[bytes, bytes]] = []
        self.reset: int | None = None
        self.done = asyncio.Event()

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


class H2Client:
    """An h2c (prior knowledge) or TLS client that sends exactly what a test asks,
    including malformed header sections (its own validation is off)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, validate: bool) -> None:
        cfg = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate, validate_inbound_headers=validate,
        )
        self.conn = h2.connection.H2Connection(cfg)
        self.reader, self.writer = reader, writer
        self.responses: dict[int, H2Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.settings_seen = asyncio.Event()
        self.remote_max_streams = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int, *, ssl: Any = None, validate: bool = False) -> H2Client:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ssl, server_hostname="localhost" if ssl else None)
        c = cls(r, w, validate)
        c.conn.initiate_connection()
        c.flush()
        c._task = asyncio.ensure_future(c._read())
        await c.settings_seen.wait()
        return c

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for ev in self.conn.receive_data(data):
                    self._event(ev)
                self.flush()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed.set()
            for r in self.responses.values():
                r.done.set()

    def _event(self, ev: Any) -> None:
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self.remote_max_streams = self.conn.remote_settings.max_concurrent_streams
            self.settings_seen.set()
        elif isinstance(ev, h2.events.ResponseReceived):
            r = self.responses[ev.stream_id]
            r.headers = [(bytes(n), bytes(v)) for n, v in ev.headers if n[:1] != b":"]
            r.status = int(dict(ev.headers)[b":status"])
        elif isinstance(ev, h2.events.DataReceived):
            self.responses[ev.stream_id].body += ev.data
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            self.responses[ev.stream_id].trailers = [(bytes(n), bytes(v)) for n, v in ev.headers]
        elif isinstance(ev, h2.events.StreamEnded):
            self.responses[ev.stream_id].done.set()
        elif isinstance(ev, h2.events.StreamReset):
            r = self.responses.get(ev.stream_id)
            if r is not None:
                r.reset = int(ev.error_code)
                r.done.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
            for r in self.responses.values():
                r.done.set()

    def start(self, headers: list[tuple[bytes, bytes]], body: bytes | None = None, *, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.responses[sid] = H2Response()
        self.conn.send_headers(sid, headers, end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    async def request(self, method: bytes = b"GET", path: bytes = b"/", authority: bytes = b"web",
                      headers: list[tuple[bytes, bytes]] | None = None, body: bytes | None = None) -> H2Response:
        fields = [(b":method", method), (b":scheme", b"http"), (b":authority", authority), (b":path", path)]
        sid = self.start(fields + list(headers or []), body)
        r = self.responses[sid]
        await r.done.wait()
        return r

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
        if self._task is not None:
            await self._task


class H2Backend(asyncio.Protocol):
    """An h2c backend: answers `{name} {method} {path}` with the request fields as JSON
    in `x-fields`; `x-respond: reset` resets the stream (CANCEL), `trailers` adds
    trailers, `echo` returns the body, `hold` never answers (until cancelled)."""

    def __init__(self, owner: H2BackendServer) -> None:
        self.owner = owner
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: Any = None
        self.bodies: dict[int, bytes] = {}
        self.heads: dict[int, list[tuple[bytes, bytes]]] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.owner.connections += 1
        self.conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.owner.max_streams})
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.heads[ev.stream_id] = [(bytes(n), bytes(v)) for n, v in ev.headers]
                self.bodies[ev.stream_id] = b""
            elif isinstance(ev, h2.events.DataReceived):
                self.bodies[ev.stream_id] += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self._answer(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.owner.resets.append(int(ev.error_code))
                self.owner.reset_seen.set()
        self.transport.write(self.conn.data_to_send())

    def _answer(self, sid: int) -> None:
        head = self.heads[sid]
        fields = dict(head)
        self.owner.seen.append((head, self.bodies[sid]))
        mode = fields.get(b"x-respond", b"")
        if mode == b"reset":
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            return
        if mode == b"hold":
            return
        if mode == b"echo":
            body = self.bodies[sid]
        else:
            body = b"%s %s %s" % (self.owner.name.encode(), fields[b":method"], fields[b":path"])
        hdrs = [(b":status", b"200"), (b"x-backend", self.owner.name.encode()),
                (b"x-fields", json.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in head]).encode())]
        if mode != b"trailers":
            hdrs.append((b"content-length", b"%d" % len(body)))
        self.conn.send_headers(sid, hdrs)
        self.conn.send_data(sid, body, end_stream=mode != b"trailers")
        if mode == b"trailers":
            self.conn.send_headers(sid, [(b"x-trailer", b"yes")], end_stream=True)


class H2BackendServer:
    def __init__(self, name: str, max_streams: int = 100) -> None:
        self.name = name
        self.max_streams = max_streams
        self.seen: list[tuple[list[tuple[bytes, bytes]], bytes]] = []
        self.resets: list[int] = []
        self.reset_seen = asyncio.Event()
        self.connections = 0
        self.port = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> H2BackendServer:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: H2Backend(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def make_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made with the openssl CLI."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def h2_router_yaml(dtab: str, *, upstream: str = "h2", identifier: str | None = None, extra: str = "",
                   server_extra: str = "", protocol: str = "h2") -> str:
    ident = identifier if identifier is not None else "    kind: io.l5d.header.path\n    segments: 1\n"
    return (
        "routers:\n"
        f"- protocol: {protocol}\n  label: grpc\n"
        f"  identifier:\n{ident}"
        f"  dtab: {json.dumps(dtab)}\n"
        f"  client:\n    protocol: {upstream}\n{extra}"
        f"  servers:\n  - ip: 127.0.0.1\n    port: 0\n{server_extra}"
    )
