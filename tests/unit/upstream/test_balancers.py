"""Balancers: distributions with seeded randomness and a fake clock, health (skip,
probe, panic), and the promise that a healthy pick never reads the clock."""

from __future__ import annotations

import collections
import math
import random

import pytest

from config.policy import BackoffConfig, FailureAccrualConfig, LoadBalancerConfig
from proxy.upstream.accrual import AVAILABLE, DEAD, PROBING, new_health
from proxy.upstream.balancers import (
    EWMA_PENALTY,
    Aperture,
    HeapLeastLoaded,
    P2CLeastLoaded,
    P2CPeakEwma,
    RoundRobin,
    make_balancer,
)

from .conftest import Ep, FakeClock, nm

KINDS = ("ewma", "p2c", "roundRobin", "heap", "aperture")
ONE_FAILURE_10S = FailureAccrualConfig(failures=1, backoff=BackoffConfig("constant", ms=10_000))


def eps(n: int, **kw) -> list[Ep]:
    return [Ep(f"e{i}", health=new_health(ONE_FAILURE_10S), **kw) for i in range(n)]


def balancer(kind: str, clock: FakeClock, rand: random.Random, endpoints, **cfg):
    b = make_balancer(LoadBalancerConfig(kind=kind, **cfg), clock, rand.random)
    b.update(endpoints)
    return b


def kill(ep: Ep, now: float) -> None:
    assert ep.health.failure(now) is True


def picks(b, n: int) -> collections.Counter[str]:
    return collections.Counter(nm(b.pick()) for _ in range(n))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_single_and_identity(kind, clock, rand):
    b = make_balancer(LoadBalancerConfig(kind=kind), clock, rand.random)
    assert b.pick() is None
    b.update([])
    assert b.pick() is None
    (only,) = eps(1)
    b.update([only])
    assert all(b.pick() is only for _ in range(20))
    a, c = eps(2)
    b.update([only, a, c])
    got = {id(b.pick()) for _ in range(300)}
    # aperture keeps an idle client on one endpoint (its minAperture); the others use all
    assert got == {id(only), id(a), id(c)} if kind != "aperture" else len(got) == 1


@pytest.mark.parametrize("kind", ["ewma", "p2c", "roundRobin", "heap"])
def test_a_healthy_pick_never_reads_the_clock(kind, clock, rand):
    es = eps(100)
    b = balancer(kind, clock, rand, es)
    for e in es[:50]:
        e.outstanding = 3
    for i in range(2000):
        b.pick()
        b.observe(es[i % 100], 0.01, clock.t)
    assert clock.reads == 0


