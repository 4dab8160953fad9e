"""The hello/world demo backends as real processes, the `dtabproxy demo` orchestrator
against a stand-in proxy, and the Kubernetes manifests in deploy/.

Every wait is on a signal the process gives (its `ready <port>` line, a log line, a
socket event); the timeouts only bound a broken run, they never pace a passing one.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.demo import run as demo_run

ROOT = Path(__file__).resolve().parents[2]
APPS = (sys.executable, "-m", "proxy.demo.apps")
BOUND_S = 30.0  # upper bound on any single wait; a passing run never gets near it

HELLO_RE = re.compile(r"^Hello \(127\.0\.0\.1\) (\w+) \(127\.0\.0\.1\)!!\n$")


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class App:
    """A demo backend process and the port it reported in its ready line."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=BOUND_S)


def read_line(stream, what: str) -> str:
    ready, _, _ = select.select([stream], [], [], BOUND_S)
    assert ready, f"no line from {what} within {BOUND_S}s"
    return stream.readline().decode()


@pytest.fixture
def start_app(loop_kind: str, tmp_path: Path):
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None, stderr=None, expect_ready: bool = True):
        full_env = {k: v for k, v in os.environ.items() if k not in ("POD_IP", "http_proxy", "HTTP_PROXY")}
        full_env.update(env or {})
        log = stderr if stderr is not None else open(tmp_path / f"app{len(started)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [*APPS, *args, "--loop", loop_kind],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=ROOT,
            bufsize=0,  # unbuffered: select() on the pipe then sees every line not yet read
        )
        started.append(proc)
        if stderr is None:
            log.close()  # the child holds its own descriptor
        line = read_line(proc.stdout, f"{args[0]} app")
        if not expect_ready:
            return proc, line
        word, _, port = line.strip().partition(" ")
        assert word == "ready", line
        return App(proc, int(port))

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=BOUND_S)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def world(start_app) -> App:
    return start_app("world", "--port", "0", "--text", "world")


@pytest.fixture
def hello(start_app, world: App) -> App:
    # No proxy in these tests: hello's "proxy" is world itself.
    return start_app("hello", "--port", "0", "--proxy", f"127.0.0.1:{world.port}")


