"""A reload applies whole or not at all: a new server on a busy port (or any other step
that fails) leaves every router, listener and namer as it was, the log says why, and a
later good reload applies."""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

from config import load_file
from proxy import runtime as runtime_mod
from proxy.runtime import Runtime

from .grpc_helpers import H2Client
from .harness import Backend, Client


def _busy_port() -> socket.socket:
    """A port this test holds, bound and listening, as another process would."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def _router(label: str, dtab: str, ports: list[int], protocol: str = "http") -> str:
    servers = "".join(f"  - {{ip: 127.0.0.1, port: {p}}}\n" for p in ports)
    client = "  client: {protocol: http}\n"  # the backends here speak HTTP/1.1 whatever the router serves
    return f"- protocol: {protocol}\n  label: {label}\n  dtab: {json.dumps(dtab)}\n{client}  servers:\n{servers}"


def _write(path: str, *routers: str, namers: str = "") -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(namers + "routers:\n" + "".join(routers))
    os.replace(tmp, path)


async def _start(path: str) -> Runtime:
    rt = Runtime(load_file(path), config_path=path)
    await rt.start()
    return rt


def _port(rt: Runtime, label: str, i: int = 0) -> int:
    lst = [x for x in rt.listeners if x.router.label == label][i]
    assert lst.address is not None
    return int(lst.address[1])


async def _get(port: int, host: str = "web") -> bytes:
    c = await Client.connect(port)
    r = await c.request("GET", "/", {"Host": host})
    await c.close()
    return r.body


def test_a_busy_port_leaves_the_old_dtab_routing_and_a_later_good_reload_applies(run: Any, tmp_path, caplog) -> None:
    async def main() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        busy = _busy_port()
        busy_port = busy.getsockname()[1]
        path = str(tmp_path / "c.yaml")
        _write(path, _router("web", f"/svc/web => /$/inet/127.0.0.1/{a.port}", [0]))
        rt = await _start(path)
        port = _port(rt, "web")
        assert await _get(port) == b"a GET /"
        old_config, old_router = rt.config, rt.routers["web"]

        # The new dtab and a second server on a port someone else holds.
        _write(path, _router("web", f"/svc/web => /$/inet/127.0.0.1/{b.port}", [0, busy_port]))
        with caplog.at_level(logging.WARNING, logger="proxy.runtime"):
            assert not await rt.reload_now()
        assert any("reload refused" in r.getMessage() and "ddress already in use" in r.getMessage() for r in caplog.records)
        assert await _get(port) == b"a GET /"  # the old dtab still routes
        assert rt.config is old_config and rt.routers["web"] is old_router
        assert len(rt.listeners) == 1 and rt.reloads == 0

        # The port is free now: the same config applies whole.
        busy.close()
        _write(path, _router("web", f"/svc/web => /$/inet/127.0.0.1/{b.port}", [0, busy_port]))
        assert await rt.reload_now()
        assert await _get(port) == b"b GET /"
        assert await _get(busy_port) == b"b GET /"
        assert rt.reloads == 1
        await rt.drain()
        await a.close()
        await b.close()

    run(main())


def test_one_router_failing_leaves_every_router_unchanged(run: Any, tmp_path) -> None:
    async def main() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        busy = _busy_port()
        path = str(tmp_path / "c.yaml")
        _write(path, _router("first", f"/svc => /$/inet/127.0.0.1/{a.port}", [0]),
               _router("second", f"/svc => /$/inet/127.0.0.1/{a.port}", [0]))  # fmt: skip
        rt = await _start(path)
        first, second = _port(rt, "first"), _port(rt, "second")
        # `first` changes its dtab; `second` (later in the file) asks for a busy port;
        # a router `third` would be added.
        _write(path, _router("first", f"/svc => /$/inet/127.0.0.1/{b.port}", [0]),
               _router("second", f"/svc => /$/inet/127.0.0.1/{b.port}", [0, busy.getsockname()[1]]),
               _router("third", f"/svc => /$/inet/127.0.0.1/{b.port}", [0]))  # fmt: skip
        assert not await rt.reload_now()
        assert await _get(first) == b"a GET /" and await _get(second) == b"a GET /"
        assert sorted(rt.routers) == ["first", "second"] and len(rt.listeners) == 2
        busy.close()
        await rt.drain()
        await a.close()
        await b.close()

    run(main())


def test_changed_namers_are_undone_with_the_rest(run: Any, tmp_path) -> None:
    async def main() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        busy = _busy_port()
        for d, backend in (("one", a), ("two", b)):
            os.makedirs(tmp_path / d)
            (tmp_path / d / "web").write_text(f"127.0.0.1 {backend.port}\n")
        path = str(tmp_path / "c.yaml")
        namers = "namers:\n- kind: io.l5d.fs\n  rootDir: {}\n"
        _write(path, _router("web", "/svc => /#/io.l5d.fs", [0]), namers=namers.format("one"))
        rt = await _start(path)
        port = _port(rt, "web")
        old_namers = list(rt.namers)
        assert await _get(port) == b"a GET /"
        _write(path, _router("web", "/svc => /#/io.l5d.fs", [0, busy.getsockname()[1]]), namers=namers.format("two"))
        assert not await rt.reload_now()
        assert rt.namers == old_namers
        assert await _get(port) == b"a GET /"
        busy.close()
        assert await rt.reload_now()  # the same file, now applicable
        assert await _get(port) == b"b GET /"
        await rt.drain()
        await a.close()
        await b.close()

    run(main())


def test_same_address_with_a_new_protocol_rebinds(run: Any, tmp_path) -> None:
    async def main() -> None:
        a = await Backend("a").start()
        fixed = runtime_mod.free_port()
        path = str(tmp_path / "c.yaml")
        dtab = f"/svc => /$/inet/127.0.0.1/{a.port}"
        _write(path, _router("web", dtab, [fixed]))
        rt = await _start(path)
        assert await _get(fixed) == b"a GET /"
        _write(path, _router("web", dtab, [fixed], protocol="h2"))
        assert await rt.reload_now()
        c = await H2Client.connect(fixed)  # prior-knowledge h2c on the same port now
        r = await c.request(authority=b"web")
        assert r.status == 200 and r.body == b"a GET /"
        await c.close()
        await rt.drain()
        await a.close()

    run(main())


def test_a_failure_after_a_listener_made_room_puts_it_back(run: Any, tmp_path, monkeypatch) -> None:
    """A new listener on a retiring listener's address binds after that one stops
    accepting; when a bind fails after that, the old one accepts again, unchanged."""

    async def main() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        fixed = runtime_mod.free_port()
        path = str(tmp_path / "c.yaml")
        _write(path, _router("web", f"/svc => /$/inet/127.0.0.1/{a.port}", [fixed]))
        rt = await _start(path)
        old_listener = rt.listeners[0]
        assert await _get(fixed) == b"a GET /"

        real_bind = runtime_mod.Listener.bind

        def failing_bind(self: Any) -> None:
            if self.protocol == "h2":  # the rebind on `fixed`, once the old one made room
                real_bind(self)
                self.close_unstarted()
                raise OSError(98, "Address already in use (injected after the rebind)")
            real_bind(self)

        monkeypatch.setattr(runtime_mod.Listener, "bind", failing_bind)
        _write(path, _router("web", f"/svc => /$/inet/127.0.0.1/{b.port}", [fixed], protocol="h2"))
        assert not await rt.reload_now()
        assert rt.listeners == [old_listener] and old_listener.server is not None
        assert await _get(fixed) == b"a GET /"  # accepting again, with the old snapshot
        monkeypatch.setattr(runtime_mod.Listener, "bind", real_bind)
        assert await rt.reload_now()
        c = await H2Client.connect(fixed)
        r = await c.request(authority=b"web")
        assert r.body == b"b GET /"
        await c.close()
        await rt.drain()
        await a.close()
        await b.close()

    run(main())


def test_a_tls_file_that_does_not_load_changes_nothing(run: Any, tmp_path) -> None:
    async def main() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        path = str(tmp_path / "c.yaml")
        _write(path, _router("web", f"/svc => /$/inet/127.0.0.1/{a.port}", [0]))
        rt = await _start(path)
        port = _port(rt, "web")
        (tmp_path / "cert.pem").write_text("not a certificate\n")
        (tmp_path / "key.pem").write_text("not a key\n")
        tls = f"    tls: {{certPath: {tmp_path / 'cert.pem'}, keyPath: {tmp_path / 'key.pem'}}}\n"
        _write(path, _router("web", f"/svc => /$/inet/127.0.0.1/{b.port}", [0, 0]) + "  - ip: 127.0.0.1\n    port: 0\n" + tls)
        assert not await rt.reload_now()
        assert await _get(port) == b"a GET /" and len(rt.listeners) == 1
        await rt.drain()
        await a.close()
        await b.close()

    run(main())
