"""In-process parts for data-plane tests: an HTTP/1.1 backend that reports what it got,
a raw HTTP/1.1 client, and a proxy runtime started from YAML on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from config import load_text
from proxy.runtime import Runtime


async def read_fields(reader: asyncio.StreamReader) -> list[tuple[str, str]]:
    """A header block up to the empty line, names lower-cased (test peers only)."""
    headers = []
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b""):
            return headers
        n, _, v = h.decode("latin-1").partition(":")
        headers.append((n.strip().lower(), v.strip()))


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body (test peers only: trusts its input), trailers skipped."""
    body = b""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            return body
        body += await reader.readexactly(size)
        await reader.readline()


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    conn_id: int

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


@dataclass
class Backend:
    """A small HTTP/1.1 server (asyncio streams: a test peer, not the code under test).

    Answers `{name} {method} {target}` with Content-Length, or as the `x-respond`
    request header says: `chunked`, `close` (no length, close to end), `status:NNN`,
    `size:N` (a body of N bytes), `echo` (the request body back)."""

    name: str
    seen: list[Seen] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None
    port: int = 0
    connections: int = 0

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = self.connections
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = await read_fields(reader)
                hd = dict(headers)
                body = b""
                if "content-length" in hd:
                    body = await reader.readexactly(int(hd["content-length"]))
                elif hd.get("transfer-encoding") == "chunked":
                    body = await read_chunked(reader)
                self.seen.append(Seen(method, target, headers, body, conn_id))
                mode = hd.get("x-respond", "")
                status = 200
                payload = f"{self.name} {method} {target}".encode()
                if mode.startswith("status:"):
                    status = int(mode[7:])
                elif mode.startswith("size:"):
                    payload = b"x" * int(mode[5:])
                elif mode == "echo":
                    payload = body
                elif mode == "json":
                    payload = json.dumps({"headers": headers}).encode()
                head = f"HTTP/1.1 {status} OK\r\nx-backend: {self.name}\r\n"
                if status in (204, 304):
                    writer.write(head.encode() + b"\r\n")
                elif mode == "chunked":
                    writer.write(head.encode() + b"transfer-encoding: chunked\r\n\r\n")
                    for i in range(0, len(payload), 3):
                        part = payload[i : i + 3]
                        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    writer.write(b"0\r\n\r\n")
                elif mode == "close":
                    writer.write(head.encode() + b"connection: close\r\n\r\n" + payload)
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(head.encode() + f"content-length: {len(payload)}\r\n\r\n".encode() + (b"" if method == "HEAD" else payload))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    line = await reader.readline()
    if not line:
        raise ConnectionError("connection closed before a response")
    parts = line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers = await read_fields(reader)
    hd = dict(headers)
    body = b""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        pass
    elif "content-length" in hd:
        body = await reader.readexactly(int(hd["content-length"]))
    elif hd.get("transfer-encoding") == "chunked":
        body = await read_chunked(reader)
    else:
        body = await reader.read()
    return Response(status, headers, body)


class Client:
    """A raw keep-alive HTTP/1.1 client for tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def request(self, method: str = "GET", target: str = "/", headers: dict[str, str] | list[tuple[str, str]] | None = None, body: bytes | None = None) -> Response:
        hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if body is not None and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in hs):
            hs.append(("content-length", str(len(body))))
        raw = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hs) + "\r\n"
        self.writer.write(raw.encode("latin-1") + (body or b""))
        return await read_response(self.reader, method)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def start_proxy(yaml_text: str) -> Runtime:
    rt = Runtime(load_text(yaml_text))
    await rt.start()
    return rt


@contextlib.asynccontextmanager
async def proxied(yaml_for: Callable[[int], str], name: str = "b") -> AsyncIterator[tuple[Runtime, Backend]]:
    """A backend, and a proxy started on `yaml_for(backend port)`; both stopped at the end."""
    backend = await Backend(name).start()
    try:
        rt = await start_proxy(yaml_for(backend.port))
        try:
            yield rt, backend
        finally:
            await rt.drain()
    finally:
        await backend.close()


def router_yaml(dtab: str, *, extra: str = "", server_extra: str = "", identifier: str | None = None, label: str = "test") -> str:
    ident = f"  identifier:\n{identifier}\n" if identifier else ""
    return (
        "routers:\n"
        f"- protocol: http\n  label: {label}\n"
        f"  dtab: {json.dumps(dtab)}\n"
        f"{ident}{extra}"
        f"  servers:\n  - ip: 127.0.0.1\n    port: 0\n{server_extra}"
    )


def proxy_port(rt: Runtime, i: int = 0) -> int:
    addr: Any = rt.listeners[i].address
    return int(addr[1])
