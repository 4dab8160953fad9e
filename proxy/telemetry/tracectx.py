"""The trace context of Linkerd's `l5d-ctx-trace` (Finagle's trace id), `l5d-reqid` and
`l5d-sample` (docs/dtab.md §13.1-3): pure functions of bytes, no clock, no I/O.

It lives in telemetry because spans (telemetry/tracing.py, observe.py) read and write it;
route/l5d.py re-exports it with the other l5d- headers, so routing imports telemetry and
never the other way round."""

from __future__ import annotations

import base64
import binascii
import logging
import math
import random
import struct
from typing import Final, NamedTuple

log = logging.getLogger(__name__)

_TRACE4: Final = struct.Struct(">QQQQ")

# -- l5d-ctx-trace, l5d-reqid, l5d-sample (docs/dtab.md §13.1-3) --------------------------------

FLAG_DEBUG: Final = 1
FLAG_SAMPLING_KNOWN: Final = 2
FLAG_SAMPLED: Final = 4


def _new_id() -> int:
    # getrandbits is a few hundred ns and never blocks; ids need to be unique, not secret.
    # Zero reads as "no id" in some tracers, so it is never issued.
    return random.getrandbits(64) or 1


class TraceContext(NamedTuple):
    """Finagle's trace id as `l5d-ctx-trace` carries it: 64-bit span, parent and trace
    ids, the flag bits, and the high half of a 128-bit trace id (None for 64-bit)."""

    span_id: int
    parent_id: int
    trace_id: int
    flags: int = 0
    trace_id_high: int | None = None

    @property
    def sampled(self) -> bool | None:
        """The sampling decision, or None when not decided yet."""
        if self.flags & FLAG_SAMPLING_KNOWN:
            return bool(self.flags & FLAG_SAMPLED)
        return None

    @property
    def debug(self) -> bool:
        return bool(self.flags & FLAG_DEBUG)

    def with_sampled(self, sampled: bool) -> TraceContext:
        flags = self.flags | FLAG_SAMPLING_KNOWN
        flags = flags | FLAG_SAMPLED if sampled else flags & ~FLAG_SAMPLED
        return self._replace(flags=flags)

    def child(self) -> TraceContext:
        """The context of a new span for an outgoing request: a fresh span id whose
        parent is this span; trace id and flags carried over."""
        return TraceContext(_new_id(), self.span_id, self.trace_id, self.flags, self.trace_id_high)

    def reqid(self) -> bytes:
        """`l5d-reqid`: the trace id as 16 lower-case hex digits (the same for every
        request of the tree)."""
        return b"%016x" % self.trace_id

    def encode(self) -> bytes:
        """The `l5d-ctx-trace` value: base64 (with padding) of the big-endian fields."""
        raw = b"".join(
            (
                self.span_id.to_bytes(8, "big"),
                self.parent_id.to_bytes(8, "big"),
                self.trace_id.to_bytes(8, "big"),
                self.flags.to_bytes(8, "big"),
            )
        )
        if self.trace_id_high is not None:
            raw += self.trace_id_high.to_bytes(8, "big")
        return base64.b64encode(raw)

    @staticmethod
    def root(sampled: bool | None = None) -> TraceContext:
        """A new trace: span, parent and trace id are one fresh id (as Finagle does)."""
        i = _new_id()
        ctx = TraceContext(i, i, i)
        return ctx if sampled is None else ctx.with_sampled(sampled)


def decode_trace(value: bytes | None) -> TraceContext | None:
    """A `l5d-ctx-trace` value, or None when absent or unreadable (which starts a new
    trace rather than failing the request)."""
    if not value:
        return None
    value = value.strip()
    if len(value) % 4:  # tolerate missing padding, which Java's decoder accepts
        value += b"=" * (-len(value) % 4)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    n = len(raw)
    if n != 32 and n != 40:
        return None
    high = int.from_bytes(raw[32:40], "big") if n == 40 else None
    return TraceContext(
        int.from_bytes(raw[0:8], "big"),
        int.from_bytes(raw[8:16], "big"),
        int.from_bytes(raw[16:24], "big"),
        int.from_bytes(raw[24:32], "big"),
        high,
    )


def encode_trace(ctx: TraceContext) -> bytes:
    return ctx.encode()


def parse_sample(value: bytes | None) -> float | None:
    """`l5d-sample` clamped to [0, 1]; None when absent or not a number."""
    if value is None:
        return None
    try:
        rate = float(value)
    except ValueError:
        return None
    if math.isnan(rate):
        return None
    return 0.0 if rate < 0.0 else 1.0 if rate > 1.0 else rate




_getrandbits: Final = random.getrandbits  # the module's generator (random.seed still applies)
_b2a_hex: Final = binascii.b2a_hex
_b2a_base64: Final = binascii.b2a_base64


def new_root_trace() -> tuple[bytes, bytes]:
    """(`l5d-reqid`, `l5d-ctx-trace`) of a new root span: the per-request fast path of
    `TraceContext.root()` with `reqid()` and `encode()`, without the tuple. Span, parent
    and trace id are one id, so the request id is the hex of the first 8 bytes."""
    i = _getrandbits(64) or 1
    raw = _TRACE4.pack(i, i, i, 0)
    return _b2a_hex(raw[:8]), _b2a_base64(raw, newline=False)
