"""Backoff streams: Finagle's constant, decorrelated and equal jitter, resettable."""

from __future__ import annotations

import random

import pytest

from config.policy import DEFAULT_ACCRUAL_BACKOFF, BackoffConfig
from proxy.upstream.backoff import ConstantBackoff, DecorrelatedJitter, EqualJitter, make_backoff


def take(b, n: int) -> list[float]:
    return [b.next_s() for _ in range(n)]


def test_constant_is_constant_and_zero_is_allowed():
    assert take(ConstantBackoff(0.25), 3) == [0.25, 0.25, 0.25]
    assert take(make_backoff(BackoffConfig("constant", ms=0)), 2) == [0.0, 0.0]
    with pytest.raises(ValueError, match="negative"):
        ConstantBackoff(-1)


@pytest.mark.parametrize("seed", range(5))
def test_decorrelated_jitter_grows_within_three_times_and_caps(seed):
    b = DecorrelatedJitter(0.01, 10.0, random.Random(seed).random)
    seq = take(b, 60)
    assert seq[0] == 0.01
    for prev, cur in zip(seq, seq[1:], strict=False):
        assert prev <= cur <= min(3 * prev, 10.0)
    assert seq[-1] == pytest.approx(10.0, rel=1e-3)  # it closes in on the cap, never above
    b.reset()
    assert b.next_s() == 0.01


def test_decorrelated_jitter_extremes_of_the_draw():
    low = DecorrelatedJitter(1.0, 100.0, lambda: 0.0)
    assert take(low, 4) == [1.0, 1.0, 1.0, 1.0]  # Finagle: uniform in [prev, 3 prev)
    high = DecorrelatedJitter(1.0, 100.0, lambda: 0.999999)
    seq = take(high, 6)
    assert seq[:4] == pytest.approx([1.0, 3.0, 9.0, 27.0], rel=1e-5)
    assert 99.99 < seq[5] <= 100.0


@pytest.mark.parametrize("seed", range(5))
def test_equal_jitter_doubles_with_half_jitter(seed):
    b = EqualJitter(5.0, 300.0, random.Random(seed).random)
    seq = take(b, 12)
    assert seq[0] == 5.0
    for n, d in enumerate(seq[1:], start=1):
        lo = min(5.0 * 2 ** (n - 1), 300.0)
        assert lo <= d <= min(2 * lo, 300.0)
    assert seq[-1] == 300.0
    b.reset()
    assert b.next_s() == 5.0


def test_make_backoff_kinds_and_the_accrual_default():
    assert isinstance(make_backoff(BackoffConfig("jittered", min_ms=10, max_ms=1000)), DecorrelatedJitter)
    assert isinstance(make_backoff(DEFAULT_ACCRUAL_BACKOFF), EqualJitter)
    # min == max is a constant in Finagle too (no draw)
    assert isinstance(make_backoff(BackoffConfig("jittered", min_ms=50, max_ms=50)), ConstantBackoff)
    with pytest.raises(ValueError, match="unknown backoff"):
        make_backoff(BackoffConfig("linear"))
    with pytest.raises(ValueError, match="min <= max"):
        DecorrelatedJitter(2.0, 1.0)
