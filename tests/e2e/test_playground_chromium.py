"""The dtab playground in a real headless Chromium: load the page, type a path and an
override, check the drawn tree's nodes and colours, follow a shared link, click a recent
decision of a real request, and save screenshots into tests/artifacts/.

Needs Debian's `chromium` (`make test-deps` installs it); skipped with a reason if absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.e2e.cdp import Browser, find_chromium
from tests.integration.harness import Backend, Client, proxy_port, start_proxy

pytestmark = pytest.mark.e2e

CHROMIUM = find_chromium()
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "artifacts")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (run `make test-deps`: apt-get install -y chromium)")

TREE_JS = """Array.from(document.querySelectorAll('#tree .node')).map(e => [e.dataset.type, e.dataset.path, e.dataset.status])"""


def proxy_yaml(dtab: str, admin_extra: str = "") -> str:
    return (
        f"admin:\n  ip: 127.0.0.1\n  port: 0\n{admin_extra}"
        f"routers:\n- protocol: http\n  label: web\n  dtab: {json.dumps(dtab)}\n"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        "- protocol: http\n  label: big\n  dtab: ''\n  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    )


@asynccontextmanager
async def playground(admin_extra: str = "") -> AsyncIterator[tuple[Any, Browser, Backend, Backend, str]]:
    v1, v2 = await Backend("v1").start(), await Backend("v2").start()
    dtab = (f"/srv/v1 => /$/inet/127.0.0.1/{v1.port}; /srv/v2 => /$/inet/127.0.0.1/{v2.port};"
            "/svc/web => 3 * /srv/v1 & 1 * /srv/v2")  # fmt: skip
    rt = await start_proxy(proxy_yaml(dtab, admin_extra))
    browser = Browser()
    try:
        assert CHROMIUM is not None
        await browser.start(CHROMIUM)
        host, port = rt.admin.address
        yield rt, browser, v1, v2, f"http://{host}:{port}"
        assert browser.exceptions == [], browser.exceptions  # no uncaught JS error on the page
    finally:
        await browser.close()
        await rt.drain()
        await v1.close()
        await v2.close()


async def wait_drawn(b: Browser, renders_before: int, root_path: str) -> None:
    await b.wait(f"window.__delegator.renders > {renders_before} && "
                 f"document.querySelector('#tree .node') && document.querySelector('#tree .node').dataset.path === {json.dumps(root_path)}")  # fmt: skip


@needs_chromium
def test_type_a_path_and_an_override_and_share_the_link(run) -> None:
    async def go() -> None:
        async with playground() as (_rt, b, v1, v2, admin):
            await b.goto(admin + "/delegator?router=web")
            assert await b.eval("document.querySelector('#router').value") == "web"
            assert "/svc/web=>3.00*/srv/v1 & /srv/v2" in await b.eval("document.querySelector('#base').value")

            renders = await b.eval("window.__delegator.renders")
            await b.type_into("#path", "/svc/web")
            await wait_drawn(b, renders, "/svc/web")
            tree = await b.eval(TREE_JS)
            assert tree == [
                ["union", "/svc/web", "success"],
                ["delegate", "/srv/v1", "success"],
                ["leaf", f"/$/inet/127.0.0.1/{v1.port}", "success"],
                ["delegate", "/srv/v2", "success"],
                ["leaf", f"/$/inet/127.0.0.1/{v2.port}", "success"],
            ]
            weights = await b.eval("Array.from(document.querySelectorAll('#tree .weight')).map(e => e.textContent)")
            assert weights == ["3 · 75%", "1 · 25%"]
            addrs = await b.eval("Array.from(document.querySelectorAll('#tree .addr')).map(e => e.textContent)")
            assert addrs == [f"127.0.0.1:{v1.port}", f"127.0.0.1:{v2.port}"]
            await b.screenshot(os.path.join(ARTIFACTS, "playground-tree.png"))

            # An override that names nothing: the alt tries it first (negative, grey), then
            # falls through to the union, so the root is still a success.
            renders = await b.eval("window.__delegator.renders")
            await b.type_into("#override", "/svc/web => /srv/nope")
            await b.wait(f"window.__delegator.renders > {renders} && document.querySelector('#tree .node').dataset.type === 'alt'")
            tree = await b.eval(TREE_JS)
            assert tree[0] == ["alt", "/svc/web", "success"]
            assert tree[1] == ["neg", "/srv/nope", "negative"]
            assert tree[2] == ["union", "/svc/web", "success"]
            assert await b.eval("document.querySelector('#tree .node.st-negative').dataset.path") == "/srv/nope"

            # A failing override: `!` wins the alt, so the whole tree is failed (red).
            renders = await b.eval("window.__delegator.renders")
            await b.type_into("#override", "/svc/web => !")
            await b.wait(f"window.__delegator.renders > {renders} && document.querySelector('#tree .node').dataset.status === 'failed'")
            assert (await b.eval(TREE_JS))[1] == ["fail", "!", "failed"]

            # A typo shows the delegator's 400 message and keeps the last tree.
            await b.type_into("#override", "/svc/web => ")
            await b.wait("document.querySelector('#error').textContent.startsWith('Invalid dtab: ')")
            assert "[]" in await b.eval("document.querySelector('#error').textContent")

            await b.type_into("#override", "/svc/web => /srv/v2")
            await b.wait("new URLSearchParams(location.search).get('dtab') === '/svc/web => /srv/v2'")
            shared = await b.eval("location.href")
            assert "router=web" in shared and "path=%2Fsvc%2Fweb" in shared

            # The link alone reproduces the view in a fresh page load.
            await b.page("Page.navigate", {"url": shared})
            await b.wait("window.__delegator && window.__delegator.ready === true && window.__delegator.renders >= 1")
            assert await b.eval("document.querySelector('#path').value") == "/svc/web"
            assert await b.eval("document.querySelector('#override').value") == "/svc/web => /srv/v2"
            tree = await b.eval(TREE_JS)
            assert tree[0] == ["alt", "/svc/web", "success"]
            assert ["leaf", f"/$/inet/127.0.0.1/{v2.port}", "success"] in tree

    run(go())


@needs_chromium
def test_click_a_recent_decision_draws_its_path(run) -> None:
    async def go() -> None:
        async with playground() as (rt, b, _v1, v2, admin):
            if getattr(rt, "telemetry", None) is None:
                pytest.skip("the data plane does not record decisions yet (Runtime.telemetry)")
            c = await Client.connect(proxy_port(rt))
            for _ in range(3):
                assert (await c.request("GET", "/", {"host": "web"})).status == 200
            r = await c.request("GET", "/", {"host": "web", "l5d-dtab": "/svc/web => /srv/v2"})
            assert r.body.startswith(b"v2 ")
            await c.close()

            await b.goto(admin + "/delegator?router=web")
            await b.wait("document.querySelectorAll('#decisions tbody tr').length === 4")
            row = await b.eval("document.querySelector('#decisions tbody tr').textContent")
            assert "/svc/web" in row and "override" in row and f"/$/inet/127.0.0.1/{v2.port}" in row

            renders = await b.eval("window.__delegator.renders")
            await b.click("#decisions tbody tr:first-child")
            await wait_drawn(b, renders, "/svc/web")
            await b.wait("document.querySelectorAll('#tree .node.hl').length > 0")
            assert await b.eval("document.querySelector('#override').value") == "/svc/web=>/srv/v2"  # as forwarded
            assert await b.eval("document.querySelector('#decisions tbody tr.selected') !== null")
            lit = await b.eval("Array.from(document.querySelectorAll('#tree .node.hl')).map(e => [e.dataset.type, e.dataset.path])")
            # The override fired (alt's first branch), then /srv/v2's dentry, then the leaf.
            assert lit == [["alt", "/svc/web"], ["delegate", "/srv/v2"], ["leaf", f"/$/inet/127.0.0.1/{v2.port}"]]

            # What-if: with /svc/web sent to v2 only, the base requests that the 3:1 split
            # sent to v1 would move; the ones that went to v2 (and the override) would not.
            v2_id = f"/$/inet/127.0.0.1/{v2.port}"
            moved = await b.eval(f"window.__delegator.state.decisions.filter(d => d.client !== {json.dumps(v2_id)}).length")
            await b.type_into("#proposed", f"/srv/v1 => /$/inet/127.0.0.1/1; /srv/v2 => {v2_id}; /svc/web => /srv/v2")
            await b.click("#whatif-run")
            await b.wait(f"document.querySelector('#summary').textContent.startsWith('{moved} of 4 ')")
            assert await b.eval("document.querySelectorAll('#decisions tbody tr.wi-moved').length") == moved
            assert await b.eval("document.querySelectorAll('#decisions tbody tr.wi-same').length") == 4 - moved
            await b.screenshot(os.path.join(ARTIFACTS, "playground-decision.png"))

    run(go())


@needs_chromium
def test_save_to_router_sends_the_token_the_user_gave(run) -> None:
    token = "playground-token-0123456789"

    async def go() -> None:
        async with playground(f"  auth: {{token: {token}}}\n") as (rt, b, _v1, v2, admin):
            await b.goto(admin + "/delegator?router=web")
            await b.wait("window.__delegator.ready === true")
            new_dtab = f"/srv/v2 => /$/inet/127.0.0.1/{v2.port}; /svc/web => /srv/v2"
            await b.type_into("#base", new_dtab)
            # No token yet: the write is refused and the page says why.
            await b.click("#save-base")
            await b.wait("document.querySelector('#save-state').dataset.status === '401'")
            assert "enter the admin token" in await b.eval("document.querySelector('#save-state').textContent")
            assert rt.routers["web"].base.dtab.show() != f"/srv/v2=>/$/inet/127.0.0.1/{v2.port};/svc/web=>/srv/v2"
            await b.type_into("#token", token)
            assert await b.eval("sessionStorage.getItem('dtabproxy.adminToken')") == token
            assert token not in await b.eval("location.href")
            await b.click("#save-base")
            await b.wait("document.querySelector('#save-state').dataset.status === '200'")
            assert rt.routers["web"].base.dtab.show() == f"/srv/v2=>/$/inet/127.0.0.1/{v2.port};/svc/web=>/srv/v2"
            assert await b.eval("document.querySelector('#base-state').textContent") == "as running"
            # The token outlives a reload of the page (same tab), never the URL.
            await b.goto(admin + "/delegator?router=web")
            await b.wait("window.__delegator.ready === true")
            assert await b.eval("document.querySelector('#token').value") == token
            assert token not in await b.eval("location.href")
            # A wrong token is refused like a missing one.
            await b.type_into("#token", "wrong-token-0123456789")
            await b.type_into("#base", "/svc/web => /srv/v1")
            await b.click("#save-base")
            await b.wait("document.querySelector('#save-state').dataset.status === '401'")
            assert rt.routers["web"].base.dtab.show() == f"/srv/v2=>/$/inet/127.0.0.1/{v2.port};/svc/web=>/srv/v2"
            await b.screenshot(os.path.join(ARTIFACTS, "playground-save.png"))

    run(go())


@needs_chromium
def test_draw_a_thousand_node_tree(run) -> None:
    """Measurement, not an assertion on time: the draw time goes to tests/artifacts/."""

    async def go() -> None:
        import aiohttp

        members = 499  # a delegate and a leaf each, under an alt, a neg and the union: 1,001 nodes
        dentries = [f"/srv/m{i} => /$/inet/127.0.0.1/{20000 + i}" for i in range(members)]
        union = " & ".join(f"{1 + i % 5} * /srv/m{i}" for i in range(members))
        big = ";".join([*dentries, f"/svc/big => {union}", "/svc/big => /srv/none"])
        async with playground() as (_rt, b, _v1, _v2, admin):
            async with aiohttp.ClientSession() as s, s.put(admin + "/admin/dtabs/big", data=big) as r:
                assert r.status == 200
            await b.goto(admin + "/delegator?router=big&path=/svc/big")
            await b.wait("window.__delegator.renders >= 1")
            nodes = await b.eval("document.querySelectorAll('#tree .node').length")
            assert nodes == await b.eval("window.__delegator.lastNodes") == 3 + 2 * members
            draws = []
            for _ in range(5):
                renders = await b.eval("window.__delegator.renders")
                t = await b.eval(
                    "(async () => { const t0 = performance.now(); const n = window.__delegator.renders;"
                    " document.querySelector('#path').dispatchEvent(new Event('input'));"
                    " await new Promise(r => (function w() { window.__delegator.renders > n ? r() : setTimeout(w, 1); })());"
                    " return [window.__delegator.lastRenderMs, performance.now() - t0]; })()"
                )
                assert await b.eval("window.__delegator.renders") == renders + 1
                draws.append(t)
            os.makedirs(ARTIFACTS, exist_ok=True)
            with open(os.path.join(ARTIFACTS, "playground-1000-nodes.txt"), "w") as f:
                f.write(f"nodes={nodes}\n")
                for draw_ms, total_ms in draws:
                    f.write(f"draw_ms={draw_ms:.1f} input_to_drawn_ms={total_ms:.1f} (includes 150 ms debounce)\n")
            await b.screenshot(os.path.join(ARTIFACTS, "playground-1000-nodes.png"), full_page=False)

    run(go())


# -- issue 14: live traffic on the tree (7), rules and what-if (8) ----------------------------


@needs_chromium
def test_the_tree_shows_observed_shares_and_endpoint_states(run) -> None:
    async def go() -> None:
        async with playground() as (rt, b, v1, v2, admin):
            c = await Client.connect(proxy_port(rt))
            for _ in range(24):
                assert (await c.request("GET", "/", {"host": "web"})).status == 200
            await c.close()
            n1, n2 = len(v1.seen), len(v2.seen)
            assert n1 + n2 == 24

            await b.goto(admin + "/delegator?router=web&path=/svc/web")
            await b.wait("document.querySelectorAll('#tree .observed').length === 2")
            # The configured weights stay as they were; each branch's observed share of
            # the real requests is drawn beside it.
            assert await b.texts("#tree .weight") == ["3 · 75%", "1 · 25%"]
            expect = [f"seen {round(n / 24 * 1000) / 10:g}%" for n in (n1, n2)]
            assert await b.texts("#tree .observed") == expect
            assert await b.data("#tree .observed", "requests") == [str(n1), str(n2)]
            # Each endpoint's state (failure accrual) and its requests, after its address.
            assert await b.data("#tree .ep", "state") == ["available", "available"]
            assert await b.texts("#tree .ep") == [f"available · {n1} req", f"available · {n2} req"]
            assert (await b.texts("#traffic"))[0].startswith("24 requests for /svc/web in the last ")
            # The addresses are drawn as before (the state is a separate tag).
            assert await b.texts("#tree .addr") == [f"127.0.0.1:{v1.port}", f"127.0.0.1:{v2.port}"]

            # More traffic shows on the next refresh (the page polls while "live" is on).
            c = await Client.connect(proxy_port(rt))
            for _ in range(8):
                assert (await c.request("GET", "/", {"host": "web"})).status == 200
            await c.close()
            updates = await b.eval("window.__delegator.trafficUpdates")
            await b.eval("window.__delegator.loadTraffic()")
            await b.wait(f"window.__delegator.trafficUpdates > {updates}")
            total = sum(int(x or 0) for x in await b.data("#tree .observed", "requests"))
            assert total == 32
            await b.screenshot(os.path.join(ARTIFACTS, "playground-live-traffic.png"))

    run(go())


def rules_yaml(v1: int, v2: int) -> str:
    dtab = f"/srv/v1 => /$/inet/127.0.0.1/{v1}; /srv/v2 => /$/inet/127.0.0.1/{v2}; /svc/web => /srv/v1"
    return (
        "admin:\n  ip: 127.0.0.1\n  port: 0\n"
        f"routers:\n- protocol: http\n  label: web\n  dtab: {json.dumps(dtab)}\n"
        "  rules:\n  - name: staging\n    match: {cookies: {env: staging}}\n    dtab: /svc/web => /srv/v2\n"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    )


@needs_chromium
def test_rule_entries_are_drawn_as_rules_and_what_if_counts_only_real_moves(run) -> None:
    async def go() -> None:
        v1, v2 = await Backend("v1").start(), await Backend("v2").start()
        rt = await start_proxy(rules_yaml(v1.port, v2.port))
        browser = Browser()
        try:
            assert CHROMIUM is not None
            await browser.start(CHROMIUM)
            b = browser
            host, port = rt.admin.address
            admin = f"http://{host}:{port}"
            c = await Client.connect(proxy_port(rt))
            for _ in range(3):  # no route now, and none under the proposal below
                assert (await c.request("GET", "/", {"host": "nowhere"})).status == 502
            assert (await c.request("GET", "/", {"host": "web"})).body.startswith(b"v1 ")
            r = await c.request("GET", "/", {"host": "web", "cookie": "a=1; env=staging"})
            assert r.body.startswith(b"v2 ")
            await c.close()

            await b.goto(admin + "/delegator?router=web")
            await b.wait("document.querySelectorAll('#decisions tbody tr').length === 5")
            # The newest row matched the rule: its dentry says so.
            row = (await b.texts("#decisions tbody tr:first-child td"))[2]
            assert row.startswith("rule staging: /svc/web => /srv/v2")

            renders = await b.eval("window.__delegator.renders")
            await b.click("#decisions tbody tr:first-child")
            await wait_drawn(b, renders, "/svc/web")
            # The rule's entry is in its own box, not in the router dtab.
            assert await b.eval("document.querySelector('#rules').value") == "# rule staging\n/svc/web => /srv/v2;"
            assert "/srv/v2;" not in (await b.eval("document.querySelector('#base').value")).split("/svc/web")[-1]
            assert await b.data("#tree .dentry.rule", "rule") == ["staging"]
            await b.wait("document.querySelectorAll('#tree .node.hl').length > 0")
            lit = await b.eval("Array.from(document.querySelectorAll('#tree .node.hl')).map(e => [e.dataset.type, e.dataset.path])")
            assert lit[-1] == ["leaf", f"/$/inet/127.0.0.1/{v2.port}"]
            assert "rules=" in await b.eval("location.href")

            # What-if: /svc/web to v2 for everyone moves the one plain request only; the
            # staged one stays on v2 and the three unroutable ones had no route before or after.
            await b.type_into("#proposed", f"/srv/v1 => /$/inet/127.0.0.1/{v1.port}; /srv/v2 => /$/inet/127.0.0.1/{v2.port}; /svc/web => /srv/v2")
            await b.click("#whatif-run")
            await b.wait("document.querySelector('#summary').textContent.startsWith('1 of 5 ')")
            assert await b.eval("document.querySelectorAll('#decisions tbody tr.wi-moved').length") == 1
            assert (await b.texts("#decisions tbody tr.wi-same td.whatif")).count("same (no route)") == 3
            await b.screenshot(os.path.join(ARTIFACTS, "playground-rules-whatif.png"))
            assert b.exceptions == [], b.exceptions
        finally:
            await browser.close()
            await rt.drain()
            await v1.close()
            await v2.close()

    run(go())
