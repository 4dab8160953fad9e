"""The built-in backend: a fixed answer as fast as one Python process can give it.

Used when nginx is not installed. HTTP/1.1 keep-alive on one port (`GET /64k` answers
64 KiB, anything else answers the small body); h2c with prior knowledge on another
port, which answers GETs with the small body and gRPC calls (`content-type:
application/grpc`) with an empty message and `grpc-status: 0`. It parses only what a
fixed answer needs (the end of the head, Content-Length, `Connection: close`), so it
must not be used as a correctness reference: it is a load sink, reported as such.

Run: python -m bench.backend --h1-port P [--h2-port Q] [--body-size N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

log = logging.getLogger(__name__)

SMALL_BODY = b"hello from the bench backend\n"
LARGE_BODY_BYTES = 64 * 1024
GRPC_EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"  # uncompressed flag + zero length (gRPC wire format)
_MAX_HEAD = 64 * 1024  # a head larger than this is not something a benchmark sends


def _response(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nServer: bench-backend\r\nContent-Type: text/plain\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class H1Backend(asyncio.Protocol):
    """One HTTP/1.1 connection: answer every complete request head, pipelined or not."""

    __slots__ = ("_transport", "_buf", "_skip", "_small", "_large")

    def __init__(self, small: bytes, large: bytes) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._skip = 0  # request body bytes still to discard
        self._small = small
        self._large = large

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        close = False
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            buf = buf[end + 4 :]
            # Request line first: "GET /64k HTTP/1.1".
            line_end = head.find(b"\r\n")
            line = head if line_end < 0 else head[:line_end]
            out.append(self._large if b" /64k" in line else self._small)
            lower = head.lower()
            cl = lower.find(b"\ncontent-length:")
            if cl >= 0:
                stop = lower.find(b"\r\n", cl + 1)
                n = int(lower[cl + 16 : stop if stop >= 0 else len(lower)].strip() or b"0")
                if n <= len(buf):
                    buf = buf[n:]
                else:
                    self._skip = n - len(buf)
                    buf = b""
            if b"\nconnection: close" in lower:
                close = True
                break
        if len(buf) > _MAX_HEAD:
            close = True
        self._buf = buf
        transport = self._transport
        assert transport is not None
        if out:
            transport.write(b"".join(out) if len(out) > 1 else out[0])
        if close:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


class H2Backend(asyncio.Protocol):
    """One h2c connection (prior knowledge). GET: the small body; gRPC: an empty message."""

    __slots__ = ("_transport", "_conn", "_grpc", "_body")

    def __init__(self, body: bytes) -> None:
        import h2.config
        import h2.connection

        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self._conn = h2.connection.H2Connection(config=cfg)
        self._transport: asyncio.Transport | None = None
        self._grpc: set[int] = set()
        self._body = body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        self._conn.initiate_connection()
        transport.write(self._conn.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        import h2.events
        import h2.exceptions

        conn = self._conn
        transport = self._transport
        assert transport is not None
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            transport.write(conn.data_to_send())
            transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                grpc = any(k == b"content-type" and v.startswith(b"application/grpc") for k, v in ev.headers)
                if grpc:
                    self._grpc.add(ev.stream_id)
                if ev.stream_ended is not None:
                    self._answer(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                if ev.flow_controlled_length:
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if ev.stream_ended is not None:
                    self._answer(ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                pass  # answered on the event that carried END_STREAM
            elif isinstance(ev, h2.events.ConnectionTerminated):
                transport.close()
        out = conn.data_to_send()
        if out:
            transport.write(out)

    def _answer(self, stream_id: int) -> None:
        conn = self._conn
        if stream_id in self._grpc:
            self._grpc.discard(stream_id)
            conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
            conn.send_data(stream_id, GRPC_EMPTY_MESSAGE)
            conn.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)
        else:
            body = self._body
            conn.send_headers(
                stream_id,
                [
                    (b":status", b"200"),
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                ],
            )
            conn.send_data(stream_id, body, end_stream=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(h1_port: int, h2_port: int | None, body_size: int | None) -> None:
    loop = asyncio.get_running_loop()
    small_body = SMALL_BODY if body_size is None else b"x" * body_size
    small, large = _response(small_body), _response(b"x" * LARGE_BODY_BYTES)
    servers = [
        await loop.create_server(
            lambda: H1Backend(small, large), "127.0.0.1", h1_port, backlog=4096, reuse_address=True
        )
    ]
    if h2_port is not None:
        servers.append(
            await loop.create_server(
                lambda: H2Backend(small_body), "127.0.0.1", h2_port, backlog=4096, reuse_address=True
            )
        )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("bench backend on h1 %d h2c %s", h1_port, h2_port)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.backend", description=__doc__)
    ap.add_argument("--h1-port", type=int, required=True)
    ap.add_argument("--h2-port", type=int)
    ap.add_argument("--body-size", type=int, help="size of the default body (default: a short line)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.h1_port, args.h2_port, args.body_size))
    else:
        uvloop.run(serve(args.h1_port, args.h2_port, args.body_size))


if __name__ == "__main__":
    main()
