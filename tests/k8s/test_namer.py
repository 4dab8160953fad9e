"""The io.l5d.k8s namer against the test API server over real sockets, with
EndpointSlices and with core v1 Endpoints, on asyncio and uvloop.

Changes are awaited through the namer's own callbacks (an EndpointSet subscriber, the
names subscriber) or the server's watch counters; timeouts are failure guards only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from dtab import NEG, Bound, Inet, Leaf, Path, bind, read_dtab
from proxy.discovery import EndpointSet
from proxy.discovery.k8s import K8sNamer
from proxy.discovery.k8s_api import ApiTarget

from .apiserver import ApiServer
from .objects import backends, endpoint, endpoints, endpointslice, service

GUARD_S = 10.0

pytestmark = pytest.mark.parametrize("slices", [True, False], ids=["endpointslices", "endpoints"])


def target(server: ApiServer) -> ApiTarget:
    return ApiTarget(server.url)


async def until(es: EndpointSet, check: Callable[[EndpointSet], bool]) -> None:
    """Wait for `check(es)` to hold, woken by the set's own change callbacks."""
    event = asyncio.Event()
    unsubscribe = es.subscribe(lambda _: event.set())
    try:
        while not check(es):
            event.clear()
            await asyncio.wait_for(event.wait(), GUARD_S)
    finally:
        unsubscribe()


async def started(server: ApiServer, **kw) -> K8sNamer:
    namer = K8sNamer(target(server), **kw)
    await namer.start()
    return namer


def bound(tree) -> Bound:
    assert isinstance(tree, Leaf) and isinstance(tree.value, Bound), tree
    return tree.value


def test_lookup_binds_named_and_numbered_ports_and_missing_names_are_neg(run, slices):
    async def main():
        server = await ApiServer(endpointslices=slices).start()
        backends(server, "web", [("http", 80, 8080), ("admin", 9990, "admin-port")], slices,
                 [("10.0.0.1", "node-a"), ("10.0.0.2", "node-b")])
        namer = await started(server)
        try:
            assert namer.mode == ("endpointslices" if slices else "endpoints")
            b = bound(namer.lookup(Path.of("default", "http", "web", "api", "v1")))
            assert b.id == Path.of("#", "io.l5d.k8s", "default", "http", "web")
            assert b.residual == Path.of("api", "v1")
            assert b.addr.addrs == (("10.0.0.1", 8080), ("10.0.0.2", 8080))
            assert b.addr.meta[("10.0.0.1", 8080)] == {"nodeName": "node-a"}
            # A number goes through the Service's port to the port the endpoints serve.
            by_number = bound(namer.lookup(Path.of("default", "80", "web")))
            assert by_number.id == Path.of("#", "io.l5d.k8s", "default", "80", "web")
            assert by_number.addr.addrs == b.addr.addrs
            # Linkerd lower-cases the name's segments.
            assert bound(namer.lookup(Path.of("Default", "HTTP", "Web"))).addr is b.addr
            assert namer.lookup(Path.of("default", "http", "nope")) is NEG  # no such Service
            assert namer.lookup(Path.of("default", "grpc", "web")) is NEG  # no such port
            assert namer.lookup(Path.of("default", "8080", "web")) is NEG  # not a Service port number
            assert namer.lookup(Path.of("other", "http", "web")) is NEG
            assert namer.lookup(Path.of("default", "http")) is NEG
            # A missing service is Neg, so an alternative falls through to the next branch.
            table = read_dtab("/svc => /#/io.l5d.k8s/default/http | /$/inet/127.0.0.1/9;")
            fell = bind(table, Path.of("svc", "nope"), namers=[(namer.bind_prefix, namer)])
            assert isinstance(fell, Leaf) and fell.value.addr == Inet("127.0.0.1", 9)
            got = bind(table, Path.of("svc", "web"), namers=[(namer.bind_prefix, namer)])
            assert got.value.addr is b.addr
        finally:
            await namer.stop()
            await server.stop()

    run(main())


