"""Admin writes need credentials (real sockets, aiohttp client): a bearer token from
`admin.auth` (or its `tokenFile`, re-read when it changes), a `Host` that is an IP
literal, `localhost` or a name in `admin.hosts`; an admin not on loopback without a token
is read-only. Reads need nothing, and /config.json never shows the token."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.admin.app import WriteGuard, make_app
from proxy.runtime import Runtime

from .harness import Backend, Client, proxy_port, start_proxy

TOKEN = "s3cret-token-0123456789"


def admin_yaml(dtab: str, auth: str = "", hosts: str = "") -> str:
    return (
        f"admin:\n  ip: 127.0.0.1\n  port: 0\n{auth}{hosts}"
        f"routers:\n- protocol: http\n  label: web\n  dtab: {json.dumps(dtab)}\n"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    )


class Admin:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.s = session

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any, str]:
        async with self.s.request(method, self.base + path, **kw) as r:
            return r.status, r.headers.copy(), await r.text()


@asynccontextmanager
async def running(yaml_text: str) -> AsyncIterator[tuple[Runtime, Admin]]:
    rt = await start_proxy(yaml_text)
    try:
        host, port = rt.admin.address
        async with aiohttp.ClientSession() as s:
            yield rt, Admin(f"http://{host}:{port}", s)
    finally:
        await rt.drain()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_writes_need_the_bearer_token_and_reads_do_not(run) -> None:
    async def main() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        dtab_a = f"/svc/web => /$/inet/127.0.0.1/{a.port}"
        dtab_b = f"/svc/web => /$/inet/127.0.0.1/{b.port}"
        async with running(admin_yaml(dtab_a, auth=f"  auth: {{token: {TOKEN}}}\n")) as (rt, admin):
            for headers in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}):
                status, h, text = await admin.call("PUT", "/admin/dtabs/web", data=dtab_b, headers=headers)
                assert status == 401, text
                assert h["WWW-Authenticate"].startswith("Bearer ")
                assert "Authorization: Bearer" in json.loads(text)["error"]
            status, h, text = await admin.call("PUT", "/admin/dtabs/web", data=dtab_b, headers=bearer(TOKEN + "x"))
            assert status == 401 and 'error="invalid_token"' in h["WWW-Authenticate"]
            status, _, text = await admin.call("PUT", "/admin/sampling?rate=0.5", headers=bearer("wrong"))
            assert status == 401
            c = await Client.connect(proxy_port(rt))
            r = await c.request("GET", "/", {"Host": "web"})
            assert r.body == b"a GET /"  # nothing changed
            status, _, text = await admin.call("PUT", "/admin/dtabs/web", data=dtab_b, headers=bearer(TOKEN))
            assert status == 200, text
            r = await c.request("GET", "/", {"Host": "web"})
            assert r.body == b"b GET /"
            status, _, text = await admin.call("PUT", "/admin/sampling?rate=0.5", headers={"Authorization": f"bearer {TOKEN}"})
            assert status == 200 and json.loads(text) == {"web": 0.5}  # the scheme is case-insensitive
            # Reads, and the POSTs that only compute an answer, need no token.
            for method, path, kw in [
                ("GET", "/admin/ping", {}), ("GET", "/admin/ready", {}), ("GET", "/admin/metrics/prometheus", {}),
                ("GET", "/delegator", {}), ("GET", "/admin/dtabs", {}), ("GET", "/admin/dtabs/web", {}),
                ("GET", "/admin/sampling", {}), ("GET", "/config.json", {}), ("HEAD", "/admin/ping", {}),
                ("POST", "/delegator.json", {"json": {"namespace": "web", "dtab": "", "path": "/svc/web"}}),
                ("POST", "/admin/whatif.json", {"json": {"router": "web", "dtab": dtab_a}}),
            ]:  # fmt: skip
                status, _, text = await admin.call(method, path, **kw)
                assert status == 200, (method, path, text)
            status, _, text = await admin.call("GET", "/config.json")
            cfg = json.loads(text)
            assert cfg["admin"]["auth"] == {"token": "<redacted>"}
            assert TOKEN not in text
            await c.close()
        await a.close()
        await b.close()

    run(main())


def test_a_write_with_a_foreign_host_is_refused_even_with_the_token(run) -> None:
    async def main() -> None:
        dtab = "/svc/web => /$/inet/127.0.0.1/1"
        hosts = "  hosts: [l5d-admin.example, Admin.Internal.]\n"
        async with running(admin_yaml(dtab, auth=f"  auth: {{token: {TOKEN}}}\n", hosts=hosts)) as (_rt, admin):
            port = admin.base.rsplit(":", 1)[1]
            for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io"):
                status, _, text = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers={**bearer(TOKEN), "Host": host})
                assert status == 403, host
                assert "admin.hosts" in json.loads(text)["error"]
            for host in (f"localhost:{port}", "LOCALHOST", f"127.0.0.1:{port}", f"[::1]:{port}", "10.1.2.3",
                         f"l5d-admin.example:{port}", "admin.internal"):  # fmt: skip
                status, _, text = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers={**bearer(TOKEN), "Host": host})
                assert status == 200, (host, text)
            # A read with any Host is still a read.
            status, _, _ = await admin.call("GET", "/admin/dtabs/web", headers={"Host": "evil.example"})
            assert status == 200

    run(main())


def test_loopback_admin_without_a_token_takes_writes_from_local_names_only(run) -> None:
    async def main() -> None:
        dtab = "/svc/web => /$/inet/127.0.0.1/1"
        async with running(admin_yaml(dtab)) as (_rt, admin):
            status, _, _ = await admin.call("PUT", "/admin/dtabs/web", data=dtab)
            assert status == 200
            status, _, text = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers={"Host": "rebound.example"})
            assert status == 403 and "admin.hosts" in text

    run(main())


def test_token_file_is_read_at_load_and_again_when_it_changes(run, tmp_path) -> None:
    async def main() -> None:
        path = tmp_path / "token"
        path.write_text(TOKEN + "\n")  # a Secret's file usually ends in a newline
        dtab = "/svc/web => /$/inet/127.0.0.1/1"
        async with running(admin_yaml(dtab, auth=f"  auth: {{tokenFile: {path}}}\n")) as (_rt, admin):
            status, _, _ = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers=bearer(TOKEN))
            assert status == 200
            status, _, text = await admin.call("GET", "/config.json")
            assert json.loads(text)["admin"]["auth"] == {"tokenFile": str(path)} and TOKEN not in text
            # Rotate the way Kubernetes does: a new file moved into place.
            new = "rotated-token-9876543210"
            (tmp_path / "token.new").write_text(new)
            os.replace(tmp_path / "token.new", path)
            status, _, _ = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers=bearer(TOKEN))
            assert status == 401
            status, _, _ = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers=bearer(new))
            assert status == 200
            # A file that cannot be read (or holds no usable token) refuses every write.
            (tmp_path / "token.new").write_text("short")
            os.replace(tmp_path / "token.new", path)
            status, _, text = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers=bearer(new))
            assert status == 503 and "admin.auth.tokenFile" in text
            path.unlink()
            status, _, text = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers=bearer(new))
            assert status == 503 and "cannot be read" in text
            status, _, _ = await admin.call("GET", "/admin/dtabs/web")
            assert status == 200  # reads go on

    run(main())


def test_a_reload_applies_a_new_token(run, tmp_path) -> None:
    async def main() -> None:
        cfg = tmp_path / "c.yaml"
        dtab = "/svc/web => /$/inet/127.0.0.1/1"
        cfg.write_text(admin_yaml(dtab, auth=f"  auth: {{token: {TOKEN}}}\n"))
        from config import load_file

        rt = Runtime(load_file(str(cfg)), config_path=str(cfg))
        await rt.start()
        try:
            host, port = rt.admin.address
            async with aiohttp.ClientSession() as s:
                admin = Admin(f"http://{host}:{port}", s)
                status, _, _ = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers=bearer(TOKEN))
                assert status == 200
                new = "another-token-0123456789"
                cfg.write_text(admin_yaml(dtab, auth=f"  auth: {{token: {new}}}\n").replace("port: 0\n", f"port: {port}\n", 1))
                assert await rt.reload_now()
                status, _, _ = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers=bearer(TOKEN))
                assert status == 401
                status, _, _ = await admin.call("PUT", "/admin/dtabs/web", data=dtab, headers=bearer(new))
                assert status == 200
        finally:
            await rt.drain()

    run(main())


@asynccontextmanager
async def guarded_app(rt: Runtime, configured_ip: str) -> AsyncIterator[Admin]:
    """The admin app with the guard of an admin configured on `configured_ip`, served on
    127.0.0.1 (tests listen on loopback only)."""
    guard = WriteGuard(rt, configured_ip)
    guard.warn_if_read_only()
    runner = web.AppRunner(make_app(rt, guard=guard), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as s:
            yield Admin(f"http://127.0.0.1:{port}", s)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("configured_ip", ["0.0.0.0", "10.1.2.3", "::"])
def test_a_non_loopback_admin_without_a_token_is_read_only(run, caplog, configured_ip) -> None:
    async def main() -> None:
        dtab = "/svc/web => /$/inet/127.0.0.1/1"
        rt = await start_proxy(admin_yaml(dtab).replace("admin:\n  ip: 127.0.0.1\n  port: 0\n", ""))
        try:
            with caplog.at_level(logging.WARNING, logger="proxy.admin.app"):
                async with guarded_app(rt, configured_ip) as admin:
                    warnings = [r for r in caplog.records if "read-only" in r.getMessage()]
                    assert len(warnings) == 1 and configured_ip in warnings[0].getMessage()
                    for _ in range(3):
                        status, _, text = await admin.call("PUT", "/admin/dtabs/web", data=dtab)
                        assert status == 403 and "read-only" in text and "admin.auth" in text
                    status, _, _ = await admin.call("PUT", "/admin/sampling?rate=1", headers=bearer(TOKEN))
                    assert status == 403
                    status, _, _ = await admin.call("GET", "/admin/dtabs/web")
                    assert status == 200
                    status, _, _ = await admin.call("POST", "/delegator.json", json={"dtab": "", "path": "/svc/web"})
                    assert status == 200
                    refusals = [r for r in caplog.records if "refused (403)" in r.getMessage()]
                    assert len(refusals) == 1  # refused writes are logged, rate-limited
        finally:
            await rt.drain()

    run(main())
