"""Micro-benchmark: the Python cost of one proxied HTTP/1.1 request, without syscalls.

A `ServerH1` and a pooled `UpstreamH1` are driven with fake transports: request bytes in,
the upstream's response bytes in, everything the proxy writes counted. This isolates
parsing, routing and header rewriting (the part the hot path can change) from the
kernel's loopback cost. Prints microseconds per request.

    python -m bench.micro.wire_h1 [--profile] [plain|override|traceparent|accesslog|accesslog-json ...]
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import time
from typing import Any

from config import load_text
from proxy.runtime import Listener
from proxy.upstream.endpoint import Endpoint
from proxy.wire.h1 import ServerH1
from proxy.wire.upstream_h1 import UpstreamH1

REQUEST = (
    b"GET /api/v1/items?id=42 HTTP/1.1\r\nHost: web\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
    b"Accept-Encoding: gzip\r\nX-Request-Id: 0123456789abcdef\r\nCookie: a=b; c=d\r\n\r\n"
)
OVERRIDE = b"l5d-dtab: /a=>/b;/c=>/d;/e=>/f\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n"


class FakeTransport:
    __slots__ = ("written", "closed", "peer")

    def __init__(self, peer: Any = ("127.0.0.1", 40000)) -> None:
        self.written = 0
        self.closed = False
        self.peer = peer

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.written += len(p)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


TRACEPARENT = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
#: The variants measured: (label, extra request fields, access log format or None).
VARIANTS = {
    "plain": ("plain GET", b"", None),
    "override": ("with 3-entry l5d-dtab", OVERRIDE, None),
    "traceparent": ("with a W3C traceparent", TRACEPARENT, None),
    "accesslog": ("access log on (combined)", b"", "combined"),
    "accesslog-json": ("access log on (JSON lines)", b"", "json"),
}


def setup(variant: str | bool) -> tuple[ServerH1, UpstreamH1, bytes]:
    if isinstance(variant, bool):
        variant = "override" if variant else "plain"
    _, extra, log_format = VARIANTS[variant]
    loop = asyncio.new_event_loop()
    cfg = load_text(
        "routers:\n- protocol: http\n  label: bench\n  dtab: '/svc => /$/inet/127.0.0.1/8080'\n"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    )
    rc = cfg.routers[0]
    import os

    from proxy.runtime import Runtime

    rt = Runtime.bare(telemetry=os.environ.get("DTABPROXY_TELEMETRY") != "off")
    router = Runtime._build_router(rt, rc)
    if log_format is not None:  # the access log's request-path cost plus formatting its lines
        from proxy.telemetry.accesslog import AccessLog
        from proxy.telemetry.observe import RouterObs

        router.obs = RouterObs("bench", AccessLog(os.devnull, fmt=log_format, router="bench"), [], 0)
    lst = Listener(router, rc, rc.servers[0], loop)
    server = ServerH1(lst)
    server.connection_made(FakeTransport())
    # Warm the pool with one connected upstream.
    route = router.route(router.identifier.identify(_View()).path, __import__("dtab").Dtab.EMPTY, b"")
    client = route.pick()[0]  # type: ignore[index]
    ep: Endpoint = client.pick()  # type: ignore[assignment]
    up = UpstreamH1(ep, loop)
    up.connection_made(FakeTransport(("127.0.0.1", 8080)))
    ep.give_back(up)
    req = REQUEST.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n") if extra else REQUEST
    return server, up, req


class _View:
    method, target, version = b"GET", b"/", b"1.1"

    @staticmethod
    def headers(name: bytes) -> bytes | None:
        return b"web" if name == b"host" else None


def run(n: int, variant: str) -> float:
    server, up, req = setup(variant)
    alog = server._router.obs.alog if server._router.obs is not None else None
    t0 = time.perf_counter()
    for i in range(n):
        server.data_received(req)
        up.data_received(RESPONSE)
        if alog is not None and i % 1000 == 999:  # what the background flush does, counted here
            alog.sink.take()
    dt = time.perf_counter() - t0
    assert server._transport.written > 0 and up.transport.written > 0  # type: ignore[union-attr]
    return dt / n * 1e6


def main(argv: list[str]) -> None:
    variant = next((a for a in argv if a in VARIANTS), "override" if "--override" in argv else "plain")
    if "--iterations" in argv:  # for instruction counting (perf stat / callgrind): N requests, no timing
        n = int(argv[argv.index("--iterations") + 1])
        server, up, req = setup(variant)
        alog = server._router.obs.alog if server._router.obs is not None else None
        for i in range(n):
            server.data_received(req)
            up.data_received(RESPONSE)
            if alog is not None and i % 1000 == 999:
                alog.sink.take()
        if alog is not None:
            alog.sink.take()
        return
    if "--profile" in argv:
        server, up, req = setup(variant)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(50_000):
            server.data_received(req)
            up.data_received(RESPONSE)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    names = [a for a in argv if a in VARIANTS] or list(VARIANTS)
    for name in names:
        run(5_000, name)  # warm caches
        best = min(run(20_000, name) for _ in range(5))
        print(f"wire_h1 {VARIANTS[name][0]:28s} {best:6.2f} us/request (Python only, no syscalls)")


if __name__ == "__main__":
    main(sys.argv[1:])
