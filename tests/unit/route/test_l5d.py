"""`l5d-*` header semantics (docs/dtab.md §10, §13): local dtab, deadline, trace, sample,
`l5d-err`, the no-route message, and clearContext stripping."""

from __future__ import annotations

import base64
import random

import pytest

from dtab import Alt, Dtab, Leaf, Path, read_dtab, read_path
from proxy.errors import BadRequest
from proxy.route import l5d
from proxy.route.l5d import (
    Deadline,
    TraceContext,
    decode_trace,
    encode_l5d_err,
    err_body,
    format_deadline,
    format_local,
    no_route_message,
    parse_deadline,
    parse_sample,
    read_local,
    strip_l5d,
    strip_l5d_response,
)

# -- local dtab (docs/dtab.md §10) --------------------------------------------------------------------


def test_headers_test_worked_example():
    # existing local /a=>/b, l5d-ctx-dtab /a=>/c, l5d-dtab /a=>/d
    existing = read_dtab("/a => /b")
    local = existing + read_local([b"/a => /c"], [b"/a => /d"])
    assert local == read_dtab("/a=>/b;/a=>/c;/a=>/d")
    assert format_local(local) == b"/a=>/b;/a=>/c;/a=>/d"
    # /a is tried via /d first, then /c, then /b
    assert local.lookup(Path.of("a")) == Alt((Leaf(read_path("/d")), Leaf(read_path("/c")), Leaf(read_path("/b"))))


def test_ctx_values_come_before_user_values_in_header_order():
    local = read_local([b"/a=>/c1", b"/a=>/c2"], [b"/a=>/u1;/b=>/u2", b"/a=>/u3"])
    assert local.show() == "/a=>/c1;/a=>/c2;/a=>/u1;/b=>/u2;/a=>/u3"


def test_no_values_is_the_empty_dtab_and_sends_no_header():
    assert read_local([], []) is Dtab.EMPTY
    assert read_local([b""], [b"  "]) == Dtab.EMPTY
    assert format_local(Dtab.EMPTY) is None


@pytest.mark.parametrize(
    ("ctx", "user", "header"),
    [
        ([], [b"i am not a dtab"], "l5d-dtab"),
        ([b"/a=>/b,/c=>/d"], [], "l5d-ctx-dtab"),  # a comma is not a separator
        ([], [b"/a=>/b", b"/a=>"], "l5d-dtab"),
    ],
)
def test_unparsable_value_is_400_naming_the_header_and_the_parser_message(ctx, user, header):
    with pytest.raises(BadRequest) as e:
        read_local(ctx, user)
    assert e.value.status == 400
    assert str(e.value).startswith(f"Invalid {header} header: ")
    assert "expected but" in str(e.value)


def test_parsed_values_are_memoised_and_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(l5d, "_DTAB_MEMO_SIZE", 2)
    monkeypatch.setattr(l5d, "_dtab_memo", {})
    a = l5d.parse_dtab_value(l5d.USER_DTAB, b"/a=>/b")
    assert l5d.parse_dtab_value(l5d.USER_DTAB, b"/a=>/b") is a
    for i in range(5):
        l5d.parse_dtab_value(l5d.USER_DTAB, b"/a=>/b%d" % i)
    assert len(l5d._dtab_memo) <= 2


def test_format_local_escapes_non_ascii():
    local = Dtab.EMPTY + read_local([], [b"/a=>/b\\xc3\\xa9"])
    assert format_local(local) == b"/a=>/\\x62\\xc3\\xa9"


# -- l5d-ctx-deadline (docs/dtab.md §13.1) -------------------------------------------------------------

NOW = 1_700_000_000_000_000_000
S = 1_000_000_000


def test_deadline_round_trip():
    d = Deadline(NOW, NOW + 5 * S)
    assert format_deadline(d) == b"%d %d" % (NOW, NOW + 5 * S)
    assert parse_deadline([format_deadline(d)]) == d


def test_several_deadlines_combine_to_the_strictest_then_with_context():
    values = [format_deadline(Deadline(NOW + 1 * S, NOW + 10 * S)), format_deadline(Deadline(NOW + 2 * S, NOW + 8 * S))]
    combined = parse_deadline(values)
    assert combined == Deadline(NOW + 2 * S, NOW + 8 * S)
    assert combined.combine(Deadline(NOW, NOW + 2 * S)) == Deadline(NOW + 2 * S, NOW + 2 * S)
    assert combined.combine(None) is combined
    assert combined.remaining_ns(NOW + 7 * S) == S


