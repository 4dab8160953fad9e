"""Span exporters: `io.l5d.otlp` (OTLP over HTTP with the JSON encoding, POST to
`/v1/traces`, as the OTLP/HTTP specification allows) and `io.l5d.zipkin` (Zipkin's v2
JSON, POST to `/api/v2/spans`).

The data plane only appends a finished span to a bounded list (`Exporter.add`; past
`maxQueueSize` a span is dropped and counted). One background task per exporter sends
batches of up to `maxBatchSize` every `flushIntervalMs`, or as soon as a batch is full,
over one keep-alive connection of its own. A batch the collector refuses or that
cannot be sent is counted as failed and dropped (spans are telemetry: never retried
at the expense of memory). Nothing here runs per request but `add`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from typing import Any, Final
from urllib.parse import urlsplit

from .tracing import Span

log = logging.getLogger(__name__)

SERVICE_NAME: Final = "dtabproxy"
_KIND_CLIENT_OTLP: Final = 3  # SPAN_KIND_CLIENT: the proxy's call to the destination
_STATUS_ERROR: Final = 2  # STATUS_CODE_ERROR


class _Poster:
    """POST to one URL over one keep-alive HTTP/1.1 connection (off the data path)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        u = urlsplit(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.authority = u.netloc
        self.timeout_s = timeout_s
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: bytes, content_type: str) -> int:
        """The response status. Raises OSError/TimeoutError when it cannot be sent."""
        async with asyncio.timeout(self.timeout_s):
            for attempt in (0, 1):
                fresh = self._conn is None
                if self._conn is None:
                    self._conn = await asyncio.open_connection(self.host, self.port)
                reader, writer = self._conn
                head = (
                    f"POST {self.path} HTTP/1.1\r\nHost: {self.authority}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nUser-Agent: dtabproxy\r\n\r\n"
                ).encode("latin-1")
                try:
                    writer.write(head + body)
                    await writer.drain()
                    return await self._response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    self.close()
                    if fresh or attempt:  # a stale keep-alive connection gets one more try
                        raise OSError(f"POST {self.authority}{self.path}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _response(self, reader: asyncio.StreamReader) -> int:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("connection closed before a response")
        status = int(line.split(b" ", 2)[1])
        length: int | None = None
        chunked = close = False
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.partition(b":")
            n = name.strip().lower()
            v = value.strip().lower()
            if n == b"content-length":
                length = int(v)
            elif n == b"transfer-encoding" and v == b"chunked":
                chunked = True
            elif n == b"connection" and v == b"close":
                close = True
        if chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                await reader.readexactly(size + 2) if size else None
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b""):
                        pass
                    break
        elif length:
            await reader.readexactly(length)
        elif length is None and status >= 200 and status not in (204, 304):
            await reader.read()  # the body ends when the connection does
            close = True
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


class Exporter:
    """A bounded span queue and the task that sends it in batches."""

    kind = ""
    content_type = "application/json"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.url = cfg.url
        self.sample_rate = cfg.sample_rate
        self.queue: list[Span] = []
        self.max_queue = cfg.max_queue
        self.max_batch = cfg.max_batch
        self.exported = 0  # spans the collector accepted
        self.dropped = 0  # spans never sent: the queue was full
        self.failed = 0  # spans sent in a batch that failed
        self._poster = _Poster(cfg.url, cfg.timeout_ms / 1000)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_warning = 0.0

    def add(self, span: Span) -> None:
        q = self.queue
        if len(q) < self.max_queue:
            q.append(span)
            if len(q) == self.max_batch and self._wake is not None:
                self._wake.set()  # a full batch goes now, not at the next interval
        else:
            self.dropped += 1

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name=f"{self.kind} exporter")

    async def _run(self) -> None:
        assert self._wake is not None
        interval = self.cfg.flush_interval_ms / 1000
        while True:
            if not self._closing:
                try:
                    await asyncio.wait_for(self._wake.wait(), interval)
                except TimeoutError:
                    pass
            self._wake.clear()
            while self.queue:
                await self.send_batch()
                if len(self.queue) < self.max_batch and not self._closing:
                    break  # a partial batch waits for the next interval
            if self._closing:
                return

    async def send_batch(self) -> None:
        batch = self.queue[: self.max_batch]
        del self.queue[: self.max_batch]
        if not batch:
            return
        try:
            status = await self._poster.post(self.encode(batch), self.content_type)
        except (OSError, TimeoutError) as exc:
            self._failed(len(batch), str(exc) or type(exc).__name__)
            return
        except asyncio.CancelledError:
            self.failed += len(batch)
            raise
        if 200 <= status < 300:
            self.exported += len(batch)
        else:
            self._failed(len(batch), f"{self.url} answered {status}")

    def _failed(self, n: int, why: str) -> None:
        self.failed += n
        now = time.monotonic()
        if now - self._last_warning >= 10.0:  # rate-limited: a collector down is one line per 10 s
            self._last_warning = now
            log.warning("%s exporter: %d spans not exported: %s (%d so far)", self.kind, n, why, self.failed)

    async def close(self) -> None:
        """Send what is queued (within the exporter's timeout), then stop."""
        task, self._task = self._task, None
        if task is not None and self._wake is not None:
            self._closing = True
            self._wake.set()
            try:
                await asyncio.wait_for(task, self.cfg.timeout_ms / 1000)
            except TimeoutError:  # the task was cancelled: what is left is lost, counted
                self.failed += len(self.queue)
                self.queue.clear()
        self._poster.close()

    def encode(self, spans: list[Span]) -> bytes:
        raise NotImplementedError


