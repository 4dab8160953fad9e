"""Issue 14, item 8: what-if counts a request as moved only when its destination
changes; the entries of match rules are shown as rules (decisions, what-if, l5d-err)."""

from __future__ import annotations

import json
from urllib.parse import unquote_plus

from tests.integration.harness import Backend, Client, proxy_port
from tests.integration.test_admin import running


def rules_yaml(dtab: str) -> str:
    return (
        "admin:\n  ip: 127.0.0.1\n  port: 0\n"
        f"routers:\n- protocol: http\n  label: web\n  dtab: {json.dumps(dtab)}\n"
        "  rules:\n"
        "  - name: staging\n    match: {headers: {x-env: staging}}\n    dtab: /svc/web => /srv/v2\n"
        "  - name: broken\n    match: {headers: {x-env: broken}}\n    dtab: /svc/web => !\n"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    )


def test_rules_in_decisions_what_if_and_l5d_err(run) -> None:
    async def go() -> None:
        v1, v2 = await Backend("v1").start(), await Backend("v2").start()
        dtab = f"/srv/v1 => /$/inet/127.0.0.1/{v1.port}; /srv/v2 => /$/inet/127.0.0.1/{v2.port}; /svc/web => /srv/v1"
        try:
            async with running(rules_yaml(dtab)) as a:
                c = await Client.connect(proxy_port(a.rt))
                for _ in range(3):  # no route before, and none under the proposal either
                    assert (await c.request("GET", "/", {"host": "nowhere"})).status == 502
                assert (await c.request("GET", "/", {"host": "web"})).body.startswith(b"v1 ")
                assert (await c.request("GET", "/", {"host": "web", "x-env": "staging"})).body.startswith(b"v2 ")
                r = await c.request("GET", "/", {"host": "web", "x-env": "broken"})
                assert r.status == 502
                err = unquote_plus(r.header("l5d-err") or "")
                base_part, rule_part = err.split("rule broken:\n")
                assert "/svc/web => !" not in base_part  # not under "base dtab"
                assert rule_part.startswith("  /svc/web => !\noverride dtab:")
                assert r.body.decode().count("rule broken:") == 1
                await c.close()

                ds = (await a.get_json("/admin/decisions.json?router=web&limit=10"))["decisions"]
                broken = ds[0]
                assert broken["client"] is None and broken["rules"] == [{"name": "broken", "dentries": [{"prefix": "/svc/web", "dst": "!"}]}]
                staged = next(d for d in ds if d["rules"] and d["rules"][0]["name"] == "staging")
                assert staged["client"] == f"/$/inet/127.0.0.1/{v2.port}"
                assert staged["rules"] == [{"name": "staging", "dentries": [{"prefix": "/svc/web", "dst": "/srv/v2"}]}]
                assert staged["dentries"] == ["/svc/web => /srv/v2", f"/srv/v2 => /$/inet/127.0.0.1/{v2.port}"]
                assert staged["dentry_rules"] == ["staging", None]
                assert "error" not in staged  # its path is found: the rule's entry is part of the table

                # The proposal changes nothing that matters for these requests.
                res = json.loads((await a.call("POST", "/admin/whatif.json", json={"router": "web", "dtab": dtab}))[2])["results"]
                assert len(res) == 6
                assert [r["verdict"] for r in res] == ["same"] * 6
                # Sending /svc/web to v2 moves only the plain request; the staged one stays,
                # the broken one and the unroutable ones still go nowhere.
                to_v2 = dtab.replace("/svc/web => /srv/v1", "/svc/web => /srv/v2")
                res = json.loads((await a.call("POST", "/admin/whatif.json", json={"router": "web", "dtab": to_v2}))[2])["results"]
                moved = [r for r in res if r["verdict"] != "same"]
                assert len(moved) == 1 and moved[0]["before"] == f"/$/inet/127.0.0.1/{v1.port}" and moved[0]["rules"] == []
                # Naming the unroutable host routes it: nowhere -> somewhere is a move.
                res = json.loads((await a.call("POST", "/admin/whatif.json",
                                               json={"router": "web", "dtab": dtab + "; /svc/nowhere => /srv/v1"}))[2])["results"]  # fmt: skip
                assert sum(r["verdict"] == "moved" for r in res) == 3
        finally:
            await v1.close()
            await v2.close()

    run(go())
