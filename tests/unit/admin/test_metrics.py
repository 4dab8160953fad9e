"""proxy.telemetry.metrics: counters, histogram, caps, override split, decisions, rendering."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from config.policy import ClientPolicy, FailureAccrualConfig
from dtab import Bound, Inet, Path
from proxy.discovery.endpoints import EndpointSet
from proxy.telemetry.metrics import (
    LATENCY_BOUNDS_S,
    OTHER,
    Decisions,
    Telemetry,
    begin,
    count_deadline,
    observe_budget,
    record,
)
from proxy.upstream.endpoint import Client


def scrape(tel: Telemetry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (sample name, sorted labels)."""
    out = {}
    for fam in text_string_to_metric_families(tel.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_a_known_sequence_gives_exact_counters_at_every_level() -> None:
    tel = Telemetry()
    rs = tel.router("web")
    svc = rs.service(b"/svc/hello", False)
    cs = rs.client(b"/$/inet/127.0.0.1/8080", False)
    es = cs.endpoint("127.0.0.1", 8080)
    for status, latency, cls in [(200, 0.0004, None), (204, 0.004, None), (503, 0.02, None), (502, 0.3, "connect")]:
        begin(svc, es)
        record(svc, es, status, latency, 10, 100, cls)
    begin(svc, es)  # one still in flight
    m = scrape(tel)
    svc_l = labels(router="web", service="/svc/hello", traffic="base")
    cli_l = labels(router="web", client="/$/inet/127.0.0.1/8080", traffic="base")
    ep_l = labels(router="web", client="/$/inet/127.0.0.1/8080", traffic="base", endpoint="127.0.0.1:8080")
    for prefix, lab in (("service", svc_l), ("client", cli_l), ("endpoint", ep_l)):
        assert m[(f"dtabproxy_{prefix}_requests_total", lab)] == 4
        assert m[(f"dtabproxy_{prefix}_successes_total", lab)] == 2
        assert m[(f"dtabproxy_{prefix}_failures_total", tuple(sorted((*lab, ("class", "5xx")))))] == 1
        assert m[(f"dtabproxy_{prefix}_failures_total", tuple(sorted((*lab, ("class", "connect")))))] == 1
        assert m[(f"dtabproxy_{prefix}_in_flight", lab)] == 1
        assert m[(f"dtabproxy_{prefix}_request_bytes_total", lab)] == 40
        assert m[(f"dtabproxy_{prefix}_response_bytes_total", lab)] == 400
        hist = f"dtabproxy_{prefix}_request_latency_seconds"
        assert m[(hist + "_count", lab)] == 4
        assert abs(m[(hist + "_sum", lab)] - 0.3244) < 1e-9
        assert m[(hist + "_bucket", tuple(sorted((*lab, ("le", "0.0005")))))] == 1
        assert m[(hist + "_bucket", tuple(sorted((*lab, ("le", "0.005")))))] == 2
        assert m[(hist + "_bucket", tuple(sorted((*lab, ("le", "0.02")))))] == 3
        assert m[(hist + "_bucket", tuple(sorted((*lab, ("le", "0.2")))))] == 3
        assert m[(hist + "_bucket", tuple(sorted((*lab, ("le", "+Inf")))))] == 4
    assert m[("dtabproxy_router_requests_total", labels(router="web", traffic="base"))] == 4


def test_bucket_edges_are_inclusive_upper_bounds() -> None:
    tel = Telemetry()
    rs = tel.router("r")
    svc = rs.service(b"/svc/a", False)
    for b in LATENCY_BOUNDS_S:
        begin(svc, None)
        record(svc, None, 200, b, 0, 0)
    begin(svc, None)
    record(svc, None, 200, 1e6, 0, 0)  # past the last bound: +Inf only
    m = scrape(tel)
    lab = labels(router="r", service="/svc/a", traffic="base")
    for i, b in enumerate(LATENCY_BOUNDS_S):
        assert m[("dtabproxy_service_request_latency_seconds_bucket", tuple(sorted((*lab, ("le", repr(b))))))] == i + 1
    assert m[("dtabproxy_service_request_latency_seconds_bucket", tuple(sorted((*lab, ("le", "+Inf")))))] == len(LATENCY_BOUNDS_S) + 1


def test_override_traffic_is_counted_apart() -> None:
    tel = Telemetry()
    rs = tel.router("web")
    base = rs.service(b"/svc/world", False)
    over = rs.service(b"/svc/world", True)
    assert base is not over
    assert rs.service(b"/svc/world", False) is base  # cached: bound once per route
    canary_base = rs.client(b"/#/io.l5d.fs/world-v2", False).endpoint("10.0.0.2", 80)
    canary_over = rs.client(b"/#/io.l5d.fs/world-v2", True).endpoint("10.0.0.2", 80)
    for _ in range(9):
        begin(base, canary_base)
        record(base, canary_base, 200, 0.001, 0, 0)
    for _ in range(3):  # a staging session hammering a broken build through an override
        begin(over, canary_over)
        record(over, canary_over, 500, 0.001, 0, 0)
    m = scrape(tel)
    cl = labels(router="web", client="/#/io.l5d.fs/world-v2", traffic="base")
    assert m[("dtabproxy_client_successes_total", cl)] == 9
    assert ("dtabproxy_client_failures_total", tuple(sorted((*cl, ("class", "5xx"))))) not in m
    ol = labels(router="web", client="/#/io.l5d.fs/world-v2", traffic="override")
    assert m[("dtabproxy_client_failures_total", tuple(sorted((*ol, ("class", "5xx")))))] == 3
    assert m[("dtabproxy_router_requests_total", labels(router="web", traffic="override"))] == 3
    assert m[("dtabproxy_router_requests_total", labels(router="web", traffic="base"))] == 9


def test_cardinality_is_capped_with_an_other_bucket() -> None:
    tel = Telemetry(max_services=3, max_clients=2, max_endpoints=2)
    rs = tel.router("r")
    svcs = [rs.service(b"/svc/%d" % i, False) for i in range(10)]
    assert len({id(s) for s in svcs}) == 4  # three named, then one shared `other`
    assert svcs[3] is svcs[9]
    assert svcs[3].labels == ("r", OTHER, "base")
    assert rs.service(b"/svc/0", False) is svcs[0]  # names under the cap keep their own
    for s in svcs:
        begin(s, None)
        record(s, None, 200, 0.001, 0, 0)
    clients = [rs.client(b"/c/%d" % i, False) for i in range(5)]
    assert clients[2] is clients[4]
    eps = [clients[0].endpoint(f"10.0.0.{i}", 80) for i in range(6)]
    assert eps[2] is eps[5]
    assert eps[2].labels[-1] == OTHER
    m = scrape(tel)
    names = {dict(k[1]).get("service") for k in m if k[0] == "dtabproxy_service_requests_total"}
    assert names == {"/svc/0", "/svc/1", "/svc/2", OTHER}
    assert m[("dtabproxy_service_requests_total", labels(router="r", service=OTHER, traffic="base"))] == 7
    eps_seen = {dict(k[1]).get("endpoint") for k in m if k[0] == "dtabproxy_endpoint_requests_total"}
    assert eps_seen == {"10.0.0.0:80", "10.0.0.1:80", OTHER}


def test_unrouted_failures_and_connection_counters() -> None:
    tel = Telemetry()
    rs = tel.router("r")
    rs.record_unrouted(400, "identify")
    rs.record_unrouted(400, "identify")
    rs.record_unrouted(403, "override")
    es = rs.client(b"/c", False).endpoint("h", 1)
    es.connects += 2
    es.connections += 2
    es.connections -= 1
    es.connect_failures += 1
    rs.retry_counters("/svc/a", b"/c").retries += 1
    m = scrape(tel)
    assert m[("dtabproxy_router_unrouted_failures_total", labels(router="r", **{"class": "identify"}))] == 2
    assert m[("dtabproxy_router_unrouted_failures_total", labels(router="r", **{"class": "override"}))] == 1
    el = labels(router="r", client="/c", traffic="base", endpoint="h:1")
    assert m[("dtabproxy_endpoint_connects_total", el)] == 2
    assert m[("dtabproxy_endpoint_connections", el)] == 1
    assert m[("dtabproxy_endpoint_connect_failures_total", el)] == 1
    assert m[("dtabproxy_client_retries_total", labels(router="r", client="/c", traffic="base"))] == 1
    assert ("dtabproxy_endpoint_retries_total", el) not in m  # a retry is a request's, not an endpoint's


def test_decisions_ring_is_bounded_and_sampled() -> None:
    d = Decisions(size=5, sample_rate=1.0)
    for i in range(12):
        d.offer("router", f"route{i}", None, ("h", i), 200, 0.001)
    entries = d.entries()
    assert [e[0] for e in entries] == [8, 9, 10, 11, 12]
    assert entries[-1][3] == "route11" and entries[-1][5] == ("h", 11)
    d.sample_rate = 0.0
    for _ in range(100):
        d.offer("router", "x", None, None, 200, 0.001)
    assert d.seq == 12  # nothing sampled at rate 0


def test_set_sample_rate_reaches_every_router_and_new_ones() -> None:
    tel = Telemetry(sample_rate=1.0)
    a = tel.router("a")
    tel.set_sample_rate(0.25)
    assert a.decisions.sample_rate == 0.25
    assert tel.router("b").decisions.sample_rate == 0.25
    tel.set_sample_rate(7)
    assert a.decisions.sample_rate == 1.0


def test_two_telemetries_do_not_share_a_registry() -> None:
    one, two = Telemetry(), Telemetry()
    s = one.router("x").service(b"/svc/a", False)
    begin(s, None)
    record(s, None, 200, 0.001, 0, 0)
    assert b'service="/svc/a"' in one.render()
    assert b'service="/svc/a"' not in two.render()


def test_label_values_are_escaped_and_parse_back() -> None:
    tel = Telemetry()
    rs = tel.router('we"b')
    name = b'/svc/a\\b"c\nd'
    s = rs.service(name, False)
    begin(s, None)
    record(s, None, 200, 0.001, 0, 0)
    m = scrape(tel)
    assert m[("dtabproxy_service_requests_total", labels(router='we"b', service='/svc/a\\b"c\nd', traffic="base"))] == 1


def test_a_large_scrape_renders_every_series() -> None:
    tel = Telemetry()
    rs = tel.router("r")
    for i in range(300):
        s = rs.service(b"/svc/%d" % i, i % 2 == 1)
        es = rs.client(b"/c/%d" % i, False).endpoint("10.0.0.1", 80 + i)
        begin(s, es)
        record(s, es, 200, 0.001 * i, 1, 2)
    m = scrape(tel)
    assert sum(1 for k in m if k[0] == "dtabproxy_service_requests_total") == 300
    assert sum(1 for k in m if k[0] == "dtabproxy_endpoint_request_latency_seconds_bucket") == 300 * (len(LATENCY_BOUNDS_S) + 1)
    assert m[("dtabproxy_router_requests_total", labels(router="r", traffic="override"))] == 150


def test_decisions_keep_bursts_and_cap_sustained_load_by_a_token_bucket() -> None:
    d = Decisions(size=8, sample_rate=1.0, max_per_second=10.0)
    for _ in range(8):  # a burst up to the ring's size is kept whatever its timing
        d.offer(None, None, None, None, 200, 0.001, now=100.0)
    assert d.seq == 8
    d.offer(None, None, None, None, 200, 0.001, now=100.0)
    assert d.seq == 8 and d.next_at > 100.0  # the bucket is empty: the data plane skips until next_at
    d.offer(None, None, None, None, 200, 0.001, now=d.next_at + 0.001)
    assert d.seq == 9  # refilled at max_per_second


# -- issue 11: retries, requeues, deadlines per (service, client); endpoint states ----------------


def test_service_client_counters_render_by_pair_and_sum_into_the_levels() -> None:
    tel = Telemetry()
    rs = tel.router("r")
    for service, override in (("/svc/a", False), ("/svc/b", False), ("/svc/a", True)):
        rs.service(service.encode(), override)
        rs.client(b"/c", override)
    a = rs.retry_counters("/svc/a", b"/c")
    b = rs.retry_counters("/svc/b", b"/c")
    over = rs.retry_counters("/svc/a", b"/c", override=True)
    assert rs.retry_counters("/svc/a", b"/c") is a  # bound once, then a dict hit
    a.retries, a.requeues, a.budget_exhausted = 3, 2, 1
    b.retries = 4
    over.retries = 5
    count_deadline(a, "totalTimeoutMs")
    count_deadline(a, "totalTimeoutMs")
    count_deadline(a, "timeoutMs")
    for left in (0.004, 0.3, 0.5, 400.0):
        observe_budget(a, left)
    m = scrape(tel)
    pa = dict(router="r", service="/svc/a", client="/c", traffic="base")
    assert m[("dtabproxy_service_client_retries_total", labels(**pa))] == 3
    assert m[("dtabproxy_service_client_requeues_total", labels(**pa))] == 2
    assert m[("dtabproxy_service_client_retry_budget_exhausted_total", labels(**pa))] == 1
    assert m[("dtabproxy_service_client_deadline_exceeded_total", labels(**pa, reason="totalTimeoutMs"))] == 2
    assert m[("dtabproxy_service_client_deadline_exceeded_total", labels(**pa, reason="timeoutMs"))] == 1
    h = "dtabproxy_service_client_deadline_budget_seconds"
    assert m[(h + "_bucket", labels(**pa, le="0.005"))] == 1
    assert m[(h + "_bucket", labels(**pa, le="0.25"))] == 1
    assert m[(h + "_bucket", labels(**pa, le="0.5"))] == 3  # a bound is inclusive
    assert m[(h + "_bucket", labels(**pa, le="300.0"))] == 3
    assert m[(h + "_bucket", labels(**pa, le="+Inf"))] == 4
    assert m[(h + "_count", labels(**pa))] == 4
    assert abs(m[(h + "_sum", labels(**pa))] - 400.804) < 1e-9
    pb = dict(pa, service="/svc/b")
    assert (h + "_count", labels(**pb)) not in m  # no deadline seen: no histogram
    assert m[("dtabproxy_service_client_retries_total", labels(**dict(pa, traffic="override")))] == 5
    # The levels' retries are the pairs' sums, traffic kinds apart.
    assert m[("dtabproxy_service_retries_total", labels(router="r", service="/svc/a", traffic="base"))] == 3
    assert m[("dtabproxy_service_retries_total", labels(router="r", service="/svc/b", traffic="base"))] == 4
    assert m[("dtabproxy_service_retries_total", labels(router="r", service="/svc/a", traffic="override"))] == 5
    assert m[("dtabproxy_client_retries_total", labels(router="r", client="/c", traffic="base"))] == 7
    assert m[("dtabproxy_client_retries_total", labels(router="r", client="/c", traffic="override"))] == 5
    assert m[("dtabproxy_router_retries_total", labels(router="r", traffic="base"))] == 7


def _fs_client(addrs: list[tuple[str, int]]) -> tuple[Client, EndpointSet]:
    es = EndpointSet(addrs)
    return Client(Bound(Path.read("/#/io.l5d.fs/web"), addr=es)), es


def _eject(ep: object, now: float = 0.0) -> None:
    for _ in range(5):  # io.l5d.consecutiveFailures' default
        ep.failed(now)  # type: ignore[attr-defined]
    assert ep.state == "dead"  # type: ignore[attr-defined]


def test_endpoint_states_and_ejections_are_read_from_the_clients_at_scrape() -> None:
    tel = Telemetry()
    tel.router("r")
    client, es = _fs_client([("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)])
    current = {"r": [client]}
    tel.clients_source = lambda: current
    c_l = dict(router="r", client="/#/io.l5d.fs/web")

    def states() -> dict[str, float]:
        m = scrape(tel)
        return {st: m[("dtabproxy_client_endpoints", labels(**c_l, state=st))] for st in ("available", "probing", "dead")}

    assert states() == {"available": 3, "probing": 0, "dead": 0}
    eps = {ep.host: ep for ep in client.endpoints()}
    _eject(eps["10.0.0.2"])
    assert states() == {"available": 2, "probing": 0, "dead": 1}
    assert scrape(tel)[("dtabproxy_client_ejections_total", labels(**c_l))] == 1
    # The dead endpoint leaves the address set, another is ejected: the counter goes on.
    es.update([("10.0.0.1", 80), ("10.0.0.3", 80)])
    _eject(eps["10.0.0.3"])
    assert states() == {"available": 1, "probing": 0, "dead": 1}
    assert scrape(tel)[("dtabproxy_client_ejections_total", labels(**c_l))] == 2
    # A reload replaces the client object (fresh accrual): the counter never goes down.
    fresh, _ = _fs_client([("10.0.0.1", 80)])
    current["r"] = [fresh]
    assert states() == {"available": 1, "probing": 0, "dead": 0}
    assert scrape(tel)[("dtabproxy_client_ejections_total", labels(**c_l))] == 2
    _eject(fresh.endpoints()[0])
    assert scrape(tel)[("dtabproxy_client_ejections_total", labels(**c_l))] == 3
    # A client the router no longer has keeps its counter, and no state gauges.
    current["r"] = []
    m = scrape(tel)
    assert m[("dtabproxy_client_ejections_total", labels(**c_l))] == 3
    assert ("dtabproxy_client_endpoints", labels(**c_l, state="dead")) not in m


def test_a_client_without_failure_accrual_is_all_available() -> None:
    tel = Telemetry()
    tel.router("r")
    client = Client(Bound(Path.read("/$/inet/127.0.0.1/1"), addr=Inet("127.0.0.1", 1)),
                    ClientPolicy(failure_accrual=FailureAccrualConfig(kind="none")))  # fmt: skip
    tel.clients_source = lambda: {"r": [client]}
    for _ in range(10):
        client.pick().failed(0.0)  # type: ignore[union-attr]
    m = scrape(tel)
    c_l = dict(router="r", client="/$/inet/127.0.0.1/1")
    assert m[("dtabproxy_client_endpoints", labels(**c_l, state="available"))] == 1
    assert m[("dtabproxy_client_ejections_total", labels(**c_l))] == 0
