"""Load generators: wrk and h2load when installed, the built-in Python one otherwise.

Owns the command lines and the parsing of their output into one measurement shape:
`{"rps", "p50_ms", "p99_ms", "p999_ms", "requests", "errors", "loadgen"}`. Each run
is a child process pinned to the client core, with a deadline of its duration plus
a margin. It must not interpret the figures (that is the report's job).

- wrk (Debian `wrk`): HTTP/1.1 at max rate; a Lua script sets the headers, rotates
  the Host when asked, and prints the latency percentiles as JSON.
- h2load (Debian `nghttp2-client`): h2c and gRPC; latencies from its per-request log.
- bench.pyload: the fallback, and always the fixed-rate generator (wrk has no
  fixed-rate mode, and h2load's --rps does not correct for coordinated omission).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from . import procs
from .probe import GRPC_PATH, GRPC_REQUEST

REPO = Path(__file__).resolve().parent.parent

PYLOAD_LIMITS = (
    "bench.pyload is one Python process (uvloop + httptools): it tops out at a few tens "
    "of thousands of req/s on this class of core, so max-rate figures measured with it "
    "may be the generator's ceiling rather than the target's"
)


class LoadgenError(Exception):
    pass


def tools() -> dict[str, str | None]:
    return {"wrk": procs.which("wrk"), "h2load": procs.which("h2load")}


def _ms(us: float) -> float:
    return round(us / 1000.0, 4)


_WRK_LUA = r"""
-- Written by bench/loadgen.py for one run.
local hosts = %(hosts)d
local path = "%(path)s"
wrk.headers["Host"] = "bench"
%(headers)s
local reqs = {}
local n = 0
if hosts > 0 then
  init = function(args)
    for i = 0, hosts - 1 do
      reqs[i + 1] = wrk.format("GET", path, {Host = "app" .. i})
    end
  end
  request = function()
    n = n %% hosts + 1
    return reqs[n]
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50":%%d,"p90":%%d,"p99":%%d,"p999":%%d,"max":%%d,"mean":%%f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def _lua_str(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def wrk(
    port: int,
    *,
    conns: int,
    duration_s: float,
    path: str = "/",
    headers: tuple[str, ...] = (),
    hosts: int = 0,
    cpu: int | None,
    workdir: Path,
) -> dict[str, object]:
    exe = procs.which("wrk")
    if exe is None:
        raise LoadgenError("wrk is not installed")
    hdr_lines = []
    for h in headers:
        name, _, value = h.partition(":")
        hdr_lines.append(f'wrk.headers["{_lua_str(name.strip())}"] = "{_lua_str(value.strip())}"')
    script = _WRK_LUA % {"hosts": hosts, "path": _lua_str(path), "headers": "\n".join(hdr_lines)}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", dir=workdir, delete=False) as f:
        f.write(script)
        script_path = f.name
    # wrk takes whole seconds; one thread, because it shares its core with the backend.
    secs = max(1, round(duration_s))
    argv = [
        exe,
        "-t1",
        f"-c{conns}",
        f"-d{secs}s",
        "--timeout",
        "5s",
        "-s",
        script_path,
        f"http://127.0.0.1:{port}{path}",
    ]
    try:
        out = procs.run(argv, timeout_s=secs + 30, cpu=cpu)
    finally:
        os.unlink(script_path)
    m = re.search(r"^BENCHJSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or m is None:
        raise LoadgenError(f"wrk failed (rc {out.returncode}): {(out.stderr or out.stdout).strip()[-300:]}")
    d = json.loads(m.group(1))
    dur = d["duration_us"] / 1e6
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    ok = d["requests"] - d["status"]
    return {
        "rps": ok / dur if dur > 0 else 0.0,
        "p50_ms": _ms(d["p50"]),
        "p90_ms": _ms(d["p90"]),
        "p99_ms": _ms(d["p99"]),
        "p999_ms": _ms(d["p999"]),
        "requests": ok,
        "errors": errors,
        "duration_s": dur,
        "loadgen": "wrk",
    }


def h2load(
    port: int,
    *,
    conns: int,
    streams: int,
    duration_s: float,
    grpc: bool = False,
    cpu: int | None,
    workdir: Path,
) -> dict[str, object]:
    exe = procs.which("h2load")
    if exe is None:
        raise LoadgenError("h2load is not installed (Debian package nghttp2-client)")
    secs = max(1, round(duration_s))
    fd, log_path = tempfile.mkstemp(suffix=".log", dir=workdir)
    os.close(fd)
    argv = [exe, "-t1", "-c", str(conns), "-m", str(streams), "-D", str(secs), "--log-file", log_path]
    argv += ["-H", ":authority: bench"]  # the name every target sees, as Host: bench over HTTP/1.1
    body_path = None
    if grpc:
        fd, body_path = tempfile.mkstemp(suffix=".grpc", dir=workdir)
        os.write(fd, GRPC_REQUEST)
        os.close(fd)
        # -d makes the request a POST with that body; gRPC needs its content type and TE.
        argv += ["-d", body_path, "-H", "content-type: application/grpc", "-H", "te: trailers"]
        uri = f"http://127.0.0.1:{port}{GRPC_PATH}"
    else:
        uri = f"http://127.0.0.1:{port}/"
    argv.append(uri)
    try:
        out = procs.run(argv, timeout_s=secs + 30, cpu=cpu)
        lat_us: list[int] = []
        bad_status = 0
        with open(log_path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    status = int(parts[1])
                    if 200 <= status < 300:
                        lat_us.append(int(parts[2]))
                    else:
                        bad_status += 1
    finally:
        os.unlink(log_path)
        if body_path:
            os.unlink(body_path)
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out.stdout)
    reqs = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        out.stdout,
    )
    if out.returncode != 0 or fin is None or reqs is None:
        raise LoadgenError(
            f"h2load failed (rc {out.returncode}): {(out.stderr or out.stdout).strip()[-300:]}"
        )
    dur = float(fin.group(1)) / (1000.0 if fin.group(2) == "ms" else 1.0)
    succeeded = len(lat_us)
    errors = int(reqs.group(5)) + int(reqs.group(6)) + int(reqs.group(7)) + bad_status
    from .pyload import percentiles_us

    p = percentiles_us([u * 1000 for u in lat_us])
    return {
        "rps": succeeded / dur if dur > 0 else 0.0,
        "p50_ms": _ms(p["p50"]),
        "p90_ms": _ms(p["p90"]),
        "p99_ms": _ms(p["p99"]),
        "p999_ms": _ms(p["p999"]),
        "requests": succeeded,
        "errors": errors,
        "duration_s": dur,
        "loadgen": "h2load",
    }