def test_endpoint_changes_swap_the_address_set_in_place_without_a_relist(run, slices):
    async def main():
        server = await ApiServer(endpointslices=slices).start()
        backends(server, "web", [("http", 80, 8080)], slices, [("10.0.0.1", "n1")])
        namer = await started(server)
        try:
            es = bound(namer.lookup(Path.of("default", "http", "web"))).addr
            first = es.addrs
            backends(server, "web", [("http", 80, 8080)], slices, [("10.0.0.1", "n1"), ("10.0.0.3", "n2")])
            await until(es, lambda s: len(s.addrs) == 2)
            assert es.addrs == (("10.0.0.1", 8080), ("10.0.0.3", 8080))
            assert es.addrs is not first  # a new tuple: one reference swap
            assert bound(namer.lookup(Path.of("default", "http", "web"))).addr is es  # same live set
            names_version = namer.version
            # Every endpoint leaves: the Service still exists, so the name stays bound, empty.
            if slices:
                server.delete("endpointslices", "default", "web-abc")
            else:
                server.put(endpoints("web", [("http", 8080)], []))
            await until(es, lambda s: s.addrs == ())
            assert es.state == "bound"
            assert namer.version == names_version  # endpoint churn never invalidates bindings
            assert server.lists == {"services": 1, "endpointslices" if slices else "endpoints": 1}  # never polled
        finally:
            await namer.stop()
            await server.stop()

    run(main())


def test_a_service_appearing_or_going_tells_the_names_subscribers(run, slices):
    async def main():
        server = await ApiServer(endpointslices=slices).start()
        namer = await started(server)
        changed = asyncio.Event()
        namer.subscribe_names(lambda _: changed.set())
        try:
            assert namer.lookup(Path.of("default", "http", "late")) is NEG
            backends(server, "late", [("http", 80, 8080)], slices, [("10.0.0.9", None)])
            await asyncio.wait_for(changed.wait(), GUARD_S)
            es = bound(namer.lookup(Path.of("default", "http", "late"))).addr
            await until(es, lambda s: s.addrs == (("10.0.0.9", 8080),))
            changed.clear()
            server.delete("services", "default", "late")
            await asyncio.wait_for(changed.wait(), GUARD_S)
            assert es.state == "neg"
            assert namer.lookup(Path.of("default", "http", "late")) is NEG
        finally:
            await namer.stop()
            await server.stop()

    run(main())


def test_410_gone_relists_and_sees_deletions_made_while_disconnected(run, slices):
    async def main():
        server = await ApiServer(endpointslices=slices).start()
        backends(server, "web", [("http", 80, 8080)], slices, [("10.0.0.1", None)])
        backends(server, "gone", [("http", 80, 8080)], slices, [("10.0.0.2", None)])
        namer = await started(server)
        collection = "endpointslices" if slices else "endpoints"
        try:
            web = bound(namer.lookup(Path.of("default", "http", "web"))).addr
            gone = bound(namer.lookup(Path.of("default", "http", "gone"))).addr
            # The watches fail for a while; meanwhile objects change and history is compacted.
            server.fail_next(1000, 503)
            server.drop_watches()
            server.delete("services", "default", "gone")
            backends(server, "web", [("http", 80, 8080)], slices, [("10.0.0.5", None)])
            server.compact()
            server._fail.clear()
            await until(gone, lambda s: s.state == "neg")
            await until(web, lambda s: s.addrs == (("10.0.0.5", 8080),))
            assert server.lists["services"] == 2 and server.lists[collection] == 2  # one relist each
            assert all(r.relists == 1 for r in namer.reflectors)
        finally:
            await namer.stop()
            await server.stop()

    run(main())


def test_an_error_event_with_410_relists(run, slices):
    async def main():
        server = await ApiServer(endpointslices=slices).start()
        backends(server, "web", [("http", 80, 8080)], slices, [("10.0.0.1", None)])
        namer = await started(server)
        try:
            web = bound(namer.lookup(Path.of("default", "http", "web"))).addr
            server.compact()
            server.expire_watches()  # ERROR {code: 410} on every open watch
            await server.wait_watches("services", 2)
            backends(server, "web", [("http", 80, 8080)], slices, [("10.0.0.7", None)])
            await until(web, lambda s: s.addrs == (("10.0.0.7", 8080),))
            assert server.lists["services"] == 2
        finally:
            await namer.stop()
            await server.stop()

    run(main())


