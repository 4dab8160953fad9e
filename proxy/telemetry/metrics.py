"""Request metrics and sampled routing decisions: collected with plain attribute
increments on objects bound once per route, client and endpoint; rendered only when
Prometheus scrapes (`Telemetry.render`) or the admin asks for recent decisions.

This module owns the counters, the fixed-bucket latency histogram, the cardinality caps
and the decision ring buffer. It must not import the admin server, touch a transport,
format a string per request or take a lock (everything runs on the proxy's event loop;
a scrape runs on the same loop, so it never sees a half-done update).

How the data plane uses it (all objects are created off the hot path and cached):

* once per process: ``telemetry = Telemetry()``; the runtime keeps it as
  ``Runtime.telemetry`` (the admin server reads it from there).
* once per router (and kept across dtab swaps): ``rs = telemetry.router(label)``.
* once per ``Route`` (it is cached per (override, service) already):
  ``route.stats = rs.service(route.service_hdr, bool(route.local.dentries))``.
* once per (route, bound client), e.g. next to the ``Client`` in the route's picker:
  ``cs = rs.client(client.id_show, override)``; once per endpoint of that client:
  ``es = cs.endpoint(endpoint.host, endpoint.port)`` (a dict hit when called per request).
* per request, when it is routed: ``begin(svc, cs, es)`` (three ``in_flight += 1``);
  when it ends, exactly once: ``record(svc, cs, es, status, latency_s, bytes_in, bytes_out,
  failure_class)``; ``failure_class`` is the ``ProxyError.stage`` of a failure the proxy
  answered (``"connect"``, ``"timeout"``, ...), or None for an upstream response (a 5xx
  then counts as class ``"5xx"``). ``cs``/``es`` may be None when no client was picked.
* a request that fails before it has a service (bad override, unidentifiable):
  ``rs.record_unrouted(status, failure_class)``.
* once per (route, client, traffic kind), in the route's request policy:
  ``rc = rs.retry_counters(service, client_id, override)``; the attempt increments
  ``rc.retries``, ``rc.requeues``, ``rc.budget_exhausted``; a request forwarded with a
  deadline calls ``observe_budget(rc, seconds_left)``; one the wire answers because a
  deadline or timeout passed calls ``count_deadline(rc, reason)``.
* an upstream connection: ``es.connects += 1; es.connections += 1`` when made,
  ``es.connections -= 1`` when lost, ``es.connect_failures += 1`` when it cannot be made.
* at scrape only, when ``Telemetry.clients_source`` is set (the runtime sets it): every
  router's current upstream clients, read for their endpoints' failure-accrual state
  and ejections (``RouterStats.client_health``).
* then ``rs.decisions.offer(router, route, bound, endpoint_addr, status, latency_s, now)``
  unless ``now < rs.decisions.next_at`` (a token bucket of ``max_per_second`` decisions,
  1,000 by default, with bursts up to the ring's size, so recording under sustained load
  costs one comparison), and of those every
  round(1/``sample_rate``)-th: one tuple into a bounded deque.

Override traffic (a request whose local dtab is not empty) is counted in objects of its
own (label ``traffic="override"``), so a staging request never moves a canary's success
rate. Each label dimension is capped; names past the cap share an ``other`` object.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

log = logging.getLogger(__name__)

#: Latency bucket upper bounds in seconds. Finer than Prometheus' defaults below 100 ms
#: because a proxy hop is ~0.1-1 ms and `dtabproxy stat` estimates p50/p95/p99 from them.
LATENCY_BOUNDS_S: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
)  # fmt: skip
_NBUCKETS: Final = len(LATENCY_BOUNDS_S) + 1  # the last one is +Inf

#: Label cardinality caps. Every service costs ~40 series (a histogram is 27 of them);
#: 500 services x 2 traffic kinds keeps a scrape near 40k lines, which Prometheus takes
#: in stride; names past the cap are counted under `other`, never dropped.
MAX_SERVICES: Final = 500
MAX_CLIENTS: Final = 500
MAX_ENDPOINTS: Final = 200  # per client: a large Kubernetes service has a few hundred pods

OTHER: Final = "other"
#: The service label of requests whose name bound to nothing (no route): one series
#: however many such names arrive, never a slot each. Not a path, so no name collides.
UNBOUND: Final = "unbound"
DECISIONS_SIZE: Final = 256  # enough rows for a screen of the playground; ~60 KB of refs
SERVER_ERROR: Final = "5xx"  # the failure class of an upstream 5xx answer


class Stats:
    """Counters for one label set: a service, or one endpoint of a client. Per-request
    updates are attribute increments only; `requests` and `in_flight` are derived at
    scrape (`successes + failures`, `started - requests`) so a request pays for neither."""

    __slots__ = (
        "labels", "started", "successes", "failures", "buckets", "latency_sum_s", "bytes_in",
        "bytes_out", "connects", "connect_failures", "connections", "pairs",
    )  # fmt: skip

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.pairs: dict[Stats, Pair] = {}  # endpoint stats only: one Pair per service seen
        self.started = 0
        self.successes = 0
        self.failures: dict[str, int] = {}  # by class; the classes are a small fixed set
        self.buckets = [0] * _NBUCKETS  # not cumulative: the scrape accumulates
        self.latency_sum_s = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.connects = 0  # endpoints only: connections made, failed, open now
        self.connect_failures = 0
        self.connections = 0

    @property
    def requests(self) -> int:
        return self.successes + sum(self.failures.values())

    @property
    def in_flight(self) -> int:
        return self.started - self.requests

    def add(self, other: Stats) -> None:
        """Sum `other` into this one (scrape time only)."""
        self.started += other.started
        self.successes += other.successes
        f = self.failures
        for c, n in other.failures.items():
            f[c] = f.get(c, 0) + n
        b = self.buckets
        for i, n in enumerate(other.buckets):
            b[i] += n
        self.latency_sum_s += other.latency_sum_s
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.connects += other.connects
        self.connect_failures += other.connect_failures
        self.connections += other.connections


class ClientStats:
    """A bound client: its endpoints' stats. The client's own numbers are their sum,
    made at scrape, so a request updates only its service and its endpoint."""

    __slots__ = ("labels", "_endpoints", "_other", "_cap", "unpicked")

    def __init__(self, labels: tuple[str, ...], cap: int) -> None:
        self.labels = labels
        self._endpoints: dict[tuple[str, int], Stats] = {}
        self._other: Stats | None = None
        self._cap = cap
        #: Requests for this client that found no endpoint to send to.
        self.unpicked = Stats((*labels, "none"))

    def endpoint(self, host: str, port: int, key: tuple[str, int] | None = None) -> Stats:
        """The stats of one endpoint (cached; past the cap, a shared `other`). The data
        plane passes the endpoint's own (host, port) tuple as `key`, so a hit builds nothing."""
        if key is None:
            key = (host, port)
        es = self._endpoints.get(key)
        if es is not None:
            return es
        if len(self._endpoints) >= self._cap:
            other = self._other
            if other is None:
                other = self._other = Stats((*self.labels, OTHER))
            return other
        es = self._endpoints[key] = Stats((*self.labels, f"{host}:{port}"))
        return es

    def endpoints(self) -> Iterator[Stats]:
        yield from self._endpoints.values()
        if self._other is not None:
            yield self._other
        if self.unpicked.started or self.unpicked.successes or self.unpicked.failures:
            yield self.unpicked

    def total(self) -> Stats:
        t = Stats(self.labels)
        for e in self.endpoints():
            t.add(e)
        return t


