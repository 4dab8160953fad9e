"""What one request's attempts may do: built once per route and client, never per request.

`RequestPolicy` gathers, for the `Attempt`, the service's settings (the response
classifier, the retry budget and backoff, the body buffer: `service.*`, resolved for the
route's logical name) and the client's (its balancer's latency feedback, the requeue
budget, the attempt timeout: `client.*`, resolved for the bound id). A route builds one
per client it can pick, so a request carries a reference and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..errors import ProxyError
from .backoff import Backoff, make_backoff
from .budget import RetryBudget
from .classify import FAILURE, RETRYABLE, SUCCESS, Classifier, make_classifier

if TYPE_CHECKING:
    from config.policy import ServicePolicy

    from .endpoint import Client

#: `classify` cannot tell yet: the verdict comes with the trailers (gRPC), so the response
#: is committed to the client and only failure accrual hears the end.
DEFER: Final = 3

_GRPC_STATUS: Final = b"grpc-status"
_L5D_RETRYABLE: Final = b"l5d-retryable"


def grpc_status_of(fields: list[tuple[bytes, bytes]] | None) -> int | None:
    """The `grpc-status` of a response head or trailers, or None."""
    for n, v in fields or ():
        if n == _GRPC_STATUS:
            try:
                return int(v)
            except ValueError:
                return None
    return None


class RequestPolicy:
    """The per-(service, client) settings an `Attempt` reads. A field that is None (or 0)
    turns its feature off, and the attempt then skips it with one attribute test."""

    __slots__ = (
        "buffer_bytes", "observe", "attempt_timeout_s", "classifier", "status_only", "retry_budget",
        "requeue_budget", "backoff", "stats", "hold_bytes", "hold_s", "binding_timeout_s",
    )  # fmt: skip

    def __init__(
        self,
        *,
        buffer_bytes: int = 0,
        observe: Callable[[Any, float, float], None] | None = None,
        attempt_timeout_s: float = 0.0,
        classifier: Classifier | None = None,
        retry_budget: RetryBudget | None = None,
        requeue_budget: RetryBudget | None = None,
        backoff: Any = None,
        stats: Any = None,
        hold_bytes: int = 0,
        hold_s: float = 0.0,
        binding_timeout_s: float = 0.0,
    ) -> None:
        self.buffer_bytes = buffer_bytes  # service.retryBufferSize.requestBytes
        self.observe = observe  # the balancer's feedback: (endpoint, seconds to the response head, now)
        self.attempt_timeout_s = attempt_timeout_s  # client.requestAttemptTimeoutMs
        self.classifier = classifier  # service.responseClassifier (None: every response succeeds)
        # A classifier that decides on the status alone and calls everything below 500 a
        # success: the attempt skips the call for those (the common case).
        self.status_only = classifier is not None and not classifier.needs_trailers
        self.retry_budget = retry_budget  # service.retries.budget (None: no retries)
        self.requeue_budget = requeue_budget  # client.requeueBudget (None: no requeues)
        self.backoff = backoff  # service.retries.backoff config (a stream is made per request)
        self.stats = stats  # counters with `retries` and `requeues` (telemetry), or None
        # A response whose head cannot decide (DEFER: gRPC with trailers) is held back, up
        # to `hold_bytes` of body for up to `hold_s`, so its trailers can still have it
        # retried (service.retryBufferSize.responseBytes, service.classificationTimeoutMs).
        self.hold_bytes = hold_bytes if retry_budget is not None else 0
        self.hold_s = hold_s
        # How long a try waits for a name whose address set is still pending (the
        # router's bindingTimeoutMs); 0.0: it fails at once.
        self.binding_timeout_s = binding_timeout_s

    def classify(self, method: bytes, status: int, fields: list[tuple[bytes, bytes]]) -> int:
        """The verdict on a final response head: SUCCESS, FAILURE, RETRYABLE or DEFER."""
        c = self.classifier
        if c is None:
            return SUCCESS
        if c.needs_trailers:
            gs = grpc_status_of(fields)
            if not c.at_head(status, gs):
                return DEFER
            return c.classify(method, status, gs)
        retryable_header = False
        if status >= 500:
            for n, v in fields:
                if n == _L5D_RETRYABLE:
                    retryable_header = v.strip().lower() == b"true"
        return c.classify(method, status, None, retryable_header=retryable_header)

    def classify_end(self, method: bytes, status: int, trailers: list[tuple[bytes, bytes]] | None) -> int:
        """The verdict on a response whose head said DEFER, from its trailers."""
        c = self.classifier
        if c is None:
            return SUCCESS
        return c.classify(method, status, grpc_status_of(trailers))

    def classify_error(self, method: bytes, exc: ProxyError) -> int:
        """The verdict on a failed try (connect failure, reset, attempt timeout, ...)."""
        c = self.classifier
        if c is None:
            return FAILURE
        return c.classify_error(method, exc.kind)

    def new_backoff(self) -> Backoff | None:
        return make_backoff(self.backoff) if self.backoff is not None else None


def request_policy(service: ServicePolicy, client: Client, retry_budget: RetryBudget, stats: Any = None,
                   binding_timeout_s: float = 0.0) -> RequestPolicy:  # fmt: skip
    """The attempt settings for requests of one service sent through one client."""
    lb = client.policy.load_balancer
    backoff = service.retry_backoff
    return RequestPolicy(
        buffer_bytes=service.retry_buffer.request_bytes,
        observe=client.balancer.observe if lb.kind == "ewma" else None,
        attempt_timeout_s=client.attempt_timeout_s,
        classifier=make_classifier(service.response_classifier),
        retry_budget=retry_budget,
        requeue_budget=client.requeue_budget,
        backoff=None if backoff.kind == "constant" and backoff.ms == 0 else backoff,
        stats=stats,
        hold_bytes=service.retry_buffer.response_bytes,
        hold_s=service.classification_timeout_ms / 1000,
        binding_timeout_s=binding_timeout_s,
    )


def retry_budget(service: ServicePolicy) -> RetryBudget:
    b = service.retry_budget
    return RetryBudget(b.ttl_secs, b.min_retries_per_sec, b.percent_can_retry)


#: No retries, no requeues, no buffering: what a request gets when nothing is configured
#: (tests and tools that build a route without a router config).
NONE: Final = RequestPolicy()

__all__ = ["DEFER", "FAILURE", "NONE", "RETRYABLE", "SUCCESS", "RequestPolicy", "request_policy", "retry_budget"]
