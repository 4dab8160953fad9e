"""The proxy as users run it: a subprocess with a config file. SIGTERM drains without
losing an accepted request; a 1 GB upload and download stream in bounded memory."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from pathlib import Path

import pytest

from ..integration.harness import Client, read_response
from .proc import ProxyProcess

pytestmark = pytest.mark.e2e


def _config(dtab: str, admin: bool = False) -> str:
    head = "admin:\n  ip: 127.0.0.1\n  port: 0\n" if admin else ""
    return head + (
        "routers:\n- protocol: http\n  label: e2e\n"
        f"  dtab: {json.dumps(dtab)}\n"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    )


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    async def main() -> None:
        release = asyncio.Event()
        arrived = 0
        all_arrived = asyncio.Event()
        n = 5

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal arrived
            await reader.readuntil(b"\r\n\r\n")
            arrived += 1
            if arrived == n:
                all_arrived.set()
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
            await writer.drain()
            writer.close()

        backend = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = backend.sockets[0].getsockname()[1]
        with ProxyProcess(_config(f"/svc => /$/inet/127.0.0.1/{port}", admin=True), tmp_path) as p:
            await asyncio.get_running_loop().run_in_executor(None, p.wait_ready, 1, True)
            clients = [await Client.connect(p.ports["e2e"]) for _ in range(n)]
            pending = [asyncio.ensure_future(c.request("GET", f"/{i}", {"Host": "x"})) for i, c in enumerate(clients)]
            await asyncio.wait_for(all_arrived.wait(), 10)
            p.proc.send_signal(signal.SIGTERM)

            def ready_status() -> int:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{p.admin_port}/admin/ready", timeout=2) as r:
                        return int(r.status)
                except urllib.error.HTTPError as e:
                    return int(e.code)

            loop = asyncio.get_running_loop()
            for _ in range(200):  # bounded: the admin answers 503 once draining
                if await loop.run_in_executor(None, ready_status) == 503:
                    break
            else:
                raise AssertionError("proxy never reported draining")
            # New connections are refused while draining.
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", p.ports["e2e"])
            release.set()
            responses = await asyncio.gather(*pending)
            assert [r.status for r in responses] == [200] * n
            assert all(r.body == b"done" for r in responses)
            # It was sent SIGTERM above and exits by itself; p.stop() would send another,
            # which kills it (-15) if it lands after the loop restored the default handler.
            await loop.run_in_executor(None, p.proc.wait, 20)
            code = await loop.run_in_executor(None, p.stop)
            assert code == 0, p.output.decode(errors="replace")
        backend.close()

    asyncio.run(main())


GB = 1 << 30


def test_one_gigabyte_each_way_streams_in_bounded_memory(tmp_path: Path) -> None:
    async def main() -> None:
        received = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).lower()
                except asyncio.IncompleteReadError:
                    return
                await serve_one(head, reader, writer)

        async def serve_one(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal received
            if head.startswith(b"post"):
                left = GB
                while left:
                    chunk = await reader.read(min(left, 1 << 20))
                    if not chunk:
                        return
                    left -= len(chunk)
                    received += len(chunk)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % GB)
                block = b"x" * (1 << 20)
                for _ in range(GB >> 20):
                    writer.write(block)
                    await writer.drain()
            await writer.drain()

        backend = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = backend.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        with ProxyProcess(_config(f"/svc => /$/inet/127.0.0.1/{port}"), tmp_path) as p:
            await loop.run_in_executor(None, p.wait_ready, 1)
            base = p.rss_kb()
            reader, writer = await asyncio.open_connection("127.0.0.1", p.ports["e2e"])
            writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GB)
            block = b"y" * (1 << 20)
            for _ in range(GB >> 20):
                writer.write(block)
                await writer.drain()
            r = await read_response(reader)
            assert r.status == 200 and received == GB
            writer.write(b"GET /down HTTP/1.1\r\nHost: x\r\n\r\n")
            line = await reader.readline()
            assert line.startswith(b"HTTP/1.1 200")
            await reader.readuntil(b"\r\n\r\n")
            got = 0
            while got < GB:
                chunk = await reader.read(1 << 20)
                assert chunk
                got += len(chunk)
            assert got == GB
            peak = p.rss_kb("VmHWM")
            writer.close()
            assert p.stop() == 0
        backend.close()
        # Streaming, not buffering: the peak stays within tens of MB of the idle process
        # (water marks are 256 KiB per direction), nowhere near the 1 GB that went through.
        assert peak - base < 64 * 1024, f"RSS grew by {(peak - base) // 1024} MB"

    asyncio.run(main())