def begin(svc: Stats, es: Stats | None) -> None:
    """A routed request started (its service and, once picked, its endpoint)."""
    svc.started += 1
    if es is not None:
        es.started += 1


def record(
    svc: Stats,
    es: Stats | None,
    status: int,
    latency_s: float,
    bytes_in: int,
    bytes_out: int,
    failure_class: str | None = None,
    _bisect: Any = bisect_left,  # a bound is inclusive (`le`)
    _bounds: tuple[float, ...] = LATENCY_BOUNDS_S,
) -> None:
    """A routed request ended, after `begin`: the same update on the service and the
    endpoint, unrolled, with the bucket found once. A 5xx answer from upstream is a
    failure of class `5xx` (as Linkerd's default response classifier has it)."""
    i = _bisect(_bounds, latency_s)  # default-arg globals: local lookups on a hot path
    if failure_class is None and status < 500:
        svc.successes += 1
        if es is not None:
            es.successes += 1
    else:
        c = failure_class or SERVER_ERROR
        f = svc.failures
        f[c] = f.get(c, 0) + 1
        if es is not None:
            f = es.failures
            f[c] = f.get(c, 0) + 1
    svc.buckets[i] += 1
    svc.latency_sum_s += latency_s
    svc.bytes_in += bytes_in
    svc.bytes_out += bytes_out
    if es is not None:
        es.buckets[i] += 1
        es.latency_sum_s += latency_s
        es.bytes_in += bytes_in
        es.bytes_out += bytes_out


class Pair:
    """The counters of one (service, endpoint) pair: a request that reached an endpoint
    updates only its pair (`record_pair`), half the work of updating the service and the
    endpoint; `RouterStats.fold` adds pairs into both before anything reads them."""

    __slots__ = ("svc", "es", "started", "successes", "failures", "buckets", "latency_sum_s",
                 "bytes_in", "bytes_out", "dirty", "total")  # fmt: skip

    def __init__(self, svc: Stats, es: Stats) -> None:
        self.svc = svc
        self.es = es
        self.total = 0  # requests ended, kept across folds (the playground's live shares)
        self.started = 0
        self.successes = 0
        self.failures: dict[str, int] = {}
        self.buckets = [0] * _NBUCKETS
        self.latency_sum_s = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dirty = False

    def fold(self) -> None:
        """Move the counts into the service and the endpoint (scrape time only)."""
        self.total += self.successes + sum(self.failures.values())
        for s in (self.svc, self.es):
            s.started += self.started
            s.successes += self.successes
            f = s.failures
            for c, n in self.failures.items():
                f[c] = f.get(c, 0) + n
            b = s.buckets
            for i, n in enumerate(self.buckets):
                if n:
                    b[i] += n
            s.latency_sum_s += self.latency_sum_s
            s.bytes_in += self.bytes_in
            s.bytes_out += self.bytes_out
        self.started = self.successes = self.bytes_in = self.bytes_out = 0
        self.failures = {}
        self.buckets = [0] * _NBUCKETS
        self.latency_sum_s = 0.0
        self.dirty = False


def record_pair(
    p: Pair,
    status: int,
    latency_s: float,
    bytes_in: int,
    bytes_out: int,
    failure_class: str | None = None,
    _bisect: Any = bisect_left,
    _bounds: tuple[float, ...] = LATENCY_BOUNDS_S,
) -> None:
    """A request that reached an endpoint ended: one update, on its pair."""
    if failure_class is None and status < 500:
        p.successes += 1
    else:
        c = failure_class or SERVER_ERROR
        f = p.failures
        f[c] = f.get(c, 0) + 1
    p.buckets[_bisect(_bounds, latency_s)] += 1
    p.latency_sum_s += latency_s
    p.bytes_in += bytes_in
    p.bytes_out += bytes_out
    p.dirty = True


