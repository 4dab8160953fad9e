"""A raw HTTP/2 client for abuse tests: the test decides every byte it sends (frames built
by hand, header blocks by `hpack`), and reads back frames until a condition or the
server's close, bounded in time. No state machine of its own, so it can break every rule."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def rst(sid: int, code: int = 0x8) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">L", code))


def ping(opaque: bytes = b"abcdefgh") -> bytes:
    return frame(PING, 0, 0, opaque)


def request_fields(path: bytes = b"/", authority: bytes = b"web", method: bytes = b"GET",
                   extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", authority), (b":path", path),
            *(extra or [])]


@dataclass
class Frame:
    type: int
    flags: int
    sid: int
    payload: bytes

    def code(self) -> int:
        """The error code of a RST_STREAM or GOAWAY."""
        return int(struct.unpack_from(">L", self.payload, 4 if self.type == GOAWAY else 0)[0])

    def last_stream_id(self) -> int:
        return int(struct.unpack_from(">L", self.payload)[0]) & 0x7FFFFFFF


@dataclass
class RawH2:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    encoder: hpack.Encoder = field(default_factory=hpack.Encoder)
    decoder: hpack.Decoder = field(default_factory=hpack.Decoder)
    frames: list[Frame] = field(default_factory=list)
    closed: bool = False
    _buf: bytes = b""
    _pings: int = 0

    @classmethod
    async def connect(cls, port: int, *, preface: bytes = PREFACE + frame(SETTINGS, 0, 0)) -> RawH2:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        c = cls(r, w)
        if preface:
            await c.send(preface)
        return c

    def headers(self, sid: int, fields: list[tuple[bytes, bytes]], *, end_stream: bool = True,
                end_headers: bool = True) -> bytes:
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        return frame(HEADERS, flags, sid, self.encoder.encode(fields))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _read_more(self) -> bool:
        data = await self.reader.read(65536)
        if not data:
            self.closed = True
            return False
        buf = self._buf + data
        pos = 0
        while len(buf) - pos >= 9:
            hi, lo, ftype, flags, sid = struct.unpack_from(">BHBBL", buf, pos)
            n = (hi << 16) | lo
            if len(buf) - pos - 9 < n:
                break
            f = Frame(ftype, flags, sid & 0x7FFFFFFF, buf[pos + 9 : pos + 9 + n])
            pos += 9 + n
            self.frames.append(f)
        self._buf = buf[pos:]
        return True

    async def until(self, pred: object, timeout: float = 20.0) -> Frame | None:
        """Read until a frame matches `pred` (returned) or the server closes (None)."""
        assert callable(pred)
        seen = 0

        async def go() -> Frame | None:
            nonlocal seen
            while True:
                while seen < len(self.frames):
                    f = self.frames[seen]
                    seen += 1
                    if pred(f):
                        return f
                if self.closed or not await self._read_more():
                    return None

        return await asyncio.wait_for(go(), timeout)

    async def until_closed(self, timeout: float = 20.0) -> list[Frame]:
        """Everything up to the server's close (bounded: a hang fails the test)."""

        async def go() -> None:
            while not self.closed:
                try:
                    if not await self._read_more():
                        return
                except ConnectionError:
                    self.closed = True
                    return

        await asyncio.wait_for(go(), timeout)
        return self.frames

    async def sync(self) -> None:
        """Send PING and wait for its ACK: everything sent before was read and handled."""
        self._pings += 1
        opaque = struct.pack(">Q", self._pings)
        await self.send(ping(opaque))
        f = await self.until(lambda f: f.type == PING and f.flags & ACK and f.payload == opaque)
        assert f is not None, "closed before the PING ACK"

    def goaway(self) -> Frame | None:
        return next((f for f in self.frames if f.type == GOAWAY), None)

    def resets(self) -> dict[int, int]:
        return {f.sid: f.code() for f in self.frames if f.type == RST_STREAM}

    def status(self, sid: int) -> int | None:
        """The :status of `sid`'s response (our proxy's encoder indexes nothing, so a
        block decodes alone)."""
        for f in self.frames:
            if f.sid == sid and f.type == HEADERS:
                fields = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(f.payload, raw=True)]
                return int(dict(fields)[b":status"])
        return None

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
