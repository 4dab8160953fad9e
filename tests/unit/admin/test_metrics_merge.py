"""Worker snapshots merged as if one process: the merged scrape of requests spread over
several processes equals the scrape of one process that served them all."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from dtab import Bound, Path
from proxy.discovery.endpoints import EndpointSet
from proxy.telemetry.metrics import (
    Telemetry,
    begin,
    combine,
    count_deadline,
    merge,
    merge_lines,
    observe_budget,
    record,
    record_pair,
    retired,
    snapshot,
    totals,
)
from proxy.upstream.endpoint import Client

SERVICES = [b"/svc/a", b"/svc/b"]
CLIENTS = [b"/$/inet/127.0.0.1/1", b"/$/inet/127.0.0.1/2"]
ENDPOINTS = [("127.0.0.1", 1), ("127.0.0.1", 2), ("10.0.0.1", 80)]

request = st.tuples(
    st.integers(0, 2),  # the worker that served it
    st.sampled_from(["web", "api"]),
    st.integers(0, len(SERVICES) - 1),
    st.booleans(),  # override traffic
    st.integers(-1, len(CLIENTS) - 1),  # -1: no client picked
    st.integers(0, len(ENDPOINTS) - 1),
    st.sampled_from([200, 204, 404, 500, 503]),
    st.sampled_from([0.0001, 0.003, 0.07, 2.5, 40.0]),
    st.sampled_from([None, None, "connect", "timeout"]),
    st.booleans(),  # finished (else still in flight)
    st.booleans(),  # counted through a pair (the data plane's fast path)
)
#: What the attempts and the wire count per (service, client, traffic kind).
retry_event = st.tuples(
    st.integers(0, 2),  # the worker
    st.sampled_from(["web", "api"]),
    st.integers(0, len(SERVICES) - 1),
    st.integers(0, len(CLIENTS) - 1),
    st.booleans(),  # override traffic
    st.sampled_from(["retry", "requeue", "exhausted", "timeoutMs", "totalTimeoutMs", "budget"]),
    st.sampled_from([0.001, 0.3, 7.0, 1000.0]),  # the budget left, for "budget"
)


def scrape(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name != "dtabproxy_start_time_seconds":
                # Latency sums are floats added in another order when merged: equal to
                # the last few bits, as one process's own sums would be in another order.
                out[(s.name, tuple(sorted(s.labels.items())))] = round(s.value, 9)
    return out


def serve(tel: Telemetry, r: tuple) -> None:
    _, label, si, override, ci, ei, status, latency, cls, finished, paired = r
    rs = tel.router(label)
    svc = rs.service(SERVICES[si], override)
    if ci < 0:
        if finished:
            rs.record_unrouted(status, cls)
        return
    es = rs.client(CLIENTS[ci], override).endpoint(*ENDPOINTS[ei])
    if paired:
        p = rs.pair(svc, es)
        p.started += 1
        if finished:
            record_pair(p, status, latency, 3, 5, cls)
        return
    begin(svc, es)
    if finished:
        record(svc, es, status, latency, 3, 5, cls)
    es.connects += 1
    es.connections += 1


def count(tel: Telemetry, e: tuple) -> None:
    _, label, si, ci, override, kind, left = e
    rc = tel.router(label).retry_counters(SERVICES[si].decode(), CLIENTS[ci], override)
    if kind == "retry":
        rc.retries += 1
    elif kind == "requeue":
        rc.requeues += 1
    elif kind == "exhausted":
        rc.budget_exhausted += 1
    elif kind == "budget":
        observe_budget(rc, left)
    else:
        count_deadline(rc, kind)


@settings(max_examples=25, deadline=None)
@given(st.lists(request, max_size=40), st.lists(retry_event, max_size=20))
def test_merged_workers_scrape_like_one_process(requests: list[tuple], events: list[tuple]) -> None:
    one, workers = Telemetry(), [Telemetry() for _ in range(3)]
    for r in requests:
        serve(one, r)
        serve(workers[r[0]], r)
    for e in events:
        count(one, e)
        count(workers[e[0]], e)
    # Through JSON: the snapshot is plain data (what a worker sends).
    snaps = [json.loads(json.dumps(snapshot(w))) for w in workers]
    assert scrape(merge(snaps).render()) == scrape(one.render())
    # Combining first, or in another order, changes nothing.
    assert scrape(merge([combine(snaps[:2]), snaps[2]]).render()) == scrape(one.render())
    assert scrape(merge(reversed(snaps)).render()) == scrape(one.render())
    requests_total = sum(t[0] for t in map(totals, snaps))
    finished = sum(1 for r in requests if r[9])
    assert requests_total == finished
    assert sum(t[1] for t in map(totals, snaps)) == sum(1 for r in requests if not r[9] and r[4] >= 0)


def test_what_a_dead_worker_leaves_keeps_counters_and_drops_what_was_in_flight() -> None:
    tel = Telemetry()
    rs = tel.router("web")
    svc = rs.service(b"/svc/a", False)
    es = rs.client(CLIENTS[0], False).endpoint(*ENDPOINTS[0])
    for _ in range(3):
        begin(svc, es)
    record(svc, es, 200, 0.01, 1, 1)
    es.connections = 2
    tel.collectors.append(lambda: ["# HELP x_total X.", "# TYPE x_total counter", 'x_total{a="1"} 4',
                                   "# HELP y Y.", "# TYPE y gauge", 'y{a="1"} 1'])  # fmt: skip
    left = retired(snapshot(tel))
    m = scrape(merge([left]).render())
    lab = (("router", "web"), ("service", "/svc/a"), ("traffic", "base"))
    assert m[("dtabproxy_service_requests_total", lab)] == 1
    assert m[("dtabproxy_service_in_flight", lab)] == 0
    ep = (("client", CLIENTS[0].decode()), ("endpoint", "127.0.0.1:1"), ("router", "web"), ("traffic", "base"))
    assert m[("dtabproxy_endpoint_connections", ep)] == 0
    assert m[("x_total", (("a", "1"),))] == 4
    assert ("y", (("a", "1"),)) not in m


def test_collector_lines_sum_counters_and_take_the_worst_gauge() -> None:
    def lines(events: int, synced: int, invalid: int) -> list[str]:
        return [
            "# HELP k_watch_events_total Events.", "# TYPE k_watch_events_total counter",
            f'k_watch_events_total{{watch="w"}} {events}',
            "# HELP k_watch_synced Synced.", "# TYPE k_watch_synced gauge", f'k_watch_synced{{watch="w"}} {synced}',
            "# HELP k_dtab_invalid Invalid.", "# TYPE k_dtab_invalid gauge", f'k_dtab_invalid{{router="r"}} {invalid}',
        ]  # fmt: skip

    out = merge_lines([lines(3, 1, 0), lines(4, 0, 1), lines(5, 1, 0)])
    assert out == [
        "# HELP k_watch_events_total Events.", "# TYPE k_watch_events_total counter", 'k_watch_events_total{watch="w"} 12',
        "# HELP k_watch_synced Synced.", "# TYPE k_watch_synced gauge", 'k_watch_synced{watch="w"} 0',
        "# HELP k_dtab_invalid Invalid.", "# TYPE k_dtab_invalid gauge", 'k_dtab_invalid{router="r"} 1',
    ]  # fmt: skip


def _worker_with_client(ejected: list[str]) -> Telemetry:
    """A worker's telemetry whose router `web` has one client of three endpoints, with
    failure accrual having taken out those in `ejected`."""
    tel = Telemetry()
    tel.router("web")
    es = EndpointSet([("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)])
    client = Client(Bound(Path.read("/#/io.l5d.fs/web"), addr=es))
    for ep in client.endpoints():
        if ep.host in ejected:
            for _ in range(5):
                ep.failed(0.0)
    tel.clients_source = lambda: {"web": [client]}
    return tel


def test_endpoint_states_merge_to_the_worst_state_and_ejections_sum() -> None:
    w0 = _worker_with_client(["10.0.0.1"])
    w1 = _worker_with_client(["10.0.0.2"])
    snaps = [json.loads(json.dumps(snapshot(w))) for w in (w0, w1)]
    m = scrape(merge(snaps).render())
    lab = (("client", "/#/io.l5d.fs/web"), ("router", "web"))

    def state(m: dict, st: str) -> float:
        return m[("dtabproxy_client_endpoints", tuple(sorted((*lab, ("state", st)))))]

    # An endpoint one worker took out counts as dead: 10.0.0.1 and 10.0.0.2.
    assert (state(m, "available"), state(m, "probing"), state(m, "dead")) == (1, 0, 2)
    assert m[("dtabproxy_client_ejections_total", lab)] == 2
    assert scrape(merge([combine(snaps)]).render()) == m
    # A worker that exited leaves its ejections, not its view of the endpoints.
    m = scrape(merge([snaps[0], retired(snaps[1])]).render())
    assert (state(m, "available"), state(m, "probing"), state(m, "dead")) == (2, 0, 1)
    assert m[("dtabproxy_client_ejections_total", lab)] == 2
