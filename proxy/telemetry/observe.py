"""What the data plane's per-request hooks call for access logs, trace propagation and
spans, and proxy-error warnings; and the runtime object that owns those outputs.

`Router.obs` is a `RouterObs` when the router has an access log, span exporters are
configured, or its `tracePropagator` writes a format on every request; otherwise it
is None and the hooks in `proxy/wire/routing.py` cost one attribute test:

* `RouterObs.begin(view, headers, peer_ip)`, first in `_route_request`: a small list of
  fields the request already has (references, nothing parsed or copied);
* `propagate(req, obs, l5d_trace, trace_fields, out)`, where the trace headers are
  written: reads W3C/B3/l5d context, decides sampling, writes the child context;
* `end(req, rec)`, first in `_account`: the access log's line written into its buffer,
  one span onto each exporter's queue, and a 5xx the proxy answered itself into the
  rate-limited error log.

`Observability` (one per process, kept by the runtime) builds the access logs and
exporters from the config, keeps those whose configuration did not change across a
reload, and closes them on drain. It renders their counters for the Prometheus scrape.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter, time
from typing import Any, Final

from .accesslog import AccessLog
from .errorlog import ERRORS
from .export import Exporter, make_exporter
from .tracectx import FLAG_SAMPLED
from .tracing import (
    FLAGS,
    HIGH,
    PROPAGATORS,
    SPAN,
    TRACE,
    Span,
    child_context,
    encode_l5d,
    read_fields,
    write_fields,
)

log = logging.getLogger(__name__)

#: The per-request record the wire builds (a tuple of fields it already has, so the
#: request path makes no call for it): the start (a perf_counter() time; the log turns
#: it into wall time with an offset it sets every 100 ms), the peer, method, target, version and
#: header list; `propagate` appends the span of a sampled request.
RECORD = ("start", "peer", "method", "target", "version", "headers", "span")
# The record's fields by position (Final: compiled, each index is a constant, not a lookup).
_T0: Final = 0
_PEER: Final = 1
_METHOD: Final = 2
_TARGET: Final = 3
_VERSION: Final = 4
_HEADERS: Final = 5
_SPAN: Final = 6
PLAIN_RECORD: Final = 6  # a record without a span: (t0, peer, method, target, version, headers)


class RouterObs:
    """One router snapshot's outputs: its access log, the span exporters and the
    sample rate (None: not tracing), and the formats its propagator always writes."""

    __slots__ = ("label", "alog", "exporters", "rate", "always", "plain_trace")

    def __init__(self, label: str, alog: AccessLog | None, exporters: list[Exporter], always: int) -> None:
        self.label = label
        self.alog = alog
        self.exporters = tuple(exporters)
        # One decision per trace, at the highest configured rate: every exporter gets
        # the spans of a sampled trace (a per-exporter decision could not be propagated).
        self.rate: float | None = max((e.sample_rate for e in exporters), default=None)
        self.always = always
        # Nothing to decide or write beyond l5d-ctx-trace: the wire keeps its fast path.
        self.plain_trace = self.rate is None and not always

    def begin(self, view: Any, headers: Any, peer_ip: str) -> tuple[Any, ...]:
        """The record the wire builds inline (for tests and tools)."""
        return (perf_counter(), peer_ip, view.method, view.target, view.version, headers)


def propagate(req: Any, obs: RouterObs | None, l5d_value: bytes | None,
              fields: list[tuple[bytes, bytes]] | None, out: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:  # fmt: skip
    """The trace headers of the upstream request (appended to `out`, W3C/B3 in the
    formats received or always written) and (`l5d-reqid`, `l5d-ctx-trace`); a span is
    started on the request's record when the trace is sampled and the proxy traces."""
    rate = obs.rate if obs is not None else None
    inb = read_fields(fields, l5d_value)
    ctx, parent_id = child_context(inb, rate)
    formats = inb.formats | (obs.always if obs is not None else 0)
    if formats:
        write_fields(ctx, formats, out)
    if rate is not None and ctx[FLAGS] & FLAG_SAMPLED:
        rec = req._rec
        if rec is not None:
            req._rec = (*rec[:_SPAN], Span(ctx[HIGH], ctx[TRACE], ctx[SPAN], parent_id))
    return b"%016x" % ctx[TRACE], encode_l5d(ctx)


