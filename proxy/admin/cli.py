"""The command-line views of a proxy: `stat` (a running proxy's traffic, from its admin
port), `delegate` (the delegation tree in the terminal, from a running proxy or a config
file) and `check` (validate a config and every dtab in it).

Plain blocking I/O (urllib) on purpose: a command runs once and exits, and must not need
an event loop. Nothing here is imported by the proxy itself.

    dtabproxy stat [--admin HOST:PORT] [--router R] [--by service|client|endpoint]
                   [--interval S] [--watch] [--count N] [--since-start]
    dtabproxy delegate [--router R] [--admin HOST:PORT | -c CONFIG] [--dtab OVERRIDE] PATH
        (neither --router nor -c: the proxy on the default admin port, else the embedded
        default config; exit 1 when PATH binds to nothing)
    dtabproxy check CONFIG
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, TextIO

DEFAULT_ADMIN = "127.0.0.1:9990"
TIMEOUT_S = 5.0  # an admin answer takes milliseconds; a hung proxy should not hang the CLI


class CliError(Exception):
    """Something to print on stderr, then exit 1."""


def _admin_url(admin: str) -> str:
    admin = admin.strip()
    if admin.startswith(("http://", "https://")):
        return admin.rstrip("/")
    host, sep, port = admin.rpartition(":")
    if not sep or not port.isdigit():
        raise CliError(f"--admin must be HOST:PORT, got {admin!r}")
    host = host or "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _fetch(url: str, data: bytes | None = None, content_type: str | None = None,
           timeout_s: float = TIMEOUT_S) -> tuple[int, bytes]:  # fmt: skip
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the admin server at {url}: {reason}") from None


# -- stat -------------------------------------------------------------------------------------


@dataclass
class Row:
    """Cumulative counters of one (router, name, traffic) at one instant."""

    requests: float = 0.0
    successes: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    retries: float = 0.0
    timeouts: float = 0.0  # answered because a deadline or timeout passed (every reason)
    endpoints: dict[str, float] | None = None  # a client's endpoints by accrual state, now


@dataclass
class Snapshot:
    at: float
    started: float | None
    rows: dict[tuple[str, ...], Row]


_LEVEL_LABEL = {"service": "service", "client": "client", "endpoint": "endpoint"}


def parse_metrics(text: str, by: str) -> tuple[dict[tuple[str, ...], Row], float | None]:
    """Rows keyed by (router, name, traffic) from a Prometheus scrape of the proxy."""
    from prometheus_client.parser import text_string_to_metric_families

    prefix = f"dtabproxy_{by}_"
    rows: dict[tuple[str, ...], Row] = {}
    started = None
    timeouts: dict[tuple[str, ...], float] = {}
    states: dict[tuple[str, str], dict[str, float]] = {}

    def key(labels: dict[str, str]) -> tuple[str, ...]:
        if by == "endpoint":
            return (labels.get("router", ""), f"{labels.get('client', '')} {labels.get('endpoint', '')}", labels.get("traffic", ""))
        return (labels.get("router", ""), labels.get(_LEVEL_LABEL[by], ""), labels.get("traffic", ""))

    for fam in text_string_to_metric_families(text):
        if fam.name == "dtabproxy_start_time_seconds":
            started = fam.samples[0].value if fam.samples else None
            continue
        if fam.name == "dtabproxy_service_client_deadline_exceeded" and by != "endpoint":
            for s in fam.samples:  # every reason, summed per row
                k = key(s.labels)
                timeouts[k] = timeouts.get(k, 0.0) + s.value
            continue
        if fam.name == "dtabproxy_client_endpoints" and by == "client":
            for s in fam.samples:
                st = states.setdefault((s.labels.get("router", ""), s.labels.get("client", "")), {})
                st[s.labels.get("state", "")] = s.value
            continue
        if not fam.name.startswith(prefix):
            continue
        for s in fam.samples:
            if s.name == prefix + "requests_total":
                rows.setdefault(key(s.labels), Row()).requests = s.value
            elif s.name == prefix + "successes_total":
                rows.setdefault(key(s.labels), Row()).successes = s.value
            elif s.name == prefix + "request_latency_seconds_bucket":
                le = math.inf if s.labels["le"] == "+Inf" else float(s.labels["le"])
                rows.setdefault(key(s.labels), Row()).buckets[le] = s.value
            elif s.name == prefix + "retries_total":
                rows.setdefault(key(s.labels), Row()).retries = s.value
    for k, n in timeouts.items():
        if k in rows:
            rows[k].timeouts = n
    if by == "client":
        for k, row in rows.items():
            row.endpoints = states.get((k[0], k[1]))
    return rows, started


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Like PromQL's histogram_quantile: linear within the bucket that holds rank q."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return prev_bound  # past the last finite bound: the best we can say
            if c == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count)
        prev_bound, prev_count = b, c
    return prev_bound


def snapshot(admin_url: str, by: str) -> Snapshot:
    status, body = _fetch(admin_url + "/admin/metrics/prometheus")
    if status != 200:
        raise CliError(f"{admin_url}/admin/metrics/prometheus answered {status}")
    rows, started = parse_metrics(body.decode("utf-8", "replace"), by)
    return Snapshot(time.time(), started, rows)


def stat_table(prev: Snapshot | None, cur: Snapshot, *, router: str | None = None, by: str = "service") -> list[list[str]]:
    """One line per name: success rate, RPS and latency quantiles over the window from
    `prev` to `cur` (from process start when `prev` is None); for services and clients
    the retries and the requests answered because a deadline or timeout passed in the
    window, and for clients their endpoints available of all (failure accrual, now)."""
    if prev is None:
        span = cur.at - cur.started if cur.started is not None else 0.0
    else:
        span = cur.at - prev.at
    header = ["ROUTER", by.upper(), "TRAFFIC", "SUCCESS", "RPS", "P50_MS", "P95_MS", "P99_MS"]
    if by != "endpoint":  # retries and deadlines are a request's, not an endpoint's
        header += ["RETRIES", "TIMEOUTS"]
    if by == "client":
        header.append("ENDPOINTS")  # available/all, as failure accrual sees them now
    header.append("REQUESTS")
    out = [header]
    for key in sorted(cur.rows):
        if router is not None and key[0] != router:
            continue
        row = cur.rows[key]
        old = prev.rows.get(key, Row()) if prev is not None else Row()
        reqs = row.requests - old.requests
        ok = row.successes - old.successes
        delta = {b: c - old.buckets.get(b, 0.0) for b, c in row.buckets.items()}
        rps = reqs / span if span > 0 else 0.0

        def ms(q: float, delta: dict[float, float] = delta) -> str:
            v = quantile(q, delta)
            return "-" if v is None else f"{v * 1000:.2f}"

        line = [
            key[0], key[1], key[2],
            f"{ok / reqs * 100:.2f}%" if reqs > 0 else "-",
            f"{rps:.1f}",
            ms(0.5), ms(0.95), ms(0.99),
        ]  # fmt: skip
        if by != "endpoint":
            line += [f"{row.retries - old.retries:.0f}", f"{row.timeouts - old.timeouts:.0f}"]
        if by == "client":
            eps = row.endpoints
            line.append(f"{eps.get('available', 0):.0f}/{sum(eps.values()):.0f}" if eps else "-")
        line.append(f"{reqs:.0f}")
        out.append(line)
    return out


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def cmd_stat(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`dtabproxy stat`: per service (or client, endpoint) success rate, RPS, p50/p95/p99."""
    out = out or sys.stdout
    try:
        url = _admin_url(args.admin)
        if args.since_start:
            cur = snapshot(url, args.by)
            print(format_table(stat_table(None, cur, router=args.router, by=args.by)), file=out, flush=True)
            return 0
        prev = snapshot(url, args.by)
        shown = 0
        while True:
            time.sleep(args.interval)
            cur = snapshot(url, args.by)
            table = format_table(stat_table(prev, cur, router=args.router, by=args.by))
            if args.watch and out.isatty():
                out.write("\x1b[H\x1b[2J")  # home and clear: redraw in place like `watch`
            if args.watch:
                print(time.strftime("%H:%M:%S") + f"  window {cur.at - prev.at:.1f}s", file=out)
            print(table, file=out, flush=True)
            shown += 1
            if not args.watch or (args.count and shown >= args.count):
                return 0
            prev = cur
    except CliError as exc:
        print(f"dtabproxy stat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def add_stat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", default=os.environ.get("DTABPROXY_ADMIN", DEFAULT_ADMIN),
                   help=f"the proxy's admin HOST:PORT (default {DEFAULT_ADMIN}, or $DTABPROXY_ADMIN)")  # fmt: skip
    p.add_argument("--router", help="only this router")
    p.add_argument("--by", choices=["service", "client", "endpoint"], default="service", help="one line per what")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between the two samples (default 1)")
    p.add_argument("-w", "--watch", action="store_true", help="keep refreshing every interval")
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after this many tables")
    p.add_argument("--since-start", action="store_true", help="totals since the proxy started, no waiting")
    p.set_defaults(fn=cmd_stat)


