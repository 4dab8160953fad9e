"""Clients (one per bound id) and their endpoints, with keep-alive connection pools.

A `Client` is what a bound name resolves to: a live address set (an `Inet` or a namer's
`EndpointSet`) and, per address, an `Endpoint` holding idle upstream connections. Picking
an endpoint is power-of-two-choices on outstanding requests. Nothing here touches a
transport: the wire layer hands back connections and this module only keeps lists.
"""

from __future__ import annotations

import random
from typing import Any

from dtab import Bound, Inet, Path


class Endpoint:
    """One upstream address and its idle keep-alive connections (most recent last)."""

    __slots__ = ("host", "port", "idle", "outstanding", "failures", "addr_key", "max_idle")

    def __init__(self, host: str, port: int, max_idle: int = 256) -> None:
        self.host = host
        self.port = port
        self.addr_key = (host, port)
        self.idle: list[Any] = []  # upstream protocols ready for a request
        self.outstanding = 0
        self.failures = 0
        self.max_idle = max_idle

    @property
    def state(self) -> str:
        """"available" | "probing" | "dead" (failure accrual; the playground shows it)."""
        return "available"

    def take_idle(self) -> Any | None:
        idle = self.idle
        while idle:
            conn = idle.pop()  # LIFO: the warmest connection, and the others can idle out
            if conn.usable():
                return conn
        return None

    def give_back(self, conn: Any) -> bool:
        """Park a connection for reuse; False means the caller should close it."""
        if len(self.idle) >= self.max_idle:
            return False
        self.idle.append(conn)
        return True

    def discard(self, conn: Any) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def __repr__(self) -> str:
        return f"Endpoint({self.host}:{self.port})"


class Client:
    """The concrete side of a bound id: its address set and endpoints."""

    __slots__ = ("id", "id_show", "addr", "_endpoints", "_addrs_seen", "_list", "_rand", "_static")

    def __init__(self, bound: Bound) -> None:
        self.id: Path = bound.id
        self.id_show = bound.id.show().encode("latin-1")
        self.addr = bound.addr
        self._endpoints: dict[tuple[str, int], Endpoint] = {}
        self._addrs_seen: object = None
        self._list: list[Endpoint] = []
        self._rand = random.random
        # An /$/inet address never changes: one endpoint, picked without any checks.
        self._static = Endpoint(bound.addr.host, bound.addr.port) if isinstance(bound.addr, Inet) else None

    def _current_addrs(self) -> tuple[tuple[str, int], ...]:
        addr = self.addr
        if isinstance(addr, Inet):
            return ((addr.host, addr.port),)
        if addr is None:
            return ()
        addrs: tuple[tuple[str, int], ...] = addr.addrs  # a live EndpointSet: swapped as a whole
        return addrs

    def endpoints(self) -> list[Endpoint]:
        addrs = self._current_addrs()
        if addrs is not self._addrs_seen:  # the set changed (identity check: one reference swap)
            eps = self._endpoints
            fresh = {a: eps.get(a) or Endpoint(a[0], a[1]) for a in addrs}
            for a, ep in eps.items():
                if a not in fresh:
                    ep.close_idle()
            self._endpoints = fresh
            self._list = list(fresh.values())
            self._addrs_seen = addrs
        return self._list

    def pick(self) -> Endpoint | None:
        if self._static is not None:
            return self._static
        eps = self.endpoints()
        n = len(eps)
        if n == 0:
            return None
        if n == 1:
            return eps[0]
        r = self._rand
        a = eps[int(r() * n)]
        b = eps[int(r() * n)]
        # Power of two choices on outstanding requests, failures as a tie-breaker.
        if (b.outstanding, b.failures) < (a.outstanding, a.failures):
            return b
        return a

    def close_idle(self) -> None:
        if self._static is not None:
            self._static.close_idle()
        for ep in self._endpoints.values():
            ep.close_idle()


class ClientRegistry:
    """Clients by bound id, shared by every route of a router."""

    __slots__ = ("_clients",)

    def __init__(self) -> None:
        self._clients: dict[tuple[Path, Any], Client] = {}

    def get(self, bound: Bound) -> Client:
        # Inet compares by value; a namer's live EndpointSet by identity.
        key = (bound.id, bound.addr)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = Client(bound)
        return client

    def close_idle(self) -> None:
        for c in self._clients.values():
            c.close_idle()
