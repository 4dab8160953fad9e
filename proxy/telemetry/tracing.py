"""Distributed tracing: the trace context formats a request may carry, how one trace
runs across hops, sampling, and the spans the proxy records for its exporters.

Formats read (whatever the application forwards, the trace goes on):

* `l5d-ctx-trace` (Linkerd/Finagle, docs/dtab.md §13.1) -- always written;
* W3C Trace Context `traceparent` (`tracestate` passes through untouched);
* B3: the single `b3` header and the multi-header `x-b3-traceid`, `x-b3-spanid`,
  `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`;
* `l5d-sample` (Linkerd: this request's sample rate, when no decision was made yet).

When several arrive, W3C, then B3 single, then B3 multi, then `l5d-ctx-trace` gives the
parent: an instrumented application writes its own span into the standard header and
may forward the proxy's `l5d-ctx-*` headers unchanged. The child context goes out in
every format that came in, plus `l5d-ctx-trace` and `l5d-reqid`, plus the formats a
router's `tracePropagator` always writes.

The wire layer calls `propagate` only when a request carried one of those fields or the
router has an access log or tracing (`Router.obs`); otherwise it keeps its two-line
`l5d-ctx-trace` path. Pure functions of bytes plus one random id; no I/O here (the
exporters are in `proxy.telemetry.export`).
"""

from __future__ import annotations

import base64
import random
import re
import struct
from collections.abc import Sequence
from typing import Any, Final

from .tracectx import (
    FLAG_DEBUG,
    FLAG_SAMPLED,
    FLAG_SAMPLING_KNOWN,
    TraceContext,
    decode_trace,
    parse_sample,
)

# Formats, as bits: which ones the request carried (and so gets back).
W3C: Final = 1
B3_SINGLE: Final = 2
B3_MULTI: Final = 4

#: The request fields this module reads (lower-case). The wire tables map each to one
#: kind, so a head without any of them pays nothing (see routing.L5D_REQUEST_FIELDS).
FIELDS: Final = (
    b"traceparent", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled",
    b"x-b3-flags", b"l5d-sample",
)  # fmt: skip

#: tracePropagator kinds: which formats a router writes on every request.
PROPAGATORS: Final = {"io.l5d.default": 0, "io.l5d.zipkin": B3_MULTI, "io.l5d.w3c": W3C}

#: A context, as this module passes it around: a plain tuple in `l5d-ctx-trace`'s field
#: order (`TraceContext` is the same tuple with names; building a NamedTuple per request
#: measured a third of a microsecond, so the hot functions use indexes).
Ctx = tuple[int, int, int, int, "int | None"]
# Literal indices, so a type checker knows each field's type (and mypyc indexes directly).
SPAN: Final = 0
PARENT: Final = 1
TRACE: Final = 2
FLAGS: Final = 3
HIGH: Final = 4

_HEX: Final = frozenset(b"0123456789abcdef")
_MASK63: Final = (1 << 63) - 1
_SAMPLED: Final = FLAG_SAMPLING_KNOWN | FLAG_SAMPLED
_NOT_SAMPLED: Final = FLAG_SAMPLING_KNOWN


def _hex(text: bytes, width: int) -> int | None:
    """A lower-case hex id of exactly `width` digits, not all zero (W3C §3.2.2, B3)."""
    if len(text) != width or not _HEX.issuperset(text):
        return None
    n = int(text, 16)
    return n or None


def _trace_id(text: bytes) -> tuple[int | None, int] | None:
    """A 64- or 128-bit trace id: (high half or None, low half)."""
    if len(text) == 32:
        n = _hex(text, 32)
        return None if n is None else (n >> 64, n & 0xFFFFFFFFFFFFFFFF)
    n = _hex(text, 16)
    return None if n is None else (None, n)


def _flags(sampled: bool | None, debug: bool = False) -> int:
    if debug:
        return FLAG_DEBUG | FLAG_SAMPLING_KNOWN | FLAG_SAMPLED
    if sampled is None:
        return 0
    return FLAG_SAMPLING_KNOWN | (FLAG_SAMPLED if sampled else 0)


# version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex (W3C Trace Context §3.2.2);
# a later version may append "-" and more.
_TRACEPARENT: Final = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.S)


def parse_traceparent(value: bytes) -> TraceContext | None:
    """`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (W3C Trace Context §3.2).
    A later version is read by its first four fields; version ff and anything
    malformed are ignored (a new trace starts)."""
    ctx = _w3c(value)
    return TraceContext(*ctx) if ctx is not None else None


