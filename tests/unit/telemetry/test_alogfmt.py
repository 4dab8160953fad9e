"""The access log's C writer (proxy/telemetry/_alogfmt.c, `Lines`) gives the same bytes as
the Python formatter (`AccessLog.format_py`) for any request, escapes what a hostile
request can put in a line, and refuses what it does not take with nothing written, for
the Python formatter to write in its place.

The extension is loaded from its file, so the pure-Python run (which never imports it
for the proxy) still holds it to the Python formatter it runs there."""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import os
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import _purepy
from proxy.telemetry import accesslog
from proxy.telemetry.accesslog import AccessLog

HERE = os.path.dirname(accesslog.__file__)


def _load() -> ModuleType | None:
    found = [p for s in importlib.machinery.EXTENSION_SUFFIXES for p in glob.glob(os.path.join(HERE, "_alogfmt" + s))]
    if not found:
        return None
    loader = importlib.machinery.ExtensionFileLoader("proxy.telemetry._alogfmt", found[0])
    spec = importlib.util.spec_from_file_location("proxy.telemetry._alogfmt", found[0], loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


C = _load()
if C is None and os.environ.get("DTABPROXY_PURE") != "1":
    # A compiled build without the line writer is a build that failed to compile it.
    assert not _purepy.compiled(), "the mypyc build is there but proxy/telemetry/_alogfmt.c was not built"
needs_c = pytest.mark.skipif(C is None, reason="the C line writer is not built (a pure-Python build)")

OFFSET = 1765000000.25 - 1000.0  # perf_counter() 1000.0 reads as 2025-12-06T05:46:40.250Z


def test_the_proxy_uses_the_c_writer_exactly_when_the_request_path_runs_compiled() -> None:
    assert (accesslog._C is not None) is _purepy.compiled()


def log(tmp_path: Any, fmt: str = "combined") -> AccessLog:
    return AccessLog(str(tmp_path / f"{fmt}.log"), fmt=fmt, router='web "edge"')


def request_of(e: tuple[Any, ...]) -> tuple[Any, ...]:
    """`Lines.add`'s arguments for an entry's fields: a record whose header list carries
    the entry's User-Agent and Referer, then what the request ended with."""
    rec = (e[0], e[1], e[2], e[3], e[4], [(b"user-agent", e[5]), (b"host", b"h"), (b"referer", e[6])])
    return (rec, *e[7:])


def c_lines(batch: list[tuple[Any, ...]], offset: float, fmt: str = "combined", router_json: bytes = b'"r"') -> bytes:
    """The C writer's text for a batch of entries, one `add` a request."""
    assert C is not None
    out = C.Lines(fmt == "json", router_json)
    out.offset = offset
    for e in batch:
        out.add(*request_of(e))
    assert out.count == len(batch)
    text: bytes = out.take()
    assert out.count == 0 and out.take() == b""
    return text


def entry(t0: float = 1000.0, peer: str = "10.0.0.1", method: bytes = b"GET", target: bytes = b"/x?y=1",
          version: bytes = b"1.1", ua: bytes = b"curl/8.5.0", ref: bytes = b"-", status: int = 200, nbytes: int = 12,
          service: bytes = b"/svc/web", client: bytes = b"/$/inet/127.0.0.1/7778", dur: float = 0.000512,
          failure: str | None = None) -> tuple[Any, ...]:  # fmt: skip
    return (t0, peer, method, target, version, ua, ref, status, nbytes, service, client, t0 + dur, failure)


@needs_c
def test_a_hostile_request_is_escaped_into_one_line_and_one_field(tmp_path) -> None:
    assert C is not None
    e = entry(target=b'/a"b\\c\x1b[31m\xe9', ua=b'x" 1\n\xff', ref=b"\x7f", client=b'c"')
    text = c_lines([e], OFFSET)
    assert text == log(tmp_path).format_py([e], OFFSET)
    assert text == (b'10.0.0.1 - - [06/Dec/2025:05:46:40 +0000] "GET /a\\"b\\\\c\\x1b[31m\\xe9 HTTP/1.1" 200 12 '
                    b'"\\x7f" "x\\" 1\\x0a\\xff" "/svc/web" "c\\"" 0.512\n')  # fmt: skip
    j = c_lines([e], OFFSET, "json", b'"web \\"edge\\""')
    assert j == log(tmp_path, "json").format_py([e], OFFSET)
    assert b'"uri":"/a\\"b\\\\c\\u001b[31m\\u00e9"' in j and b'"referer":"\\u007f"' in j and j.count(b"\n") == 1


@needs_c
def test_every_byte_at_every_offset_of_a_block_is_escaped_alike(tmp_path) -> None:
    # The C scan reads a field in blocks (16 bytes with SSE2, else 8; a short field as
    # two overlapping 4-byte reads; under 4 bytes one by one), the last block overlapping
    # the one before: every byte value at every offset of fields of the lengths that take
    # each path, and the bytes at the edges of the escaped ranges at every length to 48,
    # in each escaped field, as Python escapes them.
    assert C is not None
    edges = (0x00, 0x1F, 0x20, 0x21, 0x22, 0x23, 0x5B, 0x5C, 0x5D, 0x7E, 0x7F, 0x80, 0xFF)
    batch = []
    for n in range(1, 49):
        for b in range(256) if n in (3, 7, 15, 19, 33) else edges:
            for i in range(n):
                field = bytearray(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n])
                field[i] = b
                batch.append(entry(target=bytes(field), ua=bytes(field[::-1]), ref=bytes(field[1:]) or b"-",
                                   service=bytes(field), client=bytes(field[:i + 1]), method=bytes(field[:4])))  # fmt: skip
    assert c_lines(batch, OFFSET) == log(tmp_path).format_py(batch, OFFSET)
    assert c_lines(batch, OFFSET, "json") == AccessLog(str(tmp_path / "j"), fmt="json", router="r").format_py(batch, OFFSET)


