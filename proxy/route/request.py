"""One request's way from its fields to an attempt, the same for HTTP/1.1 and HTTP/2.

`RoutedRequest` is a slotted base class: an HTTP/1.1 connection (one request at a time)
and an HTTP/2 stream inherit it, so the per-request state lives on the object that
already exists. Its `_prepare` is the one request-preparation step of both protocols:

1. read the fields the proxy consumes (`l5d-*`, hop-by-hop, `grpc-timeout`), which each
   protocol has already set apart from the fields it forwards (`extras`);
2. check a per-request override against the listener's trust policy (`clearContext`
   strips every `l5d-ctx-*` field and honours only a trusted or signed `l5d-dtab`);
3. identify, match rules, bind (cached per name) and pick a client;
4. add Linkerd's headers (`l5d-dst-*`, `l5d-reqid`, `l5d-ctx-trace`, `l5d-ctx-dtab`,
   `l5d-ctx-deadline` with the time left), `Via` and `Forwarded` when configured;
5. work out the request's deadline: the earliest of an inbound `l5d-ctx-deadline`,
   `grpc-timeout` and the service's `totalTimeoutMs` (an expired one is refused here);
6. rewrite the target (identifier, rules) and return an `Attempt`, not yet started, for
   the protocol to finish (HTTP/1.1 adds its Upgrade fields, HTTP/2 its `grpc-timeout`).

`_account` records the request exactly once when it ends. No I/O here.
"""

from __future__ import annotations

import time
from time import monotonic as _monotonic
from time import perf_counter as _perf_counter
from typing import TYPE_CHECKING, Any, Final

from dtab import Dtab

from ..codec import grpc
from ..errors import NoRoute, Timeout
from ..telemetry import observe
from ..telemetry.metrics import ClientStats, Pair, Stats, count_deadline, observe_budget, record_pair
from ..telemetry.metrics import record as record_stats
from ..telemetry.tracing import FIELDS as TRACE_FIELDS
from ..upstream.attempt import Attempt
from .l5d import Deadline, decode_trace, format_deadline, new_root_trace, parse_deadline
from .router import Route, Router

if TYPE_CHECKING:
    import asyncio

    from .settings import ListenerSettings

#: The clocks, Final: compiled, a call reads them from C statics, where an imported name is
#: looked up in the module's dict at every call (~70 instructions; a few calls a request).
monotonic: Final = _monotonic
perf_counter: Final = _perf_counter

# What the proxy does with a request field it does not simply forward.
F_DTAB: Final = 1  # l5d-dtab: the caller's override
F_CTX_DTAB: Final = 2  # l5d-ctx-dtab: the override context of earlier hops
F_DEADLINE: Final = 3  # l5d-ctx-deadline
F_TRACE: Final = 4  # l5d-ctx-trace
F_DROP: Final = 5  # never forwarded: hop-by-hop, or describing an earlier hop
F_CONNECTION: Final = 6  # Connection: its tokens name more hop-by-hop fields
F_UPGRADE: Final = 7  # Upgrade: forwarded only with a real upgrade (HTTP/1.1)
F_GRPC_TIMEOUT: Final = 8  # grpc-timeout: a deadline, re-written with the time left
F_TRACE_EXT: Final = 20  # traceparent, b3, x-b3-*, l5d-sample: re-written by observe.propagate

