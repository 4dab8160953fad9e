"""What failure handling shows (issue 11): requests answered because a deadline or timeout
passed, counted by reason where the wire answers them (HTTP/1.1 and HTTP/2); the deadline
budget left when a request is forwarded; requeues; endpoints by failure-accrual state and
ejections in the scrape, and an ejected endpoint shown dead in /admin/traffic.json."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy.runtime import Runtime

from .grpc_helpers import H2Client
from .harness import Backend, Client, proxy_port, start_proxy

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(rt: Runtime) -> Samples:
    assert rt.telemetry is not None
    return samples(rt.telemetry.render().decode())


def lab(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def exceeded(m: Samples, router: str, service: str, port: int, reason: str) -> float:
    key = lab(router=router, service=service, client=f"/$/inet/127.0.0.1/{port}", traffic="base", reason=reason)
    return m.get(("dtabproxy_service_client_deadline_exceeded_total", key), 0.0)


class Hold:
    """A backend that reads a request head and never answers (until the proxy gives up);
    `stall=True`: it sends a response head and part of the body first."""

    def __init__(self, *, stall: bool = False) -> None:
        self.stall = stall
        self.arrived = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> Hold:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.arrived += 1
            if self.stall:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf")
                await writer.drain()
            await reader.read()  # until the proxy closes its side
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _yaml(protocol: str, hold: int, stall: int, attempt: int, ok: int) -> str:
    dtab = (
        f"/svc/total => /$/inet/127.0.0.1/{hold}; /svc/router => /$/inet/127.0.0.1/{hold};"
        f" /svc/idle => /$/inet/127.0.0.1/{stall}; /svc/attempt => /$/inet/127.0.0.1/{attempt};"
        f" /svc/ok => /$/inet/127.0.0.1/{ok}"
    )
    client_protocol = "  client:\n    protocol: http\n" if protocol == "h2" else "  client:\n"
    return (
        "routers:\n"
        f"- protocol: {protocol}\n  label: t\n"
        f"  dtab: {json.dumps(dtab)}\n"
        + ("  identifier: {kind: io.l5d.header.token, header: ':authority'}\n" if protocol == "h2" else "")
        + "  timeoutMs: 1500\n"
        "  service:\n    kind: io.l5d.static\n    configs:\n"
        "    - prefix: /svc/total\n      totalTimeoutMs: 300\n"
        f"{client_protocol}"
        "    kind: io.l5d.static\n    configs:\n"
        f"    - prefix: /$/inet/127.0.0.1/{attempt}\n      requestAttemptTimeoutMs: 300\n"
        "  limits: {streamIdleTimeoutMs: 1000}\n"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    )


def test_deadlines_exceeded_are_counted_by_reason_on_http1(run) -> None:
    async def main() -> None:
        hold, stall, attempt = await Hold().start(), await Hold(stall=True).start(), await Hold().start()
        ok = await Backend("ok").start()
        rt = await start_proxy(_yaml("http", hold.port, stall.port, attempt.port, ok.port))
        try:
            port = proxy_port(rt)
            past = time.time_ns() - 10**9
            for host, headers, status in [
                ("total", {}, 503),  # service.totalTimeoutMs (300 ms)
                ("router", {}, 503),  # the router's timeoutMs (1500 ms)
                ("attempt", {}, 503),  # client.requestAttemptTimeoutMs (300 ms), nothing retries it
                ("router", {"l5d-ctx-deadline": f"{past - 10**9} {past}"}, 503),  # expired: never sent
                ("ok", {"l5d-ctx-deadline": f"{time.time_ns()} {time.time_ns() + 45 * 10**9}"}, 200),
            ]:
                c = await Client.connect(port)
                r = await c.request("GET", "/", {"Host": host, **headers})
                assert r.status == status, (host, r.status, r.header("l5d-err"))
                await c.close()
            # A response stalled mid-body: cut after limits.streamIdleTimeoutMs.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n")
            got = await asyncio.wait_for(reader.read(), 20)
            assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"half")
            writer.close()

            m = scrape(rt)
            assert exceeded(m, "t", "/svc/total", hold.port, "totalTimeoutMs") == 1
            assert exceeded(m, "t", "/svc/router", hold.port, "timeoutMs") == 1
            assert exceeded(m, "t", "/svc/router", hold.port, "l5d-ctx-deadline") == 1
            assert exceeded(m, "t", "/svc/attempt", attempt.port, "requestAttemptTimeoutMs") == 1
            assert exceeded(m, "t", "/svc/idle", stall.port, "streamIdleTimeoutMs") == 1
            assert hold.arrived == 2  # the expired one never reached the backend
            # Every reason once, nothing else.
            total = sum(v for (n, _), v in m.items() if n == "dtabproxy_service_client_deadline_exceeded_total")
            assert total == 5
            # The budget left when a request with a deadline was forwarded: 45 s, and the
            # 300 ms of /svc/total.
            h = "dtabproxy_service_client_deadline_budget_seconds"
            okl = dict(router="t", service="/svc/ok", client=f"/$/inet/127.0.0.1/{ok.port}", traffic="base")
            assert m[(h + "_count", lab(**okl))] == 1
            assert m[(h + "_bucket", lab(**okl, le="30.0"))] == 0
            assert m[(h + "_bucket", lab(**okl, le="60.0"))] == 1
            assert 40 < m[(h + "_sum", lab(**okl))] <= 45
            tl = dict(okl, service="/svc/total", client=f"/$/inet/127.0.0.1/{hold.port}")
            assert m[(h + "_bucket", lab(**tl, le="0.25"))] == 0
            assert m[(h + "_bucket", lab(**tl, le="0.5"))] == 1
            rl = dict(tl, service="/svc/router")
            assert (h + "_count", lab(**rl)) not in m  # the expired one was never forwarded
        finally:
            await rt.drain()
            for b in (hold, stall, attempt):
                b.close()
            await ok.close()

    run(main())


def test_deadlines_exceeded_are_counted_by_reason_on_http2(run) -> None:
    async def main() -> None:
        hold, stall, attempt = await Hold().start(), await Hold(stall=True).start(), await Hold().start()
        ok = await Backend("ok").start()
        rt = await start_proxy(_yaml("h2", hold.port, stall.port, attempt.port, ok.port))
        try:
            c = await H2Client.connect(proxy_port(rt))
            grpc = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
            rs = await asyncio.gather(
                c.request(authority=b"total"),
                c.request(authority=b"router"),
                c.request(authority=b"attempt"),
                c.request(b"POST", authority=b"router", headers=[*grpc, (b"grpc-timeout", b"200m")]),
            )
            assert [r.status for r in rs[:3]] == [503, 503, 503]
            assert rs[3].status == 200 and (rs[3].header(b"grpc-status") or dict(rs[3].trailers).get(b"grpc-status")) == b"4"
            cut = await c.request(authority=b"idle")  # stalled mid-body: the stream is reset
            assert cut.status == 200 and cut.reset is not None
            await c.close()
            m = scrape(rt)
            assert exceeded(m, "t", "/svc/total", hold.port, "totalTimeoutMs") == 1
            assert exceeded(m, "t", "/svc/router", hold.port, "timeoutMs") == 1
            assert exceeded(m, "t", "/svc/router", hold.port, "grpc-timeout") == 1
            assert exceeded(m, "t", "/svc/attempt", attempt.port, "requestAttemptTimeoutMs") == 1
            assert exceeded(m, "t", "/svc/idle", stall.port, "streamIdleTimeoutMs") == 1
        finally:
            await rt.drain()
            for b in (hold, stall, attempt):
                b.close()
            await ok.close()

    run(main())


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_endpoint_ejected_by_accrual_is_dead_in_traffic_json_and_the_scrape(run, tmp_path: Path) -> None:
    async def main() -> None:
        live = await Backend("live").start()
        dead = _dead_port()
        (tmp_path / "web").write_text(f"127.0.0.1 {live.port}\n127.0.0.1 {dead}\n")
        rt = await start_proxy(
            "admin:\n  ip: 127.0.0.1\n  port: 0\n"
            "namers:\n"
            f"- kind: io.l5d.fs\n  rootDir: {json.dumps(str(tmp_path))}\n  pollIntervalMs: 50\n"
            "routers:\n- protocol: http\n  label: t\n  dtab: '/svc => /#/io.l5d.fs'\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        )
        try:
            c = await Client.connect(proxy_port(rt))
            sent = 0

            def ejected() -> bool:
                return any(ep.port == dead and ep.state == "dead" for cl in rt.routers["t"].clients.clients()
                           for ep in cl.endpoints())  # fmt: skip

            while not ejected():
                assert sent < 2000, "failure accrual never took the dead endpoint out"
                assert (await c.request("GET", "/", {"Host": "web"})).status == 200  # requeued past it
                sent += 1
            await c.close()
            host, aport = rt.admin.address
            async with aiohttp.ClientSession() as s:
                body = {"router": "t", "path": "/svc/web", "dtab": "/svc => /#/io.l5d.fs"}
                async with s.post(f"http://{host}:{aport}/admin/traffic.json", json=body) as r:
                    assert r.status == 200
                    data = await r.json()
                async with s.get(f"http://{host}:{aport}/admin/metrics/prometheus") as r:
                    m = samples(await r.text())
            (client,) = data["clients"].values()
            states = {e["addr"]: e["state"] for e in client["endpoints"]}
            assert states == {f"127.0.0.1:{live.port}": "available", f"127.0.0.1:{dead}": "dead"}
            cl = dict(router="t", client="/#/io.l5d.fs/web")
            assert m[("dtabproxy_client_endpoints", lab(**cl, state="available"))] == 1
            assert m[("dtabproxy_client_endpoints", lab(**cl, state="probing"))] == 0
            assert m[("dtabproxy_client_endpoints", lab(**cl, state="dead"))] == 1
            assert m[("dtabproxy_client_ejections_total", lab(**cl))] == 1
            pair = lab(**cl, service="/svc/web", traffic="base")
            assert m[("dtabproxy_service_client_requeues_total", pair)] >= 5  # one per connect failure
            assert m[("dtabproxy_service_client_retries_total", pair)] == 0
        finally:
            await rt.drain()
            await live.close()

    run(main())
