"""The io.l5d.k8s.daemonset and io.l5d.k8s.localnode transformers: bound ids (Linkerd's),
node matching by nodeName and the /24 fallback, live derived sets; and through a
router: a route bound with the transformers sends to the right node's proxy."""

from __future__ import annotations

import asyncio

import pytest

from dtab import NEG, Bound, Inet, Leaf, Path, Union, Weighted
from proxy.discovery import EndpointSet
from proxy.discovery.k8s import K8sNamer
from proxy.discovery.k8s_api import ApiTarget
from proxy.discovery.k8s_transform import DaemonSet, LocalNode, chain

from ..integration.harness import Backend, Client, proxy_port, start_proxy
from .apiserver import ApiServer
from .objects import endpoint, endpointslice, service
from .test_namer import GUARD_S, until

K8S = Path.of("#", "io.l5d.k8s", "default", "http", "web")
DS_PREFIX = Path.of("%", "io.l5d.k8s.daemonset", "dtabproxy", "incoming", "l5d")


def bound(addrs, meta=None, ident=K8S) -> Bound:
    return Bound(ident, Path.of("rest"), EndpointSet(addrs, meta=meta or {}))


def test_localnode_keeps_this_nodes_addresses_by_node_name_with_linkerds_ids():
    t = LocalNode(host_network=False, node_name="n1", pod_ip="10.1.1.5")
    src = bound([("10.1.1.7", 80), ("10.1.2.7", 80), ("10.1.1.9", 80)],
                {("10.1.1.7", 80): {"nodeName": "n1"}, ("10.1.2.7", 80): {"nodeName": "n1"}, ("10.1.1.9", 80): {"nodeName": "n2"}})
    out = t.transform_bound(src)
    assert out.id == Path.of("%", "io.l5d.k8s.localnode", "10.1.1.5") + K8S  # Linkerd: POD_IP in the id
    assert out.residual == Path.of("rest")
    # nodeName decides where it is known, whatever the subnet says.
    assert out.addr.addrs == (("10.1.1.7", 80), ("10.1.2.7", 80))
    assert t.transform_bound(src).addr is out.addr  # one derived set per source: clients keep their pools
    # Live: a change of the source is a change of the derived set.
    src.addr.update([("10.1.1.9", 80)], {("10.1.1.9", 80): {"nodeName": "n2"}})
    assert out.addr.state == "neg"  # nothing on this node: Linkerd's Addr.Neg
    src.addr.update([("10.1.1.8", 80)], {("10.1.1.8", 80): {"nodeName": "n1"}})
    assert out.addr.addrs == (("10.1.1.8", 80),) and out.addr.meta == {("10.1.1.8", 80): {"nodeName": "n1"}}
    # Without node names (an /$/inet address): the /24 of POD_IP, Linkerd's rule.
    inet = Bound(Path.of("$", "inet", "10.1.1.20", "80"), Path.EMPTY, Inet("10.1.1.20", 80))
    assert t.transform_bound(inet).addr.addrs == (("10.1.1.20", 80),)
    far = Bound(Path.of("$", "inet", "10.9.9.9", "80"), Path.EMPTY, Inet("10.9.9.9", 80))
    assert t.transform_bound(far).addr.state == "neg"


def test_localnode_with_host_network_uses_node_name_only():
    t = LocalNode(host_network=True, node_name="n1", pod_ip="10.1.1.5")
    out = t.transform_bound(bound([("10.1.1.7", 80), ("10.1.1.8", 80)], {("10.1.1.8", 80): {"nodeName": "n1"}}))
    assert out.id == Path.of("%", "io.l5d.k8s.localnode", "n1") + K8S  # Linkerd: NODE_NAME in the id
    assert out.addr.addrs == (("10.1.1.8", 80),)  # no node name: on no node
    with pytest.raises(ValueError, match="NODE_NAME"):
        LocalNode(host_network=True, node_name=None, pod_ip="10.1.1.5")
    with pytest.raises(ValueError, match="POD_IP"):
        LocalNode(host_network=False, node_name="n1", pod_ip=None)


def test_daemonset_maps_each_address_to_the_proxy_on_its_node():
    gw = EndpointSet([("10.1.1.2", 4141), ("10.1.2.2", 4141)],
                     meta={("10.1.1.2", 4141): {"nodeName": "n1"}, ("10.1.2.2", 4141): {"nodeName": "n2"}})
    t = DaemonSet(gw, host_network=False, prefix=DS_PREFIX)
    src = bound([("10.1.2.7", 8080), ("10.1.2.8", 8080)],
                {("10.1.2.7", 8080): {"nodeName": "n2"}, ("10.1.2.8", 8080): {"nodeName": "n2"}})
    out = t.transform_bound(src)
    assert out.id == DS_PREFIX + K8S
    assert out.addr.addrs == (("10.1.2.2", 4141),)
    assert out.addr.meta == {("10.1.2.2", 4141): {"nodeName": "n2"}}
    src.addr.update([("10.1.1.7", 8080), ("10.1.2.7", 8080)],
                    {("10.1.1.7", 8080): {"nodeName": "n1"}, ("10.1.2.7", 8080): {"nodeName": "n2"}})
    assert out.addr.addrs == (("10.1.1.2", 4141), ("10.1.2.2", 4141))
    # The daemonset moves: every derived set follows.
    gw.update([("10.1.1.3", 4141)], {("10.1.1.3", 4141): {"nodeName": "n1"}})
    assert out.addr.addrs == (("10.1.1.3", 4141),)
    # An endpoint without a node name: the proxy in its /24 (hostNetwork: false only).
    inet = Bound(Path.of("$", "inet", "10.1.1.99", "80"), Path.EMPTY, Inet("10.1.1.99", 80))
    assert t.transform_bound(inet).addr.addrs == (("10.1.1.3", 4141),)
    hn = DaemonSet(gw, host_network=True, prefix=DS_PREFIX)
    assert hn.transform_bound(inet).addr.state == "neg"
    # No proxy on the endpoint's node: Neg, never around the per-host proxies.
    src.addr.update([("10.1.2.7", 8080)], {("10.1.2.7", 8080): {"nodeName": "n2"}})
    assert out.addr.state == "neg"
    gw.set_neg()  # the daemonset's Service is gone
    assert out.addr.state == "failed" and "dtabproxy/incoming/l5d" in (out.addr.cause or "")


