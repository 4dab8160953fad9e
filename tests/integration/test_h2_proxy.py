"""HTTP/2 through the proxy: h2c with prior knowledge and TLS with ALPN, h2 <-> h1
translation both ways (RFC 9113 §8), flow control that forwards, and misbehaving
peers answered with the right RST_STREAM / GOAWAY."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import grpc
import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import HeadersFrame

from proxy.codec.h2 import REFUSED_STREAM, SEND_HIGH_WATER

from .grpc_helpers import (
    Greeter,
    GrpcServer,
    H2BackendServer,
    H2Client,
    channel,
    h2_router_yaml,
    make_cert,
    unary,
)
from .h2_raw import END_STREAM, RawH2, request_fields, rst
from .harness import Backend, Client, proxy_port, start_proxy


def _token_router(dtab: str, **kw: Any) -> str:
    return h2_router_yaml(dtab, identifier="    kind: io.l5d.header.token\n", **kw)


def _fields(resp: Any) -> dict[str, str]:
    raw = resp.header(b"x-fields")
    return {n: v for n, v in json.loads(raw)}


def test_h2c_prior_knowledge_to_an_http1_backend(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(_token_router(f"/svc/web => /$/inet/127.0.0.1/{web.port}", upstream="http"))
        c = await H2Client.connect(proxy_port(rt))
        r = await c.request(b"GET", b"/hello?x=1", b"web", [(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"te", b"trailers")])
        assert r.status == 200 and r.body == b"web GET /hello?x=1"
        seen = web.seen[0]
        assert seen.header("host") == "web"
        assert seen.header("cookie") == "a=1; b=2"  # RFC 9113 §8.2.3: one field for HTTP/1.1
        assert seen.header("te") is None
        assert seen.header("l5d-dst-service") == "/svc/web"
        # bodies: with and without content-length (the latter is chunked to HTTP/1.1)
        r = await c.request(b"POST", b"/p", b"web", [(b"content-length", b"5"), (b"x-respond", b"echo")], b"hello")
        assert r.body == b"hello"
        r = await c.request(b"POST", b"/q", b"web", [(b"x-respond", b"echo")], b"chunky")
        assert r.body == b"chunky"
        assert web.seen[2].header("transfer-encoding") == "chunked"
        # a response without content-length (close-delimited upstream) still ends the stream
        r = await c.request(b"GET", b"/c", b"web", [(b"x-respond", b"chunked")])
        assert r.status == 200 and r.body == b"web GET /c"
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_http1_client_to_an_h2_backend_with_trailers(run: Any) -> None:
    async def main() -> None:
        be = await H2BackendServer("h2web").start()
        yaml = (
            "routers:\n- protocol: http\n  label: h1\n"
            f"  dtab: \"/svc/web => /$/inet/127.0.0.1/{be.port}\"\n"
            "  client:\n    protocol: h2\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        )
        rt = await start_proxy(yaml)
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/a", {"Host": "web", "Connection": "keep-alive"})
        assert r.status == 200 and r.body == b"h2web GET /a"
        fields = dict((n.encode(), v.encode()) for n, v in json.loads(r.header("x-fields") or "[]"))
        assert fields[b":authority"] == b"web" and fields[b"te"] == b"trailers"
        assert b"host" not in fields and b"connection" not in fields
        r = await c.request("POST", "/b", {"Host": "web", "x-respond": "trailers"}, b"body")
        assert r.status == 200 and r.header("transfer-encoding") == "chunked"
        r = await c.request("POST", "/e", {"Host": "web", "x-respond": "echo"}, b"echo me")
        assert r.body == b"echo me"
        assert be.connections == 1  # one multiplexed upstream connection
        await c.close()
        await rt.drain()
        await be.close()

    run(main())


def test_resets_travel_both_ways(run: Any) -> None:
    async def main() -> None:
        be = await H2BackendServer("h2web").start()
        rt = await start_proxy(_token_router(f"/svc/web => /$/inet/127.0.0.1/{be.port}"))
        c = await H2Client.connect(proxy_port(rt))
        r = await c.request(b"GET", b"/r", b"web", [(b"x-respond", b"reset")])
        assert r.reset == ErrorCodes.CANCEL  # the upstream's reset, passed on
        # the client resets a held stream: the upstream stream is cancelled
        sid = c.start([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/h"),
                       (b"x-respond", b"hold")])
        while len(be.seen) < 2:
            await asyncio.sleep(0.01)
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        c.flush()
        await asyncio.wait_for(be.reset_seen.wait(), 10)
        assert be.resets == [ErrorCodes.CANCEL]
        # the connection is still good
        r = await c.request(b"GET", b"/ok", b"web")
        assert r.status == 200 and r.body == b"h2web GET /ok"
        await c.close()
        await rt.drain()
        await be.close()

    run(main())


def test_malformed_requests_are_reset_and_never_forwarded(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(_token_router(f"/svc/web => /$/inet/127.0.0.1/{web.port}", upstream="http"))
        c = await H2Client.connect(proxy_port(rt))
        base = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/")]
        bad = [
            [(b"connection", b"close")],
            [(b"transfer-encoding", b"chunked")],
            [(b"te", b"gzip")],
            [(b"x-a", b"one\r\nx-injected: two")],
            [(b"x-a", b"nul\x00")],
            [(b"X-Upper", b"v")],
        ]
        for extra in bad:
            sid = c.start(base + extra)
            r = c.responses[sid]
            await r.done.wait()
            assert r.reset == ErrorCodes.PROTOCOL_ERROR, extra
        # content-length values int() would take but RFC 9110 §8.6 does not (1*DIGIT),
        # with as many body bytes as int() would read
        # (h2 itself may find it first and end the connection: refused either way)
        for value, body in ((b"1_0", b"x" * 10), (b"+5", b"12345"), (b"5 ", b"12345")):
            c2 = await H2Client.connect(proxy_port(rt))
            sid = c2.start([(b":method", b"POST"), *base[1:], (b"content-length", value)], body)
            r = c2.responses[sid]
            await r.done.wait()
            goaway = c2.goaway.error_code if c2.goaway is not None else None
            assert ErrorCodes.PROTOCOL_ERROR in (r.reset, goaway), value
            await c2.close()
        sid = c.start([(b":method", b"GET"), (b":authority", b"web"), (b":path", b"/")])  # no :scheme
        await c.responses[sid].done.wait()
        assert c.responses[sid].reset == ErrorCodes.PROTOCOL_ERROR
        assert web.seen == []
        r = await c.request(b"GET", b"/fine", b"web")
        assert r.status == 200
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_content_length_disagreeing_with_data_is_refused(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(_token_router(f"/svc/web => /$/inet/127.0.0.1/{web.port}", upstream="http"))
        c = await H2Client.connect(proxy_port(rt))
        c.start([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/"),
                 (b"content-length", b"3")], b"too long body")
        await asyncio.wait_for(c.closed.wait(), 10)
        assert c.goaway is not None and c.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        assert all(len(s.body) <= 3 for s in web.seen)  # never more than the declared length
        await c.close()
        c2 = await H2Client.connect(proxy_port(rt))  # the proxy is fine
        assert (await c2.request(b"GET", b"/", b"web")).status == 200
        await c2.close()
        await rt.drain()
        await web.close()

    run(main())


def test_bad_frames_and_oversized_header_lists_get_goaway(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(_token_router(f"/svc/web => /$/inet/127.0.0.1/{web.port}", upstream="http",
                                             extra="  maxHeadersKB: 8\n"))
        port = proxy_port(rt)
        # DATA on stream 0 is a connection error (RFC 9113 §6.1)
        c = await H2Client.connect(port)
        c.writer.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        await asyncio.wait_for(c.closed.wait(), 10)
        assert c.goaway is not None and c.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        await c.close()
        # a header block larger than SETTINGS_MAX_HEADER_LIST_SIZE
        c = await H2Client.connect(port)
        enc = hpack.Encoder()
        block = enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/"),
                            (b"x-big", b"v" * 20000)])
        f = HeadersFrame(1)
        f.data = block[:16384]
        f.flags.add("END_STREAM")
        frames = f.serialize()
        from hyperframe.frame import ContinuationFrame

        cf = ContinuationFrame(1)
        cf.data = block[16384:]
        cf.flags.add("END_HEADERS")
        c.writer.write(frames + cf.serialize())
        await asyncio.wait_for(c.closed.wait(), 10)
        assert c.goaway is not None
        assert c.goaway.error_code in (ErrorCodes.ENHANCE_YOUR_CALM, ErrorCodes.PROTOCOL_ERROR, ErrorCodes.COMPRESSION_ERROR)
        await c.close()
        assert web.seen == []
        c = await H2Client.connect(port)
        assert (await c.request(b"GET", b"/", b"web")).status == 200
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def test_stream_limit_exceeded(run: Any) -> None:
    async def main() -> None:
        be = await H2BackendServer("h2web").start()
        rt = await start_proxy(_token_router(f"/svc/web => /$/inet/127.0.0.1/{be.port}",
                                             server_extra="    maxConcurrentRequests: 2\n"))
        c = await H2Client.connect(proxy_port(rt))
        assert c.remote_max_streams == 2
        await c.close()
        # a third concurrent stream, sent raw (an h2 client would refuse to): refused
        # (RFC 9113 §5.1.2, §8.7), and the connection goes on
        raw = await RawH2.connect(proxy_port(rt))
        hold = request_fields(b"/h", extra=[(b"x-respond", b"hold")])
        await raw.send(raw.headers(1, hold) + raw.headers(3, hold) + raw.headers(5, request_fields(b"/3")))
        await raw.sync()
        assert raw.resets() == {5: REFUSED_STREAM}
        await raw.send(rst(1) + raw.headers(7, request_fields(b"/ok")))
        f = await raw.until(lambda f: f.sid == 7 and f.flags & END_STREAM)
        assert f is not None and raw.status(7) == 200
        assert raw.goaway() is None
        await raw.close()
        await rt.drain()
        await be.close()

    run(main())


def test_slow_consumer_slows_the_producer_and_memory_stays_bounded(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(_token_router(f"/svc/web => /$/inet/127.0.0.1/{web.port}", upstream="http"))
        c = await H2Client.connect(proxy_port(rt))
        size = 8 * 1024 * 1024
        # The client never credits the stream, so only its initial window (65535) flows.
        c._event = _no_ack(c)  # type: ignore[method-assign]
        sid = c.start([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/big"),
                       (b"x-respond", b"size:%d" % size)])
        r = c.responses[sid]
        while len(r.body) < 65535:
            await asyncio.sleep(0.01)
        server = next(iter(rt.listeners[0].connections))
        st = server._streams[sid]
        while not _upstream_paused(st._up):
            await asyncio.sleep(0.01)  # the upstream read is paused: the producer is slowed
        queued = server._codec.buffered(sid)
        assert queued <= SEND_HIGH_WATER + 256 * 1024
        assert len(r.body) == 65535
        # credit everything from now on: the rest flows, complete
        c._event = H2Client._event.__get__(c)  # type: ignore[method-assign]
        c.conn.acknowledge_received_data(65535, sid)
        c.conn.increment_flow_control_window(1 << 24)
        c.flush()
        await asyncio.wait_for(r.done.wait(), 60)
        assert len(r.body) == size and r.reset is None
        await c.close()
        await rt.drain()
        await web.close()

    run(main())


def _upstream_paused(handle: Any) -> bool:
    handle = getattr(handle, "handle", handle)  # the attempt's current exchange
    conn = getattr(handle, "conn", None) or handle  # a PendingH1 hands over to its connection
    return bool(conn is not None and conn._paused)


def _no_ack(c: H2Client) -> Any:
    import h2.events

    orig = H2Client._event.__get__(c)

    def event(ev: Any) -> None:
        if isinstance(ev, h2.events.DataReceived):
            c.responses[ev.stream_id].body += ev.data  # no acknowledge_received_data
            return
        orig(ev)

    return event


def _tls_yaml(dtab: str, cert: Path, key: Path, protocol: str = "h2", upstream: str = "http") -> str:
    return (
        f"routers:\n- protocol: {protocol}\n  label: tls\n"
        "  identifier:\n    kind: io.l5d.header.token\n"
        f"  dtab: {json.dumps(dtab)}\n"
        f"  client:\n    protocol: {upstream}\n"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
        f"    tls:\n      certPath: {cert}\n      keyPath: {key}\n"
    )


def test_tls_alpn_h2_and_http1_fallback_on_the_same_port(run: Any, tmp_path: Path) -> None:
    async def main() -> None:
        cert, key = make_cert(tmp_path)
        web = await Backend("web").start()
        rt = await start_proxy(_tls_yaml(f"/svc/web => /$/inet/127.0.0.1/{web.port}", cert, key))
        port = proxy_port(rt)
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        c = await H2Client.connect(port, ssl=ctx)
        assert c.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        r = await c.request(b"GET", b"/tls", b"web")
        assert r.status == 200 and r.body == b"web GET /tls"
        await c.close()
        ctx1 = ssl.create_default_context(cafile=str(cert))
        ctx1.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx1, server_hostname="localhost")
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        h1 = Client(reader, writer)
        r1 = await h1.request("GET", "/one", {"Host": "web"})
        assert r1.status == 200 and r1.body == b"web GET /one"
        await h1.close()
        await rt.drain()
        await web.close()

    run(main())


def test_grpc_over_tls_with_an_h2_tls_upstream(run: Any, tmp_path: Path) -> None:
    async def main() -> None:
        cert, key = make_cert(tmp_path)
        g = Greeter("tls-g")
        srv = GrpcServer(g, tls=(cert.read_bytes(), key.read_bytes()))
        yaml = (
            "routers:\n- protocol: h2\n  label: tls\n"
            "  identifier:\n    kind: io.l5d.header.path\n"
            f"  dtab: \"/svc/hello.Greeter => /$/inet/127.0.0.1/{srv.port}\"\n"
            "  client:\n    protocol: h2\n"
            f"    tls:\n      commonName: localhost\n      trustCerts:\n      - {cert}\n"
            "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
            f"    tls:\n      certPath: {cert}\n      keyPath: {key}\n"
        )
        rt = await start_proxy(yaml)
        ch = channel(proxy_port(rt), root_cert=cert.read_bytes())
        reply = await asyncio.get_running_loop().run_in_executor(
            None, lambda: unary(ch, "/hello.Greeter/SayHello")(b"secure", timeout=10))
        assert reply == b"tls-g:secure"
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_h2c_router_also_serves_http1_on_the_same_port(run: Any) -> None:
    async def main() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(_token_router(f"/svc/web => /$/inet/127.0.0.1/{web.port}", upstream="http"))
        h1 = await Client.connect(proxy_port(rt))
        r = await h1.request("GET", "/plain", {"Host": "web"})
        assert r.status == 200 and r.body == b"web GET /plain"
        await h1.close()
        await rt.drain()
        await web.close()

    run(main())


def test_grpc_client_through_h2_router_to_http1_backend_fails_cleanly(run: Any) -> None:
    """A gRPC call the proxy cannot complete is still a gRPC status (never 'unknown')."""

    async def main() -> None:
        rt = await start_proxy(h2_router_yaml("/svc/hello.Greeter => /$/inet/127.0.0.1/1", upstream="http"))
        ch = channel(proxy_port(rt))

        def call() -> grpc.RpcError:
            try:
                unary(ch, "/hello.Greeter/SayHello")(b"", timeout=10)
            except grpc.RpcError as exc:
                return exc
            raise AssertionError("succeeded")

        err = await asyncio.get_running_loop().run_in_executor(None, call)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
        await rt.drain()

    run(main())