class Decisions:
    """The last routing decisions of real requests, sampled; a bounded ring.

    Each entry holds references, not text (the router snapshot, the route, the bound
    name): the admin renders them only when asked. What is kept: a token bucket of
    `max_per_second` decisions with bursts up to the ring's size (so every request of a
    laptop session or a test shows, whatever its timing, while under sustained load the
    data plane skips with one comparison against `next_at`), then a countdown for
    `sample_rate` (every round(1/rate)-th of those)."""

    __slots__ = ("_rate", "ring", "seq", "_every", "_left", "_clock", "next_at", "_per_s", "_tokens",
                 "_burst", "_last")  # fmt: skip

    def __init__(self, size: int = DECISIONS_SIZE, sample_rate: float = 1.0, max_per_second: float = 1000.0) -> None:
        self.ring: deque[tuple[Any, ...]] = deque(maxlen=size)
        self.seq = 0  # numbers every recorded decision, so a client can tell new ones
        self._clock = time.time
        self._rate = 0.0
        self._every = 0  # 0: never sample
        self._left = 0
        self.sample_rate = sample_rate
        self._per_s = max_per_second
        self._burst = float(size)
        self._tokens = self._burst
        self._last = 0.0
        self.next_at = 0.0  # perf_counter() time before which the bucket is empty

    @property
    def sample_rate(self) -> float:
        return self._rate

    @sample_rate.setter
    def sample_rate(self, rate: float) -> None:
        self._rate = rate
        self._every = max(1, round(1 / rate)) if rate > 0 else 0
        self._left = 1  # the next eligible decision is taken

    def offer(
        self, router: Any, route: Any, bound: Any, endpoint: tuple[str, int] | None, status: int, latency_s: float,
        now: float | None = None,
    ) -> None:
        """One decision, recorded if the limits allow; `now` is a perf_counter() time
        (the data plane passes the one it already has, and skips the call while
        `now < next_at`)."""
        if now is not None and self._per_s > 0:
            tokens = min(self._burst, self._tokens + (now - self._last) * self._per_s)
            self._last = now
            if tokens < 1.0:
                self._tokens = tokens
                self.next_at = now + (1.0 - tokens) / self._per_s
                return
            self._tokens = tokens - 1.0
        left = self._left - 1
        if left > 0 or not self._every:  # rate 1.0 never skips, 0.0 always does
            self._left = left
            return
        self._left = self._every
        self.seq += 1
        self.ring.append((self.seq, self._clock(), router, route, bound, endpoint, status, latency_s))

    def entries(self) -> list[tuple[Any, ...]]:
        return list(self.ring)


#: Bounds of the deadline budget histogram (seconds left when a request with a deadline
#: is forwarded): from a hop's worth of time to a long gRPC stream's deadline.
DEADLINE_BOUNDS_S: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
_NDEADLINE: Final = len(DEADLINE_BOUNDS_S) + 1

#: Failure-accrual states (proxy/upstream/endpoint.py), best first: an endpoint seen in
#: several states (one per worker) counts under the worst of them.
ENDPOINT_STATES: Final = ("available", "probing", "dead")
_STATE_RANK: Final = {s: i for i, s in enumerate(ENDPOINT_STATES)}


class RetryCounters:
    """What the requests of one (service, client, traffic kind) did besides their first
    try, and what their deadlines did: plain increments by proxy/upstream/attempt.py
    (retries, requeues, budget exhausted), route/request.py (the budget left when a
    request with a deadline is forwarded) and the wire (requests answered because a
    deadline or timeout passed, by reason). Rendered at scrape."""

    __slots__ = ("labels", "retries", "requeues", "budget_exhausted", "deadline_exceeded", "budget_buckets",
                 "budget_sum_s")  # fmt: skip

    def __init__(self, service: str, client: str, traffic: str = "base") -> None:
        self.labels = (service, client, traffic)
        self.retries = 0  # tries after a retryable response or failure (service.retries)
        self.requeues = 0  # tries after a failure that reached nothing (client.requeueBudget)
        self.budget_exhausted = 0  # a retry or requeue the budget refused
        self.deadline_exceeded: dict[str, int] = {}  # reason -> requests answered for it
        self.budget_buckets = [0] * _NDEADLINE  # not cumulative: the scrape accumulates
        self.budget_sum_s = 0.0

    @property
    def service(self) -> str:
        return self.labels[0]

    @property
    def client(self) -> str:
        return self.labels[1]


def observe_budget(
    rc: RetryCounters, left_s: float, _bisect: Any = bisect_left, _bounds: tuple[float, ...] = DEADLINE_BOUNDS_S
) -> None:
    """A request with a deadline is forwarded with `left_s` seconds to go."""
    rc.budget_buckets[_bisect(_bounds, left_s)] += 1
    rc.budget_sum_s += left_s


def count_deadline(rc: RetryCounters, reason: str) -> None:
    """A request was answered (or cut) because a deadline or timeout passed."""
    d = rc.deadline_exceeded
    d[reason] = d.get(reason, 0) + 1


class ClientHealth:
    """One upstream client's endpoints as failure accrual sees them, at one scrape: each
    endpoint's state (`host:port` -> state; None when the client is gone) and the
    ejections counted so far (monotonic: kept across reloads and endpoint churn)."""

    __slots__ = ("labels", "states", "ejections")

    def __init__(self, labels: tuple[str, str], states: dict[str, str] | None, ejections: int) -> None:
        self.labels = labels  # (router, client id)
        self.states = states
        self.ejections = ejections

    def by_state(self) -> dict[str, int]:
        out = dict.fromkeys(ENDPOINT_STATES, 0)
        for st in (self.states or {}).values():
            out[st] = out.get(st, 0) + 1
        return out


def worse_state(a: str | None, b: str) -> str:
    """The worse of two failure-accrual states (an unknown state ranks as dead)."""
    if a is None:
        return b
    return a if _STATE_RANK.get(a, 2) >= _STATE_RANK.get(b, 2) else b