_TEXT = st.binary(max_size=40)
_ENTRY = st.builds(
    entry,
    t0=st.floats(0.0, 1e7, allow_nan=False),
    peer=st.sampled_from(["10.0.0.1", "::1", "", "fe80::1%eth0"]),
    method=st.sampled_from([b"GET", b"POST", b"PRI", b"M-SEARCH", b'"']),
    target=_TEXT,
    version=st.sampled_from([b"1.0", b"1.1", b"2", b"0.9"]),
    ua=st.one_of(st.just(b"-"), _TEXT),
    ref=st.one_of(st.just(b"-"), _TEXT),
    status=st.integers(-1000, 2**62),
    nbytes=st.integers(-5, 2**62),
    service=st.one_of(st.just(b"-"), _TEXT),
    client=st.one_of(st.just(b"-"), _TEXT),
    dur=st.one_of(st.floats(0.0, 3600.0, allow_nan=False), st.just(0.0005), st.just(0.0014995)),
    failure=st.one_of(st.none(), st.sampled_from(["ConnectionRefused", "timeout", 'a"b\\c\n'])),
)


@needs_c
@settings(max_examples=400, deadline=None)
@given(batch=st.lists(_ENTRY, max_size=6), offset=st.sampled_from([OFFSET, 0.0, 1.7e9 + 0.999]))
def test_c_and_python_give_the_same_bytes(tmp_path_factory, batch, offset) -> None:
    assert C is not None
    d = tmp_path_factory.mktemp("alog")
    assert c_lines(batch, offset) == log(d).format_py(batch, offset)
    assert c_lines(batch, offset, "json", log(d, "json")._router_json) == log(d, "json").format_py(batch, offset)


