"""`workers: N`: real worker processes behind one port. Both serve (the per-worker request
counters say so), metrics sum across them, a killed worker is restarted with the state
the admin API set, SIGHUP and a config-file change reach both, a PUT of a dtab reaches
both, and SIGTERM drains requests in flight on both and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ..integration.harness import Backend, Client, Response
from .proc import ProxyProcess

pytestmark = pytest.mark.e2e

BOUND_S = 30.0  # an upper bound on each wait, so a hang fails instead of blocking


def _config(dtab: str, *, workers: int = 2, snapshot: str = "1", extra_server: int | None = None) -> str:
    servers = "  - {ip: 127.0.0.1, port: 0}\n"
    if extra_server is not None:
        servers += f"  - {{ip: 127.0.0.1, port: {extra_server}}}\n"
    return (
        "admin: {ip: 127.0.0.1, port: 0}\n"
        f"workers: {workers}\n"
        "routers:\n- protocol: http\n  label: web\n"
        f"  dtab: {json.dumps(dtab)}\n"
        "  rules:\n  - name: snapshot\n"
        f"    responseHeaders: {{set: {{x-snapshot: '{snapshot}'}}}}\n"
        f"  servers:\n{servers}"
    )


class Lines:
    """The proxy's output (stdout and stderr), read by a thread; `wait` blocks until a
    line after `mark` matches, bounded."""

    def __init__(self, p: ProxyProcess) -> None:
        self.p = p
        self.lines = p.output.splitlines(keepends=True)
        self.eof = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        out = self.p.proc.stdout
        assert out is not None
        for line in iter(out.readline, b""):
            with self.cond:
                self.lines.append(line)
                self.p.output += line
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def wait(self, pattern: bytes, after: int = 0, timeout: float = BOUND_S) -> re.Match[bytes]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[after:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    raise AssertionError(f"no line matching {pattern!r}: {self.p.output.decode(errors='replace')}")
                self.cond.wait(left)


async def _blocking(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _admin(p: ProxyProcess, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{p.admin_port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=BOUND_S) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


async def metrics(p: ProxyProcess) -> dict[str, float]:
    """Every sample of the merged scrape, by its `name{labels}`."""
    status, body = await _blocking(_admin, p, "GET", "/admin/metrics/prometheus")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _per_worker(m: dict[str, float]) -> list[float]:
    return [m[f'dtabproxy_worker_requests_total{{worker="{i}"}}'] for i in range(2)]


async def _get(port: int) -> Response:
    """One request on a new connection (the kernel picks a worker per connection)."""
    c = await Client.connect(port)
    try:
        return await c.request("GET", "/", {"Host": "web"})
    finally:
        await c.close()


async def until_both_served(p: ProxyProcess, port: int) -> tuple[list[Response], dict[str, float]]:
    """Requests, 10 at a time on new connections, until each worker answered some of
    them (its request counter moved); bounded. The responses and the last scrape."""
    before = _per_worker(await metrics(p))
    responses: list[Response] = []
    for _ in range(40):
        responses += await asyncio.gather(*(_get(port) for _ in range(10)))
        m = await metrics(p)
        if all(now > then for now, then in zip(_per_worker(m), before, strict=True)):
            return responses, m
    raise AssertionError(f"one worker served none of {len(responses)} requests: {_per_worker(m)}")


def _stop(p: ProxyProcess, lines: Lines) -> int:
    if p.proc.poll() is None:
        p.proc.terminate()
    code = p.proc.wait(BOUND_S)
    lines.thread.join(BOUND_S)
    return code


def test_both_workers_serve_metrics_sum_a_put_reaches_both_and_a_killed_worker_comes_back(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = await Backend("a").start(), await Backend("b").start()
        # `workers: 1` in the file, `--workers 2` on the command line: the flag wins.
        with ProxyProcess(_config(f"/svc => /$/inet/127.0.0.1/{a.port}", workers=1), tmp_path, args=["--workers", "2"]) as p:
            await _blocking(p.wait_ready, 1, True)
            lines = Lines(p)
            port = p.ports["web"]
            sent = 0

            responses, m = await until_both_served(p, port)
            sent += len(responses)
            assert [r.status for r in responses] == [200] * len(responses)
            assert all(r.body.startswith(b"a ") for r in responses)
            # Summed as if one process: the router's, the service's and the workers' totals agree.
            assert m['dtabproxy_router_requests_total{router="web",traffic="base"}'] == sent
            assert m['dtabproxy_service_requests_total{router="web",service="/svc/web",traffic="base"}'] == sent
            assert sum(_per_worker(m)) == sent
            assert m['dtabproxy_service_request_latency_seconds_count{router="web",service="/svc/web",traffic="base"}'] == sent
            assert m["dtabproxy_workers"] == 2
            # Each worker keeps its own failure accrual: merged, the endpoint is one endpoint.
            ca = f'router="web",client="/$/inet/127.0.0.1/{a.port}"'
            assert m[f'dtabproxy_client_endpoints{{{ca},state="available"}}'] == 1
            assert m[f"dtabproxy_client_ejections_total{{{ca}}}"] == 0
            # An expired deadline, refused by whichever worker took it: counted once in the sum.
            c = await Client.connect(port)
            past = time.time_ns() - 10**9
            r = await c.request("GET", "/", {"Host": "web", "l5d-ctx-deadline": f"{past - 10**9} {past}"})
            await c.close()
            assert r.status == 503
            sent += 1
            m = await metrics(p)
            pair = f'router="web",service="/svc/web",client="/$/inet/127.0.0.1/{a.port}",traffic="base"'
            assert m[f'dtabproxy_service_client_deadline_exceeded_total{{{pair},reason="l5d-ctx-deadline"}}'] == 1
            assert m[f"dtabproxy_service_client_retries_total{{{pair}}}"] == 0

            # A PUT is answered once both workers swapped the dtab.
            status, body = await _blocking(_admin, p, "PUT", "/admin/dtabs/web", f"/svc => /$/inet/127.0.0.1/{b.port}".encode())
            assert status == 200, body
            assert json.loads(body)["workers"] == {"0": "applied", "1": "applied"}
            responses, m = await until_both_served(p, port)
            sent += len(responses)
            assert all(r.status == 200 and r.body.startswith(b"b ") for r in responses)

            # SIGKILL worker 0: the death is logged, the other worker keeps serving, and
            # worker 0 comes back with the dtab the PUT set (not the file's).
            pid = int(lines.wait(rb"worker 0 started \(pid (\d+)\)").group(1))
            mark = lines.mark()
            os.kill(pid, signal.SIGKILL)
            await _blocking(lines.wait, rb"worker 0 \(pid %d\) was killed by signal 9 \(SIGKILL\); restarting it" % pid, mark)
            during = await asyncio.gather(*(_get(port) for _ in range(10)))
            sent += len(during)
            assert all(r.status == 200 and r.body.startswith(b"b ") for r in during)
            new_pid = int((await _blocking(lines.wait, rb"worker 0 restarted \(pid (\d+)", mark)).group(1))
            assert new_pid != pid
            responses, m = await until_both_served(p, port)
            sent += len(responses)
            assert all(r.status == 200 and r.body.startswith(b"b ") for r in responses)
            assert m['dtabproxy_worker_restarts_total{worker="0"}'] == 1
            assert m['dtabproxy_worker_up{worker="0"}'] == m['dtabproxy_worker_up{worker="1"}'] == 1
            # What the killed worker counted up to the scrape before its death still counts.
            assert m['dtabproxy_router_requests_total{router="web",traffic="base"}'] == sent

            # Decisions are merged: both workers' requests, numbered once, newest first.
            status, body = await _blocking(_admin, p, "GET", "/admin/decisions.json?router=web&limit=20")
            rows = json.loads(body)["decisions"]
            seqs = [d["seq"] for d in rows]
            assert len(rows) == 20 and seqs == sorted(set(seqs), reverse=True)
            assert all(d["endpoint"] == f"127.0.0.1:{b.port}" for d in rows)
            # What-if over both workers' decisions: the same numbers, each one moved to a.
            query = json.dumps({"router": "web", "dtab": f"/svc => /$/inet/127.0.0.1/{a.port}", "limit": 20}).encode()

            def what_if() -> tuple[int, bytes]:
                req = urllib.request.Request(f"http://127.0.0.1:{p.admin_port}/admin/whatif.json", data=query,
                                             method="POST", headers={"Content-Type": "application/json"})  # fmt: skip
                with urllib.request.urlopen(req, timeout=BOUND_S) as r:
                    return int(r.status), r.read()

            status, body = await _blocking(what_if)
            results = json.loads(body)["results"]
            assert [r["seq"] for r in results] == seqs
            assert {r["verdict"] for r in results} == {"moved"}

            # PUT /admin/sampling reaches both: at rate 0 neither samples another decision.
            status, body = await _blocking(_admin, p, "PUT", "/admin/sampling?rate=0")
            assert status == 200 and json.loads(body) == {"web": 0.0}, body
            sampled = 'dtabproxy_router_decisions_sampled_total{router="web"}'
            before = (await metrics(p))[sampled]
            _, m = await until_both_served(p, port)
            assert m[sampled] == before
            assert _stop(p, lines) == 0
        await a.close()
        await b.close()

    asyncio.run(main())


def _write_same_stamp(path: Path, text: str) -> None:
    """Replace the file with `text` (of the same size) under the old modification time:
    the 500 ms poll sees no change, so only a SIGHUP reloads it."""
    st = path.stat()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    assert tmp.stat().st_size == st.st_size
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)


def test_sighup_and_a_config_file_change_reach_both_workers(tmp_path: Path) -> None:
    async def main() -> None:
        a = await Backend("a").start()
        dtab = f"/svc => /$/inet/127.0.0.1/{a.port}"
        with ProxyProcess(_config(dtab, snapshot="1"), tmp_path) as p:
            await _blocking(p.wait_ready, 1, True)
            lines = Lines(p)
            port = p.ports["web"]
            responses, _ = await until_both_served(p, port)
            assert {r.header("x-snapshot") for r in responses} == {"1"}

            _write_same_stamp(p.config, _config(dtab, snapshot="2"))
            mark = lines.mark()
            p.proc.send_signal(signal.SIGHUP)
            await _blocking(lines.wait, rb"INFO proxy\.runtime: reloaded .*on 2 workers", mark)
            responses, _ = await until_both_served(p, port)
            assert {r.header("x-snapshot") for r in responses} == {"2"}

            # A file change, seen by the main process's poll.
            mark = lines.mark()
            st = p.config.stat()
            p.config.write_text(_config(dtab, snapshot="3"))
            os.utime(p.config, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
            await _blocking(lines.wait, rb"INFO proxy\.runtime: reloaded .*on 2 workers", mark)
            responses, _ = await until_both_served(p, port)
            assert {r.header("x-snapshot") for r in responses} == {"3"}

            # A config that a worker cannot apply (a new server on a port another process
            # holds) is refused everywhere: both keep serving snapshot 3.
            with socket.socket() as taken:
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                mark = lines.mark()
                p.config.write_text(_config(dtab, snapshot="4", extra_server=taken.getsockname()[1]))
                os.utime(p.config, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
                await _blocking(lines.wait, rb"reload refused, keeping the running config: worker \d: .*in use", mark)
                responses, _ = await until_both_served(p, port)
                assert {r.header("x-snapshot") for r in responses} == {"3"}
            assert _stop(p, lines) == 0
        await a.close()

    asyncio.run(main())


def test_sigterm_drains_requests_in_flight_on_both_workers_and_exits_0(tmp_path: Path) -> None:
    async def main() -> None:
        release = asyncio.Event()
        arrived = asyncio.Condition()
        count = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            await reader.readuntil(b"\r\n\r\n")
            async with arrived:
                count += 1
                arrived.notify_all()
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
            await writer.drain()
            writer.close()

        backend = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = backend.sockets[0].getsockname()[1]
        with ProxyProcess(_config(f"/svc => /$/inet/127.0.0.1/{port}"), tmp_path) as p:
            await _blocking(p.wait_ready, 1, True)
            lines = Lines(p)
            # Requests that wait at the backend, one more at a time, until both workers
            # have some in flight (bounded).
            pending = []
            for n in range(1, 41):
                c = await Client.connect(p.ports["web"])
                pending.append(asyncio.ensure_future(c.request("GET", f"/{n}", {"Host": "web"})))
                async with arrived:
                    await asyncio.wait_for(arrived.wait_for(lambda n=n: count >= n), BOUND_S)
                m = await metrics(p)
                flying = [m[f'dtabproxy_worker_in_flight{{worker="{i}"}}'] for i in range(2)]
                if min(flying) >= 1:
                    break
            else:
                raise AssertionError(f"all requests went to one worker: {flying}")
            mark = lines.mark()
            p.proc.send_signal(signal.SIGTERM)
            await _blocking(lines.wait, rb"all workers stopped accepting", mark)
            status, _ = await _blocking(_admin, p, "GET", "/admin/ready")
            assert status == 503
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", p.ports["web"])
            release.set()
            responses = await asyncio.gather(*pending)
            assert [r.status for r in responses] == [200] * len(pending)
            assert all(r.body == b"done" for r in responses)
            code = await _blocking(p.proc.wait, BOUND_S)
            assert code == 0, p.output.decode(errors="replace")
            lines.thread.join(BOUND_S)
        backend.close()

    asyncio.run(main())


def test_a_put_to_a_dtab_store_is_written_once_and_reaches_both_workers_through_their_watches(tmp_path: Path) -> None:
    from ..k8s.apiserver import ApiServer
    from ..k8s.objects import dtab_object

    async def main() -> None:
        server = await ApiServer().start()
        a, b = await Backend("a").start(), await Backend("b").start()
        inet = {"a": f"/$/inet/127.0.0.1/{a.port}", "b": f"/$/inet/127.0.0.1/{b.port}"}
        server.put(dtab_object("web", [("/svc", inet["a"])], ns="dtabproxy"))
        host, port = server.url.split("//")[1].split(":")
        text = _config(f"/svc => {inet['b']}").replace(
            "  servers:", f"  dtabStore: {{kind: io.l5d.k8s, namespace: dtabproxy, host: {host}, port: {port}}}\n  servers:"
        )
        with ProxyProcess(text, tmp_path) as p:
            await _blocking(p.wait_ready, 1, True)
            lines = Lines(p)
            responses, _ = await until_both_served(p, p.ports["web"])
            assert all(r.body.startswith(b"a ") for r in responses)  # the stored dtab, in both workers
            rv = server.get("dtabs", "dtabproxy", "web")["metadata"]["resourceVersion"]

            def put(if_match: str) -> tuple[int, bytes, str | None]:
                req = urllib.request.Request(f"http://127.0.0.1:{p.admin_port}/admin/dtabs/web",
                                             data=f"/svc => {inet['b']};".encode(), method="PUT",
                                             headers={"If-Match": if_match})  # fmt: skip
                try:
                    with urllib.request.urlopen(req, timeout=BOUND_S) as r:
                        return int(r.status), r.read(), r.headers.get("ETag")
                except urllib.error.HTTPError as e:
                    return int(e.code), e.read(), e.headers.get("ETag")

            status, body, etag = await _blocking(put, '"not-the-version"')
            assert status == 412, body  # the API's compare-and-swap, as with one process
            assert etag == f'"{rv}"'
            assert server.get("dtabs", "dtabproxy", "web")["metadata"]["resourceVersion"] == rv
            status, body, etag = await _blocking(put, f'"{rv}"')
            assert status == 200, body
            stored = server.get("dtabs", "dtabproxy", "web")
            assert int(stored["metadata"]["resourceVersion"]) == int(rv) + 1  # written once, by the main process
            assert etag == f'"{stored["metadata"]["resourceVersion"]}"'
            # Answered once both workers run it, taken from their own watches.
            assert json.loads(body)["workers"] == {"0": "applied", "1": "applied"}
            responses, _ = await until_both_served(p, p.ports["web"])
            assert all(r.body.startswith(b"b ") for r in responses)
            assert _stop(p, lines) == 0
        await a.close()
        await b.close()
        await server.stop()

    asyncio.run(main())
