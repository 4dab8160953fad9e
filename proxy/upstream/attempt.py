"""The attempt: one try of one request on one endpoint, for HTTP/1.1 and HTTP/2 alike.

An `Attempt` sits between a downstream request (an HTTP/1.1 connection or an HTTP/2
stream: the *owner*) and an upstream connection handle. To the owner it is the handle
(`send_body`, `send_end`, `cancel`, ...); to the handle it is the owner
(`on_upstream_event`, `upstream_failed`, ...). That position is where everything that
concerns one try attaches, once for both protocols:

- the endpoint's bookkeeping: `begin`/`end` around the try, the balancer's latency
  feedback when the response head arrives, failure accrual's verdict;
- requeues: a try refused before any byte of it reached the endpoint (a connect failure,
  REFUSED_STREAM, a GOAWAY below the stream) goes to another endpoint, for any method,
  within the client's requeue budget; a stale pooled HTTP/1.1 connection (closed by the
  peer while idle) is replayed once on a fresh one for a request whose body is at hand;
- retries: a response or failure the service's classifier calls retryable is tried again
  (after the retry backoff, within the retry budget and the request's deadline) as long
  as nothing of the response has reached the client and the request body is still at
  hand (buffered up to `service.retryBufferSize.requestBytes`);
- the per-attempt timeout (`client.requestAttemptTimeoutMs`): the try is abandoned when no
  response head arrived in time, and retried when the classifier allows.

The request-level deadlines (the router's `timeoutMs`, `service.totalTimeoutMs`, an inbound
deadline) stay with the owner, which cancels the attempt when one passes.

Once the response head is committed to the owner, every later event is passed straight
through: the request that does not fail pays one attribute test per event.
"""

from __future__ import annotations

import asyncio
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any, Final

from ..codec.h1 import EndOfMessage, ResponseHead
from ..errors import NoRoute, ProxyError, Timeout
from .classify import RETRYABLE, SUCCESS
from .policy import DEFER

if TYPE_CHECKING:
    from .contracts import Handle, Opener, Owner
    from .endpoint import Client, Endpoint
    from .policy import RequestPolicy

#: Requeues of one request at most, whatever the budget says: a client whose every
#: endpoint refuses fails fast instead of going round (Finagle bounds its RequeueFilter
#: the same way).
MAX_REQUEUES: Final = 25

#: Methods whose request may be replayed after it was (perhaps) seen by the endpoint:
#: RFC 9110 §9.2.2's idempotent methods.
IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))

#: The clock, Final: compiled, a call reads it from a C static, where an imported name is
#: looked up in the module's dict at every call (~70 instructions; a few calls a request).
monotonic: Final = _monotonic

#: `Attempt.handle` while the opener runs: a failure reported from inside it still counts.
_OPENING: Final[Any] = object()


