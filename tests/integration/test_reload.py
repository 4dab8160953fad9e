"""Live reload: a config or resource change swaps the routing snapshot atomically,
requests in flight finish on the old one, none fails, and warm pools are kept."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from config import load_file
from proxy.runtime import Runtime

from .harness import Backend, Client, proxy_port


def _config(path: str, backend_port: int, snapshot: int, *, extra_servers: int = 0, dtab_extra: str = "") -> None:
    servers = "".join("  - {ip: 127.0.0.1, port: 0}\n" for _ in range(1 + extra_servers))
    text = (
        "routers:\n- protocol: http\n  label: web\n"
        f"  dtab: {json.dumps(f'/svc/web => /$/inet/127.0.0.1/{backend_port}' + dtab_extra)}\n"
        "  rules:\n  - name: snapshot\n"
        f"    responseHeaders: {{set: {{x-snapshot: '{snapshot}'}}}}\n"
        f"  servers:\n{servers}"
    )
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: the watcher never reads half a file


async def _start(path: str) -> Runtime:
    rt = Runtime(load_file(path), config_path=path)
    await rt.start()
    return rt


def test_swap_under_concurrent_load_fails_nothing_and_each_request_sees_one_snapshot(run: Any, tmp_path) -> None:
    async def main() -> None:
        backends = [await Backend(f"b{i}").start() for i in range(2)]
        path = str(tmp_path / "c.yaml")
        _config(path, backends[0].port, 0)
        rt = await _start(path)
        port = proxy_port(rt)
        stop = asyncio.Event()
        results: list[tuple[int, bytes, str | None]] = []

        async def client() -> None:
            c = await Client.connect(port)
            while not stop.is_set():
                r = await c.request("GET", "/", {"Host": "web"})
                results.append((r.status, r.body, r.header("x-snapshot")))
            await c.close()

        tasks = [asyncio.ensure_future(client()) for _ in range(8)]
        for k in range(1, 21):
            while len(results) < k * 20:  # let traffic flow on this snapshot
                await asyncio.sleep(0)
            _config(path, backends[k % 2].port, k)
            assert await rt.reload_now()
        stop.set()
        await asyncio.gather(*tasks)
        assert rt.reloads == 20
        assert len(results) >= 400
        assert all(status == 200 for status, _, _ in results)
        # Snapshot k routes to backend k % 2 and labels the response k: never mixed.
        for _, body, snap in results:
            assert snap is not None
            assert body == f"b{int(snap) % 2} GET /".encode()
        assert len({snap for _, _, snap in results}) > 2
        await rt.drain()
        for b in backends:
            await b.close()

    run(main())


def test_config_file_change_is_picked_up_by_polling(run: Any, tmp_path) -> None:
    async def main() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        path = str(tmp_path / "c.yaml")
        _config(path, a.port, 1)
        rt = await _start(path)
        c = await Client.connect(proxy_port(rt))
        assert (await c.request("GET", "/", {"Host": "web"})).body == b"a GET /"
        _config(path, b.port, 2, dtab_extra="; /svc/other => /svc/web")
        await rt.wait_reloads(1)
        r = await c.request("GET", "/", {"Host": "web"})
        assert r.body == b"b GET /" and r.header("x-snapshot") == "2"
        # The same keep-alive client connection carried both: the listener was kept.
        await c.close()
        await rt.drain()
        await a.close()
        await b.close()

    run(main())


def test_bad_config_keeps_the_running_one(run: Any, tmp_path, caplog) -> None:
    async def main() -> None:
        a = await Backend("a").start()
        path = str(tmp_path / "c.yaml")
        _config(path, a.port, 1)
        rt = await _start(path)
        with open(path, "w", encoding="utf-8") as f:
            f.write("routers:\n- protocol: http\n  dtab: '/svc => '\n")
        assert not await rt.reload_now()
        assert any("reload refused" in r.getMessage() and "dtab" in r.getMessage() for r in caplog.records)
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web"})
        assert r.status == 200 and r.header("x-snapshot") == "1"
        await c.close()
        await rt.drain()
        await a.close()

    run(main())


def test_warm_pool_kept_and_listeners_added_and_removed(run: Any, tmp_path) -> None:
    async def main() -> None:
        a = await Backend("a").start()
        path = str(tmp_path / "c.yaml")
        _config(path, a.port, 1)
        rt = await _start(path)
        first = rt.listeners[0]
        c = await Client.connect(proxy_port(rt))
        assert (await c.request("GET", "/", {"Host": "web"})).status == 200
        _config(path, a.port, 2, extra_servers=1)
        assert await rt.reload_now()
        assert rt.listeners[0] is first and len(rt.listeners) == 2
        r = await c.request("GET", "/", {"Host": "web"})
        assert r.header("x-snapshot") == "2"
        assert a.connections == 1  # the upstream connection pool stayed warm
        c2 = await Client.connect(proxy_port(rt, 1))
        assert (await c2.request("GET", "/", {"Host": "web"})).header("x-snapshot") == "2"
        await c2.close()
        _config(path, a.port, 3)
        assert await rt.reload_now()
        assert len(rt.listeners) == 1 and rt.listeners[0] is first
        await c.close()
        await rt.drain()
        await a.close()

    run(main())


def test_resource_file_change_moves_the_split(run: Any, tmp_path) -> None:
    async def main() -> None:
        old, new = await Backend("old").start(), await Backend("new").start()
        res = tmp_path / "res"
        res.mkdir()

        def split(w_old: int, w_new: int) -> None:
            (res / "split.yaml").write_text(
                "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: web}\n"
                "spec:\n  service: web\n  backends:\n"
                f"  - {{service: web-old, weight: {w_old}}}\n  - {{service: web-new, weight: {w_new}}}\n"
            )

        split(1, 0)
        path = tmp_path / "c.yaml"
        path.write_text(
            "routers:\n- protocol: http\n  resources: res\n"
            f"  dtab: '/svc/web-old => /$/inet/127.0.0.1/{old.port}; /svc/web-new => /$/inet/127.0.0.1/{new.port}'\n"
            "  servers: [{ip: 127.0.0.1, port: 0}]\n"
        )
        rt = await _start(str(path))
        c = await Client.connect(proxy_port(rt))
        assert {(await c.request("GET", "/", {"Host": "web"})).body for _ in range(20)} == {b"old GET /"}
        split(0, 1)
        await rt.wait_reloads(1)
        assert {(await c.request("GET", "/", {"Host": "web"})).body for _ in range(20)} == {b"new GET /"}
        await c.close()
        await rt.drain()
        await old.close()
        await new.close()

    run(main())
