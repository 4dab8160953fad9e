"""Namers that do I/O (files, the Kubernetes API) and the live address set they
publish, `EndpointSet`, which the inet namer and the balancers share.

`proxy.discovery.fs` holds the `io.l5d.fs` namer; `k8s` the `io.l5d.k8s` namer, over
`k8s_api` (the API client and the list-then-watch loop), with `k8s_transform` (the
daemonset/localnode transformers), `k8s_routes` (routing resources from the API),
`k8s_dtab` (the DTab store) and `k8s_router` (what one router takes from the API).
None is imported here, so a user of `EndpointSet` does not pull in asyncio-facing
code. Only `proxy.wire` touches transports: discovery hands plain objects to the router
and the balancers.
"""

from .endpoints import BOUND, FAILED, NEG, PENDING, Addr, EndpointSet

__all__ = ["BOUND", "FAILED", "NEG", "PENDING", "Addr", "EndpointSet"]
