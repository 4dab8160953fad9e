"""Trace context formats (W3C Trace Context, B3 single and multi, l5d-ctx-trace): what is
read, how the child context is written, and the sampling decision."""

from __future__ import annotations

import pytest

from proxy.route.l5d import TraceContext, decode_trace
from proxy.telemetry.tracing import (
    B3_MULTI,
    B3_SINGLE,
    W3C,
    child_context,
    decide,
    encode_l5d,
    parse_traceparent,
    read_fields,
    write_fields,
)

TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = 0x0AF7651916CD43DD8448EB211C80319C


def test_traceparent_is_read_as_the_parent_context() -> None:
    ctx = parse_traceparent(TP)
    assert ctx is not None
    assert ((ctx.trace_id_high or 0) << 64 | ctx.trace_id) == TRACE
    assert ctx.span_id == 0xB7AD6B7169203331 and ctx.sampled is True
    assert parse_traceparent(TP[:-2] + b"00").sampled is False  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [
    b"", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",            # short
    b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",              # version ff
    b"00-00000000000000000000000000000000-b7ad6b7169203331-01",              # zero trace id
    b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",              # zero span id
    b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",              # upper case
    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",        # 00 has four fields
    b"00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
])  # fmt: skip
def test_malformed_traceparent_is_ignored(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_a_later_traceparent_version_is_read_by_its_first_four_fields() -> None:
    assert parse_traceparent(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more") is not None


def test_b3_single_and_multi() -> None:
    inb = read_fields([(b"b3", b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")], None)
    assert inb.formats == B3_SINGLE and inb.ctx is not None
    ctx = TraceContext(*inb.ctx)
    assert ctx.trace_id == 0x64FE8B2A57D3EFF7 and ctx.trace_id_high == 0x80F198EE56343BA8
    assert ctx.span_id == 0xE457B5A2E4D86BD1 and inb.sampled is True
    inb = read_fields([(b"x-b3-traceid", b"463ac35c9f6413ad"), (b"x-b3-spanid", b"a2fb4a1d1a96d312"),
                       (b"x-b3-sampled", b"0")], None)  # fmt: skip
    assert inb.formats == B3_MULTI and inb.ctx is not None
    ctx = TraceContext(*inb.ctx)
    assert ctx.trace_id == 0x463AC35C9F6413AD and ctx.trace_id_high is None and inb.sampled is False
    # A decision without ids: the decision is kept, a new trace starts.
    inb = read_fields([(b"b3", b"0")], None)
    assert inb.ctx is None and inb.sampled is False
    inb = read_fields([(b"x-b3-flags", b"1")], None)
    assert inb.ctx is None and inb.sampled is True and inb.debug


def test_w3c_wins_over_l5d_ctx_trace_and_l5d_is_read_alone() -> None:
    l5d = TraceContext(5, 4, 3, 0).encode()
    inb = read_fields([(b"traceparent", TP)], l5d)
    assert inb.ctx is not None and TraceContext(*inb.ctx).span_id == 0xB7AD6B7169203331
    inb = read_fields(None, l5d)
    assert inb.formats == 0 and inb.ctx is not None and TraceContext(*inb.ctx).span_id == 5


def test_child_is_written_in_every_format_received_and_l5d_carries_the_same_trace() -> None:
    inb = read_fields([(b"traceparent", TP), (b"b3", b"0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1")], None)
    raw, parent = child_context(inb, None)
    ctx = TraceContext(*raw)
    assert parent == 0xB7AD6B7169203331 and ctx.parent_id == parent and ctx.span_id != parent
    out: list[tuple[bytes, bytes]] = []
    write_fields(raw, inb.formats | B3_MULTI, out)
    fields = dict(out)
    span = b"%016x" % ctx.span_id
    assert fields[b"traceparent"] == b"00-0af7651916cd43dd8448eb211c80319c-" + span + b"-01"
    assert fields[b"b3"] == b"0af7651916cd43dd8448eb211c80319c-" + span + b"-1-b7ad6b7169203331"
    assert fields[b"x-b3-traceid"] == b"0af7651916cd43dd8448eb211c80319c" and fields[b"x-b3-spanid"] == span
    assert fields[b"x-b3-parentspanid"] == b"b7ad6b7169203331" and fields[b"x-b3-sampled"] == b"1"
    l5d = decode_trace(encode_l5d(raw))
    assert l5d is not None and ((l5d.trace_id_high or 0) << 64 | l5d.trace_id) == TRACE and l5d.sampled is True


def test_a_64_bit_b3_trace_stays_64_bit_and_an_unknown_decision_is_not_invented() -> None:
    inb = read_fields([(b"b3", b"463ac35c9f6413ad-a2fb4a1d1a96d312")], None)
    ctx, _ = child_context(inb, None)  # not tracing: nobody decides
    out: list[tuple[bytes, bytes]] = []
    write_fields(ctx, inb.formats, out)
    assert out == [(b"b3", b"463ac35c9f6413ad-%016x" % ctx[0])]


def test_sampling_honours_an_inbound_decision_else_the_rate_by_trace_id() -> None:
    sampled = read_fields([(b"traceparent", TP)], None)
    unsampled = read_fields([(b"traceparent", TP[:-2] + b"00")], None)
    undecided = read_fields(None, None)
    assert decide(sampled, 0.0, 1) is True
    assert decide(unsampled, 1.0, 1) is False
    assert decide(undecided, None, 1) is None  # the proxy does not trace: no decision
    assert decide(undecided, 1.0, 12345) is True and decide(undecided, 0.0, 12345) is False
    # The same trace id gets the same answer on every hop at the same rate.
    ids = [i * 0x9E3779B97F4A7C15 % (1 << 64) for i in range(1, 2001)]
    picked = [decide(undecided, 0.25, i) for i in ids]
    assert picked == [decide(undecided, 0.25, i) for i in ids]
    assert 350 < sum(picked) < 650
    # l5d-sample sets this request's rate when nothing was decided upstream.
    assert decide(read_fields([(b"l5d-sample", b"1.0")], None), 0.0, 12345) is True


def test_a_new_root_is_128_bit_when_tracing_and_its_decision_goes_in_the_flags() -> None:
    raw, parent = child_context(read_fields(None, None), 1.0)
    ctx = TraceContext(*raw)
    assert parent is None and ctx.trace_id_high is not None and ctx.sampled is True
    out: list[tuple[bytes, bytes]] = []
    write_fields(raw, W3C, out)
    assert out[0][1].endswith(b"-01")
