"""Micro-benchmark: the Python cost of one proxied HTTP/2 request, without syscalls.

A `ServerH2` and a connected `UpstreamH2` (or a pooled `UpstreamH1`, `--h1`) are driven
with fake transports and a fake loop: a client's frames in (requests opened `--streams`
at a time, as `h2load -m` does), the upstream's response frames in, everything the proxy
writes counted. The client's and the backend's frames are made beforehand with `h2`
itself (a client-side and a server-side `H2Connection`), outside the timed loop, so
only the proxy's work is measured: framing, HPACK, routing and header rewriting.

    python -m bench.micro.wire_h2 [--streams N] [--h1] [--grpc] [--profile] [--check]
    python -m bench.micro.wire_h2 --iterations N [--setup-only]   # no timing (callgrind)

The repeatable figure on a shared machine is the instruction count. Making the frames
costs more than the proxy's work and grows with N, so subtract a run that only makes
them: `valgrind --tool=callgrind --callgrind-out-file=/tmp/x python -m
bench.micro.wire_h2 --iterations 2000`, minus the same with `--setup-only` added,
divided by 2000.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from collections import deque
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.settings import SettingCodes

from config import load_text
from dtab import Dtab
from proxy.runtime import Listener
from proxy.upstream.endpoint import Endpoint
from proxy.wire.h2 import ServerH2
from proxy.wire.upstream_h1 import UpstreamH1
from proxy.wire.upstream_h2 import UpstreamH2

AUTHORITY = b"127.0.0.1:4140"
# What h2load sends (plus a request id, as most real clients carry one per request).
REQUEST = [
    (b":method", b"GET"), (b":path", b"/api/v1/items?id=42"), (b":scheme", b"http"),
    (b":authority", AUTHORITY), (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]
GRPC_REQUEST = [
    (b":method", b"POST"), (b":path", b"/helloworld.Greeter/SayHello"), (b":scheme", b"http"),
    (b":authority", AUTHORITY), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
    (b"grpc-timeout", b"5S"), (b"user-agent", b"grpc-python/1.60"),
]
GRPC_MESSAGE = b"\x00\x00\x00\x00\x07\n\x05world"
RESPONSE = [
    (b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Sun, 22 Nov 2026 20:38:23 GMT"),
    (b"content-type", b"text/plain"), (b"content-length", b"12"),
]
RESPONSE_BODY = b"hello world\n"
GRPC_RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
GRPC_TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
H1_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 20:38:23 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n"
)
BIG_WINDOW = (1 << 31) - 1


class FakeTransport:
    __slots__ = ("written", "closed", "peer", "chunks", "keep")

    def __init__(self, peer: Any = ("127.0.0.1", 40000), keep: bool = False) -> None:
        self.written = 0
        self.closed = False
        self.peer = peer
        self.keep = keep
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.keep:
            self.chunks.append(data)

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.write(p)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, p: Any) -> None:
        pass


class _Timer:
    __slots__ = ()

    def cancel(self) -> None:
        pass


_TIMER = _Timer()


class FakeLoop:
    """`call_soon` queues; `run_ready` runs what is queued (one loop iteration's
    callbacks). Timers never fire: the benchmark finishes every request first."""

    __slots__ = ("ready",)

    def __init__(self) -> None:
        self.ready: deque[tuple[Any, tuple[Any, ...]]] = deque()

    def time(self) -> float:
        return 0.0

    def call_soon(self, cb: Any, *args: Any) -> Any:
        self.ready.append((cb, args))
        return _TIMER

    def call_later(self, delay: float, cb: Any, *args: Any) -> Any:
        return _TIMER

    def call_at(self, when: float, cb: Any, *args: Any) -> Any:
        return _TIMER

    def run_ready(self) -> None:
        ready = self.ready
        for _ in range(len(ready)):
            cb, args = ready.popleft()
            cb(*args)


def _client_conn() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    # As h2load: stream and connection windows of 2^31-1, so the proxy never queues.
    c.local_settings = h2.settings.Settings(
        client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: BIG_WINDOW, SettingCodes.ENABLE_PUSH: 0}
    )
    c.initiate_connection()
    c.increment_flow_control_window(BIG_WINDOW - 65535)
    return c


def _backend_conn() -> h2.connection.H2Connection:
    s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    s.local_settings = h2.settings.Settings(
        client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: 1000}
    )
    s.initiate_connection()
    return s


_SHADOW_REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]


class Scenario:
    """Pre-made frames for `n` requests in batches of `streams`, and the proxy under test."""

    def __init__(self, n: int, streams: int, *, h1: bool = False, grpc: bool = False, keep: bool = False) -> None:
        self.loop = loop = FakeLoop()
        yaml = (
            "routers:\n- protocol: h2\n  label: bench\n  dtab: '/svc => /$/inet/127.0.0.1/8080'\n"
            f"  client:\n    protocol: {'http' if h1 else 'h2'}\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        )
        rc = load_text(yaml).routers[0]
        from proxy.runtime import Runtime

        rt = Runtime.bare(telemetry=os.environ.get("DTABPROXY_TELEMETRY") != "off")
        router = Runtime._build_router(rt, rc)
        lst = Listener(router, rc, rc.servers[0], loop)  # type: ignore[arg-type]
        self.server = server = ServerH2(lst)
        self.down = FakeTransport(keep=True)
        server.connection_made(self.down)

        client = _client_conn()
        client.receive_data(self.down.take())
        hello = client.data_to_send()

        route = router.route(router.identifier.identify(_View()).path, Dtab.EMPTY, b"")
        ep: Endpoint = route.pick()[0].pick()  # type: ignore[index,assignment]
        self.up_transport = FakeTransport(("127.0.0.1", 8080), keep=True)
        backend = _backend_conn()
        if h1:
            # One pooled connection per concurrent stream, each answering its one request.
            self.ups = []
            for _ in range(streams):
                up1 = UpstreamH1(ep, loop)  # type: ignore[arg-type]
                up1.connection_made(self.up_transport)
                ep.give_back(up1)
                self.ups.append(up1)
            self.up: Any = None
        else:
            up2 = UpstreamH2(ep, loop, b"http")  # type: ignore[arg-type]
            ep.idle.append(up2)
            up2.connection_made(self.up_transport)
            backend.receive_data(self.up_transport.take())  # the proxy's preface and SETTINGS
            up2.data_received(backend.data_to_send())  # backend SETTINGS: streams may start
            loop.run_ready()
            self.up = up2
        server.data_received(hello)
        loop.run_ready()
        self.up_transport.take()
        self.down.take()
        self.up_transport.keep = self.down.keep = keep
        self.client = client

        # The backend's view of the proxy's requests: stream ids 1, 3, 5... in order, as
        # UpstreamH2 opens them. A shadow client makes the frames the backend parses.
        shadow = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        shadow.initiate_connection()
        shadow.data_to_send()
        self.requests: list[bytes] = []
        self.responses: list[Any] = []
        req_fields = GRPC_REQUEST if grpc else REQUEST
        done = 0
        while done < n:
            k = min(streams, n - done)
            for _ in range(k):
                sid = client.get_next_available_stream_id()
                client.send_headers(sid, req_fields, end_stream=not grpc)
                if grpc:
                    client.send_data(sid, GRPC_MESSAGE, end_stream=True)
            self.requests.append(client.data_to_send())
            if h1:
                self.responses.append(k)
            else:
                for _ in range(k):
                    bsid = shadow.get_next_available_stream_id()
                    shadow.send_headers(bsid, _SHADOW_REQUEST,
                                        end_stream=True)
                    backend.receive_data(shadow.data_to_send())
                    if grpc:
                        backend.send_headers(bsid, GRPC_RESPONSE)
                        backend.send_data(bsid, GRPC_MESSAGE)
                        backend.send_headers(bsid, GRPC_TRAILERS, end_stream=True)
                    else:
                        backend.send_headers(bsid, RESPONSE)
                        backend.send_data(bsid, RESPONSE_BODY, end_stream=True)
                # The proxy's WINDOW_UPDATEs are not fed back: open the backend's windows.
                backend.outbound_flow_control_window = BIG_WINDOW
                self.responses.append(backend.data_to_send())
            done += k
            if not keep:  # neither hears the answers: forget the streams, or h2 counts them open
                client.streams.clear()
                shadow.streams.clear()

    def run(self) -> None:
        server_received = self.server.data_received
        run_ready = self.loop.run_ready
        if self.up is None:  # HTTP/1.1: one read per response, on each busy connection
            ups = self.ups
            for req, k in zip(self.requests, self.responses, strict=True):
                server_received(req)
                run_ready()
                for up in ups[:k]:
                    up.data_received(H1_RESPONSE)
                    run_ready()
            return
        up_received = self.up.data_received
        for req, resp in zip(self.requests, self.responses, strict=True):
            server_received(req)
            run_ready()
            up_received(resp)
            run_ready()


class _View:
    method, target, version = b"GET", b"/", b"2"

    @staticmethod
    def headers(name: bytes) -> bytes | None:
        return AUTHORITY if name in (b":authority", b"host") else None


def check(streams: int, h1: bool, grpc: bool) -> None:
    """Every request gets its response through the proxy (the client `h2` agrees)."""
    n = 3 * streams
    sc = Scenario(n, streams, h1=h1, grpc=grpc, keep=True)
    sc.run()
    events = sc.client.receive_data(sc.down.take())
    ended = [e for e in events if isinstance(e, h2.events.StreamEnded)]
    heads = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert len(ended) == n and len(heads) == n, events[:5]
    assert all(dict(e.headers)[b":status"] == b"200" for e in heads), heads[0].headers
    assert body == (GRPC_MESSAGE if grpc else RESPONSE_BODY) * n, body[:80]
    if grpc:
        trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
        assert len(trailers) == n and (b"grpc-status", b"0") in trailers[0].headers
    assert not sc.server._streams


def timed(n: int, streams: int, h1: bool, grpc: bool) -> float:
    sc = Scenario(n, streams, h1=h1, grpc=grpc)
    t0 = time.perf_counter()
    sc.run()
    dt = time.perf_counter() - t0
    assert sc.down.written > 0 and sc.up_transport.written > 0
    return dt / n * 1e6


def _arg(argv: list[str], name: str, default: int) -> int:
    return int(argv[argv.index(name) + 1]) if name in argv else default


def main(argv: list[str]) -> None:
    streams = _arg(argv, "--streams", 20)
    h1, grpc = "--h1" in argv, "--grpc" in argv
    if "--iterations" in argv:  # instruction counting: setup, then N requests, no timing
        sc = Scenario(_arg(argv, "--iterations", 0), streams, h1=h1, grpc=grpc)
        if "--setup-only" not in argv:
            sc.run()
        return
    if "--check" in argv:
        check(streams, h1, grpc)
        print("ok")
        return
    if "--profile" in argv:
        sc = Scenario(50_000, streams, h1=h1, grpc=grpc)
        prof = cProfile.Profile()
        prof.enable()
        sc.run()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    quick = bool(os.environ.get("BENCH_MICRO_QUICK"))
    n, repeats = (2_000, 2) if quick else (10_000, 5)
    cases = [(20, False, False), (1, False, False), (20, True, False), (20, False, True)]
    for s, c_h1, c_grpc in cases:
        check(s, c_h1, c_grpc)
        best = min(timed(n, s, c_h1, c_grpc) for _ in range(repeats))
        label = f"{'gRPC unary' if c_grpc else 'GET'} -> {'h1' if c_h1 else 'h2'}, {s} streams/read"
        print(f"wire_h2 {label:32s} {best:6.2f} us/request (Python only, no syscalls)")


if __name__ == "__main__":
    main(sys.argv[1:])
