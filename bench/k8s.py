"""Kubernetes discovery, measured: `python -m bench.k8s` (from the repository root).

1. Propagation: the time from an endpoint change in the API to the first request that
   reaches the new address. The test API server (tests/k8s/apiserver.py) runs here,
   the proxy as its own process with the io.l5d.k8s namer, and a client sends requests
   back to back through it. 50 times, the Service's EndpointSlice is replaced by one
   holding a new backend only; the clock runs from the write in the API server to the
   new backend's first request (p50, p99, max).
2. The namer's cost: a process running only the namer (as the proxy would: every
   name looked up, so every set is live) against 1,000 Services of 10 endpoints each,
   while the API changes 100 EndpointSlices a second (one endpoint address each) for
   `--churn-s` seconds. Reported: its CPU (seconds of CPU per second), its RSS before
   the namer started, after the first lists, and after the churn, and whether it kept
   up (the version it had seen when the writes stopped).

Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the test API server lives under tests/

from tests.k8s.apiserver import ApiServer  # noqa: E402


def _rss_kib(pid: int | None = None) -> int:
    path = f"/proc/{pid or os.getpid()}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _slice(name: str, svc: str, port: int, addrs: list[str], node: str = "node-a") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}, "nodeName": node} for a in addrs]}  # fmt: skip


def _service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}  # fmt: skip


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


# -- 1. propagation ------------------------------------------------------------------------


async def propagation(changes: int) -> dict[str, Any]:
    server = await ApiServer().start()
    loop = asyncio.get_running_loop()
    first: dict[int, float] = {}
    arrived: dict[int, asyncio.Event] = {}

    def handler(i: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    if not head:
                        return
                    if i not in first:
                        first[i] = time.perf_counter()
                        arrived[i].set()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            finally:
                writer.close()
        return handle

    backends = []
    for i in range(changes + 1):
        arrived[i] = asyncio.Event()
        backends.append(await asyncio.start_server(handler(i), "127.0.0.1", 0))
    ports = [b.sockets[0].getsockname()[1] for b in backends]
    server.put(_service("web"))
    server.put(_slice("web-1", "web", ports[0], ["127.0.0.1"]))
    host, port = server.url.split("//")[1].split(":")
    tmp = tempfile.mkdtemp(prefix="bench-k8s-")
    cfg = Path(tmp) / "config.yaml"
    cfg.write_text(f"""
namers: [{{kind: io.l5d.k8s, host: {host}, port: {port}}}]
routers:
- protocol: http
  label: bench
  dtab: /svc => /#/io.l5d.k8s/default/http;
  servers: [{{ip: 127.0.0.1, port: 0}}]
