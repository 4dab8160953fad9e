"""`dtabproxy import FILE...`: print the router config equivalent to SMI, Istio and
Gateway API resources, with what was not translated listed at the top (and on stderr
when the output is not a terminal).

Exit status: 0 when everything was translated, 0 with warnings otherwise, 2 when
`--strict` is given and something was not translated, 1 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import sys

from .common import ResourceError, import_paths


def cmd_import(args: argparse.Namespace) -> int:
    try:
        result = import_paths(args.files, prefix=args.prefix)
    except ResourceError as exc:
        print(f"dtabproxy import: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(result.render())
    # The output's header lists them; repeat them on stderr only when that header is
    # not on the terminal already (written to a file or a pipe), so each shows once.
    if not sys.stdout.isatty():
        for item in result.untranslated:
            print(f"dtabproxy import: not translated: {item}", file=sys.stderr)
    if args.strict and result.untranslated:
        return 2
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    i = sub.add_parser("import", help="print the router config for SMI / Istio / Gateway API resources")
    i.add_argument("files", nargs="+", help="YAML files or directories of resources")
    i.add_argument("--prefix", default="/svc", help="the logical-name prefix of services (the router's dstPrefix)")
    i.add_argument("--strict", action="store_true", help="exit 2 if anything could not be translated")
    i.set_defaults(fn=cmd_import)
