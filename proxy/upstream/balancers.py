"""Load balancers (`client.loadBalancer`): which endpoint of a client gets a request.

Finagle's balancers, as Linkerd 1 configures them (Linkerd's option names):

- `ewma` (the default; `decayTimeMs` 10000, `maxEffort` 5): power of two choices on
  peak-EWMA load, Finagle's P2CPeakEwma. Each endpoint's `cost` is an exponentially
  weighted moving average of its response times that jumps to a slower observation at
  once (the peak) and decays toward faster ones with time constant `decayTimeMs`; it
  also decays toward zero while the endpoint goes unobserved, so a slow endpoint is
  tried again. Load is `cost * (outstanding + 1)`; an endpoint with no observation yet
  has load 0 when idle (so it gets its first request soon) and a large penalty plus its
  outstanding count when busy (one request at a time until it answers).
- `p2c` (`maxEffort`): power of two choices on outstanding requests (P2CLeastLoaded).
- `roundRobin` (`maxEffort`): the next endpoint in turn, over the usable ones.
- `heap`: the least outstanding endpoint, kept in a binary heap (HeapLeastLoaded).
- `aperture` (`maxEffort`, `smoothWindowMs` 5000, `lowLoad` 0.5, `highLoad` 2.0,
  `minAperture` 1): Finagle's random aperture with its load band. Endpoints are put in a
  random order, fixed per client (a random token each), usable ones first; requests go
  by power of two choices on outstanding requests to the first `aperture` of them.
  The client's offered load (its requests in flight) is smoothed over `smoothWindowMs`;
  when the smoothed load per endpoint of the aperture reaches `highLoad` the aperture
  grows by one, when it falls to `lowLoad` it shrinks by one, within
  [min(minAperture, n), n].

Health (see proxy.upstream.accrual): a balancer skips endpoints whose `health` is not
usable. A DEAD endpoint whose backoff ran out counts as usable (Finagle's ProbeOpen) and
is picked like any other; picking it claims its single probe. Finagle's `maxEffort`: a
pick that lands on unusable endpoints is tried again up to `maxEffort` times; after
that, where Finagle would panic, these balancers first scan every endpoint for a usable
one (so a healthy endpoint is never passed over), and only when none is usable do they
panic: pick among all anyway (`panics` counts it) rather than fail.

Cost of a pick when every endpoint is AVAILABLE: attribute reads, one or two `rand()`
and no clock call (the clock is read only when an endpoint that is not AVAILABLE is
met, and by `aperture` once per few picks for its load band). EWMA decay at pick time
uses the time of the latest `observe` as "now", for the same reason.

Endpoint contract (`EndpointLike`): `outstanding` (read only here), `cost` and
`cost_stamp` (the EWMA state, owned by this module: a new endpoint starts at 0.0 and
0.0), `health`. Endpoints are compared by identity; `update` keeps per-endpoint state
(aperture tokens, heap nodes) for the endpoints still present.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Final, Generic, Protocol, TypeVar

from config.policy import LoadBalancerConfig

from .accrual import AVAILABLE, Health

Clock = Callable[[], float]
Rand = Callable[[], float]

#: Load of an endpoint with no latency observation but requests outstanding (Finagle:
#: `Long.MaxValue >> 16` nanoseconds, about 1.4e5 s): above any real cost * load.
EWMA_PENALTY: Final = 1.4e5
#: What the heap adds to a node it found unusable, so it sinks below every usable one.
_HEAP_DOWN: Final = 1 << 40


class EndpointLike(Protocol):
    @property
    def outstanding(self) -> int: ...

    cost: float
    cost_stamp: float
    health: Health


E = TypeVar("E", bound=EndpointLike)


class Balancer(Protocol[E]):
    def update(self, endpoints: Sequence[E]) -> None:
        """A new address set; endpoints are kept by identity across sets."""
        ...

    def pick(self) -> E | None:
        """The endpoint for the next request; None only when there are no endpoints."""
        ...

    def observe(self, ep: E, rtt_s: float, now: float) -> None:
        """A response head arrived `rtt_s` after the request went out to `ep`."""
        ...


class _Base(Generic[E]):
    """What every balancer shares: the endpoint list, the fallback scan and panic."""

    __slots__ = ("_eps", "_clock", "_rand", "max_effort", "panics")

    def __init__(self, max_effort: int, clock: Clock, rand: Rand) -> None:
        self._eps: list[E] = []
        self._clock = clock
        self._rand = rand
        self.max_effort = max(1, max_effort)
        self.panics = 0  # picks made with no usable endpoint at all

    def update(self, endpoints: Sequence[E]) -> None:
        self._eps = list(endpoints)

    def observe(self, ep: E, rtt_s: float, now: float) -> None:
        pass

    def _load(self, ep: E) -> float:
        return ep.outstanding

    def _settle(self, a: E, b: E) -> E | None:
        """Two candidates, one of them not AVAILABLE: the usable one, or the less loaded
        if both are usable (claiming a probe if that is what it is); None if neither."""
        now = self._clock()
        ra = a.health.is_ready(now)
        rb = b.health.is_ready(now)
        if ra and rb:
            chosen = a if self._load(a) <= self._load(b) else b
        elif ra:
            chosen = a
        elif rb:
            chosen = b
        else:
            return None
        chosen.health.usable(now)  # True (it is ready): claims the probe when DEAD
        return chosen

    def _p2c_slow(self, a: E, b: E) -> E:
        """The first pair had an endpoint that is not AVAILABLE: settle it, then the
        rest of the maxEffort tries, then the fallback."""
        chosen = self._settle(a, b)
        if chosen is not None:
            return chosen
        eps = self._eps
        n = len(eps)
        r = self._rand
        for _ in range(self.max_effort - 1):
            i, j = _two(r, n)
            chosen = self._settle(eps[i], eps[j])
            if chosen is not None:
                return chosen
        return self._fallback()

    def _fallback(self) -> E:
        """No luck after maxEffort tries: the least loaded usable endpoint, or (panic)
        the less loaded of two random ones."""
        eps = self._eps
        now = self._clock()
        best: E | None = None
        best_load = 0.0
        for ep in eps:
            if ep.health.is_ready(now):
                load = self._load(ep)
                if best is None or load < best_load:
                    best, best_load = ep, load
        if best is not None:
            best.health.usable(now)
            return best
        self.panics += 1
        n = len(eps)
        if n == 1:
            return eps[0]
        i, j = _two(self._rand, n)
        a, b = eps[i], eps[j]
        return a if self._load(a) <= self._load(b) else b


def _two(r: Rand, n: int) -> tuple[int, int]:
    """Two distinct indices below n (n >= 2), uniformly (Finagle's P2CPick): the second
    skips the first. One draw serves both: the fraction left of `u * n` after taking
    the first index is itself uniform (a double has 53 bits; n is far below 2^20)."""
    u = r() * n
    i = int(u)
    j = int((u - i) * (n - 1))
    return i, (j + 1 if j >= i else j)


class P2CLeastLoaded(_Base[E]):
    """`p2c`: power of two choices on outstanding requests."""

    __slots__ = ()

    def pick(self) -> E | None:
        eps = self._eps
        n = len(eps)
        if n < 2:
            if not n:
                return None
            ep = eps[0]
            return ep if ep.health.state is AVAILABLE else self._fallback()
        u = self._rand() * n  # _two, inlined: this is the per-request path
        i = int(u)
        j = int((u - i) * (n - 1))
        a = eps[i]
        b = eps[j + 1 if j >= i else j]
        if a.health.state is AVAILABLE and b.health.state is AVAILABLE:
            return a if a.outstanding <= b.outstanding else b
        return self._p2c_slow(a, b)


class P2CPeakEwma(_Base[E]):
    """`ewma`: power of two choices on peak-EWMA load."""

    __slots__ = ("_tau", "_now")

    def __init__(self, decay_time_s: float, max_effort: int, clock: Clock, rand: Rand) -> None:
        super().__init__(max_effort, clock, rand)
        if decay_time_s <= 0:
            raise ValueError(f"decayTime must be positive, got {decay_time_s}")
        self._tau = decay_time_s
        self._now = -math.inf  # the latest time seen by observe()

    def observe(self, ep: E, rtt_s: float, now: float) -> None:
        if now > self._now:
            self._now = now
        stamp = ep.cost_stamp
        cost = ep.cost
        if rtt_s > cost:  # a peak is taken at once
            ep.cost = rtt_s
        elif now > stamp:  # otherwise decay toward the observation
            ep.cost = rtt_s + (cost - rtt_s) * math.exp((stamp - now) / self._tau)
        if now > stamp:
            ep.cost_stamp = now

    def _load(self, ep: E) -> float:
        cost = ep.cost
        if cost:
            stamp = ep.cost_stamp
            now = self._now
            if stamp < now:
                # Finagle reads the load as observe(0) now: unobserved time decays the cost.
                cost *= math.exp((stamp - now) / self._tau)
                ep.cost = cost
                ep.cost_stamp = now
            return cost * (ep.outstanding + 1)
        o = ep.outstanding
        return EWMA_PENALTY + o if o else 0.0

    def pick(self) -> E | None:
        eps = self._eps
        n = len(eps)
        if n < 2:
            if not n:
                return None
            ep = eps[0]
            return ep if ep.health.state is AVAILABLE else self._fallback()
        u = self._rand() * n
        i = int(u)
        j = int((u - i) * (n - 1))
        a = eps[i]
        b = eps[j + 1 if j >= i else j]
        if a.health.state is not AVAILABLE or b.health.state is not AVAILABLE:
            return self._p2c_slow(a, b)
        # self._load(a) <= self._load(b), inlined (two method calls cost as much as the rest)
        now = self._now
        cost = a.cost
        if cost:
            if a.cost_stamp < now:
                cost *= math.exp((a.cost_stamp - now) / self._tau)
                a.cost = cost
                a.cost_stamp = now
            la = cost * (a.outstanding + 1)
        else:
            la = EWMA_PENALTY + a.outstanding if a.outstanding else 0.0
        cost = b.cost
        if cost:
            if b.cost_stamp < now:
                cost *= math.exp((b.cost_stamp - now) / self._tau)
                b.cost = cost
                b.cost_stamp = now
            lb = cost * (b.outstanding + 1)
        else:
            lb = EWMA_PENALTY + b.outstanding if b.outstanding else 0.0
        return a if la <= lb else b


class RoundRobin(_Base[E]):
    """`roundRobin`: in turn over the usable endpoints (Finagle's RoundRobinBalancer).

    The usable set is taken when the address set changes and again when a pick meets an
    endpoint that stopped being usable, or an unusable one became usable again."""

    __slots__ = ("_sel", "_down", "_i", "_saw_down")

    def __init__(self, max_effort: int, clock: Clock, rand: Rand) -> None:
        super().__init__(max_effort, clock, rand)
        self._sel: list[E] = []
        self._down: list[E] = []
        self._i = 0
        self._saw_down = False

    def update(self, endpoints: Sequence[E]) -> None:
        self._eps = list(endpoints)
        self._rebuild()

    def _rebuild(self) -> None:
        eps = self._eps
        up: list[E] = []
        down: list[E] = []
        now: float | None = None
        for ep in eps:
            h = ep.health
            if h.state is AVAILABLE:
                up.append(ep)
                continue
            if now is None:
                now = self._clock()
            (up if h.is_ready(now) else down).append(ep)
        self._sel = up if up else eps  # nothing usable: go round all of them (panic)
        self._down = down
        self._saw_down = False

    def _revived(self) -> bool:
        now: float | None = None
        for ep in self._down:
            h = ep.health
            if h.state is AVAILABLE:
                return True
            if now is None:
                now = self._clock()
            if h.is_ready(now):
                return True
        return False

    def pick(self) -> E | None:
        if self._saw_down or (self._down and self._revived()):
            self._rebuild()
        sel = self._sel
        n = len(sel)
        if not n:
            return None
        for _ in range(self.max_effort):
            ep = sel[self._i % n]
            self._i += 1
            h = ep.health
            if h.state is AVAILABLE:
                return ep
            self._saw_down = True  # rebuild next time: it is (or is about to be) busy
            if h.usable(self._clock()):
                return ep
        self._rebuild()
        if self._down and len(self._down) == len(self._eps):
            self.panics += 1
            ep = self._eps[self._i % len(self._eps)]
            self._i += 1
            return ep
        return self._fallback()


class _HeapNode(Generic[E]):
    __slots__ = ("ep", "key", "index", "down")

    def __init__(self, ep: E) -> None:
        self.ep = ep
        self.key = ep.outstanding
        self.index = -1
        self.down = False


class HeapLeastLoaded(_Base[E]):
    """`heap`: the least outstanding endpoint, from a binary min-heap on outstanding.

    Finagle's HeapBalancer hears of every request's end and fixes the heap then. Here
    the endpoint counts its own outstanding requests and the balancer is not told when
    one ends, so keys are refreshed lazily: the top is re-read before it is returned,
    and one other node per pick in turn. A node whose load fell is therefore seen at
    the latest after `n` picks; a load that rose is seen before the node is picked.
    An unusable top is marked down (sunk below every usable node) and checked again
    on each pick until it is usable; when the top itself is down, every node is, and
    it is returned anyway (Finagle's heap has no panic mode either)."""

    __slots__ = ("_heap", "_nodes", "_ring", "_downq", "_cursor")

    def __init__(self, clock: Clock, rand: Rand) -> None:
        super().__init__(1, clock, rand)
        self._heap: list[_HeapNode[E]] = []
        self._nodes: dict[int, _HeapNode[E]] = {}
        self._ring: list[_HeapNode[E]] = []  # the nodes in a fixed order, for the refresh
        self._downq: list[_HeapNode[E]] = []
        self._cursor = 0

    def update(self, endpoints: Sequence[E]) -> None:
        self._eps = list(endpoints)
        old = self._nodes
        nodes: dict[int, _HeapNode[E]] = {}
        for ep in self._eps:
            node = old.get(id(ep))
            if node is None or node.ep is not ep:
                node = _HeapNode(ep)
            node.key = ep.outstanding
            node.down = False
            nodes[id(ep)] = node
        for key, node in old.items():
            if nodes.get(key) is not node:
                node.index = -1
        self._nodes = nodes
        self._ring = list(nodes.values())
        self._cursor = 0
        heap = self._heap = list(nodes.values())
        self._downq = []
        for i, node in enumerate(heap):
            node.index = i
        for i in range(len(heap) // 2 - 1, -1, -1):
            self._sift_down(i)

    def _sift_up(self, i: int) -> None:
        heap = self._heap
        node = heap[i]
        key = node.key
        while i:
            parent = (i - 1) >> 1
            p = heap[parent]
            if p.key <= key:
                break
            heap[i] = p
            p.index = i
            i = parent
        heap[i] = node
        node.index = i

    def _sift_down(self, i: int) -> None:
        heap = self._heap
        n = len(heap)
        node = heap[i]
        key = node.key
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            c = heap[child]
            if child + 1 < n and heap[child + 1].key < c.key:
                child += 1
                c = heap[child]
            if key <= c.key:
                break
            heap[i] = c
            c.index = i
            i = child
        heap[i] = node
        node.index = i

    def _rekey(self, node: _HeapNode[E], key: int) -> None:
        old = node.key
        node.key = key
        if key < old:
            self._sift_up(node.index)
        else:
            self._sift_down(node.index)

    def _check_downq(self) -> None:
        now = self._clock()
        keep: list[_HeapNode[E]] = []
        for node in self._downq:
            if node.index < 0:
                continue  # no longer in the address set
            if node.ep.health.is_ready(now):
                node.down = False
                self._rekey(node, node.ep.outstanding)
            else:
                keep.append(node)
        self._downq = keep

    def pick(self) -> E | None:
        heap = self._heap
        if not heap:
            return None
        if self._downq:
            self._check_downq()
        while True:
            top = heap[0]
            ep = top.ep
            actual = ep.outstanding + _HEAP_DOWN if top.down else ep.outstanding
            if actual != top.key:
                self._rekey(top, actual)
                continue
            if top.down:  # the least loaded is down, so all are: pick it anyway
                self.panics += 1
                break
            h = ep.health
            if h.state is AVAILABLE or h.usable(self._clock()):
                break
            top.down = True
            self._rekey(top, actual + _HEAP_DOWN)
            self._downq.append(top)
        top.key += 1  # the request about to start on it
        self._sift_down(top.index)
        # Refresh one node in turn: loads that fell while nobody looked.
        ring = self._ring
        c = self._cursor
        node = ring[c]
        self._cursor = c + 1 if c + 1 < len(ring) else 0
        o = node.ep.outstanding
        if node.down:
            o += _HEAP_DOWN
        if o != node.key and node is not top:
            self._rekey(node, o)
        return ep


class Aperture(_Base[E]):
    """`aperture`: p2c on outstanding requests over a load-sized window of endpoints."""

    __slots__ = ("_tokens", "_order", "_busy", "aperture", "_min_aperture", "_min", "_low", "_high",
                 "_tau", "_ema", "_ema_t", "_countdown", "_every")  # fmt: skip

    def __init__(self, max_effort: int, smooth_window_s: float, low_load: float, high_load: float,
                 min_aperture: int, clock: Clock, rand: Rand) -> None:  # fmt: skip
        super().__init__(max_effort, clock, rand)
        if not 0 <= low_load < high_load:
            raise ValueError(f"the load band needs 0 <= lowLoad < highLoad, got {low_load}, {high_load}")
        if smooth_window_s <= 0 or min_aperture < 1:
            raise ValueError("smoothWindow must be positive and minAperture at least 1")
        self._tokens: dict[int, float] = {}
        self._order: list[E] = []
        self._busy: list[E] = []
        self.aperture = 1  # Finagle's initial aperture, clamped to [min, n] below
        self._min_aperture = min_aperture
        self._min = 0
        self._low = low_load
        self._high = high_load
        self._tau = smooth_window_s
        self._ema = 0.0
        self._ema_t: float | None = None
        self._every = 4
        self._countdown = 0

    def update(self, endpoints: Sequence[E]) -> None:
        self._eps = eps = list(endpoints)
        old = self._tokens
        rand = self._rand
        self._tokens = {id(ep): old[id(ep)] if id(ep) in old else rand() for ep in eps}
        n = len(eps)
        self._min = min(self._min_aperture, n)
        self.aperture = max(self._min, min(n, self.aperture))  # kept across updates
        # Sample the load every few picks: summing outstanding is O(n).
        self._every = 4 + n // 8
        self._rebuild()

    def _rebuild(self) -> None:
        tokens = self._tokens
        ordered = sorted(self._eps, key=lambda ep: tokens[id(ep)])
        ready: list[E] = []
        busy: list[E] = []
        now: float | None = None
        for ep in ordered:  # a stable partition: usable first, each part in token order
            h = ep.health
            if h.state is AVAILABLE:
                ready.append(ep)
                continue
            if now is None:
                now = self._clock()
            (ready if h.is_ready(now) else busy).append(ep)
        self._order = ready + busy
        self._busy = busy

    def _needs_rebuild(self) -> bool:
        now: float | None = None
        for ep in self._busy:
            h = ep.health
            if h.state is AVAILABLE:
                return True
            if now is None:
                now = self._clock()
            if h.is_ready(now):
                return True
        return False

    def _sample(self) -> None:
        """Finagle's LoadBand: smooth the offered load, move the aperture one step at a
        time while the load per endpoint is outside [lowLoad, highLoad]."""
        self._countdown = self._every
        # Requests in flight as an arriving request sees them: sampled at arrivals, that
        # is the time average (Finagle samples at every start and end instead).
        total = 0
        for ep in self._eps:
            total += ep.outstanding
        now = self._clock()
        t = self._ema_t
        if t is None:
            ema = float(total)
        else:
            w = math.exp(min(t - now, 0.0) / self._tau)
            ema = total * (1 - w) + self._ema * w
        self._ema = ema
        self._ema_t = now if t is None or now > t else t
        ap, lo, hi, n = self.aperture, self._min, len(self._eps), self._every
        while n:
            avg = ema / ap
            if avg >= self._high and ap < hi:
                ap += 1
            elif avg <= self._low and ap > lo:
                ap -= 1
            else:
                break
            n -= 1
        self.aperture = ap

    @property
    def offered_load(self) -> float:
        """The smoothed number of requests in flight (Finagle's `offered_load_ema`)."""
        return self._ema

    def pick(self) -> E | None:
        order = self._order
        n = len(order)
        if not n:
            return None
        c = self._countdown - 1
        if c > 0:
            self._countdown = c
        else:
            self._sample()
        if self._busy and self._needs_rebuild():
            self._rebuild()  # back to the stable order once a busy endpoint is usable
            order = self._order
        ap = self.aperture
        if ap > 1:  # the first p2c try, inlined (see _two)
            u = self._rand() * ap
            i = int(u)
            j = int((u - i) * (ap - 1))
            a = order[i]
            b = order[j + 1 if j >= i else j]
            if a.health.state is AVAILABLE and b.health.state is AVAILABLE:
                return a if a.outstanding <= b.outstanding else b
        return self._pick_slow(order)

    def _pick_slow(self, order: list[E]) -> E:
        for attempt in range(2):
            chosen = self._p2c(order)
            if chosen is not None:
                return chosen
            if attempt == 0:  # Finagle: rebuild (usable first) and try again
                self._rebuild()
                order = self._order
        return self._fallback()

    def _p2c(self, order: list[E]) -> E | None:
        ap = self.aperture
        if ap > len(order):
            ap = len(order)
        r = self._rand
        for _ in range(self.max_effort):
            if ap < 2:
                a = order[0]
                if a.health.state is AVAILABLE or a.health.usable(self._clock()):
                    return a
                return None  # the window is its first endpoint: no other choice in it
            i, j = _two(r, ap)
            a = order[i]
            b = order[j]
            if a.health.state is AVAILABLE and b.health.state is AVAILABLE:
                return a if a.outstanding <= b.outstanding else b
            chosen = self._settle(a, b)
            if chosen is not None:
                return chosen
        return None


def make_balancer(config: LoadBalancerConfig, clock: Clock = time.monotonic,
                  rand: Rand = random.random) -> Balancer[E]:  # fmt: skip
    """A balancer for one client, empty until its first `update`."""
    kind = config.kind
    if kind == "ewma":
        return P2CPeakEwma(config.decay_time_ms / 1000, config.max_effort, clock, rand)
    if kind == "p2c":
        return P2CLeastLoaded(config.max_effort, clock, rand)
    if kind == "roundRobin":
        return RoundRobin(config.max_effort, clock, rand)
    if kind == "heap":
        return HeapLeastLoaded(clock, rand)
    if kind == "aperture":
        return Aperture(config.max_effort, config.smooth_window_ms / 1000, config.low_load,
                        config.high_load, config.min_aperture, clock, rand)  # fmt: skip
    raise ValueError(f"unknown load balancer kind {kind!r}")
