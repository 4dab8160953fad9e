"""The routing steps every request takes, whatever its protocol: identify (or match
rules), bind through the router's cached routes, pick a client and an endpoint, add
Linkerd's headers, and account for the request when it ends.

`RoutedRequest` is a slotted base class: an HTTP/1.1 connection (one request at a time)
and an HTTP/2 stream inherit it, so the per-request state lives on the object that
already exists and routing allocates nothing of its own. No I/O here.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Final

from ..errors import NoRoute
from ..route.l5d import decode_trace, format_deadline, new_root_trace, parse_deadline
from ..telemetry import observe
from ..telemetry.metrics import record as record_stats
from ..telemetry.metrics import record_pair
from ..telemetry.tracing import FIELDS as TRACE_FIELDS

_VIA: Final = (b"via", b"1.1 dtabproxy")

# The request fields the proxy reads or rewrites whatever the protocol: the l5d- ones
# (spec §10, §13) and the W3C/B3 trace context (telemetry/tracing.py); each wire adds
# its own protocol's fields to this table.
H_DTAB: Final = 1
H_CTX_DTAB: Final = 2
H_DEADLINE: Final = 3
H_TRACE: Final = 4
H_DROP: Final = 5  # never forwarded
H_TRACE_EXT: Final = 20  # traceparent, b3, x-b3-*, l5d-sample: collected for observe.propagate
L5D_REQUEST_FIELDS: Final[dict[bytes, int]] = {
    b"l5d-dtab": H_DTAB,
    b"l5d-ctx-dtab": H_CTX_DTAB,
    b"l5d-ctx-deadline": H_DEADLINE,
    b"l5d-ctx-trace": H_TRACE,
    **dict.fromkeys(TRACE_FIELDS, H_TRACE_EXT),  # re-written by observe.propagate
    # Informational headers an earlier hop added describe that hop, not this one.
    b"l5d-dst-service": H_DROP,
    b"l5d-dst-client": H_DROP,
    b"l5d-dst-residual": H_DROP,
    b"l5d-reqid": H_DROP,
}


class RoutedRequest:
    """Per-request routing and telemetry state, shared by h1 connections and h2 streams."""

    __slots__ = (
        "_router", "_route", "_svc", "_pair", "_t0", "_status", "_fclass", "_bytes_in", "_bytes_out",
        "_bound", "_ep_key", "_rec", "_ferr",
    )

    def _init_routing(self, router: Any) -> None:
        self._router = router
        self._route: Any = None
        self._svc: Any = None  # the route's service counters while a request is counted
        self._pair: Any = None  # its (service, endpoint) counters once an endpoint is picked
        self._t0 = 0.0
        self._status = 0
        self._fclass: str | None = None
        self._bytes_in = 0
        self._bytes_out = 0
        self._bound: Any = None
        self._ep_key: Any = None
        self._rec: Any = None  # the request's fields for the access log and its span (observe.RECORD)
        self._ferr: Any = None  # the ProxyError the proxy answered this request with

    def _route_request(
        self,
        server: Any,
        view: Any,
        headers: list[tuple[bytes, bytes]],
        local: Any,
        local_key: bytes,
        out: list[tuple[bytes, bytes]],
        trace_val: bytes | None,
        deadline_vals: list[bytes] | None,
        peer_ip: str,
        authority: bytes | None,
        scheme: bytes = b"http",
        via: tuple[bytes, bytes] = _VIA,
        trace_ext: list[tuple[bytes, bytes]] | None = None,
    ) -> tuple[Any, Any, Any]:
        """Route one request: returns (endpoint, matched rule actions or None, identified
        name) and appends the headers the upstream gets from the proxy to `out`. Raises a
        ProxyError (400 unidentifiable, 502 no route or no hosts). `trace_ext`: the
        request's W3C/B3/l5d-sample fields, None when it had none."""
        router = self._router
        # -- access log / tracing (telemetry/observe.py): one attribute test when off --
        obs = router.obs
        if obs is not None:  # the fields at hand, as observe.RECORD lists them
            self._rec = (perf_counter(), peer_ip, view.method, view.target, view.version, headers)
        # --
        acts = None
        if router.rules is None:  # no match rules: the plain path, one attribute check
            ident = router.identifier.identify(view)
            route = router.route(ident.path, local, local_key)
            picked = route.pick()
        else:  # match rules (proxy/route/rules.py): rules overlay, sticky pick, rewrites
            sel = router.select(view, headers, local, local_key)
            ident, route, acts = sel.ident, sel.route, sel.actions
            picked = route.pick(sel.u)
            if acts is not None:
                out[:] = acts.edit_request(out)  # authority and header edits, before l5d-*
        self._route = route
        svc = route.stats
        if svc is not None:
            self._svc = svc
            self._t0 = perf_counter()  # loop.time() is too coarse under uvloop (1 ms)
        if picked is None:
            raise router.no_route(route)
        client, bound, residual_hdr = picked
        endpoint = client.pick()
        if endpoint is None:
            raise NoRoute(
                f"No hosts are available for {client.id.show()}, "
                f"Dtab.base=[{router.base.dtab.show()}], Dtab.local=[{route.local.show()}]"
            )
        if svc is not None:
            cs = route.cstats.get(client)
            if cs is not None:
                es = cs.endpoint(endpoint.host, endpoint.port, endpoint.addr_key)
                pair = es.pairs.get(svc)
                if pair is None:
                    pair = router.stats.pair(svc, es)
                pair.started += 1
                self._pair = pair
            self._bound = bound
            self._ep_key = endpoint.addr_key

        # Linkerd's informational and context headers (spec §13.1, §13.3).
        if trace_ext is None and (obs is None or obs.plain_trace):
            tc = decode_trace(trace_val) if trace_val is not None else None
            if tc is not None:
                tc = tc.child()
                reqid, trace = tc.reqid(), tc.encode()
            else:
                reqid, trace = new_root_trace()
        else:  # W3C/B3 context, sampling, spans (telemetry/observe.py, telemetry/tracing.py)
            reqid, trace = observe.propagate(self, obs, trace_val, trace_ext, out)
        out.append((b"l5d-dst-service", route.service_hdr))
        out.append((b"l5d-dst-client", client.id_show))
        if residual_hdr is not None:
            out.append((b"l5d-dst-residual", residual_hdr))
        out.append((b"l5d-reqid", reqid))
        out.append((b"l5d-ctx-trace", trace))
        if route.local_hdr:
            out.append((b"l5d-ctx-dtab", route.local_hdr))
        if deadline_vals is not None:
            dl = parse_deadline(deadline_vals)
            if dl is not None:
                out.append((b"l5d-ctx-deadline", format_deadline(dl)))
        if server.add_via:
            out.append(via)  # RFC 9110 §7.6.3: the protocol version this hop received
        if server.add_forwarded:  # RFC 7239: one more element per hop, as its own field
            node = b'"[%s]"' % peer_ip.encode() if ":" in peer_ip else peer_ip.encode()
            value = b"for=%s;proto=%s" % (node, scheme)
            if authority:
                value += b';host="' + authority + b'"'
            out.append((b"forwarded", value))
        endpoint.outstanding += 1
        return endpoint, acts, ident

    def _account(self) -> None:
        """Telemetry for the request that just ended, exactly once: plain increments on
        the counters bound to its route and endpoint, and a sampled decision."""
        # -- access log, span, proxy-error warning (telemetry/observe.py) --
        rec = self._rec
        if rec is not None or self._ferr is not None:
            observe.end(self, rec)
            self._rec = self._ferr = None
        # --
        svc = self._svc
        if svc is not None:
            self._svc = None
            now = perf_counter()
            latency = now - self._t0
            pair = self._pair
            if pair is not None:  # reached an endpoint: one update, on the pair
                self._pair = None
                record_pair(pair, self._status, latency, self._bytes_in, self._bytes_out, self._fclass)
            else:  # failed before an endpoint was picked (no route, no hosts)
                svc.started += 1
                record_stats(svc, None, self._status, latency, self._bytes_in, self._bytes_out, self._fclass)
            rs = self._router.stats
            if rs is not None:
                d = rs.decisions
                if now >= d.next_at:  # at most max_per_second decisions: one comparison otherwise
                    d.offer(self._router, self._route, self._bound, self._ep_key, self._status, latency, now)
        elif self._fclass is not None:  # failed before it had a service (override, identify)
            rs = self._router.stats
            if rs is not None:
                rs.record_unrouted(self._status, self._fclass)
        self._fclass = None
        self._bytes_in = self._bytes_out = 0
        self._bound = self._ep_key = None
