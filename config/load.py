"""YAML text -> a validated `Config`, with errors that name the file, line and key path.

The YAML is read with PyYAML's composer (`SafeLoader` nodes, never objects), so every
value keeps the line it was written on and an error can say
`config.yaml:12: routers[0].servers[1].port: expected an integer 1-65535, got 'abc'`.
A router section written for Linkerd 1 loads unchanged: its keys mean the same here,
and the Linkerd keys we cannot honour yet are either refused with a clear error (when
ignoring them would change where traffic goes or who may reach it) or accepted with a
logged note (tuning knobs such as `clientSession`, and the `telemetry`/`usage` blocks).

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

from .policy import (
    ACCRUAL_KINDS,
    BACKOFF_KINDS,
    BALANCER_KINDS,
    CLASSIFIERS,
    DEFAULT_ACCRUAL_BACKOFF,
    H2_CLASSIFIERS,
    HTTP_CLASSIFIERS,
    MATCH_ALL,
    BackoffConfig,
    ClassifierConfig,
    FailureAccrualConfig,
    HostConnectionPool,
    LoadBalancerConfig,
    PathMatcher,
    PrefixConfig,
    PrefixError,
    RetryBudgetConfig,
    RetryBufferSize,
    ServiceConfig,
    client_policy_json,
    service_json,
)
from .schema import (
    IDENTIFIER_KINDS,
    AccessLogConfig,
    Admin,
    AdminAuth,
    ClientConfig,
    ClientTls,
    Config,
    DtabStoreConfig,
    HashOn,
    HeaderEdits,
    HmacConfig,
    IdentifierConfig,
    IPNetwork,
    K8sApiConfig,
    K8sResourcesConfig,
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
    TransformerConfig,
    UriRewrite,
)

log = logging.getLogger(__name__)

PROTOCOLS = ("http", "h2")
# Linkerd's default listener ports when a router lists no servers.
DEFAULT_PORTS = {"http": 4140, "h2": 4142}
NAMER_KINDS = ("io.l5d.fs", "io.l5d.k8s")
TRANSFORMER_KINDS = ("io.l5d.k8s.daemonset", "io.l5d.k8s.localnode")
# Linkerd 1's other transformers: refused by name.
LINKERD_TRANSFORMERS = frozenset(
    {"io.l5d.localhost", "io.l5d.specificHost", "io.l5d.port", "io.l5d.replace", "io.l5d.const",
     "io.l5d.subnet.local", "io.l5d.subnet.gateway"}
)  # fmt: skip
# Kubernetes names (API conventions): DNS-1123 labels (namespaces) and subdomains
# (object names), and label keys (an optional DNS-subdomain prefix and a name).
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_KEY = re.compile(
    r"(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z"
)
# Linkerd 1 plugin kinds we know by name but do not implement yet: refused with a clear
# "not supported yet" rather than a "did you mean".
LINKERD_NAMERS = frozenset(
    {
        "io.l5d.k8s.external", "io.l5d.k8s.ns", "io.l5d.consul", "io.l5d.marathon",
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
# The admin bearer token: RFC 6750 §2.1's b64token (what an Authorization header can
# carry), at least as long as an HMAC key for the same reason.
MIN_ADMIN_TOKEN_BYTES = 16
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def admin_token_problem(token: bytes) -> str | None:
    """Why `token` cannot be the admin's bearer token, or None when it can."""
    if len(token) < MIN_ADMIN_TOKEN_BYTES:
        return f"the token is {len(token)} bytes; use at least {MIN_ADMIN_TOKEN_BYTES}"
    if not _B64TOKEN.fullmatch(token):
        return "the token must be a bearer token: letters, digits and - . _ ~ + / (then = padding)"
    return None


def read_token_file(path: str) -> bytes:
    """A token file's content without the line break(s) secret files usually end in.
    Raises OSError."""
    with open(path, "rb") as f:
        return f.read().strip(b"\r\n")

