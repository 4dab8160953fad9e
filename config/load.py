"""YAML text -> a validated `Config`, with errors that name the file, line and key path.

The YAML is read with PyYAML's composer (`SafeLoader` nodes, never objects), so every
value keeps the line it was written on and an error can say
`config.yaml:12: routers[0].servers[1].port: expected an integer 1-65535, got 'abc'`.
A router section written for Linkerd 1 loads unchanged: its keys mean the same here,
and the Linkerd keys we cannot honour yet are either refused with a clear error (when
ignoring them would change where traffic goes or who may reach it) or accepted with a
logged note (tuning knobs such as `loadBalancer`, and the `telemetry`/`usage` blocks).

This module reads the files a config names (an HMAC `keyFile`) and checks that named
paths exist, so a broken config fails at load with its line, not later at first use.
It imports `dtab` for paths and dtabs, and nothing from `proxy`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any, NoReturn

import yaml
from yaml.constructor import SafeConstructor

from dtab import Dtab, DtabSyntaxError, Path, read_dtab, read_path, read_prefix

from .schema import (
    IDENTIFIER_KINDS,
    AccessLogConfig,
    Admin,
    ClientConfig,
    ClientTls,
    Config,
    HashOn,
    HeaderEdits,
    HmacConfig,
    IdentifierConfig,
    IPNetwork,
    Limits,
    MatchBlock,
    NamedMatch,
    NamerConfig,
    OverrideConfig,
    RouterConfig,
    RuleConfig,
    ServerConfig,
    ServerTls,
    StringMatch,
    TelemeterConfig,
    UriRewrite,
)

log = logging.getLogger(__name__)

PROTOCOLS = ("http", "h2")
# Linkerd's default listener ports when a router lists no servers.
DEFAULT_PORTS = {"http": 4140, "h2": 4142}
NAMER_KINDS = ("io.l5d.fs",)
# Linkerd 1 plugin kinds we know by name but do not implement yet: refused with a clear
# "not supported yet" rather than a "did you mean".
LINKERD_NAMERS = frozenset(
    {
        "io.l5d.k8s", "io.l5d.k8s.external", "io.l5d.k8s.ns", "io.l5d.consul", "io.l5d.marathon",
        "io.l5d.zk", "io.l5d.serversets", "io.l5d.dnssrv", "io.l5d.curator", "io.l5d.rancher",
        "io.l5d.istio",
    }
)  # fmt: skip
LINKERD_PROTOCOLS = frozenset({"thrift", "mux"})
LINKERD_IDENTIFIERS = frozenset(
    {"io.l5d.ingress", "io.l5d.k8s.ingress", "io.l5d.k8s.istio", "io.l5d.h2.ingress", "io.l5d.http.ingress"}
)
REDACTED = "<redacted>"
# An HMAC key shorter than this is guessable; 16 bytes is the floor NIST SP 800-107
# puts on HMAC key strength for 128-bit security.
MIN_HMAC_KEY_BYTES = 16

# Keys Linkerd accepts that have no effect here. They are accepted, so a Linkerd config
# loads, and each occurrence is logged once and kept in `Config.notes`.
_IGNORED_ROOT = {
    "usage": "usage reporting is not implemented",
}
#: `telemetry` kinds: exporters we run, and Linkerd kinds accepted as a note because
#: what they do is done anyway. Any other kind is refused.
TELEMETER_KINDS = ("io.l5d.otlp", "io.l5d.zipkin")
_NOTED_TELEMETERS = {
    "io.l5d.prometheus": "metrics are always served at /admin/metrics/prometheus",
    "io.l5d.recentRequests": "recent requests are the playground's decisions (/delegator, /admin/sampling)",
}
LINKERD_TELEMETERS = frozenset(
    {"io.l5d.statsd", "io.l5d.influxdb", "io.l5d.tracelog", "io.zipkin.http", "io.zipkin.kafka",
     "io.zipkin.scribe", "io.l5d.adminMetricsExport", "io.l5d.commonMetrics", "io.l5d.usage"}
)  # fmt: skip
ACCESS_LOG_FORMATS = ("combined", "json")
TRACE_PROPAGATORS = ("io.l5d.default", "io.l5d.zipkin", "io.l5d.w3c")
# Twitter util's log roll policies, as Linkerd's *AccessLogRollPolicy takes them.
_ROLL = re.compile(r"never|hourly|daily|weekly|\d+\.(?:bytes?|kilobytes?|megabytes?|gigabytes?)")
_IGNORED_ADMIN = {
    "workerThreads": "the admin server runs on the proxy's event loop",
    "socketOptions": "socket options are not configurable",
}
_IGNORED_NAMER = {"experimental": "no namer here is experimental"}
_IGNORED_ROUTER = {
    k: "not implemented; the default behaviour applies"
    for k in (
        "bindingCache", "announcers", "maxInitialLineKB", "maxRequestKB", "maxResponseKB",
        "maxChunkKB", "maxErrResponseKB", "streamingEnabled", "compressionLevel", "service",
        "originator", "loggers", "responseClassifier", "failFast", "socketOptions", "experimental",
    )
}  # fmt: skip
_IGNORED_SERVER = {
    "announce": "announcers are not implemented",
    "socketOptions": "socket options are not configurable",
    "engine": "there is one engine",
}
_IGNORED_CLIENT = {
    k: "not configurable; the built-in behaviour applies"
    for k in (
        "loadBalancer", "failureAccrual", "hostConnectionPool", "retries", "requeueBudget",
        "requestAttemptTimeoutMs", "clientSession", "engine", "socketOptions", "forwardClientCert",
        "initialStreamWindowBytes", "headerTableBytes", "maxFrameBytes", "maxHeaderListBytes",
        "windowUpdateRatio", "maxConcurrentStreamsPerConnection",
    )
}  # fmt: skip
_IGNORED_CLIENT_TLS = {"trustCertsBundle": "use trustCerts", "protocols": "TLS versions are not configurable"}

_TCHAR = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 token
_PSEUDO_HEADERS = frozenset({":authority", ":path", ":method", ":scheme"})
# The line breaks YAML recognises (YAML 1.1 §5.4, what PyYAML's reader splits on).
_YAML_LINES = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_MS = 86_400_000  # one day: anything longer in a timeout is a unit mistake
_MAX_BYTES = 1 << 30


class ConfigError(ValueError):
    """A config that cannot be used. `str(e)` is `source:line: key.path: message`, with
    the parts that are unknown left out."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 key: str | None = None, column: int | None = None) -> None:  # fmt: skip
        self.message = message
        self.source = source
        self.line = line
        self.key = key
        self.column = column  # 1-based, of the offending node (`dtabproxy check` prints it)
        where = ":".join(str(p) for p in (source, line) if p is not None)
        parts = [p for p in (where, key) if p]
        super().__init__(": ".join([*parts, message]))


# -- the public API ---------------------------------------------------------------------