def log_request(obs: RouterObs, rec: tuple[Any, ...], status: int, nbytes: int, service: bytes, bound: object,
                fclass: str | None, now: float) -> None:  # fmt: skip
    """The access log's line for a request that ended at `now` (a perf_counter() time),
    typed, so the compiled request path calls it directly: route/request.py `_account`
    does for a request with no span and no proxy error. `AccessLog.add` inline: one call
    into the log's buffer, which writes the line (or drops and counts it)."""
    alog = obs.alog
    if alog is None:
        return
    if bound is None:
        client = b"-"
    elif bound is alog.last_bound:  # the common case: the same client as the last request
        client = alog.last_client
    else:
        client = alog.client_name(bound)
    try:
        alog.add_line(rec, status, nbytes, service, client, now, fclass)
    except (TypeError, ValueError, OverflowError):  # a field the C writer does not take: Python's
        alog.add_py(rec, status, nbytes, service, client, now, fclass)


def end(req: Any, rec: tuple[Any, ...] | None, _clock: Any = perf_counter) -> None:
    """A request ended (called once, from `_account`, while its fields are still set):
    its access log line, its span, the proxy-error warning."""
    if rec is not None:
        obs: RouterObs = req._router.obs
        route = req._route
        log_request(obs, rec, req._status, req._bytes_out, route.service_hdr if route is not None else b"-", req._bound,
                    req._fclass, _clock())  # fmt: skip
        if len(rec) > _SPAN:  # a sampled trace's span
            _finish_span(rec[_SPAN], obs, rec, req, _clock() - rec[_T0])
    exc = req._ferr
    if exc is not None and req._status >= 500:  # a failure the proxy answered itself (l5d-err)
        route = req._route
        service_text = route.service.show() if route is not None else "(no service)"
        message = (str(exc) or type(exc).__name__).split("\n", 1)[0]  # the no-route message's headline
        ERRORS.note(req._router.label, service_text, exc.stage, req._status, message)


def _finish_span(span: Span, obs: RouterObs, rec: tuple[Any, ...], req: Any, dur: float) -> None:
    route = req._route
    service = route.service_hdr if route is not None else None
    span.start_s = time() - dur
    span.duration_s = dur
    method = rec[_METHOD].decode("latin-1")
    svc = service.decode("latin-1") if service is not None else "(unrouted)"
    span.name = f"{method} {svc}"
    a = span.attrs
    a["http.request.method"] = method
    a["url.path"] = rec[_TARGET].decode("latin-1")
    a["network.protocol.version"] = "2" if rec[_VERSION] == b"2" else rec[_VERSION].decode("latin-1")
    a["client.address"] = rec[_PEER]
    if req._status:
        a["http.response.status_code"] = req._status
    a["l5d.router"] = obs.label
    a["l5d.service"] = svc
    bound = req._bound
    if bound is not None:
        a["l5d.client"] = bound.id.show()
    ep = req._ep_key
    if ep is not None:
        span.remote = ep
        a["server.address"], a["server.port"] = ep
    if req._fclass is not None:
        a["l5d.failure"] = req._fclass
        span.error = req._fclass if req._ferr is None else str(req._ferr)
    elif req._status >= 500:
        span.error = f"status {req._status}"
    for e in obs.exporters:
        e.add(span)


