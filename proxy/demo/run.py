"""`dtabproxy demo`: Linkerd 1's hello/world walkthrough on one machine.

Starts the three demo backends (`proxy.demo.apps`: hello on 7777, world-v1 on 7778,
world-v2 "earth" on 7779) and then the proxy itself (`python -m proxy run -c <config>`,
with the packaged `config/default.yaml` unless told otherwise), each as a child
process, waits until all of them accept connections, and prints the two curl lines of
the walkthrough and the playground address. It runs until Ctrl-C or SIGTERM, then stops
the proxy first (it drains) and the backends after it.

`--check` makes the two walkthrough requests itself, prints the answers and exits 0 when
they are right (`Hello (…) world (…)!!`, then `Hello (…) earth (…)!!` with the
override), 1 otherwise: the end-to-end smoke test of the whole proxy.

This module owns process orchestration only. It never imports the proxy runtime: the
proxy is run as a separate process, exactly as a user would run it. Ports other than the
defaults are handled by rewriting a copy of the config (the proxy and admin ports and the
`/$/inet/127.0.0.1/<port>` names of the backends), never by special flags to the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib.resources
import os
import re
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO

from proxy.demo.apps import HttpClient, UpstreamError

HOST = "127.0.0.1"
DEFAULT_PORT = 4140
DEFAULT_ADMIN_PORT = 9990
#: name, default port, app arguments. The ports are the ones the default dtab names.
BACKENDS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("hello", 7777, ("hello",)),
    ("world-v1", 7778, ("world", "--text", "world")),
    ("world-v2", 7779, ("world", "--text", "earth")),
)
# A backend imports only the standard library (and uvloop): a second is plenty, ten
# covers a cold, loaded CI machine. The proxy compiles its config and starts its admin
# server before it listens, so it gets longer.
BACKEND_READY_TIMEOUT_S = 10.0
PROXY_READY_TIMEOUT_S = 30.0
ADMIN_READY_TIMEOUT_S = 5.0
CONNECT_POLL_S = 0.05  # polling a local connect costs ~nothing; 50 ms keeps startup snappy
STOP_GRACE_S = 10.0  # the proxy's own drain grace (Admin.shutdown_grace_ms) is 10 s

WALKTHROUGH_HOST = "www.hello.world"
OVERRIDE = "/host/world => /srv/world-v2;"


class DemoError(Exception):
    """The demo could not start; the message says what to do about it."""


@dataclass(slots=True)
class Child:
    name: str
    proc: asyncio.subprocess.Process
    port: int


# ------------------------------------------------------------------------ ports, config


def reserve_port(port: int, what: str) -> socket.socket:
    """Bind (without listening) `port`, or a free port when it is 0, and return the
    socket; the caller closes it just before the proxy binds the port itself.

    Checked before anything starts, because afterwards a connect to a port somebody else
    holds would look exactly like our proxy being ready. Holding the reservation while
    the backends start keeps the OS from handing one of them the same port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # SO_REUSEADDR: a port in TIME_WAIT (a demo just stopped) is free for our purpose;
    # a listener still refuses the bind with EADDRINUSE.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((HOST, port))
    except OSError as exc:
        s.close()
        if exc.errno == errno.EADDRINUSE:
            flag = "--admin-port" if what == "admin" else "--port"
            raise DemoError(
                f"port {port} ({what}) is already in use; stop whatever listens there "
                f"(another `dtabproxy demo`?) or pass {flag}"
            ) from None
        raise DemoError(f"cannot use port {port} ({what}): {exc.strerror or exc}") from None
    return s


def default_config_text() -> str:
    try:
        return importlib.resources.files("config").joinpath("default.yaml").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise DemoError(f"the packaged default config (config/default.yaml) is missing: {exc}") from None


def default_config_path() -> str | None:
    """The packaged default config as a real file, when it is one (an installed or
    editable package); None when it only exists inside an archive."""
    try:
        res = importlib.resources.files("config").joinpath("default.yaml")
    except ModuleNotFoundError:
        return None
    path = os.fspath(res) if isinstance(res, os.PathLike) else None
    return path if path is not None and os.path.isfile(path) else None


