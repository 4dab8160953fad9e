"""The validated configuration: frozen dataclasses, one per YAML block.

Every value here has already been checked by `config.load`; nothing in this module
parses or validates text, touches files or imports `proxy`. Field names are Python's
(`dst_prefix`), the YAML keys are Linkerd's (`dstPrefix`); `config.load.to_json` maps
back. Durations carry their unit in the name (`timeout_ms`), sizes say `bytes`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TypeAlias

from dtab import Dtab, Path, Prefix

from .policy import PrefixConfig, ServiceConfig

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Where a per-request override is trusted from when the router says nothing (and the
#: server does not `clearContext`): this host and the private ranges (RFC 1918 for
#: IPv4, RFC 4193 unique-local for IPv6), i.e. callers inside the cluster or the host.
DEFAULT_TRUSTED_CIDRS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(c)
    for c in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7")
)

#: Identifier kinds, with the protocols each one makes sense for. `methodAndHost`
#: names HTTP/1 versions (`/1.1/GET/host`), so an h2 router has no use for it.
IDENTIFIER_KINDS: dict[str, frozenset[str]] = {
    "io.l5d.header.token": frozenset({"http", "h2"}),
    "io.l5d.header": frozenset({"http", "h2"}),
    "io.l5d.methodAndHost": frozenset({"http"}),
    "io.l5d.path": frozenset({"http", "h2"}),
    "io.l5d.static": frozenset({"http", "h2"}),
    "io.l5d.header.path": frozenset({"http", "h2"}),
}


@dataclass(frozen=True, slots=True)
class AdminAuth:
    """The bearer token every mutating admin request must carry (`admin.auth`). With
    `token_file`, `token` is the file's content at load; the admin server re-reads the
    file when it changes (a rotated Kubernetes Secret)."""

    token: bytes = field(repr=False)  # a secret: kept out of repr, logs and /config.json
    token_file: str | None = None


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin server (ping, readiness, metrics, delegator). Loopback by default: it
    shows every dtab and lets anyone run the delegator, so it is not for the outside.

    Writes (`PUT /admin/dtabs/...`, `PUT /admin/sampling`) need `auth`'s bearer token
    when one is set, and a `Host` that is an IP literal, `localhost` or one of `hosts`
    (DNS rebinding); on a non-loopback `ip` without `auth` the admin is read-only."""

    ip: str = "127.0.0.1"
    port: int = 9990
    shutdown_grace_ms: int = 10_000  # Linkerd's `shutdownGraceMs`: how long a drain may take
    auth: AdminAuth | None = None
    hosts: tuple[str, ...] = ()  # lower case, no port: names a write's Host may carry


@dataclass(frozen=True, slots=True)
class K8sApiConfig:
    """Where the Kubernetes API is: `host`/`port` over plain HTTP (what `kubectl proxy`
    serves), or, with `host` None, in-cluster (KUBERNETES_SERVICE_HOST/PORT, the service
    account's token and CA)."""

    host: str | None = None
    port: int = 8001

    def show(self) -> str:
        return "in-cluster" if self.host is None else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NamerConfig:
    """A configured namer (`/#/<prefix>/...`): `io.l5d.fs` (a directory) or
    `io.l5d.k8s` (the Kubernetes API)."""

    kind: str
    prefix: Path  # as configured, without `/#`: `/io.l5d.fs`
    root_dir: str = ""  # io.l5d.fs: absolute (a relative `rootDir` is taken from the config file's directory)
    poll_interval_ms: int = 250  # our extension: fast enough for the 1 s change budget
    api: K8sApiConfig | None = None  # io.l5d.k8s
    label_selector: str | None = None  # io.l5d.k8s: a label key; names then end in its value

    @property
    def bind_prefix(self) -> Prefix:
        """The prefix a dtab names this namer by: `/#/io.l5d.fs`."""
        return Prefix((b"#", *self.prefix.elems))


