"""Failure handling through the real proxy on loopback sockets: requeues past a dead
endpoint, failure accrual, retries within the budget, deadlines, the stream idle timeout,
the per-attempt timeout and the concurrency limits (issues 10 and 11)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

from .harness import Backend, Client, proxy_port, start_proxy

GETS = 200
POSTS = 50


def _dead_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fs_yaml(root: Path, extra: str = "", client: str = "", service: str = "") -> str:
    return (
        "namers:\n"
        f"- kind: io.l5d.fs\n  rootDir: {json.dumps(str(root))}\n  pollIntervalMs: 50\n"
        "routers:\n"
        "- protocol: http\n  label: t\n"
        "  dtab: '/svc => /#/io.l5d.fs'\n"
        f"{client}{service}{extra}"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    )


async def _many(port: int, n: int, conns: int, method: str = "GET", body: bytes | None = None,
                headers: dict[str, str] | None = None) -> dict[str, int]:  # fmt: skip
    """`n` requests over `conns` keep-alive connections; counts by outcome."""
    counts = {"2xx": 0, "error": 0, "no answer": 0}
    hs = {"Host": "web", **(headers or {})}

    async def one_conn(k: int) -> None:
        c: Client | None = None
        for _ in range(k):
            try:
                if c is None:
                    c = await Client.connect(port)
                r = await c.request(method, "/", hs, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                counts["no answer"] += 1
                c = None
                continue
            counts["2xx" if 200 <= r.status < 300 else "error"] += 1
            if r.header("connection") == "close":
                await c.close()
                c = None
        if c is not None:
            await c.close()

    per, extra = divmod(n, conns)
    await asyncio.gather(*(one_conn(per + (1 if i < extra else 0)) for i in range(conns)))
    return counts


def test_one_dead_endpoint_of_two_fails_no_request(run, tmp_path: Path) -> None:
    async def main() -> None:
        live = await Backend("live").start()
        (tmp_path / "web").write_text(f"127.0.0.1 {live.port}\n127.0.0.1 {_dead_port()}\n")
        rt = await start_proxy(_fs_yaml(tmp_path))
        try:
            port = proxy_port(rt)
            gets = await _many(port, GETS, 8)
            posts = await _many(port, POSTS, 4, "POST", b"payload")
            assert gets == {"2xx": GETS, "error": 0, "no answer": 0}
            assert posts == {"2xx": POSTS, "error": 0, "no answer": 0}
            assert sum(1 for s in live.seen if s.method == "POST") == POSTS  # each POST once
            client = next(iter(rt.routers["t"].clients.clients()))
            states = {ep.port: ep.state for ep in client.endpoints()}
            assert states[live.port] == "available"
            assert "dead" in states.values()  # failure accrual took the dead one out
        finally:
            await rt.drain()
            await live.close()

    run(main())


def test_an_endpoint_killed_mid_run_is_left_behind(run, tmp_path: Path) -> None:
    async def main() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        (tmp_path / "web").write_text(f"127.0.0.1 {a.port}\n127.0.0.1 {b.port}\n")
        rt = await start_proxy(_fs_yaml(tmp_path))
        try:
            port = proxy_port(rt)
            first = await _many(port, 100, 4)
            assert first["2xx"] == 100
            await b.close()  # killed: pooled connections go, new ones are refused
            after = await _many(port, 200, 4)
            # In flight at the kill: none here (sequential per connection). Every later
            # request is requeued away from the dead endpoint.
            assert after == {"2xx": 200, "error": 0, "no answer": 0}
        finally:
            await rt.drain()
            await a.close()

    run(main())


def test_retryable_503s_are_retried_within_the_budget(run) -> None:
    async def main() -> None:
        hits = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal hits
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    hits += 1
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        bport = srv.sockets[0].getsockname()[1]
        rt = await start_proxy(
            "routers:\n- protocol: http\n  label: t\n"
            f"  dtab: '/svc => /$/inet/127.0.0.1/{bport}'\n"
            "  service:\n    responseClassifier: {kind: io.l5d.http.retryableRead5XX}\n"
            "    retries: {budget: {ttlSecs: 10, minRetriesPerSec: 1, percentCanRetry: 0.2}}\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        )
        try:
            n = 100
            counts = await _many(proxy_port(rt), n, 4)
            assert counts["error"] == n  # every answer is the backend's 503 in the end
            # At most one try each, plus 20% of the requests, plus the floor (1/s x 10 s).
            assert n < hits <= n + 0.2 * n + 10
            stats = rt.routers["t"].stats
            (rc,) = stats.retry.values()
            assert rc.retries == hits - n and rc.budget_exhausted > 0
        finally:
            await rt.drain()
            srv.close()

    run(main())


def test_an_expired_deadline_is_never_forwarded(run) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(
            "routers:\n- protocol: http\n  label: t\n"
            f"  dtab: '/svc => /$/inet/127.0.0.1/{web.port}'\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        )
        try:
            c = await Client.connect(proxy_port(rt))
            past = time.time_ns() - 1_000_000_000
            r = await c.request("GET", "/", {"Host": "web", "l5d-ctx-deadline": f"{past - 10**9} {past}"})
            assert r.status == 503 and "deadline" in (r.header("l5d-err") or "")
            assert web.seen == []
            future = time.time_ns() + 60 * 10**9
            r = await c.request("GET", "/", {"Host": "web", "l5d-ctx-deadline": f"{time.time_ns()} {future}"})
            assert r.status == 200
            ts, dl = map(int, web.seen[0].header("l5d-ctx-deadline").split())
            assert dl == future  # the same deadline goes on, restamped
        finally:
            await rt.drain()
            await web.close()

    run(main())


def test_a_deadline_shorter_than_the_backend_answers_503_before_the_backend(run) -> None:
    async def main() -> None:
        release = asyncio.Event()
        arrived = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            arrived.set()
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        bport = srv.sockets[0].getsockname()[1]
        rt = await start_proxy(
            "routers:\n- protocol: http\n  label: t\n"
            f"  dtab: '/svc => /$/inet/127.0.0.1/{bport}'\n"
            "  service: {totalTimeoutMs: 500}\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        )
        try:
            c = await Client.connect(proxy_port(rt))
            r = await c.request("GET", "/", {"Host": "web"})
            assert arrived.is_set() and not release.is_set()  # answered while the backend held
            assert r.status == 503 and "deadline" in (r.header("l5d-err") or "")
        finally:
            release.set()
            await rt.drain()
            srv.close()

    run(main())


def test_a_response_stalled_mid_body_ends_after_the_stream_idle_timeout(run) -> None:
    async def main() -> None:
        closed = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf")
            await writer.drain()
            await reader.read()  # until the proxy gives up on us
            closed.set()
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        bport = srv.sockets[0].getsockname()[1]
        rt = await start_proxy(
            "routers:\n- protocol: http\n  label: t\n"
            f"  dtab: '/svc => /$/inet/127.0.0.1/{bport}'\n"
            "  limits: {streamIdleTimeoutMs: 1000}\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        )
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(rt))
            writer.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            got = await asyncio.wait_for(reader.read(), 20)  # the proxy cuts the response
            assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"half")
            await asyncio.wait_for(closed.wait(), 20)  # and the upstream side too
            writer.close()
        finally:
            await rt.drain()
            srv.close()

    run(main())


def test_a_slow_endpoint_is_retried_past_after_the_attempt_timeout(run, tmp_path: Path) -> None:
    async def main() -> None:
        fast = await Backend("fast").start()
        hung = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                hung.set()
                await reader.read()  # never answers
            finally:
                writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        slow_port = srv.sockets[0].getsockname()[1]
        (tmp_path / "web").write_text(f"127.0.0.1 {fast.port}\n127.0.0.1 {slow_port}\n")
        rt = await start_proxy(_fs_yaml(
            tmp_path,
            client="  client:\n    requestAttemptTimeoutMs: 200\n    loadBalancer: {kind: roundRobin}\n",
            service="  service:\n    responseClassifier: {kind: io.l5d.http.retryableRead5XX}\n",
        ))  # fmt: skip
        try:
            counts = await _many(proxy_port(rt), 6, 1)
            assert counts == {"2xx": 6, "error": 0, "no answer": 0}
            assert hung.is_set()  # round robin sent some to the slow one, and they were retried
        finally:
            await rt.drain()
            await fast.close()
            srv.close()

    run(main())


def test_max_concurrent_requests_answers_503_naming_the_limit(run) -> None:
    async def main() -> None:
        release = asyncio.Event()
        arrived = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            arrived.set()
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        bport = srv.sockets[0].getsockname()[1]
        rt = await start_proxy(
            "routers:\n- protocol: http\n  label: t\n"
            f"  dtab: '/svc => /$/inet/127.0.0.1/{bport}'\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n    maxConcurrentRequests: 1\n"
        )
        try:
            port = proxy_port(rt)
            a = await Client.connect(port)
            first = asyncio.ensure_future(a.request("GET", "/", {"Host": "web"}))
            await asyncio.wait_for(arrived.wait(), 10)
            b = await Client.connect(port)
            r = await b.request("GET", "/", {"Host": "web"})
            assert r.status == 503 and "maxConcurrentRequests" in (r.header("l5d-err") or "")
            release.set()
            assert (await first).status == 200
            r = await b.request("GET", "/", {"Host": "web"})  # the slot is free again
            assert r.status == 200
        finally:
            release.set()
            await rt.drain()
            srv.close()

    run(main())


def test_host_connection_pool_bounds_upstream_connections_and_waiters(run) -> None:
    async def main() -> None:
        release = asyncio.Event()
        conns = 0
        arrived = 0
        two = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal conns, arrived
            conns += 1
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    arrived += 1
                    if arrived >= 2:
                        two.set()
                    await release.wait()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        bport = srv.sockets[0].getsockname()[1]
        rt = await start_proxy(
            "routers:\n- protocol: http\n  label: t\n"
            f"  dtab: '/svc => /$/inet/127.0.0.1/{bport}'\n"
            "  client:\n    hostConnectionPool: {maxSize: 2, maxWaiters: 20}\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        )
        try:
            port = proxy_port(rt)
            clients = [await Client.connect(port) for _ in range(30)]
            pending = [asyncio.ensure_future(c.request("GET", "/", {"Host": "web"})) for c in clients]
            await asyncio.wait_for(two.wait(), 10)
            # 2 connected, 20 wait, 8 are refused at once.
            done, _ = await asyncio.wait(pending, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            refused = [p for p in pending if p.done()]
            while len(refused) < 8:
                await asyncio.wait([p for p in pending if not p.done()], return_when=asyncio.FIRST_COMPLETED)
                refused = [p for p in pending if p.done()]
            assert len(refused) == 8
            assert all(p.result().status == 503 for p in refused)
            assert "hostConnectionPool.maxWaiters" in (refused[0].result().header("l5d-err") or "")
            release.set()
            results = await asyncio.gather(*pending)
            assert sum(r.status == 200 for r in results) == 22
            assert conns == 2  # never more than maxSize connections upstream
        finally:
            release.set()
            await rt.drain()
            srv.close()

    run(main())



def test_idle_upstream_connections_are_closed_after_the_pool_idle_time(run) -> None:
    async def main() -> None:
        closed = asyncio.Event()
        accepted = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                closed.set()  # the proxy let the pooled connection go
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        bport = srv.sockets[0].getsockname()[1]
        rt = await start_proxy(
            "routers:\n- protocol: http\n  label: t\n"
            f"  dtab: '/svc => /$/inet/127.0.0.1/{bport}'\n"
            "  client:\n    hostConnectionPool: {idleTimeMs: 1000}\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        )
        try:
            c = await Client.connect(proxy_port(rt))
            assert (await c.request("GET", "/", {"Host": "web"})).status == 200
            await asyncio.wait_for(closed.wait(), 20)  # reaped (one sweep a second)
            assert (await c.request("GET", "/", {"Host": "web"})).status == 200  # a new one
            assert accepted == 2
        finally:
            await rt.drain()
            srv.close()

    run(main())
