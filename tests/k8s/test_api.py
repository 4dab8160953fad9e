"""The client (proxy/discovery/k8s_api.py) against the test API server, and the test
server's protocol itself (what a kube-apiserver sends, byte for byte as far as we use
it), over real sockets on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import json
import os
import ssl

import pytest

from proxy.discovery.k8s_api import (
    ApiConfigError,
    ApiError,
    ApiTarget,
    Conflict,
    Gone,
    K8sApi,
    NotFound,
    Reflector,
    api_target,
    collection_path,
)

from ..integration.grpc_helpers import make_cert
from .apiserver import ApiServer, parse_label_selector
from .objects import dtab_object, endpointslice, service

GUARD_S = 10.0


async def raw(server: ApiServer, target: str) -> tuple[bytes, bytes]:
    """A raw HTTP/1.1 GET: the response head and the (still chunked) body until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: k8s\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), GUARD_S)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def test_lists_page_with_limit_and_continue_and_select_by_label_and_field(run):
    async def main():
        server = await ApiServer().start()
        for i in range(7):
            server.put(service(f"s{i}", [("http", 80, 80)], ns="a" if i % 2 else "b", labels={"tier": "web" if i < 4 else "db"}))
        api = K8sApi(ApiTarget(server.url))
        try:
            items, rv = await api.list_items("/api/v1/services")
            assert len(items) == 7 and rv == str(server.rv)
            import proxy.discovery.k8s_api as mod

            old, mod.LIST_PAGE = mod.LIST_PAGE, 3
            try:
                paged, rv2 = await api.list_items("/api/v1/services")
            finally:
                mod.LIST_PAGE = old
            assert [i["metadata"]["name"] for i in paged] == [i["metadata"]["name"] for i in items] and rv2 == rv
            assert sum("continue=" in q for _, q in server.requests) == 2
            web, _ = await api.list_items("/api/v1/services", {"labelSelector": "tier=web"})
            assert {i["metadata"]["name"] for i in web} == {"s0", "s1", "s2", "s3"}
            not_web, _ = await api.list_items("/api/v1/namespaces/a/services", {"labelSelector": "tier notin (web),tier"})
            assert {i["metadata"]["name"] for i in not_web} == {"s5"}
            one, _ = await api.list_items("/api/v1/services", {"fieldSelector": "metadata.name=s3,metadata.namespace=a"})
            assert [i["metadata"]["name"] for i in one] == ["s3"]
            with pytest.raises(ApiError) as exc:
                await api.list_items("/api/v1/services", {"fieldSelector": "spec.type=x"})
            assert exc.value.status == 400 and "field label not supported" in exc.value.message
            with pytest.raises(NotFound):
                await api.list_items("/apis/nope.example.com/v1/things")
            # A continue token from before a compaction is 410 Gone.
            head, body = await raw(server, "/api/v1/services?limit=2")
            token = json.loads(body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0] if b"chunked" in head.lower() else body)["metadata"]["continue"]
            server.compact()
            with pytest.raises(Gone):
                await api.request("GET", "/api/v1/services", params={"limit": "2", "continue": token})
        finally:
            await api.close()
            await server.stop()

    run(main())


