"""gRPC through the proxy: real grpcio clients and servers on loopback, every call
shape, metadata, trailers, status details, deadlines, cancellation, large messages,
many streams on one connection, and the proxy's own failures as gRPC statuses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from .grpc_helpers import (
    DETAILS_BIN,
    AdService,
    Greeter,
    GrpcServer,
    channel,
    h2_router_yaml,
    stream_stream,
    stream_unary,
    unary,
    unary_stream,
)
from .harness import proxy_port, start_proxy

SAY = "/hello.Greeter/SayHello"


async def _in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def _proxy_for(*servers: GrpcServer, dtab: str | None = None, **kw: Any) -> Any:
    if dtab is None:
        dtab = f"/svc/hello.Greeter => /$/inet/127.0.0.1/{servers[0].port}"
    return await start_proxy(h2_router_yaml(dtab, **kw))


def test_unary_with_metadata_trailers_and_linkerd_headers(run: Any) -> None:
    async def main() -> None:
        g = Greeter("g1")
        srv = GrpcServer(g)
        rt = await _proxy_for(srv)
        ch = channel(proxy_port(rt))

        def call() -> Any:
            return unary(ch, SAY).with_call(b"world", metadata=[("x-echo", "e1"), ("x-trailer", "t1")], timeout=10)

        reply, c = await _in_thread(call)
        assert reply == b"g1:world"
        assert ("x-echo", "e1") in [(m.key, m.value) for m in c.initial_metadata()]
        assert ("x-trailer", "t1") in [(m.key, m.value) for m in c.trailing_metadata()]
        assert c.code() == grpc.StatusCode.OK
        md = g.seen_metadata[0]
        assert md["l5d-dst-service"] == "/svc/hello.Greeter"
        assert md["l5d-dst-client"] == f"/$/inet/127.0.0.1/{srv.port}"
        assert len(md["l5d-reqid"]) == 16 and "l5d-ctx-trace" in md
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_server_client_and_bidi_streaming(run: Any) -> None:
    async def main() -> None:
        srv = GrpcServer(Greeter("g1"))
        rt = await _proxy_for(srv)
        ch = channel(proxy_port(rt))

        def calls() -> tuple[Any, Any, Any]:
            streamed = list(unary_stream(ch, "/hello.Greeter/Count")(b"50:1000", timeout=10))
            total = stream_unary(ch, "/hello.Greeter/Sum")(iter([b"a" * 100] * 30), timeout=10)
            echoed = list(stream_stream(ch, "/hello.Greeter/Echo")(iter([b"x", b"y", b"z"]), timeout=10))
            return streamed, total, echoed

        streamed, total, echoed = await _in_thread(calls)
        assert [m[: m.index(b":")] for m in streamed] == [b"%d" % i for i in range(50)]
        assert all(len(m) == 1000 for m in streamed)
        assert total == b"3000"
        assert echoed == [b"g1:x", b"g1:y", b"g1:z"]
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_status_code_message_and_details_bin_pass_through(run: Any) -> None:
    async def main() -> None:
        srv = GrpcServer(Greeter("g1"))
        rt = await _proxy_for(srv)
        ch = channel(proxy_port(rt))

        def call() -> grpc.RpcError:
            try:
                unary(ch, SAY)(b"status:9:precondition \xc3\xa9 failed", timeout=10)
            except grpc.RpcError as exc:
                return exc
            raise AssertionError("expected an error")

        err = await _in_thread(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == "precondition é failed"
        trailers = {m.key: m.value for m in err.trailing_metadata()}
        assert trailers["grpc-status-details-bin"] == DETAILS_BIN
        assert "l5d-err" not in trailers  # the upstream's answer, not the proxy's
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_large_messages_both_ways(run: Any) -> None:
    async def main() -> None:
        srv = GrpcServer(Greeter("g1"))
        rt = await _proxy_for(srv)
        ch = channel(proxy_port(rt))
        size = 5 * 1024 * 1024

        def calls() -> tuple[bytes, bytes, list[bytes]]:
            down = unary(ch, "/hello.Greeter/Big")(b"%d" % size, timeout=30)
            up = stream_unary(ch, "/hello.Greeter/Sum")(iter([b"u" * size, b"v" * size]), timeout=30)
            both = list(stream_stream(ch, "/hello.Greeter/Echo")(iter([b"e" * size]), timeout=30))
            return down, up, both

        down, up, both = await _in_thread(calls)
        assert down == b"b" * size
        assert up == b"%d" % (2 * size)
        assert both == [b"g1:" + b"e" * size]
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_many_concurrent_streams_share_one_upstream_connection(run: Any) -> None:
    async def main() -> None:
        g = Greeter("g1")
        srv = GrpcServer(g)
        rt = await _proxy_for(srv)
        ch = channel(proxy_port(rt))

        def calls() -> list[bytes]:
            futs = [unary(ch, "/hello.Greeter/Headers").future(b"", metadata=[("x-n", str(i))], timeout=20) for i in range(64)]
            return [f.result() for f in futs]

        replies = await _in_thread(calls)
        seen = sorted(int(dict(line.split("=", 1) for line in r.decode().splitlines())["x-n"]) for r in replies)
        assert seen == list(range(64))
        # 64 concurrent calls, one proxy -> backend connection (the peer's limit is 100+).
        assert len(g.peers) == 64 and len(set(g.peers)) == 1
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_grpc_timeout_is_the_deadline_and_is_rewritten_with_the_time_left(run: Any) -> None:
    async def main() -> None:
        g = Greeter("g1")
        srv = GrpcServer(g)
        rt = await _proxy_for(srv, extra="  timeoutMs: 60000\n")
        ch = channel(proxy_port(rt))

        def calls() -> tuple[Any, grpc.RpcError]:
            ok = unary(ch, SAY)(b"x", timeout=8)
            try:
                unary(ch, "/hello.Greeter/Hang")(b"", timeout=0.5)
            except grpc.RpcError as exc:
                return ok, exc
            raise AssertionError("expected DEADLINE_EXCEEDED")

        ok, err = await _in_thread(calls)
        assert ok == b"g1:x"
        left = g.seen_timeouts[0]
        # The server saw a deadline, not more than ours: the proxy re-writes grpc-timeout
        # rounded down (codec/grpc.py), but grpcio's time_remaining() carries its own timer
        # slack of a few ms, so the bound allows that much and no more.
        assert left is not None and 0 < left <= 8.1
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The proxy cancelled the upstream stream when the deadline passed (if the handler
        # had started by then: on a loaded machine the deadline can win that race).
        if g.hang_started.is_set():
            assert await _in_thread(lambda: g.cancelled.wait(10))
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_a_server_stream_longer_than_the_router_timeout_completes_within_its_deadline(run: Any) -> None:
    async def main() -> None:
        g = Greeter("g1")
        srv = GrpcServer(g)
        # timeoutMs bounds the wait for the response head only; the call's own deadline
        # (grpc-timeout, 8 s) bounds the stream.
        rt = await _proxy_for(srv, extra="  timeoutMs: 300\n")
        ch = channel(proxy_port(rt))
        msgs = await _in_thread(lambda: list(unary_stream(ch, "/hello.Greeter/Drip")(b"5:200", timeout=8)))
        assert msgs[:5] == [b"0", b"1", b"2", b"3", b"4"]
        assert float(msgs[5]) > 0.3  # it did outlive the router timeout
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_unavailable_after_initial_metadata_is_retried_under_grpc_default(run: Any) -> None:
    async def main() -> None:
        g = Greeter("g1")
        g.flaky = 1
        srv = GrpcServer(g)
        rt = await _proxy_for(srv, extra="  service:\n    responseClassifier: {kind: io.l5d.h2.grpc.default}\n")
        ch = channel(proxy_port(rt))
        # The failure is not trailers-only: the proxy holds the answer for its trailers
        # (classificationTimeoutMs, responseBytes) and retries UNAVAILABLE.
        assert await _in_thread(lambda: unary(ch, "/hello.Greeter/Flaky")(b"x", timeout=10)) == b"g1:x"
        assert g.flaky_calls == 2
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_router_timeout_answers_deadline_exceeded_from_the_proxy(run: Any) -> None:
    async def main() -> None:
        g = Greeter("g1")
        srv = GrpcServer(g)
        rt = await _proxy_for(srv, extra="  timeoutMs: 1000\n")
        ch = channel(proxy_port(rt))

        def call() -> grpc.RpcError:
            try:
                unary(ch, "/hello.Greeter/Hang")(b"", timeout=20)
            except grpc.RpcError as exc:
                return exc
            raise AssertionError("expected an error")

        err = await _in_thread(call)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        trailers = {m.key: m.value for m in err.trailing_metadata()}
        assert "exceeded" in trailers["l5d-err"] and "1000" in err.details(), trailers
        # The proxy's deadline races the upstream call's start: on a loaded machine the
        # handler may not have run when the deadline fires, and then there is nothing to
        # cancel. When it did run, it must have been cancelled. (Cancellation on its own
        # is covered by test_client_cancellation_cancels_the_upstream_call.)
        if g.hang_started.is_set():
            assert await _in_thread(lambda: g.cancelled.wait(10))
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_client_cancellation_cancels_the_upstream_call(run: Any) -> None:
    async def main() -> None:
        g = Greeter("g1")
        srv = GrpcServer(g)
        rt = await _proxy_for(srv)
        ch = channel(proxy_port(rt))

        def call() -> bool:
            fut = unary(ch, "/hello.Greeter/Hang").future(b"", timeout=30)
            assert g.hang_started.wait(10)
            fut.cancel()
            return g.cancelled.wait(10)

        assert await _in_thread(call)
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_proxy_failures_are_grpc_statuses_with_l5d_err(run: Any) -> None:
    async def main() -> None:
        srv = GrpcServer(Greeter("g1"))
        # a closed port for the connect failure
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
        s.close()
        rt = await _proxy_for(srv, dtab=f"/svc/hello.Greeter => /$/inet/127.0.0.1/{srv.port}; /svc/dead.Svc => /$/inet/127.0.0.1/{dead}")
        ch = channel(proxy_port(rt))

        def fail(method: str, metadata: Any = ()) -> grpc.RpcError:
            try:
                unary(ch, method)(b"", metadata=metadata, timeout=10)
            except grpc.RpcError as exc:
                return exc
            raise AssertionError(f"{method} succeeded")

        def calls() -> list[grpc.RpcError]:
            return [
                fail("/nowhere.Svc/X"),
                fail("/dead.Svc/X"),
                fail(SAY, [("l5d-dtab", "/svc/hello.Greeter => [")]),
            ]

        no_route, refused, bad_override = await _in_thread(calls)
        assert no_route.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "/svc/nowhere.Svc" in no_route.details()
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert str(dead) in refused.details()
        assert bad_override.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "l5d-dtab" in bad_override.details()
        for err in (no_route, refused, bad_override):
            assert any(m.key == "l5d-err" for m in err.trailing_metadata())
        ch.close()
        await rt.drain()
        srv.stop()

    run(main())


def test_feature_branch_by_user_metadata_and_l5d_dtab(run: Any) -> None:
    """Online Boutique's AdService: the developer's user reaches adservice-myfeature
    (their calls carry an l5d-dtab, as the frontend adds for their session); every
    other user reaches adservice."""

    async def main() -> None:
        main_ads, feature_ads = AdService("adservice"), AdService("adservice-myfeature")
        s_main, s_feature = GrpcServer(main_ads), GrpcServer(feature_ads)
        dtab = (
            f"/srv/adservice => /$/inet/127.0.0.1/{s_main.port}; "
            f"/srv/adservice-myfeature => /$/inet/127.0.0.1/{s_feature.port}; "
            "/svc/hipstershop.AdService => /srv/adservice"
        )
        rt = await start_proxy(h2_router_yaml(dtab))
        ch = channel(proxy_port(rt))
        override = ("l5d-dtab", "/svc/hipstershop.AdService => /srv/adservice-myfeature")

        def calls() -> dict[str, bytes]:
            get_ads = unary(ch, "/hipstershop.AdService/GetAds")
            out = {}
            for user in ("alice", "dev-42", "bob"):
                md = [("userid", user)] + ([override] if user == "dev-42" else [])
                out[user] = get_ads(b"", metadata=md, timeout=10)
            return out

        got = await _in_thread(calls)
        assert got == {"alice": b"adservice", "dev-42": b"adservice-myfeature", "bob": b"adservice"}
        assert (main_ads.calls, feature_ads.calls) == (2, 1)
        ch.close()
        await rt.drain()
        s_main.stop()
        s_feature.stop()

    run(main())


def test_override_context_is_carried_to_the_second_grpc_hop(run: Any) -> None:
    """client -> proxy A (l5d-dtab) -> proxy B -> backend: B routes by the l5d-ctx-dtab
    that A forwarded (Linkerd 1 lost it on the second gRPC hop)."""

    async def main() -> None:
        g_main, g_feature = Greeter("main"), Greeter("feature")
        s_main, s_feature = GrpcServer(g_main), GrpcServer(g_feature)
        b_dtab = (
            f"/srv/main => /$/inet/127.0.0.1/{s_main.port}; "
            f"/srv/feature => /$/inet/127.0.0.1/{s_feature.port}; "
            "/svc/hello.Greeter => /srv/main"
        )
        rt_b = await start_proxy(h2_router_yaml(b_dtab))
        rt_a = await start_proxy(h2_router_yaml(f"/svc/hello.Greeter => /$/inet/127.0.0.1/{proxy_port(rt_b)}"))
        ch = channel(proxy_port(rt_a))

        def calls() -> tuple[bytes, bytes]:
            plain = unary(ch, SAY)(b"p", timeout=10)
            feature = unary(ch, SAY)(b"f", metadata=[("l5d-dtab", "/srv/main => /srv/feature")], timeout=10)
            return plain, feature

        plain, feature = await _in_thread(calls)
        assert plain == b"main:p"
        assert feature == b"feature:f"
        assert g_feature.seen_metadata[0]["l5d-ctx-dtab"] == "/srv/main=>/srv/feature"
        ch.close()
        await rt_a.drain()
        await rt_b.drain()
        s_main.stop()
        s_feature.stop()

    run(main())


def test_metadata_rule_routes_a_users_grpc_calls_to_the_feature_branch(run: Any) -> None:
    """Issue 6's field example on the gRPC path: metadata `userid` picks adservice-myfeature
    through a match rule (no l5d-dtab), and the request is counted in the metrics."""

    async def main() -> None:
        main_srv, feature_srv = GrpcServer(Greeter("adservice")), GrpcServer(Greeter("adservice-myfeature"))
        rt = await start_proxy(
            "routers:\n- protocol: h2\n  label: grpc\n"
            "  identifier: {kind: io.l5d.header.path, segments: 1}\n"
            f"  dtab: '/svc/hello.Greeter => /srv/main; /srv/main => /$/inet/127.0.0.1/{main_srv.port};"
            f" /srv/feature => /$/inet/127.0.0.1/{feature_srv.port}'\n"
            "  rules:\n  - match: {headers: {userid: {exact: dev-42}}}\n"
            "    dtab: /svc/hello.Greeter => /srv/feature\n"
            "  servers:\n  - {ip: 127.0.0.1, port: 0}\n"
        )
        ch = channel(proxy_port(rt))

        def calls() -> tuple[bytes, bytes]:
            dev = unary(ch, SAY)(b"x", timeout=8, metadata=(("userid", "dev-42"),))
            other = unary(ch, SAY)(b"x", timeout=8, metadata=(("userid", "someone-else"),))
            return dev, other

        dev, other = await _in_thread(calls)
        assert dev == b"adservice-myfeature:x"
        assert other == b"adservice:x"
        text = rt.telemetry.render().decode()
        assert 'service="/svc/hello.Greeter"' in text
        ch.close()
        await rt.drain()
        main_srv.stop()
        feature_srv.stop()

    run(main())
