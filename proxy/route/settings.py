"""What a listener's connections read per request, as one immutable snapshot.

`ListenerSettings` is built by the runtime when a listener starts and on every reload
(or dtab change) that keeps it; the listener swaps one reference, so a request reads
`listener.settings` once and sees one consistent configuration: the router snapshot,
the limits, the override policy and the upstream opener. `Listener` is the typed view
the wire has of the runtime's listener (the connections it tracks, the loop).
No I/O here.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, Protocol

from dtab import Dtab

if TYPE_CHECKING:
    from config import Limits, ServerConfig

    from ..upstream.contracts import Opener
    from .router import Router
    from .trust import OverridePolicy

#: Parsed override results cached per (peer, header values): the same staging header
#: arrives on every request of a test session, and parsing costs more than a dict hit.
OVERRIDE_CACHE_SIZE: Final = 4096
#: Request bodies up to this size are read and dropped after an early error answer so
#: the connection stays usable; larger ones close the connection instead.
DISCARD_LIMIT: Final = 64 * 1024


class ListenerSettings:
    """One listener's per-request configuration (immutable but for its override cache,
    which belongs to its policy and is dropped with it, and its pool of request readers)."""

    __slots__ = (
        "router", "limits", "config", "timeout", "clear_context", "policy", "sig_header", "sig_strip", "add_via",
        "add_forwarded", "discard_limit", "open_upstream", "max_concurrent", "_override_cache", "readers",
    )  # fmt: skip

    def __init__(
        self,
        router: Router,
        limits: Limits,
        config: ServerConfig,
        timeout: float | None,
        policy: OverridePolicy,
        open_upstream: Opener,
        *,
        add_via: bool = False,
        add_forwarded: bool = False,
    ) -> None:
        self.router = router
        self.limits = limits
        self.config = config
        self.timeout = timeout  # the router's timeoutMs in seconds: until the response head
        self.clear_context = config.clear_context
        self.policy = policy
        self.sig_header = policy.hmac_header or b"\x00"  # a name no header has
        # The signature field's name when no l5d- rule keeps it from the next hop: the
        # wire drops it from every request (it is the proxy's credential).
        self.sig_strip = policy.hmac_header if policy.hmac_header and policy.hmac_header[:4] != b"l5d-" else None
        self.add_via = add_via
        self.add_forwarded = add_forwarded
        self.discard_limit = DISCARD_LIMIT
        self.open_upstream = open_upstream
        self.max_concurrent = config.max_concurrent_requests  # servers[].maxConcurrentRequests
        self._override_cache: dict[tuple[Any, ...], tuple[Dtab, bytes]] = {}  # answers of one policy
        # HTTP/1.1 request readers between messages, made under these limits and lent to
        # the connection that reads next (wire/h1.py): an idle connection holds none.
        self.readers: list[Any] = []

    def with_router(self, router: Router) -> ListenerSettings:
        """The same settings over another router snapshot (a dtab change, a reload)."""
        new = ListenerSettings(
            router, self.limits, self.config, self.timeout, self.policy, self.open_upstream,
            add_via=self.add_via, add_forwarded=self.add_forwarded,
        )  # fmt: skip
        new._override_cache = self._override_cache  # the same policy's answers
        new.readers = self.readers  # and the same limits
        return new

    def check_override(
        self, peer_ip: str, ctx: list[bytes], user: list[bytes], sig: bytes | None
    ) -> tuple[Dtab, bytes]:
        """The local dtab a request may use and its printed form (cached per peer and
        values: the policy's answer depends on nothing else)."""
        key = (peer_ip, *ctx, b"\x00", *user, sig)
        hit = self._override_cache.get(key)
        if hit is not None:
            return hit
        local = self.policy.check(peer_ip, ctx, user, sig)
        result = (local, local.show().encode("latin-1"))
        cache = self._override_cache
        if len(cache) >= OVERRIDE_CACHE_SIZE:
            cache.clear()
        cache[key] = result
        return result


class Listener(Protocol):
    """The runtime's listener as a connection sees it."""

    settings: ListenerSettings
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    in_flight: int  # requests being served by this listener's connections

    def connection_closed(self, conn: Any) -> None: ...
