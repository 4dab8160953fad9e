"""Endpoints, their connection pools, and clients (one per bound id).

A `Client` is what a bound name resolves to: a live address set (an `Inet` or a namer's
`EndpointSet`) and, per address, an `Endpoint`. An `Endpoint` owns everything the proxy
knows about one upstream address: its idle connections, how many requests are in flight
on it, its load estimate (for the balancer) and its health (failure accrual). That state
changes only through `Endpoint` methods; the wire layer's connections and the attempt
call them and never assign the fields.

The pool follows httpcore's shape: bookkeeping happens in one synchronous method that
returns the I/O still to do (`checkout` says "use this idle connection", "connect", or
"wait"), so nothing can interleave between related state changes. No transports here:
connections are opaque objects with `usable()` and `close()`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final

from config.policy import ClientPolicy, client_policy
from dtab import Bound, Inet, Path

from ..errors import Overloaded
from .accrual import health_factory
from .balancers import make_balancer
from .budget import RetryBudget

#: Idle keep-alive connections kept per endpoint when the config sets no pool size: a
#: burst of this many concurrent requests finds warm connections afterwards.
DEFAULT_MAX_IDLE: Final = 256
#: `hostConnectionPool.maxWaiters` when unset: Linkerd's default is Int.MaxValue.
UNBOUNDED_WAITERS: Final = 1 << 31

AVAILABLE: Final = "available"
PROBING: Final = "probing"
DEAD: Final = "dead"


class AlwaysHealthy:
    """Failure accrual `none`: an endpoint is always available."""

    __slots__ = ()
    state: Final = AVAILABLE
    streak_only: Final = True
    ejections: Final = 0

    def usable(self, now: float) -> bool:
        return True

    def success(self, now: float) -> None:
        return None

    def failure(self, now: float) -> bool:
        return False

    def release(self, now: float) -> None:
        return None


_ALWAYS: Final = AlwaysHealthy()

#: What `Endpoint.checkout` tells the caller to do.
class _Verdict:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CONNECT: Final = _Verdict("CONNECT")  # open a new connection (already counted in `connections`)
WAIT: Final = _Verdict("WAIT")  # the waiter was queued; it is called back with a connection or None


class Endpoint:
    """One upstream address: idle connections (most recent last), load and health."""

    __slots__ = (
        "host", "port", "addr_key", "idle", "outstanding", "failures", "connections", "max_idle",
        "max_connections", "max_waiters", "waiters", "cost", "cost_stamp", "health", "stats", "_quiet",
    )  # fmt: skip

    def __init__(
        self,
        host: str,
        port: int,
        max_idle: int = DEFAULT_MAX_IDLE,
        *,
        max_connections: int | None = None,
        max_waiters: int = 0,
        health: Any = None,
    ) -> None:
        self.host = host
        self.port = port
        self.addr_key = (host, port)
        self.idle: list[Any] = []  # upstream connections ready for a request (h2: every connection)
        self.outstanding = 0  # requests in flight here (attempts between begin and end)
        self.failures = 0  # consecutive failed attempts (a tie-breaker for the balancer)
        self.connections = 0  # open or opening connections (counted against max_connections)
        self.max_idle = max_idle
        self.max_connections = max_connections  # client.hostConnectionPool.maxSize; None: unbounded
        self.max_waiters = max_waiters  # client.hostConnectionPool.maxWaiters
        self.waiters: deque[Callable[[Any], None]] | None = None
        self.cost = 0.0  # peak-EWMA latency estimate in seconds (the balancer owns its meaning)
        self.cost_stamp = 0.0
        self.health: Any = health if health is not None else _ALWAYS  # failure accrual state
        self._quiet = bool(self.health.streak_only)  # a success after a success changes nothing
        self.stats: Any = None  # telemetry counters for connections, bound by the client

    @property
    def state(self) -> str:
        """`available`, `probing` or `dead`, as failure accrual sees the endpoint."""
        state: str = self.health.state
        return state

    # -- requests ----------------------------------------------------------------------------

    def begin(self) -> None:
        """An attempt starts here."""
        self.outstanding += 1

    def end(self) -> None:
        """An attempt ended (answered, failed or abandoned); exactly once per `begin`."""
        self.outstanding -= 1

    def succeeded(self, now: float) -> None:
        """An attempt got a response its classifier calls a success."""
        if self.failures or not self._quiet:  # (a probe follows failures: failures > 0)
            self.failures = 0
            self.health.success(now)

    def failed(self, now: float) -> bool:
        """An attempt failed (connect failure, reset, a response classified as a failure).
        True when failure accrual took the endpoint out because of it."""
        self.failures += 1
        return bool(self.health.failure(now))

    def abandoned(self, now: float) -> None:
        """An attempt ended without a verdict (the client went away): a probe that never
        reported must not hold the endpoint in `probing`."""
        self.health.release(now)

    # -- connections -------------------------------------------------------------------------

    def take_idle(self) -> Any | None:
        idle = self.idle
        while idle:
            conn = idle.pop()  # LIFO: the warmest connection, and the others can idle out
            if conn.usable():
                return conn
        return None

    def checkout(self, waiter: Callable[[Any], None], *, fresh: bool = False) -> Any:
        """A connection for one HTTP/1.1 exchange: an idle one (returned), or `CONNECT`
        (the caller opens one; it is counted already), or `WAIT` (`waiter(conn)` is called
        when one is given back, `waiter(None)` when one may be opened instead). Raises
        Overloaded past `maxSize` connections and `maxWaiters` waiters. `fresh`: not an
        idle connection (the caller looked already, or wants a new one)."""
        if not fresh:
            conn = self.take_idle()
            if conn is not None:
                return conn
        limit = self.max_connections
        if limit is None or self.connections < limit:
            self.connections += 1
            return CONNECT
        waiters = self.waiters
        if waiters is None:
            waiters = self.waiters = deque()
        if len(waiters) >= self.max_waiters:
            raise Overloaded(
                f"{self.host}:{self.port} has {self.connections} connections "
                f"(client.hostConnectionPool.maxSize {limit}) and {len(waiters)} requests waiting "
                f"(client.hostConnectionPool.maxWaiters {self.max_waiters})"
            )
        waiters.append(waiter)
        return WAIT

    def cancel_wait(self, waiter: Callable[[Any], None]) -> None:
        waiters = self.waiters
        if waiters:
            try:
                waiters.remove(waiter)
            except ValueError:
                pass

    def opened(self) -> None:
        """A connection this endpoint did not count through `checkout` (HTTP/2) opens."""
        self.connections += 1

    def give_back(self, conn: Any) -> bool:
        """Park a connection for reuse, or hand it to a waiting exchange; False means
        the caller should close it."""
        waiters = self.waiters
        if waiters:
            waiters.popleft()(conn)
            return True
        if len(self.idle) >= self.max_idle:
            return False
        self.idle.append(conn)
        return True

    def closed(self, conn: Any) -> None:
        """A connection of this endpoint closed (or could not be made)."""
        self.connections -= 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        waiters = self.waiters
        if waiters:  # room for one more connection: the first waiter opens it
            self.connections += 1
            waiters.popleft()(None)

    def discard(self, conn: Any) -> None:
        """Stop handing out `conn` (it is closing, or going away)."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def reap_idle(self, now: float, max_idle_s: float, keep: int) -> int:
        """Close pooled connections that carried nothing for `max_idle_s`, keeping the
        `keep` most recent (hostConnectionPool.idleTimeMs and minSize). Returns how many
        were closed."""
        idle = self.idle
        if len(idle) <= keep:
            for conn in idle:
                conn.idle_for(now)  # keep their marks current
            return 0
        stale = [c for c in idle[: len(idle) - keep] if c.idle_for(now) >= max_idle_s]
        for conn in idle[len(idle) - keep :]:
            conn.idle_for(now)
        for conn in stale:
            self.discard(conn)
            conn.close()
        return len(stale)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            waiter(None)

    def __repr__(self) -> str:
        return f"Endpoint({self.host}:{self.port})"