@dataclass(frozen=True, slots=True)
class IdentifierConfig:
    """One identifier of a router's chain (docs/dtab.md §11). Only the fields of its `kind` are
    meaningful; the others keep their defaults.

    - `io.l5d.header.token`: `header` (default `host`; `:authority` on h2)
    - `io.l5d.header`: `header` (default `l5d-name`), value read as a path
    - `io.l5d.methodAndHost`: `http_uri_in_dst`
    - `io.l5d.path`: `segments` (default 1), `consume`
    - `io.l5d.static`: `path`
    - `io.l5d.header.path`: `segments` (None: the whole path); names from `:path` on h2
    """

    kind: str
    header: str | None = None  # lower case: header names are case-insensitive (RFC 9110 §5.1)
    http_uri_in_dst: bool = False
    segments: int | None = None
    consume: bool = False
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class ServerTls:
    cert_path: str
    key_path: str
    ca_cert_path: str | None = None  # set with `require_client_auth` for mutual TLS
    require_client_auth: bool = False


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """A listener of a router. `port` 0 asks the OS for a free port (tests use it)."""

    ip: str = "127.0.0.1"
    port: int = 4140
    clear_context: bool = False  # edge server: strip every `l5d-*` header from callers
    tls: ServerTls | None = None
    max_concurrent_requests: int | None = None


@dataclass(frozen=True, slots=True)
class ClientTls:
    """TLS to upstreams, in Linkerd's shape (`commonName`, `trustCerts`, ...)."""

    common_name: str | None = None  # the name to verify; None: the upstream's host
    trust_certs: tuple[str, ...] = ()  # CA files; empty: the system store
    disable_validation: bool = False
    cert_path: str | None = None  # client certificate (Linkerd's `clientAuth`)
    key_path: str | None = None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How a router talks to upstreams."""

    protocol: str  # "http" | "h2"; defaults to the router's protocol
    tls: ClientTls | None = None
    connect_timeout_ms: int = 1_000
    idle_timeout_ms: int = 10_000
    max_connections: int | None = None  # per endpoint; None: unbounded
    #: Linkerd's client kinds: `io.l5d.global` (the policy keys written flat, kept as one
    #: config with prefix `/`) or `io.l5d.static` (per-prefix configs on bound ids). The
    #: keys above apply to the whole router either way; `config.policy.client_policy`
    #: resolves the rest for one client.
    kind: str = "io.l5d.global"
    configs: tuple[PrefixConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class HmacConfig:
    """Trust an `l5d-dtab` whose HMAC-SHA256 signature (in `header`) checks with `key`."""

    header: str
    key: bytes = field(repr=False)  # a secret: kept out of repr, logs and /config.json


@dataclass(frozen=True, slots=True)
class OverrideConfig:
    """Who may send per-request overrides (`l5d-dtab`, `l5d-ctx-dtab`) and how large.

    `cidrs` None means "not configured": see `trusted_cidrs`."""

    cidrs: tuple[IPNetwork, ...] | None = None
    hmac: HmacConfig | None = None
    max_bytes: int = 4096  # an override is parsed per request; a dtab of a few rules fits
    max_entries: int = 32
    allow_prefixes: tuple[Prefix, ...] | None = None  # None: any prefix
    allow_destinations: tuple[Prefix, ...] | None = None  # None: any destination

    def trusted_cidrs(self, clear_context: bool) -> tuple[IPNetwork, ...]:
        """The networks an override is honoured from on a server. Configured CIDRs
        apply everywhere; without them an inside server trusts loopback and private
        ranges, and an edge (`clearContext`) server trusts nobody by address."""
        if self.cidrs is not None:
            return self.cidrs
        return () if clear_context else DEFAULT_TRUSTED_CIDRS


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits of a router's servers. Each is a defence against a slow or
    hostile caller; the defaults are generous for service traffic."""

    max_header_bytes: int = 65_536
    max_headers: int = 100
    header_read_timeout_ms: int = 10_000
    idle_timeout_ms: int = 60_000
    max_request_body_bytes: int | None = None  # None: unbounded (bodies are streamed); 413 above it
    max_request_target_bytes: int = 8192  # the HTTP/1.1 request-target; 414 above it
    #: A stream that moves no byte either way this long ends as an error on both sides
    #: (Envoy's stream idle timeout and its default, 5 minutes); None: never.
    stream_idle_timeout_ms: int | None = 300_000