class Observability:
    """The process's access logs and span exporters, built from the config."""

    def __init__(self, telemetry: Any = None) -> None:
        self._exporters: dict[Any, Exporter] = {}  # TelemeterConfig -> running exporter
        self._logs: dict[str, tuple[Any, AccessLog]] = {}  # router label -> (config, log)
        self._loop: asyncio.AbstractEventLoop | None = None
        if telemetry is not None:
            telemetry.extra.append(self)

    async def apply(self, cfg: Any, loop: asyncio.AbstractEventLoop) -> None:
        """Match the config: start what is new, keep what did not change, close the rest
        (an access log whose settings changed is reopened; the file stays)."""
        self._loop = loop
        old_exporters, self._exporters = self._exporters, {}
        for tc in cfg.telemetry:
            e = old_exporters.pop(tc, None)
            if e is None:
                e = make_exporter(tc)
                e.start(loop)
                log.info("tracing: %s exporting to %s (sample rate %g)", tc.kind, tc.url, tc.sample_rate)
            self._exporters[tc] = e
        old_logs, self._logs = self._logs, {}
        for rc in cfg.routers:
            ac = rc.access_log
            if ac is None:
                continue
            kept = old_logs.get(rc.label)
            if kept is not None and kept[0] == ac:
                del old_logs[rc.label]
                self._logs[rc.label] = kept
                continue
            if kept is not None:  # its settings changed: closed before the file is opened again
                del old_logs[rc.label]
                await kept[1].close()
            try:
                alog = AccessLog(ac.path, fmt=ac.format, router=rc.label, roll_policy=ac.roll_policy,
                                 append=ac.append, rotate_count=ac.rotate_count)  # fmt: skip
            except OSError as exc:
                if kept is not None:
                    kept[1].hand_over(None)
                raise OSError(f"router {rc.label}: cannot open access log {ac.path}: {exc.strerror or exc}") from exc
            alog.start(loop)
            self._logs[rc.label] = (ac, alog)
            if kept is not None:  # requests still in flight on the old snapshot: their lines go here
                kept[1].hand_over(alog)
        for e in old_exporters.values():
            await e.close()
        for _, alog in old_logs.values():  # routers gone
            await alog.close()
            alog.hand_over(None)

    def router(self, rc: Any) -> RouterObs | None:
        """The hooks' object for a router snapshot; None when it has nothing to do."""
        logged = self._logs.get(rc.label)
        always = PROPAGATORS.get(rc.trace_propagator, 0)
        exporters = list(self._exporters.values())
        if logged is None and not exporters and not always:
            return None
        return RouterObs(rc.label, logged[1] if logged is not None else None, exporters, always)

    def access_log(self, label: str) -> AccessLog | None:
        logged = self._logs.get(label)
        return logged[1] if logged is not None else None

    @property
    def exporters(self) -> list[Exporter]:
        return list(self._exporters.values())

    async def close(self) -> None:
        """Drain: write every pending line and send every queued span."""
        for _, alog in self._logs.values():
            await alog.close()
        for e in self._exporters.values():
            await e.close()
        ERRORS.flush()

    def metric_lines(self, out: list[str]) -> None:
        """Prometheus families for the access logs and exporters (scrape time)."""
        fams: list[tuple[str, str, list[tuple[str, float]]]] = [
            ("dtabproxy_access_log_lines_total", "Access log lines written.", []),
            ("dtabproxy_access_log_dropped_total", "Access log lines dropped: the pending buffer was full.", []),
            ("dtabproxy_access_log_write_errors_total", "Access log lines lost to write errors.", []),
            ("dtabproxy_trace_spans_exported_total", "Spans accepted by the collector.", []),
            ("dtabproxy_trace_spans_dropped_total", "Spans dropped: the exporter's queue was full.", []),
            ("dtabproxy_trace_spans_failed_total", "Spans in batches that could not be sent or were refused.", []),
        ]
        for label, (_, alog) in sorted(self._logs.items()):
            lbl = f'router="{_esc(label)}"'
            fams[0][2].append((lbl, alog.lines))
            fams[1][2].append((lbl, alog.dropped))
            fams[2][2].append((lbl, alog.write_errors))
        for e in self._exporters.values():
            lbl = f'exporter="{e.kind}",url="{_esc(e.url)}"'
            fams[3][2].append((lbl, e.exported))
            fams[4][2].append((lbl, e.dropped))
            fams[5][2].append((lbl, e.failed))
        for name, help_text, rows in fams:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} counter")
            out.extend(f"{name}{{{lbl}}} {int(v)}" for lbl, v in rows)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
