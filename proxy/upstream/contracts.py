"""The seams between a downstream request, an attempt and an upstream connection.

A downstream request (an HTTP/1.1 connection or an HTTP/2 stream) is an `Owner`; the
upstream side hands it a `Handle`. The `Attempt` (proxy.upstream.attempt) is both: the
owner's handle and the handle's owner. The wire's upstream connections implement
`Handle` for HTTP/1.1 and HTTP/2 alike, so the downstream never knows which protocol,
which connection or how many tries are behind its handle. An `Opener` starts one
exchange on one endpoint; the listener picks one per client protocol.

Events flow as `codec.h1` events whatever the protocol: `ResponseHead` (1xx included;
version b"2" from an HTTP/2 upstream), `Body`, `EndOfMessage` (carrying trailers).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, Protocol

from ..errors import ProxyError

if TYPE_CHECKING:
    from .endpoint import Endpoint

#: How a request body is framed on the way up (`Opener`'s `body_mode`).
BODY_NONE: Final = 0  # no body: send_end follows at once
BODY_LENGTH: Final = 1  # a content-length field is among the headers
BODY_CHUNKED: Final = 2  # length unknown: chunked on HTTP/1.1, DATA frames on HTTP/2

#: Write-buffer water marks: above HIGH the other side stops reading until below LOW.
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024


class Owner(Protocol):
    """What the upstream side calls on the downstream request."""

    def on_upstream_event(self, ev: Any) -> None: ...  # ResponseHead, Body, EndOfMessage

    def upstream_failed(self, exc: ProxyError) -> None: ...  # `exc.retryable`: nothing reached the peer

    def flush_writes(self) -> None: ...  # one upstream read's events are delivered: write them

    def pause_client_reads(self) -> None: ...  # the upstream cannot take more request body yet

    def resume_client_reads(self) -> None: ...


class Handle(Protocol):
    """What the downstream request calls on its exchange upstream."""

    def send_body(self, data: bytes) -> None: ...  # request body bytes (de-chunked)

    def send_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None: ...

    def pause_reading(self) -> None: ...  # the downstream's write buffer is full

    def resume_reading(self) -> None: ...

    def cancel(self) -> None: ...  # abandon the exchange (the connection may close)

    def discard(self, complete: bool) -> None:
        """Drop the rest of the response: the exchange is over for its owner. With
        `complete` (the whole request was sent) the connection may finish reading the
        response and be reused; otherwise it is closed or the stream reset."""

    def start_tunnel(self, down: Any) -> Any: ...  # after a 101: raw bytes both ways

    def tunnel_write(self, data: bytes) -> None: ...

    def tunnel_eof(self) -> None: ...


class Opener(Protocol):
    """Start one exchange with `endpoint` and return its handle at once (failures are
    reported later through `owner.upstream_failed`, possibly before this returns).
    `fresh`: do not reuse a pooled connection (a replay after a stale one)."""

    def __call__(
        self,
        endpoint: Endpoint,
        owner: Owner,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body_mode: int,
        loop: asyncio.AbstractEventLoop,
        fresh: bool = False,
    ) -> Handle: ...


class Sink:
    """The owner of a response nobody wants any more (given up for a retry): its events
    are dropped, so the connection can finish the exchange and go back to its pool."""

    __slots__ = ()

    def on_upstream_event(self, ev: Any) -> None:
        return None

    def upstream_failed(self, exc: ProxyError) -> None:
        return None

    def flush_writes(self) -> None:
        return None

    def pause_client_reads(self) -> None:
        return None

    def resume_client_reads(self) -> None:
        return None


SINK: Final = Sink()