def get(port: int, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND_S)
    try:
        conn.request("GET", "/", headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def recv_until_close(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def recv_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside a head: {data!r}"
        data += chunk
    return data


# ------------------------------------------------------------------------------ apps


def test_world_answers_its_word_and_ip(start_app) -> None:
    earth = start_app("world", "--port", "0", "--text", "earth")
    status, headers, body = get(earth.port)
    assert status == 200
    assert body == "earth (127.0.0.1)"
    assert headers["content-length"] == str(len(body))
    assert "x-seen-l5d-ctx" not in headers  # nothing was sent, nothing is echoed


def test_hello_answers_hello_and_worlds_body(hello: App) -> None:
    status, _, body = get(hello.port)
    assert status == 200
    m = HELLO_RE.match(body)
    assert m is not None, body
    assert m.group(1) == "world"


def test_pod_ip_is_the_advertised_address(start_app) -> None:
    app = start_app("world", "--port", "0", env={"POD_IP": "10.196.2.6"})
    assert get(app.port)[2] == "world (10.196.2.6)"


def test_hello_forwards_every_l5d_ctx_header_and_nothing_else(hello: App) -> None:
    status, headers, body = get(
        hello.port,
        {
            "L5d-Ctx-Dtab": "/host/world=>/srv/world-v2",
            "l5d-ctx-deadline": "1 2",
            "l5d-dtab": "/host/world => /srv/elsewhere",
            "x-unrelated": "1",
        },
    )
    assert status == 200, body
    # world saw the context dtab and echoed it; hello passed the echo on.
    assert headers["x-seen-l5d-ctx"] == "/host/world=>/srv/world-v2"
    # ...and world saw exactly the two context headers: no l5d-dtab (a user header,
    # never forwarded), no unrelated header.
    assert headers["x-seen-l5d"] == "l5d-ctx-dtab, l5d-ctx-deadline"


def test_hello_sends_world_the_host_and_context(start_app) -> None:
    # A world we control: see the exact request hello makes.
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        upstream.settimeout(BOUND_S)
        app = start_app("hello", "--port", "0", "--proxy", f"127.0.0.1:{upstream.getsockname()[1]}")
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=BOUND_S)
        conn.request(
            "GET",
            "/anything",
            headers={
                "Host": "www.hello.world",
                "l5d-ctx-dtab": "/a=>/b",
                "l5d-dtab": "/c=>/d",
                "l5d-ctx-trace": "abc",
            },
        )
        peer, _ = upstream.accept()
        with peer:
            peer.settimeout(BOUND_S)
            lines = recv_head(peer).lower().split(b"\r\n")
            peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nmars (1.2.3)")
            resp = conn.getresponse()
            body = resp.read()
        conn.close()
    assert lines[0] == b"get / http/1.1"
    assert b"host: world" in lines
    assert b"l5d-ctx-dtab: /a=>/b" in lines
    assert b"l5d-ctx-trace: abc" in lines
    assert not any(line.startswith(b"l5d-dtab") for line in lines)
    assert resp.status == 200
    assert body == b"Hello (127.0.0.1) mars (1.2.3)!!\n"


def test_hello_answers_502_when_world_is_unreachable(start_app) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead_port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    app = start_app("hello", "--port", "0", "--proxy", f"127.0.0.1:{dead_port}")
    status, _, body = get(app.port)
    assert status == 502
    assert body.startswith("Hello (127.0.0.1) could not reach world:")
    assert str(dead_port) in body


def test_hello_reports_a_failed_world_call(start_app) -> None:
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        upstream.settimeout(BOUND_S)
        app = start_app("hello", "--port", "0", "--proxy", f"127.0.0.1:{upstream.getsockname()[1]}")
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=BOUND_S)
        conn.request("GET", "/")
        peer, _ = upstream.accept()
        with peer:
            peer.settimeout(BOUND_S)
            recv_head(peer)
            msg = b"Unable to route request!"
            peer.sendall(
                b"HTTP/1.1 502 Bad Gateway\r\nl5d-err: no+route\r\nContent-Length: %d\r\n\r\n%s"
                % (len(msg), msg)
            )
            resp = conn.getresponse()
            body = resp.read().decode()
        conn.close()
    assert resp.status == 502
    assert body == "Hello (127.0.0.1) got 502 from world: Unable to route request!\n"