def _replace_port(text: str, old: int, new: int) -> str:
    # Whole numbers only: 4140 in `port: 4140` or `:4140`, never inside 14140 or 1.4140.
    return re.sub(rf"(?<![\d.]){old}(?!\d)", str(new), text)


def rewrite_config(text: str, *, port: int, admin_port: int, backend_ports: dict[int, int]) -> str:
    """The config with the proxy's port, the admin port and the backends' `/$/inet`
    ports moved. Raises DemoError when a port to move does not appear in it, so a config
    that doesn't look like the default is not silently run on the wrong ports."""
    out = text
    for old, new in backend_ports.items():
        if old == new:
            continue
        name = f"/$/inet/{HOST}/{old}"
        if name not in out:
            raise DemoError(f"cannot move a backend to port {new}: the config does not name {name}")
        out = re.sub(rf"{re.escape(name)}(?!\d)", f"/$/inet/{HOST}/{new}", out)
    for old, new, what in ((DEFAULT_PORT, port, "proxy"), (DEFAULT_ADMIN_PORT, admin_port, "admin")):
        if old == new:
            continue
        moved = _replace_port(out, old, new)
        if moved == out:
            raise DemoError(f"cannot move the {what} to port {new}: the config does not mention port {old}")
        out = moved
    return out


# ----------------------------------------------------------------------------- children


async def start_backend(
    name: str, port: int, app_args: Sequence[str], *, proxy_port: int, stderr: IO[bytes] | None
) -> Child:
    argv = [sys.executable, "-m", "proxy.demo.apps", *app_args, "--host", HOST, "--port", str(port)]
    if app_args[0] == "hello":
        argv += ["--proxy", f"{HOST}:{proxy_port}"]
    argv.append("--exit-on-stdin-eof")  # if we die without cleaning up, they follow
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        # Own session: Ctrl-C reaches only us, so we stop the children in order.
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(BACKEND_READY_TIMEOUT_S):
            line = await proc.stdout.readline()
    except TimeoutError:
        await stop_child(proc)
        raise DemoError(f"{name} (port {port}) did not become ready within {BACKEND_READY_TIMEOUT_S:g}s")
    word, _, rest = line.decode(errors="replace").strip().partition(" ")
    if word == "ready" and rest.isdigit():
        return Child(name, proc, int(rest))
    await stop_child(proc)
    if word == "error":
        raise DemoError(f"{name} could not start: {rest}")
    raise DemoError(f"{name} (port {port}) exited with code {proc.returncode} before it was ready")


async def start_proxy(config_path: str, *, stderr: IO[bytes] | None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "run",
        "-c",
        config_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stderr,  # the proxy logs; keep our own stdout for the walkthrough
        stderr=stderr,
        start_new_session=True,
    )


async def wait_accepting(port: int, timeout_s: float, proc: asyncio.subprocess.Process, what: str) -> None:
    """Poll-connect to `port` until it accepts; fail early if `proc` exits meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if proc.returncode is not None:
            raise DemoError(
                f"the proxy exited with code {proc.returncode} before its {what} port {port} opened"
            )
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            if loop.time() >= deadline:
                raise DemoError(
                    f"the proxy's {what} port {port} did not open within {timeout_s:g}s"
                ) from None
            await asyncio.sleep(CONNECT_POLL_S)
            continue
        writer.close()
        return


async def stop_child(proc: asyncio.subprocess.Process, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM, wait up to `grace_s`, then SIGKILL. Returns the exit code."""
    if proc.stdin is not None:
        proc.stdin.close()  # a backend watching its stdin starts draining on this too
    if proc.returncode is None:
        try:
            proc.terminate()
        except ProcessLookupError:
            pass  # it exited between the check and the signal
    try:
        async with asyncio.timeout(grace_s):
            return await proc.wait()
    except TimeoutError:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        return await proc.wait()


# ---------------------------------------------------------------------- walkthrough


def curl_line(port: int, *, override: bool) -> str:
    extra = f" -H 'l5d-dtab: {OVERRIDE}'" if override else ""
    return f"curl -H 'Host: {WALKTHROUGH_HOST}'{extra} localhost:{port}"