def _pyload_argv(mode: str, port: int, **opts: object) -> list[str]:
    argv = [sys.executable, "-m", "bench.pyload", mode, "--port", str(port)]
    for k, v in opts.items():
        if v is None:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, list | tuple):
            for item in v:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(v)]
    return argv


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def pyload(
    mode: str,
    port: int,
    *,
    duration_s: float,
    cpu: int | None,
    conns: int = 50,
    path: str = "/",
    headers: tuple[str, ...] = (),
    hosts: int = 0,
    rate: float | None = None,
    streams: int | None = None,
) -> dict[str, object]:
    argv = _pyload_argv(
        mode,
        port,
        duration=duration_s,
        conns=conns,
        path=path,
        header=list(headers),
        hosts=hosts or None,
        rate=rate,
        streams=streams,
    )
    try:
        out = subprocess.run(
            procs.pin_command(argv, cpu),
            capture_output=True,
            text=True,
            timeout=duration_s * 2 + 30,
            env=_env(),
            cwd=str(REPO),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LoadgenError(f"bench.pyload {mode} did not finish in time") from None
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise LoadgenError(f"bench.pyload {mode} failed (rc {out.returncode}): {out.stderr.strip()[-300:]}")
    d = json.loads(lines[-1])
    lat = d["latency_us"]
    result: dict[str, object] = {
        "rps": d["rps"],
        "p50_ms": _ms(lat["p50"]),
        "p90_ms": _ms(lat["p90"]),
        "p99_ms": _ms(lat["p99"]),
        "p999_ms": _ms(lat["p999"]),
        "requests": d["requests"],
        "errors": d["errors"],
        "duration_s": d["duration_s"],
        "loadgen": "pyload-" + mode,
    }
    if "service_latency_us" in d:
        s = d["service_latency_us"]
        result["service_p50_ms"] = _ms(s["p50"])
        result["service_p99_ms"] = _ms(s["p99"])
        result["extra_connections"] = d.get("extra_connections", 0)
    return result


class IdleHolder:
    """`bench.pyload idle` as a running child: open, report, hold until released."""

    def __init__(self, port: int, conns: int, cpu: int | None, mode: str = "idle") -> None:
        argv = _pyload_argv(mode, port, conns=conns, hold_max_s=120)
        self.proc = subprocess.Popen(
            procs.pin_command(argv, cpu),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=str(REPO),
        )

    def wait_ready(self, timeout_s: float) -> dict[str, object]:
        import selectors

        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout_s):
                raise LoadgenError(f"idle connections not open after {timeout_s:.0f}s")
        finally:
            sel.close()
        line = self.proc.stdout.readline()
        if not line.startswith("{"):
            err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
            raise LoadgenError(f"bench.pyload idle failed: {line.strip()} {err.strip()[-300:]}")
        ready: dict[str, object] = json.loads(line)
        return ready

    def release(self, timeout_s: float = 30.0) -> dict[str, object]:
        try:
            out, err = self.proc.communicate("\n", timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise LoadgenError("bench.pyload idle did not exit") from None
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise LoadgenError(f"bench.pyload idle: no result: {err.strip()[-300:]}")
        result: dict[str, object] = json.loads(lines[-1])
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