class RouterStats:
    """One router's stats: services and clients (each split by traffic kind), requests
    that never got a service, and the decision ring."""

    __slots__ = ("label", "_services", "_clients", "_other_services", "_other_clients", "unrouted",
                 "decisions", "_max_services", "_max_clients", "_max_endpoints", "_pairs", "retry",
                 "_unbound", "_ejections", "_ejections_seen")  # fmt: skip

    def __init__(
        self,
        label: str,
        *,
        max_services: int = MAX_SERVICES,
        max_clients: int = MAX_CLIENTS,
        max_endpoints: int = MAX_ENDPOINTS,
        decisions: Decisions | None = None,
    ) -> None:
        self.label = label
        self._services: dict[tuple[bytes, bool], Stats] = {}
        self._clients: dict[tuple[bytes, bool], ClientStats] = {}
        self._other_services: dict[bool, Stats] = {}
        self._other_clients: dict[bool, ClientStats] = {}
        self.unrouted: dict[str, int] = {}  # failure class -> count (no service, no latency)
        self.decisions = decisions if decisions is not None else Decisions()
        self._max_services = max_services
        self._max_clients = max_clients
        self._max_endpoints = max_endpoints
        self._pairs: list[Pair] = []
        self._unbound: dict[bool, Stats] = {}
        self.retry: dict[tuple[str, str, str], RetryCounters] = {}
        # Ejections per client id, summed over the client objects seen at scrapes, and
        # what each object had then (kept by reference, so an id is never reused).
        self._ejections: dict[str, int] = {}
        self._ejections_seen: dict[int, tuple[Any, int]] = {}

    def retry_counters(self, service: str, client: bytes, override: bool = False) -> RetryCounters:
        """The counters of a (service, client, traffic kind) (once per route and client)."""
        traffic = self._traffic(override)
        key = (service, client.decode("latin-1"), traffic)
        rc = self.retry.get(key)
        if rc is None:
            if len(self.retry) >= self._max_services * 4:  # cardinality cap, as for services
                key = (OTHER, OTHER, traffic)
                rc = self.retry.get(key)
                if rc is not None:
                    return rc
            rc = self.retry[key] = RetryCounters(*key)
        return rc

    def retry_rows(self) -> list[RetryCounters]:
        return list(self.retry.values())

    def client_health(self, clients: Iterable[Any]) -> list[ClientHealth]:
        """Endpoint states and ejections of `clients` (the router's current upstream
        clients: objects with `id_show`, `endpoints()` (each with `host`, `port`,
        `state`) and `ejections()`), one row per client id (scrape time only).
        Ejections are counted here as the growth of each client object's total, so the
        counter never goes down when a reload replaces the objects."""
        rows: dict[str, dict[str, str]] = {}
        seen: dict[int, tuple[Any, int]] = {}
        prev_seen = self._ejections_seen
        ej = self._ejections
        for c in clients:
            cid = c.id_show.decode("latin-1")
            if cid not in ej and len(ej) >= self._max_clients:
                cid = OTHER
            n = c.ejections()
            prev = prev_seen.get(id(c))
            last = prev[1] if prev is not None and prev[0] is c else 0
            ej[cid] = ej.get(cid, 0) + max(0, n - last)
            seen[id(c)] = (c, n)
            states = rows.setdefault(cid, {})
            for ep in c.endpoints():
                addr = f"{ep.host}:{ep.port}"
                states[addr] = worse_state(states.get(addr), ep.state)
        self._ejections_seen = seen
        return [ClientHealth((self.label, cid), rows.get(cid), n) for cid, n in ej.items()]

    def pair(self, svc: Stats, es: Stats) -> Pair:
        """The pair of a service and an endpoint (cached on the endpoint's stats)."""
        p = es.pairs.get(svc)
        if p is None:
            p = es.pairs[svc] = Pair(svc, es)
            self._pairs.append(p)
        return p

    def fold(self) -> None:
        """Bring services and endpoints up to date before they are read."""
        for p in self._pairs:
            if p.dirty or p.started:
                p.fold()

    def pair_totals(self) -> dict[tuple[str, str, str], int]:
        """Requests ended so far per (service, client, endpoint), both traffic kinds
        together (read by the admin's live traffic window; folds first)."""
        self.fold()
        out: dict[tuple[str, str, str], int] = {}
        for p in self._pairs:
            if p.total:
                key = (p.svc.labels[1], p.es.labels[1], p.es.labels[3])
                out[key] = out.get(key, 0) + p.total
        return out

    @staticmethod
    def _traffic(override: bool) -> str:
        return "override" if override else "base"

    def service(self, service: bytes, override: bool) -> Stats:
        """The stats of a logical name (cached; past the cap, the shared `other`)."""
        key = (service, override)
        s = self._services.get(key)
        if s is not None:
            return s
        if len(self._services) >= self._max_services:
            s = self._other_services.get(override)
            if s is None:
                s = self._other_services[override] = Stats((self.label, OTHER, self._traffic(override)))
            return s
        s = self._services[key] = Stats((self.label, service.decode("latin-1"), self._traffic(override)))
        return s

    def unbound(self, override: bool) -> Stats:
        """The shared stats of every name that bound to nothing (label `unbound`)."""
        s = self._unbound.get(override)
        if s is None:
            s = self._unbound[override] = Stats((self.label, UNBOUND, self._traffic(override)))
        return s

    def client(self, client_id: bytes, override: bool) -> ClientStats:
        """A bound client (by id); `.endpoint(host, port)` gives the per-request object."""
        key = (client_id, override)
        c = self._clients.get(key)
        if c is not None:
            return c
        if len(self._clients) >= self._max_clients:
            c = self._other_clients.get(override)
            if c is None:
                c = ClientStats((self.label, OTHER, self._traffic(override)), self._max_endpoints)
                self._other_clients[override] = c
            return c
        c = ClientStats((self.label, client_id.decode("latin-1"), self._traffic(override)), self._max_endpoints)
        self._clients[key] = c
        return c

    def record_unrouted(self, status: int, failure_class: str | None) -> None:
        """A request answered before it had a service (identification, override checks)."""
        c = failure_class or str(status)
        u = self.unrouted
        u[c] = u.get(c, 0) + 1

    def services(self) -> list[Stats]:
        self.fold()
        return [*self._services.values(), *self._other_services.values(), *self._unbound.values()]

    def clients(self) -> list[ClientStats]:
        self.fold()
        return [*self._clients.values(), *self._other_clients.values()]


