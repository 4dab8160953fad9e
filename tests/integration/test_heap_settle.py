"""What the proxy made before its first request is out of the garbage collector's sight
(`settle_heap`: a full collection walks every tracked object while the loop waits, and a
large routing table is most of them), until a reload replaces the config it froze: then
everything is collectable again, so the first config's cycles do not outlive it."""

from __future__ import annotations

import gc
from typing import Any

from config.load import load_text
from proxy.runtime import settle_heap

from .harness import Backend, Client, proxy_port, router_yaml, start_proxy


def test_the_started_heap_is_frozen_until_a_reload_replaces_it(run: Any) -> None:
    async def main() -> None:
        backend = await Backend("b").start()
        yaml = router_yaml(f"/svc => /$/inet/127.0.0.1/{backend.port}")
        rt = await start_proxy(yaml)
        try:
            settle_heap()
            assert gc.get_freeze_count() > 0
            c = await Client.connect(proxy_port(rt))
            assert (await c.request("GET", "/", headers={"Host": "web"})).status == 200
            await rt.apply_config(load_text(yaml.replace("/svc =>", "/svc/web =>")))
            assert gc.get_freeze_count() == 0
            assert (await c.request("GET", "/", headers={"Host": "web"})).status == 200
            await c.close()
        finally:
            gc.unfreeze()
            await rt.drain()
            await backend.close()

    run(main())
