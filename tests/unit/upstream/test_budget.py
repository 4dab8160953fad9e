"""The retry budget: Finagle's defaults and token semantics, and its window bound over
any schedule of requests and retries (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.upstream.budget import SCALE, SLICES, RetryBudget, SlicedWindow, slice_index


def test_defaults_are_finagles():
    b = RetryBudget()
    assert (b.ttl_s, b.min_retries_per_sec, b.percent_can_retry) == (10, 10, 0.2)
    assert b.reserve == 100 and b.effective_percent == 0.2


def test_the_reserve_alone_allows_min_retries_per_sec_times_ttl_per_ttl():
    b = RetryBudget(ttl_s=10, min_retries_per_sec=10, percent_can_retry=0.0)
    assert b.balance(0.0) == 100
    assert sum(b.try_withdraw(0.5) for _ in range(150)) == 100
    assert b.balance(5.0) == 0 and not b.try_withdraw(9.9)
    # a deposit is worth nothing with percentCanRetry 0
    for _ in range(1000):
        b.deposit(9.9)
    assert not b.try_withdraw(9.9)
    # the withdrawals age out with their slice, ttl later
    assert b.try_withdraw(10.5)
    assert sum(b.try_withdraw(10.6) for _ in range(200)) == 99


def test_deposits_buy_percent_can_retry_of_a_retry_each():
    b = RetryBudget(ttl_s=10, min_retries_per_sec=0, percent_can_retry=0.2)
    assert not b.try_withdraw(0.0)
    for _ in range(100):
        b.deposit(0.0)
    assert b.balance(0.0) == 20
    assert sum(b.try_withdraw(1.0) for _ in range(50)) == 20
    assert not b.try_withdraw(2.0)


def test_deposits_expire_after_the_ttl():
    b = RetryBudget(ttl_s=10, min_retries_per_sec=0, percent_can_retry=1.0)
    for _ in range(10):
        b.deposit(0.2)
    assert b.balance(9.9) == 10  # still in the window (slices of 1 s: [0, 1) lives to 10 s)
    assert b.balance(10.0) == 0
    assert not b.try_withdraw(10.5)


def test_more_than_one_retry_per_request():
    b = RetryBudget(ttl_s=1, min_retries_per_sec=0, percent_can_retry=2.0)
    b.deposit(0.0)
    assert [b.try_withdraw(0.0) for _ in range(3)] == [True, True, False]


def test_an_empty_budget_never_allows():
    b = RetryBudget(ttl_s=5, min_retries_per_sec=0, percent_can_retry=0.0)
    for t in range(100):
        b.deposit(t / 10)
    assert not b.try_withdraw(10.0) and b.balance(10.0) == 0


def test_time_going_backwards_stays_in_the_current_slice():
    b = RetryBudget(ttl_s=10, min_retries_per_sec=0, percent_can_retry=1.0)
    b.deposit(5.0)
    b.deposit(4.0)  # a clock that went back: counted now, not in the past
    assert b.balance(5.5) == 2
    assert b.balance(14.9) == 2 and b.balance(15.0) == 0


@pytest.mark.parametrize(("ttl", "minr", "pct"), [(0.5, 10, 0.2), (61, 10, 0.2), (10, -1, 0.2), (10, 10, 1000.1)])
def test_finagles_bounds(ttl, minr, pct):
    with pytest.raises(ValueError):
        RetryBudget(ttl, minr, pct)


def test_effective_percent_rounding_is_below_one_in_a_million():
    for pct in (0.3, 0.07, 1 / 3, 0.2, 999.9, 1000.0, 1e-6):
        b = RetryBudget(10, 0, pct)
        assert pct <= b.effective_percent <= pct * (1 + pct / SCALE) * (1 + 1e-12)
        assert b.effective_percent <= pct * (1 + 1e-6)


def test_sliced_window_rotation_and_jumps():
    w = SlicedWindow(10.0, 10)
    for t in range(20):
        w.add(float(t))
        assert w.total(float(t)) == min(t + 1, 10)
    assert w.total(25.0) == 4  # slices 16..19 still inside [16, 26)
    assert w.total(1000.0) == 0  # a jump far past everything clears it


class Model:
    """The budget written the slow way: a list of (slice, tokens) entries."""

    def __init__(self, ttl: float, minr: int, pct: float) -> None:
        self.s = ttl / SLICES
        self.dep, self.wd = (0, 1) if pct == 0 else (SCALE, int(SCALE / pct))
        self.reserve = math.floor(minr * ttl) * self.wd
        self.entries: list[tuple[int, int]] = []

    def total(self, now: float) -> int:
        k = slice_index(now, self.s)
        return sum(v for ek, v in self.entries if ek > k - SLICES)

    def deposit(self, now: float) -> None:
        self.entries.append((slice_index(now, self.s), self.dep))

    def try_withdraw(self, now: float) -> bool:
        if self.reserve + self.total(now) >= self.wd:
            self.entries.append((slice_index(now, self.s), -self.wd))
            return True
        return False


schedules = st.lists(
    st.tuples(st.integers(min_value=0, max_value=3000), st.sampled_from(["deposit", "retry", "retry", "deposit"])),
    min_size=1,
    max_size=300,
)


budgets = {
    "ttl": st.sampled_from([1, 2, 10]),
    "minr": st.integers(min_value=0, max_value=5),
    "pct": st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 2.5]),
}


@settings(max_examples=150, deadline=None)
@given(schedule=schedules, **budgets)
def test_any_schedule_matches_the_model_and_respects_the_window_bound(schedule, ttl, minr, pct):
    check_schedule(schedule, ttl, minr, pct)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None)
@given(schedule=schedules, **budgets)
def test_any_schedule_long_run(schedule, ttl, minr, pct):
    check_schedule(schedule, ttl, minr, pct)


def check_schedule(schedule, ttl, minr, pct):
    budget = RetryBudget(ttl, minr, pct)
    model = Model(ttl, minr, pct)
    now_ms = 0
    deposits: list[float] = []
    withdrawals: list[float] = []
    for dt_ms, op in schedule:
        now_ms += dt_ms
        now = now_ms / 1000
        if op == "deposit":
            budget.deposit(now)
            model.deposit(now)
            deposits.append(now)
        else:
            got = budget.try_withdraw(now)
            assert got == model.try_withdraw(now)
            if got:
                withdrawals.append(now)
        assert budget.balance(now) == max(0, (model.reserve + model.total(now)) // model.wd)
    # The bound (see proxy/upstream/budget.py): in any window [a, a + L), L = ttl - ttl/SLICES,
    # withdrawals <= reserve + effective share of the deposits in [a - ttl, a + L).
    span = ttl - ttl / SLICES
    starts = set(withdrawals) | {d + ttl + 1e-6 for d in deposits}
    for a in starts:
        w = sum(1 for t in withdrawals if a <= t < a + span)
        d = sum(1 for t in deposits if a - ttl <= t < a + span)
        assert w <= budget.reserve + budget.effective_percent * d + 1e-9, (a, w, d)


@settings(max_examples=40, deadline=None)
@given(rate=st.integers(min_value=20, max_value=200), pct=st.sampled_from([0.1, 0.2, 0.5]))
def test_a_steady_retry_storm_is_held_to_the_share_plus_the_floor(rate, pct):
    """Every request fails and wants a retry: over 60 s, retries stay within
    percent * requests plus the floor per ttl."""
    b = RetryBudget(10, 10, pct)
    requests = retries = 0
    for i in range(60 * rate):
        now = i / rate
        b.deposit(now)
        requests += 1
        retries += b.try_withdraw(now)
    assert retries <= pct * requests * (1 + 1e-6) + 10 * 10 * math.ceil(60 / 9)
    assert retries >= pct * requests * 0.9  # and the budget is not stingier than the share