class Telemetry:
    """Every router's stats; `render()` writes them in the Prometheus text format."""

    def __init__(
        self,
        *,
        max_services: int = MAX_SERVICES,
        max_clients: int = MAX_CLIENTS,
        max_endpoints: int = MAX_ENDPOINTS,
        decisions_size: int = DECISIONS_SIZE,
        sample_rate: float = 1.0,
    ) -> None:
        self.routers: dict[str, RouterStats] = {}
        self.started = time.time()
        #: More families for the scrape: objects with `metric_lines(out)` (access logs, exporters).
        self.extra: list[Any] = []
        self._caps = (max_services, max_clients, max_endpoints)
        # Extra exposition lines (HELP/TYPE/samples) from parts that keep their own
        # counters, e.g. the Kubernetes watches; called at scrape only.
        self.collectors: list[Callable[[], Iterable[str]]] = []
        self._decisions = (decisions_size, sample_rate)
        #: Every router's current upstream clients, by router label (the runtime sets
        #: it; read at scrape for endpoint states and ejections). None: none known.
        self.clients_source: Callable[[], Mapping[str, Iterable[Any]]] | None = None

    def health(self) -> dict[str, list[ClientHealth]]:
        """Each router's clients' endpoint states and ejections, now (scrape time only)."""
        src = self.clients_source
        current = src() if src is not None else {}
        return {label: rs.client_health(current.get(label, ())) for label, rs in self.routers.items()}

    def router(self, label: str) -> RouterStats:
        rs = self.routers.get(label)
        if rs is None:
            ms, mc, me = self._caps
            rs = self.routers[label] = RouterStats(
                label, max_services=ms, max_clients=mc, max_endpoints=me, decisions=Decisions(*self._decisions)
            )
        return rs

    def set_sample_rate(self, rate: float) -> None:
        rate = min(max(rate, 0.0), 1.0)
        self._decisions = (self._decisions[0], rate)
        for rs in self.routers.values():
            rs.decisions.sample_rate = rate

    def render(self) -> bytes:
        """The Prometheus text exposition (version 0.0.4) of every metric."""
        return render(self)


# -- rendering at scrape -------------------------------------------------------------------
#
# Written directly rather than through prometheus_client's collector: the scrape runs on
# the proxy's event loop, and a histogram per service and endpoint makes ~40 lines each.
# prometheus_client's generate_latest took 1.2 s for 500 services with their clients and
# endpoints (52k lines); this takes 40-80 ms on the same loaded 2-CPU machine. The format
# is checked by parsing it back with prometheus_client's parser in the tests.

_PREFIX: Final = "dtabproxy"
_LE: Final = tuple(repr(b) for b in LATENCY_BOUNDS_S) + ("+Inf",)
_DEADLINE_LE: Final = tuple(repr(b) for b in DEADLINE_BOUNDS_S) + ("+Inf",)


def _escape(value: str) -> str:
    # Label values escape backslash, double quote and newline (exposition format 0.0.4).
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _num(v: int | float) -> str:
    # `int | float`, not float: compiled (mypyc), a float parameter turns an int into 1.0.
    if isinstance(v, int):
        return str(v)
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


class _Family:
    __slots__ = ("name", "kind", "help", "lines")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.lines: list[str] = []

    def add(self, labels: str, value: int | float, suffix: str = "") -> None:
        self.lines.append(f"{self.name}{suffix}{{{labels}}} {_num(value)}")

    def write(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}")
        out.append(f"# TYPE {self.name} {self.kind}")
        out.extend(self.lines)


class _Level:
    """The families of one level (router, service, client or endpoint)."""

    def __init__(self, level: str) -> None:
        p = f"{_PREFIX}_{level}"
        self.requests = _Family(f"{p}_requests_total", "counter", f"Requests by {level}.")
        self.successes = _Family(f"{p}_successes_total", "counter", f"Requests by {level} with no proxy failure and status < 500.")
        self.failures = _Family(f"{p}_failures_total", "counter", f"Failed requests by {level} and failure class.")
        self.latency = _Family(f"{p}_request_latency_seconds", "histogram", f"Request latency by {level}.")
        self.in_flight = _Family(f"{p}_in_flight", "gauge", f"Requests in flight by {level}.")
        self.retries = _Family(f"{p}_retries_total", "counter", f"Retries (tries after a retryable answer) by {level}.")
        self.bytes_in = _Family(f"{p}_request_bytes_total", "counter", f"Request body bytes by {level}.")
        self.bytes_out = _Family(f"{p}_response_bytes_total", "counter", f"Response body bytes by {level}.")
        # A retry is a request's, not an endpoint's: each try counts as a request of the
        # endpoint that got it, so the endpoint level has no retries family.
        self.endpoint = level == "endpoint"
        self.connects = _Family(f"{p}_connects_total", "counter", "Upstream connections made.")
        self.connect_failures = _Family(f"{p}_connect_failures_total", "counter", "Upstream connections that failed.")
        self.connections = _Family(f"{p}_connections", "gauge", "Open upstream connections.")

    def add(self, labels: str, s: Stats, retries: int = 0) -> None:
        requests = s.requests
        self.requests.add(labels, requests)
        self.successes.add(labels, s.successes)
        for c, n in sorted(s.failures.items()):
            self.failures.add(f'{labels},class="{_escape(c)}"', n)
        _histogram(self.latency, labels, _LE, s.buckets, s.latency_sum_s)
        self.in_flight.add(labels, s.started - requests)
        if self.endpoint:
            self.connects.add(labels, s.connects)
            self.connect_failures.add(labels, s.connect_failures)
            self.connections.add(labels, s.connections)
        else:
            self.retries.add(labels, retries)
        self.bytes_in.add(labels, s.bytes_in)
        self.bytes_out.add(labels, s.bytes_out)

    def write(self, out: list[str]) -> None:
        fams = [self.requests, self.successes, self.failures, self.latency, self.in_flight]
        if not self.endpoint:
            fams.append(self.retries)
        fams += [self.bytes_in, self.bytes_out]
        if self.endpoint:
            fams += [self.connects, self.connect_failures, self.connections]
        for f in fams:
            f.write(out)


