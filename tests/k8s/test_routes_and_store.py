"""Routes and dtabs from the Kubernetes API, through a running proxy: routing resources
watched live (`resources: {kind: io.l5d.k8s}`) and the DTab store (`dtabStore`) with
the admin API writing through it. Changes are awaited with `RouterK8s.wait_applied`
(the runtime swapped a snapshot), never with sleeps."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from config import load_text

from ..integration.harness import Backend, Client, proxy_port
from .apiserver import ApiServer
from .objects import dtab_object
from .test_namer import GUARD_S


def split(name: str, apex: str, backends: list[tuple[str, int]] | None, ns: str = "default") -> dict:
    spec: dict = {"service": apex} if apex else {}
    if backends is not None:
        spec["backends"] = [{"service": s, "weight": w} for s, w in backends]
    return {"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def api_yaml(server: ApiServer) -> tuple[str, str]:
    host, port = server.url.split("//")[1].split(":")
    return host, port


async def held_backend(release: asyncio.Event, arrived: asyncio.Event) -> asyncio.AbstractServer:
    """Answers 200 `held` once `release` is set: a request in flight across a change."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def start(text: str, tmp_path) -> object:
    from proxy.runtime import Runtime

    path = tmp_path / "config.yaml"
    path.write_text(text)
    rt = Runtime(load_text(text, source=str(path), base_dir=str(tmp_path)), config_path=str(path))
    await rt.start()
    return rt


