"""Workers: one process per core behind SO_REUSEPORT listeners, supervised by the main
process, which also runs the admin server for all of them.

    dtabproxy run --workers 4 -c config.yaml        # or `workers: auto` in the config

The main process (`Supervisor`) owns the config: it loads the file once (a SIGHUP, or a
change seen by its 500 ms poll), prepares the reload in itself and in every worker, and
commits it only when all of them prepared it; a refusal anywhere undoes it everywhere.
It also owns the state the admin API changes (dtabs set by `PUT /admin/dtabs/<router>`,
the sampling rate): a worker that starts, or starts again, gets the config and that state
before it accepts a connection. It keeps a routing-only copy of the routers (namers and
router snapshots, no listener) so the delegator, `/config.json` and the dtab reads answer
from it; what only a worker has (its counters, its sampled decisions) is asked for over
the control channel and merged.

The control channel is a socketpair per worker, with length-prefixed frames: requests
`{"id", "op", ...}` from the main process, answers `{"re", "ok", ...}` from the worker,
in order per worker (a state change sent to every worker before the next one is sent
reaches each in the same order). The payload is pickled: a validated `Config` is frozen
dataclasses holding dtabs, compiled patterns and addresses, and pickling sends exactly
the object the main process validated, so the workers agree with it and with each
other. Nothing but the main process and its own child holds either end, so nothing else
can write to it. Nothing of it is on the request path: a worker reads it only between
requests, on its event loop.

A worker that dies is restarted, with a backoff (0.1 s doubling to 30 s while it keeps
dying within a minute of its start) so a crash loop does not spin; the death (the exit
status or the signal) and the restart are logged. A worker that does not confirm a
state change within a bound is restarted too, so it comes back with the state.

Owns: the worker processes, the control channel, the CPU count of `workers: auto`.
Must not: touch the request path, or change a router but through `Runtime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from config import Config
from dtab import Dtab, DtabSyntaxError

from .runtime import Runtime, bind_socket, settle_heap
from .telemetry import metrics

log = logging.getLogger(__name__)

#: How long a worker may take to start (namers that wait for their first list included:
#: the Kubernetes ones wait up to 10 s) before it is killed and started again.
START_TIMEOUT_S: Final = 60.0
#: How long a reload may take to prepare in a worker (the same namers) before it is refused.
PREPARE_TIMEOUT_S: Final = 60.0
#: How long a worker may take to confirm a state change (a dtab, the sampling rate,
#: a commit): these are one reference swap, so a worker that does not answer is stuck.
CONFIRM_TIMEOUT_S: Final = 10.0
#: How long a stored dtab (a `dtabStore`) may take to reach a worker through its watch.
STORED_DTAB_TIMEOUT_S: Final = 5.0
#: How long a scrape, a decisions or what-if query waits for each worker.
QUERY_TIMEOUT_S: Final = 5.0
#: Restart backoff: a worker that dies within `STABLE_S` of its start waits twice as
#: long as the last time before it is started again, from 0.1 s up to 30 s.
BACKOFF_MIN_S: Final = 0.1
BACKOFF_MAX_S: Final = 30.0
STABLE_S: Final = 60.0
#: A frame longer than this is a broken channel, not a message (a scrape of 500
#: services with 500 clients of 200 endpoints each is ~30 MB).
MAX_FRAME: Final = 1 << 30
_HEADER: Final = struct.Struct(">I")


# -- how many: `workers: auto` ----------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _mounts(root: str) -> list[tuple[str, str, str, str]]:
    """(fstype, mount root, mount point, super options) of the cgroup file systems."""
    text = _read(os.path.join(root, "proc/self/mountinfo")) or ""
    out = []
    for line in text.splitlines():
        fields, sep, rest = line.partition(" - ")
        parts, tail = fields.split(), rest.split()
        if not sep or len(parts) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((tail[0], parts[3], parts[4], tail[2]))
    return out


def _dirs(root: str, mount_root: str, mount_point: str, path: str) -> list[str]:
    """The cgroup directory of `path` under a mount, and each parent up to the mount:
    a limit on any of them applies."""
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        path = path[len(mount_root):] or "/"
    elif mount_root != "/":
        path = "/"  # a cgroup namespace shows a path of its own: the mount is ours
    base = os.path.join(root, mount_point.lstrip("/"))
    rel = [p for p in path.split("/") if p]
    return [os.path.join(base, *rel[:i]) for i in range(len(rel), -1, -1)]


def cgroup_cpu_limit(root: str = "/") -> float | None:
    """The CPU bandwidth the cgroup quota gives this process (quota / period of the
    tightest limit on its cgroup or a parent), or None when there is none. cgroup v2:
    `cpu.max` ("max 100000" or "<quota> <period>"); v1: `cpu.cfs_quota_us` (-1: none)
    and `cpu.cfs_period_us`. `root` exists for tests (a tree of fake files)."""
    groups: dict[str, str] = {}  # "" (v2) or a v1 controller -> the cgroup path
    for line in (_read(os.path.join(root, "proc/self/cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            if parts[0] == "0" and parts[1] == "":
                groups[""] = parts[2]
            for c in parts[1].split(","):
                if c:
                    groups[c] = parts[2]
    mounts = _mounts(root)
    if not mounts and "" in groups:  # no mountinfo: the usual place
        mounts = [("cgroup2", "/", "/sys/fs/cgroup", "")]
    limits: list[float] = []
    for fstype, mount_root, mount_point, opts in mounts:
        if fstype == "cgroup2":
            if "" not in groups:
                continue
            for d in _dirs(root, mount_root, mount_point, groups[""]):
                quota, _, period = (_read(os.path.join(d, "cpu.max")) or "").partition(" ")
                if quota.isdigit() and period.isdigit() and int(period) > 0:
                    limits.append(int(quota) / int(period))
        elif "cpu" in opts.split(",") and "cpu" in groups:
            for d in _dirs(root, mount_root, mount_point, groups["cpu"]):
                quota_text = _read(os.path.join(d, "cpu.cfs_quota_us")) or ""
                period_text = _read(os.path.join(d, "cpu.cfs_period_us")) or ""
                if quota_text.isdigit() and period_text.isdigit() and int(quota_text) > 0 and int(period_text) > 0:
                    limits.append(int(quota_text) / int(period_text))
    return min(limits) if limits else None


def available_cpus(root: str = "/", affinity: int | None = None) -> int:
    """The CPUs this process may use: the affinity mask (`sched_getaffinity`, what
    `taskset` and a cpuset cgroup allow) bounded by the cgroup CPU quota rounded up
    (a Kubernetes CPU limit of 1500m is 2), at least 1."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    n = affinity
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)


