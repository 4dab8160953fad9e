"""What a router keeps per name stays bounded whatever names clients send (an ingress, a
scan of random Hosts), and what can be shared among names is: one service policy for the
names the same `service.configs` entries match, one classifier per classifier config; the
retry budget stays one per name."""

from __future__ import annotations

from config import load_text
from dtab import Dtab, Path
from proxy.route.identify import IdentifierChain
from proxy.route.router import ROUTE_CACHE_SIZE, SERVICE_CACHE_SIZE, Router

CONFIG = """
routers:
- protocol: http
  dtab: /svc => /$/inet/127.0.0.1/1;
  service:
    kind: io.l5d.static
    configs:
    - prefix: /svc/special
      totalTimeoutMs: 500
  servers: [{port: 0}]
"""


def _router() -> Router:
    rc = load_text(CONFIG).routers[0]
    return Router("t", rc.dtab, identifier=IdentifierChain.from_config(None), config=rc)


def _name(i: int) -> Path:
    return Path.read(f"/svc/host-{i}")


def test_names_from_clients_cannot_grow_the_per_name_state() -> None:
    r = _router()
    n = max(ROUTE_CACHE_SIZE, SERVICE_CACHE_SIZE) + 500
    for i in range(n):
        r.route(_name(i), Dtab.EMPTY, b"")
    assert len(r._services) <= SERVICE_CACHE_SIZE
    assert len(r._routes) <= ROUTE_CACHE_SIZE
    # The newest names are still there, and a route bound before the eviction still picks.
    assert _name(n - 1) in r._services
    assert r.route(_name(n - 1), Dtab.EMPTY, b"").pick() is not None


def test_names_matched_alike_share_a_policy_and_keep_their_own_budget() -> None:
    r = _router()
    a, b, special = (Path.read(p) for p in ("/svc/a", "/svc/b", "/svc/special"))
    for p in (a, b, special):
        r.route(p, Dtab.EMPTY, b"").pick()
    (sp_a, budget_a, per_a), (sp_b, budget_b, per_b) = r._services[a], r._services[b]
    sp_s = r._services[special][0]
    assert sp_a is sp_b  # no service config matches either
    assert budget_a is not budget_b  # Linkerd's retry budget is one per service
    assert sp_s is not sp_a and sp_s.total_timeout_ms == 500 and sp_a.total_timeout_ms is None
    rp_a, rp_b = next(iter(per_a.values())), next(iter(per_b.values()))
    assert rp_a.classifier is rp_b.classifier  # stateless, made once per config
    assert rp_a.retry_budget is budget_a and rp_b.retry_budget is budget_b