# -- delegate -----------------------------------------------------------------------------------

_COLOURS = {"success": "32", "negative": "90", "failed": "31", "empty": "34"}


def node_status(node: dict[str, Any]) -> str:
    """docs/dtab.md §12.5's derived status, as the playground colours it."""
    t = node["type"]
    if t == "neg":
        return "negative"
    if t in ("fail", "exception"):
        return "failed"
    if t == "empty":
        return "empty"
    if t == "leaf":
        return "negative" if node.get("bound", {}).get("addr", {}).get("type") == "neg" else "success"
    if t == "delegate":
        return node_status(node["delegate"])
    if t == "transformation":
        return node_status(node["tree"])
    if t == "alt":
        for c in node["alt"]:
            s = node_status(c)
            if s != "negative":
                return s
        return "negative"
    if t == "union":
        ss = [node_status(w["tree"]) for w in node["union"]]
        return "failed" if "failed" in ss else "success" if "success" in ss else "negative"
    return "negative"


def _addrs(addr: dict[str, Any]) -> str:
    t = addr.get("type")
    if t == "bound":
        items = [f"{a['ip']}:{a['port']}" if ":" not in a["ip"] else f"[{a['ip']}]:{a['port']}" for a in addr.get("addrs", [])]
        return ", ".join(items) if items else "no endpoints"
    if t == "failed":
        return f"failed: {addr.get('cause', '')}"
    return str(t)


