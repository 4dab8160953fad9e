"""The access log's lines (combined and JSON), its bound, rolling, and the rate-limited
proxy-error log."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.telemetry import accesslog
from proxy.telemetry.accesslog import AccessLog
from proxy.telemetry.errorlog import ErrorLog

T = 1765000000.25  # 2025-12-06T05:46:40.250Z


@pytest.fixture(autouse=True)
def clocks(monkeypatch) -> None:
    """Entries carry perf_counter() times; with both clocks pinned, T reads as T."""
    monkeypatch.setattr(accesslog, "_wall", lambda: T)
    monkeypatch.setattr(accesslog, "_perf_counter", lambda: T)


def entry(**kw: Any) -> tuple[Any, ...]:
    """A line's fields (accesslog.Entry): atoms, times from perf_counter() (pinned to T here)."""
    f = {"t": T, "peer": "10.0.0.1", "method": b"GET", "target": b"/x?y=1", "version": b"1.1",
         "ua": b"curl/8.5.0", "ref": b"http://a/", "status": 200, "bytes": 12, "service": b"/svc/web",
         "client": b"/$/inet/127.0.0.1/7778", "dur": 0.000512, "fclass": None}  # fmt: skip
    f.update(kw)
    return (f["t"], f["peer"], f["method"], f["target"], f["version"], f["ua"], f["ref"], f["status"], f["bytes"],
            f["service"], f["client"], f["t"] + f["dur"], f["fclass"])  # fmt: skip


