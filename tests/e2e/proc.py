"""Run the built proxy as a real subprocess with a config file, and wait for readiness
by reading its 'listening' lines (no sleeps)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_LISTEN = re.compile(rb"router (\S+) listening on ([\d.]+):(\d+)")
_ADMIN = re.compile(rb"admin on http://([\d.]+):(\d+)/")


class ProxyProcess:
    def __init__(self, config_text: str, tmp: Path, env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.config = tmp / "config.yaml"
        self.config.write_text(config_text)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "-c", str(self.config), *(args or [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )
        self.ports: dict[str, int] = {}
        self.admin_port: int | None = None
        self.output = b""

    def wait_ready(self, routers: int, admin: bool = False, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while len(self.ports) < routers or (admin and self.admin_port is None):
            if time.monotonic() > deadline:
                raise TimeoutError(f"proxy not ready: {self.output.decode(errors='replace')}")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"proxy exited: {self.output.decode(errors='replace')}")
            self.output += line
            m = _LISTEN.search(line)
            if m:
                self.ports[m.group(1).decode()] = int(m.group(3))
            m = _ADMIN.search(line)
            if m:
                self.admin_port = int(m.group(2))

    def rss_kb(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            rest, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
        self.output += rest or b""
        return self.proc.returncode

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
