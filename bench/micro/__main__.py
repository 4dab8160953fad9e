"""`python -m bench.micro`: run every micro-benchmark script in this directory.

Each `bench/micro/<name>.py` is run as `python -m bench.micro.<name>` in its own
process (so one script's imports and garbage do not colour the next one's figures),
with a deadline, its output shown as it comes. The exit status is non-zero if any
script failed or reported a figure outside its bound.

    python -m bench.micro            # all of them
    python -m bench.micro --quick    # fewer repeats: sets BENCH_MICRO_QUICK=1 for every script
    python -m bench.micro dtab_resolver -- --quick    # arguments after `--` go to the scripts
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TIMEOUT_S = 600  # a script that runs longer than this is hung, not slow


def scripts() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if not p.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1 :]
    quick = "--quick" in argv
    names = [a for a in argv if a != "--quick"]
    known = scripts()
    unknown = [n for n in names if n not in known]
    if unknown:
        print(
            f"unknown micro-benchmark(s): {', '.join(unknown)} (known: {', '.join(known)})", file=sys.stderr
        )
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if quick:
        env["BENCH_MICRO_QUICK"] = "1"  # not a flag: not every script takes --quick
    failed = []
    for name in names or known:
        print(f"== bench.micro.{name}", flush=True)
        try:
            rc = subprocess.run(
                [sys.executable, "-m", f"bench.micro.{name}", *passthrough],
                cwd=REPO,
                env=env,
                timeout=TIMEOUT_S,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            print(f"bench.micro.{name}: no result after {TIMEOUT_S}s", flush=True)
            rc = -1
        if rc != 0:
            failed.append(f"{name} (exit {rc})")
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