class Client:
    """The concrete side of a bound id: its address set, endpoints and balancer, built
    from the client policy for its id (`client.loadBalancer`, `failureAccrual`,
    `hostConnectionPool`, `requeueBudget`, `requestAttemptTimeoutMs`)."""

    __slots__ = (
        "id", "id_show", "addr", "policy", "balancer", "requeue_budget", "attempt_timeout_s", "_endpoints",
        "_addrs_seen", "_list", "_static", "_new_health", "_max_connections", "_max_waiters", "_gone_ejections",
    )  # fmt: skip

    def __init__(self, bound: Bound, policy: ClientPolicy | None = None) -> None:
        self.id: Path = bound.id
        self.id_show = bound.id.show().encode("latin-1")
        self.addr = bound.addr
        policy = self.policy = policy if policy is not None else ClientPolicy()
        self.balancer: Any = make_balancer(policy.load_balancer)
        self._new_health = health_factory(policy.failure_accrual)
        pool = policy.host_connection_pool
        self._max_connections = pool.max_size
        self._max_waiters = pool.max_waiters if pool.max_waiters is not None else UNBOUNDED_WAITERS
        rq = policy.requeue_budget
        self.requeue_budget = RetryBudget(rq.ttl_secs, rq.min_retries_per_sec, rq.percent_can_retry)
        ms = policy.request_attempt_timeout_ms
        self.attempt_timeout_s = ms / 1000 if ms else 0.0
        self._endpoints: dict[tuple[str, int], Endpoint] = {}
        self._addrs_seen: object = None
        self._list: list[Endpoint] = []
        self._gone_ejections = 0  # ejections of endpoints no longer in the address set
        # An /$/inet address never changes: one endpoint, picked without any checks.
        self._static = self._make(bound.addr.host, bound.addr.port) if isinstance(bound.addr, Inet) else None
        if self._static is not None:
            self._list = [self._static]
            self.balancer.update(self._list)

    def _make(self, host: str, port: int) -> Endpoint:
        return Endpoint(
            host, port, max_connections=self._max_connections, max_waiters=self._max_waiters, health=self._new_health()
        )

    def _current_addrs(self) -> tuple[tuple[str, int], ...]:
        addr = self.addr
        if isinstance(addr, Inet):
            return ((addr.host, addr.port),)
        if addr is None:
            return ()
        addrs: tuple[tuple[str, int], ...] = addr.addrs  # a live EndpointSet: swapped as a whole
        return addrs

    def pending_set(self) -> Any | None:
        """The client's address set while its namer has not resolved it yet, else None."""
        addr = self.addr
        return addr if getattr(addr, "state", None) == "pending" else None

    def endpoints(self) -> list[Endpoint]:
        if self._static is not None:
            return self._list
        addrs = self._current_addrs()
        if addrs is not self._addrs_seen:  # the set changed (identity check: one reference swap)
            eps = self._endpoints
            make = self._make
            fresh = {a: eps.get(a) or make(a[0], a[1]) for a in addrs}
            for a, ep in eps.items():
                if a not in fresh:
                    ep.close_idle()
                    self._gone_ejections += ep.health.ejections
            self._endpoints = fresh
            self._list = list(fresh.values())
            self._addrs_seen = addrs
            self.balancer.update(self._list)
        return self._list

    def pick(self) -> Endpoint | None:
        """An endpoint for one attempt, by the client's balancer (None: no endpoints)."""
        if self._static is not None:
            return self._static
        if self._current_addrs() is not self._addrs_seen:
            self.endpoints()
        ep: Endpoint | None = self.balancer.pick()
        return ep

    def reap_idle(self, now: float) -> None:
        """Close connections idle past `hostConnectionPool.idleTimeMs` (or the router's
        client.idleTimeoutMs), keeping `minSize` per endpoint."""
        pool = self.policy.host_connection_pool
        ms = pool.idle_time_ms
        if not ms:
            return
        for ep in self._list:
            if ep.idle:
                ep.reap_idle(now, ms / 1000, pool.min_size)

    def ejections(self) -> int:
        """Times failure accrual took one of this client's endpoints out (telemetry reads
        it at scrape), those since removed from the address set included."""
        n = self._gone_ejections
        for ep in self._list:
            n += ep.health.ejections
        return n

    def close_idle(self) -> None:
        for ep in self._list:
            ep.close_idle()


class ClientRegistry:
    """Clients by bound id, shared by every route of a router (and kept across router
    snapshots while the router's client config is unchanged)."""

    __slots__ = ("_clients", "_config")

    def __init__(self, config: Any = None) -> None:
        self._clients: dict[tuple[Path, Any], Client] = {}
        self._config = config  # the RouterConfig whose client policies apply; None: defaults

    def get(self, bound: Bound) -> Client:
        # Inet compares by value; a namer's live EndpointSet by identity.
        key = (bound.id, bound.addr)
        client = self._clients.get(key)
        if client is None:
            policy = client_policy(self._config, bound.id) if self._config is not None else None
            client = self._clients[key] = Client(bound, policy)
        return client

    def clients(self) -> list[Client]:
        return list(self._clients.values())

    def reap_idle(self, now: float) -> None:
        for c in self._clients.values():
            c.reap_idle(now)

    def close_idle(self) -> None:
        for c in self._clients.values():
            c.close_idle()
