"""The `dtabproxy` command line: run, demo, delegate, check.

    dtabproxy run -c config.yaml
    dtabproxy run --listen 127.0.0.1:4140 --dtab '/svc/* => /$/inet/127.0.0.1/8080'
    dtabproxy demo [--check]
    dtabproxy delegate --dtab '/svc=>/$/inet/127.0.0.1/8080' /svc/web
    dtabproxy delegate -c config.yaml --router http /svc/web [--dtab OVERRIDE]
    dtabproxy check config.yaml
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
    uv = install_uvloop()

    def ready(rt: Any) -> None:
        for lst in rt.listeners:
            host, port = lst.address
            print(f"dtabproxy: router {lst.router.label} listening on {host}:{port}", flush=True)
        if rt.admin is not None:
            print(f"dtabproxy: admin on http://{rt.admin.address[0]}:{rt.admin.address[1]}/", flush=True)
        log.info("ready (%s)", "uvloop" if uv else "asyncio")

    try:
        return asyncio.run(serve(cfg, config_path=args.config, ready_cb=ready))
    except OSError as exc:
        print(f"dtabproxy: cannot listen: {exc}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import main as demo_main

    return int(demo_main(args.rest) or 0)


def _read_dtab_arg(value: str | None) -> str:
    if value is None:
        return ""
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    return value


def cmd_delegate(args: argparse.Namespace) -> int:
    import dtab
    from config import ConfigError, load_file

    base = dtab.Dtab.EMPTY
    if args.config:
        try:
            cfg = load_file(args.config)
        except ConfigError as exc:
            print(f"dtabproxy: {exc}", file=sys.stderr)
            return 1
        routers = {r.label: r for r in cfg.routers}
        label = args.router or next(iter(routers), None)
        if label not in routers:
            print(f"dtabproxy: no router {label!r} in {args.config} (routers: {', '.join(routers)})", file=sys.stderr)
            return 1
        base = routers[label].dtab
    try:
        override = dtab.read_dtab(_read_dtab_arg(args.dtab))
        path = dtab.read_path(args.path)
    except dtab.DtabSyntaxError as exc:
        print(f"dtabproxy: {exc}", file=sys.stderr)
        return 1
    table = base + override
    try:
        bound = dtab.bind(table, path)
        print(f"bound: {bound.show()}")
        for leaf in dtab.evaluate(bound) or ():
            if isinstance(leaf, dtab.Bound) and leaf.residual.elems:
                print(f"  {leaf.id.show()} residual {leaf.residual.show()}")
    except dtab.BindError as exc:
        print(f"bind error: {exc}")
    try:
        tree = dtab.explain(table, path)
    except dtab.DtabError as exc:
        print(f"explain error: {exc}")
        return 1
    _print_explanation(tree, 0)
    return 0


def _print_explanation(node: Any, depth: int) -> None:
    pad = "  " * depth
    via = f"  [{node.dentry.show()}]" if node.dentry is not None else ""
    label = node.path.show() if node.path.elems or node.kind != "neg" else "~"
    extra = ""
    if node.kind == "leaf" and node.bound is not None:
        extra = f" -> {node.bound.id.show()}" + (f" residual {node.bound.residual.show()}" if node.bound.residual.elems else "")
    elif node.kind == "exception":
        extra = f": {node.message}"
    print(f"{pad}{node.kind} {label}{extra}{via}")
    if node.kind == "union":
        for w, c in zip(node.weights, node.children, strict=True):
            print(f"{pad}  weight {w}")
            _print_explanation(c, depth + 2)
    else:
        for c in node.children:
            _print_explanation(c, depth + 1)


def cmd_check(args: argparse.Namespace) -> int:
    from config import ConfigError, load_file

    try:
        cfg = load_file(args.config)
    except ConfigError as exc:
        print(f"dtabproxy: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dtabproxy: {args.config}: {exc.strerror}", file=sys.stderr)
        return 1
    for rc in cfg.routers:
        print(f"router {rc.label}: {len(rc.dtab)} dentries, {len(rc.servers)} server(s): ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["demo"]:  # the demo has its own options (see proxy.demo.run)
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from .demo.run import main as demo_main

        return int(demo_main(args_in[1:]) or 0)
    p = argparse.ArgumentParser(prog="dtabproxy", description="A per-request routing proxy driven by dtabs.")
    p.add_argument("--log-level", default=os.environ.get("DTABPROXY_LOG", "INFO"))
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the proxy (a config file, flags, or the embedded default)")
    r.add_argument("-c", "--config", help="YAML config file (Linkerd 1 shape)")
    r.add_argument("--listen", help="HOST:PORT for a config-less router")
    r.add_argument("--dtab", help="the config-less router's dtab")
    r.add_argument("--identifier", help="identifier kind (default io.l5d.header.token)")
    r.add_argument("--protocol", default="http", choices=["http", "h2"])
    r.add_argument("--upstream-protocol", choices=["http", "h2"])
    r.add_argument("--admin", help="HOST:PORT for the admin server")
    r.add_argument("--label", default="default", help="the config-less router's label")
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser("demo", help="the hello/world staging demo, with backends")
    d.add_argument("rest", nargs=argparse.REMAINDER)
    d.set_defaults(fn=cmd_demo)

    g = sub.add_parser("delegate", help="bind and explain a path through a dtab")
    g.add_argument("path")
    g.add_argument("--dtab", help="dtab text or file (with -c: an override on top of the router's dtab)")
    g.add_argument("-c", "--config")
    g.add_argument("--router")
    g.set_defaults(fn=cmd_delegate)

    c = sub.add_parser("check", help="validate a config file and every dtab in it")
    c.add_argument("config")
    c.set_defaults(fn=cmd_check)

    from config.importers.cli import add_parser as add_import_parser

    add_import_parser(sub)  # dtabproxy import FILE... (config/importers/cli.py)

    args = p.parse_args(args_in)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