@needs_c
def test_durations_print_as_python_prints_them_near_every_rounding_edge(tmp_path) -> None:
    # The C writer rounds ms x 1000 in integers away from ties and uses snprintf near
    # them: durations around .0005 ms boundaries, exact binary ties, big and negative ones.
    assert C is not None
    import math

    durs = [0.0, -0.0, 1e-9, 0.0005, 0.0015, 0.0025, 1.0005, 2**-11, 3 * 2**-12, 123.4565, 1e5 + 0.0005, 1e6, 1e9,
            1e12, -1.5, -0.0004, float(2**40) / 1000]  # fmt: skip
    for d in list(durs):
        for k in range(-3, 4):
            durs.append(math.nextafter(d, math.inf) if k > 0 else math.nextafter(d, -math.inf) if k < 0 else d)
    batch = [(0.0, "1.2.3.4", b"GET", b"/", b"1.1", b"-", b"-", 200, 0, b"-", b"-", d / 1000, None) for d in durs]
    j = AccessLog(str(tmp_path / "j"), fmt="json", router="r")
    assert c_lines(batch, OFFSET, "json", j._router_json) == j.format_py(batch, OFFSET)
    assert c_lines(batch, OFFSET) == log(tmp_path).format_py(batch, OFFSET)


@needs_c
@pytest.mark.parametrize(
    "bad",
    [
        entry(peer="é"),  # not ASCII: Python encodes it as Latin-1
        entry(status=2**70),  # past a long long: Python prints it
        entry(failure="é"),
        entry(t0=1e300),  # a time out of range: Python raises too (below)
    ],
)
def test_what_the_c_writer_refuses_it_does_not_write_and_the_python_one_writes(tmp_path, bad, monkeypatch) -> None:
    assert C is not None
    for fmt in ("combined", "json"):
        out = C.Lines(fmt == "json", b'"r"')
        out.offset = OFFSET
        out.add(*request_of(entry()))
        with pytest.raises((TypeError, OverflowError)):
            out.add(*request_of(bad))
        assert out.count == 1 and out.take() == c_lines([entry()], OFFSET, fmt)  # nothing of the refused line
    monkeypatch.setattr(accesslog, "_C", C)
    monkeypatch.setattr(accesslog, "_wall", lambda: OFFSET)
    monkeypatch.setattr(accesslog, "_perf_counter", lambda: 0.0)
    for fmt in ("combined", "json"):
        one = log(tmp_path, fmt)
        assert isinstance(one.sink, C.Lines)
        if bad[0] == 1e300:  # no line can say when: dropped and counted, the request not failed for it
            one.add(*request_of(bad))
            assert one.sink.count == 0 and one.dropped == 1
            continue
        one.add(*request_of(entry()))
        one.add(*request_of(bad))
        one.add(*request_of(entry()))
        assert one.sink.count == 3
        assert one.sink.take() == one.format_py([entry(), bad, entry()], OFFSET)


@needs_c
def test_a_wrong_shape_is_a_type_error_not_a_crash() -> None:
    assert C is not None
    rec, *rest = request_of(entry())
    out = C.Lines()
    for args in (
        (None, *rest),
        (rec[:5], *rest),
        ((*rec[:5], tuple(rec[5])), *rest),  # the header list a tuple
        (list(rec), *rest),
        ((rec[0], rec[1], "GET", *rec[3:]), *rest),  # a str method
        ((1000, *rec[1:]), *rest),  # an int time
        (rec, 200.0, *rest[1:]),
        (rec, *rest[:4], None, rest[5]),  # no end time
        (rec, *rest[:5], b"timeout"),  # a failure class in bytes
        ((*rec[:5], [(b"user-agent", "curl")]), *rest),  # a str User-Agent
        (rec, 200),
        (),
    ):
        with pytest.raises(TypeError):
            out.add(*args)
    with pytest.raises(TypeError):
        out.extend("text")
    with pytest.raises(TypeError):
        C.Lines(True, "r")
    assert out.count == 0 and out.take() == b""
    # an item of the header list that is not a pair is passed over, not read past
    out.add((*rec[:5], [(b"referer",), b"user-agent", (b"referer", b"r", b"x"), (b"referer", b"r")]), *rest)
    assert b'"r" "-"' in out.take()