def test_aperture_reads_the_clock_only_to_sample_its_load(clock, rand):
    es = eps(100)
    b = balancer("aperture", clock, rand, es)
    for _ in range(1000):
        b.pick()
    assert 0 < clock.reads <= 1000 / (4 + 100 // 8) + 1


def test_p2c_prefers_the_less_loaded():
    es = eps(3)
    es[1].outstanding = es[2].outstanding = 10
    b = balancer("p2c", FakeClock(), random.Random(1), es)
    n = picks(b, 3000)
    # e0 wins whenever it is one of the two candidates: 2/3 of the picks
    assert 1900 <= n["e0"] <= 2100
    assert 400 <= n["e1"] <= 600 and 400 <= n["e2"] <= 600


def test_p2c_under_feedback_spreads_load_evenly():
    """Requests that never finish: p2c keeps the outstanding counts within a few."""
    es = eps(10)
    b = balancer("p2c", FakeClock(), random.Random(2), es)
    for _ in range(1000):
        b.pick().outstanding += 1
    counts = [e.outstanding for e in es]
    assert max(counts) - min(counts) <= 3


def test_ewma_prefers_the_faster():
    clock = FakeClock()
    es = eps(3)
    b = balancer("ewma", clock, random.Random(3), es)
    for _ in range(10):
        clock.advance(0.1)
        b.observe(es[0], 0.010, clock.t)
        b.observe(es[1], 0.100, clock.t)
        b.observe(es[2], 0.100, clock.t)
    n = picks(b, 3000)
    assert 1900 <= n["e0"] <= 2100  # the fast one wins every pair it is in
    two = eps(2)
    b.update(two)
    b.observe(two[0], 0.05, clock.t)
    b.observe(two[1], 0.01, clock.t)
    assert picks(b, 100) == {"e1": 100}  # two endpoints: both are always the candidates


def test_ewma_load_is_cost_times_outstanding_plus_one():
    clock = FakeClock()
    a, c = eps(2)
    b = balancer("ewma", clock, random.Random(4), [a, c])
    b.observe(a, 0.010, clock.t)
    b.observe(c, 0.030, clock.t)
    a.outstanding = 3  # 0.010 * 4 = 0.040 > 0.030 * 1
    assert picks(b, 50) == {"e1": 50}
    a.outstanding = 1  # 0.020 < 0.030
    assert picks(b, 50) == {"e0": 50}


def test_ewma_peak_is_taken_at_once_and_decays_with_the_decay_time():
    clock = FakeClock(0.0)
    (e,) = eps(1)
    b = P2CPeakEwma(10.0, 5, clock, random.random)
    b.update([e])
    b.observe(e, 0.010, 0.0)
    assert e.cost == 0.010
    b.observe(e, 1.0, 1.0)  # a peak: no averaging
    assert e.cost == 1.0
    b.observe(e, 0.010, 11.0)  # one time constant later
    assert e.cost == pytest.approx(0.010 + (1.0 - 0.010) * math.exp(-1))
    b.observe(e, 0.010, 11.0)  # no time passed: no weight to the new value
    assert e.cost == pytest.approx(0.010 + (1.0 - 0.010) * math.exp(-1))
    assert e.cost_stamp == 11.0


def test_ewma_unobserved_cost_decays_so_a_slow_endpoint_is_tried_again():
    clock = FakeClock(0.0)
    slow, fast = eps(2)
    b = balancer("ewma", clock, random.Random(5), [slow, fast])
    b.observe(slow, 2.0, 0.0)
    b.observe(fast, 0.05, 0.0)
    assert b.pick() is fast
    # 100 s later (known from the latest observation of any endpoint): 2.0 * e^-10 < 0.05
    b.observe(fast, 0.05, 100.0)
    assert b.pick() is slow
    assert slow.cost == pytest.approx(2.0 * math.exp(-10)) and slow.cost_stamp == 100.0
    assert clock.reads == 0


def test_ewma_unobserved_endpoint_penalty():
    clock = FakeClock()
    seen, new = eps(2)
    b = balancer("ewma", clock, random.Random(6), [seen, new])
    b.observe(seen, 0.5, clock.t)
    assert b.pick() is new  # no history and idle: load 0, it gets its first request
    new.outstanding = 1  # no history but busy: the penalty keeps it to one at a time
    assert picks(b, 20) == {"e0": 20}
    assert b._load(new) == EWMA_PENALTY + 1


def test_round_robin_cycles_in_order_and_skips_dead():
    clock = FakeClock()
    es = eps(3)
    b = balancer("roundRobin", clock, random.Random(7), es)
    assert [nm(b.pick()) for _ in range(7)] == ["e0", "e1", "e2", "e0", "e1", "e2", "e0"]
    kill(es[1], clock.t)
    got = [nm(b.pick()) for _ in range(6)]
    assert "e1" not in got and set(got) == {"e0", "e2"}


def test_heap_picks_the_least_outstanding():
    es = eps(5)
    for e, o in zip(es, (3, 1, 4, 1, 5), strict=True):
        e.outstanding = o
    b = balancer("heap", FakeClock(), random.Random(8), es)
    for _ in range(20):  # requests that never finish: always the current minimum
        e = b.pick()
        assert e.outstanding == min(x.outstanding for x in es)
        e.outstanding += 1
    assert sorted(e.outstanding for e in es) == [6, 7, 7, 7, 7]  # 14 + 20 spread evenly


def test_heap_sees_a_finished_request_within_n_picks():
    es = eps(4)
    b = balancer("heap", FakeClock(), random.Random(9), es)
    for _ in range(40):
        b.pick().outstanding += 1
    assert [e.outstanding for e in es] == [10, 10, 10, 10]
    es[2].outstanding = 0  # its requests finished; nobody told the balancer
    got = []
    for _ in range(4 + 3):
        e = b.pick()
        got.append(nm(e))
        e.outstanding += 1
    assert got[-3:] == ["e2", "e2", "e2"]


def test_aperture_stays_small_under_light_load_and_grows_with_load():
    clock = FakeClock()
    es = eps(10)
    b = balancer("aperture", clock, random.Random(10), es)
    assert isinstance(b, Aperture)
    assert b.aperture == 1
    light = picks(b, 200)  # nothing outstanding: all on one endpoint
    assert len(light) == 1
    # Load builds up (requests that do not finish); with time passing, the smoothed load
    # per endpoint goes over highLoad (2) and the aperture widens step by step.
    for _ in range(400):
        clock.advance(0.05)
        b.pick().outstanding += 1
    assert b.aperture == 10
    used = {nm(e) for e in es if e.outstanding}
    assert len(used) == 10
    # Everything finishes; over a few smoothing windows the aperture shrinks back.
    for e in es:
        e.outstanding = 0
    for _ in range(1000):
        clock.advance(0.1)
        b.pick()
    assert b.aperture == 1


def test_aperture_load_band_keeps_load_per_endpoint_between_low_and_high():
    clock = FakeClock()
    es = eps(20)
    b = balancer("aperture", clock, random.Random(11), es)
    # A steady 6 requests in flight: 6 / aperture must end inside [0.5, 2] -> 3..12.
    inflight: collections.deque[Ep] = collections.deque()
    for _ in range(3000):
        clock.advance(0.01)
        e = b.pick()
        e.outstanding += 1
        inflight.append(e)
        if len(inflight) > 6:
            inflight.popleft().outstanding -= 1
    assert 3 <= b.aperture <= 12
    assert 0.5 <= b.offered_load / b.aperture <= 2.0


def test_aperture_respects_min_aperture_and_orders_by_a_stable_token():
    clock = FakeClock()
    es = eps(6)
    b = balancer("aperture", clock, random.Random(12), es, min_aperture=3)
    assert b.aperture == 3
    used = set(picks(b, 600))
    assert len(used) == 3
    order = [nm(e) for e in b._order]
    b.update(list(reversed(es)))  # same endpoints, another order: same tokens, same order
    assert [nm(e) for e in b._order] == order
    b.update(es[:2])  # fewer endpoints than minAperture: the aperture is all of them
    assert b.aperture == 2


def test_aperture_moves_dead_endpoints_out_of_the_window():
    clock = FakeClock()
    es = eps(4)
    b = balancer("aperture", clock, random.Random(13), es, min_aperture=2)
    first_two = b._order[:2]
    for e in first_two:
        kill(e, clock.t)
    got = picks(b, 100)
    assert not set(got) & {nm(e) for e in first_two}
    assert set(b._order[:2]).isdisjoint(first_two)
    clock.advance(10)  # backoffs over: the stable order comes back (probes first)
    b.pick()
    assert b._order[:2] == first_two


@pytest.mark.parametrize("kind", KINDS)
def test_dead_endpoints_are_skipped(kind, clock, rand):
    es = eps(5)
    b = balancer(kind, clock, rand, es, **({"min_aperture": 5} if kind == "aperture" else {}))
    for e in es[:4]:
        kill(e, clock.t)
    assert all(b.pick() is es[4] for _ in range(200))
    assert b.panics == 0


@pytest.mark.parametrize("kind", KINDS)
def test_all_dead_panics_instead_of_failing(kind, clock, rand):
    es = eps(4)
    b = balancer(kind, clock, rand, es)
    for e in es:
        kill(e, clock.t)
    got = [b.pick() for _ in range(50)]
    assert all(e is not None for e in got)
    assert b.panics == 50
    assert all(e.health.state == DEAD for e in es)  # panic picks claim no probe


@pytest.mark.parametrize("kind", KINDS)
def test_an_expired_backoff_gives_exactly_one_probe(kind, clock, rand):
    es = eps(3)
    b = balancer(kind, clock, rand, es, **({"min_aperture": 3} if kind == "aperture" else {}))
    dead = es[0]
    kill(dead, clock.t)
    for _ in range(50):
        assert b.pick() is not dead
    clock.advance(10)  # the backoff is over: the next picks may probe it, once
    probed = [e for e in (b.pick() for _ in range(300)) if e is dead]
    assert len(probed) == 1
    assert dead.health.state == PROBING and dead.health.probes == 1
    dead.health.success(clock.t)
    assert dead.health.state == AVAILABLE
    assert any(b.pick() is dead for _ in range(300))


@pytest.mark.parametrize("kind", KINDS)
def test_only_dead_and_probing_left_is_panic_not_a_second_probe(kind, clock, rand):
    es = eps(2)
    b = balancer(kind, clock, rand, es)
    for e in es:
        kill(e, clock.t)
    clock.advance(10)
    got = [b.pick() for _ in range(20)]
    states = sorted(e.health.state for e in es)
    assert states == [PROBING, PROBING]  # each got one probe
    assert sum(1 for e in got if e is es[0]) >= 1 and b.panics == 20 - 2


def test_p2c_scans_before_it_panics():
    """Finagle would panic after maxEffort unlucky pairs; with one usable endpoint left
    these balancers find it instead."""
    clock = FakeClock()
    es = eps(50)
    for e in es[1:]:
        kill(e, clock.t)
    b = P2CLeastLoaded(1, clock, random.Random(14).random)
    b.update(es)
    assert all(b.pick() is es[0] for _ in range(100))
    assert b.panics == 0


def test_constructors_check_their_arguments(clock):
    with pytest.raises(ValueError):
        P2CPeakEwma(0.0, 5, clock, random.random)
    with pytest.raises(ValueError):
        Aperture(5, 5.0, 2.0, 1.0, 1, clock, random.random)
    with pytest.raises(ValueError, match="unknown load balancer"):
        make_balancer(LoadBalancerConfig(kind="random"))
    assert isinstance(make_balancer(LoadBalancerConfig(kind="heap")), HeapLeastLoaded)
    assert isinstance(make_balancer(LoadBalancerConfig(kind="roundRobin")), RoundRobin)
    assert isinstance(make_balancer(LoadBalancerConfig()), P2CPeakEwma)  # ewma is the default
