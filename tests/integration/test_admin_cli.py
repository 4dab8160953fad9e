"""`dtabproxy stat`, `delegate` and `check` against a running (in-process) proxy."""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from typing import Any

import pytest

from proxy.admin.cli import (
    Row,
    Snapshot,
    add_check_arguments,
    add_delegate_arguments,
    add_stat_arguments,
    quantile,
    stat_table,
)
from tests.integration.harness import Backend, Client, proxy_port, start_proxy


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dtabproxy")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_stat_arguments(sub.add_parser("stat"))
    add_delegate_arguments(sub.add_parser("delegate"))
    add_check_arguments(sub.add_parser("check"))
    return p.parse_args(argv)


async def cli(argv: list[str]) -> tuple[int, str]:
    """Run a command in a thread (it blocks on urllib) while the proxy serves on this loop."""
    args = parse(argv)
    out = io.StringIO()
    rc = await asyncio.get_running_loop().run_in_executor(None, lambda: args.fn(args, out))
    return rc, out.getvalue()


def yaml_for(dtab: str) -> str:
    return (
        "admin:\n  ip: 127.0.0.1\n  port: 0\n"
        f"routers:\n- protocol: http\n  label: web\n  dtab: '{dtab}'\n"
        "  servers:\n  - ip: 127.0.0.1\n    port: 0\n"
    )


def test_stat_since_start_after_known_requests(run) -> None:
    async def go() -> None:
        ok = await Backend("ok").start()
        rt = await start_proxy(yaml_for(f"/svc/ok => /$/inet/127.0.0.1/{ok.port}; /svc/down => /$/inet/127.0.0.1/1"))
        try:
            if getattr(rt, "telemetry", None) is None:
                pytest.skip("the data plane does not record telemetry yet (Runtime.telemetry)")
            c = await Client.connect(proxy_port(rt))
            for _ in range(4):
                assert (await c.request("GET", "/", {"host": "ok"})).status == 200
            assert (await c.request("GET", "/", {"host": "down"})).status == 502
            past = time.time_ns() - 10**9
            r = await c.request("GET", "/", {"host": "ok", "l5d-ctx-deadline": f"{past - 10**9} {past}"})
            assert r.status == 503  # an expired deadline: answered, never forwarded
            await c.close()
            admin = f"{rt.admin.address[0]}:{rt.admin.address[1]}"
            rc, text = await cli(["stat", "--admin", admin, "--since-start"])
            assert rc == 0
            lines = text.splitlines()
            assert lines[0].split() == ["ROUTER", "SERVICE", "TRAFFIC", "SUCCESS", "RPS", "P50_MS", "P95_MS", "P99_MS",
                                        "RETRIES", "TIMEOUTS", "REQUESTS"]  # fmt: skip
            rows = {ln.split()[1]: ln.split() for ln in lines[1:]}
            assert rows["/svc/ok"][3] == "80.00%" and rows["/svc/ok"][-1] == "5"
            assert rows["/svc/down"][3] == "0.00%" and rows["/svc/down"][-1] == "1"
            assert rows["/svc/ok"][8:10] == ["0", "1"]  # no retries; one deadline exceeded
            assert rows["/svc/down"][8:10] == ["0", "0"]
            rc, text = await cli(["stat", "--admin", admin, "--since-start", "--by", "client"])
            assert rc == 0 and f"/$/inet/127.0.0.1/{ok.port}" in text
            lines = text.splitlines()
            assert lines[0].split()[-2:] == ["ENDPOINTS", "REQUESTS"]
            rows = {ln.split()[1]: ln.split() for ln in lines[1:]}
            assert rows[f"/$/inet/127.0.0.1/{ok.port}"][-2] == "1/1"
            # The refused one: its requeues failed too, and failure accrual took it out.
            assert rows["/$/inet/127.0.0.1/1"][-2] == "0/1"
            # The windowed form samples twice; --watch with --count stops by itself.
            rc, text = await cli(["stat", "--admin", admin, "--interval", "0.05", "--watch", "--count", "2"])
            assert rc == 0 and text.count("ROUTER") == 2
            rc, text = await cli(["stat", "--admin", admin, "--router", "nope", "--since-start"])
            assert rc == 0 and len(text.splitlines()) == 1  # the header only
        finally:
            await rt.drain()
            await ok.close()

    run(go())


