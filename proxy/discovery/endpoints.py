"""`EndpointSet`: the live address set a namer publishes and a balancer reads.

A bound name (`dtab.Bound`) carries one of these as its `addr`, and the same object
lives as long as the name does, so a cached bound tree always sees the current
addresses: endpoint churn never invalidates a binding. An update replaces one tuple
reference, so a reader on the event loop sees either the old set or the new one,
never half of each. No I/O and no asyncio here; callbacks run synchronously in
`update`, on whatever thread the namer calls it from (namers call it on the loop).

An address may carry metadata (`meta`, e.g. `{"nodeName": "node-a"}` from the
Kubernetes namer), which the transformers read to place an endpoint on a node. It is
swapped with `addrs` in the same update; the data path never reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

log = logging.getLogger(__name__)

Addr = tuple[str, int]
AddrMeta = Mapping[Addr, Mapping[str, str]]
Callback = Callable[["EndpointSet"], None]

# The states of an address set (docs/dtab.md §12.5's addr types).
BOUND: Final = "bound"  # known, possibly empty (a service that exists with no endpoints)
NEG: Final = "neg"  # the name does not exist (any more)
PENDING: Final = "pending"  # not known yet
FAILED: Final = "failed"  # the namer cannot tell; `cause` says why


class EndpointSet:
    """A changing set of `(host, port)` endpoints with a state and a version.

    `addrs` is an immutable tuple, replaced whole on change; `meta` maps an address to
    its metadata (only addresses that have any); `version` increases by one for every
    change a subscriber is told about."""

    __slots__ = ("addrs", "cause", "meta", "state", "version", "_subscribers")

    def __init__(self, addrs: Iterable[Addr] | None = None, state: str | None = None,
                 meta: AddrMeta | None = None) -> None:  # fmt: skip
        self.addrs: tuple[Addr, ...] = _dedupe(addrs) if addrs is not None else ()
        self.meta: AddrMeta = _EMPTY_META if meta is None else meta
        self.state: str = state or (BOUND if addrs is not None else PENDING)
        self.cause: str | None = None
        self.version = 0
        self._subscribers: tuple[Callback, ...] = ()  # a tuple: notify iterates without copying

    def __repr__(self) -> str:
        return f"<EndpointSet {self.state} v{self.version} {self.addrs!r}>"

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call `callback(self)` after every change; returns the unsubscribe function."""
        self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            subs = list(self._subscribers)
            if callback in subs:
                subs.remove(callback)
                self._subscribers = tuple(subs)

        return unsubscribe

    def update(self, addrs: Iterable[Addr], meta: AddrMeta | None = None) -> bool:
        """Bound to `addrs` (order kept, duplicates dropped), with `meta` per address.
        Returns whether anything changed; an identical update notifies no one."""
        new = _dedupe(addrs)
        new_meta = meta if meta else _EMPTY_META
        if self.state == BOUND and new == self.addrs and new_meta == self.meta:
            return False
        self.meta = new_meta  # read only by subscribers (transformers), after the swap below
        self.addrs = new  # the one reference swap readers see
        self.state = BOUND
        self.cause = None
        self._changed()
        return True

    def set_neg(self) -> bool:
        """The name no longer exists."""
        return self._set_state(NEG, None)

    def set_pending(self) -> bool:
        return self._set_state(PENDING, None)

    def set_failed(self, cause: str) -> bool:
        """The namer cannot say; the addresses are dropped, so nothing is sent to a set
        that may be stale."""
        return self._set_state(FAILED, cause)

    def _set_state(self, state: str, cause: str | None) -> bool:
        if self.state == state and self.cause == cause:
            return False
        self.addrs = ()
        self.meta = _EMPTY_META
        self.state = state
        self.cause = cause
        self._changed()
        return True

    def _changed(self) -> None:
        self.version += 1
        for callback in self._subscribers:
            try:
                callback(self)
            except Exception:  # one broken subscriber must not starve the others
                log.error("endpoint set subscriber %r failed", callback, exc_info=True)

    def to_json(self) -> dict[str, Any]:
        """The delegator's addr shape (docs/dtab.md §12.5)."""
        if self.state == BOUND:
            meta = self.meta
            return {
                "type": "bound",
                "addrs": [
                    {"ip": host, "port": port, "meta": dict(meta.get((host, port), _EMPTY))}
                    for host, port in self.addrs
                ],
                "meta": {},
            }
        if self.state == FAILED:
            return {"type": "failed", "cause": self.cause or ""}
        return {"type": self.state}


_EMPTY: Mapping[str, str] = {}
_EMPTY_META: AddrMeta = {}


def _dedupe(addrs: Iterable[Addr]) -> tuple[Addr, ...]:
    return tuple(dict.fromkeys((host, port) for host, port in addrs))
