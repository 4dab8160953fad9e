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


def test_an_extension_older_than_its_source_is_stale_whether_the_source_is_python_or_c(tmp_path, monkeypatch) -> None:
    import importlib.machinery

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    pkg = tmp_path / "proxy"
    (pkg / "telemetry").mkdir(parents=True)
    files = {"wire.py": 100, f"wire{suffix}": 200, "telemetry/_alogfmt.c": 300, f"telemetry/_alogfmt{suffix}": 250,
             "telemetry/observe.py": 100, f"telemetry/observe{suffix}": 200}  # fmt: skip
    for name, mtime in files.items():
        (pkg / name).write_text("")
        os.utime(pkg / name, ns=(mtime * 10**9, mtime * 10**9))
    monkeypatch.setattr(_purepy, "__file__", str(pkg / "_purepy.py"))
    assert _purepy.stale() == [os.path.join("proxy", "telemetry", "_alogfmt.c")]
    os.utime(pkg / "wire.py", ns=(201 * 10**9, 201 * 10**9))
    assert sorted(_purepy.stale()) == [os.path.join("proxy", "telemetry", "_alogfmt.c"), os.path.join("proxy", "wire.py")]


def test_a_pure_python_run_never_imports_the_c_formatter() -> None:
    env = {**os.environ, "DTABPROXY_PURE": "1"}
    code = ("import importlib, sys\nfrom proxy.telemetry import accesslog\nassert accesslog._C is None\n"
            "try:\n    importlib.import_module('proxy.telemetry._alogfmt')\nexcept ImportError:\n    sys.exit(0)\n"
            "sys.exit(3)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0