def _w3c(value: bytes) -> Ctx | None:
    m = _TRACEPARENT.fullmatch(value) or _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, tid_hex, sid_hex, fl, rest = m.groups()
    if version == b"ff" or (rest is not None and version == b"00"):
        return None
    tid = int(tid_hex, 16)
    sid = int(sid_hex, 16)
    if not tid or not sid:
        return None
    flags = _SAMPLED if int(fl, 16) & 1 else _NOT_SAMPLED
    return (sid, sid, tid & 0xFFFFFFFFFFFFFFFF, flags, tid >> 64)


def _b3_sampled(text: bytes) -> tuple[bool | None, bool]:
    """(sampled, debug) of a B3 sampling state: `1`/`0`/`d` (and `true`/`false`, which
    old tracers send in x-b3-sampled)."""
    t = text.strip().lower()
    if t in (b"1", b"true"):
        return True, False
    if t in (b"0", b"false"):
        return False, False
    if t == b"d":
        return True, True
    return None, False


class Inbound:
    """What a request's trace fields said: a parent context (or None) and a sampling
    decision without ids (`b3: 0`, `x-b3-sampled` alone), the formats seen, and an
    `l5d-sample` rate."""

    __slots__ = ("ctx", "formats", "sampled", "debug", "rate")

    def __init__(self) -> None:
        self.ctx: Ctx | None = None
        self.formats = 0
        self.sampled: bool | None = None
        self.debug = False
        self.rate: float | None = None


def read_fields(fields: Sequence[tuple[bytes, bytes]] | None, l5d_value: bytes | None) -> Inbound:
    """The trace context of one request from its trace fields (name, value) and its
    `l5d-ctx-trace` value. Unreadable values are ignored, never an error."""
    inb = Inbound()
    w3c = b3 = None
    multi: dict[bytes, bytes] | None = None
    for name, value in fields or ():
        if name == b"traceparent":
            if w3c is None:  # one field (W3C §3.2); the first one counts
                w3c = value
        elif name == b"b3":
            if b3 is None:
                b3 = value
        elif name == b"l5d-sample":
            inb.rate = parse_sample(value)
        else:
            if multi is None:
                multi = {}
            multi.setdefault(name, value)
    if w3c is not None:
        inb.formats = W3C
        inb.ctx = _w3c(w3c)
    if b3 is not None:
        inb.formats |= B3_SINGLE
        if inb.ctx is None:
            inb.ctx = _parse_b3(b3, inb)
    if multi is not None and (b"x-b3-traceid" in multi or b"x-b3-sampled" in multi or b"x-b3-flags" in multi):
        inb.formats |= B3_MULTI
        if inb.ctx is None:
            inb.ctx = _parse_b3_multi(multi, inb)
    if inb.ctx is None and l5d_value is not None:
        inb.ctx = decode_trace(l5d_value)
    ctx = inb.ctx
    if ctx is not None and inb.sampled is None and ctx[FLAGS] & FLAG_SAMPLING_KNOWN:
        inb.sampled = bool(ctx[FLAGS] & FLAG_SAMPLED)
        inb.debug = bool(ctx[FLAGS] & FLAG_DEBUG)
    return inb


def _parse_b3(value: bytes, inb: Inbound) -> Ctx | None:
    parts = value.strip().split(b"-")
    if len(parts) == 1:  # a decision alone: `b3: 0`, `b3: 1`, `b3: d`
        inb.sampled, inb.debug = _b3_sampled(parts[0])
        return None
    if len(parts) > 4:
        return None
    tid = _trace_id(parts[0])
    sid = _hex(parts[1], 16)
    if tid is None or sid is None:
        return None
    sampled, debug = _b3_sampled(parts[2]) if len(parts) >= 3 else (None, False)
    if len(parts) == 4 and _hex(parts[3], 16) is None:
        return None
    return (sid, sid, tid[1], _flags(sampled, debug), tid[0])


def _parse_b3_multi(h: dict[bytes, bytes], inb: Inbound) -> Ctx | None:
    sampled, debug = _b3_sampled(h[b"x-b3-sampled"]) if b"x-b3-sampled" in h else (None, False)
    if h.get(b"x-b3-flags", b"").strip() == b"1":
        sampled, debug = True, True
    tid = _trace_id(h.get(b"x-b3-traceid", b"").strip())
    sid = _hex(h.get(b"x-b3-spanid", b"").strip(), 16)
    if tid is None or sid is None:
        inb.sampled, inb.debug = sampled, debug
        return None
    return (sid, sid, tid[1], _flags(sampled, debug), tid[0])


