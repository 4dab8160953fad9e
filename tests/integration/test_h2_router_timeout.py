"""The router's timeoutMs on HTTP/2 streams. One connection keeps the deadlines of its
streams in a queue with a single timer (wire/h2.py `router_deadline`): a stream answered
in time leaves the queue, the ones behind a slow stream still time out in their turn, and
the connection goes on serving. Every wait is on an event, bounded only so a hang fails."""

from __future__ import annotations

import asyncio
from typing import Any

from .grpc_helpers import H2Client, h2_router_yaml
from .harness import proxy_port, start_proxy

WAIT_S = 10.0


async def _upstream() -> tuple[asyncio.AbstractServer, int, list[asyncio.StreamWriter]]:
    """HTTP/1.1: `/fast` is answered at once; `/slow` is never answered (its connection is
    held until the test ends)."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /slow"):
                    held.append(writer)
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfast")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], held


def _request(c: H2Client, path: bytes) -> int:
    return c.start([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", path)])


def test_streams_behind_a_slow_one_time_out_in_turn_and_answered_ones_do_not(run: Any) -> None:
    async def main() -> None:
        server, port, held = await _upstream()
        yaml = h2_router_yaml(
            f"/svc => /$/inet/127.0.0.1/{port}", upstream="http",
            identifier="    kind: io.l5d.header.token\n", extra="  timeoutMs: 300\n",
        )  # fmt: skip
        rt = await start_proxy(yaml)
        c = await H2Client.connect(proxy_port(rt))
        slow1 = _request(c, b"/slow")
        fast = [_request(c, b"/fast") for _ in range(5)]  # queued behind slow1, answered in time
        for sid in fast:
            await asyncio.wait_for(c.responses[sid].done.wait(), WAIT_S)
            assert c.responses[sid].status == 200 and c.responses[sid].body == b"fast"
        slow2 = _request(c, b"/slow")  # queued after the answered ones
        for sid in (slow1, slow2):
            await asyncio.wait_for(c.responses[sid].done.wait(), WAIT_S)
            r = c.responses[sid]
            assert r.status == 503 and b"exceeded 300 ms" in r.body, (r.status, r.body)
        # The queue emptied; the connection and its timer go on.
        r = await asyncio.wait_for(c.request(b"GET", b"/fast", b"web"), WAIT_S)
        assert r.status == 200
        slow3 = _request(c, b"/slow")
        await asyncio.wait_for(c.responses[slow3].done.wait(), WAIT_S)
        assert c.responses[slow3].status == 503
        await c.close()
        await rt.drain()
        for w in held:
            w.close()
        server.close()

    run(main())
