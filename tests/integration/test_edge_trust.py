"""A clearContext edge over real sockets, on HTTP/1.1, h2c and gRPC (grpcio) alike: every
`l5d-ctx-*` and other `l5d-` field from callers is stripped, an `l5d-dtab` is honoured
from a source trusted by `overrides.trust.cidrs` or with a valid HMAC signature and
dropped from anyone else, a bad signature is 403 naming `overrides.trust.hmac`; the
proxy's own errors are terse to untrusted callers (status and a generic message, no
dtab, no address, no `l5d-err`) and detailed to trusted ones; `overrides.allowDestinations`
limits where an override may send a request.

Every caller here is 127.0.0.1: "untrusted" means a config whose trusted CIDRs leave
loopback out (10.0.0.0/8), "trusted" one that names 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from proxy.route.trust import sign

from .grpc_helpers import Greeter, GrpcServer, H2Client, channel, unary
from .harness import Backend, Client, proxy_port, start_proxy

KEY = "0123456789abcdef0123"
UNTRUSTED = "      cidrs: [10.0.0.0/8]\n"
TRUSTED = "      cidrs: [127.0.0.0/8]\n"
SAY = "/hello.Greeter/SayHello"


def edge_yaml(dtab: str, *, protocol: str = "http", upstream: str = "http", trust: str = UNTRUSTED,
              hmac: bool = True, overrides_extra: str = "", identifier: str | None = None,
              sig_header: str = "l5d-dtab-sig") -> str:
    hm = f"      hmac: {{header: {sig_header}, key: '{KEY}'}}\n" if hmac else ""
    ident = identifier or ("    kind: io.l5d.header.token\n" if protocol == "http" else
                           "    kind: io.l5d.header.token\n    header: ':authority'\n")
    return (
        "routers:\n"
        f"- protocol: {protocol}\n  label: edge\n"
        f"  identifier:\n{ident}"
        f"  dtab: {json.dumps(dtab)}\n"
        f"  client:\n    protocol: {upstream}\n"
        f"  overrides:\n    trust:\n{trust}{hm}{overrides_extra}"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n    clearContext: true\n"
    )


def sig(value: str, key: str = KEY) -> str:
    return sign(key.encode(), [], [value.encode()]).decode()


async def _in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def _dtab(web: Backend, v2: Backend) -> str:
    return f"/svc/web => /$/inet/127.0.0.1/{web.port}; /srv/v2 => /$/inet/127.0.0.1/{v2.port}"


OVERRIDE = "/svc/web => /srv/v2"
CALLER_CTX = [("l5d-ctx-dtab", "/svc/web => /srv/v2"), ("l5d-ctx-foo", "x"), ("l5d-ctx-deadline", "0 1"),
              ("l5d-dst-service", "/forged"), ("l5d-sample", "1")]


# -- item 4: the override at a clearContext server, HTTP/1.1 -------------------------------------------


@pytest.mark.parametrize("trust", ["cidrs", "hmac"])
def test_h1_edge_honours_a_trusted_or_signed_override_and_strips_context(run: Any, trust: str) -> None:
    async def main() -> None:
        web, v2 = await Backend("web").start(), await Backend("v2").start()
        rt = await start_proxy(edge_yaml(_dtab(web, v2), trust=TRUSTED if trust == "cidrs" else UNTRUSTED))
        c = await Client.connect(proxy_port(rt))
        # Context from the caller never counts, even from a trusted source: no override here.
        r = await c.request("GET", "/", [("Host", "web"), *CALLER_CTX])
        assert r.status == 200 and r.body == b"web GET /"
        seen = web.seen[-1]
        assert seen.header("l5d-ctx-foo") is None and seen.header("l5d-ctx-dtab") is None
        assert seen.header("l5d-ctx-deadline") is None and seen.header("l5d-sample") is None
        assert seen.header("l5d-dst-service") == "/svc/web"  # the proxy's own, not the forged one
        # A trusted or signed l5d-dtab is honoured, and follows the request as l5d-ctx-dtab.
        headers = [("Host", "web"), ("l5d-dtab", OVERRIDE), *CALLER_CTX[1:]]
        if trust == "hmac":
            headers.append(("l5d-dtab-sig", sig(OVERRIDE)))
        r = await c.request("GET", "/", headers)
        assert r.status == 200 and r.body == b"v2 GET /"
        up = v2.seen[-1]
        assert up.header("l5d-ctx-dtab") == "/svc/web=>/srv/v2"
        assert up.header("l5d-dtab") is None and up.header("l5d-dtab-sig") is None
        assert up.header("l5d-ctx-foo") is None
        assert r.header("l5d-err") is None
        await c.close()
        await rt.drain()
        await web.close()
        await v2.close()

    run(main())


def test_h1_edge_drops_an_unsigned_untrusted_override_and_refuses_a_bad_signature(run: Any) -> None:
    async def main() -> None:
        web, v2 = await Backend("web").start(), await Backend("v2").start()
        rt = await start_proxy(edge_yaml(_dtab(web, v2)))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": OVERRIDE})
        assert r.status == 200 and r.body == b"web GET /"  # stripped: an edge ignores it
        assert web.seen[-1].header("l5d-ctx-dtab") is None
        for bad in ("00" * 32, sig(OVERRIDE, key="another key, 20 bytes"), "not a signature"):
            r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": OVERRIDE, "l5d-dtab-sig": bad})
            assert r.status == 403
            assert b"overrides.trust.hmac" in r.body
            assert r.header("l5d-err") is None  # the edge's untrusted caller: the message, no l5d-*
        # A signature over other bytes (the caller changed the override after signing).
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": OVERRIDE + ";/a=>/b", "l5d-dtab-sig": sig(OVERRIDE)})
        assert r.status == 403 and b"overrides.trust.hmac" in r.body
        assert v2.seen == []
        await c.close()
        await rt.drain()
        await web.close()
        await v2.close()

    run(main())


# -- item 4 on h2c and gRPC --------------------------------------------------------------------------------


@pytest.mark.parametrize("trust", ["cidrs", "hmac"])
def test_h2c_edge_honours_trusted_or_signed_and_strips_context(run: Any, trust: str) -> None:
    async def main() -> None:
        web, v2 = await Backend("web").start(), await Backend("v2").start()
        rt = await start_proxy(edge_yaml(_dtab(web, v2), protocol="h2", trust=TRUSTED if trust == "cidrs" else UNTRUSTED))
        c = await H2Client.connect(proxy_port(rt))
        ctx = [(n.encode(), v.encode()) for n, v in CALLER_CTX]
        r = await c.request(authority=b"web", headers=ctx)
        assert r.status == 200 and r.body == b"web GET /"
        seen = web.seen[-1]
        assert seen.header("l5d-ctx-foo") is None and seen.header("l5d-ctx-dtab") is None
        assert seen.header("l5d-dst-service") == "/svc/web"
        headers = [(b"l5d-dtab", OVERRIDE.encode()), *ctx[1:]]
        if trust == "hmac":
            headers.append((b"l5d-dtab-sig", sig(OVERRIDE).encode()))
        r = await c.request(authority=b"web", headers=headers)
        assert r.status == 200 and r.body == b"v2 GET /"
        up = v2.seen[-1]
        assert up.header("l5d-ctx-dtab") == "/svc/web=>/srv/v2" and up.header("l5d-dtab-sig") is None
        assert up.header("l5d-ctx-foo") is None
        if trust == "hmac":
            r = await c.request(authority=b"web", headers=[(b"l5d-dtab", OVERRIDE.encode()), (b"l5d-dtab-sig", b"00" * 32)])
            assert r.status == 403 and b"overrides.trust.hmac" in r.body and r.header(b"l5d-err") is None
            r = await c.request(authority=b"web", headers=[(b"l5d-dtab", OVERRIDE.encode())])
            assert r.status == 200 and r.body == b"web GET /"  # unsigned from outside: dropped
        await c.close()
        await rt.drain()
        await web.close()
        await v2.close()

    run(main())


def test_h2c_signature_in_a_field_not_named_l5d(run: Any) -> None:
    async def main() -> None:
        web, v2 = await Backend("web").start(), await Backend("v2").start()
        rt = await start_proxy(edge_yaml(_dtab(web, v2), protocol="h2", sig_header="x-dtab-sig"))
        c = await H2Client.connect(proxy_port(rt))
        r = await c.request(authority=b"web", headers=[(b"l5d-dtab", OVERRIDE.encode()), (b"x-dtab-sig", sig(OVERRIDE).encode())])
        assert r.status == 200 and r.body == b"v2 GET /"
        assert v2.seen[-1].header("x-dtab-sig") is None  # read, not forwarded
        r = await c.request(authority=b"web", headers=[(b"l5d-dtab", OVERRIDE.encode()), (b"x-dtab-sig", b"00" * 32)])
        assert r.status == 403 and b"overrides.trust.hmac" in r.body
        await c.close()
        await rt.drain()
        await web.close()
        await v2.close()

    run(main())


def _grpc_edge(a: GrpcServer, b: GrpcServer, **kw: Any) -> str:
    dtab = f"/svc/hello.Greeter => /$/inet/127.0.0.1/{a.port}; /srv/b => /$/inet/127.0.0.1/{b.port}"
    return edge_yaml(dtab, protocol="h2", upstream="h2",
                     identifier="    kind: io.l5d.header.path\n    segments: 1\n", **kw)


@pytest.mark.parametrize("trust", ["cidrs", "hmac"])
def test_grpc_edge_honours_trusted_or_signed_and_refuses_a_bad_signature(run: Any, trust: str) -> None:
    async def main() -> None:
        ga, gb = Greeter("a"), Greeter("b")
        a, b = GrpcServer(ga), GrpcServer(gb)
        rt = await start_proxy(_grpc_edge(a, b, trust=TRUSTED if trust == "cidrs" else UNTRUSTED))
        ch = channel(proxy_port(rt))
        override = "/svc/hello.Greeter => /srv/b"
        md = [("l5d-dtab", override), ("l5d-ctx-foo", "x"), ("l5d-ctx-dtab", "/svc/hello.Greeter => /srv/b")]
        if trust == "hmac":
            md.append(("l5d-dtab-sig", sig(override)))

        def calls() -> tuple[Any, Any, Any]:
            plain = unary(ch, SAY)(b"w", metadata=md[1:], timeout=10)
            routed = unary(ch, SAY)(b"w", metadata=md, timeout=10)
            try:
                unary(ch, SAY)(b"w", metadata=[("l5d-dtab", override), ("l5d-dtab-sig", "00" * 32)], timeout=10)
            except grpc.RpcError as err:
                return plain, routed, err
            return plain, routed, None

        plain, routed, err = await _in_thread(calls)
        assert plain == b"a:w"  # caller context never counts at an edge
        assert "l5d-ctx-foo" not in ga.seen_metadata[0] and "l5d-ctx-dtab" not in ga.seen_metadata[0]
        assert routed == b"b:w"
        assert gb.seen_metadata[0]["l5d-ctx-dtab"] == "/svc/hello.Greeter=>/srv/b"
        assert "l5d-dtab-sig" not in gb.seen_metadata[0] and "l5d-ctx-foo" not in gb.seen_metadata[0]
        if trust == "hmac":
            assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "overrides.trust.hmac" in err.details()
            assert all(m.key != "l5d-err" for m in err.trailing_metadata())
        else:
            assert err is None  # trusted by address: no signature is checked
        ch.close()
        await rt.drain()
        a.stop()
        b.stop()

    run(main())


# -- item 5: terse errors at the edge, details for trusted callers ----------------------------------------


def _dead_port() -> int:
    from proxy.runtime import free_port

    return free_port()


@pytest.mark.parametrize("trusted", [False, True])
def test_grpc_edge_errors_are_terse_to_untrusted_callers(run: Any, trusted: bool) -> None:
    async def main() -> None:
        g = Greeter("a")
        a = GrpcServer(g)
        dead = _dead_port()
        dtab = f"/svc/hello.Greeter => /$/inet/127.0.0.1/{dead}; /svc/other.Svc => /$/inet/127.0.0.1/{a.port}"
        rt = await start_proxy(edge_yaml(dtab, protocol="h2", upstream="h2", trust=TRUSTED if trusted else UNTRUSTED,
                                         identifier="    kind: io.l5d.header.path\n    segments: 1\n"))
        ch = channel(proxy_port(rt))

        def fail(method: str) -> grpc.RpcError:
            try:
                unary(ch, method)(b"w", timeout=10)
            except grpc.RpcError as err:
                return err
            raise AssertionError("the call succeeded")

        no_route = await _in_thread(lambda: fail("/nowhere.Svc/Call"))
        refused = await _in_thread(lambda: fail(SAY))
        assert no_route.code() == grpc.StatusCode.UNIMPLEMENTED
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        for err in (no_route, refused):
            trailers = {m.key: m.value for m in err.trailing_metadata()}
            if trusted:
                assert "l5d-err" in trailers
            else:
                assert "l5d-err" not in trailers
                assert "127.0.0.1" not in err.details() and "=>" not in err.details()
                assert str(dead) not in err.details() and "/$/inet" not in err.details()
        if trusted:
            assert "/svc/nowhere.Svc" in no_route.details() and "base dtab" in no_route.details()
            assert str(dead) in refused.details()
        else:
            assert no_route.details() == "no route to the requested service"
            assert refused.details() == "the requested service is unavailable"
        ch.close()
        await rt.drain()
        a.stop()

    run(main())


@pytest.mark.parametrize("trusted", [False, True])
def test_h1_and_h2c_edge_errors_are_terse_to_untrusted_callers(run: Any, trusted: bool) -> None:
    async def main() -> None:
        dead = _dead_port()
        dtab = f"/svc/dead => /$/inet/127.0.0.1/{dead}"
        trust = TRUSTED if trusted else UNTRUSTED
        h1 = await start_proxy(edge_yaml(dtab, trust=trust))
        h2 = await start_proxy(edge_yaml(dtab, protocol="h2", trust=trust))
        c = await Client.connect(proxy_port(h1))
        c2 = await H2Client.connect(proxy_port(h2))
        answers = []
        for host in ("nowhere", "dead"):
            r = await c.request("GET", "/", {"Host": host})
            answers.append((r.status, r.body, r.header("l5d-err")))
            r2 = await c2.request(authority=host.encode())
            err = r2.header(b"l5d-err")
            answers.append((r2.status, r2.body, err.decode() if err is not None else None))
        for i, (status, body, l5d_err) in enumerate(answers):
            assert status == 502
            if trusted:
                assert l5d_err is not None
                assert (b"base dtab" if i < 2 else str(dead).encode()) in body
            else:
                assert l5d_err is None
                assert body == (b"no route to the requested service" if i < 2 else b"the requested service is unavailable")
        await c.close()
        await c2.close()
        await h1.drain()
        await h2.drain()

    run(main())


def test_an_inside_server_keeps_full_errors(run: Any) -> None:
    async def main() -> None:
        rt = await start_proxy(edge_yaml("/svc/x => /$/fail", trust=UNTRUSTED).replace("    clearContext: true\n", ""))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "nowhere"})
        assert r.status == 502 and r.header("l5d-err") is not None and b"/svc/nowhere" in r.body
        await c.close()
        await rt.drain()

    run(main())


# -- item 6b: overrides.allowDestinations -------------------------------------------------------------------


ALLOW = "    allowDestinations: [/srv, /#/io.l5d.fs]\n"


@pytest.mark.parametrize(
    "override",
    [
        "/svc/web => /$/inet/127.0.0.1/{port}",
        "/svc/web => /srv/v2 | /$/inet/127.0.0.1/{port}",  # inside an alternation
        "/svc/web => 1 * /srv/v2 & 9 * (/srv/v2 | /$/inet/127.0.0.1/{port})",  # inside a union
        "/svc/web => /svc/sr; /svc/sr => /sr/v2",  # a prefix of /srv as a string, not as a path
    ],
)
def test_allow_destinations_refuses_any_other_leaf(run: Any, override: str) -> None:
    async def main() -> None:
        web, v2, other = await Backend("web").start(), await Backend("v2").start(), await Backend("other").start()
        rt = await start_proxy(edge_yaml(_dtab(web, v2), trust=TRUSTED, hmac=False, overrides_extra=ALLOW))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": override.format(port=other.port)})
        assert r.status == 403 and b"overrides.allowDestinations" in r.body
        assert other.seen == [] and web.seen == [] and v2.seen == []
        await c.close()
        await rt.drain()
        for b in (web, v2, other):
            await b.close()

    run(main())


def test_allow_destinations_admits_paths_under_an_allowed_prefix_on_h1_h2_and_grpc(run: Any) -> None:
    async def main() -> None:
        web, v2 = await Backend("web").start(), await Backend("v2").start()
        rt = await start_proxy(edge_yaml(_dtab(web, v2), trust=TRUSTED, hmac=False, overrides_extra=ALLOW))
        c = await Client.connect(proxy_port(rt))
        r = await c.request("GET", "/", {"Host": "web", "l5d-dtab": "/svc/web => /srv/v2 | /srv/web & /#/io.l5d.fs/x"})
        assert r.status == 200 and r.body == b"v2 GET /"
        await c.close()
        await rt.drain()
        h2 = await start_proxy(edge_yaml(_dtab(web, v2), protocol="h2", trust=TRUSTED, hmac=False, overrides_extra=ALLOW))
        c2 = await H2Client.connect(proxy_port(h2))
        r2 = await c2.request(authority=b"web", headers=[(b"l5d-dtab", b"/svc/web => /srv/v2")])
        assert r2.status == 200 and r2.body == b"v2 GET /"
        r2 = await c2.request(authority=b"web", headers=[(b"l5d-dtab", f"/svc/web => /$/inet/127.0.0.1/{v2.port}".encode())])
        assert r2.status == 403 and b"overrides.allowDestinations" in r2.body
        await c2.close()
        await h2.drain()
        ga, gb = Greeter("a"), Greeter("b")
        a, b = GrpcServer(ga), GrpcServer(gb)
        g = await start_proxy(_grpc_edge(a, b, trust=TRUSTED, hmac=False, overrides_extra=ALLOW))
        ch = channel(proxy_port(g))

        def calls() -> tuple[bytes, grpc.RpcError]:
            ok = unary(ch, SAY)(b"w", metadata=[("l5d-dtab", "/svc/hello.Greeter => /srv/b")], timeout=10)
            try:
                unary(ch, SAY)(b"w", metadata=[("l5d-dtab", f"/svc/hello.Greeter => /$/inet/127.0.0.1/{b.port}")], timeout=10)
            except grpc.RpcError as err:
                return ok, err
            raise AssertionError("the override was not refused")

        ok, err = await _in_thread(calls)
        assert ok == b"b:w"
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "overrides.allowDestinations" in err.details()
        assert len(gb.seen_metadata) == 1
        ch.close()
        await g.drain()
        a.stop()
        b.stop()
        await web.close()
        await v2.close()

    run(main())
