"""A router's access log (Linkerd's `httpAccessLog` / `h2AccessLog`): one line per
request, in the combined log format plus the service name, the bound client and the
duration, or as JSON lines (`httpAccessLogFormat: json`).

When a request ends, the request path hands the log's buffer (`AccessLog.sink`) the
fields it already has, and the line is written into that buffer there and then, in C
(`_alogfmt.Lines`, built beside the mypyc modules: ~1,000 instructions a line, where
Python took ~7,000): no entry object is made, nothing of the request is kept alive, and
the buffer is reused from one hand-off to the next. Past `MAX_PENDING` lines held (in
the buffer and on their way to the file) a line is dropped and counted. A loop timer
hands the text to a writer thread of its own every 100 ms, which writes it (disk stalls
never block the loop) and rolls the file as the roll policy says. Nothing here parses a
request or touches a transport.

`LinesPy` is the buffer in Python, for a run without the extension (DTABPROXY_PURE=1, a
stale build, no compiler): it keeps each request's entry (atoms only) and formats them
at the hand-off, a batch at a time, with `AccessLog.format_py`, which is also the
reference the tests hold the C writer to.

Combined line (Apache's `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`, then
ours: service, client, duration in milliseconds):

    127.0.0.1 - - [06/Dec/2026:03:23:42 +0000] "GET /x HTTP/1.1" 200 12 "-" "curl/8.5.0" "/svc/web" "/$/inet/127.0.0.1/7778" 0.512
"""

from __future__ import annotations

import asyncio
import glob
import importlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from itertools import chain
from typing import Any, Final

log = logging.getLogger(__name__)

#: Lines held before they are written: in the buffer, and handed to the writer thread but
#: not yet written. At 25k requests/s a 100 ms hand-off holds ~2,500; the bound leaves
#: room for a slow disk and caps memory (~32k lines, a few MB).
MAX_PENDING: Final = 32_768
#: How often the text is handed to the writer thread.
FLUSH_S: Final = 0.1

_wall, _perf_counter = time.time, time.perf_counter  # module names, so tests can pin them


def _load_c() -> Any:
    """The C line writer, or None (not built; `_purepy` refuses it to a pure-Python run)."""
    try:
        return importlib.import_module("proxy.telemetry._alogfmt")
    except ImportError:
        return None


_C: Final[Any] = _load_c()
_ESC: Final = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UNITS: Final = {"byte": 1, "bytes": 1, "kilobyte": 1 << 10, "kilobytes": 1 << 10, "megabyte": 1 << 20,
                 "megabytes": 1 << 20, "gigabyte": 1 << 30, "gigabytes": 1 << 30}  # fmt: skip
_PERIOD_S: Final = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}


def _escape(value: bytes) -> bytes:
    """Apache's escaping: `"` and `\\` backslashed, other bytes outside printable
    ASCII as `\\xhh`, so a line is always one line and one field per quote pair."""

    def one(m: re.Match[bytes]) -> bytes:
        b = m.group(0)
        return b"\\" + b if b in (b'"', b"\\") else b"\\x%02x" % b[0]

    return _ESC.sub(one, value)


# combined: `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"` (with the body bytes
# a number, as nginx prints them), then the service, the client and the duration in ms.
_JSON_LINE: Final = (
    b'{"time":"%s","router":%s,"remote":"%s","method":%s,"uri":%s,"protocol":"HTTP/%s","status":%d,'
    b'"bytes":%d,"referer":%s,"user_agent":%s,"service":%s,"client":%s,"duration_ms":%.3f,"failure":%s}\n'
)
_NULL: Final = b"null"
_SMALL: Final = tuple(b"%d" % i for i in range(1000))  # the text of small numbers, made once
_FRAC3: Final = tuple(b"%03d" % i for i in range(1000))  # three decimals

#: One request's fields, as `LinesPy` keeps them: (start, peer, method, target, version,
#: user agent, referer, status, body bytes, service, client, end, failure). Typed, so the
#: compiled loops below take it apart without generic unpacking.
Entry = tuple[float, str, bytes, bytes, bytes, bytes, bytes, int, int, bytes, bytes, float, "str | None"]


