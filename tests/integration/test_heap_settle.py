"""What the proxy made before its first request is out of the garbage collector's sight
(`settle_heap`: a full collection walks every tracked object while the loop waits, and a
large routing table is most of them), until a reload replaces the config it froze: then
everything is collectable again, so the first config's cycles do not outlive it."""

from __future__ import annotations

import gc
from typing import Any

from config.load import load_text
from proxy.runtime import settle_heap

from .harness import Client, proxied, proxy_port, router_yaml


def test_the_started_heap_is_frozen_until_a_reload_replaces_it(run: Any) -> None:
    async def main() -> None:
        def yaml(port: int, prefix: str = "/svc") -> str:
            return router_yaml(f"{prefix} => /$/inet/127.0.0.1/{port}")

        async with proxied(yaml) as (rt, backend):
            settle_heap()
            try:
                assert gc.get_freeze_count() > 0
                c = await Client.connect(proxy_port(rt))
                assert (await c.request("GET", "/", headers={"Host": "web"})).status == 200
                await rt.apply_config(load_text(yaml(backend.port, "/svc/web")))
                assert gc.get_freeze_count() == 0  # the reload unfroze
            finally:
                gc.unfreeze()  # whatever happened, nothing stays frozen for the next test
            assert (await c.request("GET", "/", headers={"Host": "web"})).status == 200
            await c.close()

    run(main())
