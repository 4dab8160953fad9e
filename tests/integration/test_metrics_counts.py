"""Issue 14, item 6: a WebSocket is one request that ends when its tunnel closes, and
names that bind to nothing share one `unbound` service label."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Backend, Client, proxy_port, router_yaml, start_proxy


def samples(rt: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(rt.telemetry.render().decode()):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def service_value(rt: Any, name: str, service: str) -> float:
    key = (("router", "test"), ("service", service), ("traffic", "base"))
    return samples(rt, name).get(key, 0.0)


async def settled(done: Any, turns: int = 1000) -> None:
    """Let the loop run callbacks already due (closing transports call connection_lost
    a turn or two later) until `done()`; a bound on turns, not on time."""
    for _ in range(turns):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition did not settle")


def test_a_websocket_is_in_flight_while_open_and_counted_when_its_tunnel_closes(run: Any) -> None:
    async def main() -> None:
        upstream_done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            await writer.drain()
            while data := await reader.read(1024):
                writer.write(data.upper())
                await writer.drain()
            writer.close()
            upstream_done.set()  # the proxy closed its side: the tunnel is over

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        rt = await start_proxy(router_yaml(f"/svc/ws => /$/inet/127.0.0.1/{port}"))
        c = await Client.connect(proxy_port(rt))
        await c.send_raw(b"GET /chat HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        assert (await c.reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        await c.send_raw(b"ping")
        assert await c.reader.readexactly(4) == b"PING"
        assert service_value(rt, "dtabproxy_service_in_flight", "/svc/ws") == 1
        assert service_value(rt, "dtabproxy_service_requests_total", "/svc/ws") == 0

        await c.close()
        await asyncio.wait_for(upstream_done.wait(), 10)
        await settled(lambda: not rt.listeners[0].connections)  # the proxy saw its client go
        assert service_value(rt, "dtabproxy_service_in_flight", "/svc/ws") == 0
        assert service_value(rt, "dtabproxy_service_requests_total", "/svc/ws") == 1
        assert service_value(rt, "dtabproxy_service_successes_total", "/svc/ws") == 1
        await rt.drain()
        server.close()

    run(main())


def test_names_that_bind_to_nothing_share_one_label(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        dtab = f"/svc/web => /$/inet/127.0.0.1/{web.port}; /svc/half => 1 * /svc/web & 1 * /svc/nowhere"
        rt = await start_proxy(router_yaml(dtab))
        c = await Client.connect(proxy_port(rt))
        for i in range(600):
            r = await c.request("GET", "/", {"Host": f"random-{i}.example"})
            assert r.status == 502
        assert (await c.request("GET", "/", {"Host": "web"})).status == 200
        assert (await c.request("GET", "/", {"Host": "half"})).status in (200, 502)  # a union with a route keeps its name
        await c.close()
        services = {dict(k)["service"] for k in samples(rt, "dtabproxy_service_requests_total")}
        assert services == {"/svc/web", "/svc/half", "unbound"}
        assert service_value(rt, "dtabproxy_service_requests_total", "unbound") == 600
        assert service_value(rt, "dtabproxy_service_failures_total", "unbound") == 0  # by class, below
        failures = samples(rt, "dtabproxy_service_failures_total")
        key = (("class", "bind"), ("router", "test"), ("service", "unbound"), ("traffic", "base"))
        assert failures[key] == 600
        await rt.drain()
        await web.close()

    run(main())
