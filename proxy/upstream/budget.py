"""Retry budgets (Finagle's `RetryBudget`, its token semantics): how many retries, or
requeues, a service or client may spend, as a share of its recent requests.

Each request `deposit`s; each retry must `try_withdraw` first and is not made when that
says no. A deposit is worth `percent_can_retry` retries and lives for `ttl_s`; a
withdrawal lives as long, so the budget refills as old retries age out. On top of the
deposits there is a fixed reserve of `min_retries_per_sec * ttl_s` retries per ttl, so a
client that has just started, or sends little, can still retry. Finagle's defaults (and
Linkerd's for both `service.retries.budget` and `client.requeueBudget`): 10 s, 10/s, 0.2.

How time is kept (Finagle's `TokenBucket.newLeakyBucket`): the ttl is cut into `SLICES`
slices of `ttl_s / SLICES`; deposits and withdrawals add to the current slice, and a
slice drops out whole once it is `SLICES` slices old. Slices rotate lazily, on the first
call that sees the clock past the current one, so `deposit` is a compare and an add.
Tokens are integers (exact): a deposit is `SCALE`, a withdrawal `SCALE // percent`.

What that guarantees, and the rounding (tests/unit/upstream/test_budget.py checks it):

- the effective share is `SCALE / (SCALE // percent)`, above `percent` by at most
  `percent / SCALE` relative (1e-6 at the largest share, 1000); the reserve is
  `floor(min_retries_per_sec * ttl_s)` retries;
- in any window of length `ttl_s - ttl_s / SLICES` (9 s by default), the withdrawals
  made in it are at most the reserve plus the share of the deposits made in it *or in
  the ttl before it*. That earlier ttl is unavoidable with expiring credit: requests at
  time 0 pay for retries until time ttl, so a window that starts after them sees their
  retries and not them; a window shorter by one slice is what the slice rounding costs.

Not thread-safe (one event loop). No clock inside: every call takes `now`, monotonic
seconds.
"""

from __future__ import annotations

import math
from typing import Final

#: How many slices a ttl is cut into. Finagle's WindowedAdder uses 10.
SLICES: Final = 10
#: Token scale: a deposit is worth SCALE tokens, so the integer rounding of a share stays
#: below 1e-6 of it even at 1000 (Finagle scales by 1000: 0.3 costs it 0.01%).
SCALE: Final = 1_000_000_000
_FAR_PAST: Final = -(1 << 62)


def slice_index(now: float, slice_s: float) -> int:
    """The k with `k * slice_s <= now < (k + 1) * slice_s`, computed with the same float
    products the window compares `now` against (a bare `now // slice_s` can disagree:
    4.3 / 0.1 is 42.99999999999999 while 43 * 0.1 is 4.3)."""
    k = math.floor(now / slice_s)
    if (k + 1) * slice_s <= now:
        return k + 1
    if k * slice_s > now:
        return k - 1
    return k


class SlicedWindow:
    """An integer sum over the last `slices` slices of `window_s`, rotated lazily.

    The current slice is `cur`, the older `slices - 1` are summed in `older`. The window
    in force at any moment spans between `window_s - window_s / slices` and `window_s`.
    """

    __slots__ = ("cur", "older", "slice_end", "_ring", "_pos", "_k", "_slice_s")

    def __init__(self, window_s: float, slices: int = SLICES) -> None:
        if window_s <= 0 or slices < 2:
            raise ValueError(f"a window needs a positive length and 2+ slices, got {window_s}, {slices}")
        self._slice_s = window_s / slices
        self._ring = [0] * (slices - 1)  # the older slices, oldest at _pos
        self._pos = 0
        self._k = _FAR_PAST  # index of the current slice (now // slice_s)
        self.cur = 0
        self.older = 0
        self.slice_end = -math.inf  # the first call rotates

    def rotate(self, now: float) -> None:
        """Move to the slice holding `now` (call when `now >= slice_end`)."""
        # At least one slice on: float rounding must not leave `now` in the current one.
        k = max(slice_index(now, self._slice_s), self._k + 1)
        steps = k - self._k
        ring = self._ring
        n = len(ring)
        if steps > n:  # everything has expired
            for i in range(n):
                ring[i] = 0
            self.older = 0
        else:
            pos, older, cur = self._pos, self.older, self.cur
            for _ in range(steps):
                older += cur - ring[pos]  # the oldest slice drops out, the current one ages
                ring[pos] = cur
                pos = pos + 1 if pos + 1 < n else 0
                cur = 0
            self._pos, self.older = pos, older
        self.cur = 0
        self._k = k
        self.slice_end = (k + 1) * self._slice_s

    def total(self, now: float) -> int:
        if now >= self.slice_end:
            self.rotate(now)
        return self.older + self.cur

    def add(self, now: float, n: int = 1) -> None:
        if now >= self.slice_end:
            self.rotate(now)
        self.cur += n


class RetryBudget:
    """Finagle's TokenRetryBudget: see the module docstring for what it guarantees."""

    __slots__ = ("_w", "_reserve", "_dep", "_wd", "ttl_s", "min_retries_per_sec", "percent_can_retry")

    def __init__(self, ttl_s: float = 10, min_retries_per_sec: int = 10, percent_can_retry: float = 0.2) -> None:
        # Finagle's bounds: a ttl of 1 to 60 s, a non-negative floor, a share of 0 to 1000.
        if not 1 <= ttl_s <= 60:
            raise ValueError(f"ttl must be 1 to 60 seconds, got {ttl_s}")
        if min_retries_per_sec < 0:
            raise ValueError(f"minRetriesPerSec must not be negative, got {min_retries_per_sec}")
        if not 0 <= percent_can_retry <= 1000:
            raise ValueError(f"percentCanRetry must be 0 to 1000, got {percent_can_retry}")
        self.ttl_s = ttl_s
        self.min_retries_per_sec = min_retries_per_sec
        self.percent_can_retry = percent_can_retry
        if percent_can_retry == 0:  # only the reserve: deposits are worth nothing
            self._dep, self._wd = 0, 1
        else:
            self._dep, self._wd = SCALE, int(SCALE / percent_can_retry)
        self._reserve = math.floor(min_retries_per_sec * ttl_s) * self._wd
        self._w = SlicedWindow(ttl_s)

    def deposit(self, now: float) -> None:
        """One request was made (once per request, before any retry of it)."""
        w = self._w
        if now >= w.slice_end:
            w.rotate(now)
        w.cur += self._dep

    def try_withdraw(self, now: float) -> bool:
        """Spend one retry if the balance allows; False leaves the balance untouched."""
        w = self._w
        if now >= w.slice_end:
            w.rotate(now)
        wd = self._wd
        if self._reserve + w.older + w.cur >= wd:
            w.cur -= wd
            return True
        return False

    def balance(self, now: float) -> int:
        """How many retries could be made now."""
        return max(0, (self._reserve + self._w.total(now)) // self._wd)

    @property
    def effective_percent(self) -> float:
        """The share of deposits one withdrawal really costs, after integer rounding."""
        return self._dep / self._wd

    @property
    def reserve(self) -> int:
        """Retries allowed per ttl without any deposit."""
        return self._reserve // self._wd

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ttl_s={self.ttl_s}, min_retries_per_sec={self.min_retries_per_sec}, "
            f"percent_can_retry={self.percent_can_retry})"
        )
