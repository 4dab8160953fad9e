"""The admin server of a running proxy: health, config, versioned dtabs (compare-and-swap),
the delegator's JSON API exactly as docs/dtab.md §12.1, decisions, what-if and metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.runtime import Runtime
from tests.integration.harness import Backend, Client, proxy_port, start_proxy
from tests.unit.dtab import ErrorNamer, namer_entry

HMAC_KEY = "k" * 40
WORKED_DTAB = (
    "/beh => /#/error; /bah/humbug => /$/inet/127.1/8080;\n"
    "/foo => /bah | /beh | /$/fail; /foo => /bar; /boo => /foo;\n"
    "/meh => /heh; /neg => ~"
)
# Linkerd's DelegateApiHandlerTest example, compact (the way the delegator sends it);
# docs/dtab.md §12.5 has a worked example of our own (tests/unit/test_docs.py).
WORKED_JSON = (
    '{"type":"delegate","path":"/boo/humbug","delegate":{"type":"alt","path":"/foo/humbug",'
    '"dentry":{"prefix":"/boo","dst":"/foo"},"alt":['
    '{"type":"neg","path":"/bar/humbug","dentry":{"prefix":"/foo","dst":"/bar"}},'
    '{"type":"delegate","path":"/bah/humbug","dentry":{"prefix":"/foo","dst":"/bah | /beh | /$/fail"},'
    '"delegate":{"type":"leaf","path":"/$/inet/127.1/8080","dentry":{"prefix":"/bah/humbug","dst":"/$/inet/127.1/8080"},'
    '"bound":{"addr":{"type":"bound","addrs":[{"ip":"127.0.0.1","port":8080,"meta":{}}],"meta":{}},'
    '"id":"/$/inet/127.1/8080","path":"/"}}},'
    '{"type":"delegate","path":"/beh/humbug","dentry":{"prefix":"/foo","dst":"/bah | /beh | /$/fail"},'
    '"delegate":{"type":"exception","path":"/#/error/humbug","dentry":{"prefix":"/beh","dst":"/#/error"},'
    '"message":"error naming /#/error/humbug"}},'
    '{"type":"fail","path":"/$/fail/humbug","dentry":{"prefix":"/foo","dst":"/bah | /beh | /$/fail"}}]}}'
)


def proxy_yaml(dtab: str, *, label: str = "web", second: str | None = None) -> str:
    text = (
        "admin:\n  ip: 127.0.0.1\n  port: 0\n"
        "routers:\n"
        f"- protocol: http\n  label: {label}\n"
        f"  dtab: {json.dumps(dtab)}\n"
        "  overrides:\n    trust:\n      cidrs: [127.0.0.0/8]\n"
        f"      hmac: {{header: l5d-dtab-sig, key: {HMAC_KEY}}}\n"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    )
    if second is not None:
        text += f"- protocol: http\n  label: other\n  dtab: {json.dumps(second)}\n  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    return text


class Admin:
    def __init__(self, rt: Runtime, session: aiohttp.ClientSession) -> None:
        self.rt = rt
        host, port = rt.admin.address
        self.base = f"http://{host}:{port}"
        self.s = session

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any, str]:
        async with self.s.request(method, self.base + path, **kw) as r:
            return r.status, r.headers.copy(), await r.text()

    async def get_json(self, path: str) -> Any:
        status, _, text = await self.call("GET", path)
        assert status == 200, text
        return json.loads(text)


@asynccontextmanager
async def running(yaml_text: str) -> AsyncIterator[Admin]:
    rt = await start_proxy(yaml_text)
    try:
        async with aiohttp.ClientSession() as s:
            yield Admin(rt, s)
    finally:
        await rt.drain()


def has_telemetry(rt: Runtime) -> bool:
    return getattr(rt, "telemetry", None) is not None


# -- health and config ----------------------------------------------------------------------


def test_ping_and_ready(run) -> None:
    async def go() -> None:
        async with running(proxy_yaml("/svc => /$/inet/127.0.0.1/1")) as a:
            assert (await a.call("GET", "/admin/ping"))[::2] == (200, "pong")
            assert (await a.call("GET", "/admin/ready"))[::2] == (200, "ready")
            a.rt.ready = False
            assert (await a.call("GET", "/admin/ready"))[::2] == (503, "starting")
            a.rt.ready = True
            a.rt.draining = True
            assert (await a.call("GET", "/admin/ready"))[::2] == (503, "draining")
            a.rt.draining = False
            assert (await a.call("POST", "/admin/ping"))[0] == 405

    run(go())


def test_config_json_is_the_effective_config_with_secrets_redacted(run) -> None:
    async def go() -> None:
        async with running(proxy_yaml("/svc => /$/inet/127.0.0.1/1")) as a:
            status, headers, text = await a.call("GET", "/config.json")
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            assert HMAC_KEY not in text
            cfg = json.loads(text)
            r = cfg["routers"][0]
            assert r["label"] == "web"
            assert r["overrides"]["trust"]["hmac"]["key"] == "<redacted>"
            assert r["dtab"] == "/svc=>/$/inet/127.0.0.1/1"
            assert r["timeoutMs"] == 10_000  # a default, filled in

    run(go())


# -- dtabs: versions and compare-and-swap ------------------------------------------------------


def test_dtab_put_with_if_match_swaps_and_takes_effect_at_once(run) -> None:
    async def go() -> None:
        one, two = await Backend("one").start(), await Backend("two").start()
        try:
            async with running(proxy_yaml(f"/svc => /$/inet/127.0.0.1/{one.port}")) as a:
                client = await Client.connect(proxy_port(a.rt))
                assert (await client.request("GET", "/", {"host": "x"})).body.startswith(b"one ")

                listing = await a.get_json("/admin/dtabs")
                assert listing["web"]["dtab"] == f"/svc=>/$/inet/127.0.0.1/{one.port}"
                status, headers, text = await a.call("GET", "/admin/dtabs/web")
                etag = headers["ETag"]
                assert status == 200 and text == listing["web"]["dtab"] and etag == listing["web"]["version"]
                assert etag.startswith('"') and etag.endswith('"')

                new = f"/svc => /$/inet/127.0.0.1/{two.port};"
                status, headers, text = await a.call("PUT", "/admin/dtabs/web", data=new, headers={"If-Match": etag})
                assert status == 200, text
                body = json.loads(text)
                assert body["dtab"] == f"/svc=>/$/inet/127.0.0.1/{two.port}"
                assert headers["ETag"] == body["version"] != etag
                # The same keep-alive connection's next request already uses the new dtab.
                assert (await client.request("GET", "/", {"host": "x"})).body.startswith(b"two ")
                assert a.rt.routers["web"].base.dtab.show() == body["dtab"]
                cfg = await a.get_json("/config.json")
                assert cfg["routers"][0]["dtab"] == body["dtab"]

                # A writer holding the old version loses, and is told the current one.
                status, headers, text = await a.call("PUT", "/admin/dtabs/web", data="/svc => /$/inet/127.0.0.1/1", headers={"If-Match": etag})
                assert status == 412
                assert json.loads(text)["version"] == body["version"] == headers["ETag"]
                assert a.rt.routers["web"].base.dtab.show() == body["dtab"]
                # A weak tag never matches (RFC 9110 §13.1.1: If-Match compares strongly).
                status, _, _ = await a.call("PUT", "/admin/dtabs/web", data="/a=>/b", headers={"If-Match": "W/" + body["version"]})
                assert status == 412
                # `*`, a list, or no If-Match at all: unconditional.
                status, _, _ = await a.call("PUT", "/admin/dtabs/web", data=new, headers={"If-Match": f'"nope", {body["version"]}'})
                assert status == 200
                status, _, text = await a.call("PUT", "/admin/dtabs/web", json={"dtab": "/svc=>/$/inet/127.0.0.1/1"}, headers={"If-Match": "*"})
                assert status == 200 and json.loads(text)["dtab"] == "/svc=>/$/inet/127.0.0.1/1"
                await client.close()
        finally:
            await one.close()
            await two.close()

    run(go())


def test_dtab_put_errors(run) -> None:
    async def go() -> None:
        async with running(proxy_yaml("/svc => /$/inet/127.0.0.1/1")) as a:
            before = a.rt.routers["web"].base.dtab
            status, _, text = await a.call("PUT", "/admin/dtabs/web", data="/svc => /a;\n/x => /b |")
            assert status == 400
            err = json.loads(text)
            assert err["error"].startswith("Invalid dtab: ") and "[]" in err["error"]
            assert (err["offset"], err["line"], err["column"]) == (22, 2, 11)
            status, _, text = await a.call("PUT", "/admin/dtabs/web", data="/svc => /a;\n/x = > /b")
            err = json.loads(text)
            assert status == 400 and (err["line"], err["column"]) == (2, 5) and "[ ]" in err["error"]
            assert a.rt.routers["web"].base.dtab is before  # nothing changed
            status, _, _ = await a.call("PUT", "/admin/dtabs/nope", data="/a=>/b")
            assert status == 404
            status, _, _ = await a.call("GET", "/admin/dtabs/nope")
            assert status == 404
            status, _, _ = await a.call("PUT", "/admin/dtabs/web", data="[1]", headers={"Content-Type": "application/json"})
            assert status == 400
            status, _, _ = await a.call("DELETE", "/admin/dtabs/web")
            assert status == 405

    run(go())


# -- /delegator.json (docs/dtab.md §12.1) ---------------------------------------------------------


def test_delegator_json_worked_example_byte_exact_get_and_post(run) -> None:
    async def go() -> None:
        async with running(proxy_yaml("/svc => /$/inet/127.0.0.1/1")) as a:
            a.rt.routers["web"].namers = (namer_entry("/#/error", ErrorNamer("/#/error")),)
            q = urlencode({"namespace": "web", "path": "/boo/humbug", "dtab": WORKED_DTAB})
            status, headers, text = await a.call("GET", "/delegator.json?" + q)
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            assert text == WORKED_JSON
            body = {"namespace": "web", "dtab": WORKED_DTAB, "path": "/boo/humbug"}
            status, _, text = await a.call("POST", "/delegator.json", json=body)
            assert (status, text) == (200, WORKED_JSON)
            # No namespace: the default interpreter, no configured namers, only the given dtab.
            status, _, text = await a.call("POST", "/delegator.json", json={"dtab": "", "path": "/nope"})
            assert (status, text) == (200, '{"type":"neg","path":"/nope"}')
            status, _, text = await a.call("GET", "/delegator.json?path=/meh&dtab=" + "/meh=>/heh")
            assert text == '{"type":"delegate","path":"/meh","delegate":{"type":"neg","path":"/heh","dentry":{"prefix":"/meh","dst":"/heh"}}}'

    run(go())


def test_delegator_json_errors(run) -> None:
    async def go() -> None:
        async with running(proxy_yaml("/svc => /$/inet/127.0.0.1/1")) as a:
            post = lambda body, ct="application/json": a.call("POST", "/delegator.json", data=body, headers={"Content-Type": ct})  # noqa: E731
            assert (await post('{"dtab": "/a=>", "path": "/a"}'))[::2] == (
                400, "Invalid dtab: simple expected but end of input found at '/a=>[]'")
            assert (await post('{"dtab": "", "path": "/foo^bar"}'))[::2] == (
                400, "Invalid path: end of input expected but '^' found at '/foo[^]bar'")
            assert (await post('{"dtab": "", "path": "invalid-param"}'))[::2] == (
                400, "Invalid path: '/' expected but 'i' found at '[i]nvalid-param'")
            for bad in ("not json", '{"path": "/a"}', '{"dtab": ""}', "[1, 2]", '{"dtab": 1, "path": "/a"}'):
                assert (await post(bad))[::2] == (400, f"Malformed delegation request: {bad}")
            status, _, _ = await post('{"dtab": "", "path": "/a"}', "text/plain")
            assert status == 415
            for method in ("PUT", "DELETE", "PATCH"):
                assert (await a.call(method, "/delegator.json"))[0] == 405
            q = urlencode({"namespace": "nope", "path": "/a", "dtab": ""})
            assert (await a.call("GET", "/delegator.json?" + q))[::2] == (
                501, "Name Interpreter for nope cannot show delegations")
            q = urlencode({"path": "/foo/bar/", "dtab": ""})
            assert (await a.call("GET", "/delegator.json?" + q))[::2] == (
                400, "Invalid path: label char expected but end of input found at '/foo/bar/[]'")

    run(go())


class PendingSet:
    """An address set that never hears from its namer."""

    def to_json(self) -> dict[str, Any]:
        return {"type": "pending"}

    def subscribe(self, callback: Any) -> Any:
        return lambda: None


class PendingNamer:
    def lookup(self, path: Any) -> Any:
        from dtab import Bound, Leaf, Path

        return Leaf(Bound(Path.of("#", "pending", *[e.decode() for e in path.elems]), Path(()), PendingSet()))


def test_delegator_json_times_out_on_pending_addresses(run) -> None:
    async def go() -> None:
        async with running(proxy_yaml("/svc => /$/inet/127.0.0.1/1")) as a:
            a.rt.routers["web"].namers = (namer_entry("/#/pending", PendingNamer()),)
            a.rt.admin.handlers.delegate_timeout_s = 0.2  # 2 s in production (docs/dtab.md §12.1)
            q = urlencode({"namespace": "web", "path": "/svc/x", "dtab": "/svc => /#/pending"})
            assert (await a.call("GET", "/delegator.json?" + q))[::2] == (503, "Request timed out.")

    run(go())


def test_delegator_waits_for_a_pending_set_to_resolve(run) -> None:
    async def go() -> None:
        from dtab import Bound, Leaf, Path
        from proxy.discovery.endpoints import EndpointSet

        eps = EndpointSet()  # pending until the namer hears

        class Namer:
            def lookup(self, path: Any) -> Any:
                return Leaf(Bound(Path.of("#", "late", "web"), Path(()), eps))

        async with running(proxy_yaml("/svc => /$/inet/127.0.0.1/1")) as a:
            a.rt.routers["web"].namers = (namer_entry("/#/late", Namer()),)
            q = urlencode({"namespace": "web", "path": "/svc/web", "dtab": "/svc => /#/late"})
            task = asyncio.ensure_future(a.call("GET", "/delegator.json?" + q))
            while not eps._subscribers:  # the handler is waiting on the set
                await asyncio.sleep(0)
                assert not task.done()
            eps.update([("10.1.2.3", 8080)])
            status, _, text = await task
            assert status == 200
            leaf = json.loads(text)["delegate"]
            assert leaf["bound"]["addr"] == {"type": "bound", "addrs": [{"ip": "10.1.2.3", "port": 8080, "meta": {}}], "meta": {}}

    run(go())


def test_delegator_page_is_served(run) -> None:
    async def go() -> None:
        async with running(proxy_yaml("/svc => /$/inet/127.0.0.1/1")) as a:
            status, headers, text = await a.call("GET", "/delegator")
            assert status == 200 and headers["Content-Type"].startswith("text/html")
            assert "delegator.json" in text and "<script>" in text
            assert "http://" not in text.replace("http://www.w3.org", "")  # nothing off the box
            status, _, _ = await a.call("GET", "/", allow_redirects=False)
            assert status == 302

    run(go())


# -- real traffic: metrics, decisions, what-if ---------------------------------------------------


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_after_a_known_sequence_of_requests(run) -> None:
    async def go() -> None:
        ok, bad = await Backend("ok").start(), await Backend("bad").start()
        dtab = f"/svc/ok => /$/inet/127.0.0.1/{ok.port}; /svc/bad => /$/inet/127.0.0.1/{bad.port}; /svc/gone => /$/inet/127.0.0.1/1"
        try:
            async with running(proxy_yaml(dtab)) as a:
                if not has_telemetry(a.rt):
                    pytest.skip("the data plane does not record telemetry yet (Runtime.telemetry)")
                c = await Client.connect(proxy_port(a.rt))
                for _ in range(3):
                    assert (await c.request("GET", "/", {"host": "ok"})).status == 200
                assert (await c.request("POST", "/", {"host": "ok"}, body=b"12345")).status == 200
                assert (await c.request("GET", "/", {"host": "bad", "x-respond": "status:503"})).status == 503
                # A staging request through an override is counted apart.
                r = await c.request("GET", "/", {"host": "bad", "l5d-dtab": f"/svc/bad => /$/inet/127.0.0.1/{ok.port}"})
                assert r.status == 200 and r.body.startswith(b"ok ")
                assert (await c.request("GET", "/", {"host": "gone"})).status == 502  # connect refused
                await c.close()
                status, headers, text = await a.call("GET", "/admin/metrics/prometheus")
                assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
                m = metric_samples(text)

                def v(name: str, **labels: str) -> float:
                    return m.get((name, tuple(sorted(labels.items()))), 0.0)

                svc_ok = {"router": "web", "service": "/svc/ok", "traffic": "base"}
                assert v("dtabproxy_service_requests_total", **svc_ok) == 4
                assert v("dtabproxy_service_successes_total", **svc_ok) == 4
                assert v("dtabproxy_service_request_bytes_total", **svc_ok) == 5
                assert v("dtabproxy_service_request_latency_seconds_count", **svc_ok) == 4
                assert v("dtabproxy_service_in_flight", **svc_ok) == 0
                svc_bad = {"router": "web", "service": "/svc/bad", "traffic": "base"}
                assert v("dtabproxy_service_requests_total", **svc_bad) == 1
                assert v("dtabproxy_service_failures_total", **svc_bad, **{"class": "5xx"}) == 1
                over = {"router": "web", "service": "/svc/bad", "traffic": "override"}
                assert v("dtabproxy_service_successes_total", **over) == 1
                gone = {"router": "web", "service": "/svc/gone", "traffic": "base"}
                assert v("dtabproxy_service_failures_total", **gone, **{"class": "connect"}) == 1
                client_ok = {"router": "web", "client": f"/$/inet/127.0.0.1/{ok.port}", "traffic": "base"}
                assert v("dtabproxy_client_requests_total", **client_ok) == 4
                client_ok_over = dict(client_ok, traffic="override")
                assert v("dtabproxy_client_requests_total", **client_ok_over) == 1
                ep = dict(client_ok, endpoint=f"127.0.0.1:{ok.port}")
                assert v("dtabproxy_endpoint_successes_total", **ep) == 4
                assert v("dtabproxy_router_requests_total", router="web", traffic="base") == 6
                assert v("dtabproxy_router_requests_total", router="web", traffic="override") == 1
        finally:
            await ok.close()
            await bad.close()

    run(go())


def test_decisions_and_what_if_on_real_requests(run) -> None:
    async def go() -> None:
        v1, v2 = await Backend("v1").start(), await Backend("v2").start()
        dtab = (f"/srv/v1 => /$/inet/127.0.0.1/{v1.port}; /srv/v2 => /$/inet/127.0.0.1/{v2.port};"
                "/svc/web => 0 * /srv/v2 & 1 * /srv/v1")  # fmt: skip
        try:
            async with running(proxy_yaml(dtab)) as a:
                if not has_telemetry(a.rt):
                    pytest.skip("the data plane does not record telemetry yet (Runtime.telemetry)")
                c = await Client.connect(proxy_port(a.rt))
                for _ in range(3):
                    assert (await c.request("GET", "/", {"host": "web"})).body.startswith(b"v1 ")
                r = await c.request("GET", "/", {"host": "web", "l5d-dtab": "/svc/web => /srv/v2"})
                assert r.body.startswith(b"v2 ")
                await c.close()
                data = await a.get_json("/admin/decisions.json?router=web&limit=10")
                ds = data["decisions"]
                assert len(ds) == 4 and data["sample_rate"] == 1.0
                newest, oldest = ds[0], ds[-1]
                assert newest["override"] == "/svc/web=>/srv/v2"
                assert newest["client"] == f"/$/inet/127.0.0.1/{v2.port}"
                assert newest["dentries"] == ["/svc/web => /srv/v2", f"/srv/v2 => /$/inet/127.0.0.1/{v2.port}"]
                assert oldest["service"] == "/svc/web" and oldest["status"] == 200
                assert oldest["endpoint"] == f"127.0.0.1:{v1.port}"
                assert oldest["dentries"][0] == "/svc/web => 0.00*/srv/v2 & /srv/v1"
                assert oldest["branches"] == [{"path": "/svc/web", "index": 1, "weight": 1.0, "share": 1.0, "to": "/srv/v1"}]
                since = await a.get_json(f"/admin/decisions.json?router=web&since={newest['seq'] - 1}")
                assert [d["seq"] for d in since["decisions"]] == [newest["seq"]]

                proposed = dtab.replace("0 * /srv/v2 & 1 * /srv/v1", "/srv/v2")
                status, _, text = await a.call("POST", "/admin/whatif.json", json={"router": "web", "dtab": proposed})
                assert status == 200, text
                res = json.loads(text)["results"]
                assert [r["verdict"] for r in res] == ["same", "moved", "moved", "moved"]
                assert res[1]["after"] == [{"id": f"/$/inet/127.0.0.1/{v2.port}", "share": 1.0}]
                half = dtab.replace("0 * /srv/v2", "1 * /srv/v2")
                res = json.loads((await a.call("POST", "/admin/whatif.json", json={"router": "web", "dtab": half}))[2])["results"]
                assert res[1]["verdict"] == "split" and res[1]["kept"] == 0.5
                status, _, text = await a.call("POST", "/admin/whatif.json", json={"router": "web", "dtab": "/a =>"})
                assert status == 400 and json.loads(text)["offset"] == 5
                assert (await a.call("POST", "/admin/whatif.json", json={"router": "x", "dtab": ""}))[0] == 404
                assert (await a.call("POST", "/admin/whatif.json", data="{}"))[0] == 415
                assert (await a.call("GET", "/admin/decisions.json?router=x"))[0] == 404

                status, _, text = await a.call("PUT", "/admin/sampling?rate=0")
                assert status == 200 and json.loads(text)["web"] == 0.0
                c = await Client.connect(proxy_port(a.rt))
                assert (await c.request("GET", "/", {"host": "web"})).status == 200
                await c.close()
                again = await a.get_json("/admin/decisions.json?router=web&limit=10")
                assert len(again["decisions"]) == 4  # not sampled
                assert (await a.call("PUT", "/admin/sampling?rate=2"))[0] == 400
        finally:
            await v1.close()
            await v2.close()

    run(go())