# Keys Linkerd accepts that have no effect here. They are accepted, so a Linkerd config
# loads, and each occurrence is logged once and kept in `Config.notes`.
_IGNORED_ROOT: dict[str, str] = {
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
_IGNORED_NAMER = {"experimental": "no namer here is experimental"}
_IGNORED_ROUTER = {
    k: "not implemented; the default behaviour applies"
    for k in (
        "loggers", "experimental",
    )
}  # fmt: skip
_IGNORED_CLIENT: dict[str, str] = {}  # every client key is implemented or refused
# The client block's keys (config/policy.py): those that hold for the whole router, and
# those that may differ per client (per prefix of the bound id with io.l5d.static).
_CLIENT_ROUTER_KEYS = ("kind", "protocol", "tls", "connectTimeoutMs", "idleTimeoutMs", "maxConnections")
_CLIENT_POLICY_KEYS = ("loadBalancer", "failureAccrual", "requestAttemptTimeoutMs", "hostConnectionPool", "requeueBudget")
_SERVICE_KEYS = ("totalTimeoutMs", "retries", "responseClassifier", "retryBufferSize", "classificationTimeoutMs")

# Linkerd keys that would change routing, safety or resource use and that we do not
# implement: refused with the file, line and key, and what to do instead (never a note).
_SOCKET_OPTIONS = (
    "socket options are fixed (TCP_NODELAY on; SO_REUSEPORT only between workers); "
    "for read timeouts use limits.idleTimeoutMs and limits.headerReadTimeoutMs"
)
_ANNOUNCE = "announcing to service discovery is not supported; register the proxy's address with your discovery system"
_ENGINE = "there is one engine (asyncio with uvloop); remove the key"
_REFUSED_ADMIN = {
    "workerThreads": "the admin server runs on the main process's event loop; remove the key",
    "socketOptions": _SOCKET_OPTIONS,
}
_REFUSED_ROUTER = {
    "maxResponseKB": "responses are streamed, never buffered whole, and their size is not limited; remove the key",
    "maxChunkKB": "bodies are streamed as they arrive, so a chunk is never buffered whole; "
                  "bound request bodies with limits.maxRequestBodyBytes (or maxRequestKB)",
    "maxErrResponseKB": "the proxy's own error details are fixed (l5d-err is cut at 8 KiB); "
                        "set clearContext: true on a server to send none",
    "bindingCache": "the route cache is fixed at 10000 routes per router (the oldest is evicted); remove the key",
    "announcers": _ANNOUNCE,
    "socketOptions": _SOCKET_OPTIONS,
}  # fmt: skip
_REFUSED_SERVER = {"announce": _ANNOUNCE, "socketOptions": _SOCKET_OPTIONS, "engine": _ENGINE}
_H2_CLIENT = "HTTP/2 upstream connections use fixed settings: "
_REFUSED_CLIENT = {
    "retries": "retries are per service in Linkerd 1: set service.retries (and service.responseClassifier)",
    "clientSession": "upstream connection lifetimes are not configurable (a connection stays pooled "
                     "until it fails or the endpoint goes away); bound the pool with client.hostConnectionPool",
    "engine": _ENGINE,
    "socketOptions": _SOCKET_OPTIONS,
    "initialStreamWindowBytes": _H2_CLIENT + "a 1 MiB stream window and a 4 MiB connection window; remove the key",
    "windowUpdateRatio": _H2_CLIENT + "window credit goes back when half a window is consumed; remove the key",
    "headerTableBytes": _H2_CLIENT + "requests are HPACK-encoded with the static table only; remove the key",
    "maxFrameBytes": _H2_CLIENT + "frames of at most 16384 bytes (the RFC 9113 default); remove the key",
    "maxHeaderListBytes": _H2_CLIENT + "response header lists of at most 65536 bytes; remove the key",
    "maxConcurrentStreamsPerConnection": _H2_CLIENT + "streams per connection follow the upstream's "
                                         "SETTINGS_MAX_CONCURRENT_STREAMS, at most 1000; remove the key",
}  # fmt: skip
# Linkerd flags accepted at the value that describes what the proxy does, refused otherwise.
_ONLY_ROUTER = {
    "streamingEnabled": (True, "requests and responses are always streamed; bound request bodies "
                               "with limits.maxRequestBodyBytes (or maxRequestKB)"),
    "compressionLevel": (0, "the proxy never compresses responses; set 0 or remove the key, and compress at the backend"),
    "failFast": (False, "fail-fast is not implemented; endpoints that keep failing are ejected by failure accrual"),
    "originator": (False, "originator mode is not supported; remove the key"),
}  # fmt: skip
_ONLY_CLIENT = {
    "forwardClientCert": (False, "forwarding the client's certificate (x-forwarded-client-cert) is not supported"),
}
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
    `/config.json`. Secrets (the HMAC key, the admin token) are replaced by `<redacted>`."""
    out: dict[str, Any] = {}
    if config.admin is not None:
        a = config.admin
        out["admin"] = {"ip": a.ip, "port": a.port, "shutdownGraceMs": a.shutdown_grace_ms}
        if a.auth is not None:  # a token file's name is no secret; its content is
            tf = a.auth.token_file
            out["admin"]["auth"] = {"tokenFile": tf} if tf is not None else {"token": REDACTED}
        out["admin"]["hosts"] = list(a.hosts)
    out["workers"] = config.workers
    out["namers"] = [_namer_json(n) for n in config.namers]
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


def _namer_json(n: NamerConfig) -> dict[str, Any]:
    if n.kind == "io.l5d.k8s":
        out: dict[str, Any] = {"kind": n.kind, "prefix": n.prefix.show(), **_api_json(n.api)}
        if n.label_selector is not None:
            out["labelSelector"] = n.label_selector
        return out
    return {"kind": n.kind, "prefix": n.prefix.show(), "rootDir": n.root_dir, "pollIntervalMs": n.poll_interval_ms}


def _api_json(api: K8sApiConfig | None, host: str = "host", port: str = "port") -> dict[str, Any]:
    if api is None or api.host is None:
        return {host: None}  # in-cluster
    return {host: api.host, port: api.port}


def _transformer_json(t: TransformerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": t.kind, "prefix": t.prefix.show(), "hostNetwork": t.host_network}
    if t.kind == "io.l5d.k8s.daemonset":
        out.update(namespace=t.namespace, port=t.port, service=t.service)
        out.update(_api_json(t.api, "k8sHost", "k8sPort"))
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
    if o.allow_destinations is not None:
        overrides["allowDestinations"] = [p.show() for p in o.allow_destinations]
    lim = r.limits
    c = r.client
    client: dict[str, Any] = {
        "protocol": c.protocol,
        "connectTimeoutMs": c.connect_timeout_ms,
        "idleTimeoutMs": c.idle_timeout_ms,
        "maxConnections": c.max_connections,
        **client_policy_json(r),
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
            "streamIdleTimeoutMs": lim.stream_idle_timeout_ms or 0,
            "maxRequestTargetBytes": lim.max_request_target_bytes,
        },
        "addForwarded": r.add_forwarded,
        "addVia": r.add_via,
        "rules": [rule_json(x) for x in r.rules],
        "hashOn": _hash_json(r.hash_on),
        "resources": [*r.resources, *(
            [{"kind": "io.l5d.k8s", "namespaces": list(r.k8s_resources.namespaces), **_api_json(r.k8s_resources.api)}]
            if r.k8s_resources is not None else []
        )],
        "interpreter": {"kind": "default", "transformers": [_transformer_json(t) for t in r.transformers]},
        "dtabStore": None if r.dtab_store is None else {
            "kind": "io.l5d.k8s", "namespace": r.dtab_store.namespace, "name": r.dtab_store.name,
            **_api_json(r.dtab_store.api),
        },
        "service": service_json(r),
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
    __slots__ = ("_constructor", "_imported", "_k8s_api", "_top_resources", "base_dir", "inputs", "notes", "source", "text")

    def __init__(self, text: str, source: str, base_dir: str) -> None:
        self.text = text
        self.source = source
        self.base_dir = base_dir
        self.notes: list[str] = []
        self._constructor = SafeConstructor()
        self.inputs: dict[str, tuple[int, int]] = {}  # resource files read: path -> (mtime_ns, size)
        self._imported: dict[str, tuple[RuleConfig, ...]] = {}  # resource path -> its rules, read once
        self._top_resources: list[tuple[str, yaml.Node, str]] = []
        self._k8s_api: K8sApiConfig | None = None  # the first io.l5d.k8s namer's

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

    def refuse(self, m: _Map, refused: Mapping[str, str]) -> None:
        """Fail on the first key (in file order) that `m` sets from `refused`, with the
        key's line and what to use instead."""
        for name in m.items:
            if name in refused and m.has(name):
                self.fail(m.items[name][0], m.key(name), f"not supported: {refused[name]}")

    def only(self, m: _Map, allowed: Mapping[str, tuple[bool | int, str]]) -> None:
        """Keys accepted only at the value that describes what the proxy does."""
        for name in m.items:
            if name not in allowed:
                continue
            node = m.get(name)
            if node is None:
                continue
            value, why = allowed[name]
            got = self.scalar(node)
            if type(got) is not type(value):
                what = "true or false" if isinstance(value, bool) else "an integer"
                self.fail(node, m.key(name), f"expected {what}, got {_describe(node)}")
            if got != value:
                self.fail(node, m.key(name), f"{_describe(node)} is not supported: {why}")

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
        m = self.mapping(root, "", ("admin", "namers", "routers", "resources", "usage", "workers", "telemetry",
                                    "tracers"), _IGNORED_ROOT)  # fmt: skip
        self.usage(m)
        workers = self.workers(m)
        self._top_resources = self.resource_paths(m, top=True)
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
            inputs=tuple((p, mt, size) for p, (mt, size) in sorted(self.inputs.items())),
            workers=workers,
            telemetry=telemetry,
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
            rate_node = m.get("sampleRate")
            rate = self.scalar(rate_node) if rate_node is not None else 0.001
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
                self.fail(rate_node, m.key("sampleRate"), f"expected a number from 0 to 1, got {_describe(rate_node)}")  # type: ignore[arg-type]
            max_queue: int = self.int_(m, "maxQueueSize", 2048, 1, 1_000_000)
            out.append(TelemeterConfig(
                kind=kind, url=url, sample_rate=float(rate), max_queue=max_queue,
                max_batch=self.int_(m, "maxBatchSize", min(512, max_queue), 1, max_queue, f"an integer 1-{max_queue} (maxQueueSize)"),
                flush_interval_ms=self.ms(m, "flushIntervalMs", 1000), timeout_ms=self.ms(m, "timeoutMs", 10_000),
            ))  # fmt: skip
        return tuple(out)

    def http_url(self, m: _Map, name: str, default: str, default_path: str) -> str:
        text: str = self.str_(m, name, default)
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

    def workers(self, root: _Map) -> int | str:
        """`workers:` an integer 1-1024, or `auto`: the CPUs the process may use."""
        node = root.get("workers")
        if node is None:
            return 1
        if self.scalar(node) == "auto":
            return "auto"
        n: int = self.int_(root, "workers", 1, 1, 1024, "an integer 1-1024 or 'auto' (the CPUs this process may use)")
        return n

    def usage(self, root: _Map) -> None:
        """Linkerd's usage reporting: never sent from here. `enabled: false` says just
        that; otherwise one note (a telemetry key: nothing changes for the traffic)."""
        node = root.get("usage")
        if node is None:
            return
        m = self.mapping(node, "usage", ("enabled", "orgId"))
        self.str_(m, "orgId")
        if self.bool_(m, "enabled", True):
            self.note(root.items["usage"][0], "usage", "ignored: usage reporting is not implemented (nothing is sent)")

    def admin(self, root: _Map) -> Admin | None:
        node = root.get("admin")
        if node is None:
            return None if "admin" not in root.items else Admin()
        m = self.mapping(node, "admin", ("ip", "port", "shutdownGraceMs", "tls", "auth", "hosts", *_REFUSED_ADMIN))
        self.refuse(m, _REFUSED_ADMIN)
        if m.has("tls"):
            self.fail(m.get("tls"), m.key("tls"), "TLS on the admin server is not supported yet")
        auth = None
        auth_node = m.get("auth")
        if auth_node is not None:
            auth = self.admin_auth(self.mapping(auth_node, m.key("auth"), ("token", "tokenFile")))
        hosts = []
        for i, n in enumerate(self.seq(m, "hosts")):
            text = self.scalar(n)
            name = text.lower().rstrip(".") if isinstance(text, str) else ""
            if not _HOSTNAME.fullmatch(name):
                self.fail(n, f"{m.key('hosts')}[{i}]", f"expected a host name without a port, got {_describe(n)}")
            hosts.append(name)
        return Admin(
            ip=self.ip(m, "ip", "127.0.0.1"),
            port=self.port(m, "port", 9990),
            shutdown_grace_ms=self.ms(m, "shutdownGraceMs", 10_000),
            auth=auth,
            hosts=tuple(hosts),
        )

    def admin_auth(self, m: _Map) -> AdminAuth:
        if m.has("token") == m.has("tokenFile"):
            self.fail(m.node, m.path, "set exactly one of 'token' and 'tokenFile'")
        path = None
        if m.has("token"):
            token = self.str_(m, "token").encode("utf-8")
            key = "token"
        else:
            key = "tokenFile"
            path = self.file(m, "tokenFile") or ""
            try:
                token = read_token_file(path)
            except OSError as exc:
                self.fail(m.get(key), m.key(key), f"cannot read '{path}': {exc.strerror}")
        problem = admin_token_problem(token)
        if problem is not None:
            self.fail(m.get(key), m.key(key), problem)
        return AdminAuth(token=token, token_file=path)

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
        own = ("rootDir", "pollIntervalMs") if kind == "io.l5d.fs" else ("host", "port", "labelSelector")
        m = self.mapping(node, path, ("kind", "prefix", "transformers", *own), _IGNORED_NAMER)
        if m.has("transformers"):
            self.fail(
                m.get("transformers"), m.key("transformers"),
                "namer transformers are not supported yet; a router's interpreter.transformers are",
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
        if kind == "io.l5d.k8s":
            selector = self.str_(m, "labelSelector")
            if selector is not None and not _LABEL_KEY.match(selector):
                self.fail(m.get("labelSelector"), m.key("labelSelector"),
                          f"expected a label key like 'version' or 'example.com/track' (Linkerd's labelSelector "
                          f"names a label; the path then ends in its value), got {selector!r}")  # fmt: skip
            api = self.k8s_api(m) or K8sApiConfig()
            if self._k8s_api is None:
                self._k8s_api = api  # what transformers, resources and stores use unless they say
            return NamerConfig(kind=kind, prefix=prefix, api=api, label_selector=selector)
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
            "addForwardedHeader", "maxHeadersKB", "interpreter", "rules", "hashOn", "resources", "dtabStore",
            "service", "responseClassifier", "maxRequestKB", "maxInitialLineKB", *_REFUSED_ROUTER, *_ONLY_ROUTER,
            "httpAccessLog", "httpAccessLogFormat", "httpAccessLogRollPolicy", "httpAccessLogAppend",
            "httpAccessLogRotateCount", "h2AccessLog", "h2AccessLogFormat", "h2AccessLogRollPolicy",
            "h2AccessLogAppend", "h2AccessLogRotateCount", "tracePropagator",
        )  # fmt: skip
        m = self.mapping(node, path, known, _IGNORED_ROUTER)
        self.refuse(m, _REFUSED_ROUTER)
        self.only(m, _ONLY_ROUTER)
        protocol = self.choice(m, "protocol", PROTOCOLS, unsupported=LINKERD_PROTOCOLS, what="protocol")
        if "responseClassifier" in m.items:  # Linkerd 0.x's place for it
            self.fail(m.items["responseClassifier"][0], m.key("responseClassifier"),
                      "the response classifier is per service in Linkerd 1: set service.responseClassifier")  # fmt: skip
        label = self.str_(m, "label", protocol)
        dst_prefix = self.parsed(m, "dstPrefix", read_path, "path")
        if dst_prefix is None:  # `dstPrefix: /` is the empty prefix (names like /web), not the default
            dst_prefix = Path.of("svc")
        transformers = self.interpreter(m)
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
            transformers=transformers,
            k8s_resources=self.k8s_resources(m),
            dtab_store=self.dtab_store(m, label),
            **self.router_rules(m, protocol),
            service=self.service(m, protocol),
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
        # resource's conditional rules are appended after them and win (docs/dtab.md §10).
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

    def resource_paths(self, m: _Map, *, top: bool = False) -> list[tuple[str, yaml.Node, str]]:
        """`resources`: a directory (or file) of Kubernetes routing resources, or a list
        (which may also hold one `{kind: io.l5d.k8s, ...}`: see `k8s_resources`)."""
        node = m.get("resources")
        if node is None:
            return []
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out = []
        for i, n in enumerate(items):
            key = m.key("resources") + (f"[{i}]" if isinstance(node, yaml.SequenceNode) else "")
            if isinstance(n, yaml.MappingNode):
                if top:
                    self.fail(n, key, "resources watched from the Kubernetes API are set per router "
                                      "(routers[N].resources: {kind: io.l5d.k8s, namespaces: [...]})")  # fmt: skip
                continue
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
        own = router.get("limits")
        own_m = self.mapping(own, "", _LIMIT_KEYS, check=False) if own is not None else None
        node = router.get("maxHeadersKB")
        if node is not None:
            # Linkerd's limit on the request head, in KiB.
            kb: int = self.int_(router, "maxHeadersKB", None, 1, 1024, "an integer 1-1024 (KiB)")
            if own_m is not None and own_m.has("maxHeaderBytes"):
                self.fail(
                    node, router.key("maxHeadersKB"), "set 'maxHeadersKB' or 'limits.maxHeaderBytes', not both"
                )
            limits = dataclasses.replace(limits, max_header_bytes=kb * 1024)
        # Linkerd's other HTTP/1 limits in KiB: the request body (Linkerd bounds only
        # bodies with a Content-Length; here a chunked one is bounded too) and the
        # initial line (here its target, the part a client makes long).
        limits = self.kb_limit(router, own_m, limits, "maxRequestKB", "maxRequestBodyBytes", 0, 64 << 20)
        return self.kb_limit(router, own_m, limits, "maxInitialLineKB", "maxRequestTargetBytes", 1, 16 << 10)

    def kb_limit(self, router: _Map, own: _Map | None, limits: Limits, kb_key: str, own_key: str,
                 lo: int, hi: int) -> Limits:  # fmt: skip
        """A Linkerd `...KB` router key as the `limits` key it means. Both may be set
        when they agree."""
        node = router.get(kb_key)
        if node is None:
            return limits
        size = 1024 * self.int_(router, kb_key, None, lo, hi, f"a size {lo}-{hi} (KiB)")
        field = _LIMIT_FIELDS[own_key]
        if own is not None and own.has(own_key) and getattr(limits, field) != size:
            self.fail(node, router.key(kb_key), f"{kb_key} ({size} bytes) disagrees with limits.{own_key} "
                      f"({getattr(limits, field)} bytes); set one of them")  # fmt: skip
        return dataclasses.replace(limits, **{field: size})

    def interpreter(self, router: _Map) -> tuple[TransformerConfig, ...]:
        """Linkerd's default interpreter (the router's own dtab and namers), and its
        `transformers`, applied in order to every bound name."""
        node = router.get("interpreter")
        if node is None:
            return ()
        path = router.key("interpreter")
        kind_m = self.mapping(node, path, ("kind",), check=False)
        self.choice(kind_m, "kind", ("default",), unsupported=("io.l5d.namerd", "io.l5d.namerd.http", "io.l5d.mesh"),
                    what="interpreter")  # fmt: skip
        m = self.mapping(node, path, ("kind", "transformers"))
        return tuple(
            self.transformer(n, f"{m.key('transformers')}[{i}]") for i, n in enumerate(self.seq(m, "transformers"))
        )

    def transformer(self, node: yaml.Node, path: str) -> TransformerConfig:
        kind_m = self.mapping(node, path, ("kind",), check=False)
        kind = self.choice(kind_m, "kind", TRANSFORMER_KINDS, unsupported=LINKERD_TRANSFORMERS, what="transformer kind")
        where = f"{self.source}:{node.start_mark.line + 1}: {path}"
        if kind == "io.l5d.k8s.localnode":
            m = self.mapping(node, path, ("kind", "hostNetwork", "prefix"))
            return TransformerConfig(kind=kind, prefix=self.transformer_prefix(m, Path.of(kind)), where=where,
                                     host_network=self.bool_(m, "hostNetwork", False))  # fmt: skip
        m = self.mapping(node, path, ("kind", "namespace", "service", "port", "hostNetwork", "k8sHost", "k8sPort", "prefix"))
        namespace = self.k8s_name(m, "namespace", _DNS_LABEL, "a namespace name", required=True)
        service = self.k8s_name(m, "service", _DNS_LABEL, "a Service name", required=True)
        port_node = m.get("port")
        if port_node is None:
            self.fail(node, path, "missing required key 'port' (the daemonset Service's port name or number)")
        port = self.scalar(port_node)
        if isinstance(port, bool) or not isinstance(port, str | int) or str(port) == "" or (
            isinstance(port, int) and not 1 <= port <= 65535
        ):
            self.fail(port_node, m.key("port"), f"expected a port name or number, got {_describe(port_node)}")
        port_text = str(port).lower()
        api = self.k8s_api(m, "k8sHost", "k8sPort") or self._default_api()
        default = Path.of(kind, namespace, port_text, service)
        return TransformerConfig(
            kind=kind, prefix=self.transformer_prefix(m, default), where=where, namespace=namespace, service=service,
            port=port_text, host_network=self.bool_(m, "hostNetwork", False), api=api,
        )  # fmt: skip

    def transformer_prefix(self, m: _Map, default: Path) -> Path:
        prefix: Path = self.parsed(m, "prefix", read_path, "path") or default
        if not prefix.elems or prefix.elems[0] == b"%":
            self.fail(m.get("prefix"), m.key("prefix"), "write the prefix without '/%' (it is added), and not empty")
        return Path((b"%", *prefix.elems))

    def k8s_name(self, m: _Map, name: str, pattern: re.Pattern[str], what: str, *,
                 required: bool = False, default: str | None = None) -> str:  # fmt: skip
        value = self.str_(m, name, default, required=required)
        if not isinstance(value, str) or not pattern.match(value):
            self.fail(m.get(name) or m.node, m.key(name),
                      f"expected {what} (lower-case letters, digits and '-', as Kubernetes names are), got {value!r}")  # fmt: skip
        return value

    def _default_api(self) -> K8sApiConfig:
        return self._k8s_api or K8sApiConfig()  # the first io.l5d.k8s namer's; else in-cluster

    def k8s_api(self, m: _Map, host: str = "host", port: str = "port") -> K8sApiConfig | None:
        """`host`/`port` of the Kubernetes API (plain HTTP, `kubectl proxy`); None when
        neither is set (in-cluster, or the namer's)."""
        if not m.has(host):
            if m.has(port):
                self.fail(m.get(port), m.key(port), f"'{port}' needs '{host}' too (without '{host}' the API is "
                                                    "reached in-cluster, on KUBERNETES_SERVICE_HOST/PORT)")  # fmt: skip
            return None
        text = self.str_(m, host)
        if not re.fullmatch(r"[A-Za-z0-9.:_\-\[\]]+", text):
            self.fail(m.get(host), m.key(host), f"expected a host name or IP address (no scheme or path), got {text!r}")
        return K8sApiConfig(host=text.strip("[]"), port=self.int_(m, port, 8001, 1, 65535, "an integer 1-65535"))

    def k8s_resources(self, router: _Map) -> K8sResourcesConfig | None:
        """The `{kind: io.l5d.k8s, namespaces: [...], host, port}` item of `resources`."""
        node = router.get("resources")
        if node is None:
            return None
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        found: K8sResourcesConfig | None = None
        for i, n in enumerate(items):
            if not isinstance(n, yaml.MappingNode):
                continue
            key = router.key("resources") + (f"[{i}]" if isinstance(node, yaml.SequenceNode) else "")
            kind_m = self.mapping(n, key, ("kind",), check=False)
            self.choice(kind_m, "kind", ("io.l5d.k8s",), what="resources kind")
            if found is not None:
                self.fail(n, key, "only one {kind: io.l5d.k8s} block per router (list every namespace in it)")
            m = self.mapping(n, key, ("kind", "namespaces", "host", "port"))
            ns_nodes = self.seq(m, "namespaces")
            if not ns_nodes:
                self.fail(m.get("namespaces") or n, m.key("namespaces"), "list the namespaces to watch (at least one)")
            names: list[str] = []
            for j, x in enumerate(ns_nodes):
                holder = _Map(m.node, m.path, {f"namespaces[{j}]": (x, x)})
                value = self.k8s_name(holder, f"namespaces[{j}]", _DNS_LABEL, "a namespace name")
                if value in names:
                    self.fail(x, m.key(f"namespaces[{j}]"), f"namespace '{value}' is listed twice")
                names.append(value)
            found = K8sResourcesConfig(namespaces=tuple(names), api=self.k8s_api(m) or self._default_api())
        return found

    def dtab_store(self, router: _Map, label: str) -> DtabStoreConfig | None:
        node = router.get("dtabStore")
        if node is None:
            return None
        key = router.key("dtabStore")
        kind_m = self.mapping(node, key, ("kind",), check=False)
        self.choice(kind_m, "kind", ("io.l5d.k8s",), unsupported=("io.l5d.inMemory", "io.l5d.zk", "io.l5d.etcd", "io.l5d.consul"),
                    what="dtabStore kind")  # fmt: skip
        m = self.mapping(node, key, ("kind", "namespace", "name", "host", "port"))
        default_name = label.lower() if _DNS_SUBDOMAIN.match(label.lower()) else None
        if default_name is None and not m.has("name"):
            self.fail(node, key, f"the router label '{label}' is not a Kubernetes object name: set 'name'")
        return DtabStoreConfig(
            namespace=self.k8s_name(m, "namespace", _DNS_LABEL, "a namespace name", default="default"),
            name=self.k8s_name(m, "name", _DNS_SUBDOMAIN, "an object name", default=default_name),
            api=self.k8s_api(m) or self._default_api(),
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
        m = self.mapping(node, path, ("ip", "port", "clearContext", "tls", "maxConcurrentRequests", *_REFUSED_SERVER))
        self.refuse(m, _REFUSED_SERVER)
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
        kind_m = self.mapping(node, path, ("kind",), check=False)
        # Linkerd: io.l5d.global is the flat form; io.l5d.static has per-prefix configs.
        kind = self.choice(kind_m, "kind", ("io.l5d.global", "io.l5d.static"), "io.l5d.global", what="client kind")
        static = kind == "io.l5d.static"
        m = self.mapping(node, path, (*_CLIENT_ROUTER_KEYS, *_CLIENT_POLICY_KEYS, *_REFUSED_CLIENT, *_ONLY_CLIENT,
                                      "configs"), _IGNORED_CLIENT)  # fmt: skip
        self.refused_client_keys(m)
        self.only(m, _ONLY_CLIENT)
        for name in (_CLIENT_POLICY_KEYS if static else ("configs",)):
            if name in m.items:
                why = (f"with kind io.l5d.static, '{name}' goes in a configs[] entry (with its prefix)" if static
                       else "'configs' needs kind: io.l5d.static")  # fmt: skip
                self.fail(m.items[name][0], m.key(name), why)
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
        if static:
            configs = self.prefix_configs(m, "bound ids like /#/io.l5d.fs/web", self.client_settings,
                                          _CLIENT_POLICY_KEYS, client=True)  # fmt: skip
        else:
            settings = self.client_settings(m)
            configs = (PrefixConfig(MATCH_ALL, settings),) if settings else ()
            pool = m.get("hostConnectionPool")
            if pool is not None and m.has("maxConnections"):
                pm = self.mapping(pool, m.key("hostConnectionPool"), ("maxSize",), check=False)
                if pm.has("maxSize"):
                    self.fail(pm.get("maxSize"), pm.key("maxSize"),
                              "set 'maxConnections' or 'hostConnectionPool.maxSize', not both")  # fmt: skip
        return ClientConfig(
            protocol=self.choice(m, "protocol", PROTOCOLS, protocol, what="protocol"),
            tls=tls,
            connect_timeout_ms=self.ms(m, "connectTimeoutMs", 1_000),
            idle_timeout_ms=self.ms(m, "idleTimeoutMs", 10_000),
            max_connections=self.int_(m, "maxConnections", None, 1, 1_000_000),
            kind=kind,
            configs=configs,
        )

    # -- service and client policies (config/policy.py) ----------------------------------

    def refused_client_keys(self, m: _Map) -> None:
        self.refuse(m, _REFUSED_CLIENT)

    def refused_prefix_client_keys(self, m: _Map) -> None:
        for name, (k, _) in m.items.items():
            if name in _CLIENT_ROUTER_KEYS:
                why = ("per-prefix TLS is not supported yet; set client.tls next to 'kind: io.l5d.static' "
                       "(it applies to every client of the router)" if name == "tls" else
                       f"'{name}' applies to the whole router: set client.{name} next to 'kind: io.l5d.static'")  # fmt: skip
                self.fail(k, m.key(name), why)
        self.refused_client_keys(m)

    def prefix_configs(self, m: _Map, what: str, settings: Callable[[_Map], tuple[tuple[str, Any], ...]],
                       keys: tuple[str, ...], *, client: bool = False) -> tuple[PrefixConfig, ...]:  # fmt: skip
        """`configs` of an io.l5d.static block: a list of {prefix, ...keys}."""
        node = m.get("configs")
        if node is None:
            self.fail(m.node, m.path, f"kind io.l5d.static needs 'configs': a list of {{prefix, ...}} for {what}")
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, m.key("configs"), f"expected a list of {{prefix, ...}}, got {_describe(node)}")
        out = []
        for i, item in enumerate(node.value):
            key = f"{m.key('configs')}[{i}]"
            if client:  # router-wide and refused keys are read only to say why they can't be here
                c = self.mapping(item, key, ("prefix", *keys, *_CLIENT_ROUTER_KEYS, *_REFUSED_CLIENT), _IGNORED_CLIENT)
                self.refused_prefix_client_keys(c)
            else:
                c = self.mapping(item, key, ("prefix", *keys))
            if not c.has("prefix"):
                self.fail(item, key, f"missing required key 'prefix' (which {what} this config applies to)")
            pnode = c.items["prefix"][1]
            text = self.scalar(pnode)
            if not isinstance(text, str):
                self.fail(pnode, c.key("prefix"), f"expected a prefix like '/svc/web', got {_describe(pnode)}")
            try:
                matcher = PathMatcher.read(text)
            except PrefixError as exc:
                self.fail(pnode, c.key("prefix"), f"invalid prefix: {exc}")
            out.append(PrefixConfig(matcher, settings(c)))
        return tuple(out)

    def service(self, router: _Map, protocol: str) -> ServiceConfig:
        node = router.get("service")
        if node is None:
            return ServiceConfig()
        path = router.key("service")
        kind_m = self.mapping(node, path, ("kind",), check=False)
        kind = self.choice(kind_m, "kind", ("io.l5d.global", "io.l5d.static"), "io.l5d.global", what="service kind")

        def settings(m: _Map) -> tuple[tuple[str, Any], ...]:
            return self.service_settings(m, protocol)

        if kind == "io.l5d.static":
            m = self.mapping(node, path, ("kind", "configs"))
            configs = self.prefix_configs(m, "logical names like /svc/web", settings, _SERVICE_KEYS)
            return ServiceConfig(kind=kind, configs=configs)
        m = self.mapping(node, path, ("kind", *_SERVICE_KEYS))
        flat = settings(m)
        return ServiceConfig(kind=kind, configs=(PrefixConfig(MATCH_ALL, flat),) if flat else ())

    def service_settings(self, m: _Map, protocol: str) -> tuple[tuple[str, Any], ...]:
        out: list[tuple[str, Any]] = []
        if m.has("totalTimeoutMs"):
            out.append(("total_timeout_ms", self.ms(m, "totalTimeoutMs", 0)))
        retries = m.get("retries")
        if retries is not None:
            r = self.mapping(retries, m.key("retries"), ("budget", "backoff"))
            if r.has("budget"):
                out.append(("retry_budget", self.retry_budget(r.get("budget"), r.key("budget"))))  # type: ignore[arg-type]
            if r.has("backoff"):
                out.append(("retry_backoff", self.backoff(r.get("backoff"), r.key("backoff"))))  # type: ignore[arg-type]
        if m.has("responseClassifier"):
            out.append(("response_classifier", self.classifier(m.get("responseClassifier"), m.key("responseClassifier"), protocol)))  # type: ignore[arg-type]
        buf = m.get("retryBufferSize")
        if buf is not None:
            b = self.mapping(buf, m.key("retryBufferSize"), ("requestBytes", "responseBytes"))
            size = "a size in bytes (0 to 1073741824)"
            out.append(("retry_buffer", RetryBufferSize(
                request_bytes=self.int_(b, "requestBytes", 16_383, 0, _MAX_BYTES, size),
                response_bytes=self.int_(b, "responseBytes", 16_383, 0, _MAX_BYTES, size),
            )))  # fmt: skip
        if m.has("classificationTimeoutMs"):
            if protocol != "h2":
                self.fail(m.items["classificationTimeoutMs"][0], m.key("classificationTimeoutMs"),
                          "classificationTimeoutMs applies to h2 routers (an HTTP/1.1 response is classified by its head)")  # fmt: skip
            out.append(("classification_timeout_ms", self.ms(m, "classificationTimeoutMs", 100)))
        return tuple(out)

    def client_settings(self, m: _Map) -> tuple[tuple[str, Any], ...]:
        out: list[tuple[str, Any]] = []
        if m.has("loadBalancer"):
            out.append(("load_balancer", self.load_balancer(m.get("loadBalancer"), m.key("loadBalancer"))))  # type: ignore[arg-type]
        if m.has("failureAccrual"):
            out.append(("failure_accrual", self.failure_accrual(m.get("failureAccrual"), m.key("failureAccrual"))))  # type: ignore[arg-type]
        if m.has("requestAttemptTimeoutMs"):
            out.append(("request_attempt_timeout_ms", self.ms(m, "requestAttemptTimeoutMs", 0)))
        pool = m.get("hostConnectionPool")
        if pool is not None:
            p = self.mapping(pool, m.key("hostConnectionPool"), ("minSize", "maxSize", "idleTimeMs", "maxWaiters"))
            min_size: int = self.int_(p, "minSize", 0, 0, 1_000_000)
            max_size: int | None = self.int_(p, "maxSize", None, 1, 1_000_000)
            if max_size is not None and min_size > max_size:
                self.fail(p.get("minSize"), p.key("minSize"), f"minSize {min_size} is above maxSize {max_size}")
            out.append(("host_connection_pool", HostConnectionPool(
                min_size=min_size,
                max_size=max_size,
                idle_time_ms=self.int_(p, "idleTimeMs", None, 1, _MAX_MS, "a duration in milliseconds (1-86400000)"),
                max_waiters=self.int_(p, "maxWaiters", None, 0, 1_000_000),
            )))  # fmt: skip
        if m.has("requeueBudget"):
            out.append(("requeue_budget", self.retry_budget(m.get("requeueBudget"), m.key("requeueBudget"))))  # type: ignore[arg-type]
        return tuple(out)

    def float_(self, m: _Map, name: str, default: float | None, lo: float, hi: float, what: str) -> Any:
        node = m.get(name)
        if node is None:
            return default
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            self.fail(node, m.key(name), f"expected {what}, got {_describe(node)}")
        return float(value)

    def required(self, m: _Map, name: str, why: str) -> None:
        if not m.has(name):
            self.fail(m.node, m.path, f"missing required key '{name}' ({why})")

    def retry_budget(self, node: yaml.Node, key: str) -> RetryBudgetConfig:
        m = self.mapping(node, key, ("ttlSecs", "minRetriesPerSec", "percentCanRetry"))
        # Finagle's bounds (RetryBudget.apply): ttl 1-60 s, a floor >= 0, a share 0-1000.
        return RetryBudgetConfig(
            ttl_secs=self.int_(m, "ttlSecs", 10, 1, 60, "a ttl of 1-60 seconds"),
            min_retries_per_sec=self.int_(m, "minRetriesPerSec", 10, 0, 1_000_000, "a rate of 0-1000000 per second"),
            percent_can_retry=self.float_(m, "percentCanRetry", 0.2, 0.0, 1000.0, "a share of requests, 0 to 1000 (0.2: one retry per five requests)"),
        )  # fmt: skip

    def backoff(self, node: yaml.Node, key: str) -> BackoffConfig:
        kind_m = self.mapping(node, key, ("kind",), check=False)
        kind = self.choice(kind_m, "kind", BACKOFF_KINDS, what="backoff kind")
        if kind == "constant":
            m = self.mapping(node, key, ("kind", "ms"))
            return BackoffConfig(kind=kind, ms=self.int_(m, "ms", 0, 0, _MAX_MS, "a duration in milliseconds (0-86400000)"))
        m = self.mapping(node, key, ("kind", "minMs", "maxMs"))
        for name in ("minMs", "maxMs"):
            self.required(m, name, f"a {kind} backoff runs from minMs to maxMs")
        lo: int = self.ms(m, "minMs", 0)
        hi: int = self.ms(m, "maxMs", 0)
        if lo > hi:
            self.fail(m.get("minMs"), m.key("minMs"), f"minMs {lo} is above maxMs {hi}")
        return BackoffConfig(kind=kind, min_ms=lo, max_ms=hi)

    def load_balancer(self, node: yaml.Node, key: str) -> LoadBalancerConfig:
        kind_m = self.mapping(node, key, ("kind",), check=False)
        kind = self.choice(kind_m, "kind", BALANCER_KINDS, "ewma", what="load balancer kind")
        keys = {
            "p2c": ("maxEffort",),
            "ewma": ("maxEffort", "decayTimeMs"),
            "roundRobin": ("maxEffort",),
            "heap": (),
            "aperture": ("maxEffort", "smoothWindowMs", "lowLoad", "highLoad", "minAperture"),
        }[kind]
        m = self.mapping(node, key, ("kind", "enableProbation", *keys))
        if self.bool_(m, "enableProbation", False):
            self.fail(m.get("enableProbation"), m.key("enableProbation"),
                      "enableProbation: true is not supported yet (endpoints leave the balancer when discovery drops them)")  # fmt: skip
        d = LoadBalancerConfig(kind=kind)
        low = self.float_(m, "lowLoad", d.low_load, 0.0, 1e6, "a load per endpoint (0 or more)")
        high = self.float_(m, "highLoad", d.high_load, 0.0, 1e6, "a load per endpoint (0 or more)")
        if not low < high:
            self.fail(m.get("highLoad") or m.get("lowLoad"), m.key("highLoad" if m.has("highLoad") else "lowLoad"),
                      f"the load band needs lowLoad < highLoad, got {low} and {high}")  # fmt: skip
        return LoadBalancerConfig(
            kind=kind,
            max_effort=self.int_(m, "maxEffort", d.max_effort, 1, 100, "a number of tries 1-100"),
            decay_time_ms=self.ms(m, "decayTimeMs", d.decay_time_ms),
            smooth_window_ms=self.ms(m, "smoothWindowMs", d.smooth_window_ms),
            low_load=low,
            high_load=high,
            min_aperture=self.int_(m, "minAperture", d.min_aperture, 1, 1_000_000, "an endpoint count, 1 or more"),
        )

    def failure_accrual(self, node: yaml.Node, key: str) -> FailureAccrualConfig:
        kind_m = self.mapping(node, key, ("kind",), check=False)
        kind = self.choice(kind_m, "kind", ACCRUAL_KINDS, what="failure accrual kind")
        keys = {
            "io.l5d.consecutiveFailures": ("failures", "backoff"),
            "io.l5d.successRate": ("successRate", "requests", "backoff"),
            "io.l5d.successRateWindowed": ("successRate", "window", "backoff"),
            "none": (),
        }[kind]
        m = self.mapping(node, key, ("kind", *keys))
        if "successRate" in keys:
            self.required(m, "successRate", "the success rate below which an endpoint is ejected, like 0.9")
        if "requests" in keys:
            self.required(m, "requests", "how many requests the success rate is computed over")
        if "window" in keys:
            self.required(m, "window", "how many seconds the success rate is computed over")
        b = m.get("backoff")
        return FailureAccrualConfig(
            kind=kind,
            failures=self.int_(m, "failures", 5, 1, 1_000_000, "a failure count, 1 or more"),
            success_rate=self.float_(m, "successRate", 0.0, 0.0, 1.0, "a success rate from 0 to 1"),
            requests=self.int_(m, "requests", 0, 1, 1_000_000_000, "a request count, 1 or more"),
            window_s=self.int_(m, "window", 0, 1, 86_400, "a window in seconds (1-86400)"),
            backoff=self.backoff(b, m.key("backoff")) if b is not None else DEFAULT_ACCRUAL_BACKOFF,
        )

    def classifier(self, node: yaml.Node, key: str, protocol: str) -> ClassifierConfig:
        kind_m = self.mapping(node, key, ("kind",), check=False)
        every = (*HTTP_CLASSIFIERS, *H2_CLASSIFIERS)
        kind = self.choice(kind_m, "kind", every, what="response classifier")
        if kind not in CLASSIFIERS[protocol]:
            other = kind.replace("io.l5d.h2.", "io.l5d.http.") if protocol == "http" else kind.replace("io.l5d.http.", "io.l5d.h2.")
            hint = f" (use {other})" if other in CLASSIFIERS[protocol] else ""
            self.fail(kind_m.get("kind"), kind_m.key("kind"), f"response classifier {kind} does not apply to {protocol} routers{hint}")
        grpc = kind.startswith("io.l5d.h2.grpc.")
        listed = kind == "io.l5d.h2.grpc.retryableStatusCodes"
        m = self.mapping(node, key, ("kind", *(("successStatusCodes",) if grpc else ()), *(("retryableStatusCodes",) if listed else ())))
        if listed:
            self.required(m, "retryableStatusCodes", "the gRPC status codes to retry, like [14]")
        success = self.codes(m, "successStatusCodes") if m.has("successStatusCodes") else frozenset({0})
        return ClassifierConfig(kind=kind, retryable_status_codes=self.codes(m, "retryableStatusCodes"), success_status_codes=success)

    def codes(self, m: _Map, name: str) -> frozenset[int]:
        out = set()
        for i, n in enumerate(self.seq(m, name)):
            v = self.scalar(n)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0x7FFFFFFF:
                self.fail(n, f"{m.key(name)}[{i}]", f"expected a gRPC status code (an integer, like 14), got {_describe(n)}")
            out.add(v)
        return frozenset(out)

    def overrides(self, router: _Map) -> OverrideConfig:
        node = router.get("overrides")
        if node is None:
            return OverrideConfig()
        m = self.mapping(
            node, router.key("overrides"), ("trust", "maxBytes", "maxEntries", "allowPrefixes", "allowDestinations")
        )
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
        return OverrideConfig(
            cidrs=cidrs,
            hmac=hmac,
            max_bytes=self.int_(m, "maxBytes", 4096, 1, 1 << 20, "a size 1-1048576 (bytes)"),
            max_entries=self.int_(m, "maxEntries", 32, 1, 10_000, "an entry count 1-10000"),
            allow_prefixes=self.prefix_list(m, "allowPrefixes"),
            allow_destinations=self.prefix_list(m, "allowDestinations"),
        )

    def prefix_list(self, m: _Map, name: str) -> tuple[Any, ...] | None:
        """A list of dtab prefixes (`[/svc/web, /#/io.l5d.k8s]`); None when absent."""
        if name not in m.items:
            return None
        out = []
        for i, n in enumerate(self.seq(m, name)):
            holder = _Map(m.node, m.path, {f"{name}[{i}]": (n, n)})
            out.append(self.parsed(holder, f"{name}[{i}]", read_prefix, "prefix"))
        return tuple(out)

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
            stream_idle_timeout_ms=self.int_(
                m, "streamIdleTimeoutMs", 300_000, 0, _MAX_MS, "a duration in milliseconds (0-86400000; 0: never)"
            ) or None,  # fmt: skip
            # 8 KiB: what most servers and CDNs take (RFC 9112 §3: at least 8000 octets).
            max_request_target_bytes=self.int_(
                m, "maxRequestTargetBytes", 8192, 1, 1 << 24, "a size 1-16777216 (bytes)"
            ),
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


_LIMIT_KEYS = (
    "maxHeaderBytes", "maxHeaders", "headerReadTimeoutMs", "idleTimeoutMs", "maxRequestBodyBytes",
    "streamIdleTimeoutMs", "maxRequestTargetBytes",
)  # fmt: skip
_LIMIT_FIELDS = {"maxRequestBodyBytes": "max_request_body_bytes", "maxRequestTargetBytes": "max_request_target_bytes"}


def load_rules(rule_docs: Iterable[Mapping[str, Any]], base_dir: str | None = None) -> tuple[list[RuleConfig], list[str]]:
    """Rules given as data (the importers' output for resources watched from the API),
    validated as if written in a config. A rule that does not validate is reported
    (`source: message`), not raised, so the others still apply."""
    rules: list[RuleConfig] = []
    problems: list[str] = []
    for i, rd in enumerate(rule_docs):
        source = str(rd.get("source") or rd.get("name") or f"rule {i}")
        text = yaml.safe_dump(dict(rd), sort_keys=False)
        sub = _Loader(text, f"{source} (imported)", os.path.abspath(base_dir or os.getcwd()))
        doc = yaml.compose(text, Loader=yaml.SafeLoader)
        assert doc is not None  # safe_dump of a mapping
        try:
            rules.append(sub.rule(doc, f"rules[{i}]"))
        except ConfigError as exc:
            problems.append(f"{source}: {exc.message}")
    return rules, problems


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
