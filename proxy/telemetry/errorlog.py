"""Proxy errors in the log: the failures the proxy answers itself with `l5d-err` (502,
503, ...) are logged at WARNING once per (router, service, cause) per interval, with
how many there were, never once per request: 26 refused connections are two lines
(the first at once, then "25 more in the last 10 s"), not 26 and not none.

`note` runs on the data plane's failure path only (after a request failed); it keeps
one small dict entry per key and arms one loop timer while something is pending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

log = logging.getLogger("proxy.errors")

#: Seconds between summary lines for the same (router, service, cause).
INTERVAL_S: Final = 10.0
#: Distinct keys remembered per interval; past it, failures are summed under one key
#: (a scan of random names must not grow this without bound).
MAX_KEYS: Final = 1000


class ErrorLog:
    """Counts proxy failures by (router, service, cause) and logs them rate-limited."""

    def __init__(self, interval_s: float = INTERVAL_S, clock: Any = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        # key -> [count since the last line, status, example message, first seen]
        self._pending: dict[tuple[str, str, str], list[Any]] = {}
        self._quiet_until: dict[tuple[str, str, str], float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self.logged = 0  # lines written (tests and curious users read it)

    def note(self, router: str, service: str, cause: str, status: int, message: str) -> None:
        """One failure. The first of its kind in an interval is logged now; the rest
        are counted and summarised when the interval ends."""
        key = (router, service, cause)
        now = self._clock()
        quiet = self._quiet_until.get(key)
        if quiet is None or now >= quiet:
            if len(self._quiet_until) >= MAX_KEYS and key not in self._quiet_until:
                key = (router, "(many services)", cause)
                if key in self._quiet_until and now < self._quiet_until[key]:
                    self._count(key, status, message)
                    return
            self._quiet_until[key] = now + self.interval_s
            self.logged += 1
            log.warning("router %s: %s: %d %s: %s (more like it are counted for %.0f s)",
                        router, service, status, cause, message, self.interval_s)  # fmt: skip
            self._arm()
            return
        self._count(key, status, message)

    def _count(self, key: tuple[str, str, str], status: int, message: str) -> None:
        p = self._pending.get(key)
        if p is None:
            self._pending[key] = [1, status, message]
        else:
            p[0] += 1
            p[2] = message  # the latest example
        self._arm()

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a unit test calls flush itself)
        if self._timer is not None and self._timer_loop is loop:
            return
        self._timer = loop.call_later(self.interval_s, self._tick)  # one per process, on its loop
        self._timer_loop = loop

    def _tick(self) -> None:
        self._timer = None
        self.flush()
        if self._pending or self._quiet_until:
            self._arm()

    def flush(self) -> None:
        """Log a summary line for every key with failures since its last line."""
        now = self._clock()
        pending, self._pending = self._pending, {}
        for (router, service, cause), (n, status, message) in pending.items():
            self.logged += 1
            log.warning("router %s: %s: %d more %d %s in the last %.0f s (latest: %s)",
                        router, service, n, status, cause, self.interval_s, message)  # fmt: skip
            self._quiet_until[(router, service, cause)] = now + self.interval_s
        for key in [k for k, until in self._quiet_until.items() if until <= now and k not in pending]:
            del self._quiet_until[key]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()


#: The process's one error log: failures from every router go through it.
ERRORS: Final = ErrorLog()
