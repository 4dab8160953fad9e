"""One real request per protocol before any load: does this target do this at all?

A target that cannot serve a scenario's protocol (dtabproxy without h2c, the aiohttp
proxy for gRPC) must show up as "n/a" with the reason, not as a crash or as a row of
zeros. These probes are blocking, bounded by a socket timeout, and speak just enough
HTTP/1.1 and HTTP/2 (via the `h2` library) to check the status and the body.
"""

from __future__ import annotations

import socket

GRPC_PATH = "/bench.Bench/Unary"
GRPC_REQUEST = b"\x00\x00\x00\x00\x00"  # an empty message: flag 0, length 0


class ProbeFailed(Exception):
    pass


def _recv_all_h1(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProbeFailed("connection closed before the response head")
        buf += chunk
        if len(buf) > 1 << 20:
            raise ProbeFailed("response head too large")
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ProbeFailed(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if b"content-length" in headers:
        n = int(headers[b"content-length"])
        while len(body) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ProbeFailed("connection closed inside the body")
            body += chunk
        body = body[:n]
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = _dechunk(sock, body)
    return int(parts[1]), headers, body


def _dechunk(sock: socket.socket, buf: bytes) -> bytes:
    out = b""
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ProbeFailed("connection closed inside a chunk")
            buf += chunk
        size_line, _, buf = buf.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(buf) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise ProbeFailed("connection closed inside a chunk")
            buf += chunk
        if size == 0:
            return out
        out += buf[:size]
        buf = buf[size + 2 :]


def h1(port: int, path: str = "/", *, headers: tuple[str, ...] = (), expect_len: int | None = None) -> str:
    """GET over HTTP/1.1; returns a one-line description, raises ProbeFailed."""
    extra = "".join(h + "\r\n" for h in headers)
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{extra}\r\n".encode("latin-1")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(req)
            status, _, body = _recv_all_h1(s)
    except OSError as exc:
        raise ProbeFailed(f"HTTP/1.1 GET {path}: {exc}") from None
    if status != 200:
        raise ProbeFailed(f"HTTP/1.1 GET {path}: status {status}: {body[:120]!r}")
    if expect_len is not None and len(body) != expect_len:
        raise ProbeFailed(f"HTTP/1.1 GET {path}: body of {len(body)} bytes, expected {expect_len}")
    return f"200, {len(body)} bytes"


def h2(port: int, *, grpc: bool = False) -> str:
    """One h2c request with prior knowledge (a GET, or a gRPC unary call)."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    if grpc:
        conn.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", b"bench"),
                (b":path", GRPC_PATH.encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ],
        )
        conn.send_data(sid, GRPC_REQUEST, end_stream=True)
    else:
        conn.send_headers(
            sid,
            [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"bench"), (b":path", b"/")],
            end_stream=True,
        )
    what = "gRPC unary" if grpc else "h2c GET"
    status = None
    fields: dict[bytes, bytes] = {}
    body = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(conn.data_to_send())
            ended = False
            while not ended:
                data = s.recv(65536)
                if not data:
                    raise ProbeFailed(f"{what}: connection closed (not an HTTP/2 server?)")
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    raise ProbeFailed(f"{what}: not HTTP/2: {exc}") from None
                for ev in events:
                    if isinstance(ev, h2.events.ResponseReceived):
                        for k, v in ev.headers:
                            fields[k] = v
                        status = fields.get(b":status")
                    elif isinstance(ev, h2.events.TrailersReceived):
                        for k, v in ev.headers:
                            fields[k] = v
                    elif isinstance(ev, h2.events.DataReceived):
                        body += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        raise ProbeFailed(f"{what}: stream reset (error {ev.error_code})")
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        raise ProbeFailed(f"{what}: GOAWAY (error {ev.error_code})")
                    if isinstance(ev, h2.events.StreamEnded):
                        ended = True
                out = conn.data_to_send()
                if out:
                    s.sendall(out)
    except OSError as exc:
        raise ProbeFailed(f"{what}: {exc}") from None
    if status != b"200":
        raise ProbeFailed(f"{what}: status {status!r}")
    if grpc:
        gs = fields.get(b"grpc-status")
        if gs != b"0":
            msg = fields.get(b"grpc-message", b"").decode("latin-1")
            raise ProbeFailed(f"{what}: grpc-status {gs!r} {msg}".rstrip())
        return "200, grpc-status 0"
    return f"200, {len(body)} bytes"
