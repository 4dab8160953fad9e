"""Child processes for the harness: spawn pinned to a core, wait until ready, stop, measure.

Owns every `subprocess` the harness starts (backends, proxies, load generators) so
that each one is pinned, logged to a file, bounded in time and stopped by its own id
(the process group it leads, which the harness created). Must not kill anything it
did not start, and must not wait on anything without a deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


_ALARMING = ("alert", "error", "emerg", "crit", "fatal", "cannot", "refused")


class ProcError(Exception):
    """A child process did not start, did not become ready, or failed."""


def free_port() -> int:
    """A port the kernel considers free on 127.0.0.1 now. There is a small race until the
    child binds it; the harness allocates each port once, so only foreign processes can
    take it in between."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:
        # Debian puts nginx and haproxy in /usr/sbin, which a non-root PATH may lack.
        for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
            cand = os.path.join(d, name)
            if os.access(cand, os.X_OK):
                return cand
    return found


def pin_command(argv: Sequence[str], cpu: int | frozenset[int] | None) -> list[str]:
    """`argv` run on one CPU (or a set of them). taskset sets the affinity before exec, so every thread the
    child creates later inherits it (sched_setaffinity after spawn would miss threads
    started during the race)."""
    if cpu is None:
        return list(argv)
    taskset = which("taskset")
    if taskset is not None:
        return [taskset, "-c", str(cpu) if isinstance(cpu, int) else ",".join(map(str, sorted(cpu))), *argv]
    return list(argv)  # fallback: preexec in Proc.start


class Proc:
    """One child process, in its own process group, with its output in a log file."""

    __slots__ = ("name", "argv", "cpu", "log_path", "popen", "_log_file")

    def __init__(self, name: str, argv: Sequence[str], *, cpu: int | frozenset[int] | None, log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.cpu = cpu
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, *, env: dict[str, str] | None = None, cwd: str | None = None) -> Proc:
        argv = pin_command(self.argv, self.cpu)
        preexec = None
        if self.cpu is not None and argv[0] == self.argv[0]:  # no taskset on this machine
            cpus = {self.cpu} if isinstance(self.cpu, int) else set(self.cpu)

            def preexec() -> None:
                os.sched_setaffinity(0, cpus)

        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        log.debug("start %s: %s", self.name, " ".join(argv))
        try:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # its own group: stop() reaches its workers too
                preexec_fn=preexec,
            )
        except OSError as exc:
            self._close_log()
            raise ProcError(f"{self.name}: cannot exec {argv[0]}: {exc}") from None
        return self

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of the child's output, the alarming ones first (HAProxy and
        nginx print notices before the line that says why they exited)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        all_lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        bad = [ln for ln in all_lines if any(w in ln.lower() for w in _ALARMING)]
        return " | ".join((bad or all_lines)[-lines:])

    def wait_port(self, port: int, timeout_s: float = 15.0) -> None:
        """Poll-connect until the port accepts, the child dies, or the deadline passes."""
        wait_port(port, timeout_s, alive=self.is_running, what=self.name)
        if not self.is_running():
            raise ProcError(f"{self.name} exited: {self.log_tail()}")

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM to the group this child leads, then SIGKILL after the deadline."""
        p = self.popen
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing", self.name, timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout_s)
        else:
            # The leader is gone; workers it forked may still hold the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def wait_port(
    port: int, timeout_s: float, *, alive: Callable[[], bool] = lambda: True, what: str = "process"
) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if not alive():
            raise ProcError(f"{what} exited before listening on {port}")
        if time.monotonic() >= deadline:
            raise ProcError(f"{what} not listening on 127.0.0.1:{port} after {timeout_s:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def run(argv: Sequence[str], *, timeout_s: float, cpu: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run to completion with a deadline; the output is returned, never hidden."""
    try:
        return subprocess.run(
            pin_command(argv, cpu),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProcError(f"{argv[0]} did not finish in {timeout_s:.0f}s") from exc
    except OSError as exc:
        raise ProcError(f"cannot exec {argv[0]}: {exc}") from exc


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (nginx and HAProxy fork their workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after ')'.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` and its descendants, in KiB (0 for processes that have gone)."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def cpu_s(pid: int) -> float:
    """CPU time (user + system) of `pid` and its descendants, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE raised to the hard limit; children inherit it. 10,000 idle
    connections need 10,000 descriptors in the client and as many in the proxy."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