def load_file(path: str | os.PathLike[str], *, log_notes: bool = True) -> Config:
    """Read and validate a config file. Relative paths inside it are taken from the
    file's directory. `log_notes=False`: the caller shows `Config.notes` itself."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", source=name) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config is not UTF-8 text: {exc.reason} at byte {exc.start}", source=name
        ) from None
    return load_text(text, source=name, base_dir=os.path.dirname(os.path.abspath(name)), log_notes=log_notes)


def load_text(text: str, source: str = "<string>", base_dir: str | None = None, *, log_notes: bool = True) -> Config:
    """Validate config text. `base_dir` anchors relative paths (default: the current
    directory); `source` names the text in errors."""
    loader = _Loader(text, source, os.path.abspath(base_dir if base_dir is not None else os.getcwd()))
    config = loader.load()
    if os.path.isfile(source):  # a file: watched for changes along with its resources
        st = os.stat(source)
        config = dataclasses.replace(config, inputs=tuple(sorted(((os.path.abspath(source), st.st_mtime_ns, st.st_size), *config.inputs))))
    if log_notes:
        for note in config.notes:
            log.warning("%s", note)
    return config


def default_config() -> Config:
    """The demo configuration shipped in the package (`config/default.yaml`)."""
    ref = resources.files(__package__).joinpath("default.yaml")
    return load_text(ref.read_text(encoding="utf-8"), source="default.yaml")


def to_json(config: Config) -> dict[str, Any]:
    """The effective config (defaults filled in) in the YAML's own key names, for
    `/config.json`. Secrets (the HMAC key) are replaced by `<redacted>`."""
    out: dict[str, Any] = {}
    if config.admin is not None:
        a = config.admin
        out["admin"] = {"ip": a.ip, "port": a.port, "shutdownGraceMs": a.shutdown_grace_ms}
    out["namers"] = [
        {
            "kind": n.kind,
            "prefix": n.prefix.show(),
            "rootDir": n.root_dir,
            "pollIntervalMs": n.poll_interval_ms,
        }
        for n in config.namers
    ]
    out["routers"] = [_router_json(r) for r in config.routers]
    out["telemetry"] = [_telemeter_json(t) for t in config.telemetry]
    return out


def _telemeter_json(t: TelemeterConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": t.kind}
    if t.kind == "io.l5d.otlp":
        out["endpoint"] = t.url
    else:
        m = re.fullmatch(r"http://\[?(.*?)\]?:(\d+)/api/v2/spans", t.url)
        if m is not None:
            out["host"], out["port"] = m.group(1), int(m.group(2))
    out.update({"sampleRate": t.sample_rate, "maxQueueSize": t.max_queue, "maxBatchSize": t.max_batch,
                "flushIntervalMs": t.flush_interval_ms, "timeoutMs": t.timeout_ms})  # fmt: skip
    return out


def _router_json(r: RouterConfig) -> dict[str, Any]:
    o = r.overrides
    trust: dict[str, Any] = {}
    if o.cidrs is not None:
        trust["cidrs"] = [str(c) for c in o.cidrs]
    if o.hmac is not None:
        trust["hmac"] = {"header": o.hmac.header, "key": REDACTED}
    overrides: dict[str, Any] = {"trust": trust, "maxBytes": o.max_bytes, "maxEntries": o.max_entries}
    if o.allow_prefixes is not None:
        overrides["allowPrefixes"] = [p.show() for p in o.allow_prefixes]
    lim = r.limits
    c = r.client
    client: dict[str, Any] = {
        "protocol": c.protocol,
        "connectTimeoutMs": c.connect_timeout_ms,
        "idleTimeoutMs": c.idle_timeout_ms,
        "maxConnections": c.max_connections,
    }
    if c.tls is not None:
        t = c.tls
        client["tls"] = {
            "commonName": t.common_name,
            "trustCerts": list(t.trust_certs),
            "disableValidation": t.disable_validation,
        }
        if t.cert_path is not None:
            client["tls"]["clientAuth"] = {"certPath": t.cert_path, "keyPath": t.key_path}
    return {
        "protocol": r.protocol,
        "label": r.label,
        "dstPrefix": r.dst_prefix.show(),
        "identifier": [_identifier_json(i) for i in r.identifiers],
        "dtab": r.dtab.show(),
        "servers": [_server_json(s) for s in r.servers],
        "client": client,
        "timeoutMs": r.timeout_ms,
        "bindingTimeoutMs": r.binding_timeout_ms,
        "overrides": overrides,
        "limits": {
            "maxHeaderBytes": lim.max_header_bytes,
            "maxHeaders": lim.max_headers,
            "headerReadTimeoutMs": lim.header_read_timeout_ms,
            "idleTimeoutMs": lim.idle_timeout_ms,
            "maxRequestBodyBytes": lim.max_request_body_bytes,
        },
        "addForwarded": r.add_forwarded,
        "addVia": r.add_via,
        "rules": [rule_json(x) for x in r.rules],
        "hashOn": _hash_json(r.hash_on),
        "resources": list(r.resources),
        **_access_log_json(r),
        "tracePropagator": {"kind": r.trace_propagator},
    }  # fmt: skip


def _access_log_json(r: RouterConfig) -> dict[str, Any]:
    a = r.access_log
    if a is None:
        return {}
    k = "httpAccessLog" if r.protocol == "http" else "h2AccessLog"
    return {k: a.path, k + "Format": a.format, k + "RollPolicy": a.roll_policy, k + "Append": a.append,
            k + "RotateCount": a.rotate_count}  # fmt: skip


def _string_match_json(m: StringMatch) -> Any:
    if m.kind == "exact" and not m.invert and not m.ignore_case:
        return m.value
    out: dict[str, Any] = {m.kind: True if m.kind in ("present", "absent") else m.value}
    if m.invert:
        out["invert"] = True
    if m.ignore_case:
        out["ignoreCase"] = True
    return out


def _hash_json(h: HashOn | None) -> dict[str, str] | None:
    if h is None:
        return None
    return {"header": h.header} if h.header is not None else {"cookie": h.cookie or ""}


def _edits_json(e: HeaderEdits) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if e.set:
        out["set"] = dict(e.set)
    if e.add:
        out["add"] = dict(e.add)
    if e.remove:
        out["remove"] = list(e.remove)
    return out


def rule_json(r: RuleConfig) -> dict[str, Any]:
    """A rule in its YAML shape (loading the output gives the same rule back)."""
    out: dict[str, Any] = {"name": r.name}
    if r.group is not None:
        out["group"] = r.group
    if r.source is not None:
        out["source"] = r.source
    blocks = []
    for b in r.match:
        bo: dict[str, Any] = {}
        if b.methods:
            bo["method"] = list(b.methods) if len(b.methods) > 1 else b.methods[0]
        if b.authority is not None:
            bo["authority"] = _string_match_json(b.authority)
        if b.path is not None:
            bo["path"] = _string_match_json(b.path)
        for key, items in (("headers", b.headers), ("cookies", b.cookies), ("query", b.query)):
            if items:
                bo[key] = {n.name: _string_match_json(n.match) for n in items}
        blocks.append(bo)
    if blocks:
        out["match"] = blocks[0] if len(blocks) == 1 else blocks
    if r.service is not None:
        out["service"] = r.service.show()
    if r.dtab.dentries:
        out["dtab"] = r.dtab.show()
    rw: dict[str, Any] = {}
    if r.uri is not None:
        u = r.uri
        rw["uri"] = {"path": u.replacement} if u.kind == "path" else {u.kind: u.match, "replacement": u.replacement}
    if r.authority is not None:
        rw["authority"] = r.authority
    if rw:
        out["rewrite"] = rw
    if r.request_headers:
        out["requestHeaders"] = _edits_json(r.request_headers)
    if r.response_headers:
        out["responseHeaders"] = _edits_json(r.response_headers)
    if r.hash_on is not None:
        out["hashOn"] = _hash_json(r.hash_on)
    return out


def _identifier_json(i: IdentifierConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": i.kind}
    if i.kind in ("io.l5d.header.token", "io.l5d.header"):
        out["header"] = i.header
    elif i.kind == "io.l5d.methodAndHost":
        out["httpUriInDst"] = i.http_uri_in_dst
    elif i.kind == "io.l5d.path":
        out["segments"] = i.segments
        out["consume"] = i.consume
    elif i.kind == "io.l5d.static":
        out["path"] = i.path.show() if i.path is not None else None
    elif i.kind == "io.l5d.header.path":
        out["segments"] = i.segments
    return out


def _server_json(s: ServerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"ip": s.ip, "port": s.port, "clearContext": s.clear_context}
    if s.tls is not None:
        out["tls"] = {
            "certPath": s.tls.cert_path,
            "keyPath": s.tls.key_path,
            "caCertPath": s.tls.ca_cert_path,
            "requireClientAuth": s.tls.require_client_auth,
        }
    if s.max_concurrent_requests is not None:
        out["maxConcurrentRequests"] = s.max_concurrent_requests
    return out


# -- the walker -------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(node: yaml.Node) -> str:
    """How a wrong value is shown in an error: scalars as written, others by kind."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag.endswith(":null"):
        return "null"
    if node.tag.endswith(":str"):
        return repr(node.value)
    return str(node.value)