def test_a_dropped_watch_resumes_from_the_last_version_and_bookmarks_move_it(run, slices):
    async def main():
        server = await ApiServer(endpointslices=slices).start()
        backends(server, "web", [("http", 80, 8080)], slices, [("10.0.0.1", None)])
        namer = await started(server)
        collection = "endpointslices" if slices else "endpoints"
        try:
            web = bound(namer.lookup(Path.of("default", "http", "web"))).addr
            await server.wait_watches(collection, 1)
            # Bookmarks: the watch asked for them, and they move its version forward.
            server.put(service("other", [("http", 80, 8080)], ns="elsewhere"))
            server.bookmark()
            services = next(r for r in namer.reflectors if r.what.startswith("services"))
            eps = next(r for r in namer.reflectors if r.what.startswith(collection))
            await asyncio.wait_for(eps.wait_version(str(server.rv)), GUARD_S)
            assert eps.bookmarks == 1
            bookmarked = eps.resource_version
            server.drop_watches()
            await server.wait_watches(collection, 2)
            resumed = [q for m, q in server.requests if collection in q and "watch=true" in q][-1]
            assert f"resourceVersion={bookmarked}" in resumed and "allowWatchBookmarks=true" in resumed
            backends(server, "web", [("http", 80, 8080)], slices, [("10.0.0.4", None)])
            await until(web, lambda s: s.addrs == (("10.0.0.4", 8080),))
            assert server.lists == {"services": 1, collection: 1}  # reconnected, not relisted
            await server.wait_watches("services", 2)
            assert services.watches == 2 and eps.relists == 0
        finally:
            await namer.stop()
            await server.stop()

    run(main())


def test_ready_endpoints_first_and_terminating_ones_only_when_none_is_ready(run, slices):
    if not slices:
        pytest.skip("conditions exist on EndpointSlices only")

    async def main():
        server = await ApiServer().start()
        server.put(service("web", [("http", 80, 8080)]))
        server.put(endpointslice("web-1", "web", [("http", 8080)], [
            endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False, serving=True, terminating=True),
            endpoint("10.0.0.3", ready=False, serving=False)]))
        # A second slice of the same service with the port on another number.
        server.put(endpointslice("web-2", "web", [("http", 8081)], [endpoint("10.0.1.1")]))
        namer = await started(server)
        try:
            web = bound(namer.lookup(Path.of("default", "http", "web"))).addr
            assert set(web.addrs) == {("10.0.0.1", 8080), ("10.0.1.1", 8081)}
            server.put(endpointslice("web-1", "web", [("http", 8080)], [
                endpoint("10.0.0.1", ready=False, serving=True, terminating=True),
                endpoint("10.0.0.3", ready=False, serving=False)]))
            server.delete("endpointslices", "default", "web-2")
            await until(web, lambda s: s.addrs == (("10.0.0.1", 8080),))  # serving while terminating
        finally:
            await namer.stop()
            await server.stop()

    run(main())


def test_label_selector_adds_the_label_value_to_the_name(run, slices):
    async def main():
        server = await ApiServer(endpointslices=slices).start()
        server.put(service("web", [("http", 80, 8080)], labels={"version": "v2"}))
        backends(server, "web", [("http", 80, 8080)], slices, [("10.0.0.1", None)])
        server.put(service("web", [("http", 80, 8080)], labels={"version": "v2"}))
        namer = await started(server, label_selector="version")
        try:
            b = bound(namer.lookup(Path.of("default", "http", "web", "v2", "rest")))
            assert b.id == Path.of("#", "io.l5d.k8s", "default", "http", "web", "v2")
            assert b.residual == Path.of("rest")
            assert namer.lookup(Path.of("default", "http", "web", "v1")) is NEG
            assert namer.lookup(Path.of("default", "http", "web")) is NEG  # the value segment is required
            assert "labelSelector=version" in [q for _, q in server.requests if "/services" in q][0]
        finally:
            await namer.stop()
            await server.stop()

    run(main())


def test_names_asked_before_the_api_answers_are_pending_then_bound(run, slices):
    async def main():
        probe = await ApiServer(endpointslices=slices).start()
        port = probe.port
        await probe.stop()  # nothing listens there now
        namer = K8sNamer(ApiTarget(f"http://127.0.0.1:{port}"))
        namer.start_wait_s = 0.05
        await namer.start()
        changed = asyncio.Event()
        namer.subscribe_names(lambda _: changed.set())
        server = ApiServer(endpointslices=slices)
        server.port = port
        try:
            early = bound(namer.lookup(Path.of("default", "http", "web")))
            assert early.addr.state == "pending"
            backends(server, "web", [("http", 80, 8080)], slices, [("10.0.0.1", None)])
            await server.start()  # the namer's backoff finds it
            await asyncio.wait_for(changed.wait(), GUARD_S)
            b = bound(namer.lookup(Path.of("default", "http", "web")))
            assert b.addr.addrs == (("10.0.0.1", 8080),)
            assert namer.lookup(Path.of("default", "http", "nope")) is NEG
        finally:
            await namer.stop()
            await server.stop()

    run(main())