def test_stat_without_a_proxy_fails_cleanly(run, capsys) -> None:
    from proxy.runtime import free_port

    rc, _ = run(cli(["stat", "--admin", f"127.0.0.1:{free_port()}", "--since-start"]))
    assert rc == 1
    assert "cannot reach the admin server" in capsys.readouterr().err


def test_stat_table_window_arithmetic() -> None:
    inf = float("inf")
    prev = Snapshot(100.0, 0.0, {("r", "/svc/a", "base"): Row(10, 10, {0.001: 10, 0.01: 10, inf: 10}, 2, 1)})
    cur = Snapshot(102.0, 0.0, {("r", "/svc/a", "base"): Row(30, 25, {0.001: 20, 0.01: 30, inf: 30}, 5, 1)})
    header, row = stat_table(prev, cur)
    assert row[:5] == ["r", "/svc/a", "base", "75.00%", "10.0"]  # 15/20 ok, 20 requests in 2 s
    assert row[5] == "1.00" and row[-1] == "20"  # p50: rank 10 of 20 ends the first bucket
    assert header[8:10] == ["RETRIES", "TIMEOUTS"] and row[8:10] == ["3", "0"]  # in the window
    cur.rows[("r", "/svc/a", "base")].endpoints = {"available": 2, "probing": 1, "dead": 0}
    header, row = stat_table(prev, cur, by="client")
    assert header[-2] == "ENDPOINTS" and row[-2] == "2/3"  # available of all, now
    assert quantile(0.5, {0.001: 0, 0.01: 0, inf: 0}) is None
    assert quantile(0.99, {0.001: 0, 0.01: 10, inf: 10}) == pytest.approx(0.001 + 0.009 * 0.99)


def test_delegate_from_a_running_proxy(run) -> None:
    async def go() -> None:
        rt = await start_proxy(yaml_for("/srv/a => /$/inet/127.1/8080; /srv/b => /$/inet/127.1/8081; /svc/web => 1 * /srv/a & 3 * /srv/b"))
        try:
            admin = f"{rt.admin.address[0]}:{rt.admin.address[1]}"
            rc, text = await cli(["delegate", "--router", "web", "--admin", admin, "/svc/web"])
            assert rc == 0, text
            assert "1 (25%) delegate /srv/a" in text and "3 (75%) delegate /srv/b" in text
            assert "-> /$/inet/127.1/8081  [127.0.0.1:8081]  <success>" in text
            rc, text = await cli(["delegate", "--router", "web", "--admin", admin, "--dtab", "/svc/web => /srv/nope", "/svc/web"])
            assert rc == 0
            assert "override: /svc/web => /srv/nope" in text
            assert "neg /srv/nope  via /svc/web => /srv/nope  <negative>" in text
            rc, _ = await cli(["delegate", "--router", "nope", "--admin", admin, "/svc/web"])
            assert rc == 1
            rc, _ = await cli(["delegate", "--router", "web", "--admin", admin, "svc"])
            assert rc == 1
        finally:
            await rt.drain()

    run(go())


def test_delegate_offline_and_check(tmp_path: Any, capsys) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml_for("/svc => /$/inet/127.1/8080"))
    args = parse(["delegate", "-c", str(good), "/svc/web"])
    out = io.StringIO()
    assert args.fn(args, out) == 0
    assert "bound: /$/inet/127.1/8080" in out.getvalue()
    assert "-> /$/inet/127.1/8080 residual /web" in out.getvalue()

    args = parse(["check", str(good)])
    out = io.StringIO()
    assert args.fn(args, out) == 0
    assert "router web: 1 dentries" in out.getvalue()

    bad = tmp_path / "bad.yaml"
    bad.write_text("routers:\n- protocol: http\n  label: web\n  dtab: |\n    /svc => /a;\n    /svc/x => /b |;\n  servers:\n  - port: 4140\n")
    args = parse(["check", str(bad)])
    assert args.fn(args, io.StringIO()) == 1
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith(f"dtabproxy check: {bad}:6:19: routers[0].dtab: invalid dtab: ")
    src, caret = err.splitlines()[-2:]
    assert src == "  6 |     /svc/x => /b |;" and caret.endswith("^")
    assert caret.index("^") == src.index("|;") + 1  # under the ';'