def render_tree(node: dict[str, Any], colour: bool = False) -> list[str]:
    """The delegation tree as indented lines with connectors."""
    lines: list[str] = []

    def paint(text: str, status: str) -> str:
        return f"\x1b[{_COLOURS[status]}m{text}\x1b[0m" if colour else text

    def walk(n: dict[str, Any], lead: str, branch: str, weight: str) -> None:
        st = node_status(n)
        text = f"{weight}{n['type']} {n.get('path', '')}"
        if "dentry" in n:
            text += f"  via {n['dentry']['prefix']} => {n['dentry']['dst']}"
        if n["type"] == "leaf":
            b = n["bound"]
            text += f"  -> {b['id']}"
            if b.get("path") not in (None, "/"):
                text += f" residual {b['path']}"
            text += f"  [{_addrs(b.get('addr', {}))}]"
        elif n["type"] == "exception":
            text += f"  ({n.get('message', '')})"
        lines.append(lead + branch + paint(text, st) + ("" if colour else f"  <{st}>"))
        kids: list[tuple[dict[str, Any], str]] = []
        if n["type"] == "delegate":
            kids = [(n["delegate"], "")]
        elif n["type"] == "transformation":
            kids = [(n["tree"], "")]
        elif n["type"] == "alt":
            kids = [(c, "") for c in n["alt"]]
        elif n["type"] == "union":
            total = sum(w["weight"] for w in n["union"])
            for w in n["union"]:
                share = w["weight"] / total if total > 0 else 1 / len(n["union"])
                kids.append((w["tree"], f"{w['weight']:g} ({share:.0%}) "))
        child_lead = lead + ("" if not branch else "   " if branch == "└─ " else "│  ")
        for i, (c, wt) in enumerate(kids):
            walk(c, child_lead, "└─ " if i == len(kids) - 1 else "├─ ", wt)

    walk(node, "", "", "")
    return lines