@pytest.mark.parametrize(
    "bad",
    [b"", b"123", b"1 2 3", b"a b", b"1_0 20", b"+1 2", b"1  2", b"1 99999999999999999999", b"\xff 1"],
)
def test_unparsable_deadlines_are_ignored(bad):
    assert parse_deadline([bad]) is None
    assert parse_deadline([bad, b"10 20"]) == Deadline(10, 20)


def test_deadline_accepts_negative_like_a_java_long():
    assert parse_deadline([b"-5 20"]) == Deadline(-5, 20)


# -- l5d-ctx-trace, l5d-reqid, l5d-sample --------------------------------------------------------------


def test_trace_known_encoding():
    ctx = TraceContext(1, 2, 3, 6)
    assert ctx.encode() == b"AAAAAAAAAAEAAAAAAAAAAgAAAAAAAAADAAAAAAAAAAY="
    assert decode_trace(b"AAAAAAAAAAEAAAAAAAAAAgAAAAAAAAADAAAAAAAAAAY=") == ctx
    assert ctx.sampled is True
    assert not ctx.debug


def test_trace_128_bit_encoding():
    ctx = TraceContext(1, 2, 3, 0, 0xFF)
    raw = ctx.encode()
    assert raw == b"AAAAAAAAAAEAAAAAAAAAAgAAAAAAAAADAAAAAAAAAAAAAAAAAAAA/w=="
    assert len(base64.b64decode(raw)) == 40
    assert decode_trace(raw) == ctx
    assert ctx.sampled is None


def test_trace_round_trip_random():
    rng = random.Random(7)
    for _ in range(200):
        high = rng.getrandbits(64) if rng.random() < 0.5 else None
        ctx = TraceContext(rng.getrandbits(64), rng.getrandbits(64), rng.getrandbits(64), rng.getrandbits(3), high)
        assert decode_trace(l5d.encode_trace(ctx)) == ctx


def test_trace_missing_padding_is_accepted():
    assert decode_trace(b"AAAAAAAAAAEAAAAAAAAAAgAAAAAAAAADAAAAAAAAAAY") == TraceContext(1, 2, 3, 6)


@pytest.mark.parametrize("bad", [None, b"", b"not base64!!", base64.b64encode(b"x" * 31), base64.b64encode(b"x" * 48)])
def test_unreadable_trace_is_none(bad):
    assert decode_trace(bad) is None


def test_child_span_keeps_trace_and_flags():
    parent = TraceContext(10, 9, 8, 6, 5)
    child = parent.child()
    assert child.parent_id == 10
    assert (child.trace_id, child.flags, child.trace_id_high) == (8, 6, 5)
    assert child.span_id not in (0, 10)


def test_root_trace_and_reqid():
    root = TraceContext.root()
    assert root.span_id == root.parent_id == root.trace_id != 0
    assert root.sampled is None
    assert TraceContext.root(sampled=False).sampled is False
    assert TraceContext(1, 1, 0xABC).reqid() == b"0000000000000abc"
    assert len(root.reqid()) == 16
    assert root.child().reqid() == root.reqid()


def test_with_sampled_sets_and_clears():
    ctx = TraceContext(1, 1, 1).with_sampled(True)
    assert ctx.sampled is True
    assert ctx.with_sampled(False).sampled is False


@pytest.mark.parametrize(
    ("value", "rate"),
    [(None, None), (b"yes", None), (b"nan", None), (b"-3", 0.0), (b"0", 0.0), (b"0.2", 0.2), (b"1", 1.0), (b"1.5", 1.0)],
)
def test_sample_parse_and_clamp(value, rate):
    assert parse_sample(value) == rate


# -- l5d-err (docs/dtab.md §13.4) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "encoded"),
    [
        ("foo bar", b"foo+bar"),
        ("foo\nbar", b"foo%0Abar"),
        ("caf\u00e9", b"caf%E9"),  # ISO-8859-1, one byte
        ("\u20ac and \U0001f600", b"%3F+and+%3F"),  # not in ISO-8859-1: '?'
        ("a*b.c-d_e~f+g", b"a*b.c-d_e%7Ef%2Bg"),
        ("Unknown destination: /svc/x", b"Unknown+destination%3A+%2Fsvc%2Fx"),
    ],
)
def test_encode_l5d_err(message, encoded):
    assert encode_l5d_err(message) == encoded