def entry_py(rec: tuple[Any, ...], status: int, nbytes: int, service: bytes, client: bytes, end: float,
             failure: str | None) -> Entry:  # fmt: skip
    """A request's entry from its record (`observe.RECORD`: start, peer, method, target,
    version, header list) and what it ended with: atoms only, the User-Agent and Referer
    (the last of each) taken from the header list, which the entry does not keep alive.
    The C `Lines.add` reads the record the same way."""
    ua = ref = b"-"
    headers: list[tuple[bytes, bytes]] = rec[5]  # observe.RECORD: the header list
    for h in headers:
        n = h[0]
        if n == b"user-agent":
            ua = h[1]
        elif n == b"referer":
            ref = h[1]
    return (rec[0], rec[1], rec[2], rec[3], rec[4], ua, ref, status, nbytes, service, client, end, failure)


class LinesPy:
    """`_alogfmt.Lines` in Python (the same methods and counts), for a run without the
    extension: `add` keeps the request's entry, `take` formats what is kept in one batch
    (`format_py` checks a whole batch for bytes to escape at once)."""

    __slots__ = ("entries", "texts", "count", "limit", "dropped", "offset", "_format")

    def __init__(self, fmt: Callable[[list[Entry], float], bytes]) -> None:
        self.entries: list[Entry] = []
        self.texts: list[bytes] = []
        self.count = 0  # lines held
        self.limit = MAX_PENDING  # past it a line is dropped and counted
        self.dropped = 0
        self.offset = 0.0  # perf_counter() time + offset = wall-clock time
        self._format = fmt

    def add(self, rec: tuple[Any, ...], status: int, nbytes: int, service: bytes, client: bytes, end: float,
            failure: str | None) -> None:  # fmt: skip
        if self.count >= self.limit:
            self.dropped += 1
            return
        self.entries.append(entry_py(rec, status, nbytes, service, client, end, failure))
        self.count += 1

    def extend(self, text: bytes) -> None:
        self._settle()
        self.texts.append(text)
        self.count += 1

    def take(self) -> bytes:
        self._settle()
        text = b"".join(self.texts)
        self.texts = []
        self.count = 0
        return text

    def _settle(self) -> None:
        if self.entries:
            self.texts.append(self._format(self.entries, self.offset))
            self.entries = []


def _json_raw(value: bytes) -> bytes:
    """A JSON string of bytes that need no escaping (printable ASCII without `"` or `\\`)."""
    return b'"%s"' % value


def _json_escaped(value: bytes) -> bytes:
    """A JSON string of any bytes, read as Latin-1, non-ASCII escaped (`\\u00e9`)."""
    return json.encoder.encode_basestring_ascii(value.decode("latin-1")).encode("ascii")



class _Clock:
    """`[10/Oct/2000:13:55:36 +0000]` for a time, formatted once per second."""

    __slots__ = ("_sec", "_text")

    def __init__(self) -> None:
        self._sec = -1
        self._text = b""

    def stamp(self, t: float) -> bytes:
        sec = int(t)
        if sec != self._sec:
            g = time.gmtime(sec)
            self._sec = sec
            self._text = b"%02d/%s/%04d:%02d:%02d:%02d +0000" % (
                g.tm_mday, _MONTHS[g.tm_mon - 1].encode(), g.tm_year, g.tm_hour, g.tm_min, g.tm_sec)  # fmt: skip
        return self._text


