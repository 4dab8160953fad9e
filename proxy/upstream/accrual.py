"""Failure accrual: per-endpoint health, ejection after failures, and the probe back.

Each endpoint owns one `Health`. Its `state` is one of

- AVAILABLE: in the balancer's rotation;
- DEAD: ejected by the accrual policy for a backoff; skipped by the balancers;
- PROBING: the backoff ran out and exactly one request (the probe) was let through;
  no other request goes there until the probe's result comes back.

Transitions (Finagle's FailureAccrualFactory: Alive, Dead, ProbeOpen, ProbeClosed):

    AVAILABLE --failure, policy says "mark dead for d"--> DEAD (until now + d; an ejection)
    DEAD --usable(now) once now >= until--> PROBING   (that caller holds the probe)
    PROBING --success--> AVAILABLE (the policy and its backoff start over: a revival)
    PROBING --failure--> DEAD for the policy's next backoff (or probe-ready again if the
                         policy declines, as Finagle does)
    PROBING --release (the probe was cancelled, no result)--> DEAD, probe-ready at once

A DEAD endpoint ignores failures, and a success there (a request that was in flight
when it was ejected, or one sent in the balancers' panic mode) is recorded by the policy
but does not revive it: only a probe does. Whoever calls `usable()` and gets True while
the endpoint is not AVAILABLE holds the probe and must report exactly one of
`success`, `failure` or `release` for it.

Policies (Linkerd's `client.failureAccrual` kinds, Finagle's FailureAccrualPolicy):

- `io.l5d.consecutiveFailures` {failures}: eject after that many failures in a row;
- `io.l5d.successRate` {successRate, requests}: an exponentially weighted success rate
  whose weights decay by request count (time constant `requests`); eject when it is
  below `successRate` and at least `requests` requests were seen;
- `io.l5d.successRateWindowed` {successRate, window}: the same average with a time
  constant of `window` seconds; eject when it is below `successRate`, at least `window`
  seconds have passed since the first request (or the revival) and at least 5 requests
  (Finagle's `DefaultMinimumRequestThreshold`) were seen in the last `window`;
- `none`: never eject.

What counts as a failure is the service's response classifier's business (anything not
SUCCESS); this module only counts. Pure: time comes in as `now` (monotonic seconds),
randomness (backoff jitter) through `rand`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Final, Protocol

from config.policy import FailureAccrualConfig

from .backoff import Backoff, Rand, make_backoff
from .budget import SlicedWindow

AVAILABLE: Final = "available"
PROBING: Final = "probing"
DEAD: Final = "dead"
STATES: Final = (AVAILABLE, PROBING, DEAD)

#: Finagle's minimum number of requests in the window before the windowed success rate
#: may eject (FailureAccrualPolicy.DefaultMinimumRequestThreshold).
MIN_REQUESTS_IN_WINDOW: Final = 5
#: Slices of the windowed request count (Finagle's choice, "arbitrarily").
_WINDOW_SLICES: Final = 5


class AccrualPolicy(Protocol):
    def record_success(self, now: float) -> None: ...

    def mark_dead_on_failure(self, now: float) -> float | None:
        """Count a failure; a duration (seconds) means "eject for that long"."""
        ...

    def revived(self, now: float) -> None:
        """A probe succeeded: forget the history and start the backoff over."""
        ...


class ConsecutiveFailures:
    __slots__ = ("_n", "_backoff", "_count")

    def __init__(self, failures: int, backoff: Backoff) -> None:
        self._n = failures
        self._backoff = backoff
        self._count = 0

    def record_success(self, now: float) -> None:
        self._count = 0

    def mark_dead_on_failure(self, now: float) -> float | None:
        self._count += 1
        if self._count >= self._n:
            return self._backoff.next_s()
        return None

    def revived(self, now: float) -> None:
        self._count = 0
        self._backoff.reset()


class _Ema:
    """Finagle's `util.Ema`: the first value is taken as is; each next one is weighted by
    the time (or count) since the previous one, `w = exp(-dt / window)`."""

    __slots__ = ("_window", "_time", "value")

    def __init__(self, window: float) -> None:
        self._window = window
        self._time: float | None = None
        self.value = 0.0

    def update(self, stamp: float, x: float) -> float:
        t = self._time
        if t is None:
            self.value = x
        else:
            w = math.exp(-max(stamp - t, 0.0) / self._window)
            self.value = x * (1 - w) + self.value * w
        self._time = stamp if t is None or stamp > t else t
        return self.value

    def reset(self) -> None:
        self._time = None
        self.value = 0.0


class SuccessRate:
    """`io.l5d.successRate`: the average decays per request (`requests` is its window)."""

    __slots__ = ("_required", "_window", "_backoff", "_ema", "_total")

    def __init__(self, required: float, requests: int, backoff: Backoff) -> None:
        self._required = required
        self._window = requests
        self._backoff = backoff
        self._ema = _Ema(requests)
        self._total = 0

    def record_success(self, now: float) -> None:
        self._total += 1
        self._ema.update(self._total, 1.0)

    def mark_dead_on_failure(self, now: float) -> float | None:
        self._total += 1
        sr = self._ema.update(self._total, 0.0)
        if self._total >= self._window and sr < self._required:
            return self._backoff.next_s()
        return None

    def revived(self, now: float) -> None:
        self._total = 0
        self._ema.reset()
        self._backoff.reset()

    @property
    def success_rate(self) -> float:
        return self._ema.value


class SuccessRateWindowed:
    """`io.l5d.successRateWindowed`: the average decays with time (`window_s`)."""

    __slots__ = ("_required", "_window_s", "_backoff", "_ema", "_start", "_requests")

    def __init__(self, required: float, window_s: float, backoff: Backoff) -> None:
        self._required = required
        self._window_s = window_s
        self._backoff = backoff
        self._ema = _Ema(window_s)
        # Finagle starts the clock when the policy is built; the first request is the
        # nearest moment this module sees.
        self._start: float | None = None
        self._requests = SlicedWindow(window_s, _WINDOW_SLICES)

    def _stamp(self, now: float) -> float:
        if self._start is None:
            self._start = now
        return now - self._start

    def record_success(self, now: float) -> None:
        self._requests.add(now)
        self._ema.update(self._stamp(now), 1.0)

    def mark_dead_on_failure(self, now: float) -> float | None:
        self._requests.add(now)
        stamp = self._stamp(now)
        sr = self._ema.update(stamp, 0.0)
        if (
            stamp >= self._window_s
            and sr < self._required
            and self._requests.total(now) >= MIN_REQUESTS_IN_WINDOW
        ):
            return self._backoff.next_s()
        return None

    def revived(self, now: float) -> None:
        self._start = now
        self._ema.reset()
        self._requests = SlicedWindow(self._window_s, _WINDOW_SLICES)
        self._backoff.reset()

    @property
    def success_rate(self) -> float:
        return self._ema.value


class NoAccrual:
    """`none`: failures never eject."""

    __slots__ = ()

    def record_success(self, now: float) -> None:
        pass

    def mark_dead_on_failure(self, now: float) -> float | None:
        return None

    def revived(self, now: float) -> None:
        pass


class Health:
    """One endpoint's accrual state; see the module docstring for the transitions.

    Balancers read `state` (an attribute read on the healthy path) and call `is_ready`
    or `usable` only for an endpoint that is not AVAILABLE."""

    __slots__ = ("state", "dead_until", "policy", "ejections", "revivals", "probes", "probe_failures", "streak_only")

    def __init__(self, policy: AccrualPolicy) -> None:
        self.state: str = AVAILABLE
        # A success only ends a failure streak (consecutiveFailures, none): after one
        # success, more change nothing until the next failure, so callers may skip them.
        self.streak_only = isinstance(policy, (ConsecutiveFailures, NoAccrual))
        self.dead_until = 0.0  # meaningful while DEAD
        self.policy = policy
        self.ejections = 0  # AVAILABLE -> DEAD
        self.revivals = 0  # PROBING -> AVAILABLE
        self.probes = 0  # DEAD -> PROBING
        self.probe_failures = 0  # PROBING -> DEAD

    def is_ready(self, now: float) -> bool:
        """Would `usable(now)` say True? (No change of state.)"""
        st = self.state
        return st is AVAILABLE or (st is DEAD and now >= self.dead_until)

    def usable(self, now: float) -> bool:
        """May a request go here now? For a DEAD endpoint whose backoff ran out, the
        first caller gets True and holds the probe (the state becomes PROBING); everyone
        else gets False until the probe's result."""
        st = self.state
        if st is AVAILABLE:
            return True
        if st is DEAD and now >= self.dead_until:
            self.state = PROBING
            self.probes += 1
            return True
        return False

    def success(self, now: float) -> None:
        """A request here succeeded (classified SUCCESS)."""
        if self.state is PROBING:
            self.state = AVAILABLE
            self.revivals += 1
            self.policy.revived(now)
        self.policy.record_success(now)

    def failure(self, now: float) -> bool:
        """A request here failed. True when this failure ejected the endpoint."""
        st = self.state
        if st is DEAD:
            return False  # already out; only the probe decides
        d = self.policy.mark_dead_on_failure(now)
        if st is PROBING:
            self.probe_failures += 1
            # Finagle: a declined probe failure probes again rather than guess.
            self.state = DEAD
            self.dead_until = now + d if d is not None else now
            return False
        if d is None:
            return False
        self.state = DEAD
        self.dead_until = now + d
        self.ejections += 1
        return True

    def release(self, now: float) -> None:
        """The probe ended without a result (cancelled, or an error that says nothing
        about the endpoint): the next caller may probe at once."""
        if self.state is PROBING:
            self.state = DEAD
            self.dead_until = now

    def __repr__(self) -> str:
        return f"Health({self.state}, ejections={self.ejections})"


def make_policy(config: FailureAccrualConfig, rand: Rand = random.random) -> AccrualPolicy:
    """A fresh policy (with its own backoff stream) for one endpoint."""
    kind = config.kind
    if kind == "none":
        return NoAccrual()
    backoff = make_backoff(config.backoff, rand)
    if kind == "io.l5d.consecutiveFailures":
        return ConsecutiveFailures(config.failures, backoff)
    if kind == "io.l5d.successRate":
        return SuccessRate(config.success_rate, config.requests, backoff)
    if kind == "io.l5d.successRateWindowed":
        return SuccessRateWindowed(config.success_rate, config.window_s, backoff)
    raise ValueError(f"unknown failure accrual kind {kind!r}")


def new_health(config: FailureAccrualConfig, rand: Rand = random.random) -> Health:
    """The Health of a new endpoint under a client's `failureAccrual` config."""
    return Health(make_policy(config, rand))


def health_factory(config: FailureAccrualConfig, rand: Rand = random.random) -> Callable[[], Health]:
    """`new_health` bound to one config, for a client to call per endpoint."""
    return lambda: new_health(config, rand)
