"""Failure accrual: every transition of Health, the single probe, and each policy."""

from __future__ import annotations

import itertools
import random

import pytest

from config.policy import BackoffConfig, FailureAccrualConfig
from proxy.upstream.accrual import (
    AVAILABLE,
    DEAD,
    PROBING,
    ConsecutiveFailures,
    Health,
    NoAccrual,
    SuccessRate,
    SuccessRateWindowed,
    make_policy,
    new_health,
)
from proxy.upstream.backoff import ConstantBackoff

CONST_10 = BackoffConfig("constant", ms=10_000)


def consecutive(n: int = 5, backoff: BackoffConfig = CONST_10) -> Health:
    return new_health(FailureAccrualConfig(failures=n, backoff=backoff))


def eject(h: Health, now: float, n: int = 5) -> None:
    for i in range(n):
        ejected = h.failure(now)
        assert ejected is (i == n - 1)
    assert h.state == DEAD


def test_states_are_exported_as_strings():
    assert (AVAILABLE, PROBING, DEAD) == ("available", "probing", "dead")


def test_consecutive_failures_eject_on_the_nth_and_a_success_resets_the_count():
    h = consecutive()
    for _ in range(4):
        assert h.failure(0.0) is False
    h.success(0.0)  # resets: four more are not enough
    for _ in range(4):
        assert h.failure(0.0) is False
    assert h.state == AVAILABLE and h.usable(0.0)
    assert h.failure(0.0) is True
    assert (h.state, h.dead_until, h.ejections) == (DEAD, 10.0, 1)


def test_dead_is_not_usable_until_the_backoff_ends_then_exactly_one_probe():
    h = consecutive()
    eject(h, 100.0)
    assert not h.usable(109.999) and not h.is_ready(109.999)
    assert h.is_ready(110.0) and h.state == DEAD  # a peek changes nothing
    assert h.usable(110.0) is True  # this caller holds the probe
    assert h.state == PROBING and h.probes == 1
    assert [h.usable(t) for t in (110.0, 111.0, 500.0)] == [False, False, False]
    assert not h.is_ready(500.0)


def test_probe_success_revives_and_restarts_the_backoff():
    seq = iter([10.0, 20.0, 40.0, 80.0])
    policy = ConsecutiveFailures(2, _Scripted(seq))
    h = Health(policy)
    h.failure(0.0)
    h.failure(0.0)
    assert h.dead_until == 10.0
    assert h.usable(10.0)
    h.success(10.0)
    assert (h.state, h.revivals) == (AVAILABLE, 1)
    assert policy._backoff.resets == 1
    # a revived endpoint needs the full count again to be ejected
    assert h.failure(11.0) is False
    assert h.failure(11.0) is True


def test_probe_failure_goes_back_dead_for_the_next_backoff():
    h = Health(ConsecutiveFailures(1, _Scripted(iter([10.0, 20.0, 40.0]))))
    assert h.failure(0.0) is True
    assert h.usable(10.0)
    assert h.failure(10.0) is False  # not a new ejection
    assert (h.state, h.dead_until, h.ejections, h.probe_failures) == (DEAD, 30.0, 1, 1)
    assert h.usable(30.0)
    assert h.failure(30.0) is False
    assert h.dead_until == 70.0


def test_a_cancelled_probe_is_released_so_the_endpoint_is_not_stuck():
    h = consecutive(1)
    h.failure(0.0)
    assert h.usable(10.0) and h.state == PROBING
    h.release(12.0)
    assert h.state == DEAD and h.is_ready(12.0)
    assert h.usable(12.0) and h.probes == 2
    h.release(13.0)
    h.release(13.0)  # a second release is harmless
    assert h.state == DEAD
    fresh = consecutive()
    fresh.release(0.0)  # not probing: nothing to release
    assert fresh.state == AVAILABLE


def test_dead_ignores_failures_and_a_late_success_does_not_revive():
    h = consecutive(1)
    h.failure(0.0)
    assert h.failure(1.0) is False and h.dead_until == 10.0  # no extension
    h.success(2.0)  # a request that was in flight, or sent in panic mode
    assert h.state == DEAD
    assert h.usable(10.0)


def test_a_probe_failure_the_policy_declines_probes_again():
    class Declines:
        def __init__(self):
            self.first = True

        def record_success(self, now):
            pass

        def mark_dead_on_failure(self, now):
            if self.first:
                self.first = False
                return 5.0
            return None

        def revived(self, now):
            pass

    h = Health(Declines())
    assert h.failure(0.0) is True
    assert h.usable(5.0)
    assert h.failure(6.0) is False
    assert h.state == DEAD and h.is_ready(6.0)  # probe-ready at once (Finagle's ProbeOpen)


