"""A router snapshot: identify a request, assemble its dtab, bind, and pick a client.

Everything per destination is cached by (local dtab, path) in a bounded dict, so the
per-request work after the first request for a name is a dict lookup and a weighted
pick. A router with match rules (`proxy.route.rules`) routes through `select`, which
adds the matched rules' overlay (base ++ rules ++ ctx ++ user, docs/dtab.md §10) and keys the
cache by the set of matched rules too; a router without rules has `rules is None`,
and the wire layer keeps its plain path. The snapshot is immutable once built; a config change builds a new one and the
server swaps one reference. No I/O here; `proxy.wire` does that.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import dtab
from config.policy import service_policy
from dtab import EMPTY, FAIL, NEG, BindError, Bound, Dtab, Leaf, NameTree, Path, Union

from ..errors import NoRoute
from ..telemetry.metrics import ClientStats, RouterStats, Stats
from ..upstream.endpoint import Client, ClientRegistry
from ..upstream.policy import NONE, RequestPolicy, request_policy, retry_budget
from .rules import Actions, Overlay, RuleSet, hash_value, sticky_u

if TYPE_CHECKING:
    from config.schema import HashOn, RuleConfig

    from .identify import Identified

log = logging.getLogger(__name__)

_SVC: Final = Path((b"svc",))

#: Bound on cached routes per router: one per (override, name) seen recently.
ROUTE_CACHE_SIZE: Final = 10_000
#: Per-name policy state (the service's retry budget and its per-client attempt settings):
#: bounded as the route cache is, so names from clients (random Hosts) cannot grow it.
SERVICE_CACHE_SIZE: Final = 10_000


def _newest_half(cache: dict[Any, Any]) -> dict[Any, Any]:
    """A full cache keeps its newer half, rebuilt at once: amortised O(1) per insert.
    (Deleting the oldest entry per insert leaves holes at the front of the dict that
    each `next(iter(...))` walks past: a cost that grows with the cache.)"""
    items = list(cache.items())
    return dict(items[len(items) // 2 :])


class Route:
    """A bound name, ready to pick a client per request."""

    __slots__ = (
        "service", "service_hdr", "tree", "_pick", "local", "local_hdr", "error", "actions", "rules_dtab",
        "stats", "cstats", "total_timeout_s", "rules",
    )

    def __init__(self, service: Path, tree: NameTree | None, local: Dtab, clients: ClientRegistry, error: str | None = None,
                 overlay: Overlay | None = None, stats: Any = None, policies: Any = None) -> None:  # fmt: skip
        self.service = service
        # service.totalTimeoutMs for this name (0.0: none) and the attempt settings per
        # client (proxy/upstream/policy.py), resolved once here.
        self.total_timeout_s = 0.0
        per_client: Any = None
        got = policies(service, bool(local.dentries)) if policies is not None else None
        if got is not None:
            self.total_timeout_s, per_client = got
        # The matched rules' actions and dentries: fixed per route, because the route
        # cache is keyed by the set of matched rules. `local` stays ctx ++ user only:
        # that is what travels downstream in l5d-ctx-dtab; rule entries never do.
        self.actions: Actions | None = overlay.actions if overlay is not None else None
        self.rules_dtab = overlay.dtab if overlay is not None else Dtab.EMPTY
        self.rules: tuple[Any, ...] = overlay.rules if overlay is not None else ()  # the matched RuleConfigs
        self.service_hdr = service.show().encode("latin-1")
        self.tree = tree
        self.local = local
        self.local_hdr = local.show().encode("latin-1") if local.dentries else b""
        self.error = error
        self._pick = _picker(tree, clients, per_client) if tree is not None else None
        # Telemetry bound once per route (proxy/telemetry/metrics.py): the service's
        # counters, and each reachable client's, split by normal and override traffic.
        self.stats: Stats | None = None
        self.cstats: dict[Client, ClientStats] = {}
        if stats is not None:
            override = bool(local.dentries)
            leaves = [b for b in dtab.evaluate(tree) or () if isinstance(b, Bound)] if tree is not None else []
            # A name that binds to nothing is counted under one shared label, so random
            # names (a scan, typos) cannot use up the service label slots.
            self.stats = stats.service(self.service_hdr, override) if leaves else stats.unbound(override)
            for leaf in leaves:
                c = clients.get(leaf)
                self.cstats[c] = stats.client(c.id_show, override)

    def pick(self, u: float | None = None) -> tuple[Client, Bound, bytes | None, RequestPolicy] | None:
        """A client for this request: a weighted choice through the unions (docs/dtab.md §9.3);
        None when the branch taken is empty, negative or failed. `u` in [0, 1) makes
        the choice deterministic (sticky splits); None draws a random number."""
        p = self._pick
        return p(u) if p is not None else None


def _picker(tree: NameTree, clients: ClientRegistry, per_client: Any = None) -> Any:
    if isinstance(tree, Leaf):
        bound = tree.value
        assert isinstance(bound, Bound)
        residual = bound.residual.show().encode("latin-1") if bound.residual.elems else None
        client = clients.get(bound)
        policy = per_client(client) if per_client is not None else NONE
        choice = (client, bound, residual, policy)  # the l5d-dst-residual value, printed once
        return lambda u=None: choice
    if isinstance(tree, Union):
        members = []
        for w in tree.weighted:
            if w.tree is EMPTY and w.weight <= 0:
                continue  # an empty member with no weight takes no traffic (§9.3)
            members.append((w.weight, _picker(w.tree, clients, per_client)))
        if not members:
            return lambda u=None: None
        total = sum(weight for weight, _ in members)
        if total <= 0:  # every weight zero: uniform (§9.3)
            members = [(1.0, p) for _, p in members]
            total = float(len(members))
        cum: list[float] = []
        acc = 0.0
        for weight, _ in members:
            acc += weight
            cum.append(acc)
        picks = [p for _, p in members]
        rnd = random.random
        bis = bisect.bisect_right
        last = len(picks) - 1

        def pick(u: float | None = None) -> Any:
            if u is None:
                i = bis(cum, rnd() * total)
                return picks[i if i <= last else last]()
            # Sticky: branch i owns [cum[i-1], cum[i]) of [0, total). The position
            # inside that interval, rescaled to [0, 1), picks in a nested union, so a
            # weight change moves only the values between the old and new boundary.
            x = u * total
            i = bis(cum, x)
            if i > last:
                i = last
            lo = cum[i - 1] if i else 0.0
            width = cum[i] - lo
            return picks[i]((x - lo) / width if width > 0 else 0.0)

        return pick
    assert tree is NEG or tree is FAIL or tree is EMPTY
    return lambda u=None: None


class Selection:
    """What `Router.select` decided for one request: the identified name, the bound
    route, the sticky position for `Route.pick` (None: random), and the matched rules'
    actions (None: nothing to rewrite). The wire layer applies the actions."""

    __slots__ = ("ident", "route", "u", "actions")

    def __init__(self, ident: Identified, route: Route, u: float | None, actions: Actions | None) -> None:
        self.ident = ident
        self.route = route
        self.u = u
        self.actions = actions


class Router:
    """One router's immutable routing state plus its caches."""

    __slots__ = (
        "label", "base", "namers", "identifier", "policy", "clients", "_routes", "dst_prefix",
        "config", "rules", "stats", "transform", "_services", "_service_policies", "obs",
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
        rules: Sequence[RuleConfig] = (),
        hash_on: HashOn | None = None,
        stats: Any = None,
        transform: Callable[[NameTree], NameTree] | None = None,
        obs: Any = None,
    ) -> None:
        self.label = label
        self.stats: RouterStats | None = stats  # telemetry.RouterStats, kept across snapshots; None: telemetry off
        # telemetry.observe.RouterObs: access log, tracing, propagator; None: all off
        # (the wire's per-request hooks test this one attribute).
        self.obs = obs
        self.base = dtab.compile(base)
        self.namers = tuple(namers)
        self.identifier = identifier
        self.policy = policy
        self.dst_prefix = dst_prefix
        self.clients = clients or ClientRegistry(config if hasattr(config, "client") else None)
        self._routes: dict[tuple[Any, ...], Route] = {}
        self._services: dict[Path, tuple[Any, Any, dict[tuple[Client, bool], RequestPolicy]]] = {}
        self._service_policies: dict[tuple[int, ...], Any] = {}  # config/policy.py service_policy's memo
        self.config = config
        # The interpreter's transformers (proxy/discovery/k8s_transform.py), applied to
        # each bound tree when a route is bound; None: none configured.
        self.transform = transform
        # None when there is nothing to match: the wire layer tests this one attribute
        # and keeps the plain path (no per-request rule work at all).
        self.rules: RuleSet | None = RuleSet(rules, self.base, hash_on) if rules or hash_on is not None else None

    def _policies(self, service: Path, override: bool = False) -> tuple[float, Any] | None:
        """A route's `service.totalTimeoutMs` (seconds, 0.0: none) and a function giving
        the attempt settings for each of its clients. The service's retry budget is one
        per name and router snapshot, shared by every route of that name (overrides too);
        the counters are kept apart for override traffic (`override`), as every metric is."""
        rc = self.config
        if rc is None or not hasattr(rc, "service"):
            return None
        cached = self._services.get(service)
        if cached is None:
            if len(self._services) >= SERVICE_CACHE_SIZE:
                # Routes already bound keep what they were given; a name bound again
                # later starts a fresh budget.
                self._services = _newest_half(self._services)
            sp = service_policy(rc, service, self._service_policies)
            cached = self._services[service] = (sp, retry_budget(sp), {})
        sp, budget, by_client = cached
        binding_timeout_s = rc.binding_timeout_ms / 1000 if rc.binding_timeout_ms else 0.0

        def per_client(client: Client) -> RequestPolicy:
            rp = by_client.get((client, override))
            if rp is None:
                stats = self.stats.retry_counters(service.show(), client.id_show, override) if self.stats is not None else None
                rp = by_client[(client, override)] = request_policy(sp, client, budget, stats, binding_timeout_s)
            return rp

        ms = sp.total_timeout_ms
        return (ms / 1000 if ms else 0.0), per_client

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
            if self.transform is not None:
                tree = self.transform(tree)
            r = Route(service, tree, local, self.clients, stats=self.stats, policies=self._policies)
        except BindError as exc:
            r = Route(service, None, local, self.clients, error=str(exc), stats=self.stats, policies=self._policies)
        if len(routes) >= ROUTE_CACHE_SIZE:
            routes = self._routes = _newest_half(routes)
        routes[key] = r
        return r

    def select(self, view: Any, headers: Sequence[tuple[bytes, bytes]], local: Dtab, local_key: bytes) -> Selection:
        """Identify, match rules, bind and say how to pick, for one request. `view` is
        the identify view (method, target, version, headers(name)); `headers` the
        request's header list (lower-case names; HTTP/2 without pseudo-headers). The
        authority is `:authority` on HTTP/2, else `Host`."""
        ident = self.identifier.identify(view)
        rules = self.rules
        if rules is None:
            return Selection(ident, self.route(ident.path, local, local_key), None, None)
        h = view.headers
        lookup = h.get if isinstance(h, dict) else h
        authority = lookup(b":authority") if view.version == b"2" else None
        if authority is None:
            authority = lookup(b"host")
        overlay = rules.overlay(rules.match(view.method, view.target, authority, headers))
        name = ident.path if overlay.service is None else overlay.service  # a rule may name the request
        route = self.route_with(overlay, name, local, local_key)
        acts = overlay.actions
        u = None
        if acts is not None and acts.hash_on is not None:
            value = hash_value(acts.hash_on, headers)
            if value is not None:
                u = sticky_u(value)
        return Selection(ident, route, u, acts)

    def route_with(self, overlay: Overlay, service: Path, local: Dtab, local_key: bytes) -> Route:
        """The bound route for `service` under `base ++ overlay ++ local` (cached per
        matched-rules key, override and name; the overlay's compiled table memoises
        lookups per (snapshot, overlay, path))."""
        if not overlay.key:
            return self.route(service, local, local_key)
        routes = self._routes
        key = (overlay.key, local_key, service)
        r = routes.get(key)
        if r is not None:
            return r
        table = overlay.table if not local.dentries else dtab.OverlayTable(overlay.table, local)
        try:
            tree = dtab.bind(table, service, namers=self.namers)
            if self.transform is not None:
                tree = self.transform(tree)
            r = Route(service, tree, local, self.clients, overlay=overlay, stats=self.stats, policies=self._policies)
        except BindError as exc:
            r = Route(service, None, local, self.clients, error=str(exc), overlay=overlay, stats=self.stats,
                      policies=self._policies)  # fmt: skip
        if len(routes) >= ROUTE_CACHE_SIZE:
            routes = self._routes = _newest_half(routes)
        routes[key] = r
        return r

    def no_route(self, route: Route) -> NoRoute:
        from .l5d import no_route_message

        # The rules' entries are part of the table the name was bound with: each matched
        # rule is listed under its own name, between the base and the override.
        rules = [(r.name, r.dtab) for r in route.rules if r.dtab.dentries]
        msg = no_route_message(route.service, self.base.dtab, route.local, rules=rules)
        if route.error:
            msg = f"{msg}\n{route.error}" if msg else route.error
        return NoRoute(msg)