# -- issue 14, item 9 -------------------------------------------------------------------------


def _nobody_listens() -> str:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing answers there
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_delegate_with_neither_router_nor_config_uses_the_embedded_default(monkeypatch, capsys) -> None:
    nobody = _nobody_listens()
    monkeypatch.setenv("DTABPROXY_ADMIN", nobody)
    args = parse(["delegate", "/svc/world"])
    out = io.StringIO()
    assert args.fn(args, out) == 0
    text = out.getvalue()
    assert text.splitlines()[0] == (
        f"source: the embedded default config (config/default.yaml), router http (no proxy answered on http://{nobody})"
    )
    assert "bound: /$/inet/127.0.0.1/7778" in text

    # A name that binds to nothing: the tree is shown, and the exit status says so.
    args = parse(["delegate", "/svc/nowhere"])
    out = io.StringIO()
    assert args.fn(args, out) == 1
    assert "neg /host/nowhere" in out.getvalue()
    assert "dtabproxy delegate: /svc/nowhere binds to nothing (negative)" in capsys.readouterr().err


def test_delegate_with_neither_uses_the_proxy_on_the_default_admin_port(run, monkeypatch) -> None:
    async def go() -> None:
        rt = await start_proxy(yaml_for("/svc/web => /$/inet/127.1/8080"))
        try:
            monkeypatch.setenv("DTABPROXY_ADMIN", f"{rt.admin.address[0]}:{rt.admin.address[1]}")
            rc, text = await cli(["delegate", "/svc/web"])
            assert rc == 0, text
            assert text.splitlines()[0] == f"source: the running proxy at http://{rt.admin.address[0]}:{rt.admin.address[1]}, router web"
            assert "-> /$/inet/127.1/8080" in text
            rc, text = await cli(["delegate", "/svc/other"])
            assert rc == 1 and "neg" in text
        finally:
            await rt.drain()

    run(go())


def test_check_gives_a_column_for_errors_that_are_not_dtab_errors(tmp_path: Any, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routers:\n- protocol: http\n  servers:\n  - port: abc\n")
    args = parse(["check", str(bad)])
    assert args.fn(args, io.StringIO()) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"dtabproxy check: {bad}:4:11: routers[0].servers[0].port: expected an integer 1-65535 (or 0: any free port), got 'abc'"
    assert err[1] == "  4 |   - port: abc" and err[2].index("^") == err[1].index("abc")

    bad.write_text("routers:\n- protocol: http\n  lable: x\n")
    assert args.fn(args, io.StringIO()) == 1
    assert capsys.readouterr().err.startswith(f"dtabproxy check: {bad}:3:3: routers[0]: unknown key 'lable'")


def test_check_prints_each_import_note_once(tmp_path: Any, capsys, caplog) -> None:
    import shutil

    from tests.unit.importers.test_importers import FIXTURES

    (tmp_path / "res").mkdir()
    shutil.copy(f"{FIXTURES}/istio-reviews.yaml", tmp_path / "res" / "r.yaml")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("routers:\n- protocol: http\n  dtab: /svc => /$/inet/127.0.0.1/1\n  resources: res\n  servers: [{port: 0}]\n")
    args = parse(["check", str(cfg)])
    out = io.StringIO()
    with caplog.at_level("WARNING"):
        assert args.fn(args, out) == 0
    shown = out.getvalue() + capsys.readouterr().err + caplog.text
    assert shown.count("spec.http[0].retries: retries are not translated") == 1


def test_import_lists_what_was_not_translated_once_on_a_terminal(monkeypatch, capsys) -> None:
    from config.importers.cli import cmd_import
    from tests.unit.importers.test_importers import FIXTURES

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr("sys.stdout", tty)
    ns = argparse.Namespace(files=[f"{FIXTURES}/istio-reviews.yaml"], prefix="/svc", strict=False)
    assert cmd_import(ns) == 0
    shown = tty.getvalue() + capsys.readouterr().err
    assert shown.count("spec.http[0].retries: retries are not translated") == 1
