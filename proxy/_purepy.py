"""`DTABPROXY_PURE=1`: import this package's `.py` files even where compiled extensions of
them exist (setup.py compiles the hot path with mypyc), so one installed tree runs both
ways and `make test` can prove the pure-Python build too; an extension written in C
(`telemetry/_alogfmt.c`) is not imported at all, and its importer uses its Python twin.
Nothing else uses it."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


class SourceFirst(importlib.abc.MetaPathFinder):
    """Finds `proxy.*` modules as the path finder would, but a compiled one by its source."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if not fullname.startswith("proxy.") or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(_SUFFIXES):
            return None
        base = os.path.join(os.path.dirname(origin), fullname.rpartition(".")[2])
        if os.path.exists(base + ".py"):
            return importlib.util.spec_from_file_location(fullname, base + ".py")
        if os.path.exists(base + ".c"):  # an extension written in C (the access log's formatter):
            # not used by a pure-Python run; its importer falls back to Python
            raise ModuleNotFoundError(f"{fullname} is a C extension; this run uses Python only", name=fullname)
        return None


def stale() -> list[str]:
    """Compiled modules older than their source (edited since the build), or than
    setup.py in a source checkout (its list of compiled modules changed)."""
    root = os.path.dirname(os.path.abspath(__file__))
    out = []
    oldest_build: int | None = None
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if not f.endswith(_SUFFIXES):
                continue
            source = os.path.join(dirpath, f.split(".", 1)[0] + ".py")
            if not os.path.exists(source):  # an extension written in C
                source = source[:-3] + ".c"
            try:
                built = os.stat(os.path.join(dirpath, f)).st_mtime_ns
                if os.stat(source).st_mtime_ns > built:
                    out.append(os.path.relpath(source, os.path.dirname(root)))
            except OSError:
                continue
            oldest_build = built if oldest_build is None else min(oldest_build, built)
    try:
        if oldest_build is not None and os.stat(os.path.join(os.path.dirname(root), "setup.py")).st_mtime_ns > oldest_build:
            out.append("setup.py")
    except OSError:  # an installed package: no setup.py beside it
        pass
    return out


def install() -> None:
    if not any(isinstance(f, SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFirst())


def main(argv: list[str]) -> int:
    """`--check`: exit 1 when the compiled build is stale (`make build` asks); else say
    which build runs."""
    if "--check" in argv:
        old = stale()
        for path in old:
            print(f"stale compiled module: {path} changed since the build", file=sys.stderr)
        return 1 if old else 0
    print("compiled" if compiled() else "pure Python")
    return 0


def compiled() -> bool:
    """Whether the request path runs compiled (for the startup log and the tests)."""
    from .wire import h1

    return bool(h1.__file__ and h1.__file__.endswith(_SUFFIXES))

