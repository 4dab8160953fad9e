"""The build under test: the request path compiled with mypyc (setup.py), or, with
DTABPROXY_PURE=1, the same modules as Python source. `make test` runs the suite both ways."""

from __future__ import annotations

import os
import subprocess
import sys

from proxy import _purepy


def test_the_request_path_runs_compiled_unless_told_to_run_the_source() -> None:
    pure = os.environ.get("DTABPROXY_PURE") == "1"
    assert _purepy.compiled() is (not pure), (
        "expected the mypyc build (run `make build`)" if not pure else "DTABPROXY_PURE=1 should import the .py files"
    )


def test_the_pure_switch_reaches_a_fresh_process() -> None:
    env = {**os.environ, "DTABPROXY_PURE": "1"}
    code = "import sys; from proxy import _purepy; sys.exit(_purepy.main([]))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    assert out.stdout.strip() == b"pure Python"