def test_l5d_err_cut_never_splits_an_escape():
    value = encode_l5d_err("a" * 8190 + " \u00e9")  # a*8190 + '+' + '%E9' = 8194 bytes
    assert value == b"a" * 8190 + b"+"
    value = encode_l5d_err("a" * 8191 + "\u00e9")
    assert value == b"a" * 8191
    assert len(encode_l5d_err("x" * 100_000)) == 8192
    assert encode_l5d_err("\u00e9" * 10, max_bytes=7) == b"%E9%E9"


def test_err_body_is_utf8_and_cut_on_a_character_boundary():
    assert err_body("caf\u00e9") == "caf\u00e9".encode()
    assert err_body("\u00e9\u00e9", max_bytes=3) == "\u00e9".encode()
    assert len(err_body("x" * (6 * 1024 * 1024))) == 5 * 1024 * 1024


# -- no-route message (docs/dtab.md §13.4) ---------------------------------------------------------------


def test_no_route_message_layout():
    msg = no_route_message(
        read_path("/svc/x"),
        read_dtab("/svc => /#/io.l5d.fs; /svc/y => /$/inet/127.1/1 | ~"),
        read_dtab("/svc/x => /svc/z"),
    )
    assert msg == (
        "Unable to route request!\n"
        "\n"
        "service name: /svc/x\n"
        "dtab:\n"
        "\n"
        "base dtab:\n"
        "  /svc => /#/io.l5d.fs\n"
        "  /svc/y => /$/inet/127.1/1 | ~\n"
        "override dtab:\n"
        "  /svc/x => /svc/z\n"
    )


def test_no_route_message_empty_tables_and_interpreter_dtab():
    msg = no_route_message(read_path("/svc/x"), Dtab.EMPTY, Dtab.EMPTY, read_dtab("/a=>/b"))
    assert msg == (
        "Unable to route request!\n\nservice name: /svc/x\n"
        "dtab:\n  /a => /b\nbase dtab:\n\noverride dtab:\n\n"
    )


# -- clearContext and header sets (docs/dtab.md §13.5) -----------------------------------------------------


def test_strip_l5d_removes_every_l5d_header_any_case():
    headers = [
        (b"host", b"web"),
        (b"l5d-dtab", b"/a=>/b"),
        (b"L5d-Ctx-Trace", b"x"),
        (b"l5d-ctx-custom", b"y"),
        (b"L5D-SAMPLE", b"1"),
        (b"l5dx", b"kept"),
        (b"x-l5d-dtab", b"kept"),
        (b"dtab-local", b"kept"),
    ]
    assert strip_l5d(headers) == [(b"host", b"web"), (b"l5dx", b"kept"), (b"x-l5d-dtab", b"kept"), (b"dtab-local", b"kept")]


def test_strip_l5d_response_reports_an_error_response():
    kept, had_err = strip_l5d_response([(b"content-type", b"text/plain"), (b"L5d-Err", b"x"), (b"l5d-retryable", b"true")])
    assert kept == [(b"content-type", b"text/plain")]
    assert had_err is True
    kept, had_err = strip_l5d_response([(b"l5d-dst-service", b"/svc/x"), (b"a", b"b")])
    assert kept == [(b"a", b"b")]
    assert had_err is False


def test_header_sets():
    consumed = {b"l5d-dtab", b"l5d-ctx-dtab", b"l5d-ctx-deadline", b"l5d-ctx-trace", b"l5d-sample"}
    assert consumed == l5d.CONSUMED_REQUEST_HEADERS
    added = {
        b"l5d-dst-service",
        b"l5d-dst-client",
        b"l5d-dst-residual",
        b"l5d-reqid",
        b"l5d-ctx-trace",
        b"l5d-ctx-deadline",
        b"l5d-ctx-dtab",
    }
    assert added == l5d.ADDED_REQUEST_HEADERS
    assert b"l5d-dtab" not in l5d.ADDED_REQUEST_HEADERS  # never forwarded (docs/dtab.md §10)
    assert all(l5d.is_l5d(n) for n in l5d.CONSUMED_REQUEST_HEADERS | l5d.ADDED_REQUEST_HEADERS)


def test_no_route_message_lists_matched_rules_as_rules_not_base():
    msg = no_route_message(
        read_path("/svc/x"), read_dtab("/svc/y => /srv/y"), Dtab.EMPTY,
        rules=[("feature", read_dtab("/svc/x => /svc/x-myfeature"))],
    )  # fmt: skip
    assert msg == (
        "Unable to route request!\n\nservice name: /svc/x\n"
        "dtab:\n\n"
        "base dtab:\n  /svc/y => /srv/y\n"
        "rule feature:\n  /svc/x => /svc/x-myfeature\n"
        "override dtab:\n\n"
    )