def _read_dtab_arg(value: str | None) -> str:
    if value is None:
        return ""
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    return value


def _join(base: str, override: str) -> str:
    """`base ++ override` as text, as the playground sends it."""
    base, override = base.strip(), override.strip()
    if not override:
        return base
    if not base:
        return override
    return base + ("\n" if base.endswith(";") else "\n;") + override


#: How long `delegate` waits for a proxy on the default admin port before it uses the
#: embedded default config: a local admin answers in milliseconds.
PROBE_TIMEOUT_S = 1.0


def _running_routers(url: str, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    status, body = _fetch(url + "/admin/dtabs", timeout_s=timeout_s)
    if status != 200:
        raise CliError(f"{url}/admin/dtabs answered {status}")
    try:
        routers = json.loads(body)
    except ValueError:
        raise CliError(f"{url}/admin/dtabs did not answer JSON") from None
    if not isinstance(routers, dict) or not routers:
        raise CliError(f"{url} has no routers")
    return routers


def _from_running(url: str, label: str | None, routers: dict[str, Any], override: str, path: str,
                  out: TextIO) -> dict[str, Any]:  # fmt: skip
    label = label or next(iter(routers))
    if label not in routers:
        raise CliError(f"no router {label!r} on {url} (routers: {', '.join(routers)})")
    text = _join(routers[label]["dtab"], override)
    req = json.dumps({"namespace": label, "dtab": text, "path": path}).encode()
    status, body = _fetch(url + "/delegator.json", req, "application/json")
    if status != 200:
        raise CliError(body.decode("utf-8", "replace") or f"delegator answered {status}")
    others = [r for r in routers if r != label]
    print(f"source: the running proxy at {url}, router {label}"
          + (f" (others: {', '.join(others)}; pick one with --router)" if others else ""), file=out)  # fmt: skip
    print(f"router {label}: base dtab {routers[label]['dtab'] or '(empty)'}", file=out)
    if override.strip():
        print(f"override: {override.strip()}", file=out)
    tree: dict[str, Any] = json.loads(body)
    return tree


def cmd_delegate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`dtabproxy delegate`: from a running proxy (`--router` and/or `--admin`), from a
    config file (`-c`), or, with neither, from the proxy answering on the default admin
    port if there is one, else the embedded default config; the first line says which.
    Exit 0 when the name binds to something, 1 when it binds to nothing (or on an error)."""
    import dtab

    out = out or sys.stdout
    colour = out.isatty() and not os.environ.get("NO_COLOR")
    override = _read_dtab_arg(args.dtab)
    try:
        tree: dict[str, Any] | None = None
        if args.config is None and (args.router is not None or args.admin is not None):
            url = _admin_url(args.admin or os.environ.get("DTABPROXY_ADMIN", DEFAULT_ADMIN))
            tree = _from_running(url, args.router, _running_routers(url), override, args.path, out)
        elif args.config is None:
            url = _admin_url(os.environ.get("DTABPROXY_ADMIN", DEFAULT_ADMIN))
            try:
                routers = _running_routers(url, PROBE_TIMEOUT_S)
            except CliError:
                routers = None  # nobody (or not a dtabproxy) on the default admin port
            if routers is not None:
                tree = _from_running(url, None, routers, override, args.path, out)
        if tree is None:
            from config import ConfigError, default_config, load_file

            try:
                cfg = load_file(args.config) if args.config else default_config()
            except ConfigError as exc:
                raise CliError(str(exc)) from None
            routers_cfg = {r.label: r for r in cfg.routers}
            label = args.router or next(iter(routers_cfg), None)
            if label not in routers_cfg:
                raise CliError(f"no router {label!r} in {args.config or 'the default config'} (routers: {', '.join(routers_cfg)})")
            where = f"{args.config}, router {label}" if args.config else (
                f"the embedded default config (config/default.yaml), router {label} (no proxy answered on {url})")
            print(f"source: {where}", file=out)
            try:
                table = routers_cfg[label].dtab + dtab.read_dtab(override)
            except dtab.DtabSyntaxError as exc:
                raise CliError(f"Invalid dtab: {exc}") from None
            try:
                path = dtab.read_path(args.path)
            except dtab.DtabSyntaxError as exc:
                raise CliError(f"Invalid path: {exc}") from None
            try:
                print(f"bound: {dtab.bind(table, path).show()}", file=out)
            except dtab.BindError as exc:
                print(f"bound: error: {exc}", file=out)
            try:
                tree = dtab.delegate_json(table, path)
            except dtab.DtabError as exc:
                raise CliError(str(exc)) from None
    except CliError as exc:
        print(f"dtabproxy delegate: {exc}", file=sys.stderr)
        return 1
    for line in render_tree(tree, colour=colour):
        print(line, file=out)
    status = node_status(tree)
    if status != "success":
        print(f"dtabproxy delegate: {args.path} binds to nothing ({status})", file=sys.stderr)
        return 1
    return 0


def add_delegate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the logical name to explain, e.g. /svc/web")
    p.add_argument("--dtab", help="an override dtab (text or a file), appended to the router's")
    p.add_argument("--router", help="the router: ask the running proxy's admin server (unless -c)")
    p.add_argument("--admin", help=f"the running proxy's admin HOST:PORT (default {DEFAULT_ADMIN})")
    p.add_argument("-c", "--config", help="explain offline, with the router's dtab from this config file "
                   "(with neither --router nor -c: the proxy on the default admin port, else the embedded default config)")
    p.set_defaults(fn=cmd_delegate)


# -- check --------------------------------------------------------------------------------------

_MARKED = re.compile(r"at '(?P<text>.*)'\s*$", re.S)


def error_column(source_line: str, message: str) -> int | None:
    """The 1-based column, in the config file's line, of a dtab parse error: the message
    shows the dtab with the offending character in [ ] (docs/dtab.md §2.4)."""
    m = _MARKED.search(message)
    if m is None:
        return None
    marked = m.group("text")
    at = marked.rfind("[")
    if at < 0:
        return None
    before = marked[:at].rsplit("\n", 1)[-1]
    if not before.strip():
        stripped = source_line.lstrip()
        return len(source_line) - len(stripped) + 1 if stripped else None
    i = source_line.find(before)
    return None if i < 0 else i + len(before) + 1


def cmd_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`dtabproxy check CONFIG`: 0 and a summary when valid; 1 and
    `file:line:column: key: message` (with the line and a caret) at the first error."""
    from config import ConfigError, load_file

    out = out or sys.stdout
    try:
        cfg = load_file(args.config, log_notes=False)  # printed below, once
    except ConfigError as exc:
        where = args.config if exc.source is None else exc.source
        col = None
        src_line = None
        if exc.line is not None:
            try:
                with open(args.config, encoding="utf-8") as f:
                    lines = f.read().split("\n")
                src_line = lines[exc.line - 1] if 0 < exc.line <= len(lines) else None
            except (OSError, UnicodeDecodeError):
                src_line = None
            if src_line is not None:
                # A dtab error: the parser's offset, mapped into the line; any other
                # error: the offending node's own column.
                col = error_column(src_line, exc.message) or getattr(exc, "column", None)
        pos = ":".join(str(p) for p in (where, exc.line, col) if p is not None)
        head = ": ".join(p for p in (pos, exc.key, exc.message) if p)
        print(f"dtabproxy check: {head}", file=sys.stderr)
        if src_line is not None:
            print(f"  {exc.line} | {src_line}", file=sys.stderr)
            if col is not None:
                pad = " " * (len(str(exc.line)) + 3 + col - 1)
                print(f"  {pad}^", file=sys.stderr)
        return 1
    for rc in cfg.routers:
        print(f"router {rc.label}: {len(rc.dtab)} dentries, {len(rc.servers)} server(s): ok", file=out)
    for note in cfg.notes:
        print(f"note: {note}", file=out)
    print(f"{args.config}: ok", file=out)
    return 0


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the YAML config file to validate")
    p.set_defaults(fn=cmd_check)