def test_the_chain_applies_in_order_through_unions():
    gw = EndpointSet([("10.1.1.2", 4141)], meta={("10.1.1.2", 4141): {"nodeName": "n1"}})
    ds = DaemonSet(gw, host_network=False, prefix=DS_PREFIX)
    ln = LocalNode(host_network=False, node_name="n1", pod_ip="10.1.1.5")
    transform = chain([ds, ln])
    assert chain([]) is None
    a = bound([("10.1.1.7", 80)], {("10.1.1.7", 80): {"nodeName": "n1"}})
    tree = Union((Weighted(1.0, Leaf(a)), Weighted(2.0, NEG)))
    out = transform(tree)
    first = out.weighted[0].tree.value
    assert first.id == Path.of("%", "io.l5d.k8s.localnode", "10.1.1.5") + DS_PREFIX + K8S
    assert first.addr.addrs == (("10.1.1.2", 4141),)
    assert out.weighted[1].tree is NEG


def test_daemonset_gateways_come_from_a_namer_narrowed_to_the_daemonset_service(run):
    async def main():
        server = await ApiServer().start()
        server.put(service("l5d", [("incoming", 4141, 4141)], ns="dtabproxy"))
        server.put(endpointslice("l5d-1", "l5d", [("incoming", 4141)], [endpoint("10.1.1.2", "n1")], ns="dtabproxy"))
        server.put(service("web", [("http", 80, 8080)]))
        namer = K8sNamer(ApiTarget(server.url), namespace="dtabproxy", service="l5d")
        await namer.start()
        try:
            gw = namer.endpoints("dtabproxy", "incoming", "l5d")
            assert gw.addrs == (("10.1.1.2", 4141),) and gw.meta == {("10.1.1.2", 4141): {"nodeName": "n1"}}
            assert namer._services.keys() == {("dtabproxy", "l5d")}  # only that Service was listed
            queries = [q for _, q in server.requests]
            assert any("fieldSelector=metadata.name%3Dl5d" in q or "fieldSelector=metadata.name=l5d" in q for q in queries)
            assert any("labelSelector=kubernetes.io/service-name%3Dl5d" in q or "kubernetes.io%2Fservice-name%3Dl5d" in q for q in queries)
            server.put(endpointslice("l5d-2", "l5d", [("incoming", 4141)], [endpoint("10.1.2.2", "n2")], ns="dtabproxy"))
            await until(gw, lambda s: len(s.addrs) == 2)
        finally:
            await namer.stop()
            await server.stop()

    run(main())


def test_a_router_with_localnode_sends_only_to_this_nodes_endpoints(run, monkeypatch):
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    monkeypatch.setenv("NODE_NAME", "node-a")

    async def main():
        server = await ApiServer().start()
        here, there = await Backend("here").start(), await Backend("there").start()
        server.put(service("web", [("http", 80, 8080)]))
        server.put(endpointslice("web-a", "web", [("http", here.port)], [endpoint("127.0.0.1", "node-a")]))
        server.put(endpointslice("web-b", "web", [("http", there.port)], [endpoint("127.0.0.1", "node-b")]))
        host, port = server.url.split("//")[1].split(":")
        rt = await start_proxy(f"""
namers:
- kind: io.l5d.k8s
  host: {host}
  port: {port}
routers:
- protocol: http
  label: incoming
  dtab: /svc => /#/io.l5d.k8s/default/http;
  interpreter:
    kind: default
    transformers:
    - kind: io.l5d.k8s.localnode
  servers: [{{ip: 127.0.0.1, port: 0}}]
""")
        c = await Client.connect(proxy_port(rt))
        try:
            for _ in range(6):
                r = await asyncio.wait_for(c.request("GET", "/", {"Host": "web"}), GUARD_S)
                assert r.status == 200 and r.header("x-backend") == "here"
            assert there.seen == []
            seen = here.seen[-1]
            assert seen.header("l5d-dst-client") == "/%/io.l5d.k8s.localnode/127.0.0.1/#/io.l5d.k8s/default/http/web"
        finally:
            await c.close()
            await rt.drain()
            await here.close()
            await there.close()
            await server.stop()

    run(main())