class Attempt:
    """One request's tries, one at a time (see the module docstring)."""

    __slots__ = (
        "owner", "handle", "endpoint", "client", "policy", "opener", "loop", "method", "target", "headers",
        "body_mode", "committed", "req_ended", "trailers", "body", "body_bytes", "t0", "retries",
        "requeues", "replayed", "timer", "done", "deadline", "backoff", "status", "deferred", "held",
        "held_bytes", "unsubscribe",
    )  # fmt: skip

    def __init__(
        self,
        owner: Owner,
        client: Client,
        policy: RequestPolicy,
        opener: Opener,
        loop: asyncio.AbstractEventLoop,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body_mode: int,
        deadline: float = 0.0,
    ) -> None:
        self.owner = owner
        self.client = client
        self.policy = policy
        self.opener = opener
        self.loop = loop
        self.method = method
        self.target = target
        self.headers = headers
        self.body_mode = body_mode
        self.deadline = deadline  # monotonic time by which the response head must come (0: none)
        self.handle: Handle | None = None
        self.endpoint: Endpoint | None = None
        self.committed = False  # a response head went to the owner: no more tries
        self.req_ended = False
        self.trailers: Any = None
        # The request body kept for another try; None once it outgrew the retry buffer
        # (or when the policy keeps none), so a streamed upload is never held.
        self.body: list[bytes] | None = [] if policy.buffer_bytes else None
        self.body_bytes = 0
        self.retries = 0
        self.requeues = 0
        self.replayed = False
        self.timer: asyncio.TimerHandle | None = None
        self.done = False
        self.backoff: Any = None
        self.status = 0  # the final response's status, while its verdict waits (DEFER)
        self.deferred = False
        self.held: list[Any] | None = None  # a response held back for its trailers' verdict
        self.held_bytes = 0
        self.unsubscribe: Any = None  # while waiting for a pending address set to bind
        now = self.t0 = monotonic()
        budget = policy.retry_budget
        if budget is not None:
            budget.deposit(now)  # every request pays into its service's retry budget

    # -- trying ------------------------------------------------------------------------------

    def start(self, endpoint: Endpoint | None = None, *, fresh: bool = False) -> None:
        """Pick an endpoint (unless given) and send the request there. Raises NoRoute when
        the client has no endpoints; a failure to connect arrives as `upstream_failed`."""
        ep = endpoint if endpoint is not None else self.client.pick()
        if ep is None:
            c = self.client
            pending = c.pending_set()
            if pending is not None and self.policy.binding_timeout_s and self.unsubscribe is None:
                self._await_binding(pending)  # the namer has not said yet (bindingTimeoutMs)
                return
            raise NoRoute(f"No hosts are available for {c.id.show()}")
        self.endpoint = ep
        ep.begin()
        policy = self.policy
        if self.retries or self.requeues or self.replayed:
            self.t0 = monotonic()  # the balancer hears this try's own latency
        if policy.attempt_timeout_s:
            self._arm(policy.attempt_timeout_s)
        self.handle = _OPENING
        try:
            handle = self.opener(ep, self, self.method, self.target, self.headers, self.body_mode, self.loop, fresh)
        except ProxyError:  # refused at once (a full pool): the endpoint saw nothing
            self.handle = None
            ep.end()
            self._stop_timer()
            raise
        if self.handle is not _OPENING:
            return  # it failed while opening, and that was dealt with (maybe by a new try)
        self.handle = handle
        body = self.body
        if body:  # another try: what the request sent so far goes again
            for chunk in body:
                handle.send_body(chunk)
        if self.req_ended:
            handle.send_end(self.trailers)

    def _await_binding(self, pending: Any) -> None:
        """Wait (without a task) for the client's address set to leave `pending`, up to the
        router's bindingTimeoutMs; then try, or fail with 502."""
        self.unsubscribe = pending.subscribe(self._binding_changed)
        self.timer = self.loop.call_later(self.policy.binding_timeout_s, self._binding_timed_out)

    def _binding_changed(self, addrs: Any) -> None:
        if getattr(addrs, "state", None) == "pending" or self.done:
            return
        self._stop_waiting()
        self._restart(None)
        self.owner.flush_writes()

    def _binding_timed_out(self) -> None:
        self.timer = None
        self._stop_waiting()
        if self.done:
            return
        self.done = True
        ms = self.policy.binding_timeout_s * 1000
        self.owner.upstream_failed(NoRoute(
            f"{self.client.id.show()} is still being resolved after {ms:.0f} ms (bindingTimeoutMs)"
        ))  # fmt: skip
        self.owner.flush_writes()

    def _stop_waiting(self) -> None:
        unsubscribe, self.unsubscribe = self.unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        self._stop_timer()

    def _arm(self, delay_s: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay_s, self._attempt_timed_out)

    def _attempt_timed_out(self) -> None:
        self.timer = None
        if self.committed or self.done:
            return
        handle, self.handle = self.handle, None
        if handle is None:
            return  # between tries (a backoff): nothing is in flight
        handle.cancel()
        ms = self.policy.attempt_timeout_s * 1000
        self._failed(Timeout(f"no response from {self.endpoint} within {ms:.0f} ms (client.requestAttemptTimeoutMs)"))

    # -- the handle API, for the owner ------------------------------------------------------------

    def send_body(self, data: bytes) -> None:
        body = self.body
        if body is not None and not self.committed:
            n = self.body_bytes + len(data)
            if n <= self.policy.buffer_bytes:
                body.append(data)
                self.body_bytes = n
            else:
                self.body = None  # too large to keep: no further try can send it again
        handle = self.handle
        if handle is not None:
            handle.send_body(data)

    def send_end(self, trailers: Any = None) -> None:
        self.req_ended = True
        self.trailers = trailers
        handle = self.handle
        if handle is not None:
            handle.send_end(trailers)

    def pause_reading(self) -> None:
        if self.handle is not None:
            self.handle.pause_reading()

    def resume_reading(self) -> None:
        if self.handle is not None:
            self.handle.resume_reading()

    def cancel(self) -> None:
        """The owner gave up (client gone, a deadline): abandon the exchange."""
        if self.unsubscribe is not None:
            self._stop_waiting()
        if self.timer is not None:
            self._stop_timer()
        handle, self.handle = self.handle, None
        if handle is None:
            self.done = True
            return
        handle.cancel()
        if not self.done:  # in flight: the endpoint's books
            self.done = True
            ep = self.endpoint
            if ep is not None:
                ep.end()
                if not self.committed or self.deferred:
                    ep.abandoned(monotonic())  # no verdict: a probe must not stay claimed

    def start_tunnel(self, down: Any) -> Handle:
        """After a 101: the exchange becomes a tunnel. Returns the connection's handle,
        which the owner uses from now on (`tunnel_write`, `tunnel_eof`, `cancel`)."""
        handle = self.handle
        assert handle is not None
        self.done = True
        self.handle = None
        if self.endpoint is not None:
            self.endpoint.end()
        handle.start_tunnel(down)
        return handle

    # -- owner callbacks, for the handle -------------------------------------------------------------

    def on_upstream_event(self, ev: Any) -> None:
        if self.committed:
            if isinstance(ev, EndOfMessage):  # a type check, and a typed `ev`
                self._ended(ev)
                return
            self.owner.on_upstream_event(ev)
            return
        if isinstance(ev, ResponseHead) and ev.status >= 200:
            self._response_head(ev)
            return
        held = self.held
        if held is not None:  # a response held back for its trailers (DEFER)
            if isinstance(ev, EndOfMessage):
                self._held_end(ev)
                return
            held.append(ev)
            self.held_bytes += len(ev.data)
            if self.held_bytes > self.policy.hold_bytes:
                self._release()  # too large to hold: it goes on, the trailers count for accrual
            return
        self.owner.on_upstream_event(ev)  # 1xx: passed on, the final head follows

    def _response_head(self, ev: ResponseHead) -> None:
        """A final response head: classify it, then pass it on or give it up for a retry."""
        ep = self.endpoint
        assert ep is not None
        if self.timer is not None:
            self._stop_timer()
        policy = self.policy
        now = monotonic()
        if policy.observe is not None:
            policy.observe(ep, now - self.t0, now)
        status = ev.status
        if policy.status_only and status < 500:
            verdict = SUCCESS
        else:
            verdict = policy.classify(self.method, status, ev.headers)
        if verdict == SUCCESS:
            ep.succeeded(now)
            rq = policy.requeue_budget
            if rq is not None:
                rq.deposit(now)  # requeues are paid for by successes (Finagle's RequeueFilter)
        elif verdict == DEFER:  # the trailers will tell (gRPC)
            self.deferred = True
            self.status = status
            if policy.hold_bytes and self._body_at_hand():
                # Held back for up to classificationTimeoutMs and responseBytes, so the
                # trailers may still have it retried.
                self.held = [ev]
                self.held_bytes = 0
                self.timer = self.loop.call_later(policy.hold_s, self._hold_timed_out)
                return
            self.committed = True
            self.owner.on_upstream_event(ev)
            return
        else:
            ep.failed(now)
            if verdict == RETRYABLE and self._may_retry(now):
                handle, self.handle = self.handle, None
                ep.end()
                if handle is not None:
                    handle.discard(self.req_ended)  # read on into a sink, or close
                self._retry(now)
                return
        # Committed: the exchange is done as far as tries go. The endpoint's books close
        # here (Finagle counts a request pending until its response head), and the handle
        # talks to the owner directly from now on: the rest of the response costs nothing.
        self.committed = self.done = True
        ep.end()
        owner = self.owner
        handle = self.handle
        if handle is not None:
            handle.set_owner(owner)
        owner.on_upstream_event(ev)

    def _held_end(self, ev: Any) -> None:
        """A held response ended within the hold: its trailers decide, and it is retried
        or goes on whole."""
        self._stop_timer()
        ep = self.endpoint
        assert ep is not None
        now = monotonic()
        policy = self.policy
        verdict = policy.classify_end(self.method, self.status, ev.trailers)
        if verdict == RETRYABLE and self._may_retry(now):
            ep.failed(now)
            self.held = None
            handle, self.handle = self.handle, None
            ep.end()
            if handle is not None:
                handle.discard(self.req_ended)
            self.deferred = False
            self._retry(now)
            return
        self.deferred = False  # decided now: `_ended` has nothing to classify
        if verdict == SUCCESS:
            ep.succeeded(now)
        else:
            ep.failed(now)
        self._release()
        self._ended(ev)

    def _hold_timed_out(self) -> None:
        self.timer = None
        if self.held is not None and not self.done:
            self._release()
            self.owner.flush_writes()

    def _release(self) -> None:
        """The held response goes on to the owner; its verdict waits for the trailers."""
        held, self.held = self.held, None
        if self.timer is not None:
            self._stop_timer()
        self.committed = True
        owner = self.owner
        for ev in held or ():
            owner.on_upstream_event(ev)

    def _ended(self, ev: Any) -> None:
        self.done = True
        handle, self.handle = self.handle, None
        if handle is not None:
            ep = self.endpoint
            assert ep is not None
            ep.end()
            if self.deferred:
                now = monotonic()
                if self.policy.classify_end(self.method, self.status, ev.trailers) == SUCCESS:
                    ep.succeeded(now)
                else:
                    ep.failed(now)
            if not self.req_ended:
                # Answered before the upload ended: the rest of it is not wanted, and the
                # connection cannot carry another exchange after a half-sent one.
                handle.discard(False)
        self.owner.on_upstream_event(ev)

    def upstream_failed(self, exc: ProxyError) -> None:
        handle, self.handle = self.handle, None
        if handle is None or self.done:
            return
        self._failed(exc)

    def _failed(self, exc: ProxyError) -> None:
        """The try in flight failed (its handle is already let go)."""
        self._stop_timer()
        ep = self.endpoint
        assert ep is not None
        ep.end()
        now = monotonic()
        if self.committed:  # the response was cut short: nothing more to try
            self.done = True
            ep.failed(now)
            self.owner.upstream_failed(exc)
            return
        if getattr(exc, "stale", False):
            # A pooled connection the peer had closed while it idled (the pool race, not
            # the endpoint's fault): one replay on a fresh connection, when the request
            # may be seen twice and its body is at hand.
            ep.abandoned(now)
            if not self.replayed and self.method in IDEMPOTENT and self._body_at_hand():
                self.replayed = True
                self._restart(ep, fresh=True)
                return
        else:
            ep.failed(now)
        policy = self.policy
        stats = policy.stats
        if exc.retryable and self._body_at_hand():
            # Nothing reached the endpoint: requeue anywhere, any method (within budget).
            budget = policy.requeue_budget
            if budget is not None and self.requeues < MAX_REQUEUES and self._in_time(now):
                if budget.try_withdraw(now):
                    self.requeues += 1
                    if stats is not None:
                        stats.requeues += 1
                    self._restart(None)
                    return
                if stats is not None:
                    stats.budget_exhausted += 1
        if policy.classifier is not None and policy.classify_error(self.method, exc) == RETRYABLE:
            if self._may_retry(now):
                self._retry(now)
                return
        self.done = True
        self.owner.upstream_failed(exc)

    def flush_writes(self) -> None:
        self.owner.flush_writes()

    def pause_client_reads(self) -> None:
        self.owner.pause_client_reads()

    def resume_client_reads(self) -> None:
        self.owner.resume_client_reads()

    # -- retries -------------------------------------------------------------------------------------

    def _body_at_hand(self) -> bool:
        """Whether the whole request body sent so far can be sent again."""
        return self.body_mode == 0 or self.body is not None

    def _in_time(self, now: float) -> bool:
        return not self.deadline or now < self.deadline

    def _may_retry(self, now: float) -> bool:
        policy = self.policy
        budget = policy.retry_budget
        if budget is None or not self._body_at_hand() or not self._in_time(now):
            return False
        if budget.try_withdraw(now):
            return True
        if policy.stats is not None:
            policy.stats.budget_exhausted += 1
        return False

    def _retry(self, now: float) -> None:
        self.retries += 1
        stats = self.policy.stats
        if stats is not None:
            stats.retries += 1
        delay = 0.0
        if self.policy.backoff is not None:
            if self.backoff is None:
                self.backoff = self.policy.new_backoff()
            delay = self.backoff.next_s()
            if self.deadline and now + delay >= self.deadline:
                delay = 0.0  # no time to wait: try at once rather than miss the deadline idle
        if delay > 0:
            self.timer = self.loop.call_later(delay, self._restart, None)
        else:
            self._restart(None)

    def _restart(self, endpoint: Endpoint | None, *, fresh: bool = False) -> None:
        self.timer = None
        if self.done:
            return
        try:
            self.start(endpoint, fresh=fresh)
        except ProxyError as exc:
            self.done = True
            self.owner.upstream_failed(exc)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