def _otlp_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}  # OTLP/JSON: 64-bit integers are decimal strings
    return {"stringValue": str(v)}


class OtlpExporter(Exporter):
    kind = "io.l5d.otlp"

    def encode(self, spans: list[Span]) -> bytes:
        out = []
        for s in spans:
            start_ns = int(s.start_s * 1e9)
            d: dict[str, Any] = {
                "traceId": f"{s.trace_hi or 0:016x}{s.trace_lo:016x}",
                "spanId": f"{s.span_id:016x}",
                "name": s.name,
                "kind": _KIND_CLIENT_OTLP,
                "startTimeUnixNano": str(start_ns),
                "endTimeUnixNano": str(start_ns + int(s.duration_s * 1e9)),
                "attributes": [{"key": k, "value": _otlp_value(v)} for k, v in s.attrs.items()],
                "status": {"code": _STATUS_ERROR, "message": s.error} if s.error else {},
            }
            if s.parent_id is not None:
                d["parentSpanId"] = f"{s.parent_id:016x}"
            out.append(d)
        body = {"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": SERVICE_NAME}}]},
            "scopeSpans": [{"scope": {"name": "dtabproxy"}, "spans": out}],
        }]}  # fmt: skip
        return json.dumps(body, separators=(",", ":")).encode()


class ZipkinExporter(Exporter):
    kind = "io.l5d.zipkin"

    def encode(self, spans: list[Span]) -> bytes:
        out = []
        for s in spans:
            d: dict[str, Any] = {
                "traceId": f"{s.trace_hi:016x}{s.trace_lo:016x}" if s.trace_hi is not None else f"{s.trace_lo:016x}",
                "id": f"{s.span_id:016x}",
                "kind": "CLIENT",
                "name": s.name.lower(),  # Zipkin's convention: lower-case span names
                "timestamp": int(s.start_s * 1e6),
                "duration": max(1, int(s.duration_s * 1e6)),
                "localEndpoint": {"serviceName": SERVICE_NAME},
                "tags": {k: str(v) for k, v in s.attrs.items()},
            }
            if s.parent_id is not None:
                d["parentId"] = f"{s.parent_id:016x}"
            if s.remote is not None:
                d["remoteEndpoint"] = _zipkin_endpoint(*s.remote)
            if s.error:
                d["tags"]["error"] = s.error
            out.append(d)
        return json.dumps(out, separators=(",", ":")).encode()


def _zipkin_endpoint(host: str, port: int) -> dict[str, Any]:
    """Zipkin takes IP literals in ipv4/ipv6 (a 400 for anything else): a DNS name goes
    in serviceName instead."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return {"serviceName": host, "port": port}
    return {"ipv6" if ip.version == 6 else "ipv4": str(ip), "port": port}


def make_exporter(cfg: Any) -> Exporter:
    return OtlpExporter(cfg) if cfg.kind == "io.l5d.otlp" else ZipkinExporter(cfg)
