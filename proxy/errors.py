"""The proxy's error family: every failure the proxy answers on a client's behalf.

Each class carries its own wire mapping (HTTP status, gRPC status, failure stage), so
one renderer can answer any of them. Foreign exceptions are translated into these
once, where they enter (a socket error in the connector, a parse error in a codec).
This module imports nothing from the rest of `proxy`: codecs may import it.
"""

from __future__ import annotations

from typing import ClassVar


class ProxyError(Exception):
    """A failure the proxy answers on the client's behalf (with `l5d-err`)."""

    status: ClassVar[int] = 502
    grpc_status: ClassVar[int] = 14  # UNAVAILABLE
    stage: ClassVar[str] = "proxy"  # metric label and access-log field
    retryable: ClassVar[bool] = False  # True: known not to have reached the destination
    #: What went wrong, as a response classifier sees a failed try (proxy.upstream.classify:
    #: connect, refused, write, reset, timeout, framing, other).
    kind: ClassVar[str] = "other"


class ProtocolError(ProxyError):
    """A framing or protocol violation found by a codec."""

    stage = "protocol"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status  # type: ignore[misc]


class PeerProtocolError(ProtocolError):
    """The peer broke the protocol. On the server side the client gets a 4xx and the
    connection closes; on the client side the upstream response is unusable (502)."""

    status = 400
    grpc_status = 13  # INTERNAL


class BodyTooLarge(PeerProtocolError):
    """A request body is larger than `limits.maxRequestBodyBytes` (RFC 9110 §15.5.14)."""

    status, grpc_status, stage = 413, 8, "limits"  # 8: RESOURCE_EXHAUSTED

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large: more than {limit} bytes (limits.maxRequestBodyBytes)")


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow (our bug or a
    translation that cannot be expressed)."""

    status = 502
    grpc_status = 13


class BadRequest(ProxyError):
    """The request cannot be routed as sent: bad override, unidentifiable, bad name."""

    status, grpc_status, stage = 400, 3, "identify"  # 3: INVALID_ARGUMENT


class OverrideRefused(ProxyError):
    """A per-request override broke a trust rule or a limit; the message names the rule."""

    status, grpc_status, stage = 403, 7, "override"  # 7: PERMISSION_DENIED


class RequestTooLarge(ProxyError):
    """A request head or override exceeded a configured limit (the message names it)."""

    status, grpc_status, stage = 431, 8, "limits"  # 8: RESOURCE_EXHAUSTED


class NoRoute(ProxyError):
    """The name bound to nothing (Neg, Fail, Empty) or a naming error (docs/dtab.md §13.4: 502)."""

    status, grpc_status, stage = 502, 12, "bind"  # 12: UNIMPLEMENTED
    retryable = True


class ConnectFailed(ProxyError):
    """No connection to the endpoint could be made (refused, unreachable, timed out):
    raised by the upstream connectors, from the OSError or timeout they met."""

    stage = "connect"
    retryable = True
    kind = "connect"


class UpstreamFailed(ProxyError):
    """The upstream connection broke or answered something unusable after the request left."""

    stage = "upstream"
    kind = "reset"


class WriteFailed(UpstreamFailed):
    """The upstream connection broke while the request was still being written."""

    kind = "write"


class BadResponse(UpstreamFailed):
    """The upstream's response could not be parsed (an HTTP/1.1 framing error)."""

    kind = "framing"


class Timeout(ProxyError):
    """A deadline passed (docs/dtab.md §13.4: 503)."""

    status, grpc_status, stage = 503, 4, "timeout"  # 4: DEADLINE_EXCEEDED
    kind = "timeout"


class StreamIdle(Timeout):
    """No byte moved either way for `limits.streamIdleTimeoutMs`: 408 while the client
    had not finished its request (it is the slow side), 504 while the upstream had not
    answered; once the response started, the stream is cut instead."""

    status = 504

    def __init__(self, message: str, *, client_slow: bool = False) -> None:
        super().__init__(message)
        if client_slow:
            self.status = 408  # type: ignore[misc]


class Overloaded(ProxyError):
    status, grpc_status, stage = 503, 14, "overload"
