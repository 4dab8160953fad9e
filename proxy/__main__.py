"""The `dtabproxy` command line: run, demo, delegate, check, stat, import.

    dtabproxy run -c config.yaml [--workers N|auto]
    dtabproxy run --listen 127.0.0.1:4140 --dtab '/svc/* => /$/inet/127.0.0.1/8080'
    dtabproxy demo [--check]
    dtabproxy delegate --dtab '/svc=>/$/inet/127.0.0.1/8080' /svc/web
    dtabproxy delegate --router http /svc/web [--dtab OVERRIDE]     # asks a running proxy
    dtabproxy delegate -c config.yaml --router http /svc/web      # offline
    dtabproxy check config.yaml
    dtabproxy stat [--admin 127.0.0.1:9990] [--by service|client|endpoint] [-w]
    dtabproxy import trafficsplit.yaml virtualservice.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

log = logging.getLogger("proxy")


def _hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SystemExit(f"dtabproxy: {what} must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _workers_flag(text: str) -> int | str:
    """`--workers N|auto`: as the config's `workers:` (an integer 1-1024, or auto)."""
    if text == "auto":
        return text
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(f"expected an integer 1-1024 or 'auto', got {text!r}")
    return int(text)


def _quote(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def config_from_flags(args: argparse.Namespace) -> Any:
    """The config-less form: one router from flags, validated like a file."""
    from config import load_text

    ip, port = _hostport(args.listen, "--listen")
    lines = []
    if args.admin:
        aip, aport = _hostport(args.admin, "--admin")
        lines += ["admin:", f"  ip: {_quote(aip)}", f"  port: {aport}"]
    lines += [
        "routers:",
        f"- protocol: {args.protocol}",
        f"  label: {_quote(args.label)}",
        f"  dtab: {_quote(args.dtab)}",
    ]
    if args.identifier:
        lines += ["  identifier:", f"    kind: {_quote(args.identifier)}"]
    if args.upstream_protocol:
        lines += ["  client:", f"    protocol: {args.upstream_protocol}"]
    lines += ["  servers:", f"  - ip: {_quote(ip)}", f"    port: {port}"]
    return load_text("\n".join(lines) + "\n", source="<command line>")


def cmd_run(args: argparse.Namespace) -> int:
    from config import ConfigError, default_config, load_file

    from .runtime import install_uvloop, serve
    from .workers import resolve_workers, serve_workers

    try:
        if args.config:
            cfg = load_file(args.config)
        elif args.listen:
            if args.dtab is None:
                raise SystemExit("dtabproxy run: --listen needs --dtab")
            cfg = config_from_flags(args)
        else:
            cfg = default_config()
    except ConfigError as exc:
        print(f"dtabproxy: {exc}", file=sys.stderr)
        return 1
    # The flag wins over the config's `workers:`; 1 is one process, as without workers.
    workers = resolve_workers(args.workers if args.workers is not None else cfg.workers)
    uv = install_uvloop()

    def ready(rt: Any) -> None:
        addresses = rt.workers.addresses() if rt.workers is not None else [
            (lst.router.label, *lst.address) for lst in rt.listeners
        ]
        for label, host, port in addresses:
            print(f"dtabproxy: router {label} listening on {host}:{port}", flush=True)
        if rt.admin is not None:
            print(f"dtabproxy: admin on http://{rt.admin.address[0]}:{rt.admin.address[1]}/", flush=True)
        from ._purepy import compiled

        log.info("ready (%s, %s%s)", "uvloop" if uv else "asyncio", "compiled" if compiled() else "pure Python",
                 f", {workers} workers" if workers > 1 else "")  # fmt: skip

    try:
        if workers > 1:
            return asyncio.run(serve_workers(cfg, workers, config_path=args.config, ready_cb=ready,
                                             log_level=args.log_level))  # fmt: skip
        return asyncio.run(serve(cfg, config_path=args.config, ready_cb=ready))
    except ConfigError as exc:  # found at start: the environment (in-cluster API, POD_IP)
        print(f"dtabproxy: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dtabproxy: cannot listen: {exc}", file=sys.stderr)
        return 1


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker process, started by `run --workers N` (not for people to run)."""
    from .runtime import install_uvloop
    from .workers import worker_main

    install_uvloop()
    return asyncio.run(worker_main(args.control_fd, args.id))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import main as demo_main

    return int(demo_main(args.rest) or 0)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["demo"]:  # the demo has its own options (see proxy.demo.run)
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from .demo.run import main as demo_main

        return int(demo_main(args_in[1:]) or 0)
    p = argparse.ArgumentParser(prog="dtabproxy", description="A per-request routing proxy driven by dtabs.")
    p.add_argument("--log-level", default=os.environ.get("DTABPROXY_LOG", "INFO"))
    # The metavar leaves out `worker`, which only `run --workers N` starts.
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{run,demo,delegate,check,stat,import}")

    r = sub.add_parser("run", help="run the proxy (a config file, flags, or the embedded default)")
    r.add_argument("-c", "--config", help="YAML config file (Linkerd 1 shape)")
    r.add_argument("--listen", help="HOST:PORT for a config-less router")
    r.add_argument("--dtab", help="the config-less router's dtab")
    r.add_argument("--identifier", help="identifier kind (default io.l5d.header.token)")
    r.add_argument("--protocol", default="http", choices=["http", "h2"])
    r.add_argument("--upstream-protocol", choices=["http", "h2"])
    r.add_argument("--admin", help="HOST:PORT for the admin server")
    r.add_argument("--label", default="default", help="the config-less router's label")
    r.add_argument("--workers", type=_workers_flag, metavar="N|auto",
                   help="worker processes (SO_REUSEPORT); auto: the CPUs this process may use "
                        "(wins over the config's workers:, default 1)")  # fmt: skip
    r.set_defaults(fn=cmd_run)

    w = sub.add_parser("worker", help=argparse.SUPPRESS)  # started by `run --workers N`
    w.add_argument("--control-fd", type=int, required=True)
    w.add_argument("--id", type=int, required=True)
    w.set_defaults(fn=cmd_worker)

    d = sub.add_parser("demo", help="the hello/world staging demo, with backends")
    d.add_argument("rest", nargs=argparse.REMAINDER)
    d.set_defaults(fn=cmd_demo)

    from .admin.cli import add_check_arguments, add_delegate_arguments, add_stat_arguments

    add_delegate_arguments(sub.add_parser("delegate", help="the delegation tree of a path, in the terminal"))
    add_check_arguments(sub.add_parser("check", help="validate a config file and every dtab in it"))
    add_stat_arguments(sub.add_parser("stat", help="success rate, RPS and latency per service from a running proxy"))

    from config.importers.cli import add_parser as add_import_parser

    add_import_parser(sub)  # dtabproxy import FILE... (config/importers/cli.py)

    args = p.parse_args(args_in)
    who = f" worker[{args.id}]" if args.cmd == "worker" else ""
    logging.basicConfig(level=args.log_level.upper(), format=f"%(asctime)s %(levelname)s{who} %(name)s: %(message)s")
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