def test_keep_alive_serves_many_requests_on_one_connection(hello: App) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", hello.port, timeout=BOUND_S)
    try:
        socks = set()
        for i in range(5):
            conn.request("GET", f"/{i}", headers={"l5d-ctx-dtab": f"/n=>/{i}"})
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("x-seen-l5d-ctx") == f"/n=>/{i}"
            assert HELLO_RE.match(resp.read().decode())
            assert resp.getheader("connection") is None
            socks.add(id(conn.sock))
        assert len(socks) == 1  # http.client reconnects (new socket) if the server closed
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(world: App) -> None:
    with socket.create_connection(("127.0.0.1", world.port), timeout=BOUND_S) as s:
        s.sendall(
            b"GET / HTTP/1.1\r\nHost: a\r\nl5d-ctx-dtab: /first=>/x\r\n\r\n"
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nl5d-ctx-dtab: /third=>/x\r\n\r\n"
            b"3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = recv_until_close(s)
    responses = data.split(b"HTTP/1.1 ")[1:]
    assert len(responses) == 4
    assert all(r.startswith(b"200 OK\r\n") for r in responses)
    assert b"x-seen-l5d-ctx: /first=>/x\r\n" in responses[0]
    assert b"x-seen-l5d-ctx: /third=>/x\r\n" in responses[2]
    assert b"connection: close\r\n" in responses[3]
    assert all(r.endswith(b"world (127.0.0.1)") for r in responses)


def test_http10_closes_unless_keep_alive_is_asked_for(world: App) -> None:
    with socket.create_connection(("127.0.0.1", world.port), timeout=BOUND_S) as s:
        s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n")
        data = recv_until_close(s)  # returns only because the server closes after #2
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert b"connection: keep-alive\r\n" in first
    assert b"connection: close\r\n" in second


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host (RFC 9112 3.2)
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", b"505"),
        (b"GET /\r\nHost: a\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", b"400"),  # space before colon
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n", b"413"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
    ],
)
def test_malformed_requests_get_a_4xx_or_5xx_and_a_close(
    world: App, request_bytes: bytes, status: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", world.port), timeout=BOUND_S) as s:
        s.sendall(request_bytes)
        data = recv_until_close(s)
    assert data.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"connection: close\r\n" in data
    # The app survives a bad client.
    assert get(world.port)[0] == 200


def test_sigterm_exits_zero_and_closes_idle_keep_alive_connections(world: App, tmp_path: Path) -> None:
    with socket.create_connection(("127.0.0.1", world.port), timeout=BOUND_S) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        head = recv_head(s)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert world.terminate() == 0
        rest = recv_until_close(s)
    assert (head + rest).endswith(b"\r\n\r\nworld (127.0.0.1)")  # one whole response, then EOF
    # The drain closed the idle connection itself; it did not wait out its grace and cut it.
    assert "cut" not in (tmp_path / "app0.log").read_text()


def test_sigterm_lets_a_request_in_flight_finish(start_app) -> None:
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        upstream.settimeout(BOUND_S)
        app = start_app(
            "hello",
            "--port",
            "0",
            "--proxy",
            f"127.0.0.1:{upstream.getsockname()[1]}",
            "-v",
            stderr=subprocess.PIPE,
        )
        with socket.create_connection(("127.0.0.1", app.port), timeout=BOUND_S) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: www.hello.world\r\n\r\n")
            peer, _ = upstream.accept()  # hello is now waiting on world: a request in flight
            with peer:
                peer.settimeout(BOUND_S)
                recv_head(peer)
                app.proc.send_signal(signal.SIGTERM)
                # Wait until hello says it is draining, so the answer below truly
                # arrives during the drain.
                while "draining" not in read_line(app.proc.stderr, "hello stderr"):
                    pass
                peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nmars (1.2.3)")
                reply = recv_until_close(client)
        assert app.proc.wait(timeout=BOUND_S) == 0
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in reply  # the drain ends the keep-alive
    assert reply.endswith(b"\r\n\r\nHello (127.0.0.1) mars (1.2.3)!!\n")


def test_busy_port_is_named_and_exit_code_is_2(start_app, world: App) -> None:
    proc, line = start_app("world", "--port", str(world.port), expect_ready=False)
    assert line == f"error port {world.port} is already in use (cannot listen on 127.0.0.1:{world.port})\n"
    assert proc.wait(timeout=BOUND_S) == 2


def test_ready_file_holds_the_bound_port(start_app, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    app = start_app("world", "--port", "0", "--ready-file", str(ready))
    assert ready.read_text() == f"{app.port}\n"


def test_exit_on_stdin_eof(loop_kind: str) -> None:
    proc = subprocess.Popen(
        [*APPS, "world", "--port", "0", "--exit-on-stdin-eof", "--loop", loop_kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert read_line(proc.stdout, "world").startswith("ready ")
        proc.stdin.close()  # what an orchestrator's death looks like to its children
        assert proc.wait(timeout=BOUND_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=BOUND_S)
        proc.stdout.close()


# ----------------------------------------------------------------------- orchestrator

DEMO_CONFIG = """\
admin:
  ip: 127.0.0.1
  port: 9990
routers:
- protocol: http
  label: http
  dtab: |
    /srv/hello    => /$/inet/127.0.0.1/7777;
    /srv/world-v1 => /$/inet/127.0.0.1/7778;
    /srv/world-v2 => /$/inet/127.0.0.1/7779;
    /host/www.hello.world => /srv/hello;
    /host/world   => /srv/world-v1;
    /svc          => /host;
  servers:
  - ip: 127.0.0.1
    port: 4140   # curl localhost:4140
"""

# A stand-in for `python -m proxy run -c CONFIG` that does just what the walkthrough
# needs: Host routing by the config's /srv names, and l5d-dtab / l5d-ctx-dtab carried
# to the next hop as l5d-ctx-dtab (spec section 10). OBEY=0 makes it ignore overrides.
FAKE_PROXY = r"""
import asyncio, os, re, signal, sys
from proxy.demo.apps import HttpClient, Response, Server, header_value
text = open(sys.argv[1]).read()
srv = {k: int(v) for k, v in re.findall(r"/srv/([\w-]+)\s*=>\s*/\$/inet/127\.0\.0\.1/(\d+)", text)}
port, admin = int(re.search(r"port: (\d+)   #", text)[1]), int(re.search(r"port: (\d+)\n", text)[1])
obey = os.environ.get("OBEY", "1") == "1"
async def handle(req, ip):
    host = header_value(req.headers, b"host")
    over = b";".join(v for n, v in req.headers if n in (b"l5d-ctx-dtab", b"l5d-dtab") and obey)
    name = {b"www.hello.world": "hello", b"world": "world-v1"}[host]
    if name == "world-v1" and b"world-v2" in over:
        name = "world-v2"
    fwd = [(b"l5d-ctx-dtab", over)] if over else []
    r = await HttpClient("127.0.0.1", srv[name]).request(b"GET", b"/", host=host, headers=fwd)
    return Response(r.status, r.body)
async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    servers = [Server(handle), Server(handle)]
    await servers[0].start("127.0.0.1", port)
    await servers[1].start("127.0.0.1", admin)
    await stop.wait()
    for s in servers:
        await s.drain()
asyncio.run(main())
"""


@pytest.fixture
def fake_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    script = tmp_path / "fake_proxy.py"
    script.write_text(FAKE_PROXY)

    def use(obey: bool) -> None:
        async def start_proxy(config_path: str, *, stderr):
            return await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                config_path,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env={**os.environ, "OBEY": "1" if obey else "0"},
                start_new_session=True,
            )

        monkeypatch.setattr(demo_run, "start_proxy", start_proxy)

    return use


def run_check(config: Path) -> int:
    return asyncio.run(
        demo_run.run_demo(str(config), port=0, admin_port=0, backend_ports=[0, 0, 0], check_only=True)
    )


def test_check_passes_when_the_override_reaches_the_second_hop(fake_proxy, tmp_path: Path, capsys) -> None:
    fake_proxy(obey=True)
    config = tmp_path / "config.yaml"
    config.write_text(DEMO_CONFIG)
    assert run_check(config) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("$ curl -H 'Host: www.hello.world' localhost:")
    assert out[1] == "Hello (127.0.0.1) world (127.0.0.1)!!"
    assert out[2].endswith(
        "-H 'l5d-dtab: /host/world => /srv/world-v2;' localhost:" + out[0].rsplit(":", 1)[1]
    )
    assert out[3] == "Hello (127.0.0.1) earth (127.0.0.1)!!"


def test_check_fails_when_the_override_is_lost(fake_proxy, tmp_path: Path, capsys) -> None:
    fake_proxy(obey=False)
    config = tmp_path / "config.yaml"
    config.write_text(DEMO_CONFIG)
    assert run_check(config) == 1
    out = capsys.readouterr().out
    assert "Hello (127.0.0.1) world (127.0.0.1)!!\n  ^ unexpected" in out


def test_demo_names_a_busy_proxy_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy.demo.run",
                "--check",
                "--port",
                str(port),
                "--admin-port",
                "0",
                "--backend-ports",
                "0,0,0",
            ],
            capture_output=True,
            cwd=ROOT,
            timeout=BOUND_S,
        )
    assert done.returncode == 1
    assert f"port {port} (proxy) is already in use" in done.stderr.decode()


def test_demo_names_a_busy_backend_port_and_stops_the_others(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(DEMO_CONFIG)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy.demo.run",
                "--check",
                "-c",
                str(config),
                "--port",
                "0",
                "--admin-port",
                "0",
                "--backend-ports",
                f"0,{port},0",
            ],
            capture_output=True,
            cwd=ROOT,
            timeout=BOUND_S,  # also proves the hello started before it was stopped, not leaked
        )
    assert done.returncode == 1
    assert f"world-v1 could not start: port {port} is already in use" in done.stderr.decode()