def test_watch_stream_is_chunked_json_lines_with_bookmarks_and_a_410_error_event(run):
    async def main():
        server = await ApiServer().start()
        server.put(service("web", [("http", 80, 80)]))
        start_rv = server.rv
        try:
            # The legacy path of one object, from a version: the history replayed, then live.
            server.put(service("web", [("http", 81, 81)]))
            task = asyncio.ensure_future(raw(server, f"/api/v1/watch/namespaces/default/services/web?resourceVersion={start_rv}&allowWatchBookmarks=true&timeoutSeconds=5"))
            await server.wait_watches("services", 1)
            server.put(service("other", [("http", 80, 80)]))  # not this object: not sent
            server.bookmark()
            server.compact()
            server.expire_watches()
            head, body = await task
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert b"transfer-encoding: chunked" in head.lower() and b"content-type: application/json" in head.lower()
            lines = _dechunk(body).splitlines()
            events = [json.loads(x) for x in lines]
            assert [e["type"] for e in events] == ["MODIFIED", "BOOKMARK", "ERROR"]
            assert events[0]["object"]["spec"]["ports"][0]["port"] == 81
            assert events[1]["object"] == {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": str(server.rv)}}
            assert events[2]["object"]["kind"] == "Status" and events[2]["object"]["code"] == 410
            # Watching from a compacted version is an ERROR event at once.
            head, body = await raw(server, f"/api/v1/services?watch=true&resourceVersion={start_rv}")
            (only,) = [json.loads(x) for x in _dechunk(body).splitlines()]
            assert only["type"] == "ERROR" and only["object"]["reason"] == "Expired"
            # Without a version: the current objects as ADDED, then timeoutSeconds ends it cleanly.
            head, body = await raw(server, "/api/v1/services?watch=1&timeoutSeconds=0")
            assert [json.loads(x)["type"] for x in _dechunk(body).splitlines()] == ["ADDED", "ADDED"]
            # A label selector on a watch: an object leaving the selection is DELETED for it.
            server.put(service("lab", [("http", 80, 80)], labels={"a": "1"}))
            rv = server.rv
            task = asyncio.ensure_future(raw(server, f"/api/v1/services?watch=true&labelSelector=a%3D1&resourceVersion={rv}&timeoutSeconds=5"))
            await server.wait_watches("services", 4)
            server.put(service("lab", [("http", 80, 80)], labels={"a": "2"}))
            server.put(service("lab", [("http", 80, 80)], labels={"a": "1"}))
            server.end_watches()
            _, body = await task
            assert [json.loads(x)["type"] for x in _dechunk(body).splitlines()] == ["DELETED", "ADDED"]
        finally:
            await server.stop()

    run(main())


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        if not size_line:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        body = rest[size + 2 :]
    raise AssertionError("the stream did not end with the last chunk")


def test_update_with_a_stale_resource_version_is_409_and_create_twice_is_409(run):
    async def main():
        server = await ApiServer().start()
        api = K8sApi(ApiTarget(server.url))
        path = collection_path("l5d.io/v1alpha1", "dtabs", "ns")
        try:
            created = await api.request("POST", path, body=dtab_object("d", [("/svc", "/a")], ns="ns"))
            rv = created["metadata"]["resourceVersion"]
            with pytest.raises(Conflict) as exc:
                await api.request("POST", path, body=dtab_object("d", [("/svc", "/a")], ns="ns"))
            assert exc.value.reason == "AlreadyExists"
            body = dtab_object("d", [("/svc", "/b")], ns="ns")
            body["metadata"]["resourceVersion"] = rv
            updated = await api.request("PUT", f"{path}/d", body=body)
            assert updated["metadata"]["resourceVersion"] != rv and updated["dentries"][0]["dst"] == "/b"
            with pytest.raises(Conflict) as exc:
                await api.request("PUT", f"{path}/d", body=body)  # the old version again
            assert exc.value.status == 409 and "the object has been modified" in exc.value.message
            with pytest.raises(NotFound):
                await api.request("PUT", f"{path}/nope", body=dtab_object("nope", [], ns="ns"))
        finally:
            await api.close()
            await server.stop()

    run(main())


def test_discovery_says_which_groups_and_resources_are_served(run):
    async def main():
        with_slices = await ApiServer().start()
        without = await ApiServer(endpointslices=False).start()
        a, b = K8sApi(ApiTarget(with_slices.url)), K8sApi(ApiTarget(without.url))
        try:
            assert await a.serves("discovery.k8s.io/v1", "endpointslices")
            assert not await b.serves("discovery.k8s.io/v1", "endpointslices")
            assert await b.serves("v1", "endpoints")
            assert await a.group_versions("split.smi-spec.io") == ["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"]
            assert await a.group_versions("example.com") is None
            apis = await a.request("GET", "/apis")
            assert "discovery.k8s.io" in [g["name"] for g in apis["groups"]]
            assert (await a.request("GET", "/api"))["versions"] == ["v1"]
        finally:
            await a.close()
            await b.close()
            await with_slices.stop()
            await without.stop()

    run(main())


def test_in_cluster_uses_the_ca_and_rereads_a_rotated_token(run, tmp_path):
    cert, key = make_cert(tmp_path)
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    (sa / "token").write_text("first-token\n")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "0"}
    with pytest.raises(ApiConfigError, match="KUBERNETES_SERVICE_HOST"):
        api_target(None, None, environ={})
    with pytest.raises(ApiConfigError, match="token"):
        api_target(None, None, environ=env, sa_dir=str(tmp_path / "missing"))

    async def main():
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        server = await ApiServer(tokens={"first-token"}, ssl=ctx).start()
        env["KUBERNETES_SERVICE_PORT"] = str(server.port)
        target = api_target(None, None, environ=env, sa_dir=str(sa))
        assert target.base_url == f"https://127.0.0.1:{server.port}" and target.token_file
        server.put(service("web", [("http", 80, 80)]))
        api = K8sApi(target)
        events: list[str] = []
        r = Reflector(api, "/api/v1/services", what="services", on_list=lambda items: events.append(f"list {len(items)}"),
                      on_event=lambda t, o: events.append(f"{t} {o['metadata']['name']}"))
        try:
            r.start()
            await asyncio.wait_for(r.synced.wait(), GUARD_S)
            await server.wait_watches("services", 1)
            # The kubelet rotates the token: a new file behind the same path; the old one expires.
            tmp = sa / "token.new"
            tmp.write_text("second-token\n")
            os.replace(tmp, sa / "token")
            server.tokens = {"second-token"}
            server.drop_watches()
            await server.wait_watches("services", 2)
            server.put(service("late", [("http", 80, 80)]))
            await asyncio.wait_for(r.wait_version(str(server.rv)), GUARD_S)
            assert events == ["list 1", "ADDED late"]
            auth = [q for _, q in server.requests]
            assert auth  # every request carried a token the server took (401 otherwise)
        finally:
            await r.stop()
            await api.close()
            await server.stop()

    run(main())


