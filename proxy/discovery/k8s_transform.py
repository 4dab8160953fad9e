"""Linkerd's Kubernetes transformers, for the per-host (DaemonSet) pattern.

A router's `interpreter: {kind: default, transformers: [...]}` applies these in order to
every bound name when a route is bound (`Router.route`); each returns a new bound name
whose addresses are a derived live `EndpointSet`, recomputed whenever its sources
change, so endpoint churn still never rebinds a route.

* `io.l5d.k8s.daemonset` `{namespace, port, service, hostNetwork}`: each address is
  replaced by the address of the daemonset pod (an endpoint of that Service's port)
  on the same node. The outgoing router (4140) thereby sends to the proxy on the
  destination's node, whose incoming router (4141) delivers to the app; the request,
  Host header included, is forwarded unchanged. Bound id:
  `/%/io.l5d.k8s.daemonset/<namespace>/<port>/<service>` ++ the original id.
* `io.l5d.k8s.localnode` `{hostNetwork}`: only the addresses on this node are kept.
  Bound id: `/%/io.l5d.k8s.localnode/<POD_IP>` ++ the original id, or with
  `hostNetwork: true`, `/%/io.l5d.k8s.localnode/<NODE_NAME>` ++ it (Linkerd's ids).

"On the same node": an endpoint and a daemonset pod (or this proxy, `NODE_NAME`) are on
one node when their `nodeName`s (from the EndpointSlice or Endpoints) are equal. For an
address without a node name (not from the Kubernetes namer, or an endpoint the API
gave none), Linkerd 1's rule applies where it can: with `hostNetwork: false` the pod
networks of a node are one /24, so the same /24 (of POD_IP, or of the daemonset pod)
counts as the same node; with `hostNetwork: true` the proxies carry node addresses, no
subnet tells anything, and such an address is on no node. An address that is not an
IP literal is on no node either. A name whose addresses map to nothing binds to a
negative set (Linkerd's `Addr.Neg`): no requests go around the per-host proxies.

Owns: the derived sets. Must not: do I/O (the daemonset's own endpoints come from a
`K8sNamer` narrowed to its Service, which the runtime starts and stops).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from dtab import Bound, Inet, Leaf, NameTree, Path, Union, Weighted

from .endpoints import BOUND, FAILED, NEG, PENDING, Addr, EndpointSet

log = logging.getLogger(__name__)

NODE_NAME: Final = "nodeName"
LOCALNODE_PREFIX: Final = Path.of("%", "io.l5d.k8s.localnode")
_NO_META: Mapping[str, str] = {}


def _net24(host: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The /24 of an IPv4 address (Linkerd's netmask 255.255.255.0); IPv6 and names: None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version != 4:
        return None
    return ipaddress.ip_network(f"{host}/24", strict=False)


class _Derived:
    """A derived set and the unsubscribe functions of what it follows."""

    __slots__ = ("endpoints", "unsubscribe")

    def __init__(self, endpoints: EndpointSet) -> None:
        self.endpoints = endpoints
        self.unsubscribe: list[Callable[[], None]] = []


class Transformer:
    """The shared part: map each `Bound` leaf of a tree to `prefix ++ id` with a derived
    set, one per source set (so a client, keyed by id and set, keeps its pools)."""

    __slots__ = ("prefix", "_derived")

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        # id(source set), or an Inet by value -> (source, derived); the source is held, so
        # its id is not reused while the entry lives.
        self._derived: dict[Any, tuple[Any, _Derived]] = {}

    def transform(self, tree: NameTree) -> NameTree:
        if isinstance(tree, Leaf):
            value = tree.value
            return Leaf(self.transform_bound(value)) if isinstance(value, Bound) else tree
        if isinstance(tree, Union):
            return Union(tuple(Weighted(w.weight, self.transform(w.tree)) for w in tree.weighted))
        return tree  # NEG, FAIL, EMPTY (a bound tree has no Alt left)

    def transform_bound(self, bound: Bound) -> Bound:
        source = bound.addr
        key = source if isinstance(source, Inet) else id(source)
        hit = self._derived.get(key)
        if hit is None:
            derived = _Derived(EndpointSet())
            self._derived[key] = (source, derived)
            self._follow(source, derived)
            self._recompute(source, derived.endpoints)
        else:
            derived = hit[1]
        return Bound(self.prefix + bound.id, bound.residual, derived.endpoints)

    def _follow(self, source: Any, derived: _Derived) -> None:
        if isinstance(source, EndpointSet):
            derived.unsubscribe.append(source.subscribe(lambda s: self._recompute(s, derived.endpoints)))

    def _recompute(self, source: Any, out: EndpointSet) -> None:
        if isinstance(source, Inet):
            self.apply(((source.host, source.port),), _NO_META_MAP, out)
        elif isinstance(source, EndpointSet):
            if source.state == BOUND:
                self.apply(source.addrs, source.meta, out)
            else:
                _mirror(source, out)
        else:
            out.set_failed(f"cannot place the addresses of {source!r} on a node")

    def apply(self, addrs: Sequence[Addr], meta: Mapping[Addr, Mapping[str, str]], out: EndpointSet) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for _, d in self._derived.values():
            for u in d.unsubscribe:
                u()
        self._derived.clear()


_NO_META_MAP: Mapping[Addr, Mapping[str, str]] = {}


def _mirror(source: EndpointSet, out: EndpointSet) -> None:
    if source.state == NEG:
        out.set_neg()
    elif source.state == FAILED:
        out.set_failed(source.cause or "failed")
    elif source.state == PENDING:
        out.set_pending()


class LocalNode(Transformer):
    """`io.l5d.k8s.localnode`: keep the addresses on this node."""

    __slots__ = ("node_name", "host_network", "_net")

    def __init__(self, *, host_network: bool, node_name: str | None, pod_ip: str | None,
                 prefix: Path = LOCALNODE_PREFIX) -> None:  # fmt: skip
        """Linkerd requires POD_IP (or NODE_NAME with `hostNetwork: true`); the runtime
        checks the environment and names the config key when one is missing."""
        local = node_name if host_network else pod_ip
        if not local:
            raise ValueError("NODE_NAME must be set to the node's name" if host_network
                             else "POD_IP must be set to the pod's IP")  # fmt: skip
        super().__init__(prefix + Path.of(local))
        self.node_name = node_name or None
        self.host_network = host_network
        self._net = None if host_network or pod_ip is None else _net24(pod_ip)

    def is_local(self, host: str, meta: Mapping[str, str]) -> bool:
        node = meta.get(NODE_NAME)
        if node is not None and self.node_name is not None:
            return node == self.node_name
        if self._net is None:
            return False
        net = _net24(host)
        return net is not None and net == self._net

    def apply(self, addrs: Sequence[Addr], meta: Mapping[Addr, Mapping[str, str]], out: EndpointSet) -> None:
        kept = [a for a in addrs if self.is_local(a[0], meta.get(a, _NO_META))]
        if not kept:
            out.set_neg()
            return
        out.update(kept, {a: meta[a] for a in kept if a in meta})


class DaemonSet(Transformer):
    """`io.l5d.k8s.daemonset`: each address becomes the daemonset pod on its node.
    `gateways` is the live set of the daemonset Service's port (`K8sNamer.endpoints`)."""

    __slots__ = ("gateways", "host_network", "_unsub")

    def __init__(self, gateways: EndpointSet, *, host_network: bool, prefix: Path) -> None:
        super().__init__(prefix)
        self.gateways = gateways
        self.host_network = host_network
        self._unsub = gateways.subscribe(lambda _: self._gateways_changed())

    def _gateways_changed(self) -> None:
        for source, derived in list(self._derived.values()):
            self._recompute(source, derived.endpoints)

    def apply(self, addrs: Sequence[Addr], meta: Mapping[Addr, Mapping[str, str]], out: EndpointSet) -> None:
        gw = self.gateways
        if gw.state != BOUND:
            if gw.state == PENDING:
                out.set_pending()
            else:
                out.set_failed(f"the daemonset {self.prefix.drop(1).show()} has no endpoints"
                               + (f" ({gw.cause})" if gw.cause else " (no such Service or port)"))  # fmt: skip
            return
        gw_meta = gw.meta
        by_node: dict[str, list[Addr]] = {}
        by_net: dict[Any, list[Addr]] = {}
        for g in gw.addrs:
            node = gw_meta.get(g, _NO_META).get(NODE_NAME)
            if node is not None:
                by_node.setdefault(node, []).append(g)
            if not self.host_network:
                net = _net24(g[0])
                if net is not None:
                    by_net.setdefault(net, []).append(g)
        selected: dict[Addr, None] = {}
        for a in addrs:
            node = meta.get(a, _NO_META).get(NODE_NAME)
            if node is not None and by_node:
                for g in by_node.get(node, ()):
                    selected[g] = None
            elif not self.host_network:
                net = _net24(a[0])
                for g in by_net.get(net, ()) if net is not None else ():
                    selected[g] = None
        if not selected:
            out.set_neg()
            return
        out.update(selected, {g: gw_meta[g] for g in selected if g in gw_meta})

    def close(self) -> None:
        self._unsub()
        super().close()


def chain(transformers: Sequence[Transformer]) -> Callable[[NameTree], NameTree] | None:
    """One function applying `transformers` in order, or None when there are none."""
    if not transformers:
        return None
    ts = tuple(transformers)

    def transform(tree: NameTree) -> NameTree:
        for t in ts:
            tree = t.transform(tree)
        return tree

    return transform
