"""The build: the hot-path modules are compiled with mypyc; everything else is pure Python.

The compiled modules are the same `.py` files (typed Python, checked by mypy): mypyc turns
each into a C extension that sits beside it, and Python imports the extension first. The
interpreter is the limit on the request path (bench/README.md has the profile), and
mypyc removes most of its per-call and per-attribute cost without a second language.

`DTABPROXY_PURE=1` at build time skips compiling (the package is then pure Python), and
at run time makes Python import the `.py` files even where extensions exist
(`_purepy.py`); `make test` runs the suite both ways. A machine without a C compiler
gets the pure-Python package: the build says so and goes on.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

#: The modules on the request path, compiled together (they call each other directly).
COMPILED = [
    "proxy/codec/h1.py",
    "proxy/codec/h2.py",
    "proxy/codec/grpc.py",
    "proxy/codec/headers.py",
    "proxy/route/request.py",
    "proxy/route/router.py",
    "proxy/route/settings.py",
    "proxy/route/identify.py",
    "proxy/telemetry/tracectx.py",
    "proxy/telemetry/observe.py",
    "proxy/telemetry/accesslog.py",
    "proxy/telemetry/metrics.py",
    "proxy/upstream/attempt.py",
    "proxy/upstream/endpoint.py",
    "proxy/upstream/policy.py",
    "proxy/upstream/balancers.py",
    "proxy/upstream/accrual.py",
    "proxy/upstream/budget.py",
    "proxy/upstream/classify.py",
    "proxy/upstream/backoff.py",
    "proxy/wire/h1.py",
    "proxy/wire/h2.py",
    "proxy/wire/upstream_h1.py",
    "proxy/wire/upstream_h2.py",
    "proxy/wire/render.py",
    "proxy/wire/detect.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("DTABPROXY_PURE") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # no mypy in the build environment: the pure-Python package
        print("dtabproxy: mypyc not available; building the pure-Python package", file=sys.stderr)
        return []
    # opt_level 3 and no debug info: the code is for speed; `separate` builds one C
    # extension per module so the compiler runs on several smaller files.
    return [*mypycify(COMPILED, opt_level="3", debug_level="0"), *C_EXTENSIONS]


#: Extensions written in C, each with a Python twin the suite holds it to (and that runs
#: where it is not built): the access log's line writer, ~7,000 instructions a line in
#: Python and ~1,000-1,150 in C. `optional`: a failed compile leaves the twin.
C_EXTENSIONS = [
    Extension("proxy.telemetry._alogfmt", ["proxy/telemetry/_alogfmt.c"], extra_compile_args=["-O2"], optional=True),
]


setup(ext_modules=ext_modules())
