"""What one request's attempts may do: built once per route and client, never per request.

`RequestPolicy` gathers, for the `Attempt`, the service's retry settings (classifier,
retry budget and backoff, the body buffer) and the client's (requeue budget, attempt
timeout, the balancer's latency feedback). A route builds one per client it can pick,
so a request only carries a reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ProxyError


class RequestPolicy:
    """The per-(service, client) settings an `Attempt` reads. A field that is None (or 0)
    turns its feature off, and the attempt then skips it with one attribute test."""

    __slots__ = (
        "buffer_bytes", "observe", "attempt_timeout_s", "classify", "classify_error", "retry_budget",
        "requeue_budget", "next_backoff", "stats",
    )  # fmt: skip

    def __init__(
        self,
        *,
        buffer_bytes: int = 0,
        observe: Callable[[Any, float], None] | None = None,
        attempt_timeout_s: float = 0.0,
        classify: Callable[[bytes, int, list[tuple[bytes, bytes]]], int] | None = None,
        classify_error: Callable[[bytes, ProxyError], int] | None = None,
        retry_budget: Any = None,
        requeue_budget: Any = None,
        next_backoff: Callable[[int], float] | None = None,
        stats: Any = None,
    ) -> None:
        self.buffer_bytes = buffer_bytes  # service.retryBufferSize.requestBytes
        self.observe = observe  # the balancer's feedback: (endpoint, seconds to the response head)
        self.attempt_timeout_s = attempt_timeout_s  # client.requestAttemptTimeoutMs
        self.classify = classify  # (method, status, response fields) -> SUCCESS | FAILURE | RETRYABLE
        self.classify_error = classify_error  # (method, ProxyError) -> the same, for a failed try
        self.retry_budget = retry_budget  # service.retries.budget: try_withdraw(now) -> bool
        self.requeue_budget = requeue_budget  # client.requeueBudget
        self.next_backoff = next_backoff  # service.retries.backoff: retry number -> seconds
        self.stats = stats  # counters with `retries` and `requeues` (telemetry), or None


#: No retries, no requeues, no buffering: what a request gets when nothing is configured.
NONE = RequestPolicy()