""")
    proxy = await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy", "run", "-c", str(cfg),
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                 cwd=ROOT)  # fmt: skip
    assert proxy.stdout is not None
    proxy_port = 0
    while not proxy_port:
        line = await asyncio.wait_for(proxy.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the proxy exited")
        if b"listening on" in line:
            proxy_port = int(line.rsplit(b":", 1)[1])
    drain = loop.create_task(_drain(proxy.stdout))
    stop = asyncio.Event()
    sent = 0

    async def client() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        req = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"
        while not stop.is_set():
            writer.write(req)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            sent += 1
        writer.close()

    clients = [loop.create_task(client()) for _ in range(2)]
    samples: list[float] = []
    try:
        await asyncio.wait_for(arrived[0].wait(), 30)
        for i in range(1, changes + 1):
            t0 = time.perf_counter()
            server.put(_slice("web-1", "web", ports[i], ["127.0.0.1"]))  # the old address leaves, the new comes
            await asyncio.wait_for(arrived[i].wait(), 30)
            samples.append((first[i] - t0) * 1000)
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        proxy.terminate()
        await proxy.wait()
        drain.cancel()
        for b in backends:
            b.close()
        await server.stop()
    return {"changes": changes, "requests": sent, "p50_ms": statistics.median(samples), "p99_ms": _pct(samples, 99),
            "max_ms": max(samples), "min_ms": min(samples)}  # fmt: skip


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


# -- 2. the namer's cost ---------------------------------------------------------------------


async def namer_cost(services: int, endpoints: int, rate: float, churn_s: float) -> dict[str, Any]:
    server = await ApiServer().start()
    addrs = {i: [f"10.{i // 250}.{i % 250}.{j}" for j in range(endpoints)] for i in range(services)}
    for i in range(services):
        server.put(_service(f"svc-{i}"))
        server.put(_slice(f"svc-{i}-1", f"svc-{i}", 8080, addrs[i]))
    child = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.k8s", "--namer-child", server.url,
                                                 "--services", str(services), stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE, cwd=ROOT)  # fmt: skip
    assert child.stdout is not None and child.stdin is not None

    async def ask(cmd: str) -> dict[str, Any]:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(cmd.encode() + b"\n")
        await child.stdin.drain()
        return dict(json.loads(await asyncio.wait_for(child.stdout.readline(), 120)))

    try:
        ready = json.loads(await asyncio.wait_for(child.stdout.readline(), 120))
        start = await ask("start")
        t0 = time.perf_counter()
        n = 0
        interval = 1.0 / rate
        next_at = t0
        while time.perf_counter() - t0 < churn_s:
            i = n % services
            a = addrs[i]
            a[n % endpoints] = f"10.{200 + (n // 250) % 50}.{n % 250}.{i % 250}"
            server.put(_slice(f"svc-{i}-1", f"svc-{i}", 8080, a))
            n += 1
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        elapsed = time.perf_counter() - t0
        written_rv = server.rv
        end = await ask(f"stop {written_rv}")
        await ask("quit")
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
        await server.stop()
    cpu = end["cpu_s"] - start["cpu_s"]
    return {
        "services": services, "endpoints_per_service": endpoints, "changes": n, "changes_per_s": n / elapsed,
        "seconds": elapsed, "cpu_s_per_s": cpu / end["wall_s"], "caught_up_s": end["caught_up_s"],
        "rss_kib_before_namer": ready["rss_before_kib"], "rss_kib_synced": ready["rss_synced_kib"],
        "rss_kib_after_churn": end["rss_kib"], "sync_s": ready["sync_s"],
    }  # fmt: skip


async def _namer_child(url: str, services: int) -> None:
    from dtab import Path as DPath
    from proxy.discovery.k8s import K8sNamer
    from proxy.discovery.k8s_api import ApiTarget

    rss_before = _rss_kib()
    namer = K8sNamer(ApiTarget(url))
    t = time.perf_counter()
    await namer.start()
    sync_s = time.perf_counter() - t
    sets = [namer.lookup(DPath.of("default", "http", f"svc-{i}")) for i in range(services)]
    assert all(getattr(s, "value", None) is not None for s in sets)
    print(json.dumps({"rss_before_kib": rss_before, "rss_synced_kib": _rss_kib(), "sync_s": sync_s}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    t_start = 0.0
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "quit":
            print("{}", flush=True)
            break
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        if line[0] == "start":
            t_start = time.perf_counter()
            print(json.dumps({"cpu_s": cpu}), flush=True)
        elif line[0] == "stop":
            wall = time.perf_counter() - t_start
            t = time.perf_counter()
            slices = next(r for r in namer.reflectors if r.what.startswith("endpointslices"))
            await asyncio.wait_for(slices.wait_version(line[1]), 60)  # what was written, seen
            caught = time.perf_counter() - t
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall + caught, "caught_up_s": caught,
                              "rss_kib": _rss_kib()}), flush=True)  # fmt: skip
    await namer.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.k8s", description=__doc__.split("\n\n")[0])
    p.add_argument("--changes", type=int, default=50, help="endpoint changes timed (default 50)")
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per service (default 10)")
    p.add_argument("--rate", type=float, default=100.0, help="EndpointSlice changes per second (default 100)")
    p.add_argument("--churn-s", type=float, default=30.0, help="how long the changes go on (default 30)")
    p.add_argument("--only", choices=("propagation", "namer"))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--namer-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.namer_child:
        asyncio.run(_namer_child(args.namer_child, args.services))
        return 0
    out: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "load": os.getloadavg()}
    if args.only in (None, "propagation"):
        r = out["propagation"] = asyncio.run(propagation(args.changes))
        print(f"endpoint change -> first request on the new address, {r['changes']} changes: "
              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms, min {r['min_ms']:.2f} ms "
              f"({r['requests']} requests sent meanwhile)")  # fmt: skip
    if args.only in (None, "namer"):
        r = out["namer"] = asyncio.run(namer_cost(args.services, args.endpoints, args.rate, args.churn_s))
        print(f"namer, {r['services']} services x {r['endpoints_per_service']} endpoints, {r['changes_per_s']:.0f} "
              f"EndpointSlice changes/s for {r['seconds']:.0f} s: CPU {100 * r['cpu_s_per_s']:.1f}% of a core, "
              f"RSS {r['rss_kib_before_namer'] / 1024:.1f} MiB before the namer, {r['rss_kib_synced'] / 1024:.1f} MiB "
              f"after the first lists ({r['sync_s']:.2f} s), {r['rss_kib_after_churn'] / 1024:.1f} MiB after the churn; "
              f"caught up {r['caught_up_s'] * 1000:.0f} ms after the last write")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