def resolve_workers(value: int | str, cpus: Callable[[], int] = available_cpus) -> int:
    """The number of worker processes for `workers:` / `--workers` (`auto`: the CPUs)."""
    if value == "auto":
        return cpus()
    return int(value)


# -- the control channel ------------------------------------------------------------------------------


class ChannelClosed(Exception):
    """The other end went away (the worker died, or the main process)."""


class Channel:
    """Length-prefixed pickled frames over one end of a socketpair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    def send(self, msg: dict[str, Any]) -> None:
        """Queue one frame (no await: frames sent in one step of the loop keep their order)."""
        if self.writer.is_closing():
            raise ChannelClosed("the control channel is closed")
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        self.writer.write(_HEADER.pack(len(data)) + data)

    async def recv(self) -> dict[str, Any] | None:
        """The next frame, or None at the end (the other process is gone)."""
        try:
            head = await self.reader.readexactly(_HEADER.size)
            (n,) = _HEADER.unpack(head)
            if n > MAX_FRAME:  # not a message: the stream is out of step, so it ends here
                log.error("control channel: a frame of %d bytes (the limit is %d); closing it", n, MAX_FRAME)
                return None
            msg: dict[str, Any] = pickle.loads(await self.reader.readexactly(n))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return msg

    def close(self) -> None:
        self.writer.close()


# -- the main process ---------------------------------------------------------------------------------


class WorkerError(Exception):
    """A worker refused or could not do what it was asked (the message says why)."""


class Worker:
    """One worker slot as the main process sees it; the process in it changes on restart."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.pid: int | None = None
        self.ready = False
        self.restarts = 0
        self.gen = -1  # the config generation it runs (or was started with)
        self.started_at = 0.0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.last: metrics.Snapshot | None = None  # its last metrics, kept if it dies
        self.addresses: list[tuple[str, str, int]] = []
        self.first: asyncio.Future[None] | None = None  # the first start's outcome
        self.task: asyncio.Task[None] | None = None
        self.killed = False  # the main process killed the process in it

    def __repr__(self) -> str:
        return f"worker {self.index} (pid {self.pid})"


class _DecisionIndex:
    """One router's sampled decisions over all workers, in the order the main process
    first saw them: a global sequence number per (worker process, its own number), so
    `since` means the same as with one process (every decision numbered later was seen
    later). The decisions stay in the workers; this holds only the numbers."""

    def __init__(self, size: int) -> None:
        self.entries: deque[tuple[int, int, int, int]] = deque(maxlen=size)  # seq, worker, pid, local seq
        self.seen: dict[tuple[int, int], int] = {}  # (worker, pid) -> the newest local seq indexed
        self.seq = 0
        self.lock = asyncio.Lock()