def test_failures_back_off_and_recover_without_listing_again(run):
    async def main():
        server = await ApiServer().start()
        server.put(endpointslice("e", "web", [("http", 80)], []))
        api = K8sApi(ApiTarget(server.url))
        seen: list[str] = []
        r = Reflector(api, "/apis/discovery.k8s.io/v1/endpointslices", what="slices",
                      on_list=lambda items: seen.append("list"), on_event=lambda t, o: seen.append(t))
        try:
            r.start()
            await asyncio.wait_for(r.synced.wait(), GUARD_S)
            await server.wait_watches("endpointslices", 1)
            server.fail_next(3, 500)  # the next three watch attempts fail
            server.drop_watches()
            await server.wait_watches("endpointslices", 2)
            server.put(endpointslice("e", "web", [("http", 81)], []))
            await asyncio.wait_for(r.wait_version(str(server.rv)), GUARD_S)
            assert seen == ["list", "MODIFIED"] and r.errors >= 3 and r.lists == 1
            assert r.last_error is None  # resumed
        finally:
            await r.stop()
            await api.close()
            await server.stop()

    run(main())


def test_label_selector_grammar():
    assert parse_label_selector("a=b,!c,d in (x, y),e notin (z),f,g!=h") == [
        ("=", "a", ("b",)), ("!exists", "c", ()), ("in", "d", ("x", "y")), ("notin", "e", ("z",)),
        ("exists", "f", ()), ("!=", "g", ("h",)),
    ]
    assert parse_label_selector("") == []