def _histogram(fam: _Family, labels: str, les: tuple[str, ...], buckets: list[int], total_s: float) -> None:
    lines = fam.lines
    name = fam.name
    acc = 0
    for le, n in zip(les, buckets, strict=True):
        acc += n
        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {acc}')
    lines.append(f"{name}_count{{{labels}}} {acc}")
    lines.append(f"{name}_sum{{{labels}}} {_num(total_s)}")


class _PairLevel:
    """The families of the (service, client) level: what the attempts of a service's
    requests through one client did besides their first try, and their deadlines."""

    def __init__(self) -> None:
        p = f"{_PREFIX}_service_client"
        self.retries = _Family(f"{p}_retries_total", "counter",
                               "Retries: tries after a response or failure the service's classifier calls retryable.")
        self.requeues = _Family(f"{p}_requeues_total", "counter",
                                "Requeues: tries after a failure that reached nothing (connect failure, refused stream).")
        self.exhausted = _Family(f"{p}_retry_budget_exhausted_total", "counter",
                                 "Retries or requeues the retry or requeue budget refused.")
        self.deadline = _Family(f"{p}_deadline_exceeded_total", "counter",
                                "Requests answered or cut because a deadline or timeout passed, by reason.")
        self.budget = _Family(f"{p}_deadline_budget_seconds", "histogram",
                              "Time left of a request's deadline when it was forwarded.")  # fmt: skip

    def add(self, labels: str, rc: RetryCounters) -> None:
        self.retries.add(labels, rc.retries)
        self.requeues.add(labels, rc.requeues)
        self.exhausted.add(labels, rc.budget_exhausted)
        for r, n in sorted(rc.deadline_exceeded.items()):
            self.deadline.add(f'{labels},reason="{_escape(r)}"', n)
        if any(rc.budget_buckets):  # only pairs whose requests had deadlines
            _histogram(self.budget, labels, _DEADLINE_LE, rc.budget_buckets, rc.budget_sum_s)

    def write(self, out: list[str]) -> None:
        for f in (self.retries, self.requeues, self.exhausted, self.deadline, self.budget):
            f.write(out)


def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


_SERVICE_LABELS: Final = ("router", "service", "traffic")
_CLIENT_LABELS: Final = ("router", "client", "traffic")
_ENDPOINT_LABELS: Final = ("router", "client", "traffic", "endpoint")


_PAIR_LABELS: Final = ("router", "service", "client", "traffic")


def render(tel: Telemetry) -> bytes:
    router, service, client, endpoint = _Level("router"), _Level("service"), _Level("client"), _Level("endpoint")
    pairs = _PairLevel()
    unrouted = _Family(f"{_PREFIX}_router_unrouted_failures_total", "counter", "Requests answered before they had a service.")
    sampled = _Family(f"{_PREFIX}_router_decisions_sampled_total", "counter", "Routing decisions sampled.")
    states = _Family(f"{_PREFIX}_client_endpoints", "gauge",
                     "Endpoints of a client by failure-accrual state (available, probing, dead).")
    ejections = _Family(f"{_PREFIX}_client_ejections_total", "counter",
                        "Times failure accrual took an endpoint of a client out.")  # fmt: skip
    health = tel.health()
    for label, rs in tel.routers.items():
        rl = _escape(label)
        # Retries by service, by client and in all, from the (service, client) counters.
        by_service: dict[tuple[str, str], int] = {}
        by_client: dict[tuple[str, str], int] = {}
        by_traffic: dict[str, int] = {}
        for rc in rs.retry_rows():
            svc_name, client_id, traffic = rc.labels
            pairs.add(_label_text(_PAIR_LABELS, (label, *rc.labels)), rc)
            if rc.retries:
                by_service[(svc_name, traffic)] = by_service.get((svc_name, traffic), 0) + rc.retries
                by_client[(client_id, traffic)] = by_client.get((client_id, traffic), 0) + rc.retries
                by_traffic[traffic] = by_traffic.get(traffic, 0) + rc.retries
        totals = {"base": Stats((label, "base")), "override": Stats((label, "override"))}
        for s in rs.services():
            service.add(_label_text(_SERVICE_LABELS, s.labels), s, by_service.get((s.labels[1], s.labels[2]), 0))
            totals[s.labels[2]].add(s)
        for t, s in totals.items():
            if t == "base" or s.started or s.successes or s.failures:
                router.add(f'router="{rl}",traffic="{t}"', s, by_traffic.get(t, 0))
        for cs in rs.clients():
            total = Stats(cs.labels)
            for e in cs.endpoints():
                endpoint.add(_label_text(_ENDPOINT_LABELS, e.labels), e)
                total.add(e)
            client.add(_label_text(_CLIENT_LABELS, cs.labels), total, by_client.get((cs.labels[1], cs.labels[2]), 0))
        for cls, n in sorted(rs.unrouted.items()):
            unrouted.add(f'router="{rl}",class="{_escape(cls)}"', n)
        sampled.add(f'router="{rl}"', rs.decisions.seq)
        for h in health.get(label, ()):
            lt = f'router="{rl}",client="{_escape(h.labels[1])}"'
            if h.states is not None:  # a client the router has now
                for st, n in h.by_state().items():
                    states.add(f'{lt},state="{_escape(st)}"', n)
            ejections.add(lt, h.ejections)
    out: list[str] = []
    router.write(out)
    unrouted.write(out)
    sampled.write(out)
    service.write(out)
    client.write(out)
    endpoint.write(out)
    pairs.write(out)
    states.write(out)
    ejections.write(out)
    for collect in tel.collectors:
        out.extend(collect())
    for extra in tel.extra:
        extra.metric_lines(out)
    out.append(f"# HELP {_PREFIX}_start_time_seconds When the process started (Unix time).")
    out.append(f"# TYPE {_PREFIX}_start_time_seconds gauge")
    out.append(f"{_PREFIX}_start_time_seconds {_num(tel.started)}")
    out.append("")
    return "\n".join(out).encode("utf-8")


