"""Backoff streams: how long to wait before the next try, one stream per user.

A stream yields durations in seconds (`next_s()`), advancing each time, and starts over
on `reset()`. Failure accrual keeps one per endpoint (how long an ejected endpoint stays
out), retries one per request (the pause before each retry). Streams never end.

Finagle's shapes (`com.twitter.finagle.Backoff`), with the randomness injected:

- constant: the same duration every time (`{kind: constant, ms}`; Linkerd's retry
  default is `constant 0`: retry at once);
- decorrelated jitter (`{kind: jittered, minMs, maxMs}`, Linkerd's `jittered`): the first
  is `min`; each next one is uniform in [previous, min(3 x previous, max)), so the
  stream grows at a random pace and never decreases, until it sits at `max`;
- equal jitter (`equalJittered`, Finagle's `Backoff.equalJittered`, what Linkerd's
  failure accrual uses when no backoff is configured: 5 s to 300 s): the first is `min`,
  the n-th after it is uniform in [min * 2^(n-1), min * 2^n), until it reaches `max`.

Pure: no clock, no I/O. `rand` is any `() -> float` in [0, 1) (tests pass a seeded one).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from config.policy import BackoffConfig

Rand = Callable[[], float]


class Backoff(Protocol):
    """A resettable, endless stream of durations in seconds."""

    def next_s(self) -> float:
        """The next duration; the stream advances."""
        ...

    def reset(self) -> None:
        """Start over from the first duration."""
        ...


class ConstantBackoff:
    __slots__ = ("_s",)

    def __init__(self, s: float) -> None:
        if s < 0:
            raise ValueError(f"a backoff cannot be negative: {s}")
        self._s = s

    def next_s(self) -> float:
        return self._s

    def reset(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"ConstantBackoff({self._s})"


class DecorrelatedJitter:
    """Finagle's `decorrelatedJittered(min, max)`: d0 = min, d(k+1) = uniform in
    [d(k), min(3 d(k), max)); once a duration equals `max` the stream stays there."""

    __slots__ = ("_min", "_max", "_rand", "_cur", "_started")

    def __init__(self, min_s: float, max_s: float, rand: Rand = random.random) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"jittered backoff needs 0 < min <= max, got {min_s}, {max_s}")
        self._min = min_s
        self._max = max_s
        self._rand = rand
        self._cur = min_s
        self._started = False

    def next_s(self) -> float:
        if not self._started:
            self._started = True
            return self._cur
        cur = self._cur
        top = self._max if cur >= self._max / 3 else cur * 3
        nxt = cur + self._rand() * (top - cur)
        self._cur = nxt if nxt < self._max else self._max
        return self._cur

    def reset(self) -> None:
        self._cur = self._min
        self._started = False

    def __repr__(self) -> str:
        return f"DecorrelatedJitter({self._min}, {self._max})"


class EqualJitter:
    """Finagle's `equalJittered(min, max)`: d0 = min, then for attempt n >= 1 half the
    exponential `min * 2^(n-1)` plus a uniform draw below it, capped at `max`."""

    __slots__ = ("_min", "_max", "_rand", "_attempt")

    def __init__(self, min_s: float, max_s: float, rand: Rand = random.random) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"jittered backoff needs 0 < min <= max, got {min_s}, {max_s}")
        self._min = min_s
        self._max = max_s
        self._rand = rand
        self._attempt = 0  # -1 once the stream sits at max

    def next_s(self) -> float:
        attempt = self._attempt
        if attempt < 0:
            return self._max
        self._attempt = attempt + 1
        if attempt == 0:
            return self._min
        # 2^62 bounds the shift as Finagle does; far past any max, so the cap wins first.
        half = min(self._min * float(1 << min(attempt - 1, 62)), self._max)
        jitter = self._rand() * half
        if half >= self._max or half >= self._max - jitter:
            self._attempt = -1
            return self._max
        return half + jitter

    def reset(self) -> None:
        self._attempt = 0

    def __repr__(self) -> str:
        return f"EqualJitter({self._min}, {self._max})"


def make_backoff(config: BackoffConfig, rand: Rand = random.random) -> Backoff:
    """A fresh stream for a configured backoff (one per endpoint or per request)."""
    if config.kind == "constant":
        return ConstantBackoff(config.ms / 1000)
    if config.kind == "jittered":
        if config.min_ms == config.max_ms:  # Finagle: a constant, no draw
            return ConstantBackoff(config.min_ms / 1000)
        return DecorrelatedJitter(config.min_ms / 1000, config.max_ms / 1000, rand)
    if config.kind == "equalJittered":
        if config.min_ms == config.max_ms:
            return ConstantBackoff(config.min_ms / 1000)
        return EqualJitter(config.min_ms / 1000, config.max_ms / 1000, rand)
    raise ValueError(f"unknown backoff kind {config.kind!r}")