#: The request fields every protocol consumes or re-writes (docs/dtab.md §10, §13; RFC 9110
#: §7.6.1's hop-by-hop fields; gRPC's deadline). HTTP/2 never carries the hop-by-hop ones
#: (its codec refuses them), so one table serves both.
REQUEST_FIELDS: Final[dict[bytes, int]] = {
    b"l5d-dtab": F_DTAB,
    b"l5d-ctx-dtab": F_CTX_DTAB,
    b"l5d-ctx-deadline": F_DEADLINE,
    b"l5d-ctx-trace": F_TRACE,
    **dict.fromkeys(TRACE_FIELDS, F_TRACE_EXT),  # W3C and B3 context, l5d-sample (telemetry/tracing.py)
    # Informational headers an earlier hop added describe that hop, not this one.
    b"l5d-dst-service": F_DROP,
    b"l5d-dst-client": F_DROP,
    b"l5d-dst-residual": F_DROP,
    b"l5d-reqid": F_DROP,
    b"connection": F_CONNECTION,
    b"keep-alive": F_DROP,
    b"proxy-connection": F_DROP,
    b"te": F_DROP,
    b"trailer": F_DROP,
    b"transfer-encoding": F_DROP,
    b"upgrade": F_UPGRADE,
    b"grpc-timeout": F_GRPC_TIMEOUT,
}
#: Why a deadline or timeout ended a request: the `reason` label of
#: `dtabproxy_service_client_deadline_exceeded_total` (the config key or field that set it).
DL_ROUTER: Final = "timeoutMs"  # the router's, until the response head
DL_TOTAL: Final = "totalTimeoutMs"  # service.totalTimeoutMs
DL_CTX: Final = "l5d-ctx-deadline"  # an inbound deadline
DL_GRPC: Final = "grpc-timeout"  # a gRPC call's deadline
DL_IDLE: Final = "streamIdleTimeoutMs"  # limits.streamIdleTimeoutMs
DL_ATTEMPT: Final = "requestAttemptTimeoutMs"  # client.requestAttemptTimeoutMs, with no retry left

#: Connection tokens that name no field to drop.
_CONN_KEEP: Final = frozenset((b"close", b"keep-alive", b"upgrade"))
_CONN_UPGRADE: Final = (b"connection", b"upgrade")
_L: Final = 108  # b"l"[0]

_DROP_SETS: dict[bytes, frozenset[bytes]] = {}


def drop_set(sig_header: bytes) -> frozenset[bytes]:
    """The request fields never forwarded as they came: the table above, and the
    override signature field (its name is configured)."""
    drop = _DROP_SETS.get(sig_header)
    if drop is None:
        drop = _DROP_SETS[sig_header] = frozenset(REQUEST_FIELDS) | {sig_header}
    return drop