@dataclass(frozen=True, slots=True)
class StringMatch:
    """One condition on a string (spec: docs/rules.md). `kind` is `exact`, `prefix`,
    `regex` (a full match), `present` or `absent`; for a path also `segmentPrefix`
    (whole `/`-separated segments: `/api` matches `/api` and `/api/x`, not `/apix`).
    `invert` negates the result (an absent value never matches before inversion)."""

    kind: str
    value: str = ""
    invert: bool = False
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class NamedMatch:
    """A condition on a header (lower-case name), cookie or query parameter."""

    name: str
    match: StringMatch


@dataclass(frozen=True, slots=True)
class MatchBlock:
    """Conditions that must all hold (AND). A rule lists one or more blocks (OR)."""

    headers: tuple[NamedMatch, ...] = ()
    cookies: tuple[NamedMatch, ...] = ()
    query: tuple[NamedMatch, ...] = ()
    methods: tuple[str, ...] = ()  # upper case; empty: any method
    path: StringMatch | None = None
    authority: StringMatch | None = None


@dataclass(frozen=True, slots=True)
class UriRewrite:
    """How a matching rule rewrites the request path (the query is kept):
    `prefix` replaces the leading `match` with `replacement`, `regex` substitutes
    every match of the pattern `match` (`\\1` names a group), `path` replaces the whole path."""

    kind: str
    match: str
    replacement: str


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Header edits, applied as remove, then set (replacing every value), then add."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True, slots=True)
class HashOn:
    """Sticky splits: the branch of a weighted union is a stable function of this
    header's (or cookie's) value instead of a random number."""

    header: str | None = None
    cookie: str | None = None


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """A match rule: when any block of `match` holds (an empty `match` always holds),
    `dtab` is appended after the base dtab for that request (docs/dtab.md §10 order:
    base ++ rules ++ ctx ++ user) and the rewrites apply. Within a `group` only the
    first matching rule applies; rules outside a group apply independently."""

    name: str
    match: tuple[MatchBlock, ...]
    dtab: Dtab
    group: str | None = None
    uri: UriRewrite | None = None
    authority: str | None = None
    request_headers: HeaderEdits = HeaderEdits()
    response_headers: HeaderEdits = HeaderEdits()
    hash_on: HashOn | None = None
    source: str | None = None  # where an imported rule came from (`TrafficSplit ns/name`)
    #: The logical name a matching request is routed by instead of its identified one
    #: (a wildcard-host resource names every request of its router this way).
    service: Path | None = None


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """A router's access log (Linkerd's `httpAccessLog*` / `h2AccessLog*` keys)."""

    path: str  # absolute
    format: str = "combined"  # combined | json (one JSON object per line)
    roll_policy: str = "never"  # never | hourly | daily | weekly | <n>.<unit> (e.g. 100.megabytes)
    append: bool = True  # False: truncate at start
    rotate_count: int = -1  # rolled files kept; -1: all


