"""Per-service and per-client policies: the validated `service` and `client` blocks of a
router, and the functions that resolve them for one name.

Linkerd 1's shape. A router's `service` block applies to logical names (`/svc/web`), its
`client` block to bound ids (`/#/io.l5d.fs/web`, `/$/inet/10.0.0.1/80`). Either is flat
(`kind: io.l5d.global`, the default: one set of values for every name) or
`kind: io.l5d.static` with `configs: [{prefix, ...}]`: every config whose prefix matches
the name applies, in file order, and a key set by a later config wins over the same key
set by an earlier one; keys a config does not set keep what the earlier ones (or the
defaults) gave. A prefix matches the first segments of a name; a segment is a literal,
`*` (any one segment) or a pattern with captures (`{service}`, `{svc}-prod`), as
Linkerd's PathMatcher (the captures are not used here: they feed only per-prefix TLS
names, which are not supported yet).

`service_policy` and `client_policy` are called once per route or client, never per
request: they walk the configs. Nothing here parses YAML (`config.load` does) or
imports `proxy`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dtab import Path

if TYPE_CHECKING:
    from .schema import RouterConfig

#: Response classifier kinds by router protocol. `retryableAll5XX` and
#: `io.l5d.h2.grpc.compliant` are Linkerd 1 kinds beyond the issue's list.
HTTP_CLASSIFIERS = (
    "io.l5d.http.nonRetryable5XX",
    "io.l5d.http.retryableRead5XX",
    "io.l5d.http.retryableIdempotent5XX",
    "io.l5d.http.retryableAll5XX",
    "io.l5d.http.allSuccessful",
)
H2_CLASSIFIERS = (
    "io.l5d.h2.nonRetryable5XX",
    "io.l5d.h2.retryableRead5XX",
    "io.l5d.h2.retryableIdempotent5XX",
    "io.l5d.h2.retryableAll5XX",
    "io.l5d.h2.allSuccessful",
    "io.l5d.h2.grpc.default",
    "io.l5d.h2.grpc.compliant",
    "io.l5d.h2.grpc.retryableStatusCodes",
    "io.l5d.h2.grpc.alwaysRetryable",
    "io.l5d.h2.grpc.neverRetryable",
)
CLASSIFIERS: dict[str, tuple[str, ...]] = {"http": HTTP_CLASSIFIERS, "h2": H2_CLASSIFIERS}
#: What a router classifies with when its service block names no classifier (Linkerd:
#: `HttpConfig.defaultResponseClassifier` and `H2Classifiers.Default`).
DEFAULT_CLASSIFIER = {"http": "io.l5d.http.nonRetryable5XX", "h2": "io.l5d.h2.nonRetryable5XX"}

BALANCER_KINDS = ("ewma", "p2c", "aperture", "heap", "roundRobin")
ACCRUAL_KINDS = (
    "io.l5d.consecutiveFailures",
    "io.l5d.successRate",
    "io.l5d.successRateWindowed",
    "none",
)
#: `equalJittered` is ours (Finagle's equal jitter, what Linkerd's failure accrual uses
#: by default), so the default shows in /config.json as something that loads back.
BACKOFF_KINDS = ("constant", "jittered", "equalJittered")


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    """`{kind: constant, ms}` or `{kind: jittered, minMs, maxMs}` (see proxy.upstream.backoff)."""

    kind: str = "constant"
    ms: int = 0  # constant
    min_ms: int = 0  # jittered, equalJittered
    max_ms: int = 0


#: Linkerd's (and Finagle's) failure accrual backoff: equal jitter from 5 s to 300 s.
DEFAULT_ACCRUAL_BACKOFF = BackoffConfig(kind="equalJittered", min_ms=5_000, max_ms=300_000)
#: Linkerd's retry backoff when `retries.backoff` is not set: retry at once.
DEFAULT_RETRY_BACKOFF = BackoffConfig(kind="constant", ms=0)


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    """Finagle's `RetryBudget(ttl, minRetriesPerSec, percentCanRetry)`; Linkerd's defaults
    for both `service.retries.budget` and `client.requeueBudget`."""

    ttl_secs: int = 10
    min_retries_per_sec: int = 10
    percent_can_retry: float = 0.2


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    """A response classifier (`service.responseClassifier`). The status-code sets are
    meaningful for the `io.l5d.h2.grpc.*` kinds only."""

    kind: str
    retryable_status_codes: frozenset[int] = frozenset()  # io.l5d.h2.grpc.retryableStatusCodes
    success_status_codes: frozenset[int] = frozenset({0})  # every io.l5d.h2.grpc.* kind


@dataclass(frozen=True, slots=True)
class RetryBufferSize:
    """How much of a request (and of a response, before it is committed to the client) is
    kept so the request can be retried. Linkerd's h2 defaults (16383 bytes each); a body
    that outgrows `request_bytes` after bytes went upstream is not retried."""

    request_bytes: int = 16_383
    response_bytes: int = 16_383


@dataclass(frozen=True, slots=True)
class LoadBalancerConfig:
    """`client.loadBalancer`. Only the fields of `kind` are meaningful (Linkerd's names):
    `maxEffort` for all but heap, `decayTimeMs` for ewma, `smoothWindowMs`, `lowLoad`,
    `highLoad` and `minAperture` for aperture."""

    kind: str = "ewma"
    max_effort: int = 5
    decay_time_ms: int = 10_000
    smooth_window_ms: int = 5_000
    low_load: float = 0.5
    high_load: float = 2.0
    min_aperture: int = 1


@dataclass(frozen=True, slots=True)
class FailureAccrualConfig:
    """`client.failureAccrual`. `failures` for consecutiveFailures; `success_rate` with
    `requests` (successRate) or `window_s` (successRateWindowed)."""

    kind: str = "io.l5d.consecutiveFailures"
    failures: int = 5
    success_rate: float = 0.0
    requests: int = 0
    window_s: int = 0
    backoff: BackoffConfig = DEFAULT_ACCRUAL_BACKOFF


@dataclass(frozen=True, slots=True)
class HostConnectionPool:
    """`client.hostConnectionPool` (Linkerd's watermark pool), per endpoint. In a
    resolved `ClientPolicy`, `max_size`/`max_waiters` None mean unbounded (Linkerd's
    Int.MaxValue), and unset `maxSize`/`idleTimeMs` take the router-wide
    `client.maxConnections`/`client.idleTimeoutMs`."""

    min_size: int = 0
    max_size: int | None = None
    idle_time_ms: int | None = None
    max_waiters: int | None = None


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """What applies to one logical name: resolved from the router's `service` block."""

    response_classifier: ClassifierConfig
    total_timeout_ms: int | None = None  # the whole request, retries included; None: none
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    retry_backoff: BackoffConfig = DEFAULT_RETRY_BACKOFF
    retry_buffer: RetryBufferSize = RetryBufferSize()
    #: h2: how long a response that finished its head may be held for its trailers to
    #: classify it (Linkerd's `classificationTimeoutMs`).
    classification_timeout_ms: int = 100


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """What applies to one client (bound id): resolved from the router's `client` block."""

    load_balancer: LoadBalancerConfig = LoadBalancerConfig()
    failure_accrual: FailureAccrualConfig = FailureAccrualConfig()
    request_attempt_timeout_ms: int | None = None  # one attempt, until its response head
    host_connection_pool: HostConnectionPool = HostConnectionPool()
    requeue_budget: RetryBudgetConfig = RetryBudgetConfig()


# -- prefixes ---------------------------------------------------------------------------

_CAPTURE = re.compile(r"\{([A-Za-z0-9.:_-]+)\}")
_SEGMENT_CHARS = re.compile(r"[0-9A-Za-z_:.#$%*-]+")  # a path label's characters, plus '*'


class PrefixError(ValueError):
    """A prefix that cannot be read; the message echoes it with the bad part bracketed."""


@dataclass(frozen=True, slots=True)
class PathMatcher:
    """A `prefix` of a static config: literal segments, `*`, or `{name}` captures.

    `/` matches every name. A capture matches any text in its place within one segment
    (`{svc}-prod` matches `web-prod`); the whole segment must match.
    """

    text: str
    segments: tuple[bytes | re.Pattern[bytes] | None, ...] = field(compare=False)  # None: '*'

    @staticmethod
    def read(text: str) -> PathMatcher:
        if not text.startswith("/"):
            raise PrefixError(f"a prefix starts with '/': [{text[:1]}]{text[1:]}")
        segments: list[bytes | re.Pattern[bytes] | None] = []
        pos = 1
        for raw in text[1:].split("/") if text != "/" else ():
            where = f"{text[:pos]}[{raw}]{text[pos + len(raw):]}"
            if not raw:
                raise PrefixError(f"empty segment in prefix: {where}")
            if raw == "*":
                segments.append(None)
            elif "{" in raw or "}" in raw:
                literal = _CAPTURE.split(raw)[::2]  # the text between captures
                if any("{" in p or "}" in p for p in literal):
                    raise PrefixError(f"a capture is '{{name}}' (letters, digits, . : _ -): {where}")
                if any(p and not _SEGMENT_CHARS.fullmatch(p) for p in literal):
                    raise PrefixError(f"unexpected character in prefix segment: {where}")
                pattern = "".join(
                    re.escape(p) if i % 2 == 0 else "(.*)" for i, p in enumerate(_CAPTURE.split(raw))
                )
                segments.append(re.compile(pattern.encode("ascii"), re.DOTALL))
            else:
                if not _SEGMENT_CHARS.fullmatch(raw) or "*" in raw:
                    raise PrefixError(f"unexpected character in prefix segment: {where}")
                segments.append(raw.encode("ascii"))
            pos += len(raw) + 1
        return PathMatcher(text, tuple(segments))

    def matches(self, path: Path) -> bool:
        elems = path.elems
        if len(elems) < len(self.segments):
            return False
        for seg, elem in zip(self.segments, elems, strict=False):
            if seg is None:
                continue
            if isinstance(seg, bytes):
                if seg != elem:
                    return False
            elif seg.fullmatch(elem) is None:
                return False
        return True

    def __str__(self) -> str:
        return self.text


MATCH_ALL = PathMatcher.read("/")


@dataclass(frozen=True, slots=True)
class PrefixConfig:
    """One entry of a static `configs` list (or the whole of a flat block, with prefix
    `/`): the keys it sets, as `ServicePolicy`/`ClientPolicy` field names and values."""

    prefix: PathMatcher
    settings: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A router's `service` block. `configs` apply in order; flat blocks have one, `/`."""

    kind: str = "io.l5d.global"
    configs: tuple[PrefixConfig, ...] = ()


def _resolve(base: Any, configs: tuple[PrefixConfig, ...], path: Path) -> Any:
    for c in configs:
        if c.settings and c.prefix.matches(path):
            base = dataclasses.replace(base, **dict(c.settings))
        # Keys a config does not set keep the values earlier configs gave them.
    return base


def default_service_policy(protocol: str) -> ServicePolicy:
    return ServicePolicy(response_classifier=ClassifierConfig(DEFAULT_CLASSIFIER[protocol]))


def service_policy(router: RouterConfig, service_path: Path,
                   memo: dict[tuple[int, ...], ServicePolicy] | None = None) -> ServicePolicy:  # fmt: skip
    """The policy for a logical name (`/svc/web`) of a router. Call once per route.

    `memo` (one per router snapshot) shares one policy object among the names that the
    same `service.configs` entries match: most names match none, and a proxy that meets
    many names (an ingress, a scan of random Hosts) then keeps one object, not one each."""
    configs = router.service.configs
    if memo is None:
        policy: ServicePolicy = _resolve(default_service_policy(router.protocol), configs, service_path)
        return policy
    key = tuple(i for i, c in enumerate(configs) if c.settings and c.prefix.matches(service_path))
    shared = memo.get(key)
    if shared is None:
        shared = memo[key] = service_policy(router, service_path)
    return shared


def client_policy(router: RouterConfig, bound_id: Path) -> ClientPolicy:
    """The policy for a bound id (`/#/io.l5d.fs/web`) of a router. Call once per client.

    The pool's size and idle time fall back to the router-wide `client.maxConnections` and
    `client.idleTimeoutMs`, so `host_connection_pool` is the one place to read them."""
    c = router.client
    policy: ClientPolicy = _resolve(ClientPolicy(), c.configs, bound_id)
    pool = policy.host_connection_pool
    if pool.max_size is None and c.max_connections is not None or pool.idle_time_ms is None:
        pool = dataclasses.replace(
            pool,
            max_size=c.max_connections if pool.max_size is None else pool.max_size,
            idle_time_ms=c.idle_timeout_ms if pool.idle_time_ms is None else pool.idle_time_ms,
        )
        policy = dataclasses.replace(policy, host_connection_pool=pool)
    return policy


# -- /config.json ------------------------------------------------------------------------


def backoff_json(b: BackoffConfig) -> dict[str, Any]:
    if b.kind == "constant":
        return {"kind": b.kind, "ms": b.ms}
    return {"kind": b.kind, "minMs": b.min_ms, "maxMs": b.max_ms}


def budget_json(b: RetryBudgetConfig) -> dict[str, Any]:
    return {"ttlSecs": b.ttl_secs, "minRetriesPerSec": b.min_retries_per_sec, "percentCanRetry": b.percent_can_retry}


def classifier_json(c: ClassifierConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": c.kind}
    if c.kind.startswith("io.l5d.h2.grpc."):
        out["successStatusCodes"] = sorted(c.success_status_codes)
    if c.kind == "io.l5d.h2.grpc.retryableStatusCodes":
        out["retryableStatusCodes"] = sorted(c.retryable_status_codes)
    return out


def load_balancer_json(lb: LoadBalancerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": lb.kind}
    if lb.kind != "heap":
        out["maxEffort"] = lb.max_effort
    if lb.kind == "ewma":
        out["decayTimeMs"] = lb.decay_time_ms
    if lb.kind == "aperture":
        out.update(smoothWindowMs=lb.smooth_window_ms, lowLoad=lb.low_load, highLoad=lb.high_load,
                   minAperture=lb.min_aperture)  # fmt: skip
    return out


def failure_accrual_json(a: FailureAccrualConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": a.kind}
    if a.kind == "none":
        return out
    if a.kind == "io.l5d.consecutiveFailures":
        out["failures"] = a.failures
    else:
        out["successRate"] = a.success_rate
        if a.kind == "io.l5d.successRate":
            out["requests"] = a.requests
        else:
            out["window"] = a.window_s
    out["backoff"] = backoff_json(a.backoff)
    return out


def pool_json(p: HostConnectionPool) -> dict[str, Any]:
    return {"minSize": p.min_size, "maxSize": p.max_size, "idleTimeMs": p.idle_time_ms, "maxWaiters": p.max_waiters}


def _settings_json(settings: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in settings:
        if name == "total_timeout_ms":
            out["totalTimeoutMs"] = v
        elif name == "retry_budget":
            out.setdefault("retries", {})["budget"] = budget_json(v)
        elif name == "retry_backoff":
            out.setdefault("retries", {})["backoff"] = backoff_json(v)
        elif name == "response_classifier":
            out["responseClassifier"] = classifier_json(v)
        elif name == "retry_buffer":
            out["retryBufferSize"] = {"requestBytes": v.request_bytes, "responseBytes": v.response_bytes}
        elif name == "classification_timeout_ms":
            out["classificationTimeoutMs"] = v
        elif name == "load_balancer":
            out["loadBalancer"] = load_balancer_json(v)
        elif name == "failure_accrual":
            out["failureAccrual"] = failure_accrual_json(v)
        elif name == "request_attempt_timeout_ms":
            out["requestAttemptTimeoutMs"] = v
        elif name == "host_connection_pool":
            out["hostConnectionPool"] = pool_json(v)
        elif name == "requeue_budget":
            out["requeueBudget"] = budget_json(v)
        else:  # a field added to a policy without its YAML name here
            raise AssertionError(f"no YAML key for policy field {name!r}")
    return out


def _static_json(configs: tuple[PrefixConfig, ...]) -> dict[str, Any]:
    return {"kind": "io.l5d.static", "configs": [{"prefix": c.prefix.text, **_settings_json(c.settings)} for c in configs]}


def service_json(router: RouterConfig) -> dict[str, Any]:
    """The `service` block for /config.json: a flat block with every value filled in, or
    a static one as written (each config's own keys)."""
    if router.service.kind == "io.l5d.static":
        return _static_json(router.service.configs)
    p = service_policy(router, Path.EMPTY)
    fields = [(f.name, getattr(p, f.name)) for f in dataclasses.fields(p)]
    if router.protocol != "h2":
        fields = [(n, v) for n, v in fields if n != "classification_timeout_ms"]
    return {"kind": "io.l5d.global", **_settings_json(tuple(fields))}


def client_policy_json(router: RouterConfig) -> dict[str, Any]:
    """The policy keys of the `client` block for /config.json, as `service_json`."""
    if router.client.kind == "io.l5d.static":
        return _static_json(router.client.configs)
    p = client_policy(router, Path.EMPTY)
    return {"kind": "io.l5d.global", **_settings_json(tuple((f.name, getattr(p, f.name)) for f in dataclasses.fields(p)))}