def test_rewrite_config_moves_every_port_and_keeps_the_rest() -> None:
    out = demo_run.rewrite_config(
        DEMO_CONFIG, port=5140, admin_port=5990, backend_ports={7777: 8777, 7778: 7778, 7779: 17779}
    )
    assert "/srv/hello    => /$/inet/127.0.0.1/8777;" in out
    assert "/srv/world-v1 => /$/inet/127.0.0.1/7778;" in out
    assert "/srv/world-v2 => /$/inet/127.0.0.1/17779;" in out
    assert "port: 5140   # curl localhost:5140" in out
    assert "  port: 5990\n" in out
    doc = yaml.safe_load(out)
    assert doc["routers"][0]["servers"][0]["port"] == 5140
    assert doc["admin"]["port"] == 5990


def test_rewrite_config_refuses_a_config_that_does_not_name_the_backends() -> None:
    with pytest.raises(demo_run.DemoError, match=r"does not name /\$/inet/127.0.0.1/7777"):
        demo_run.rewrite_config("admin:\n  port: 9990\n", port=4140, admin_port=9990, backend_ports={7777: 1})


# -------------------------------------------------------------------------- deploy/

DEPLOY = ROOT / "deploy"


def deploy_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        with path.open() as f:
            docs.extend((path.name, d) for d in yaml.safe_load_all(f) if d is not None)
    return docs