def banner(port: int, admin_port: int, backends: Sequence[Child]) -> str:
    where = ", ".join(f"{c.name} {HOST}:{c.port}" for c in backends)
    return "\n".join(
        (
            f"dtabproxy demo: proxy on {HOST}:{port}, admin on {HOST}:{admin_port}",
            f"backends: {where}",
            "",
            "hello calls world through the proxy, passing on the l5d-ctx-* headers:",
            "",
            f"  $ {curl_line(port, override=False)}",
            f"  Hello ({HOST}) world ({HOST})!!",
            "",
            "a per-request override reaches the second hop as l5d-ctx-dtab:",
            "",
            f"  $ {curl_line(port, override=True)}",
            f"  Hello ({HOST}) earth ({HOST})!!",
            "",
            f"dtab playground: http://{HOST}:{admin_port}/delegator",
            "Ctrl-C to stop.",
        )
    )


async def check(port: int) -> bool:
    """Make the two walkthrough requests; print them and say whether both were right."""
    client = HttpClient(HOST, port)
    ok = True
    try:
        for override, want in ((False, b"world ("), (True, b"earth (")):
            headers = [(b"l5d-dtab", OVERRIDE.encode())] if override else []
            print(f"$ {curl_line(port, override=override)}")
            try:
                resp = await client.request(b"GET", b"/", host=WALKTHROUGH_HOST.encode(), headers=headers)
            except UpstreamError as exc:
                print(f"request failed: {exc}")
                ok = False
                continue
            body = resp.body.decode("utf-8", "replace")
            print(body if body.endswith("\n") else body + "\n", end="")
            good = resp.status == 200 and resp.body.startswith(b"Hello (") and want in resp.body
            if not good:
                err = resp.header(b"l5d-err")
                print(f"  ^ unexpected: status {resp.status}, wanted 'Hello (...) {want.decode()}...)!!'")
                if err is not None:
                    print(f"  l5d-err: {err.decode('latin-1')}")
            ok = ok and good
    finally:
        client.close()
    return ok


# ------------------------------------------------------------------------------- main


class _Demo:
    """The children of one demo run, and the order they start and stop in."""

    __slots__ = ("backends", "logfile", "proxy", "reserved", "workdir")

    def __init__(self, workdir: str, logfile: IO[bytes] | None) -> None:
        self.workdir = workdir
        self.logfile = logfile
        self.backends: list[Child] = []
        self.proxy: asyncio.subprocess.Process | None = None
        self.reserved: list[socket.socket] = []

    async def start(
        self, config_path: str | None, port: int, admin_port: int, backend_ports: Sequence[int]
    ) -> tuple[int, int]:
        """Start everything; returns the proxy and admin ports (resolved when 0)."""
        self.reserved.append(reserve_port(port, "proxy"))
        self.reserved.append(reserve_port(admin_port, "admin"))
        port, admin_port = (int(s.getsockname()[1]) for s in self.reserved)
        for (name, _, app_args), want in zip(BACKENDS, backend_ports, strict=True):
            child = await start_backend(name, want, app_args, proxy_port=port, stderr=self.logfile)
            self.backends.append(child)

        moved = {default: c.port for (_, default, _), c in zip(BACKENDS, self.backends, strict=True)}
        path = config_path or default_config_path()
        unchanged = port == DEFAULT_PORT and admin_port == DEFAULT_ADMIN_PORT
        unchanged = unchanged and all(d == p for d, p in moved.items())
        if path is None or not unchanged:
            if path is None:
                text = default_config_text()
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            path = os.path.join(self.workdir, "config.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(rewrite_config(text, port=port, admin_port=admin_port, backend_ports=moved))

        self.release_ports()
        self.proxy = await start_proxy(path, stderr=self.logfile)
        await wait_accepting(port, PROXY_READY_TIMEOUT_S, self.proxy, "router")
        try:
            await wait_accepting(admin_port, ADMIN_READY_TIMEOUT_S, self.proxy, "admin")
        except DemoError as exc:
            print(f"warning: {exc}; the playground may be unavailable", file=sys.stderr)
        return port, admin_port

    async def wait(self, stop: asyncio.Event) -> int:
        """Until `stop` is set (0) or a child exits on its own (1)."""
        assert self.proxy is not None
        children = {asyncio.ensure_future(c.proc.wait()): c.name for c in self.backends}
        children[asyncio.ensure_future(self.proxy.wait())] = "proxy"
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopped, *children], return_when=asyncio.FIRST_COMPLETED)
        for fut in (stopped, *children):
            fut.cancel()
        dead = [children[f] for f in done if f in children]
        if dead:
            print(f"dtabproxy demo: {', '.join(dead)} exited unexpectedly; stopping", file=sys.stderr)
            return 1
        print("\nstopping", file=sys.stderr)
        return 0

    def release_ports(self) -> None:
        for s in self.reserved:
            s.close()
        self.reserved.clear()

    async def stop(self) -> None:
        self.release_ports()
        if self.proxy is not None:
            await stop_child(self.proxy)  # first, so nothing routes to a backend that is gone
        await asyncio.gather(*(stop_child(c.proc) for c in self.backends))


