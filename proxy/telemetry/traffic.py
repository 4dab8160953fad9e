"""Observed traffic over the last minute, for the playground's tree: how many requests
each (service, client, endpoint) ended recently, so a weighted branch's observed share
can be drawn beside its configured weight.

Owns a ring of snapshots of the per-(service, endpoint) totals (`RouterStats.pair_totals`),
taken every `SAMPLE_S` by one loop timer while the admin server runs. Nothing here runs
per request: the data plane only increments the counters it always increments. It must
not touch a transport or import the admin server.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

#: The window the playground shows: long enough to smooth a canary's few requests,
#: short enough that a weight change shows within a minute.
WINDOW_S: Final = 60.0
#: One snapshot every 5 s: 13 kept cover the window; the oldest one is at most 5 s
#: older than the window's start, and the answer says exactly how long it covers.
SAMPLE_S: Final = 5.0

Totals = dict[tuple[str, str, str], int]


class TrafficWindow:
    """Snapshots of every router's per-(service, client, endpoint) totals."""

    def __init__(self, telemetry: Any, *, window_s: float = WINDOW_S, sample_s: float = SAMPLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._tel = telemetry
        self._window_s = window_s
        self._sample_s = sample_s
        self._clock = clock
        keep = int(window_s / sample_s) + 2
        self._ring: deque[tuple[float, dict[str, Totals]]] = deque(maxlen=keep)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.sample()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def sample(self) -> None:
        """Take one snapshot now (and schedule the next one when started)."""
        self._ring.append((self._clock(), self._totals()))
        if self._loop is not None:
            self._timer = self._loop.call_later(self._sample_s, self.sample)

    def _totals(self) -> dict[str, Totals]:
        return {label: rs.pair_totals() for label, rs in self._tel.routers.items()}

    def window(self, router: str, service: str) -> tuple[dict[str, dict[str, int]], float]:
        """Requests per client id and endpoint (`host:port`) for `service` over the last
        window (or since the oldest snapshot, if the admin started less than a window
        ago), and the seconds that covers."""
        now = self._clock()
        base: Totals = {}
        since = now
        for t, snap in self._ring:  # oldest first: the latest snapshot at least a window old
            if now - t >= self._window_s or t == self._ring[0][0]:
                base, since = snap.get(router, {}), t
            else:
                break
        rs = self._tel.routers.get(router)
        current = rs.pair_totals() if rs is not None else {}
        out: dict[str, dict[str, int]] = {}
        for (svc, client, endpoint), n in current.items():
            if svc != service:
                continue
            d = n - base.get((svc, client, endpoint), 0)
            if d > 0:
                eps = out.setdefault(client, {})
                eps[endpoint] = eps.get(endpoint, 0) + d
        return out, now - since
