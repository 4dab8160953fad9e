"""Micro-benchmark of the upstream policies on the request path. Prints ns/op.

Per request the attempt layer calls, on the path where nothing fails: the budget's
`deposit`, the balancer's `pick`, `Health.success` and the balancer's `observe` (the
EWMA update), and the classifier once. Each is timed alone, in a loop over
precomputed arguments (best of several repeats, with `timeit`), for the balancers over
3 and 100 endpoints that are all AVAILABLE with a spread of outstanding requests and
costs. "loop" is the cost of the same loop calling a function that does nothing: the
floor under every figure (what a Python call costs here).

    python -m bench.micro.upstream [--quick]
    python -m bench.micro.upstream --iterations N [--case NAME]   # no timing (callgrind)

Cases: observe, pick-<kind>-<n>, deposit, withdraw, success, classify, loop.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import timeit
from collections.abc import Callable

from config.policy import ClassifierConfig, FailureAccrualConfig, LoadBalancerConfig
from proxy.upstream.accrual import Health, new_health
from proxy.upstream.balancers import make_balancer
from proxy.upstream.budget import RetryBudget
from proxy.upstream.classify import make_classifier

KINDS = ("ewma", "p2c", "roundRobin", "heap", "aperture")
SIZES = (3, 100)
BATCH = 10_000  # operations per timed run


class Ep:
    """The attributes a balancer reads and writes (the shape of the real Endpoint)."""

    __slots__ = ("outstanding", "cost", "cost_stamp", "health")

    def __init__(self, outstanding: int, cost: float, health: Health) -> None:
        self.outstanding = outstanding
        self.cost = cost
        self.cost_stamp = 0.0
        self.health = health


def endpoints(n: int, rnd: random.Random) -> list[Ep]:
    return [Ep(rnd.randrange(4), rnd.uniform(0.001, 0.02), new_health(FailureAccrualConfig())) for _ in range(n)]


class Clock:
    """A clock that only moves when told (so the aperture's samples see time pass)."""

    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def cases() -> dict[str, Callable[[], None]]:
    """name -> a function doing BATCH operations."""
    rnd = random.Random(42)
    out: dict[str, Callable[[], None]] = {}
    times = [1000.0 + i * 0.001 for i in range(BATCH)]

    def noop(*args: object) -> None:
        pass

    def loop() -> None:
        f = noop
        for t in times:
            f(t)

    out["loop"] = loop

    for kind in KINDS:
        for n in SIZES:
            clock = Clock()
            b = make_balancer(LoadBalancerConfig(kind=kind), clock, random.Random(7).random)
            eps = endpoints(n, rnd)
            b.update(eps)
            for ep in eps:
                b.observe(ep, ep.cost, 999.0)

            def pick(b=b, clock=clock) -> None:  # type: ignore[no-untyped-def]
                p = b.pick
                for t in times:
                    clock.t = t
                    p()

            out[f"pick-{kind}-{n}"] = pick

    ewma = make_balancer(LoadBalancerConfig(kind="ewma"))
    eps = endpoints(3, rnd)
    ewma.update(eps)
    rtts = [rnd.uniform(0.001, 0.02) for _ in range(BATCH)]
    ep = eps[0]

    def observe() -> None:
        o = ewma.observe
        for rtt, t in zip(rtts, times, strict=True):
            o(ep, rtt, t)

    out["observe"] = observe

    budget = RetryBudget()

    def deposit() -> None:
        d = budget.deposit
        for t in times:
            d(t)

    out["deposit"] = deposit

    def withdraw() -> None:
        w = budget.try_withdraw
        for t in times:
            w(t)

    out["withdraw"] = withdraw

    health = new_health(FailureAccrualConfig())

    def success() -> None:
        s = health.success
        for t in times:
            s(t)

    out["success"] = success

    c = make_classifier(ClassifierConfig("io.l5d.http.retryableRead5XX"))

    def classify() -> None:
        f = c.classify
        for _ in times:
            f(b"GET", 200, None)

    out["classify"] = classify
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro.upstream", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--iterations", type=int, help="run N batches of one case, untimed (for callgrind)")
    ap.add_argument("--case", default="pick-ewma-100")
    args = ap.parse_args(argv)
    table = cases()
    if args.iterations is not None:
        if args.case not in table:
            print(f"unknown case {args.case!r} (known: {', '.join(table)})", file=sys.stderr)
            return 2
        fn = table[args.case]
        for _ in range(max(1, args.iterations // BATCH)):
            fn()
        return 0
    quick = args.quick or os.environ.get("BENCH_MICRO_QUICK") == "1"
    repeat = 3 if quick else 15
    print(f"upstream policies micro-benchmark (Python {sys.version.split()[0]}, best of {repeat}, ns/op)")
    # CPU time of this process, not wall time: on a shared machine the wall clock also
    # counts the time another process had the core.
    ns = {
        name: min(timeit.repeat(fn, number=1, repeat=repeat, timer=time.process_time)) / BATCH * 1e9
        for name, fn in table.items()
    }
    print(f"  loop (a call to a no-op, the floor) {ns['loop']:6.0f}")
    print(f"  ewma observe {ns['observe']:6.0f}   budget deposit {ns['deposit']:6.0f}   "
          f"budget try_withdraw {ns['withdraw']:6.0f}   health success {ns['success']:6.0f}   "
          f"classify {ns['classify']:6.0f}")  # fmt: skip
    print("  pick          " + "".join(f"{n:>10} eps" for n in SIZES))
    for kind in KINDS:
        print(f"    {kind:<11}" + "".join(f"{ns[f'pick-{kind}-{n}']:14.0f}" for n in SIZES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