async def run_demo(
    config_path: str | None = None,
    *,
    port: int = DEFAULT_PORT,
    admin_port: int = DEFAULT_ADMIN_PORT,
    backend_ports: Sequence[int] | None = None,
    check_only: bool = False,
) -> int:
    """Run the demo until a signal (or, with `check_only`, until the check is done).
    Returns the process exit code. Port 0 anywhere means "any free port"."""
    wanted = list(backend_ports) if backend_ports is not None else [p for _, p, _ in BACKENDS]
    if len(wanted) != len(BACKENDS):
        raise DemoError(f"expected {len(BACKENDS)} backend ports, got {len(wanted)}")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with tempfile.TemporaryDirectory(prefix="dtabproxy-demo-") as workdir, ExitStack() as stack:
            # With --check the children's logs would drown the verdict: keep them in a
            # file and show them only when something went wrong.
            logfile = (
                stack.enter_context(open(os.path.join(workdir, "children.log"), "w+b"))
                if check_only
                else None
            )
            demo = _Demo(workdir, logfile)
            code = 1
            try:
                port, admin_port = await demo.start(config_path, port, admin_port, wanted)
                if check_only:
                    code = 0 if await check(port) else 1
                else:
                    print(banner(port, admin_port, demo.backends), flush=True)
                    code = await demo.wait(stop)
            except DemoError as exc:
                print(f"dtabproxy demo: {exc}", file=sys.stderr)
            finally:
                await demo.stop()
            if logfile is not None and code != 0:
                logfile.seek(0)
                tail = logfile.read()[-8000:].decode("utf-8", "replace")
                if tail:
                    print(f"--- child process output (last 8000 bytes) ---\n{tail}", file=sys.stderr)
            return code
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _ports(text: str) -> list[int]:
    try:
        ports = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated ports, got {text!r}") from None
    if len(ports) != len(BACKENDS) or not all(0 <= p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"expected three comma-separated ports, got {text!r}")
    return ports


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The demo's options; pass a subparser to hang them under `dtabproxy demo`."""
    if parser is None:
        parser = argparse.ArgumentParser(prog="dtabproxy demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="proxy config (default: the packaged config/default.yaml)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="proxy port (default 4140; 0: any)")
    parser.add_argument(
        "--admin-port", type=int, default=DEFAULT_ADMIN_PORT, help="admin port (default 9990; 0: any)"
    )
    parser.add_argument(
        "--backend-ports",
        type=_ports,
        metavar="HELLO,V1,V2",
        help="ports of hello, world-v1, world-v2 (default 7777,7778,7779; 0: any)",
    )
    parser.add_argument("--any-ports", action="store_true", help="use free ports for everything")
    parser.add_argument("--check", action="store_true", help="make the walkthrough requests, exit 0 if right")
    return parser


def main(argv: Sequence[str] | None = None, *, args: argparse.Namespace | None = None) -> int:
    """Entry point for `dtabproxy demo` (`args` already parsed) or `python -m proxy.demo.run`."""
    if args is None:
        args = build_parser().parse_args(argv)
    port, admin_port, backend_ports = args.port, args.admin_port, args.backend_ports
    if args.any_ports:
        port, admin_port, backend_ports = 0, 0, [0] * len(BACKENDS)
    try:
        return asyncio.run(
            run_demo(
                args.config,
                port=port,
                admin_port=admin_port,
                backend_ports=backend_ports,
                check_only=args.check,
            )
        )
    except DemoError as exc:
        print(f"dtabproxy demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
