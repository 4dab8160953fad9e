"""Namers that do I/O (files now; Kubernetes endpoints and DNS later) and the live
address set they publish, `EndpointSet`, which the inet namer and the balancers share.

`proxy.discovery.fs` holds the `io.l5d.fs` namer; it is not imported here, so a user
of `EndpointSet` does not pull in asyncio-facing code. Only `proxy.wire` touches
transports: discovery hands plain objects to the router and the balancers.
"""

from .endpoints import BOUND, FAILED, NEG, PENDING, Addr, EndpointSet

__all__ = ["BOUND", "FAILED", "NEG", "PENDING", "Addr", "EndpointSet"]