def _new_id() -> int:
    return random.getrandbits(64) or 1


def decide(inb: Inbound, rate: float | None, trace_id: int) -> bool | None:
    """The sampling decision of a request: an inbound decision is honoured; else, when
    the proxy traces (`rate` not None), `l5d-sample` or the configured rate decides by
    the trace id (the same answer on every hop for the same trace and rate, as OTel's
    TraceIdRatioBased sampler); None: nobody decided and the proxy does not trace."""
    if inb.sampled is not None:
        return inb.sampled
    if rate is None:
        return None
    r = inb.rate if inb.rate is not None else rate
    return (trace_id & _MASK63) < r * (1 << 63)


def child_context(inb: Inbound, rate: float | None) -> tuple[Ctx, int | None]:
    """The context this hop sends downstream and its parent span id (None for a root):
    a child of the inbound context, or a new root (128-bit when the proxy traces, so
    W3C and OTLP get full ids), with the sampling decision in its flags."""
    parent = inb.ctx
    if parent is None:
        i = _new_id()
        span, parent_span, trace, flags = i, i, i, 0
        high = _new_id() if rate is not None else None
        parent_id = None
    else:
        span, parent_span, trace, flags, high = _new_id(), parent[SPAN], parent[TRACE], parent[FLAGS], parent[HIGH]
        parent_id = parent_span
    if inb.sampled is not None or rate is not None:  # decide (else: nobody did, and we do not trace)
        sampled = decide(inb, rate, trace)
        flags = _flags(sampled, inb.debug or bool(flags & FLAG_DEBUG))
    return (span, parent_span, trace, flags, high), parent_id


_L5D: Final = struct.Struct(">QQQQ")
_L5D_HIGH: Final = struct.Struct(">QQQQQ")


def encode_l5d(ctx: Ctx) -> bytes:
    """`l5d-ctx-trace` for a context (the packed form of TraceContext.encode)."""
    if ctx[HIGH] is None:
        return base64.b64encode(_L5D.pack(*ctx[:4]))
    return base64.b64encode(_L5D_HIGH.pack(*ctx))


def write_fields(ctx: Ctx, formats: int, out: list[tuple[bytes, bytes]]) -> None:
    """The child context in each format asked for (W3C / B3 single / B3 multi)."""
    span_id, parent_id, trace, flags, high = ctx
    sampled = bool(flags & FLAG_SAMPLED) if flags & FLAG_SAMPLING_KNOWN else None
    if formats & W3C:
        out.append((b"traceparent", b"00-%016x%016x-%016x-%s" % (high or 0, trace, span_id, b"01" if sampled else b"00")))
    if formats & (B3_SINGLE | B3_MULTI):
        tid = b"%016x%016x" % (high, trace) if high is not None else b"%016x" % trace
        span = b"%016x" % span_id
        parent = b"%016x" % parent_id
        debug = flags & FLAG_DEBUG
        state = b"d" if debug else None if sampled is None else b"1" if sampled else b"0"
        if formats & B3_SINGLE:
            out.append((b"b3", b"-".join((tid, span, state, parent)) if state is not None else tid + b"-" + span))
        if formats & B3_MULTI:
            out.append((b"x-b3-traceid", tid))
            out.append((b"x-b3-spanid", span))
            out.append((b"x-b3-parentspanid", parent))
            if debug:
                out.append((b"x-b3-flags", b"1"))
            elif state is not None:
                out.append((b"x-b3-sampled", state))


class Span:
    """What an exporter needs of one request's span (filled at the end, off the data
    path's critical work: a few attribute stores)."""

    __slots__ = ("trace_hi", "trace_lo", "span_id", "parent_id", "name", "start_s", "duration_s", "attrs",
                 "error", "remote")  # fmt: skip

    def __init__(self, trace_hi: int | None, trace_lo: int, span_id: int, parent_id: int | None) -> None:
        self.trace_hi = trace_hi
        self.trace_lo = trace_lo
        self.span_id = span_id
        self.parent_id = parent_id
        self.name = ""
        self.start_s = 0.0
        self.duration_s = 0.0
        self.attrs: dict[str, Any] = {}
        self.error: str | None = None
        self.remote: tuple[str, int] | None = None


__all__ = [
    "B3_MULTI", "B3_SINGLE", "FIELDS", "PROPAGATORS", "W3C", "Inbound", "Span", "child_context", "decide",
    "parse_traceparent", "read_fields", "write_fields",
]  # fmt: skip