class RoutedRequest:
    """Per-request routing and telemetry state, shared by h1 connections and h2 streams."""

    __slots__ = (
        "_router", "_route", "_svc", "_pair", "_t0", "_status", "_fclass", "_bytes_in", "_bytes_out",
        "_bound", "_ep_key", "_upgrade", "_grpc_timeout_ns", "_listener", "_counted", "_up", "_deadline_at",
        "_idle_mark", "_idle_since", "_rec", "_ferr", "_dl_why",
    )  # fmt: skip

    def _init_routing(self, router: Any, listener: Any) -> None:
        self._router = router
        self._listener = listener
        self._counted = False  # holds one of the listener's maxConcurrentRequests slots
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
        self._upgrade: bytes | None = None  # the Upgrade field of the request being prepared
        self._up: Any = None  # the request's attempt (proxy/upstream/attempt.py)
        self._deadline_at = 0.0  # the request's deadline, monotonic (0.0: none); see _deadline_fields
        self._dl_why = DL_TOTAL  # which of them it is (set with every deadline; read only then)
        self._idle_mark = -1  # what the stream idle sweep saw move last (bytes both ways)
        self._idle_since = 0.0  # since when it saw nothing move (0.0: a new request)
        self._rec: Any = None  # the request's fields for the access log and its span (observe.RECORD)
        self._ferr: Any = None  # the ProxyError the proxy answered this request with
        self._grpc_timeout_ns: int | None = None  # its grpc-timeout, when it had one

    def _prepare(
        self,
        settings: ListenerSettings,
        loop: asyncio.AbstractEventLoop,
        view: Any,
        headers: list[tuple[bytes, bytes]],
        extras: list[tuple[bytes, bytes]] | None,
        out: list[tuple[bytes, bytes]],
        peer_ip: str,
        authority: bytes | None,
        method: bytes,
        target: bytes,
        version: bytes,
        body_mode: int,
        scheme: bytes,
        via: tuple[bytes, bytes],
        upgrade: bool = False,
    ) -> Attempt:
        """Route one request (see the module docstring). `headers` are all its fields (for
        rules), `out` the ones to forward (extras already left out), `extras` the fields
        the proxy consumes, or None when there are none. Raises a ProxyError (400
        unidentifiable, 403/431 override refused, 502 no route, 503 deadline passed).
        `upgrade`: the request asks for a protocol upgrade (HTTP/1.1), so its Upgrade
        field goes on. Returns the attempt, started."""
        ctx_vals: list[bytes] | None = None
        user_vals: list[bytes] | None = None
        deadline_vals: list[bytes] | None = None
        trace_val: bytes | None = None
        trace_ext: list[tuple[bytes, bytes]] | None = None
        grpc_timeout: bytes | None = None
        sig: bytes | None = None
        self._upgrade = None
        self._idle_since = 0.0
        # Typed locals: compiled, their attributes are read from the object's struct, not
        # looked up by name as an untyped slot's would be.
        router: Router = self._router
        # -- access log / tracing (telemetry/observe.py): one attribute test when off --
        obs: observe.RouterObs | None = router.obs  # typed: its fields read from its struct
        t0 = 0.0
        if obs is not None:  # the fields at hand, as observe.RECORD lists them
            t0 = perf_counter()
            self._rec = (t0, peer_ip, method, target, version, headers)
        # --
        if extras is not None:
            clear = settings.clear_context
            sig_header = settings.sig_header
            conn_tokens: bytes | None = None
            fields = REQUEST_FIELDS
            for name, value in extras:
                kind = fields.get(name)
                if kind is None:
                    if name == sig_header:
                        sig = value
                    continue  # another l5d- field: forwarded (or cleared) by the protocol
                if clear and name[0] == _L and kind != F_DTAB:
                    continue  # docs/dtab.md §13.5: no l5d-ctx- field from an edge's caller is read
                if kind == F_DTAB:
                    if user_vals is None:
                        user_vals = []
                    user_vals.append(value)
                elif kind == F_CTX_DTAB:
                    if ctx_vals is None:
                        ctx_vals = []
                    ctx_vals.append(value)
                elif kind == F_DEADLINE:
                    if deadline_vals is None:
                        deadline_vals = []
                    deadline_vals.append(value)
                elif kind == F_TRACE:
                    trace_val = value
                elif kind == F_CONNECTION:
                    conn_tokens = value if conn_tokens is None else conn_tokens + b"," + value
                elif kind == F_UPGRADE:
                    self._upgrade = value
                elif kind == F_GRPC_TIMEOUT:
                    grpc_timeout = value
                elif kind == F_TRACE_EXT:  # W3C/B3 context (telemetry/tracing.py)
                    if trace_ext is None:
                        trace_ext = []
                    trace_ext.append((name, value))
            if conn_tokens is not None:  # names listed in Connection are hop-by-hop too
                listed = {t.strip().lower() for t in conn_tokens.split(b",")}
                listed -= _CONN_KEEP
                if listed:
                    out[:] = [h for h in out if h[0] not in listed]
            if (ctx_vals or user_vals) and sig is None and settings.policy.hmac_header and sig_header[:4] != b"l5d-":
                sig = view.headers(sig_header)  # a signature field not named l5d-*: read, never forwarded
                if sig is not None:
                    out[:] = [h for h in out if h[0] != sig_header]

        # Local dtab (docs/dtab.md §10): trusted override sources only, within limits.
        if ctx_vals or user_vals:
            local, local_key = settings.check_override(peer_ip, ctx_vals or [], user_vals or [], sig)
        else:
            local, local_key = Dtab.EMPTY, b""

        acts = None
        route: Route
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
        svc: Stats | None = route.stats
        if svc is not None:
            self._svc = svc
            # loop.time() is too coarse under uvloop (1 ms); the record's start, when there is one
            self._t0 = t0 if obs is not None else perf_counter()
        if picked is None:
            raise router.no_route(route)
        client, bound, residual_hdr, policy = picked
        if svc is not None:
            self._bound = bound

        # Linkerd's informational and context headers (docs/dtab.md §13.1, §13.3).
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
        self._grpc_timeout_ns = None
        deadline = 0.0
        if deadline_vals is not None or grpc_timeout is not None or route.total_timeout_s:
            deadline = self._deadline_fields(deadline_vals, grpc_timeout, route.total_timeout_s, out, policy.stats)
        self._deadline_at = deadline
        if settings.add_via:
            out.append(via)  # RFC 9110 §7.6.3: the protocol version this hop received
        if settings.add_forwarded:  # RFC 7239: one more element per hop, as its own field
            node = b'"[%s]"' % peer_ip.encode() if ":" in peer_ip else peer_ip.encode()
            value = b"for=%s;proto=%s" % (node, scheme)
            if authority:
                value += b';host="' + authority + b'"'
            out.append((b"forwarded", value))

        if upgrade and self._upgrade is not None:
            out.append(_CONN_UPGRADE)
            out.append((b"upgrade", self._upgrade))

        if ident.rewritten_target is not None:
            target = ident.rewritten_target
        if acts is not None:
            target = acts.rewrite_target(target)  # a matched rule's URI rewrite
        attempt = Attempt(self, client, policy, settings.open_upstream, loop, method, target, out, body_mode, deadline)  # type: ignore[arg-type]
        self._up = attempt
        try:
            attempt.start()
        except NoRoute:
            self._up = None
            if attempt.endpoint is None:
                raise no_hosts(client, router, route) from None
            raise
        except BaseException:
            self._up = None
            raise
        ep = attempt.endpoint
        if svc is not None and ep is not None and self._svc is svc:  # not failed already
            cs: ClientStats | None = route.cstats.get(client)
            rstats = router.stats
            if cs is not None and rstats is not None:  # bind the (service, endpoint) counters
                es = cs.endpoint(ep.host, ep.port, ep.addr_key)
                pair = es.pairs.get(svc)
                if pair is None:
                    pair = rstats.pair(svc, es)
                pair.started += 1
                self._pair = pair
            self._ep_key = ep.addr_key
        return attempt

    def _deadline_fields(
        self,
        deadline_vals: list[bytes] | None,
        grpc_timeout: bytes | None,
        total_timeout_s: float,
        out: list[tuple[bytes, bytes]],
        stats: Any = None,
    ) -> float:
        """The request's deadline (monotonic seconds; 0.0: none): the earliest of an inbound
        `l5d-ctx-deadline` (the strictest of its values), `grpc-timeout` and the service's
        `totalTimeoutMs`. One already past is refused here, before anything is sent. The
        next hop gets `l5d-ctx-deadline` with the same absolute deadline, and a gRPC call
        its `grpc-timeout` with the time left. `stats`: the (service, client) counters
        (telemetry.metrics.RetryCounters), which hear the time left or the refusal."""
        now = monotonic()
        now_ns = time.time_ns()
        # Candidates in wall-clock nanoseconds (what l5d-ctx-deadline carries), so an
        # inbound deadline goes on exactly as it came when it is the tightest.
        deadline_ns = now_ns + int(total_timeout_s * 1e9) if total_timeout_s else 0
        why = DL_TOTAL
        inbound: Deadline | None = None
        if deadline_vals is not None:
            inbound = parse_deadline(deadline_vals)
            if inbound is not None and (not deadline_ns or inbound.deadline_ns < deadline_ns):
                deadline_ns, why = inbound.deadline_ns, DL_CTX
        if grpc_timeout is not None:
            ns = grpc.parse_timeout(grpc_timeout)
            if ns is not None:
                self._grpc_timeout_ns = ns
                if not deadline_ns or now_ns + ns < deadline_ns:
                    deadline_ns, why = now_ns + ns, DL_GRPC
        if not deadline_ns:
            return 0.0
        self._dl_why = why
        left_ns = deadline_ns - now_ns
        if left_ns <= 0:
            if stats is not None:
                count_deadline(stats, why)
            key = "service.totalTimeoutMs" if why is DL_TOTAL else why
            raise Timeout(f"the request's deadline ({key}) passed before it was sent")
        if stats is not None:
            observe_budget(stats, left_ns / 1e9)
        stamp = max(now_ns, inbound.timestamp_ns) if inbound is not None else now_ns
        out.append((b"l5d-ctx-deadline", format_deadline(Deadline(stamp, deadline_ns))))
        if self._grpc_timeout_ns is not None:
            # The time left of the call's deadline; not the router's timeoutMs, which
            # bounds only the wait for the response head, so a stream may outlive it.
            out.append((grpc.TIMEOUT, grpc.format_timeout(left_ns)))
        return now + left_ns / 1e9

    def _count_deadline(self, reason: str | None) -> None:
        """The wire answers (or cuts) this request because a deadline or timeout passed:
        count it by `reason` (None: the request's own deadline, whichever it was) on its
        (service, client) counters. Called before the attempt is let go; failure path only."""
        policy = getattr(self._up, "policy", None)  # the attempt's (not a tunnel's handle)
        stats = policy.stats if policy is not None else None
        if stats is not None:
            count_deadline(stats, reason or self._dl_why)

    def _is_idle(self, now: float, limit: float) -> bool:
        """Called by the listener's sweep (once a second) while the request is in flight:
        True when no byte moved either way for `limit` seconds (limits.streamIdleTimeoutMs)."""
        mark = self._bytes_in + self._bytes_out + (1 << 62 if self._status else 0)
        if mark != self._idle_mark or not self._idle_since:
            self._idle_mark = mark
            self._idle_since = now
            return False
        return now - self._idle_since >= limit

    def _take_slot(self, limit: int | None) -> bool:
        """Count the request against `servers[].maxConcurrentRequests`; False when full."""
        if limit is None:
            return True
        lst = self._listener
        if lst.in_flight >= limit:
            return False
        lst.in_flight += 1
        self._counted = True
        return True

    def _release_slot(self) -> None:
        if self._counted:
            self._counted = False
            self._listener.in_flight -= 1

    def _account(self) -> None:
        """Telemetry for the request that just ended, exactly once: plain increments on
        the counters bound to its route and endpoint, and a sampled decision."""
        if self._counted:
            self._release_slot()
        now = perf_counter()
        # -- access log, span, proxy-error warning (telemetry/observe.py) --
        rec = self._rec
        if rec is not None or self._ferr is not None:
            if self._ferr is None and len(rec) == observe.PLAIN_RECORD:  # the access log only
                route: Route | None = self._route
                router: Router = self._router
                observe.log_request(router.obs, rec, self._status, self._bytes_out,
                                    route.service_hdr if route is not None else b"-", self._bound, self._fclass, now)  # fmt: skip
            else:
                observe.end(self, rec)
            self._rec = self._ferr = None
        # --
        svc: Stats | None = self._svc
        if svc is not None:
            self._svc = None
            latency = now - self._t0
            pair: Pair | None = self._pair
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


def no_hosts(client: Any, router: Any, route: Any) -> NoRoute:
    return NoRoute(
        f"No hosts are available for {client.id.show()}, "
        f"Dtab.base=[{router.base.dtab.show()}], Dtab.local=[{route.local.show()}]"
    )