def test_every_manifest_parses_and_has_a_kind() -> None:
    docs = deploy_docs()
    assert docs, "no manifests under deploy/"
    for name, doc in docs:
        assert doc.get("apiVersion"), name
        assert doc.get("kind"), name
        assert doc.get("metadata", {}).get("name"), name
    kinds = {d["kind"] for _, d in docs}
    assert {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "Service",
    } <= kinds


def test_daemonset_exposes_4140_on_the_host_and_probes_admin() -> None:
    (ds,) = [d for _, d in deploy_docs() if d["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "l5d"]
    ports = {p["containerPort"]: p for p in container["ports"]}
    assert ports[4140]["hostPort"] == 4140
    assert ports[4142]["hostPort"] == 4142
    assert "hostPort" not in ports[9990]  # admin stays on the pod
    assert container["args"] == ["run", "-c", "/config/config.yaml"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert container["readinessProbe"]["httpGet"] == {"path": "/admin/ready", "port": 9990}
    assert container["livenessProbe"]["httpGet"] == {"path": "/admin/ping", "port": 9990}
    # The ConfigMap it mounts exists and holds config.yaml, itself valid YAML with the
    # routers on the ports the DaemonSet exposes.
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    (cm,) = [
        d
        for _, d in deploy_docs()
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    ]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert {s["port"] for r in config["routers"] for s in r["servers"]} == {4140, 4141, 4142}
    assert config["admin"]["port"] == 9990


def test_hello_world_apps_use_the_node_local_proxy() -> None:
    docs = [d for _, d in deploy_docs()]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"hello", "world-v1", "world-v2"}
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert {"hello", "world-v1", "world-v2"} <= services
    (hello,) = deployments["hello"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in hello["env"]}
    assert env["http_proxy"]["value"] == "$(NODE_NAME):4140"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Deployment selectors must match their pod labels, or the API server rejects them.
    for d in deployments.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_dockerfile_installs_the_package_and_runs_dtabproxy() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"pip install .*\.", text)
    assert re.search(r'^ENTRYPOINT \["dtabproxy"\]', text, re.M)