def request(e: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    """What the request path hands the log for an entry's fields (AccessLog.add's
    arguments): the record with a header list, then what the request ended with."""
    e = entry() if e is None else e
    rec = (e[0], e[1], e[2], e[3], e[4], [(b"host", b"web"), (b"user-agent", e[5]), (b"referer", e[6])])
    return (rec, *e[7:])


def lines(log: AccessLog, *entries: tuple[Any, ...]) -> bytes:
    """The text the log's buffer (C where it is built, else Python) holds for `entries`."""
    for e in entries:
        log.add(*request(e))
    text: bytes = log.sink.take()
    return text


def test_combined_line_with_service_client_and_duration(tmp_path) -> None:
    log = AccessLog(str(tmp_path / "a.log"), router="web")
    line = lines(log, entry()).decode()
    assert line == ('10.0.0.1 - - [06/Dec/2025:05:46:40 +0000] "GET /x?y=1 HTTP/1.1" 200 12 "http://a/" '
                    '"curl/8.5.0" "/svc/web" "/$/inet/127.0.0.1/7778" 0.512\n')  # fmt: skip
    # No body, no referer, no client (unrouted), a hostile user agent: "-" and escapes.
    line = lines(log, entry(bytes=0, ua=b'x" 1\n\xff', ref=b"-", service=b"-", client=b"-", status=400,
                            version=b"2")).decode()  # fmt: skip
    assert '"GET /x?y=1 HTTP/2.0" 400 0 "-" "x\\" 1\\x0a\\xff" "-" "-" ' in line and line.count("\n") == 1


#: The combined line as one %-format (what the log's writers build piece by piece).
REFERENCE = b'%s - - [%s] "%s %s HTTP/%s" %d %d "%s" "%s" "%s" "%s" %.3f\n'
_PRINTABLE = st.binary(min_size=1, max_size=12).map(lambda b: bytes(0x21 + (c % 94) for c in b).replace(b'"', b"q").replace(b"\\", b"b"))


@settings(max_examples=200, deadline=None)
@given(
    status=st.integers(100, 599), nbytes=st.integers(0, 5_000_000), dur_us=st.integers(0, 5_000_000),
    target=_PRINTABLE, ua=_PRINTABLE, version=st.sampled_from([b"1.0", b"1.1", b"2"]),
)  # fmt: skip
def test_combined_line_is_the_apache_format(tmp_path_factory, status, nbytes, dur_us, target, ua, version) -> None:
    log = AccessLog(str(tmp_path_factory.mktemp("l") / "a.log"), router="web")
    e = entry(status=status, bytes=nbytes, dur=dur_us / 1e6, target=target, ua=ua, version=version)
    line = lines(log, e)
    ref = REFERENCE % (b"10.0.0.1", b"06/Dec/2025:05:46:40 +0000", b"GET", target, b"2.0" if version == b"2" else version,
                       status, nbytes, b"http://a/", ua, b"/svc/web", b"/$/inet/127.0.0.1/7778", (e[11] - e[0]) * 1000)  # fmt: skip
    head, _, dur = line.rstrip(b"\n").rpartition(b" ")
    ref_head, _, ref_dur = ref.rstrip(b"\n").rpartition(b" ")
    assert head == ref_head and line.endswith(b"\n") and line.count(b"\n") == 1
    assert abs(float(dur) - float(ref_dur)) <= 0.0011  # the same to the last printed digit, rounding aside


def test_json_lines(tmp_path) -> None:
    log = AccessLog(str(tmp_path / "a.log"), fmt="json", router="web")
    (line,) = lines(log, entry(fclass="connect", status=502, ua=b"-", ref=b"-")).decode().splitlines()
    d = json.loads(line)
    assert d == {"time": "2025-12-06T05:46:40.250Z", "router": "web", "remote": "10.0.0.1", "method": "GET",
                 "uri": "/x?y=1", "protocol": "HTTP/1.1", "status": 502, "bytes": 12, "referer": None,
                 "user_agent": None, "service": "/svc/web", "client": "/$/inet/127.0.0.1/7778",
                 "duration_ms": 0.512, "failure": "connect"}  # fmt: skip


def test_lines_are_written_off_the_request_path_and_overflow_is_counted(run, tmp_path, monkeypatch) -> None:
    async def go() -> None:
        log = AccessLog(str(tmp_path / "a.log"), router="web", max_pending=5)
        log.start(asyncio.get_running_loop())
        for _ in range(7):
            log.add(*request())
        assert (tmp_path / "a.log").read_text() == ""  # nothing written on the request path
        assert log.dropped == 2 and log.sink.count == 5
        await log.close()
        assert log.lines == 5
        assert len((tmp_path / "a.log").read_text().splitlines()) == 5

    run(go())


@pytest.mark.skipif(accesslog._C is None, reason="the C writer is not built (a pure-Python run keeps entries)")
def test_the_line_is_written_when_the_request_ends_and_keeps_nothing_of_it(run, tmp_path) -> None:
    """The C buffer writes the line at `add`: the request's target and header list are
    not held until the hand-off (their references are what they were before), and the
    text waits in the buffer for the timer's hand-off to the writer."""

    async def go() -> None:
        log = AccessLog(str(tmp_path / "a.log"), router="web")
        log._loop = asyncio.get_running_loop()  # no 100 ms timer: flushed by hand
        rec, *rest = request()
        target, headers = rec[3], rec[5]
        before = (sys.getrefcount(target), sys.getrefcount(headers))
        for _ in range(3):
            log.add(rec, *rest)
        assert (sys.getrefcount(target), sys.getrefcount(headers)) == before
        assert log.sink.count == 3 and (tmp_path / "a.log").read_text() == ""
        log.flush()
        await log.close()
        assert log.lines == 3 and (tmp_path / "a.log").read_bytes() == log.format_py([entry()] * 3, 0.0)  # both clocks read T

    run(go())


def test_a_stalled_disk_holds_memory_to_the_bound_and_loses_nothing_accepted(run, tmp_path) -> None:
    """The log is a FIFO nobody reads yet, so the writer thread blocks in write() as on a
    stalled disk: lines handed to it count against the bound until written, so past
    max_pending lines held (buffered and on their way) new ones are dropped and counted;
    when the reader comes, every accepted line is written."""
    path = tmp_path / "a.log"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # so the log's open does not block

    def drain() -> bytes:
        os.set_blocking(reader, True)
        out = []
        while chunk := os.read(reader, 1 << 16):
            out.append(chunk)
        return b"".join(out)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        log = AccessLog(str(path), router="web", max_pending=2000)  # ~300 KB of lines: far past what the pipe holds
        log._loop = loop  # no timer: flushed by hand
        for _ in range(1500):
            log.add(*request())
        log.flush()
        assert log.lines == 0  # the thread is stuck in its first write
        for _ in range(503):
            log.add(*request())
        assert log.sink.count == 500 and log.dropped == 3  # 1,500 on their way, 500 buffered
        log.flush()
        log.add(*request())  # 2,000 on their way: no room until some are written
        assert log.sink.count == 0 and log.dropped == 4 and log.lines == 0
        reading = loop.run_in_executor(None, drain)
        await log.close()
        text = await reading
        assert log.lines == 2000 and log.write_errors == 0 and log.dropped == 4
        assert len(text.splitlines()) == 2000

    try:
        run(go())
    finally:
        os.close(reader)


def test_lines_of_requests_that_end_after_a_reload_closed_their_log_are_handed_over(run, tmp_path) -> None:
    """A request keeps the log of the router snapshot it started on. One that ends while
    the reload closes that log (before the new one is open) is held in the old log's
    format and written first by the new one; later ones go straight to the new one; with no
    new one (the router is gone) they are dropped and counted."""

    async def go() -> None:
        loop = asyncio.get_running_loop()
        old = AccessLog(str(tmp_path / "a.log"), router="web")
        old.start(loop)
        old.add(*request())
        await old.close()
        old.add(*request(entry(status=201)))  # ended during the reload
        new = AccessLog(str(tmp_path / "b.log"), fmt="json", router="web")
        new.start(loop)
        old.hand_over(new)
        old.add(*request(entry(status=202)))  # ended after it
        new.add(*request(entry(status=203)))
        await new.close()
        assert new.lines == 3 and old.dropped == 0
        gone = AccessLog(str(tmp_path / "c.log"), router="gone")
        await gone.close()
        gone.add(*request())
        gone.hand_over(None)
        gone.add(*request())
        assert gone.dropped == 2 and gone.sink.count == 0

    run(go())
    assert len((tmp_path / "a.log").read_text().splitlines()) == 1
    first, *rest = (tmp_path / "b.log").read_text().splitlines()
    assert first.startswith("10.0.0.1 - - [") and '" 201 12 ' in first  # the old log's format
    assert [json.loads(line)["status"] for line in rest] == [202, 203]
    assert (tmp_path / "c.log").read_text() == ""


def test_append_or_truncate_and_roll_by_size_keeping_rotate_count(run, tmp_path) -> None:
    path = tmp_path / "a.log"
    path.write_text("old line\n")

    async def go() -> None:
        log = AccessLog(str(path), router="web", append=False, roll_policy="1.kilobyte", rotate_count=2)
        log.start(asyncio.get_running_loop())
        for _ in range(40):  # ~150 bytes each: 6 KB, rolled every KB
            log.add(*request())
        await log.close()

    run(go())
    rolled = sorted(p for p in os.listdir(tmp_path) if p.startswith("a.log."))
    assert len(rolled) == 2  # only the newest two rolled files are kept
    lines = path.read_text().splitlines() + [x for p in rolled for x in (tmp_path / p).read_text().splitlines()]
    assert "old line" not in lines and all(x.startswith("10.0.0.1 - - [") for x in lines)


def test_proxy_errors_are_logged_once_per_cause_per_interval_with_a_count(caplog) -> None:
    now = [100.0]
    errors = ErrorLog(interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="proxy.errors"):
        for _ in range(26):
            errors.note("web", "/svc/world", "connect", 502, "Unable to connect to 127.0.0.1:7778: Connection refused")
        errors.note("web", "/svc/world", "timeout", 503, "exceeded 10000 ms to /svc/world")
        assert len(caplog.records) == 2  # the first of each cause, at once
        now[0] += 10.0
        errors.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("router web: /svc/world: 502 connect: Unable to connect to 127.0.0.1:7778: "
                        "Connection refused (more like it are counted for 10 s)")  # fmt: skip
    assert lines[2] == ("router web: /svc/world: 25 more 502 connect in the last 10 s "
                        "(latest: Unable to connect to 127.0.0.1:7778: Connection refused)")  # fmt: skip
    assert len(lines) == 3 and all(r.levelno == logging.WARNING for r in caplog.records)
    # A quiet interval later, the next failure is logged at once again.
    now[0] += 25.0
    errors.flush()
    with caplog.at_level(logging.WARNING, logger="proxy.errors"):
        errors.note("web", "/svc/world", "connect", 502, "again")
    assert caplog.records[-1].getMessage().startswith("router web: /svc/world: 502 connect: again")
