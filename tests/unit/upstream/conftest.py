"""Test doubles for the upstream policies: a fake clock and a slotted endpoint."""

from __future__ import annotations

import random

import pytest

from config.policy import FailureAccrualConfig
from proxy.upstream.accrual import Health, new_health


class FakeClock:
    """Monotonic seconds that move only when a test says so; counts its reads."""

    __slots__ = ("t", "reads")

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


#: Test names of the endpoints, kept outside them so Ep has exactly the balancer's slots.
NAMES: dict[int, str] = {}


class Ep:
    """Exactly the attributes a balancer may read or write (the slots of the real
    Endpoint that the balancers use), and nothing else."""

    __slots__ = ("outstanding", "cost", "cost_stamp", "health")

    def __init__(self, name: str, outstanding: int = 0, health: Health | None = None) -> None:
        NAMES[id(self)] = name
        self.outstanding = outstanding
        self.cost = 0.0
        self.cost_stamp = 0.0
        self.health = health if health is not None else new_health(FailureAccrualConfig())

    def __repr__(self) -> str:
        return f"Ep({nm(self)})"


def nm(ep: object) -> str:
    """The test name of an endpoint."""
    return NAMES[id(ep)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rand() -> random.Random:
    return random.Random(1234)
