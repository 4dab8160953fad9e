"""What an idle connection keeps. Memory per idle connection is a goal (bench/ measures
it); these tests pin the mechanisms: a connection idle for a while drops the deadline
timer its last request left armed (the listener's sweep calls `shed`), an answered
request's fields are not held, and TCP_NODELAY is on both ways on either loop (uvloop sets
it on every TCP handle, so there the proxy no longer makes a socket object per connection
to set it again; asyncio does not set it on accepted sockets, so there the proxy does)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from config.load import load_text
from proxy.runtime import SHED_AFTER_S

from .grpc_helpers import H2Client, h2_router_yaml
from .harness import Client, proxied, proxy_port, read_response, router_yaml

WAIT_S = 10.0


def _one_conn(rt: Any) -> Any:
    conns = list(rt.listeners[0].connections)
    assert len(conns) == 1, conns
    return conns[0]


def test_an_idle_h1_connection_sheds_its_timer_and_the_request_it_answered(run: Any) -> None:
    async def main() -> None:
        def yaml_for(port: int) -> str:
            return router_yaml(f"/svc => /$/inet/127.0.0.1/{port}", extra="  timeoutMs: 60000\n")

        async with proxied(yaml_for) as (rt, _backend):
            client = await Client.connect(proxy_port(rt))
            r = await client.request("GET", "/a/long/path/kept?no=1", headers={"Host": "web", "x-kept": "no"})
            assert r.status == 200
            conn = _one_conn(rt)
            # The router's timeout armed a timer when the request ended; the lazy re-arm
            # leaves it pending after the answer (60 s here).
            assert conn._timer is not None
            assert conn._view.target == b"" and conn._view.headers(b"x-kept") is None
            lst = rt.listeners[0]
            lst._sweep()  # just answered: not idle long enough to shed
            assert conn._timer is not None
            conn.last_active -= SHED_AFTER_S
            lst._sweep()
            assert conn._timer is None
            # The connection still serves, and arms a timer again.
            r = await client.request("GET", "/", headers={"Host": "web"})
            assert r.status == 200 and conn._timer is not None
            assert _one_conn(rt) is conn
            await client.close()

    run(main())


def test_an_idle_h2_connection_sheds_its_router_timeout_queue(run: Any) -> None:
    async def main() -> None:
        def yaml_for(port: int) -> str:
            return h2_router_yaml(
                f"/svc => /$/inet/127.0.0.1/{port}", upstream="http",
                identifier="    kind: io.l5d.header.token\n", extra="  timeoutMs: 60000\n",
            )  # fmt: skip

        async with proxied(yaml_for) as (rt, _backend):
            c = await H2Client.connect(proxy_port(rt))
            sid = c.start([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/")])
            await asyncio.wait_for(c.responses[sid].done.wait(), WAIT_S)
            assert c.responses[sid].status == 200
            conn = _one_conn(rt)
            assert conn._rt_timer is not None and conn._rt_queue
            conn.last_active -= SHED_AFTER_S
            rt.listeners[0]._sweep()
            assert conn._rt_timer is None and conn._rt_queue == []
            sid = c.start([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/")])
            await asyncio.wait_for(c.responses[sid].done.wait(), WAIT_S)
            assert c.responses[sid].status == 200 and conn._rt_timer is not None
            await c.close()

    run(main())


def test_tcp_nodelay_is_on_both_ways(run: Any) -> None:
    async def main() -> None:
        async with proxied(lambda port: router_yaml(f"/svc => /$/inet/127.0.0.1/{port}")) as (rt, backend):
            client = await Client.connect(proxy_port(rt))
            r = await client.request("GET", "/", headers={"Host": "web"})
            assert r.status == 200
            down = _one_conn(rt)._transport.get_extra_info("socket")
            assert down.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            pooled = [conn for client in rt.routers["test"].clients.clients() for conn in client._static.idle]
            assert pooled, "the upstream connection went back to the pool"
            for up in pooled:
                s = up.transport.get_extra_info("socket")
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            await client.close()

    run(main())


def test_request_readers_are_lent_between_requests_and_kept_mid_request(run: Any) -> None:
    """An idle connection holds no request reader: it goes back to the listener's pool when
    a response ends with nothing of a next request read, and the next connection to read
    borrows it. A connection whose next request has begun, even by a method's bytes alone
    (which the parser holds without a callback), keeps its reader."""

    async def main() -> None:
        async with proxied(lambda port: router_yaml(f"/svc => /$/inet/127.0.0.1/{port}")) as (rt, backend):
            a = await Client.connect(proxy_port(rt))
            assert (await a.request("GET", "/1", headers={"Host": "web"})).body == b"b GET /1"
            conn_a = _one_conn(rt)
            pool = rt.listeners[0].settings.readers
            assert conn_a._reader is None and len(pool) == 1
            lent = pool[0]
            b = await Client.connect(proxy_port(rt))
            assert (await b.request("GET", "/2", headers={"Host": "web"})).body == b"b GET /2"
            assert pool == [lent]  # b read with it and gave it back
            # A whole request and the first bytes of the next one's method, in one write.
            await a.send_raw(b"GET /3 HTTP/1.1\r\nHost: web\r\n\r\nGE")
            assert (await read_response(a.reader)).body == b"b GET /3"
            for _ in range(3):  # meanwhile b reads, with this reader or another
                assert (await b.request("GET", "/4", headers={"Host": "web"})).status == 200
            await a.send_raw(b"T /5 HTTP/1.1\r\nHost: web\r\n\r\n")
            assert (await read_response(a.reader)).body == b"b GET /5"
            assert [s.target for s in backend.seen] == ["/1", "/2", "/3", "/4", "/4", "/4", "/5"]
            await a.close()
            await b.close()

    run(main())


def test_a_reload_that_changes_limits_gives_readers_the_new_ones(run: Any) -> None:
    async def main() -> None:
        def yaml(port: int, max_target: int) -> str:
            return router_yaml(
                f"/svc => /$/inet/127.0.0.1/{port}", extra=f"  limits:\n    maxRequestTargetBytes: {max_target}\n"
            )

        async with proxied(lambda port: yaml(port, 8192)) as (rt, backend):
            c = await Client.connect(proxy_port(rt))
            long = "/" + "x" * 2000
            assert (await c.request("GET", long, headers={"Host": "web"})).status == 200
            assert rt.listeners[0].settings.readers  # a reader made under 8192, pooled
            await rt.apply_config(load_text(yaml(backend.port, 1024)))
            assert not rt.listeners[0].settings.readers
            r = await c.request("GET", long, headers={"Host": "web"})
            assert r.status == 414 and b"1024" in r.body
            await c.close()

    run(main())
