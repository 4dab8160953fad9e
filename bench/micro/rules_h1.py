"""Micro-benchmark: what match rules cost per proxied HTTP/1.1 request.

The same harness as `bench.micro.wire_h1` (a `ServerH1` and a pooled upstream over
fake transports, no syscalls), with routers holding 0, 10 and 1,000 rules: rules that
name other hosts (none matching: the index skips them), the same plus one rule that
matches this request (its overlay binds it), and 1,000 rules on no host at all (a
header condition each: the worst case, every rule is a candidate). Prints
µs/request and throughput relative to the router without rules.

    python -m bench.micro.rules_h1 [--iterations N --case NAME]   (for callgrind)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from config import load_text
from proxy.runtime import Listener, Runtime
from proxy.wire.h1 import ServerH1
from proxy.wire.upstream_h1 import UpstreamH1

from .wire_h1 import REQUEST, RESPONSE, FakeTransport

DTAB = "/svc => /$/inet/127.0.0.1/8080; /svc/web-canary => /$/inet/127.0.0.1/8080"


def _rules(n: int, matching: bool, anywhere: bool) -> str:
    out = []
    for i in range(n - (1 if matching else 0)):
        if anywhere:
            m = {"headers": {f"x-flag-{i}": "on"}}
        else:
            m = {"authority": f"service-{i}.example", "path": {"prefix": f"/p{i}/"}}
        out.append({"name": f"r{i}", "match": m, "dtab": f"/svc/service-{i} => /svc/web-canary"})
    if matching:
        out.append({"name": "canary", "match": {"authority": "web", "cookies": {"c": "d"}},
                    "dtab": "/svc/web => /svc/web-canary"})  # fmt: skip
    return "".join(f"  - {json.dumps(r)}\n" for r in out)


CASES = {
    "none": (0, False, False),
    "10-other-hosts": (10, False, False),
    "1000-other-hosts": (1000, False, False),
    "10-one-matching": (10, True, False),
    "1000-one-matching": (1000, True, False),
    "1000-any-host-header-rules": (1000, False, True),
}


def _warm(server: ServerH1, loop: Any) -> UpstreamH1:
    # Route once the way the request will be routed, and park a connected upstream.
    from dtab import Dtab

    router = server._router
    view = server._view
    from proxy.codec.h1 import RequestReader

    head = RequestReader().feed(REQUEST)[0]
    sel = router.select(view.point(head), head.headers, Dtab.EMPTY, b"")
    client = sel.route.pick(sel.u)[0]  # type: ignore[index]
    ep = client.pick()
    assert ep is not None
    up = UpstreamH1(ep, loop)
    up.connection_made(FakeTransport(("127.0.0.1", 8080)))
    ep.give_back(up)
    return up


def run(case: str, n: int) -> float:
    server, up = _fresh(case)
    t0 = time.perf_counter()
    for _ in range(n):
        server.data_received(REQUEST)
        up.data_received(RESPONSE)
    dt = time.perf_counter() - t0
    return dt / n * 1e6


def _fresh(case: str) -> tuple[ServerH1, UpstreamH1]:
    n, matching, anywhere = CASES[case]
    loop = asyncio.new_event_loop()
    text = f"routers:\n- protocol: http\n  label: bench\n  dtab: '{DTAB}'\n  servers: [{{ip: 127.0.0.1, port: 0}}]\n"
    if n:
        text += "  rules:\n" + _rules(n, matching, anywhere)
    rc = load_text(text).routers[0]
    rt = Runtime.bare(telemetry=False)
    router = Runtime._build_router(rt, rc)
    lst = Listener(router, rc, rc.servers[0], loop)
    server = ServerH1(lst)
    server.connection_made(FakeTransport())
    return server, _warm(server, loop)


def main(argv: list[str]) -> None:
    if "--iterations" in argv:
        n = int(argv[argv.index("--iterations") + 1])
        server, up = _fresh(argv[argv.index("--case") + 1] if "--case" in argv else "none")
        for _ in range(n):
            server.data_received(REQUEST)
            up.data_received(RESPONSE)
        return
    base = None
    for case in CASES:
        run(case, 3000)
        best = min(run(case, 20_000) for _ in range(5))
        if base is None:
            base = best
        print(f"rules_h1 {case:28s} {best:6.2f} us/request  throughput {base / best * 100:5.1f}% of no rules")


if __name__ == "__main__":
    main(sys.argv[1:])