@dataclass(frozen=True, slots=True)
class TelemeterConfig:
    """A root `telemetry` (or `tracers`) entry that exports spans: `io.l5d.otlp` (OTLP over
    HTTP, JSON) or `io.l5d.zipkin` (Zipkin v2 JSON)."""

    kind: str
    url: str  # where the spans are POSTed: http://host:port/v1/traces or /api/v2/spans
    sample_rate: float = 0.001  # Linkerd's default for its zipkin telemeter
    max_queue: int = 2048  # spans waiting; past it new spans are dropped (counted)
    max_batch: int = 512  # spans per POST
    flush_interval_ms: int = 1000
    timeout_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class TransformerConfig:
    """One of a router's interpreter transformers (Linkerd's shape), applied in order to
    every bound name. `io.l5d.k8s.daemonset` replaces each address by the daemonset
    pod on the same node (`namespace`, `port`, `service` name the daemonset's Service);
    `io.l5d.k8s.localnode` keeps only the addresses on this node. `prefix` heads the
    bound ids they produce (`/%/<prefix>/...`)."""

    kind: str
    prefix: Path
    where: str  # `source:line: key`, for errors found at start (a missing POD_IP)
    namespace: str = ""
    service: str = ""
    port: str = ""
    host_network: bool = False
    api: K8sApiConfig | None = None  # daemonset: `k8sHost`/`k8sPort`, else the namer's


@dataclass(frozen=True, slots=True)
class K8sResourcesConfig:
    """`resources: {kind: io.l5d.k8s, namespaces: [...]}`: the routing resources (SMI,
    Istio, Gateway API) of these namespaces, watched from the API."""

    namespaces: tuple[str, ...]
    api: K8sApiConfig


@dataclass(frozen=True, slots=True)
class DtabStoreConfig:
    """`dtabStore: {kind: io.l5d.k8s, namespace, name}`: the router's base dtab is the
    `DTab` custom resource (l5d.io/v1alpha1, namerd's shape) `namespace/name`."""

    namespace: str
    name: str
    api: K8sApiConfig


@dataclass(frozen=True, slots=True)
class RouterConfig:
    label: str
    protocol: str  # "http" | "h2"
    dst_prefix: Path
    identifiers: tuple[IdentifierConfig, ...]
    dtab: Dtab
    dtab_text: str  # as written, comments included, for the delegator UI
    servers: tuple[ServerConfig, ...]
    client: ClientConfig
    timeout_ms: int = 10_000
    binding_timeout_ms: int = 10_000
    overrides: OverrideConfig = OverrideConfig()
    limits: Limits = Limits()
    add_forwarded: bool = False
    add_via: bool = False
    rules: tuple[RuleConfig, ...] = ()  # own rules first, then those from `resources`
    hash_on: HashOn | None = None
    resources: tuple[str, ...] = ()  # the resource directories read into `rules`
    transformers: tuple[TransformerConfig, ...] = ()  # `interpreter.transformers`
    k8s_resources: K8sResourcesConfig | None = None  # routing resources watched from the API
    dtab_store: DtabStoreConfig | None = None
    #: Linkerd's `service` block: per-logical-name policies (timeouts, retries, the
    #: response classifier); `config.policy.service_policy` resolves one name.
    service: ServiceConfig = ServiceConfig()
    access_log: AccessLogConfig | None = None
    trace_propagator: str = "io.l5d.default"  # io.l5d.default | io.l5d.zipkin | io.l5d.w3c


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration. `admin` None: no admin server was configured.

    `notes` lists keys that were accepted for Linkerd compatibility but have no
    effect here (each was also logged once at load)."""

    admin: Admin | None
    namers: tuple[NamerConfig, ...]
    routers: tuple[RouterConfig, ...]
    source: str | None = None
    notes: tuple[str, ...] = ()
    #: Every file the config was built from (the config file, resource files), with its
    #: modification time and size at load: the runtime polls these to reload.
    inputs: tuple[tuple[str, int, int], ...] = ()
    #: Worker processes (`workers:`): an integer, or "auto" (the CPUs the process may use,
    #: cgroup-aware; proxy/workers.py). 1: one process.
    workers: int | str = 1
    telemetry: tuple[TelemeterConfig, ...] = ()  # span exporters (root `telemetry` and `tracers`)

    def router(self, label: str) -> RouterConfig | None:
        for r in self.routers:
            if r.label == label:
                return r
        return None