# -- workers: a compact snapshot per process, merged into one as if one process ----------------
#
# With `workers: N` each worker process counts its own requests; the main process asks each
# for `snapshot(telemetry)` when Prometheus scrapes and renders `merge(...)` with the same
# `render`. A snapshot holds plain lists and dicts (no objects), one row per label set:
#
#   {"routers": {label: {"services": [[labels, counts], ...],
#                        "clients": [[labels, [[endpoint, counts], ...]], ...],
#                        "retry": [[labels, retry_counts], ...],
#                        "health": [[client, {endpoint: state} or None, ejections], ...],
#                        "unrouted": {class: n}, "sampled": n}},
#    "collectors": [exposition lines of the parts that keep their own counters]}
#
# where `counts` is [started, successes, {class: n}, buckets (trailing zeros cut),
# latency_sum_s, bytes_in, bytes_out, connects, connect_failures, connections] and
# `retry_counts` is [retries, requeues, budget_exhausted, {reason: n}, deadline budget
# buckets (trailing zeros cut), budget_sum_s]. Each worker keeps its own failure accrual:
# merged, an endpoint counts under the worst state any worker has it in, and ejections
# are summed.

Snapshot = dict[str, Any]

_CONNECTIONS: Final = 9  # the index of `connections` in `counts`


def _trim(b: list[int]) -> list[int]:
    end = len(b)
    while end and not b[end - 1]:
        end -= 1
    return b[:end]


def _counts(s: Stats) -> list[Any]:
    return [s.started, s.successes, dict(s.failures), _trim(s.buckets), s.latency_sum_s, s.bytes_in,
            s.bytes_out, s.connects, s.connect_failures, s.connections]  # fmt: skip


def _add_counts(s: Stats, c: list[Any]) -> None:
    started, successes, failures, buckets, latency_sum_s, bytes_in, bytes_out, connects, cfail, conns = c
    s.started += started
    s.successes += successes
    f = s.failures
    for k, n in failures.items():
        f[k] = f.get(k, 0) + n
    b = s.buckets
    for i, n in enumerate(buckets):
        b[i] += n
    s.latency_sum_s += latency_sum_s
    s.bytes_in += bytes_in
    s.bytes_out += bytes_out
    s.connects += connects
    s.connect_failures += cfail
    s.connections += conns


def _retry_counts(rc: RetryCounters) -> list[Any]:
    return [rc.retries, rc.requeues, rc.budget_exhausted, dict(rc.deadline_exceeded), _trim(rc.budget_buckets),
            rc.budget_sum_s]  # fmt: skip


def _add_retry_counts(rc: RetryCounters, c: list[Any]) -> None:
    retries, requeues, exhausted, deadline, buckets, budget_sum_s = c
    rc.retries += retries
    rc.requeues += requeues
    rc.budget_exhausted += exhausted
    d = rc.deadline_exceeded
    for r, n in deadline.items():
        d[r] = d.get(r, 0) + n
    b = rc.budget_buckets
    for i, n in enumerate(buckets):
        b[i] += n
    rc.budget_sum_s += budget_sum_s


def snapshot(tel: Telemetry) -> Snapshot:
    """This process's counters, as plain data (a worker sends it to the main process)."""
    routers: dict[str, Any] = {}
    health = tel.health()
    for label, rs in tel.routers.items():
        routers[label] = {
            "services": [[list(s.labels), _counts(s)] for s in rs.services()],
            "clients": [[list(cs.labels), [[e.labels[-1], _counts(e)] for e in cs.endpoints()]] for cs in rs.clients()],
            "retry": [[list(rc.labels), _retry_counts(rc)] for rc in rs.retry_rows()],
            "health": [[h.labels[1], h.states, h.ejections] for h in health.get(label, ())],
            "unrouted": dict(rs.unrouted),
            "sampled": rs.decisions.seq,
        }
    return {"routers": routers, "collectors": [line for collect in tel.collectors for line in collect()]}