class Supervisor:
    """Starts, watches and restarts the workers; fans state changes and queries out."""

    def __init__(self, count: int, *, log_level: str = "INFO") -> None:
        self.count = count
        self.log_level = log_level
        self.workers = [Worker(i) for i in range(count)]
        self.rt: Runtime | None = None
        self.config: Config | None = None
        self.gen = 0
        self.sample_rate: float | None = None  # set through the admin API; None: the default
        self.stopping = False
        self.started = time.time()
        self._ids = 0
        self._ports: dict[tuple[str, int, str], socket.socket] = {}  # port-0 servers: the main's choice
        self._new_ports: dict[tuple[str, int, str], socket.socket] = {}  # chosen for a reload being prepared
        self._retired: metrics.Snapshot | None = None  # what exited workers counted
        self._retired_totals: dict[int, tuple[int, int]] = {}
        self._decisions: dict[str, _DecisionIndex] = {}
        self._stopped_accepting: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- ports ------------------------------------------------------------------------------------

    def resolve_ports(self, cfg: Config) -> Config:
        """`cfg` with each `port: 0` server's port chosen once, here: every worker binds
        that port, and a reload keeps it. The main process holds a bound socket (with
        SO_REUSEPORT, not listening, so it receives nothing) so the port stays ours."""
        routers = []
        for rc in cfg.routers:
            servers = []
            for i, sc in enumerate(rc.servers):
                if sc.port == 0:
                    key = (rc.label, i, sc.ip)
                    sock = self._ports.get(key) or self._new_ports.get(key)
                    if sock is None:
                        sock = self._new_ports[key] = bind_socket(sc.ip, 0, 0, reuse_port=True, listen=False)
                    sc = dataclasses.replace(sc, port=int(sock.getsockname()[1]))
                servers.append(sc)
            routers.append(dataclasses.replace(rc, servers=tuple(servers)))
        return dataclasses.replace(cfg, routers=tuple(routers))

    def _commit_ports(self, original: Config) -> None:
        wanted = {(rc.label, i, sc.ip) for rc in original.routers for i, sc in enumerate(rc.servers) if sc.port == 0}
        self._ports.update(self._new_ports)
        self._new_ports = {}
        for key in [k for k in self._ports if k not in wanted]:
            self._ports.pop(key).close()

    def _undo_ports(self) -> None:
        for sock in self._new_ports.values():
            sock.close()
        self._new_ports = {}

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, rt: Runtime) -> None:
        """Start every worker; return when all accept connections. Raises OSError (with
        the worker's reason) when one cannot start: nothing is left running then."""
        self.rt = rt
        self.config = rt.config
        loop = asyncio.get_running_loop()
        for w in self.workers:
            w.first = loop.create_future()
            w.task = loop.create_task(self._supervise(w), name=f"worker {w.index}")
        try:
            await asyncio.gather(*(w.first for w in self.workers if w.first is not None))
        except BaseException:
            await self.drain(0)
            raise
        log.info("%d workers ready", self.count)

    def is_ready(self) -> bool:
        return all(w.ready for w in self.workers)

    def addresses(self) -> list[tuple[str, str, int]]:
        for w in self.workers:
            if w.addresses:
                return w.addresses
        return []

    def _argv(self, w: Worker, fd: int) -> list[str]:
        return [sys.executable, "-m", "proxy", "--log-level", self.log_level, "worker",
                "--control-fd", str(fd), "--id", str(w.index)]  # fmt: skip

    async def _spawn(self, w: Worker) -> None:
        parent, child = socket.socketpair()
        try:
            w.proc = await asyncio.create_subprocess_exec(
                *self._argv(w, child.fileno()), pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches the main process, which drains the
                # workers, instead of each worker at once (uvloop has no `process_group`).
                start_new_session=True,
            )  # fmt: skip
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        w.pid = w.proc.pid
        w.killed = False
        w.started_at = time.monotonic()
        w.channel = await Channel.open(parent)
        self._background(self._read(w, w.channel), f"worker {w.index} channel")

    def _background(self, coro: Any, name: str) -> None:
        """A task held until it ends (the loop keeps only a weak reference)."""
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _read(self, w: Worker, channel: Channel) -> None:
        while True:
            msg = await channel.recv()
            if msg is None:
                break
            fut = w.pending.pop(msg.get("re", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        if w.channel is channel:
            w.channel = None
        channel.close()
        for fut in w.pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed(f"worker {w.index} exited"))
        w.pending.clear()

    def _state(self) -> dict[str, Any]:
        """What a starting worker takes besides the config: the dtabs the admin API set."""
        rt = self.rt
        assert rt is not None and self.config is not None
        dtabs = {}
        for rc in self.config.routers:
            r = rt.routers.get(rc.label)
            if r is not None and r.base.dtab != rc.dtab and rt.dtab_store(rc.label) is None:
                dtabs[rc.label] = r.base.dtab
        return {"config": self.config, "dtabs": dtabs, "sample_rate": self.sample_rate, "gen": self.gen}

    async def _supervise(self, w: Worker) -> None:
        try:
            await self._keep_running(w)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our bug: say so; the slot stays empty rather than spin
            log.error("worker %d: supervision failed", w.index, exc_info=True)
            if w.first is not None and not w.first.done():
                w.first.set_exception(OSError(f"worker {w.index}: {exc!r}"))

    async def _keep_running(self, w: Worker) -> None:
        delay = 0.0
        while not self.stopping:
            try:
                await self._spawn(w)
            except OSError as exc:  # no process at all (out of memory, say)
                if w.first is not None and not w.first.done():
                    w.first.set_exception(OSError(f"worker {w.index} could not be started: {exc}"))
                    return
                delay = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, delay * 2))
                log.error("worker %d could not be started: %s; trying again in %.1fs", w.index, exc, delay)
                await asyncio.sleep(delay)
                continue
            try:
                state = self._state()
                w.gen = state["gen"]
                reply = await self._call(w, "start", START_TIMEOUT_S, **state)
            except (WorkerError, ChannelClosed, TimeoutError, OSError) as exc:
                reply = None
                why = str(exc) or type(exc).__name__
                if w.first is not None and not w.first.done():
                    w.first.set_exception(OSError(f"worker {w.index}: {why}"))
                    await self._kill(w)
                    return
                log.warning("worker %d (pid %s) did not start: %s", w.index, w.pid, why)
            if reply is not None:
                w.addresses = [tuple(a) for a in reply["addresses"]]
                w.ready = True
                if w.first is not None and not w.first.done():
                    w.first.set_result(None)
                    log.info("worker %d started (pid %d)", w.index, w.pid)
                else:
                    log.info("worker %d restarted (pid %d, restart %d)", w.index, w.pid, w.restarts)
                if w.gen != self.gen and not self.stopping:  # a reload committed while it started
                    self._background(self._catch_up(w), f"worker {w.index} catch-up")
            code = await self._wait_exit(w, kill=reply is None)
            w.ready = False
            self._retire(w)
            if self.stopping:
                return
            lived = time.monotonic() - w.started_at
            delay = BACKOFF_MIN_S if lived >= STABLE_S or not delay else min(BACKOFF_MAX_S, delay * 2)
            w.restarts += 1
            log.warning("worker %d (pid %s) %s; restarting it in %.1fs", w.index, w.pid, describe_exit(code), delay)
            await asyncio.sleep(delay)

    async def _wait_exit(self, w: Worker, *, kill: bool) -> int:
        proc = w.proc
        assert proc is not None
        if kill:
            await self._kill(w)
        return await proc.wait()

    async def _kill(self, w: Worker) -> None:
        w.killed = True  # by us: not worth a warning of its own
        if w.proc is not None and w.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
            await w.proc.wait()

    def _retire(self, w: Worker) -> None:
        """Keep what an exited worker counted (as of its last scrape) in the sums."""
        if w.last is None:
            return
        left = metrics.retired(w.last)
        self._retired = left if self._retired is None else metrics.combine([self._retired, left])
        req, _ = metrics.totals(w.last)
        before, _ = self._retired_totals.get(w.index, (0, 0))
        self._retired_totals[w.index] = (before + req, 0)
        w.last = None

    async def drain(self, grace: float) -> None:
        """SIGTERM: every worker stops accepting, finishes its requests within `grace`
        and exits; one that is still running then is killed."""
        self.stopping = True
        waiting = []
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                waiting.append(w)
                if w.channel is not None:
                    fut = self._send(w, "drain")
                    fut.add_done_callback(functools.partial(self._drain_answer, w))
                else:
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.send_signal(signal.SIGTERM)
        if waiting:
            done, _ = await asyncio.wait([asyncio.ensure_future(w.proc.wait()) for w in waiting if w.proc is not None],
                                         timeout=grace + 5.0)  # fmt: skip
            for w in waiting:
                if w.proc is not None and w.proc.returncode is None:
                    log.warning("worker %d (pid %s) did not exit %.1fs after the drain; killing it", w.index, w.pid, grace)
                    await self._kill(w)
                elif w.proc is not None and w.proc.returncode and not w.killed:
                    log.warning("worker %d (pid %s) %s while draining", w.index, w.pid, describe_exit(w.proc.returncode))
        for w in self.workers:
            if w.task is not None and not w.task.done():
                w.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w.task
        for sock in self._ports.values():
            sock.close()
        self._ports = {}
        self._undo_ports()

    def _drain_answer(self, w: Worker, fut: asyncio.Future[dict[str, Any]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        log.info("worker %d stopped accepting; finishing its requests", w.index)
        self._stopped_accepting.add(w.index)
        if all(x.index in self._stopped_accepting or x.proc is None or x.proc.returncode is not None for x in self.workers):
            log.info("all workers stopped accepting")

    # -- requests to workers ----------------------------------------------------------------------

    def _send(self, w: Worker, op: str, **args: Any) -> asyncio.Future[dict[str, Any]]:
        """Send a request now (no await, so requests sent in one step keep their order in
        every worker); the future is its answer."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        channel = w.channel
        if channel is None:
            fut.set_exception(ChannelClosed(f"worker {w.index} is not running"))
            return fut
        self._ids += 1
        w.pending[self._ids] = fut
        try:
            channel.send({"id": self._ids, "op": op, **args})
        except (ChannelClosed, OSError) as exc:
            w.pending.pop(self._ids, None)
            fut.set_exception(ChannelClosed(f"worker {w.index}: {exc}"))
        return fut

    @staticmethod
    async def _answer(fut: asyncio.Future[dict[str, Any]], timeout: float) -> dict[str, Any]:
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"no answer within {timeout:.0f}s") from None
        if not reply.get("ok"):
            raise WorkerError(str(reply.get("error")))
        return reply

    async def _call(self, w: Worker, op: str, timeout: float, **args: Any) -> dict[str, Any]:
        return await self._answer(self._send(w, op, **args), timeout)

    async def _each(self, op: str, timeout: float, **args: Any) -> dict[Worker, dict[str, Any] | BaseException]:
        """Send `op` to every running worker (all in one step), then gather the answers."""
        sent = {w: self._send(w, op, **args) for w in self.workers if w.channel is not None}
        results = await asyncio.gather(*(self._answer(f, timeout) for f in sent.values()), return_exceptions=True)
        return dict(zip(sent, results, strict=True))

    def _restart_unconfirmed(self, w: Worker, what: str, exc: BaseException) -> str:
        """A worker that did not apply a state change runs without it: restart it, so it
        starts again with the state (it gets the main process's at start)."""
        log.error("worker %d (pid %s) did not apply %s (%s); restarting it", w.index, w.pid, what, exc)
        if w.proc is not None and w.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
        return f"restarting: {exc}"

    # -- reload: all workers or none -----------------------------------------------------------

    async def apply_config(self, original: Config) -> None:
        """Apply a loaded config to the main process's copy and to every worker, all or
        nothing: each prepares it (binds new ports, starts namers); only when every one
        did, each commits it. A refusal anywhere undoes it everywhere and raises
        ValueError naming who refused and why."""
        rt = self.rt
        assert rt is not None
        cfg = self.resolve_ports(original)
        prepared = {w: self._send(w, "prepare", config=cfg) for w in self.workers if w.channel is not None}
        problems: list[str] = []
        plan = None
        try:
            plan = await rt.prepare_config(cfg)
        except (OSError, ValueError) as exc:
            problems.append(f"main process: {exc}")
        except BaseException:  # our bug, or a cancel: the workers must not keep what they prepared
            for w in prepared:
                self._send(w, "abort")
            self._undo_ports()
            raise
        answers = await asyncio.gather(*(self._answer(f, PREPARE_TIMEOUT_S) for f in prepared.values()),
                                       return_exceptions=True)  # fmt: skip
        ok = []
        for w, a in zip(prepared, answers, strict=True):
            if isinstance(a, TimeoutError):  # stuck: it starts again with the running config
                problems.append(f"worker {w.index}: {self._restart_unconfirmed(w, 'the reload', a)}")
            elif isinstance(a, ChannelClosed):
                continue  # it died meanwhile: its next process starts with what is committed
            elif isinstance(a, BaseException):
                problems.append(f"worker {w.index}: {a}")
            else:
                ok.append(w)
        if problems:
            aborts = [self._send(w, "abort") for w in prepared]  # a late or failed prepare too: idempotent
            if plan is not None:
                await rt.abort_config(plan)
            await asyncio.gather(*(self._answer(f, CONFIRM_TIMEOUT_S) for f in aborts), return_exceptions=True)
            self._undo_ports()
            raise ValueError("; ".join(problems))
        assert plan is not None
        self.gen += 1
        self.config = cfg
        commits = {w: self._send(w, "commit", gen=self.gen) for w in ok}
        self._commit_ports(original)
        await rt.commit_config(cfg, plan)
        for w, f in commits.items():
            try:
                await self._answer(f, CONFIRM_TIMEOUT_S)
                w.gen = self.gen
            except (WorkerError, TimeoutError) as exc:
                self._restart_unconfirmed(w, "the reload", exc)
            except ChannelClosed:
                pass  # it died meanwhile; it starts again with this config
        for w in self.workers:  # started while this was prepared: it runs the config before
            if w.channel is not None and w.gen != self.gen and w not in commits:
                self._background(self._catch_up(w), f"worker {w.index} catch-up")

    async def _catch_up(self, w: Worker) -> None:
        gen = self.gen
        try:
            await self._call(w, "apply", PREPARE_TIMEOUT_S, config=self.config, gen=gen)
            w.gen = gen
        except ChannelClosed:
            pass
        except (WorkerError, TimeoutError) as exc:
            self._restart_unconfirmed(w, "the current config", exc)

    # -- the admin API's writes --------------------------------------------------------------------

    async def set_dtab(self, label: str, table: Dtab) -> dict[str, str]:
        """Every worker swaps the router's base dtab (the main process's copy already
        did); {worker: "applied" | why not}."""
        return self._report(await self._each("set_dtab", CONFIRM_TIMEOUT_S, label=label, dtab=table), "the dtab")

    async def await_dtab(self, label: str, table: Dtab, version: str) -> dict[str, str]:
        """A dtab written to the router's `dtabStore`: every worker takes it from its own
        watch; wait (bounded) until each runs it. Nothing is restarted: a watch may lag."""
        answers = await self._each("await_dtab", STORED_DTAB_TIMEOUT_S + 1, label=label, dtab=table, version=version,
                                   wait_s=STORED_DTAB_TIMEOUT_S)  # fmt: skip
        out = {str(w.index): "not running: it starts with the stored dtab" for w in self.workers}
        for w, a in answers.items():
            out[str(w.index)] = f"not confirmed: {a}" if isinstance(a, BaseException) else "applied"
        return out

    async def set_sample_rate(self, rate: float) -> dict[str, str]:
        self.sample_rate = rate
        return self._report(await self._each("sampling", CONFIRM_TIMEOUT_S, rate=rate), "the sampling rate")

    def _report(self, answers: dict[Worker, dict[str, Any] | BaseException], what: str) -> dict[str, str]:
        out = {str(w.index): "not running: it starts with it" for w in self.workers}
        for w, a in answers.items():
            if isinstance(a, ChannelClosed):
                continue  # exited meanwhile: it starts again with the state
            out[str(w.index)] = self._restart_unconfirmed(w, what, a) if isinstance(a, BaseException) else "applied"
        return out

    # -- the admin API's reads ---------------------------------------------------------------------

    async def render_metrics(self) -> bytes:
        """Every worker's counters summed as if one process, then the workers' own series."""
        answers = await self._each("metrics", QUERY_TIMEOUT_S)
        snaps: list[metrics.Snapshot] = []
        per_worker: list[str] = []
        for w, a in answers.items():
            if not isinstance(a, BaseException):
                w.last = a["snapshot"]
        for w in self.workers:
            if w.last is not None:
                snaps.append(w.last)  # no answer now: its last one, so sums never go down
        tel = metrics.merge([*snaps, *([self._retired] if self._retired is not None else [])])
        tel.started = self.started
        up, restarts, requests, in_flight = [], [], [], []
        for w in self.workers:
            req, flying = metrics.totals(w.last) if w.last is not None else (0, 0)
            req += self._retired_totals.get(w.index, (0, 0))[0]
            lbl = f'worker="{w.index}"'
            up.append(f"dtabproxy_worker_up{{{lbl}}} {int(w.ready)}")
            restarts.append(f"dtabproxy_worker_restarts_total{{{lbl}}} {w.restarts}")
            requests.append(f"dtabproxy_worker_requests_total{{{lbl}}} {req}")
            in_flight.append(f"dtabproxy_worker_in_flight{{{lbl}}} {flying}")
        per_worker += ["# HELP dtabproxy_workers Worker processes configured (workers:).",
                       "# TYPE dtabproxy_workers gauge", f"dtabproxy_workers {self.count}",
                       "# HELP dtabproxy_worker_up 1 while the worker process accepts connections.",
                       "# TYPE dtabproxy_worker_up gauge", *up,
                       "# HELP dtabproxy_worker_restarts_total Times the worker process was started again.",
                       "# TYPE dtabproxy_worker_restarts_total counter", *restarts,
                       "# HELP dtabproxy_worker_requests_total Requests the worker answered (routed or not).",
                       "# TYPE dtabproxy_worker_requests_total counter", *requests,
                       "# HELP dtabproxy_worker_in_flight Requests in flight in the worker.",
                       "# TYPE dtabproxy_worker_in_flight gauge", *in_flight]  # fmt: skip
        tel.collectors.append(lambda: per_worker)
        return tel.render()

    async def _index(self, label: str) -> _DecisionIndex:
        """Bring the router's decision index up to date with every worker's ring."""
        idx = self._decisions.get(label)
        if idx is None:
            idx = self._decisions[label] = _DecisionIndex(metrics.DECISIONS_SIZE * self.count)
        async with idx.lock:
            sent = {w: (w.pid or 0, self._send(w, "decisions_index", label=label,
                                               after=idx.seen.get((w.index, w.pid or 0), 0)))
                    for w in self.workers if w.channel is not None}  # fmt: skip
            new: list[tuple[float, int, int, int]] = []
            for w, (pid, fut) in sent.items():
                try:
                    reply = await self._answer(fut, QUERY_TIMEOUT_S)
                except (WorkerError, ChannelClosed, TimeoutError):
                    continue
                for seq, t in reply["entries"]:
                    new.append((t, w.index, pid, seq))
                    idx.seen[(w.index, pid)] = max(idx.seen.get((w.index, pid), 0), seq)
            for _, index, pid, seq in sorted(new):
                idx.seq += 1
                idx.entries.append((idx.seq, index, pid, seq))
        return idx

    async def _per_worker(self, op: str, picked: list[tuple[int, int, int, int]], **args: Any) -> list[dict[str, Any]]:
        """Ask each worker about its decisions among `picked`; the rows, renumbered."""
        by_worker: dict[int, dict[int, int]] = {}
        for gseq, index, pid, seq in picked:
            w = self.workers[index]
            if w.pid == pid:  # a worker that restarted took its decisions with it
                by_worker.setdefault(index, {})[seq] = gseq
        sent = {index: (m, self._send(self.workers[index], op, seqs=sorted(m), **args)) for index, m in by_worker.items()}
        rows: list[dict[str, Any]] = []
        for m, fut in sent.values():
            try:
                reply = await self._answer(fut, QUERY_TIMEOUT_S)
            except (WorkerError, ChannelClosed, TimeoutError):
                continue
            for row in reply["rows"]:
                row["seq"] = m[row["seq"]]
                rows.append(row)
        rows.sort(key=lambda r: -int(r["seq"]))
        return rows

    async def decisions(self, label: str, limit: int, since: int) -> list[dict[str, Any]]:
        """`/admin/decisions.json` over every worker: newest first, numbered globally."""
        idx = await self._index(label)
        picked = [e for e in idx.entries if e[0] > since][-limit:] if limit > 0 else []
        return await self._per_worker("decisions_render", picked, label=label)

    async def what_if(self, label: str, proposed: Dtab, limit: int) -> list[dict[str, Any]]:
        """`/admin/whatif.json` over the newest `limit` decisions of every worker."""
        idx = await self._index(label)
        picked = list(idx.entries)[-limit:] if limit > 0 else []
        return await self._per_worker("what_if", picked, label=label, dtab=proposed)


def describe_exit(code: int) -> str:
    """`exited with status 1` or `was killed by signal 9 (SIGKILL)`."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-code} ({name})"
    return f"exited with status {code}"


async def serve_workers(config: Config, count: int, *, config_path: str | None = None, ready_cb: Any = None,
                        log_level: str = "INFO") -> int:  # fmt: skip
    """`dtabproxy run` with `workers: N` (N > 1): the main process."""
    sup = Supervisor(count, log_level=log_level)
    resolved = sup.resolve_ports(config)
    sup._commit_ports(config)
    rt = Runtime(resolved, config_path=config_path, role="main")
    rt.workers = sup
    sup.config = resolved
    rt.install_signals()
    await rt.start()  # the routing copy, the admin server, the config poll
    try:
        await sup.start(rt)
    except BaseException:
        rt.workers = None
        await rt.drain()
        raise
    if ready_cb is not None:
        ready_cb(rt)
    await rt.wait()
    await rt.drain()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            rt.loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError, RuntimeError, NotImplementedError):
            pass
    return 0


# -- a worker process ---------------------------------------------------------------------------------

#: Requests that change state: done one at a time, in the order they came.
_ORDERED: Final = frozenset({"prepare", "commit", "abort", "apply", "set_dtab", "sampling", "drain"})


class WorkerAgent:
    """The worker's end of the control channel: does what the main process asks."""

    def __init__(self, index: int, channel: Channel) -> None:
        self.index = index
        self.channel = channel
        self.rt: Runtime | None = None
        self._plan: tuple[Config, Any] | None = None  # a prepared reload awaiting commit or abort
        self._ordered: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()

    def _reply(self, msg: dict[str, Any], **out: Any) -> None:
        try:
            self.channel.send({"re": msg["id"], "ok": True, **out})
        except ChannelClosed:
            pass

    def _fail(self, msg: dict[str, Any], error: str) -> None:
        try:
            self.channel.send({"re": msg["id"], "ok": False, "error": error})
        except ChannelClosed:
            pass

    async def run(self) -> int:
        """Start as the first request says, serve until told to drain (or the main
        process is gone), drain, exit 0."""
        first = await self.channel.recv()
        if first is None or first.get("op") != "start":
            log.error("worker %d: the main process sent no start request", self.index)
            return 1
        rt = self.rt = Runtime(first["config"], role="worker", dtabs=first["dtabs"])
        if rt.telemetry is not None and first["sample_rate"] is not None:
            rt.telemetry.set_sample_rate(first["sample_rate"])
        rt.install_signals()
        try:
            await rt.start()
        except (OSError, ValueError) as exc:
            self._fail(first, f"cannot start: {exc}")
            await self.channel.writer.drain()
            return 1
        settle_heap()
        self._reply(first, addresses=[(lst.router.label, *lst.address) for lst in rt.listeners if lst.address], pid=os.getpid())
        reader = asyncio.get_running_loop().create_task(self._read(), name="control channel")
        worker = asyncio.get_running_loop().create_task(self._work(), name="ordered requests")
        await rt.wait()
        worker.cancel()
        if self._plan is not None:  # prepared, never committed: give it back
            plan, self._plan = self._plan, None
            await rt.abort_config(plan[1])
        await rt.drain()
        reader.cancel()
        return 0

    async def _read(self) -> None:
        while True:
            msg = await self.channel.recv()
            if msg is None:  # the main process is gone: drain and exit
                log.warning("worker %d: the main process is gone; draining", self.index)
                assert self.rt is not None
                self.rt.request_stop()
                return
            if msg["op"] in _ORDERED:
                self._ordered.put_nowait(msg)
            else:
                self._background(self._query(msg))

    async def _work(self) -> None:
        while True:
            msg = await self._ordered.get()
            try:
                await self._do(msg)
            except (OSError, ValueError, KeyError, DtabSyntaxError) as exc:
                self._fail(msg, str(exc))
            except Exception as exc:  # our bug: say so, and keep serving on what is running
                log.error("worker %d: %s failed", self.index, msg["op"], exc_info=True)
                self._fail(msg, f"{type(exc).__name__}: {exc}")

    async def _do(self, msg: dict[str, Any]) -> None:
        rt = self.rt
        assert rt is not None
        op = msg["op"]
        if op == "prepare":
            if self._plan is not None:  # a reload the main process gave up on
                await rt.abort_config(self._plan[1])
                self._plan = None
            cfg = msg["config"]
            self._plan = (cfg, await rt.prepare_config(cfg))
            self._reply(msg)
        elif op == "commit":
            if self._plan is None:
                raise ValueError("nothing prepared to commit")
            (cfg, plan), self._plan = self._plan, None
            self._commit(cfg, plan)
            self._reply(msg)
        elif op == "abort":
            if self._plan is not None:
                plan, self._plan = self._plan[1], None
                await rt.abort_config(plan)
            self._reply(msg)
        elif op == "apply":
            cfg = msg["config"]
            self._commit(cfg, await rt.prepare_config(cfg))
            self._reply(msg)
        elif op == "set_dtab":
            rt.set_dtab(msg["label"], msg["dtab"])
            self._reply(msg)
        elif op == "sampling":
            if rt.telemetry is not None:
                rt.telemetry.set_sample_rate(msg["rate"])
            self._reply(msg)
        elif op == "drain":
            for lst in rt.listeners:
                lst.stop_accepting()
            self._reply(msg)
            log.info("draining: stopped accepting")
            rt.request_stop()

    def _commit(self, cfg: Config, plan: Any) -> None:
        """The swap now; retired listeners drain and replaced namers stop in the
        background, so the next request from the main process is not held up by them."""
        rt = self.rt
        assert rt is not None
        rt.commit_now(cfg, plan)
        rt.reloads += 1
        log.info("reloaded (%d routers)", len(cfg.routers))
        self._background(rt.release(cfg, plan))

    def _background(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _query(self, msg: dict[str, Any]) -> None:
        rt = self.rt
        assert rt is not None
        op = msg["op"]
        try:
            if op == "metrics":
                snap = metrics.snapshot(rt.telemetry) if rt.telemetry is not None else {"routers": {}, "collectors": []}
                self._reply(msg, snapshot=snap)
            elif op == "decisions_index":
                self._reply(msg, entries=[(e[0], e[1]) for e in self._entries(msg["label"]) if e[0] > msg["after"]])
            elif op == "decisions_render":
                from .admin import delegator

                picked = self._picked(msg)
                self._reply(msg, rows=delegator.decisions_json(picked, len(picked)))
            elif op == "what_if":
                from .admin import delegator

                picked = self._picked(msg)
                self._reply(msg, rows=delegator.what_if(picked, msg["dtab"], len(picked)))
            elif op == "await_dtab":
                await self._await_dtab(msg)
            else:
                self._fail(msg, f"unknown request {op!r}")
        except (KeyError, ValueError) as exc:
            self._fail(msg, str(exc))
        await self.channel.writer.drain()

    def _entries(self, label: str) -> list[tuple[Any, ...]]:
        tel = self.rt.telemetry if self.rt is not None else None
        if tel is None or label not in tel.routers:
            return []
        return tel.routers[label].decisions.entries()

    def _picked(self, msg: dict[str, Any]) -> list[tuple[Any, ...]]:
        wanted = set(msg["seqs"])
        return [e for e in self._entries(msg["label"]) if e[0] in wanted]

    async def _await_dtab(self, msg: dict[str, Any]) -> None:
        rt = self.rt
        assert rt is not None
        label, table, version = msg["label"], msg["dtab"], msg["version"]

        def applied() -> bool:
            router = rt.routers.get(label)
            store = rt.dtab_store(label)
            return router is not None and (router.base.dtab == table or (store is not None and store.etag() == version))

        try:
            async with asyncio.timeout(msg["wait_s"]):
                while not applied():
                    await rt.swapped.wait()
        except TimeoutError:
            self._fail(msg, f"its watch did not bring version {version} within {msg['wait_s']:.0f}s")
            return
        self._reply(msg)


async def worker_main(fd: int, index: int) -> int:
    """A worker process: the control channel on `fd`, then what it says."""
    channel = await Channel.open(socket.socket(fileno=fd))
    code = await WorkerAgent(index, channel).run()
    try:
        await channel.writer.drain()
    except ConnectionError:
        pass
    channel.close()
    return code