def test_routing_resources_from_the_api_apply_live_and_untranslatable_ones_are_reported(run, tmp_path):
    async def main():
        server = await ApiServer().start()
        v1, v2 = await Backend("v1").start(), await Backend("v2").start()
        release, arrived = asyncio.Event(), asyncio.Event()
        slow = await held_backend(release, arrived)
        slow_port = slow.sockets[0].getsockname()[1]
        host, port = api_yaml(server)
        rt = await start(f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: web
  dtab: |
    /svc/web-v1 => /$/inet/127.0.0.1/{v1.port};
    /svc/web-v2 => /$/inet/127.0.0.1/{v2.port};
    /svc/slow => /$/inet/127.0.0.1/{slow_port};
    /svc/web => /svc/web-v1;
  resources: {{kind: io.l5d.k8s, namespaces: [default], host: {host}, port: {port}}}
  servers: [{{ip: 127.0.0.1, port: 0}}]
""", tmp_path)
        k = rt.k8s["web"]
        c, held = await Client.connect(proxy_port(rt)), await Client.connect(proxy_port(rt))
        try:
            assert (await c.request("GET", "/", {"Host": "web"})).header("x-backend") == "v1"
            in_flight = asyncio.ensure_future(held.request("GET", "/", {"Host": "slow"}))
            await asyncio.wait_for(arrived.wait(), GUARD_S)
            # kubectl apply: a split sending everything to v2, and one that cannot be translated.
            server.put(split("web", "web", [("web-v1", 0), ("web-v2", 1)]))
            server.put(split("bad", "", None))
            await asyncio.wait_for(k.wait_applied(1), GUARD_S)
            for _ in range(4):
                assert (await c.request("GET", "/", {"Host": "web"})).header("x-backend") == "v2"
            release.set()
            r = await asyncio.wait_for(in_flight, GUARD_S)
            assert r.status == 200 and r.body == b"held"  # the request in flight finished on its snapshot
            # Reported: /config.json, the metric; the rest applied.
            admin = f"http://127.0.0.1:{rt.admin.address[1]}"
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{admin}/config.json") as resp:
                    cfg = await resp.json()
                async with s.get(f"{admin}/admin/metrics/prometheus") as resp:
                    metrics = await resp.text()
            status = cfg["routers"][0]["k8s"]["resources"]
            assert "TrafficSplit default/web" in status["applied"] and status["rules"] == 1
            assert any("TrafficSplit default/bad" in u and "spec.service" in u for u in status["untranslated"])
            assert cfg["routers"][0]["resources"] == [{"kind": "io.l5d.k8s", "namespaces": ["default"],
                                                       "host": host, "port": int(port)}]
            assert 'dtabproxy_k8s_resources_untranslated{router="web"} 1' in metrics
            assert 'dtabproxy_k8s_watch_synced{watch="web trafficsplits.split.smi-spec.io (default)"} 1' in metrics
            # Deleted: back to the dtab's own route.
            server.delete("trafficsplits", "default", "web")
            await asyncio.wait_for(k.wait_applied(2), GUARD_S)
            assert (await c.request("GET", "/", {"Host": "web"})).header("x-backend") == "v1"
        finally:
            await c.close()
            await held.close()
            await rt.drain()
            slow.close()
            await v1.close()
            await v2.close()
            await server.stop()

    run(main())


def store_config(server: ApiServer, v: dict[str, int], dtab: str) -> str:
    host, port = api_yaml(server)
    return f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: outgoing
  dtab: {json.dumps(dtab)}
  dtabStore: {{kind: io.l5d.k8s, namespace: dtabproxy, host: {host}, port: {port}}}
  servers: [{{ip: 127.0.0.1, port: 0}}]
"""


def test_the_stored_dtab_is_watched_written_through_with_cas_and_survives_a_reload(run, tmp_path):
    async def main():
        server = await ApiServer().start()
        a, b, c_ = await Backend("a").start(), await Backend("b").start(), await Backend("c").start()
        ports = {"a": a.port, "b": b.port, "c": c_.port}
        inet = {n: f"/$/inet/127.0.0.1/{p}" for n, p in ports.items()}
        server.put(dtab_object("outgoing", [("/svc", inet["b"])], ns="dtabproxy"))
        rt = await start(store_config(server, ports, f"/svc => {inet['a']};"), tmp_path)
        k = rt.k8s["outgoing"]
        c = await Client.connect(proxy_port(rt))
        admin = f"http://127.0.0.1:{rt.admin.address[1]}"
        session = aiohttp.ClientSession()
        try:
            # The stored dtab wins over the config's at start.
            assert (await c.request("GET", "/", {"Host": "x"})).header("x-backend") == "b"
            async with session.get(f"{admin}/admin/dtabs/outgoing") as resp:
                etag = resp.headers["ETag"]
            rv = server.get("dtabs", "dtabproxy", "outgoing")["metadata"]["resourceVersion"]
            assert etag == f'"{rv}"'  # the ETag is the object's resourceVersion
            # An outside change (kubectl edit) applies.
            server.put(dtab_object("outgoing", [("/svc", inet["c"])], ns="dtabproxy"))
            await asyncio.wait_for(k.wait_applied(1), GUARD_S)
            assert (await c.request("GET", "/", {"Host": "x"})).header("x-backend") == "c"
            # A PUT with the old ETag: 412, nothing written.
            async with session.put(f"{admin}/admin/dtabs/outgoing", data=f"/svc => {inet['a']};",
                                   headers={"If-Match": etag}) as resp:
                assert resp.status == 412
                current = resp.headers["ETag"]
            assert server.get("dtabs", "dtabproxy", "outgoing")["dentries"] == [{"prefix": "/svc", "dst": inet["c"]}]
            # With the current one: written to the cluster, applied at once.
            async with session.put(f"{admin}/admin/dtabs/outgoing", data=f"/svc => {inet['a']};",
                                   headers={"If-Match": current}) as resp:
                assert resp.status == 200, await resp.text()
                new_etag = resp.headers["ETag"]
            stored = server.get("dtabs", "dtabproxy", "outgoing")
            assert stored["dentries"] == [{"prefix": "/svc", "dst": inet["a"]}]
            assert new_etag == f'"{stored["metadata"]["resourceVersion"]}"'
            assert (await c.request("GET", "/", {"Host": "x"})).header("x-backend") == "a"
            # A conflict found by the API (our copy is behind: the watch is cut off) is 412 too.
            server.fail_next(1000, 503)
            server.drop_watches()
            server.put(dtab_object("outgoing", [("/svc", inet["b"])], ns="dtabproxy"))
            server._fail.clear()
            async with session.put(f"{admin}/admin/dtabs/outgoing", data=f"/svc => {inet['c']};",
                                   headers={"If-Match": new_etag}) as resp:
                assert resp.status == 412, await resp.text()
            await asyncio.wait_for(k.wait_applied(3), GUARD_S)  # the watch catches up: b
            assert (await c.request("GET", "/", {"Host": "x"})).header("x-backend") == "b"
            # A reload (the config file changed) does not put the config's dtab back.
            cfg = tmp_path / "config.yaml"
            cfg.write_text(cfg.read_text().replace("port: 0}]", "port: 0}]\n  timeoutMs: 5000"))
            assert await rt.reload_now()
            assert (await c.request("GET", "/", {"Host": "x"})).header("x-backend") == "b"
            # A stored dtab that does not parse keeps the last good one, reported.
            server.put(dtab_object("outgoing", [("/svc", "/$/inet/[oops")], ns="dtabproxy"))
            await asyncio.wait_for(k.store.reflector.wait_version(str(server.rv)), GUARD_S)
            assert (await c.request("GET", "/", {"Host": "x"})).header("x-backend") == "b"
            async with session.get(f"{admin}/admin/dtabs") as resp:
                info = (await resp.json())["outgoing"]
            assert "dentries[0]" in info["store"]["error"]
            async with session.get(f"{admin}/admin/metrics/prometheus") as resp:
                assert 'dtabproxy_k8s_dtab_invalid{router="outgoing"} 1' in await resp.text()
            # Deleted: the config's dtab applies; a PUT without If-Match creates it again.
            server.delete("dtabs", "dtabproxy", "outgoing")
            await asyncio.wait_for(k.wait_applied(4), GUARD_S)
            assert (await c.request("GET", "/", {"Host": "x"})).header("x-backend") == "a"
            async with session.get(f"{admin}/admin/dtabs/outgoing") as resp:
                absent = resp.headers["ETag"]  # no object: the digest of the config's dtab
            async with session.put(f"{admin}/admin/dtabs/outgoing", data=f"/svc => {inet['c']};",
                                   headers={"If-Match": absent}) as resp:
                assert resp.status == 200, await resp.text()  # created
            assert server.get("dtabs", "dtabproxy", "outgoing")["dentries"] == [{"prefix": "/svc", "dst": inet["c"]}]
            assert (await c.request("GET", "/", {"Host": "x"})).header("x-backend") == "c"
            async with session.put(f"{admin}/admin/dtabs/outgoing", data="/svc => [", headers={"If-Match": "*"}) as resp:
                assert resp.status == 400
        finally:
            await session.close()
            await c.close()
            await rt.drain()
            for x in (a, b, c_):
                await x.close()
            await server.stop()

    run(main())


def test_without_a_store_a_put_lasts_until_the_next_reload(run, tmp_path):
    async def main():
        a, b = await Backend("a").start(), await Backend("b").start()
        rt = await start(f"""
admin: {{ip: 127.0.0.1, port: 0}}
routers:
- protocol: http
  label: plain
  dtab: /svc => /$/inet/127.0.0.1/{a.port};
  servers: [{{ip: 127.0.0.1, port: 0}}]
""", tmp_path)
        c = await Client.connect(proxy_port(rt))
        admin = f"http://127.0.0.1:{rt.admin.address[1]}"
        try:
            async with aiohttp.ClientSession() as s, s.put(
                f"{admin}/admin/dtabs/plain", data=f"/svc => /$/inet/127.0.0.1/{b.port};"
            ) as resp:
                assert resp.status == 200
            assert (await c.request("GET", "/", {"Host": "x"})).header("x-backend") == "b"
            assert await rt.reload_now()
            assert (await c.request("GET", "/", {"Host": "x"})).header("x-backend") == "a"
        finally:
            await c.close()
            await rt.drain()
            await a.close()
            await b.close()

    run(main())