@needs_c
@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_the_buffer_holds_to_its_limit_counts_what_it_drops_and_starts_again_at_take(fmt) -> None:
    assert C is not None
    out = C.Lines(fmt == "json", b'"r"')
    out.limit = 2
    for _ in range(3):
        out.add(*request_of(entry()))
    out.extend(b"formatted elsewhere\n")  # a line Python wrote: always taken (its add had room)
    assert out.count == 3 and out.dropped == 1
    assert out.take() == c_lines([entry()] * 2, 0.0, fmt) + b"formatted elsewhere\n"
    # lines far past the buffer's first size, and a buffer too big to keep between takes
    big = entry(target=b"/" + b"x" * (1 << 20))
    out.limit = 10
    for _ in range(6):
        out.add(*request_of(big))
    assert out.count == 6 and out.take() == c_lines([big] * 6, 0.0, fmt)
    out.add(*request_of(entry()))
    assert out.take() == c_lines([entry()], 0.0, fmt) and out.dropped == 1


@needs_c
def test_numbers_print_as_python_prints_them_at_every_digit_count(tmp_path) -> None:
    # The C side prints numbers two digits a step, with short paths below 1,000: every
    # power of ten and its neighbours, both signs, up to a long long's ends.
    assert C is not None
    nums = {0, -(2**63), 2**63 - 1}
    for k in range(19):
        for d in (-1, 0, 1):
            nums |= {10**k + d, -(10**k + d)}
    batch = [entry(status=n, nbytes=-n if -n < 2**63 else 0) for n in sorted(nums)]
    assert c_lines(batch, OFFSET) == log(tmp_path).format_py(batch, OFFSET)
    assert c_lines(batch, OFFSET, "json") == AccessLog(str(tmp_path / "j"), fmt="json", router="r").format_py(batch, OFFSET)


@needs_c
def test_the_second_kept_between_lines_turns_over_with_the_clock(tmp_path) -> None:
    # Each format keeps its last second's text across calls: batches that go back and
    # forth between seconds (and between the two formats) still get their own.
    assert C is not None
    j = AccessLog(str(tmp_path / "j"), fmt="json", router="r")
    for t0 in (1000.0, 1000.5, 1001.0, 999.999, 1000.0, 86_400.0 + 1000.0, 1000.0):
        batch = [entry(t0=t0), entry(t0=t0 + 0.9999)]
        assert c_lines(batch, OFFSET) == log(tmp_path).format_py(batch, OFFSET)
        assert c_lines(batch, OFFSET, "json") == j.format_py(batch, OFFSET)


_NAME = st.sampled_from([b"user-agent", b"referer", b"host", b"User-Agent", b"user-agen", b"referers", b"", b"x"])
_HEADER_LIST = st.lists(st.tuples(_NAME, st.binary(max_size=12)), max_size=8)


@needs_c
@settings(max_examples=300, deadline=None)
@given(headers=_HEADER_LIST, span=st.booleans(), failure=st.one_of(st.none(), st.just("timeout")))
def test_the_c_writer_reads_the_record_as_the_python_entry_does(tmp_path_factory, headers, span, failure) -> None:
    # The record's fields, the last User-Agent and Referer of its header list (lowercase
    # names only, as the codecs give them), what the request ended with.
    assert C is not None
    rec: tuple[Any, ...] = (1000.0, "10.0.0.1", b"GET", b"/x", b"1.1", headers)
    if span:
        rec = (*rec, object())  # a sampled request's record carries its span
    args = (rec, 200, 12, b"/svc/web", b"-", 1000.5, failure)
    d = tmp_path_factory.mktemp("alog")
    for fmt in ("combined", "json"):
        out = C.Lines(fmt == "json", b'"r"')
        out.offset = OFFSET
        out.add(*args)
        assert out.take() == AccessLog(str(d / fmt), fmt=fmt, router="r").format_py([accesslog.entry_py(*args)], OFFSET)


def test_the_log_writes_with_the_c_writer_exactly_when_it_is_built(tmp_path) -> None:
    sink = log(tmp_path).sink
    assert (type(sink) is not accesslog.LinesPy) is (accesslog._C is not None)
    assert sink.limit == accesslog.MAX_PENDING and sink.count == 0 and sink.dropped == 0