class _Writer:
    """The file, written from one thread: append (or truncate once at start), and roll
    by size or by period, keeping `rotate_count` rolled files (-1: all)."""

    def __init__(self, path: str, append: bool, roll_policy: str, rotate_count: int) -> None:
        self.path = path
        self.rotate_count = rotate_count
        self.max_bytes: int | None = None
        self.period_s: int | None = None
        if roll_policy in _PERIOD_S:
            self.period_s = _PERIOD_S[roll_policy]
        elif roll_policy != "never":
            n, _, unit = roll_policy.partition(".")
            self.max_bytes = int(n) * _UNITS[unit]
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
        if not append:  # truncated once; from here on every write appends
            os.close(self.fd)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.size = os.fstat(self.fd).st_size
        self.period_end = self._period_end(time.time()) if self.period_s else None

    def _period_end(self, now: float) -> float:
        assert self.period_s is not None
        return (now // self.period_s + 1) * self.period_s

    def write(self, data: bytes) -> None:
        if self.period_end is not None and time.time() >= self.period_end:
            self.roll()
        limit = self.max_bytes
        while limit is not None and self.size + len(data) > limit:
            # Fill the file up to the limit with whole lines, roll, go on with the rest.
            cut = data.rfind(b"\n", 0, limit - self.size) + 1
            if cut <= 0:
                if self.size:  # not even one line fits: roll first
                    self.roll()
                    continue
                cut = data.find(b"\n") + 1 or len(data)  # one line longer than the limit
            self._write(data[:cut])
            data = data[cut:]
            self.roll()
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def roll(self) -> None:
        """Rename the file to `<path>.<UTC time>` and start a new one."""
        os.close(self.fd)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        target = f"{self.path}.{stamp}"
        n = 1
        while os.path.exists(target):
            target = f"{self.path}.{stamp}.{n}"
            n += 1
        os.replace(self.path, target)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = 0
        if self.period_end is not None:
            self.period_end = self._period_end(time.time())
        if self.rotate_count >= 0:
            rolled = sorted(glob.glob(glob.escape(self.path) + ".*"), key=os.path.getmtime)
            for old in rolled[: max(0, len(rolled) - self.rotate_count)]:
                try:
                    os.remove(old)
                except OSError:
                    pass

    def close(self) -> None:
        os.close(self.fd)


class AccessLog:
    """One router's access log. `add` (or `observe.log_request`, inline) is the whole
    per-request cost."""

    __slots__ = ("sink", "add_line", "max_pending", "names", "last_bound", "last_client", "path", "json", "router", "lines", "write_errors", "_writer", "_clock",
                 "_loop", "_timer", "_queue", "_runner", "_sent", "_closed", "_iso", "_router_json")  # fmt: skip

    def __init__(self, path: str, *, fmt: str = "combined", router: str = "", roll_policy: str = "never",
                 append: bool = True, rotate_count: int = -1, max_pending: int = MAX_PENDING) -> None:  # fmt: skip
        self.max_pending = max_pending
        self.names: dict[int, tuple[Any, bytes]] = {}  # id(Bound) -> (Bound, printed id): see client_name
        self.last_bound: object = None  # the client of the last request logged, and its printed id
        self.last_client = b"-"
        self.path = path
        self.json = fmt == "json"
        self.router = router
        self.lines = 0  # written
        self.write_errors = 0
        self._writer = _Writer(path, append, roll_policy, rotate_count)
        self._clock = _Clock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Text for the writer thread (started with the first), and the lines handed to it:
        # `_sent - lines - write_errors` are on their way to the file.
        self._queue: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()
        self._runner: threading.Thread | None = None
        self._sent = 0
        self._closed = False
        self._iso = (-1, b"")
        self._router_json = json.encoder.encode_basestring_ascii(router).encode("ascii")
        # The lines' buffer: the C writer where it is built, else its Python twin.
        self.sink: Any = _C.Lines(self.json, self._router_json) if _C is not None else LinesPy(self.format_py)
        self.sink.limit = max_pending
        self.sink.offset = _wall() - _perf_counter()
        #: What the request path calls (the buffer's bound `add`: one call from compiled code).
        self.add_line: Callable[[tuple[Any, ...], int, int, bytes, bytes, float, str | None], None] = self.sink.add

    @property
    def dropped(self) -> int:
        """Lines not written: MAX_PENDING lines were held already."""
        n: int = self.sink.dropped
        return n

    # -- the request path --------------------------------------------------------------------

    def client_name(self, bound: Any) -> bytes:
        """A bound client's printed id, remembered by identity (a few clients per router;
        `observe.log_request` checks `last_bound` first, the client of the last request)."""
        hit = self.names.get(id(bound))
        if hit is not None and hit[0] is bound:
            text = hit[1]
        else:
            text = bound.id.show().encode("latin-1")
            if len(self.names) > 4096:
                self.names.clear()
            self.names[id(bound)] = (bound, text)
        self.last_bound = bound
        self.last_client = text
        return text

    def add(self, rec: tuple[Any, ...], status: int, nbytes: int, service: bytes, client: bytes, end: float,
            failure: str | None) -> None:  # fmt: skip
        """One request's line: its record (`observe.RECORD`), what it ended with, `end` a
        perf_counter() time (`observe.log_request` does the same inline). Dropped and
        counted past the bound."""
        try:
            self.add_line(rec, status, nbytes, service, client, end, failure)
        except (TypeError, ValueError, OverflowError):
            self.add_py(rec, status, nbytes, service, client, end, failure)

    def add_py(self, rec: tuple[Any, ...], status: int, nbytes: int, service: bytes, client: bytes, end: float,
               failure: str | None) -> None:  # fmt: skip
        """A line the C writer refused (a field of another type, a number out of its
        range; it writes nothing then): formatted in Python, the same bytes, in its place.
        One Python cannot write either (a time no calendar holds) is dropped and counted:
        the request it describes is not failed for it."""
        sink = self.sink
        try:
            text = self.format_py([entry_py(rec, status, nbytes, service, client, end, failure)], sink.offset)
        except (TypeError, ValueError, OverflowError, UnicodeError):
            sink.dropped += 1
            return
        sink.extend(text)

    # -- the background ------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer = loop.call_later(FLUSH_S, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._closed or self._loop is None:
            return
        self.flush()
        self._timer = self._loop.call_later(FLUSH_S, self._tick)

    def flush(self) -> None:
        """Hand the text so far to the writer thread (one bytes object a flush), then set
        the buffer's bound for the next interval: MAX_PENDING lines, less those still on
        their way to the file (a stalled disk stops new lines, not old ones), and its
        clock offset."""
        sink = self.sink
        n: int = sink.count
        if n:
            text: bytes = sink.take()
            self._sent += n
            self._hand_off(text, n)
        sink.limit = self.max_pending - (self._sent - self.lines - self.write_errors)
        sink.offset = _wall() - _perf_counter()

    def _hand_off(self, text: bytes, n: int) -> None:
        if self._runner is None:
            self._runner = threading.Thread(target=self._run, name=f"access-log-{self.router}", daemon=True)
            self._runner.start()
        self._queue.put((text, n))

    def _run(self) -> None:
        """The writer thread: texts in order, until None. Only this thread counts `lines`
        and `write_errors` (and the loop only `_sent`), so no count needs a lock."""
        q = self._queue
        writer = self._writer
        while True:
            item = q.get()
            if item is None:
                break
            text, n = item
            try:
                writer.write(text)
            except OSError as exc:
                self.write_errors += n
                log.warning("access log %s: %d lines not written: %s", self.path, n, exc)
            else:
                self.lines += n

    def format_py(self, batch: list[Entry], offset: float) -> bytes:
        """The lines of a batch of entries, `offset` turning their perf_counter() times
        into wall-clock time: the reference for the C writer, and the formatter where it
        is not built (`LinesPy`). It keeps to locals, an inline memo and one escape check per batch
        (measured with callgrind: bench/micro/wire_h1.py accesslog)."""
        if not batch:
            return b""
        if self.json:
            return self._json_lines(batch, offset)
        # One escape check for the whole batch, in C: the targets, user agents, referers,
        # services and clients joined (a check per line was a fifth of the cost); a batch
        # with something to escape (rare) is formatted escaping field by field.
        columns = list(zip(*batch, strict=True))
        clean = _ESC.search(b" ".join(chain(columns[3], columns[5], columns[6], columns[9], columns[10]))) is None
        # The line is one join of its pieces, numbers from tables of their text (a bytes
        # %-format per line parsed twelve conversions each time: half the cost).
        esc = _escape
        stamp = self._clock.stamp
        small, frac3 = _SMALL, _FRAC3
        peers: dict[str, bytes] = {}
        last_sec, stamp_text = -1, b""
        out: list[bytes] = []
        for t0, peer, method, target, version, ua, ref, status, nbytes, service, client, t1, _ in batch:
            if not clean:
                target, ua, ref, service, client = esc(target), esc(ua), esc(ref), esc(service), esc(client)
            t = t0 + offset
            sec = int(t)
            if sec != last_sec:
                last_sec, stamp_text = sec, stamp(t)
            p = peers.get(peer)
            if p is None:
                p = peers[peer] = peer.encode("latin-1") if peer else b"-"
            us = int((t1 - t0) * 1_000_000 + 0.5)  # the duration in ms with 3 decimals, as %.3f
            ms = us // 1000
            out.extend((
                p, b" - - [", stamp_text, b'] "', method, b" ", target, b" HTTP/",
                b"2.0" if version == b"2" else version, b'" ',
                small[status] if 0 <= status < 1000 else b"%d" % status, b" ",
                small[nbytes] if 0 <= nbytes < 1000 else b"%d" % nbytes, b' "', ref, b'" "', ua, b'" "',
                service, b'" "', client, b'" ', small[ms] if 0 <= ms < 1000 else b"%d" % ms, b".", frac3[us % 1000], b"\n",
            ))  # fmt: skip
        return b"".join(out)

    def _json_lines(self, batch: list[Entry], offset: float) -> bytes:
        # One bytes template per line (bytes % is one C call; f-strings compile to a
        # str.format per line under mypyc, five times the cost). The fields go in as
        # bytes: quoted as they are when no field of the batch needs JSON escaping (one
        # search, as for combined lines), else through the C string encoder.
        columns = list(zip(*batch, strict=True))
        clean = _ESC.search(b" ".join(chain(columns[2], columns[3], columns[5], columns[6], columns[9], columns[10]))) is None
        q = _json_raw if clean else _json_escaped
        router = self._router_json
        fmt = _JSON_LINE
        out = []
        for t0, peer, method, target, version, ua, ref, status, nbytes, service, client, t1, fclass in batch:
            out.append(fmt % (
                self._iso_time(t0 + offset), router, peer.encode("latin-1"), q(method), q(target),
                b"2.0" if version == b"2" else version, status, nbytes,
                q(ref) if ref != b"-" else _NULL, q(ua) if ua != b"-" else _NULL,
                q(service) if service != b"-" else _NULL, q(client) if client != b"-" else _NULL,
                (t1 - t0) * 1000, _json_escaped(fclass.encode("latin-1")) if fclass is not None else _NULL,
            ))  # fmt: skip
        return b"".join(out)

    def _iso_time(self, t: float) -> bytes:
        sec = int(t)
        if self._iso[0] != sec:
            self._iso = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode("ascii"))
        return b"%s.%03dZ" % (self._iso[1], int((t - sec) * 1000))

    async def close(self) -> None:
        """Write every line held, then close the file (drain, reload). A request still in
        flight on a router snapshot that had this log adds its line to the buffer after
        that: `hand_over` gives those lines, and later ones, to the log that replaces this
        one on a reload."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()  # every line held, whatever the bound
        thread = self._runner
        if thread is not None:
            self._queue.put(None)
            if self._loop is not None:
                await self._loop.run_in_executor(None, thread.join)
            else:
                thread.join()
        try:
            self._writer.close()
        except OSError:
            pass

    def hand_over(self, successor: AccessLog | None) -> None:
        """After `close`, on a reload: the lines requests added since (in this log's format)
        are written by `successor` ahead of its own, and every later line goes to it (in its
        format and file). With no successor (the router is gone) they are dropped and
        counted, and so is every later one."""
        sink = self.sink
        n: int = sink.count
        if successor is None:
            sink.take()
            sink.dropped += n
            sink.limit = 0
            return
        if n:
            successor._sent += n
            successor._hand_off(sink.take(), n)
        self.sink, self.add_line = successor.sink, successor.add_line
