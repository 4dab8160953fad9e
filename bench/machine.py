"""The machine a run happened on, and which core each party gets.

Owns the record that goes into every result file (cores, CPU model, load average,
kernel, Python, tool versions) and the CPU plan: the proxy under test alone on one
core, the load generator and the backend together on another. Must not change any
system setting (governor, sysctls); it only reads and reports them.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuPlan:
    proxy: int | None  # core of the proxy under test
    client: int | None  # core of the load generator and the backend
    note: str
    #: Every CPU the run may use: where a proxy with one worker per CPU runs (h1-workers).
    all_cpus: tuple[int, ...] = ()


def cpu_plan() -> CpuPlan:
    """Proxy on CPU 1, load generator and backend on CPU 0 (the reference box has 2
    cores). With one core there is nothing to separate, which the report says."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    if len(cpus) >= 2:
        return CpuPlan(
            proxy=cpus[1],
            client=cpus[0],
            note=f"proxy pinned to CPU {cpus[1]}; load generator, backend and harness on CPU {cpus[0]}",
            all_cpus=tuple(cpus),
        )
    only = cpus[0] if cpus else None
    return CpuPlan(proxy=only, client=only, note="one CPU: proxy, load generator and backend share it",
                   all_cpus=tuple(cpus))  # fmt: skip


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0][:160] if text else None


def cpu_model() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    return m.group(1).strip() if m else platform.processor() or "unknown"


def info(tools: dict[str, str | None] | None = None) -> dict[str, object]:
    """Everything about the machine that could explain a different figure."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    mem_total = re.search(r"^MemTotal:\s*(\d+)", _read("/proc/meminfo"), re.M)
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip() or None
    try:
        import uvloop

        uv = getattr(uvloop, "__version__", None)
    except ImportError:
        uv = None
    versions: dict[str, str | None] = {}
    for name, path in (tools or {}).items():
        if path is None:
            versions[name] = None
            continue
        flag = {"nginx": "-v", "haproxy": "-v", "wrk": "-v", "h2load": "--version"}.get(name, "--version")
        versions[name] = _version([path, flag])
    import resource

    return {
        "hostname": platform.node(),
        "cores": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "cpu_governor": governor,
        "mem_total_kib": int(mem_total.group(1)) if mem_total else None,
        "load_average": load,
        "kernel": platform.release(),
        "os": _os_release(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "uvloop": uv,
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "tools": versions,
        "git": _git(),
    }


def _os_release() -> str | None:
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?$', _read("/etc/os-release"), re.M)
    return m.group(1) if m else None


def _git() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