class _MergedRouter(RouterStats):
    """A router's stats summed over workers: label sets come from the snapshots (each
    worker applied the caps already), so nothing here caps or folds."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.merged_services: dict[tuple[str, ...], Stats] = {}
        self.merged_clients: dict[tuple[str, ...], ClientStats] = {}
        self.merged_health: dict[str, ClientHealth] = {}

    def services(self) -> list[Stats]:
        return list(self.merged_services.values())

    def clients(self) -> list[ClientStats]:
        return list(self.merged_clients.values())

    def client_health(self, clients: Iterable[Any]) -> list[ClientHealth]:
        return list(self.merged_health.values())

    def merge_health(self, client: str, states: dict[str, str] | None, ejections: int) -> None:
        h = self.merged_health.get(client)
        if h is None:
            h = self.merged_health[client] = ClientHealth((self.label, client), None, 0)
        h.ejections += ejections
        if states is not None:
            merged = h.states if h.states is not None else {}
            for addr, st in states.items():
                merged[addr] = worse_state(merged.get(addr), st)
            h.states = merged


def merge(snapshots: Iterable[Snapshot]) -> Telemetry:
    """One `Telemetry` whose counters are the sums of the snapshots' (same labels, one
    series), ready for `render`. Collector lines are merged by `merge_lines`."""
    tel = Telemetry()
    lines: list[list[str]] = []
    for snap in snapshots:
        lines.append(snap.get("collectors", []))
        for label, r in snap["routers"].items():
            rs = tel.routers.get(label)
            if rs is None:
                rs = tel.routers[label] = _MergedRouter(label)
            assert isinstance(rs, _MergedRouter)
            for labels, c in r["services"]:
                key = tuple(labels)
                s = rs.merged_services.get(key)
                if s is None:
                    s = rs.merged_services[key] = Stats(key)
                _add_counts(s, c)
            for labels, endpoints in r["clients"]:
                key = tuple(labels)
                cs = rs.merged_clients.get(key)
                if cs is None:
                    cs = rs.merged_clients[key] = ClientStats(key, cap=1 << 62)
                for name, c in endpoints:
                    if name == "none":
                        _add_counts(cs.unpicked, c)
                        continue
                    e = cs._endpoints.get((name, 0))
                    if e is None:
                        e = cs._endpoints[(name, 0)] = Stats((*key, name))
                    _add_counts(e, c)
            for (svc_name, client_id, traffic), c in r.get("retry", ()):
                rkey = (svc_name, client_id, traffic)
                rc = rs.retry.get(rkey)
                if rc is None:
                    rc = rs.retry[rkey] = RetryCounters(*rkey)
                _add_retry_counts(rc, c)
            for client, states, n in r.get("health", ()):
                rs.merge_health(client, states, n)
            for cls, n in r["unrouted"].items():
                rs.unrouted[cls] = rs.unrouted.get(cls, 0) + n
            rs.decisions.seq += r["sampled"]
    merged = merge_lines(lines)
    tel.collectors.append(lambda: merged)
    return tel


def retired(snap: Snapshot) -> Snapshot:
    """What a worker that exited leaves to the sums: its counters (so a total never goes
    down when a worker is restarted), with nothing in flight, no connection open, no
    endpoint state and no gauge from its collectors."""
    out: dict[str, Any] = {}
    for label, r in snap["routers"].items():
        def done(c: list[Any]) -> list[Any]:
            c = list(c)
            c[0] = c[1] + sum(c[2].values())  # started = finished: nothing in flight
            c[_CONNECTIONS] = 0
            return c

        out[label] = {
            "services": [[labels, done(c)] for labels, c in r["services"]],
            "clients": [[labels, [[n, done(c)] for n, c in eps]] for labels, eps in r["clients"]],
            "retry": list(r.get("retry", ())),
            "health": [[client, None, n] for client, _, n in r.get("health", ())],
            "unrouted": dict(r["unrouted"]),
            "sampled": r["sampled"],
        }
    return {"routers": out, "collectors": _counters_only(snap.get("collectors", []))}


def combine(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Several snapshots as one (the main process keeps what exited workers left this way)."""
    return snapshot(merge(snapshots))


def totals(snap: Snapshot) -> tuple[int, int]:
    """(requests, in flight) of one snapshot over its routers: the per-worker series."""
    requests = started = finished = 0
    for r in snap["routers"].values():
        for _, c in r["services"]:
            started += c[0]
            finished += c[1] + sum(c[2].values())
        requests += sum(r["unrouted"].values())
    return requests + finished, started - finished


#: How a gauge of the collectors (state every worker keeps a copy of, e.g. a Kubernetes
#: watch) reads as if one process: the worst worker's. `synced`/`applied`: the fewest;
#: anything else (errors, invalid, untranslated): the most. Counters are summed.
_GAUGE_MIN: Final = ("_synced", "_applied")


def _sample_name(line: str) -> str:
    end = line.find("{")
    return line[: end if end >= 0 else line.find(" ")]


def _counters_only(lines: list[str]) -> list[str]:
    kinds: dict[str, str] = {}
    out = []
    for line in lines:
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            kinds[name] = kind
        if line.startswith("#") or kinds.get(_sample_name(line)) == "counter":
            out.append(line)
    return out


def merge_lines(groups: Iterable[list[str]]) -> list[str]:
    """Exposition lines from several processes as one: the same series once, counters
    summed, gauges the worst process's (`_GAUGE_MIN`); families in first-seen order."""
    helps: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    series: dict[str, dict[str, float]] = {}
    for lines in groups:
        for line in lines:
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) == 4 and parts[1] in ("HELP", "TYPE"):
                    fam = helps.setdefault(parts[2], [])
                    if len(fam) < 2 and line not in fam:
                        fam.append(line)
                    if parts[1] == "TYPE":
                        kinds[parts[2]] = parts[3]
                    series.setdefault(parts[2], {})
                continue
            key, _, value_text = line.rpartition(" ")
            name = _sample_name(line)
            try:
                value = float(value_text)
            except ValueError:
                continue
            fam_series = series.setdefault(name, {})
            if key not in fam_series:
                fam_series[key] = value
            elif kinds.get(name) == "counter":
                fam_series[key] += value
            elif name.endswith(_GAUGE_MIN):
                fam_series[key] = min(fam_series[key], value)
            else:
                fam_series[key] = max(fam_series[key], value)
    out: list[str] = []
    for name, samples in series.items():
        out.extend(helps.get(name, []))
        for key, v in samples.items():
            whole = math.isfinite(v) and v == int(v) and abs(v) < 1 << 53
            out.append(f"{key} {_num(int(v))}" if whole else f"{key} {_num(v)}")
    return out
