"""A router snapshot: identify a request, assemble its dtab, bind, and pick a client.

Everything per destination is cached by (local dtab, path) in a bounded dict, so the
per-request work after the first request for a name is a dict lookup and a weighted
pick. The snapshot is immutable once built; a config change builds a new one and the
server swaps one reference. No I/O here; `proxy.wire` does that.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Sequence
from typing import Any, Final

import dtab
from dtab import EMPTY, FAIL, NEG, BindError, Bound, Dtab, Leaf, NameTree, Path, Union

from ..errors import NoRoute
from ..upstream.balancer import Client, ClientRegistry

log = logging.getLogger(__name__)

_SVC: Final = Path((b"svc",))

#: Bound on cached routes per router: one per (override, name) seen recently.
ROUTE_CACHE_SIZE: Final = 10_000


class Route:
    """A bound name, ready to pick a client per request."""

    __slots__ = ("service", "service_hdr", "tree", "_pick", "local", "local_hdr", "error")

    def __init__(self, service: Path, tree: NameTree | None, local: Dtab, clients: ClientRegistry, error: str | None = None) -> None:
        self.service = service
        self.service_hdr = service.show().encode("latin-1")
        self.tree = tree
        self.local = local
        self.local_hdr = local.show().encode("latin-1") if local.dentries else b""
        self.error = error
        self._pick = _picker(tree, clients) if tree is not None else None

    def pick(self) -> tuple[Client, Bound, bytes | None] | None:
        """A client for this request: a weighted choice through the unions (spec §9.3);
        None when the branch taken is empty, negative or failed."""
        p = self._pick
        return p() if p is not None else None


def _picker(tree: NameTree, clients: ClientRegistry) -> Any:
    if isinstance(tree, Leaf):
        bound = tree.value
        assert isinstance(bound, Bound)
        residual = bound.residual.show().encode("latin-1") if bound.residual.elems else None
        choice = (clients.get(bound), bound, residual)  # the l5d-dst-residual value, printed once
        return lambda: choice
    if isinstance(tree, Union):
        members = []
        for w in tree.weighted:
            if w.tree is EMPTY and w.weight <= 0:
                continue  # an empty member with no weight takes no traffic (§9.3)
            members.append((w.weight, _picker(w.tree, clients)))
        if not members:
            return lambda: None
        total = sum(w for w, _ in members)
        if total <= 0:  # every weight zero: uniform (§9.3)
            members = [(1.0, p) for _, p in members]
            total = float(len(members))
        cum: list[float] = []
        acc = 0.0
        for w, _ in members:
            acc += w
            cum.append(acc)
        picks = [p for _, p in members]
        rnd = random.random
        bis = bisect.bisect_right
        last = len(picks) - 1

        def pick() -> Any:
            i = bis(cum, rnd() * total)
            return picks[i if i <= last else last]()

        return pick
    assert tree is NEG or tree is FAIL or tree is EMPTY
    return lambda: None


class Router:
    """One router's immutable routing state plus its caches."""

    __slots__ = (
        "label", "base", "namers", "identifier", "policy", "clients", "_routes", "dst_prefix",
        "config",
    )

    def __init__(
        self,
        label: str,
        base: Dtab,
        *,
        identifier: Any,
        namers: Sequence[tuple[Any, Any]] = (),
        policy: Any = None,
        dst_prefix: Path = _SVC,
        clients: ClientRegistry | None = None,
        config: Any = None,
    ) -> None:
        self.label = label
        self.base = dtab.compile(base)
        self.namers = tuple(namers)
        self.identifier = identifier
        self.policy = policy
        self.dst_prefix = dst_prefix
        self.clients = clients or ClientRegistry()
        self._routes: dict[tuple[bytes, Path], Route] = {}
        self.config = config

    def clear_routes(self) -> None:
        """A namer gained or lost a name: every cached bind may be stale."""
        self._routes.clear()

    def route(self, service: Path, local: Dtab, local_key: bytes) -> Route:
        """The bound route for `service` under `base ++ local` (cached)."""
        routes = self._routes
        key = (local_key, service)
        r = routes.get(key)
        if r is not None:
            return r
        table = self.base if not local.dentries else dtab.OverlayTable(self.base, local)
        try:
            tree = dtab.bind(table, service, namers=self.namers)
            r = Route(service, tree, local, self.clients)
        except BindError as exc:
            r = Route(service, None, local, self.clients, error=str(exc))
        if len(routes) >= ROUTE_CACHE_SIZE:
            del routes[next(iter(routes))]
        routes[key] = r
        return r

    def no_route(self, route: Route) -> NoRoute:
        from .l5d import no_route_message

        msg = no_route_message(route.service, self.base.dtab, route.local)
        if route.error:
            msg = f"{msg}\n{route.error}" if msg else route.error
        return NoRoute(msg)