def _suggest(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for a near miss, compared case-insensitively."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


class _Map:
    """A YAML mapping after key checks: name -> (key node, value node)."""

    __slots__ = ("items", "node", "path")

    def __init__(self, node: yaml.Node, path: str, items: dict[str, tuple[yaml.Node, yaml.Node]]) -> None:
        self.node = node
        self.path = path
        self.items = items

    def get(self, name: str) -> yaml.Node | None:
        """The value node, or None when the key is absent or its value is null."""
        pair = self.items.get(name)
        if pair is None or (isinstance(pair[1], yaml.ScalarNode) and pair[1].tag.endswith(":null")):
            return None
        return pair[1]

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def key(self, name: str) -> str:
        return _join(self.path, name)


class _Loader:
    __slots__ = ("_constructor", "_imported", "_top_resources", "base_dir", "inputs", "notes", "source", "text")

    def __init__(self, text: str, source: str, base_dir: str) -> None:
        self.text = text
        self.source = source
        self.base_dir = base_dir
        self.notes: list[str] = []
        self._constructor = SafeConstructor()
        self.inputs: dict[str, tuple[int, int]] = {}  # resource files read: path -> (mtime_ns, size)
        self._imported: dict[str, tuple[RuleConfig, ...]] = {}  # resource path -> its rules, read once
        self._top_resources: list[tuple[str, yaml.Node, str]] = []

    # -- errors and scalars -------------------------------------------------------------

    def fail(
        self, node: yaml.Node | None, key: str | None, message: str, line: int | None = None
    ) -> NoReturn:
        column = None
        if line is None and node is not None:
            line = node.start_mark.line + 1
            column = node.start_mark.column + 1
        raise ConfigError(message, source=self.source, line=line, key=key or None, column=column)

    def note(self, node: yaml.Node, key: str, message: str) -> None:
        """A key that is accepted but has no effect: kept in `Config.notes`, logged once."""
        self.notes.append(f"{self.source}:{node.start_mark.line + 1}: {key}: {message}")

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return node  # callers check the Python type, so a collection fails their test
        try:
            return self._constructor.construct_object(node)
        except yaml.constructor.ConstructorError as exc:  # e.g. a bad !!timestamp
            self.fail(node, None, f"bad value: {exc.problem}")

    def mapping(self, node: yaml.Node, path: str, known: Iterable[str],
                ignored: Mapping[str, str] | None = None, *, check: bool = True) -> _Map:  # fmt: skip
        """Check a mapping's keys: strings, no duplicates, all known. Ignored keys are
        noted; merge keys (`<<: *anchor`) are applied, own keys winning. `check=False`
        only picks the known keys out (to read `kind` before the kind's keys are known,
        or to look at a mapping a second time)."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, f"expected a mapping, got {_describe(node)}")
        known = frozenset(known)
        ignored = ignored or {}
        items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for k, v in node.value:
            if k.tag == _MERGE_TAG:
                merged.extend(self._merge_pairs(v, path, set()))
                continue
            name = self.scalar(k)
            if not isinstance(name, str):
                self.fail(k, path, f"keys must be strings, got {_describe(k)}")
            if name in items:
                first = items[name][0].start_mark.line + 1
                self.fail(k, path, f"duplicate key '{name}' (first set on line {first})")
            items[name] = (k, v)
        for k, v in merged:
            name = self.scalar(k)
            if isinstance(name, str) and name not in items:
                items[name] = (k, v)
        for name, (k, _) in items.items():
            if name in known or not check:
                continue
            if name in ignored:
                self.note(k, _join(path, name), f"ignored: {ignored[name]}")
                continue
            self.fail(k, path, f"unknown key '{name}'{_suggest(name, known | set(ignored))}")
        return _Map(node, path, {n: kv for n, kv in items.items() if n in known})

    def _merge_pairs(self, node: yaml.Node, path: str, seen: set[int]) -> list[tuple[yaml.Node, yaml.Node]]:
        if id(node) in seen:
            self.fail(node, path, "recursive merge key")
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            # YAML merge: earlier mappings in the list take precedence over later ones.
            pairs = [pair for sub in node.value for pair in self._merge_pairs(sub, path, seen)]
            seen.discard(id(node))
            return pairs
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, f"a merge key ('<<') needs a mapping, got {_describe(node)}")
        own = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
        for k, v in node.value:
            if k.tag == _MERGE_TAG:
                own.extend(self._merge_pairs(v, path, seen))
        seen.discard(id(node))  # `seen` is the current chain: merging one anchor twice is fine
        return own

    def seq(self, m: _Map, name: str, *, single_ok: bool = False) -> list[yaml.Node]:
        node = m.get(name)
        if node is None:
            return []
        if single_ok and isinstance(node, yaml.MappingNode):
            return [node]
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, m.key(name), f"expected a list, got {_describe(node)}")
        return list(node.value)

    def int_(self, m: _Map, name: str, default: int | None, lo: int, hi: int, what: str | None = None) -> Any:
        node = m.get(name)
        if node is None:
            return default
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(node, m.key(name), f"expected {what or f'an integer {lo}-{hi}'}, got {_describe(node)}")
        return value

    def ms(self, m: _Map, name: str, default: int) -> int:
        result: int = self.int_(m, name, default, 1, _MAX_MS, "a duration in milliseconds (1-86400000)")
        return result

    def bool_(self, m: _Map, name: str, default: bool) -> bool:
        node = m.get(name)
        if node is None:
            return default
        value = self.scalar(node)
        if not isinstance(value, bool):
            self.fail(node, m.key(name), f"expected true or false, got {_describe(node)}")
        return value

    def str_(self, m: _Map, name: str, default: str | None = None, *, required: bool = False) -> Any:
        node = m.get(name)
        if node is None:
            if required:
                self.fail(m.node, m.path, f"missing required key '{name}'")
            return default
        value = self.scalar(node)
        if not isinstance(value, str) or not value:
            self.fail(node, m.key(name), f"expected a non-empty string, got {_describe(node)}")
        return value

    def choice(self, m: _Map, name: str, choices: Iterable[str], default: str | None = None, *,
               unsupported: Iterable[str] = (), what: str = "value") -> Any:  # fmt: skip
        choices = tuple(choices)
        value = self.str_(m, name, default, required=default is None)
        if value in choices:
            return value
        node = m.get(name)
        options = ", ".join(choices)
        if value in frozenset(unsupported):
            self.fail(node, m.key(name), f"{what} '{value}' is not supported yet (supported: {options})")
        self.fail(
            node,
            m.key(name),
            f"unknown {what} '{value}'{_suggest(value, choices)} (expected one of: {options})",
        )

    def parsed(self, m: _Map, name: str, parse: Callable[[str], Any], what: str) -> Any:
        """A path or prefix written as a string, read with the dtab grammar."""
        node = m.get(name)
        if node is None:
            return None
        text = self.scalar(node)
        if not isinstance(text, str):
            self.fail(node, m.key(name), f"expected {what} like '/svc', got {_describe(node)}")
        return self.parse_text(node, m.key(name), text, parse, what)

    def parse_text(self, node: yaml.Node, key: str, text: str, parse: Callable[[str], Any], what: str) -> Any:
        try:
            return parse(text)
        except DtabSyntaxError as exc:
            self.fail(node, key, f"invalid {what}: {exc}", line=self._line_at(node, text, exc.offset))

    def file(self, m: _Map, name: str, *, required: bool = False) -> str | None:
        """A file path, made absolute from the config's directory; it must exist."""
        text = self.str_(m, name, required=required)
        if text is None:
            return None
        path = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(text)))
        if not os.path.isfile(path):
            self.fail(m.get(name), m.key(name), f"file '{path}' does not exist")
        return path

    def _line_at(self, node: yaml.Node, value: str, offset: int) -> int:
        """The source line of character `offset` of a scalar's value."""
        start = node.start_mark.line
        if offset >= len(value.rstrip()):  # an "end of input" error: point at the last text
            offset = max(len(value.rstrip()) - 1, 0)
        if getattr(node, "style", None) == "|":
            # A literal block keeps every line break, and its text starts on the line
            # after the `|` header, so the count of breaks is the line offset.
            return start + 2 + value.count("\n", 0, offset)
        if node.end_mark.line == start:
            return start + 1
        return self._align(node, value, offset)

    def _align(self, node: yaml.Node, value: str, offset: int) -> int:
        """Folded (`>`) and multi-line plain scalars join lines with spaces, so find
        each source line's text in the value, in order. Quoted scalars with escapes may
        not align; they get the scalar's first line."""
        start, end = node.start_mark.line, node.end_mark.line
        lines = _YAML_LINES.split(self.text)
        block = getattr(node, "style", None) == ">"
        pos, line = 0, start + 1
        for i in range(start + 1 if block else start, min(end, len(lines) - 1) + 1):
            raw = lines[i]
            if not block and i == end:
                raw = raw[: node.end_mark.column]
            if not block and i == start:
                raw = raw[node.start_mark.column :]
            piece = raw.strip()
            if not piece:
                continue
            at = value.find(piece, pos)
            if at < 0 or value[pos:at].strip():
                return start + 1
            if at > offset:
                break
            line, pos = i + 1, at + len(piece)
        return line

    # -- sections -----------------------------------------------------------------------

    def load(self) -> Config:
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = " ".join(p for p in (exc.context, exc.problem) if p)
            raise ConfigError(f"YAML syntax error: {problem}", source=self.source, line=line) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"YAML error: {exc}", source=self.source) from None
        if root is None:
            raise ConfigError("empty config: expected a mapping with 'routers'", source=self.source)
        m = self.mapping(root, "", ("admin", "namers", "routers", "resources", "telemetry", "tracers"), _IGNORED_ROOT)
        self._top_resources = self.resource_paths(m)
        admin = self.admin(m)
        telemetry = self.telemeters(m, "telemetry") + self.telemeters(m, "tracers")
        namers = tuple(self.namer(n, f"namers[{i}]") for i, n in enumerate(self.seq(m, "namers")))
        self.check_namer_prefixes(namers, self.seq(m, "namers"))
        router_nodes = self.seq(m, "routers")
        if not router_nodes:
            self.fail(m.get("routers") or root, "routers", "at least one router is required")
        routers = tuple(self.router(n, f"routers[{i}]") for i, n in enumerate(router_nodes))
        self.check_labels(routers, router_nodes)
        self.check_addresses(admin, routers, router_nodes)
        return Config(
            admin=admin, namers=namers, routers=routers, source=self.source, notes=tuple(self.notes),
            inputs=tuple((p, mt, size) for p, (mt, size) in sorted(self.inputs.items())), telemetry=telemetry,
        )

    # -- telemetry, tracing and access logs (README "Seeing what it does") ---------------

    def telemeters(self, root: _Map, name: str) -> tuple[TelemeterConfig, ...]:
        """`telemetry: [{kind: ...}]` (and Linkerd 0.x's `tracers`, the same entries)."""
        out = []
        for i, node in enumerate(self.seq(root, name, single_ok=True)):
            path = f"{name}[{i}]"
            kind_m = self.mapping(node, path, ("kind",), check=False)
            kind = self.str_(kind_m, "kind", required=True)
            if kind in _NOTED_TELEMETERS and name == "telemetry":
                self.note(node, path, f"{kind}: accepted, nothing to do: {_NOTED_TELEMETERS[kind]}")
                continue
            kind = self.choice(kind_m, "kind", TELEMETER_KINDS, unsupported=LINKERD_TELEMETERS | set(_NOTED_TELEMETERS),
                               what=f"{name} kind")  # fmt: skip
            batching = ("sampleRate", "maxQueueSize", "maxBatchSize", "flushIntervalMs", "timeoutMs")
            if kind == "io.l5d.otlp":
                m = self.mapping(node, path, ("kind", "endpoint", *batching))
                url = self.http_url(m, "endpoint", "http://127.0.0.1:4318", "/v1/traces")
            else:
                m = self.mapping(node, path, ("kind", "host", "port", *batching))
                host = self.str_(m, "host", "127.0.0.1")
                port = self.int_(m, "port", 9411, 1, 65535, "a port 1-65535")
                url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/api/v2/spans"
            rate = self.scalar(m.get("sampleRate")) if m.has("sampleRate") else 0.001
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
                self.fail(m.get("sampleRate"), m.key("sampleRate"), f"expected a number from 0 to 1, got {_describe(m.get('sampleRate'))}")  # type: ignore[arg-type]
            max_queue: int = self.int_(m, "maxQueueSize", 2048, 1, 1_000_000)
            out.append(TelemeterConfig(
                kind=kind, url=url, sample_rate=float(rate), max_queue=max_queue,
                max_batch=self.int_(m, "maxBatchSize", min(512, max_queue), 1, max_queue, f"an integer 1-{max_queue} (maxQueueSize)"),
                flush_interval_ms=self.ms(m, "flushIntervalMs", 1000), timeout_ms=self.ms(m, "timeoutMs", 10_000),
            ))  # fmt: skip
        return tuple(out)

    def http_url(self, m: _Map, name: str, default: str, default_path: str) -> str:
        text = self.str_(m, name, default)
        match = re.fullmatch(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?(/[^\s?#]*)?", text)
        if match is None or (match.group(2) is not None and not 0 < int(match.group(2)) < 65536):
            what = "https is not supported yet; " if text.startswith("https://") else ""
            self.fail(m.get(name), m.key(name), f"{what}expected a URL like http://collector:4318, got {text!r}")
        path = match.group(3)
        return text if path not in (None, "/") else text.rstrip("/") + default_path

    def access_log(self, m: _Map, protocol: str) -> AccessLogConfig | None:
        """`httpAccessLog` (http routers) or `h2AccessLog` (h2 routers), with the
        `...Format`, `...RollPolicy`, `...Append` and `...RotateCount` keys."""
        mine, other = ("httpAccessLog", "h2AccessLog") if protocol == "http" else ("h2AccessLog", "httpAccessLog")
        for key in m.items:
            if key.startswith(other):
                self.fail(m.get(key), m.key(key), f"{key} is for {'h2' if protocol == 'http' else 'http'} routers; "
                          f"this {protocol} router takes {mine}{key[len(other):]}")  # fmt: skip
        if not m.has(mine):
            for key in m.items:
                if key.startswith(mine):
                    self.fail(m.get(key), m.key(key), f"{key} without {mine} (the log's path)")
            return None
        text = self.str_(m, mine)
        path = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(text)))
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            self.fail(m.get(mine), m.key(mine), f"directory '{parent}' does not exist")
        if os.path.isdir(path):
            self.fail(m.get(mine), m.key(mine), f"'{path}' is a directory; name a file")
        roll = self.str_(m, mine + "RollPolicy", "never")
        if not _ROLL.fullmatch(roll):
            self.fail(m.get(mine + "RollPolicy"), m.key(mine + "RollPolicy"),
                      f"expected never, hourly, daily, weekly or a size like 100.megabytes, got {roll!r}")  # fmt: skip
        return AccessLogConfig(
            path=path,
            format=self.choice(m, mine + "Format", ACCESS_LOG_FORMATS, "combined", what="access log format"),
            roll_policy=roll,
            append=self.bool_(m, mine + "Append", True),
            rotate_count=self.int_(m, mine + "RotateCount", -1, -1, 100_000, "-1 (keep all) or a count 0-100000"),
        )

    def admin(self, root: _Map) -> Admin | None:
        node = root.get("admin")
        if node is None:
            return None if "admin" not in root.items else Admin()
        m = self.mapping(node, "admin", ("ip", "port", "shutdownGraceMs", "tls"), _IGNORED_ADMIN)
        if m.has("tls"):
            self.fail(m.get("tls"), m.key("tls"), "TLS on the admin server is not supported yet")
        return Admin(
            ip=self.ip(m, "ip", "127.0.0.1"),
            port=self.port(m, "port", 9990),
            shutdown_grace_ms=self.ms(m, "shutdownGraceMs", 10_000),
        )

    def ip(self, m: _Map, name: str, default: str) -> str:
        text = self.str_(m, name, default)
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            self.fail(m.get(name), m.key(name), f"expected an IP address like 0.0.0.0 or ::1, got {text!r}")

    def port(self, m: _Map, name: str, default: int) -> int:
        port: int = self.int_(m, name, default, 0, 65535, "an integer 1-65535 (or 0: any free port)")
        return port

    def namer(self, node: yaml.Node, path: str) -> NamerConfig:
        kind_m = self.mapping(node, path, ("kind",), check=False)
        kind = self.choice(kind_m, "kind", NAMER_KINDS, unsupported=LINKERD_NAMERS, what="namer kind")
        m = self.mapping(
            node, path, ("kind", "rootDir", "prefix", "pollIntervalMs", "transformers"), _IGNORED_NAMER
        )
        if m.has("transformers"):
            self.fail(
                m.get("transformers"), m.key("transformers"), "namer transformers are not supported yet"
            )
        prefix = self.parsed(m, "prefix", read_path, "path") or Path.of(kind)
        if not prefix.elems:
            self.fail(m.get("prefix"), m.key("prefix"), "a namer prefix must not be empty")
        if prefix.elems[0] == b"#":
            self.fail(
                m.get("prefix"),
                m.key("prefix"),
                f"write the prefix without '/#' (it is added): {prefix.drop(1).show()}",
            )
        root_text = self.str_(m, "rootDir", required=True)
        root_dir = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(root_text)))
        if not os.path.isdir(root_dir):
            self.fail(m.get("rootDir"), m.key("rootDir"), f"directory '{root_dir}' does not exist")
        poll_ms: int = self.int_(m, "pollIntervalMs", 250, 10, 60_000, "a poll interval 10-60000 ms")
        return NamerConfig(kind=kind, prefix=prefix, root_dir=root_dir, poll_interval_ms=poll_ms)

    def check_namer_prefixes(self, namers: tuple[NamerConfig, ...], nodes: list[yaml.Node]) -> None:
        seen: dict[Path, int] = {}
        for i, n in enumerate(namers):
            if n.prefix in seen:
                self.fail(nodes[i], f"namers[{i}]",
                          f"prefix {n.prefix.show()} is already used by namers[{seen[n.prefix]}]")  # fmt: skip
            seen[n.prefix] = i

    def router(self, node: yaml.Node, path: str) -> RouterConfig:
        known = (
            "protocol", "label", "dstPrefix", "identifier", "dtab", "baseDtab", "servers", "client",
            "timeoutMs", "bindingTimeoutMs", "overrides", "limits", "addForwarded", "addVia",
            "addForwardedHeader", "maxHeadersKB", "interpreter", "rules", "hashOn", "resources",
            "httpAccessLog", "httpAccessLogFormat", "httpAccessLogRollPolicy", "httpAccessLogAppend",
            "httpAccessLogRotateCount", "h2AccessLog", "h2AccessLogFormat", "h2AccessLogRollPolicy",
            "h2AccessLogAppend", "h2AccessLogRotateCount", "tracePropagator",
        )  # fmt: skip
        m = self.mapping(node, path, known, _IGNORED_ROUTER)
        protocol = self.choice(m, "protocol", PROTOCOLS, unsupported=LINKERD_PROTOCOLS, what="protocol")
        label = self.str_(m, "label", protocol)
        dst_prefix = self.parsed(m, "dstPrefix", read_path, "path") or Path.of("svc")
        self.interpreter(m)
        identifier_nodes = self.seq(m, "identifier", single_ok=True)
        if m.has("identifier") and not identifier_nodes:
            self.fail(m.get("identifier"), m.key("identifier"), "an empty identifier list identifies nothing")
        identifiers = tuple(
            self.identifier(n, f"{m.key('identifier')}[{i}]", protocol)
            for i, n in enumerate(identifier_nodes)
        ) or (IdentifierConfig(kind="io.l5d.header.token", header=_token_header(protocol)),)
        dtab_text, dtab = self.dtab(m)
        server_nodes = self.seq(m, "servers")
        servers = tuple(self.server(n, f"{m.key('servers')}[{i}]") for i, n in enumerate(server_nodes))
        if not servers:
            servers = (ServerConfig(port=DEFAULT_PORTS[protocol]),)
        return RouterConfig(
            label=label,
            protocol=protocol,
            dst_prefix=dst_prefix,
            identifiers=identifiers,
            dtab=dtab,
            dtab_text=dtab_text,
            servers=servers,
            client=self.client(m, protocol),
            timeout_ms=self.ms(m, "timeoutMs", 10_000),
            binding_timeout_ms=self.ms(m, "bindingTimeoutMs", 10_000),
            overrides=self.overrides(m),
            limits=self.router_limits(m),
            add_forwarded=self.forwarded(m),
            add_via=self.bool_(m, "addVia", False),
            **self.router_rules(m, protocol),
            access_log=self.access_log(m, protocol),
            trace_propagator=self.trace_propagator(m),
        )

    def trace_propagator(self, m: _Map) -> str:
        node = m.get("tracePropagator")
        if node is None:
            return "io.l5d.default"
        p = self.mapping(node, m.key("tracePropagator"), ("kind",))
        kind: str = self.choice(p, "kind", TRACE_PROPAGATORS, what="trace propagator")
        return kind

    # -- rules and resources (docs/rules.md) ---------------------------------------------

    def router_rules(self, m: _Map, protocol: str) -> dict[str, Any]:
        """`rules`, `hashOn` and `resources` of a router: its own rules first, then the
        rules imported from the top-level resources, then from its own."""
        rules = [self.rule(n, f"{m.key('rules')}[{i}]") for i, n in enumerate(self.seq(m, "rules"))]
        own = self.resource_paths(m)
        imported: list[RuleConfig] = []
        for path, node, key in (*self._top_resources, *own):
            imported.extend(self.imported_rules(path, node, key))
        # Unconditional entries (weighted splits, default routes) first, so a
        # resource's conditional rules are appended after them and win (spec §10).
        # A group keeps its order: only its first matching rule applies.
        imported.sort(key=lambda r: bool(r.match) or r.group is not None)
        rules.extend(imported)
        self.check_rule_names(rules, m)
        hash_node = m.get("hashOn")
        return {
            "rules": tuple(rules),
            "hash_on": self.hash_on(hash_node, m.key("hashOn")) if hash_node is not None else None,
            "resources": tuple(p for p, _, _ in (*self._top_resources, *own)),
        }

    def check_rule_names(self, rules: list[RuleConfig], m: _Map) -> None:
        seen: set[str] = set()
        nodes = self.seq(m, "rules")
        for i, r in enumerate(rules):
            if r.name in seen:
                where = nodes[i] if i < len(nodes) else m.get("resources") or m.node
                self.fail(where, f"{m.key('rules')}[{i}]" if i < len(nodes) else m.key("resources"),
                          f"rule name '{r.name}' is used twice (names label metrics and logs)")  # fmt: skip
            seen.add(r.name)

    def rule(self, node: yaml.Node, path: str, *, default_name: str | None = None) -> RuleConfig:
        known = ("name", "group", "match", "dtab", "rewrite", "requestHeaders", "responseHeaders", "hashOn", "source",
                 "service")  # fmt: skip
        m = self.mapping(node, path, known)
        name = self.str_(m, "name", default_name or path)
        blocks: list[MatchBlock] = []
        match_node = m.get("match")
        if match_node is not None:
            if isinstance(match_node, yaml.SequenceNode):
                if not match_node.value:
                    self.fail(match_node, m.key("match"), "an empty match list matches nothing; omit 'match' to match every request")
                blocks = [self.match_block(n, f"{m.key('match')}[{i}]") for i, n in enumerate(match_node.value)]
            else:
                blocks = [self.match_block(match_node, m.key("match"))]
        dtab = Dtab.EMPTY
        dtab_node = m.get("dtab")
        if dtab_node is not None:
            text = self.scalar(dtab_node)
            if not isinstance(text, str):
                self.fail(dtab_node, m.key("dtab"), f"expected a dtab string like '/svc/web => /svc/web-v2;', got {_describe(dtab_node)}")
            dtab = self.parse_text(dtab_node, m.key("dtab"), text, read_dtab, "dtab")
        uri = None
        authority = None
        rw = m.get("rewrite")
        if rw is not None:
            r = self.mapping(rw, m.key("rewrite"), ("uri", "authority"))
            if r.has("uri"):
                uri = self.uri_rewrite(r.get("uri"), r.key("uri"))  # type: ignore[arg-type]
            authority = self.str_(r, "authority")
        req = self.header_edits(m.get("requestHeaders"), m.key("requestHeaders"))
        resp = self.header_edits(m.get("responseHeaders"), m.key("responseHeaders"))
        hash_node = m.get("hashOn")
        hash_on = self.hash_on(hash_node, m.key("hashOn")) if hash_node is not None else None
        service = self.parsed(m, "service", read_path, "path")
        if service is not None and not service.elems:
            self.fail(m.get("service"), m.key("service"), "a service name must not be the empty path")
        if not dtab.dentries and uri is None and authority is None and not req and not resp and hash_on is None and service is None:
            self.fail(node, path, "a rule needs 'dtab', 'service', 'rewrite', 'requestHeaders', 'responseHeaders' or 'hashOn' (it does nothing)")
        return RuleConfig(
            name=name, match=tuple(blocks), dtab=dtab, group=self.str_(m, "group"), uri=uri,
            authority=authority, request_headers=req, response_headers=resp, hash_on=hash_on,
            source=self.str_(m, "source"), service=service,
        )  # fmt: skip

    def match_block(self, node: yaml.Node, path: str) -> MatchBlock:
        m = self.mapping(node, path, ("method", "path", "authority", "headers", "cookies", "query"))
        methods: list[str] = []
        mnode = m.get("method")
        if mnode is not None:
            items = mnode.value if isinstance(mnode, yaml.SequenceNode) else [mnode]
            for i, n in enumerate(items):
                v = self.scalar(n)
                key = m.key("method") + (f"[{i}]" if isinstance(mnode, yaml.SequenceNode) else "")
                if not isinstance(v, str) or not _TCHAR.fullmatch(v):
                    self.fail(n, key, f"expected an HTTP method like GET, got {_describe(n)}")
                methods.append(v.upper())
        block = MatchBlock(
            headers=self.named_matches(m, "headers", header=True),
            cookies=self.named_matches(m, "cookies"),
            query=self.named_matches(m, "query"),
            methods=tuple(methods),
            path=self.string_match(m.get("path"), m.key("path"), path_kinds=True) if m.has("path") else None,
            authority=self.string_match(m.get("authority"), m.key("authority")) if m.has("authority") else None,
        )
        if block.path is not None and block.path.kind not in ("regex", "present", "absent") and not block.path.value.startswith("/"):
            self.fail(m.get("path"), m.key("path"), f"a path starts with '/', got {block.path.value!r}")
        if block.path is not None and block.path.kind in ("present", "absent"):
            self.fail(m.get("path"), m.key("path"), "every request has a path; use exact, prefix, segmentPrefix or regex")
        return block

    def named_matches(self, m: _Map, name: str, *, header: bool = False) -> tuple[NamedMatch, ...]:
        node = m.get(name)
        if node is None:
            return ()
        nm = self.mapping(node, m.key(name), (), check=False)
        out = []
        for k, v in node.value:
            key_text = self.scalar(k)
            if not isinstance(key_text, str) or not key_text:
                self.fail(k, m.key(name), f"expected a {name[:-1]} name, got {_describe(k)}")
            if header:
                key_text = key_text.lower()  # field names are case-insensitive (RFC 9110 §5.1)
                if not (_TCHAR.fullmatch(key_text) or key_text in _PSEUDO_HEADERS):
                    self.fail(k, nm.key(key_text), f"expected a header name, got {key_text!r}")
            out.append(NamedMatch(key_text, self.string_match(v, _join(m.key(name), key_text))))
        return tuple(out)

    def string_match(self, node: yaml.Node | None, key: str, *, path_kinds: bool = False) -> StringMatch:
        assert node is not None
        kinds = ("exact", "prefix", "regex", "present", "absent") + (("segmentPrefix",) if path_kinds else ())
        if isinstance(node, yaml.ScalarNode):
            v = self.scalar(node)
            if isinstance(v, bool) or v is None or not isinstance(v, str | int | float):
                self.fail(node, key, f"expected a string to match exactly or a mapping like {{prefix: ...}}, got {_describe(node)}")
            return StringMatch("exact", node.value)
        m = self.mapping(node, key, (*kinds, "invert", "ignoreCase"))
        given = [k for k in kinds if m.has(k)]
        if len(given) != 1:
            self.fail(node, key, f"set exactly one of {', '.join(kinds)}")
        kind = given[0]
        invert = self.bool_(m, "invert", False)
        ignore_case = self.bool_(m, "ignoreCase", False)
        if kind in ("present", "absent"):
            flag = self.bool_(m, kind, True)
            return StringMatch(kind if flag else ("absent" if kind == "present" else "present"), "", invert)
        vnode = m.get(kind)
        assert vnode is not None
        value = self.scalar(vnode)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(vnode, m.key(kind), f"expected a string, got {_describe(vnode)}")
        text = vnode.value
        if kind == "regex":
            self.regex(vnode, m.key(kind), text)
        return StringMatch(kind, text, invert, ignore_case)

    def regex(self, node: yaml.Node, key: str, text: str) -> None:
        try:
            re.compile(text.encode("latin-1"))
        except UnicodeEncodeError:
            self.fail(node, key, "a regex here matches header bytes: write non-Latin-1 characters as escapes")
        except re.error as exc:
            self.fail(node, key, f"invalid regex {text!r}: {exc}")

    def uri_rewrite(self, node: yaml.Node, key: str) -> UriRewrite:
        m = self.mapping(node, key, ("prefix", "regex", "path", "replacement"))
        given = [k for k in ("prefix", "regex", "path") if m.has(k)]
        if len(given) != 1:
            self.fail(node, key, "set exactly one of prefix (with replacement), regex (with replacement), path")
        kind = given[0]
        value = self.str_(m, kind)
        if kind == "path":
            if m.has("replacement"):
                self.fail(m.get("replacement"), m.key("replacement"), "'path' replaces the whole path; 'replacement' is for prefix and regex")
            if not value.startswith("/"):
                self.fail(m.get("path"), m.key("path"), f"a path starts with '/', got {value!r}")
            return UriRewrite("path", "", value)
        rnode = m.get("replacement")
        if rnode is None or not isinstance(self.scalar(rnode), str):
            self.fail(rnode or node, m.key("replacement"), f"a {kind} rewrite needs 'replacement' (a string)")
        if kind == "regex":
            self.regex(m.get("regex"), m.key("regex"), value)  # type: ignore[arg-type]
        elif not value.startswith("/"):
            self.fail(m.get("prefix"), m.key("prefix"), f"a path prefix starts with '/', got {value!r}")
        return UriRewrite(kind, value, rnode.value)

    def header_edits(self, node: yaml.Node | None, key: str) -> HeaderEdits:
        if node is None:
            return HeaderEdits()
        m = self.mapping(node, key, ("set", "add", "remove"))
        pairs: dict[str, tuple[tuple[str, str], ...]] = {}
        for op in ("set", "add"):
            n = m.get(op)
            out: list[tuple[str, str]] = []
            if n is not None:
                self.mapping(n, m.key(op), (), check=False)
                for k, v in n.value:
                    name, value = self.scalar(k), self.scalar(v)
                    if not isinstance(name, str) or not _TCHAR.fullmatch(name):
                        self.fail(k, m.key(op), f"expected a header name, got {_describe(k)}")
                    if not isinstance(v, yaml.ScalarNode) or value is None or isinstance(value, bool):
                        self.fail(v, _join(m.key(op), name), f"expected a header value (a string), got {_describe(v)}")
                    if any(c in v.value for c in "\r\n\x00"):
                        self.fail(v, _join(m.key(op), name), "a header value cannot hold CR, LF or NUL")
                    out.append((name.lower(), v.value))
            pairs[op] = tuple(out)
        removed: list[str] = []
        for i, n in enumerate(self.seq(m, "remove")):
            v = self.scalar(n)
            if not isinstance(v, str) or not _TCHAR.fullmatch(v):
                self.fail(n, f"{m.key('remove')}[{i}]", f"expected a header name, got {_describe(n)}")
            removed.append(v.lower())
        return HeaderEdits(set=pairs["set"], add=pairs["add"], remove=tuple(removed))

    def hash_on(self, node: yaml.Node, key: str) -> HashOn:
        m = self.mapping(node, key, ("header", "cookie"))
        if m.has("header") == m.has("cookie"):
            self.fail(node, key, "set exactly one of 'header' and 'cookie'")
        if m.has("header"):
            return HashOn(header=self.header(m, "header", "host"))
        return HashOn(cookie=self.str_(m, "cookie"))

    def resource_paths(self, m: _Map) -> list[tuple[str, yaml.Node, str]]:
        """`resources`: a directory (or file) of Kubernetes routing resources, or a list."""
        node = m.get("resources")
        if node is None:
            return []
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out = []
        for i, n in enumerate(items):
            key = m.key("resources") + (f"[{i}]" if isinstance(node, yaml.SequenceNode) else "")
            text = self.scalar(n)
            if not isinstance(text, str) or not text:
                self.fail(n, key, f"expected a directory of SMI/Istio/Gateway API resources, got {_describe(n)}")
            path = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(text)))
            if not os.path.exists(path):
                self.fail(n, key, f"'{path}' does not exist")
            out.append((path, n, key))
        return out

    def imported_rules(self, path: str, node: yaml.Node, key: str) -> tuple[RuleConfig, ...]:
        """The rules of a resources path, through the same importer as `dtabproxy
        import`, validated as if written in the config. Read once per load."""
        hit = self._imported.get(path)
        if hit is not None:
            return hit
        from .importers.common import ResourceError, import_paths

        try:
            result = import_paths([path])
        except ResourceError as exc:
            self.fail(node, key, str(exc))
        for f, st in result.inputs.items():
            self.inputs[f] = st
        for item in result.untranslated:
            self.note(node, key, f"not translated: {item}")
        rules: list[RuleConfig] = []
        for i, rd in enumerate(result.as_rules()):
            text = yaml.safe_dump(rd, sort_keys=False)
            sub = _Loader(text, f"{rd.get('source', path)} (imported)", self.base_dir)
            doc = yaml.compose(text, Loader=yaml.SafeLoader)
            assert doc is not None  # safe_dump of a mapping
            try:
                rules.append(sub.rule(doc, f"{key}[{i}]"))
            except ConfigError as exc:
                self.fail(node, key, f"cannot use {rd.get('source', path)}: {exc.message}")
        out = self._imported[path] = tuple(rules)
        return out

    def dtab(self, router: _Map) -> tuple[str, Dtab]:
        name = "dtab"
        if router.has("baseDtab"):  # Linkerd 0.x's name for `dtab`
            if router.has("dtab"):
                self.fail(
                    router.get("baseDtab"), router.key("baseDtab"), "set 'dtab' or 'baseDtab', not both"
                )
            name = "baseDtab"
        node = router.get(name)
        if node is None:
            return "", Dtab.EMPTY
        text = self.scalar(node)
        if not isinstance(text, str):
            self.fail(
                node,
                router.key(name),
                f"expected a dtab string like '/svc => /#/io.l5d.fs;', got {_describe(node)}",
            )
        dtab: Dtab = self.parse_text(node, router.key(name), text, read_dtab, "dtab")
        return text, dtab

    def forwarded(self, router: _Map) -> bool:
        node = router.get("addForwardedHeader")
        if node is None:
            return self.bool_(router, "addForwarded", False)
        # Linkerd's form turns the header on; its `by`/`for` choices are fixed here.
        key = router.key("addForwardedHeader")
        if router.has("addForwarded"):
            self.fail(node, key, "set 'addForwarded' or 'addForwardedHeader', not both")
        self.mapping(node, key, ("by", "for"))
        self.note(
            node,
            key,
            "'by' and 'for' are not configurable; Forwarded gets for=<client ip> and by=<server ip>",
        )
        return True

    def router_limits(self, router: _Map) -> Limits:
        limits = self.limits(router)
        node = router.get("maxHeadersKB")
        if node is None:
            return limits
        # Linkerd's limit on the request head, in KiB.
        kb: int = self.int_(router, "maxHeadersKB", None, 1, 1024, "an integer 1-1024 (KiB)")
        own = router.get("limits")
        if own is not None and self.mapping(own, "", _LIMIT_KEYS, check=False).has("maxHeaderBytes"):
            self.fail(
                node, router.key("maxHeadersKB"), "set 'maxHeadersKB' or 'limits.maxHeaderBytes', not both"
            )
        return dataclasses.replace(limits, max_header_bytes=kb * 1024)

    def interpreter(self, router: _Map) -> None:
        """Only Linkerd's default interpreter (the router's own dtab and namers)."""
        node = router.get("interpreter")
        if node is None:
            return
        path = router.key("interpreter")
        kind_m = self.mapping(node, path, ("kind",), check=False)
        self.choice(kind_m, "kind", ("default",), unsupported=("io.l5d.namerd", "io.l5d.namerd.http", "io.l5d.mesh"),
                    what="interpreter")  # fmt: skip
        m = self.mapping(node, path, ("kind", "transformers"))
        if m.has("transformers"):
            self.fail(
                m.get("transformers"), m.key("transformers"), "interpreter transformers are not supported yet"
            )

    def identifier(self, node: yaml.Node, path: str, protocol: str) -> IdentifierConfig:
        kind_m = self.mapping(node, path, ("kind",), check=False)
        kind = self.choice(
            kind_m, "kind", IDENTIFIER_KINDS, unsupported=LINKERD_IDENTIFIERS, what="identifier kind"
        )
        if protocol not in IDENTIFIER_KINDS[kind]:
            self.fail(
                kind_m.get("kind"),
                kind_m.key("kind"),
                f"identifier {kind} does not apply to {protocol} routers",
            )
        if kind == "io.l5d.header.token":
            m = self.mapping(node, path, ("kind", "header"))
            return IdentifierConfig(kind, header=self.header(m, "header", _token_header(protocol)))
        if kind == "io.l5d.header":
            m = self.mapping(node, path, ("kind", "header"))
            return IdentifierConfig(kind, header=self.header(m, "header", "l5d-name"))
        if kind == "io.l5d.methodAndHost":
            m = self.mapping(node, path, ("kind", "httpUriInDst"))
            return IdentifierConfig(kind, http_uri_in_dst=self.bool_(m, "httpUriInDst", False))
        if kind == "io.l5d.path":
            m = self.mapping(node, path, ("kind", "segments", "consume"))
            segments = self.int_(m, "segments", 1, 1, 1000, "a segment count 1-1000")
            return IdentifierConfig(kind, segments=segments, consume=self.bool_(m, "consume", False))
        if kind == "io.l5d.static":
            m = self.mapping(node, path, ("kind", "path"))
            if not m.has("path"):
                self.fail(
                    node, path, "missing required key 'path' (the name every request gets, like /svc/web)"
                )
            return IdentifierConfig(kind, path=self.parsed(m, "path", read_path, "path"))
        m = self.mapping(node, path, ("kind", "segments"))  # io.l5d.header.path
        return IdentifierConfig(
            kind, segments=self.int_(m, "segments", None, 1, 1000, "a segment count 1-1000")
        )

    def header(self, m: _Map, name: str, default: str) -> str:
        text: str = self.str_(m, name, default)
        lower = text.lower()
        if not (_TCHAR.fullmatch(lower) or lower in _PSEUDO_HEADERS):
            self.fail(m.get(name), m.key(name), f"expected a header name, got {text!r}")
        return lower

    def server(self, node: yaml.Node, path: str) -> ServerConfig:
        m = self.mapping(
            node, path, ("ip", "port", "clearContext", "tls", "maxConcurrentRequests"), _IGNORED_SERVER
        )
        tls = None
        tls_node = m.get("tls")
        if tls_node is not None:
            t = self.mapping(tls_node, m.key("tls"), ("certPath", "keyPath", "caCertPath", "requireClientAuth"),
                             {"ciphers": "cipher suites are not configurable", "protocols": "TLS versions are not configurable"})  # fmt: skip
            require = self.bool_(t, "requireClientAuth", False)
            ca = self.file(t, "caCertPath")
            if require and ca is None:
                self.fail(
                    tls_node,
                    t.path,
                    "requireClientAuth needs caCertPath (the CA that signs client certificates)",
                )
            tls = ServerTls(
                cert_path=self.file(t, "certPath", required=True) or "",
                key_path=self.file(t, "keyPath", required=True) or "",
                ca_cert_path=ca,
                require_client_auth=require,
            )
        return ServerConfig(
            ip=self.ip(m, "ip", "127.0.0.1"),
            port=self.port(m, "port", 4140),
            clear_context=self.bool_(m, "clearContext", False),
            tls=tls,
            max_concurrent_requests=self.int_(m, "maxConcurrentRequests", None, 1, 1_000_000),
        )

    def client(self, router: _Map, protocol: str) -> ClientConfig:
        node = router.get("client")
        if node is None:
            return ClientConfig(protocol=protocol)
        path = router.key("client")
        known = ("kind", "protocol", "tls", "connectTimeoutMs", "idleTimeoutMs", "maxConnections")
        kind_m = self.mapping(node, path, ("kind",), check=False)
        if kind_m.has(
            "kind"
        ):  # Linkerd: io.l5d.global is the flat form; io.l5d.static has per-prefix configs
            self.choice(
                kind_m, "kind", ("io.l5d.global",), unsupported=("io.l5d.static",), what="client kind"
            )
        m = self.mapping(node, path, known, _IGNORED_CLIENT)
        tls = None
        tls_node = m.get("tls")
        if tls_node is not None:
            t = self.mapping(tls_node, m.key("tls"), ("commonName", "trustCerts", "disableValidation", "clientAuth"),
                             _IGNORED_CLIENT_TLS)  # fmt: skip
            trust: list[str] = []
            for i, cert in enumerate(self.seq(t, "trustCerts")):
                holder = _Map(t.node, t.path, {f"trustCerts[{i}]": (cert, cert)})
                trust.append(self.file(holder, f"trustCerts[{i}]") or "")
            cert_path = key_path = None
            auth_node = t.get("clientAuth")
            if auth_node is not None:
                a = self.mapping(auth_node, t.key("clientAuth"), ("certPath", "keyPath"))
                cert_path = self.file(a, "certPath", required=True)
                key_path = self.file(a, "keyPath", required=True)
            tls = ClientTls(
                common_name=self.str_(t, "commonName"),
                trust_certs=tuple(trust),
                disable_validation=self.bool_(t, "disableValidation", False),
                cert_path=cert_path,
                key_path=key_path,
            )
        return ClientConfig(
            protocol=self.choice(m, "protocol", PROTOCOLS, protocol, what="protocol"),
            tls=tls,
            connect_timeout_ms=self.ms(m, "connectTimeoutMs", 1_000),
            idle_timeout_ms=self.ms(m, "idleTimeoutMs", 10_000),
            max_connections=self.int_(m, "maxConnections", None, 1, 1_000_000),
        )

    def overrides(self, router: _Map) -> OverrideConfig:
        node = router.get("overrides")
        if node is None:
            return OverrideConfig()
        m = self.mapping(node, router.key("overrides"), ("trust", "maxBytes", "maxEntries", "allowPrefixes"))
        cidrs: tuple[IPNetwork, ...] | None = None
        hmac = None
        trust_node = m.get("trust")
        if trust_node is not None:
            t = self.mapping(trust_node, m.key("trust"), ("cidrs", "hmac"))
            if "cidrs" in t.items:  # an explicit empty list trusts no address
                cidrs = tuple(
                    self.cidr(n, f"{t.key('cidrs')}[{i}]") for i, n in enumerate(self.seq(t, "cidrs"))
                )
            hmac_node = t.get("hmac")
            if hmac_node is not None:
                hmac = self.hmac(self.mapping(hmac_node, t.key("hmac"), ("header", "key", "keyFile")))
        allow = None
        if "allowPrefixes" in m.items:
            allow_list = []
            for i, n in enumerate(self.seq(m, "allowPrefixes")):
                holder = _Map(m.node, m.path, {f"allowPrefixes[{i}]": (n, n)})
                allow_list.append(self.parsed(holder, f"allowPrefixes[{i}]", read_prefix, "prefix"))
            allow = tuple(allow_list)
        return OverrideConfig(
            cidrs=cidrs,
            hmac=hmac,
            max_bytes=self.int_(m, "maxBytes", 4096, 1, 1 << 20, "a size 1-1048576 (bytes)"),
            max_entries=self.int_(m, "maxEntries", 32, 1, 10_000, "an entry count 1-10000"),
            allow_prefixes=allow,
        )

    def cidr(self, node: yaml.Node, key: str) -> IPNetwork:
        text = self.scalar(node)
        if not isinstance(text, str):
            self.fail(node, key, f"expected a CIDR like 10.0.0.0/8, got {_describe(node)}")
        try:
            return ipaddress.ip_network(text)
        except ValueError as exc:
            hint = ""
            try:
                hint = f" (did you mean {ipaddress.ip_network(text, strict=False)}?)"
            except ValueError:
                pass
            self.fail(node, key, f"invalid CIDR {text!r}: {exc}{hint}")

    def hmac(self, m: _Map) -> HmacConfig:
        header = self.header(m, "header", "l5d-dtab-sig")
        if m.has("key") == m.has("keyFile"):
            self.fail(m.node, m.path, "set exactly one of 'key' and 'keyFile'")
        if m.has("key"):
            key = self.str_(m, "key").encode()
            where = m.get("key")
        else:
            path = self.file(m, "keyFile") or ""
            where = m.get("keyFile")
            try:
                with open(path, "rb") as f:
                    key = f.read().rstrip(b"\r\n")  # secret files usually end in a newline
            except OSError as exc:
                self.fail(where, m.key("keyFile"), f"cannot read '{path}': {exc.strerror}")
        if len(key) < MIN_HMAC_KEY_BYTES:
            self.fail(where, m.key("key" if m.has("key") else "keyFile"),
                      f"the HMAC key is {len(key)} bytes; use at least {MIN_HMAC_KEY_BYTES}")  # fmt: skip
        return HmacConfig(header=header, key=key)

    def limits(self, router: _Map) -> Limits:
        node = router.get("limits")
        if node is None:
            return Limits()
        m = self.mapping(node, router.key("limits"), _LIMIT_KEYS)
        # 1 KiB floor: a request line and a Host header must fit.
        return Limits(
            max_header_bytes=self.int_(
                m, "maxHeaderBytes", 65_536, 1024, 1 << 24, "a size 1024-16777216 (bytes)"
            ),
            max_headers=self.int_(m, "maxHeaders", 100, 1, 10_000, "a header count 1-10000"),
            header_read_timeout_ms=self.ms(m, "headerReadTimeoutMs", 10_000),
            idle_timeout_ms=self.ms(m, "idleTimeoutMs", 60_000),
            max_request_body_bytes=self.int_(
                m, "maxRequestBodyBytes", None, 0, _MAX_BYTES * 64, "a size in bytes, or null for no limit"
            ),  # fmt: skip
        )

    # -- whole-config checks ------------------------------------------------------------

    def check_labels(self, routers: tuple[RouterConfig, ...], nodes: list[yaml.Node]) -> None:
        seen: dict[str, int] = {}
        for i, r in enumerate(routers):
            if r.label in seen:
                m = self.mapping(nodes[i], "", ("label",), check=False)
                where = m.get("label") or nodes[i]
                hint = "" if m.has("label") else " (set a distinct 'label')"
                self.fail(
                    where,
                    f"routers[{i}]",
                    f"router label '{r.label}' is already used by routers[{seen[r.label]}]{hint}",
                )
            seen[r.label] = i

    def check_addresses(
        self, admin: Admin | None, routers: tuple[RouterConfig, ...], router_nodes: list[yaml.Node]
    ) -> None:
        """No two listeners on one address. Port 0 never clashes (the OS picks). A
        wildcard address clashes with every address of its family on the same port,
        and `::` with IPv4 too (a dual-stack socket), because with SO_REUSEPORT both
        binds could succeed and traffic would be split silently."""
        taken: list[tuple[str, int, str]] = []
        if admin is not None:
            taken.append((admin.ip, admin.port, "admin"))
        for i, r in enumerate(routers):
            server_nodes = self.seq(self.mapping(router_nodes[i], "", ("servers",), check=False), "servers")
            for j, s in enumerate(r.servers):
                key = f"routers[{i}].servers[{j}]"
                configured = j < len(server_nodes)
                for ip, port, other in taken:
                    if s.port and port == s.port and _overlaps(ip, s.ip):
                        node = server_nodes[j] if configured else router_nodes[i]
                        self.fail(node, key, f"{s.ip}:{s.port} is already used by {other}")
                taken.append((s.ip, s.port, key if configured else f"{key} (the default server)"))


_LIMIT_KEYS = ("maxHeaderBytes", "maxHeaders", "headerReadTimeoutMs", "idleTimeoutMs", "maxRequestBodyBytes")


def _token_header(protocol: str) -> str:
    # HTTP/2 carries the host in `:authority` (RFC 9113 §8.3.1), where Linkerd's h2
    # router reads it too.
    return ":authority" if protocol == "h2" else "host"


def _overlaps(a: str, b: str) -> bool:
    if a == b:
        return True
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    for x, y in ((ia, ib), (ib, ia)):
        if x.is_unspecified and (x.version == y.version or x.version == 6):
            return True
    return False