def test_every_state_input_pair_lands_in_a_state():
    """Totality: from each state, every input leaves a valid state and the counters agree."""
    inputs = ("usable", "success", "failure", "release", "is_ready")
    for seq in itertools.product(inputs, repeat=4):
        h = consecutive(1, BackoffConfig("constant", ms=0))
        for step, op in enumerate(seq):
            getattr(h, op)(float(step))
            assert h.state in (AVAILABLE, PROBING, DEAD)
        # each probe ends once (revived, failed or released) unless it is still out
        assert h.probes >= h.revivals + h.probe_failures + (1 if h.state == PROBING else 0)
        assert h.ejections >= h.revivals


def test_success_rate_needs_a_full_window_then_ejects_below_the_rate():
    h = new_health(FailureAccrualConfig(kind="io.l5d.successRate", success_rate=0.9, requests=10,
                                        backoff=CONST_10))  # fmt: skip
    for _ in range(9):
        assert h.failure(0.0) is False  # fewer than `requests` data points
    assert h.failure(0.0) is True


def test_success_rate_is_an_ema_by_request_count():
    p = SuccessRate(0.5, 10, ConstantBackoff(1.0))
    for _ in range(20):
        p.record_success(0.0)
    assert p.success_rate == 1.0
    # each failure weighs 1 - exp(-1/10) ~ 0.095: six failures bring 1.0 to about 0.55
    assert [p.mark_dead_on_failure(0.0) for _ in range(6)] == [None] * 6
    assert p.success_rate == pytest.approx(0.5488, abs=1e-3)
    assert p.mark_dead_on_failure(0.0) == 1.0  # 0.497 < 0.5


def test_success_rate_windowed_needs_the_window_and_five_requests():
    p = SuccessRateWindowed(0.9, 30, ConstantBackoff(7.0))
    assert p.mark_dead_on_failure(100.0) is None  # starts the clock
    for t in (125.0, 126.0, 127.0, 128.0):
        assert p.mark_dead_on_failure(t) is None  # under 30 s since the first request
    # 30 s on, 5 requests in the window (the one at 100 s has left it: 5 slices of 6 s)
    assert p.mark_dead_on_failure(130.0) == 7.0
    p.revived(200.0)
    for t in (231.0, 232.0, 233.0, 234.0):
        assert p.mark_dead_on_failure(t) is None  # window passed, only 4 requests
    assert p.mark_dead_on_failure(235.0) == 7.0


def test_success_rate_windowed_counts_only_recent_requests():
    p = SuccessRateWindowed(0.9, 10, ConstantBackoff(1.0))
    for t in (0.0, 1.0, 2.0, 3.0):
        p.record_success(t)
    # 50 s later the old requests are out of the window: 4 failures are not enough
    for t in (50.0, 51.0, 52.0, 53.0):
        assert p.mark_dead_on_failure(t) is None
    assert p.mark_dead_on_failure(54.0) == 1.0


def test_none_never_ejects():
    h = new_health(FailureAccrualConfig(kind="none"))
    assert isinstance(h.policy, NoAccrual)
    assert not any(h.failure(float(i)) for i in range(1000))
    assert h.state == AVAILABLE


def test_default_policy_is_five_consecutive_failures_with_equal_jitter_5s_to_300s():
    rnd = random.Random(7)
    h = new_health(FailureAccrualConfig(), rnd.random)
    eject(h, 0.0)
    assert h.dead_until == 5.0  # the first mark-dead is the minimum
    durations = []
    now = h.dead_until
    for _ in range(12):  # failed probes walk the backoff up
        assert h.usable(now)
        h.failure(now)
        durations.append(h.dead_until - now)
        now = h.dead_until
    for n, d in enumerate(durations, start=1):
        lo = min(5.0 * 2 ** (n - 1), 300.0)
        assert lo - 1e-9 <= d <= min(2 * lo, 300.0) + 1e-9
    assert durations[-1] == pytest.approx(300.0)


def test_make_policy_kinds():
    assert isinstance(make_policy(FailureAccrualConfig()), ConsecutiveFailures)
    assert isinstance(
        make_policy(FailureAccrualConfig(kind="io.l5d.successRateWindowed", success_rate=0.5, window_s=5)),
        SuccessRateWindowed,
    )
    with pytest.raises(ValueError, match="unknown failure accrual"):
        make_policy(FailureAccrualConfig(kind="io.l5d.nope"))


class _Scripted:
    """A backoff that returns the given durations and counts resets."""

    def __init__(self, seq):
        self.seq = seq
        self.resets = 0

    def next_s(self):
        return next(self.seq)

    def reset(self):
        self.resets += 1
