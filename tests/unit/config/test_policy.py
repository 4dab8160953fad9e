"""The `service` and `client` policy blocks: parsing, Linkerd's prefix resolution,
errors with line and key, and /config.json."""

from __future__ import annotations

import textwrap

import pytest

from config import ConfigError, load_text, to_json
from config.policy import (
    DEFAULT_ACCRUAL_BACKOFF,
    BackoffConfig,
    ClassifierConfig,
    ClientPolicy,
    FailureAccrualConfig,
    HostConnectionPool,
    LoadBalancerConfig,
    PathMatcher,
    PrefixError,
    RetryBudgetConfig,
    RetryBufferSize,
    ServicePolicy,
    client_policy,
    service_policy,
)
from dtab import Path


def router(text: str):
    (r,) = load_text(textwrap.dedent(text), source="config.yaml").routers
    return r


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(textwrap.dedent(text), source="config.yaml")
    return info.value


P = Path.read


def test_defaults_without_blocks():
    http = router("routers:\n- protocol: http\n")
    assert service_policy(http, P("/svc/web")) == ServicePolicy(ClassifierConfig("io.l5d.http.nonRetryable5XX"))
    h2 = router("routers:\n- protocol: h2\n")
    sp = service_policy(h2, P("/svc/web"))
    assert sp.response_classifier == ClassifierConfig("io.l5d.h2.nonRetryable5XX")
    assert (sp.total_timeout_ms, sp.retry_budget, sp.retry_backoff) == (None, RetryBudgetConfig(), BackoffConfig("constant", 0))
    assert sp.retry_buffer == RetryBufferSize(16_383, 16_383) and sp.classification_timeout_ms == 100
    cp = client_policy(http, P("/#/io.l5d.fs/web"))
    assert cp == ClientPolicy(host_connection_pool=HostConnectionPool(idle_time_ms=10_000))
    assert cp.load_balancer == LoadBalancerConfig("ewma", max_effort=5, decay_time_ms=10_000)
    assert cp.failure_accrual == FailureAccrualConfig("io.l5d.consecutiveFailures", failures=5)
    assert cp.failure_accrual.backoff == BackoffConfig("equalJittered", min_ms=5_000, max_ms=300_000)
    assert cp.requeue_budget == RetryBudgetConfig(10, 10, 0.2)
    assert http.limits.stream_idle_timeout_ms == 300_000


def test_global_service_block_linkerd_docs_example():
    r = router(
        """
        routers:
        - protocol: http
          service:
            kind: io.l5d.global
            totalTimeoutMs: 500
            retries:
              budget:
                minRetriesPerSec: 5
                percentCanRetry: 0.5
                ttlSecs: 15
              backoff:
                kind: jittered
                minMs: 10
                maxMs: 10000
            responseClassifier:
              kind: io.l5d.http.retryableRead5XX
            retryBufferSize: {requestBytes: 65536}
        """
    )
    sp = service_policy(r, P("/svc/anything/at/all"))
    assert sp.total_timeout_ms == 500
    assert sp.retry_budget == RetryBudgetConfig(ttl_secs=15, min_retries_per_sec=5, percent_can_retry=0.5)
    assert sp.retry_backoff == BackoffConfig("jittered", min_ms=10, max_ms=10_000)
    assert sp.response_classifier == ClassifierConfig("io.l5d.http.retryableRead5XX")
    assert sp.retry_buffer == RetryBufferSize(65_536, 16_383)
    assert service_policy(r, Path.EMPTY) == sp  # io.l5d.global: every name


STATIC_SERVICE = """
routers:
- protocol: http
  service:
    kind: io.l5d.static
    configs:
    - prefix: /svc
      totalTimeoutMs: 1000
      retries:
        budget: {percentCanRetry: 0.5}
    - prefix: /svc/foo
      totalTimeoutMs: 500
      responseClassifier: {kind: io.l5d.http.retryableIdempotent5XX}
    - prefix: /svc/*/admin
      retries:
        backoff: {kind: constant, ms: 50}
    - prefix: /svc/{service}-canary
      totalTimeoutMs: 200
"""


def test_static_service_configs_apply_in_order_later_keys_winning():
    r = router(STATIC_SERVICE)
    base = service_policy(r, P("/other"))
    assert base.total_timeout_ms is None
    svc = service_policy(r, P("/svc/bar"))
    assert svc.total_timeout_ms == 1000 and svc.retry_budget.percent_can_retry == 0.5
    foo = service_policy(r, P("/svc/foo/x"))
    # the later prefix sets the timeout and classifier; the budget stays from /svc
    assert foo.total_timeout_ms == 500
    assert foo.retry_budget.percent_can_retry == 0.5
    assert foo.response_classifier.kind == "io.l5d.http.retryableIdempotent5XX"
    admin = service_policy(r, P("/svc/foo/admin"))
    assert admin.retry_backoff == BackoffConfig("constant", ms=50)
    assert admin.total_timeout_ms == 500 and admin.retry_budget.percent_can_retry == 0.5
    assert service_policy(r, P("/svc/web-canary")).total_timeout_ms == 200
    assert service_policy(r, P("/svc/web-canaryx")).total_timeout_ms == 1000  # the whole segment
    assert service_policy(r, P("/svc")).total_timeout_ms == 1000
    assert service_policy(r, P("/sv")).total_timeout_ms is None


def test_static_client_configs_match_bound_ids():
    r = router(
        """
        routers:
        - protocol: http
          client:
            kind: io.l5d.static
            maxConnections: 50
            configs:
            - prefix: /#/io.l5d.fs
              loadBalancer: {kind: p2c, maxEffort: 3}
              requeueBudget: {percentCanRetry: 0.5}
            - prefix: /#/io.l5d.fs/{service}
              failureAccrual: {kind: io.l5d.consecutiveFailures, failures: 10}
            - prefix: /$/inet/*/80
              failureAccrual: {kind: none}
              requestAttemptTimeoutMs: 250
              hostConnectionPool: {minSize: 1, maxSize: 8, idleTimeMs: 1000, maxWaiters: 100}
        """
    )
    assert r.client.kind == "io.l5d.static" and r.client.max_connections == 50
    fs = client_policy(r, P("/#/io.l5d.fs/web"))
    assert fs.load_balancer == LoadBalancerConfig("p2c", max_effort=3)
    assert fs.failure_accrual == FailureAccrualConfig("io.l5d.consecutiveFailures", failures=10)
    assert fs.requeue_budget.percent_can_retry == 0.5
    assert fs.host_connection_pool == HostConnectionPool(max_size=50, idle_time_ms=10_000)  # router-wide
    inet = client_policy(r, P("/$/inet/10.0.0.1/80"))
    assert inet.failure_accrual.kind == "none" and inet.request_attempt_timeout_ms == 250
    assert inet.host_connection_pool == HostConnectionPool(1, 8, 1000, 100)
    assert inet.load_balancer == LoadBalancerConfig()  # no match for the balancer: the default
    assert client_policy(r, P("/$/inet/10.0.0.1/8080")) == ClientPolicy(
        host_connection_pool=HostConnectionPool(max_size=50, idle_time_ms=10_000)
    )


def test_flat_client_policy_keys_and_aperture_options():
    r = router(
        """
        routers:
        - protocol: h2
          client:
            loadBalancer:
              kind: aperture
              maxEffort: 7
              smoothWindowMs: 2000
              lowLoad: 1
              highLoad: 3.5
              minAperture: 4
              enableProbation: false
            failureAccrual:
              kind: io.l5d.successRateWindowed
              successRate: 0.9
              window: 30
              backoff: {kind: constant, ms: 2000}
            requestAttemptTimeoutMs: 800
            hostConnectionPool: {maxSize: 4}
          service:
            responseClassifier:
              kind: io.l5d.h2.grpc.retryableStatusCodes
              retryableStatusCodes: [2, 14]
              successStatusCodes: [0, 5]
            classificationTimeoutMs: 250
          limits: {streamIdleTimeoutMs: 0}
        """
    )
    cp = client_policy(r, P("/#/io.l5d.fs/x"))
    assert cp.load_balancer == LoadBalancerConfig("aperture", 7, 10_000, 2_000, 1.0, 3.5, 4)
    assert cp.failure_accrual == FailureAccrualConfig(
        "io.l5d.successRateWindowed", success_rate=0.9, window_s=30, backoff=BackoffConfig("constant", ms=2000)
    )
    assert cp.request_attempt_timeout_ms == 800
    assert cp.host_connection_pool == HostConnectionPool(max_size=4, idle_time_ms=10_000)
    sp = service_policy(r, P("/svc/helloworld.Greeter"))
    assert sp.response_classifier == ClassifierConfig(
        "io.l5d.h2.grpc.retryableStatusCodes", frozenset({2, 14}), frozenset({0, 5})
    )
    assert sp.classification_timeout_ms == 250
    assert r.limits.stream_idle_timeout_ms is None  # 0: never


@pytest.mark.parametrize(
    ("text", "matches", "misses"),
    [
        ("/", ["/", "/a", "/a/b"], []),
        ("/svc", ["/svc", "/svc/a"], ["/", "/sv", "/svcx", "/x/svc"]),
        ("/svc/*/admin", ["/svc/a/admin", "/svc/b/admin/x"], ["/svc/a", "/svc/a/b"]),
        ("/#/io.l5d.fs/{service}", ["/#/io.l5d.fs/web"], ["/#/io.l5d.fs"]),
        ("/svc/{a}.{b}", ["/svc/x.y", "/svc/x.y.z"], ["/svc/xy"]),
        ("/$/inet/*/80", ["/$/inet/10.0.0.1/80"], ["/$/inet/10.0.0.1/8080"]),
    ],
)
def test_prefix_matching(text, matches, misses):
    m = PathMatcher.read(text)
    for p in matches:
        assert m.matches(P(p)), p
    for p in misses:
        assert not m.matches(P(p)), p


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("svc", "starts with '/'"),
        ("/svc//x", "empty segment in prefix: /svc/[]/x"),
        ("/svc/{x", "a capture is"),
        ("/svc/x}y", "a capture is"),
        ("/svc/a b", "unexpected character in prefix segment: /svc/[a b]"),
        ("/svc/a*", "unexpected character"),
    ],
)
def test_bad_prefixes(text, message):
    with pytest.raises(PrefixError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PathMatcher.read(text)


R = "routers:\n- protocol: http\n"
R2 = "routers:\n- protocol: h2\n"


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        (R + "  service:\n    responseClassifier:\n      kind: io.l5d.h2.retryableRead5XX\n", 5,
         "routers[0].service.responseClassifier.kind",
         "response classifier io.l5d.h2.retryableRead5XX does not apply to http routers (use io.l5d.http.retryableRead5XX)"),
        (R2 + "  service:\n    responseClassifier: {kind: io.l5d.http.nonRetryable5XX}\n", 4,
         "routers[0].service.responseClassifier.kind", "does not apply to h2 routers (use io.l5d.h2.nonRetryable5XX)"),
        (R2 + "  service:\n    responseClassifier: {kind: io.l5d.h2.grpc.default, retryableStatusCodes: [1]}\n", 4,
         "routers[0].service.responseClassifier", "unknown key 'retryableStatusCodes'"),
        (R2 + "  service:\n    responseClassifier:\n      kind: io.l5d.h2.grpc.retryableStatusCodes\n", 5,
         "routers[0].service.responseClassifier", "missing required key 'retryableStatusCodes'"),
        (R2 + "  service:\n    responseClassifier:\n      kind: io.l5d.h2.grpc.retryableStatusCodes\n"
         "      retryableStatusCodes: [14, x]\n", 6,
         "routers[0].service.responseClassifier.retryableStatusCodes[1]", "expected a gRPC status code"),
        (R + "  service:\n    responseClassifier: {kind: io.l5d.http.retryableReads5XX}\n", 4,
         "routers[0].service.responseClassifier.kind", "did you mean 'io.l5d.http.retryableRead5XX'"),
        (R + "  service:\n    classificationTimeoutMs: 100\n", 4,
         "routers[0].service.classificationTimeoutMs", "applies to h2 routers"),
        (R + "  service:\n    totalTimeoutMs: 0\n", 4, "routers[0].service.totalTimeoutMs", "expected a duration"),
        (R + "  service:\n    retries:\n      budget:\n        ttlSecs: 0\n", 6,
         "routers[0].service.retries.budget.ttlSecs", "expected a ttl of 1-60 seconds, got 0"),
        (R + "  service:\n    retries:\n      budget: {percentCanRetry: 1001}\n", 5,
         "routers[0].service.retries.budget.percentCanRetry", "0 to 1000"),
        (R + "  service:\n    retries:\n      budget: {percentCanRetry: yes}\n", 5,
         "routers[0].service.retries.budget.percentCanRetry", "got yes"),
        (R + "  service:\n    retries:\n      backoff: {kind: jittered, minMs: 10}\n", 5,
         "routers[0].service.retries.backoff", "missing required key 'maxMs'"),
        (R + "  service:\n    retries:\n      backoff:\n        kind: jittered\n        minMs: 100\n        maxMs: 10\n", 7,
         "routers[0].service.retries.backoff.minMs", "minMs 100 is above maxMs 10"),
        (R + "  service:\n    retries:\n      backoff: {kind: exponential}\n", 5,
         "routers[0].service.retries.backoff.kind", "unknown backoff kind 'exponential'"),
        (R + "  service:\n    retries:\n      backoff: {kind: constant, minMs: 1}\n", 5,
         "routers[0].service.retries.backoff", "unknown key 'minMs'"),
        (R + "  service:\n    kind: io.l5d.static\n", 4, "routers[0].service", "needs 'configs'"),
        (R + "  service:\n    kind: io.l5d.static\n    configs:\n    - totalTimeoutMs: 5\n", 6,
         "routers[0].service.configs[0]", "missing required key 'prefix'"),
        (R + "  service:\n    kind: io.l5d.static\n    configs:\n    - prefix: /svc//x\n", 6,
         "routers[0].service.configs[0].prefix", "invalid prefix: empty segment in prefix: /svc/[]/x"),
        (R + "  service:\n    kind: io.l5d.static\n    totalTimeoutMs: 5\n    configs: []\n", 5,
         "routers[0].service", "unknown key 'totalTimeoutMs'"),
        (R + "  service:\n    kind: io.l5d.perPath\n", 4, "routers[0].service.kind", "unknown service kind"),
        (R + "  responseClassifier:\n    kind: io.l5d.http.retryableRead5XX\n", 3,
         "routers[0].responseClassifier", "set service.responseClassifier"),
        (R + "  client:\n    retries:\n      budget: {}\n", 4, "routers[0].client.retries", "set service.retries"),
        (R + "  client:\n    loadBalancer:\n      kind: ewma\n      enableProbation: true\n", 6,
         "routers[0].client.loadBalancer.enableProbation", "not supported yet"),
        (R + "  client:\n    loadBalancer:\n      kind: p2c\n      decayTimeMs: 100\n", 6,
         "routers[0].client.loadBalancer", "unknown key 'decayTimeMs'"),
        (R + "  client:\n    loadBalancer:\n      kind: leastConn\n", 5,
         "routers[0].client.loadBalancer.kind", "unknown load balancer kind 'leastConn'"),
        (R + "  client:\n    loadBalancer:\n      kind: aperture\n      lowLoad: 3\n", 6,
         "routers[0].client.loadBalancer.lowLoad", "the load band needs lowLoad < highLoad, got 3.0 and 2.0"),
        (R + "  client:\n    loadBalancer: {kind: ewma, maxEffort: 0}\n", 4,
         "routers[0].client.loadBalancer.maxEffort", "a number of tries 1-100"),
        (R + "  client:\n    failureAccrual:\n      failures: 3\n", 5,
         "routers[0].client.failureAccrual", "missing required key 'kind'"),
        (R + "  client:\n    failureAccrual:\n      kind: io.l5d.successRate\n      successRate: 0.9\n", 5,
         "routers[0].client.failureAccrual", "missing required key 'requests'"),
        (R + "  client:\n    failureAccrual:\n      kind: io.l5d.successRate\n      successRate: 1.5\n      requests: 10\n", 6,
         "routers[0].client.failureAccrual.successRate", "a success rate from 0 to 1, got 1.5"),
        (R + "  client:\n    failureAccrual:\n      kind: none\n      backoff: {kind: constant}\n", 6,
         "routers[0].client.failureAccrual", "unknown key 'backoff'"),
        (R + "  client:\n    failureAccrual:\n      kind: io.l5d.consecutiveFailures\n      failures: 0\n", 6,
         "routers[0].client.failureAccrual.failures", "a failure count, 1 or more"),
        (R + "  client:\n    maxConnections: 5\n    hostConnectionPool:\n      maxSize: 10\n", 6,
         "routers[0].client.hostConnectionPool.maxSize", "set 'maxConnections' or 'hostConnectionPool.maxSize', not both"),
        (R + "  client:\n    hostConnectionPool:\n      minSize: 10\n      maxSize: 5\n", 5,
         "routers[0].client.hostConnectionPool.minSize", "minSize 10 is above maxSize 5"),
        (R + "  client:\n    hostConnectionPool:\n      maxWaitres: 5\n", 5,
         "routers[0].client.hostConnectionPool", "unknown key 'maxWaitres' (did you mean 'maxWaiters'?)"),
        (R + "  client:\n    requestAttemptTimeoutMs: -1\n", 4,
         "routers[0].client.requestAttemptTimeoutMs", "expected a duration"),
        (R + "  client:\n    configs: []\n", 4, "routers[0].client.configs", "'configs' needs kind: io.l5d.static"),
        (R + "  client:\n    kind: io.l5d.static\n    loadBalancer: {kind: p2c}\n    configs: []\n", 5,
         "routers[0].client.loadBalancer", "goes in a configs[] entry"),
        (R + "  client:\n    kind: io.l5d.static\n    configs:\n    - prefix: /#\n      connectTimeoutMs: 5\n", 7,
         "routers[0].client.configs[0].connectTimeoutMs", "applies to the whole router"),
        (R + "  client:\n    kind: io.l5d.static\n    configs:\n    - prefix: /#\n      retries: {}\n", 7,
         "routers[0].client.configs[0].retries", "set service.retries"),
        (R + "  client:\n    kind: io.l5d.static\n    configs:\n    - prefix: 5\n", 6,
         "routers[0].client.configs[0].prefix", "expected a prefix like '/svc/web', got 5"),
        (R + "  client:\n    kind: io.l5d.static\n    configs:\n    - prefix: /#\n      loadBalancer: {kind: nope}\n", 7,
         "routers[0].client.configs[0].loadBalancer.kind", "unknown load balancer kind"),
        (R + "  limits:\n    streamIdleTimeoutMs: -5\n", 4, "routers[0].limits.streamIdleTimeoutMs", "0: never"),
    ],
)  # fmt: skip
def test_errors_name_line_and_key(text, line, key, message):
    e = error(text)
    assert (e.source, e.line, e.key) == ("config.yaml", line, key), str(e)
    assert message in e.message, str(e)


def test_client_session_is_refused_with_its_line_and_key():
    with pytest.raises(ConfigError, match=r"config\.yaml:4: routers\[0\]\.client\.clientSession: not supported"):
        load_text(R + "  client:\n    clientSession: {idleTimeMs: 5}\n", source="config.yaml")


def test_config_json_shows_the_policies():
    cfg = load_text(textwrap.dedent(STATIC_SERVICE), source="config.yaml")
    (r,) = to_json(cfg)["routers"]
    assert r["service"] == {
        "kind": "io.l5d.static",
        "configs": [
            {"prefix": "/svc", "totalTimeoutMs": 1000,
             "retries": {"budget": {"ttlSecs": 10, "minRetriesPerSec": 10, "percentCanRetry": 0.5}}},
            {"prefix": "/svc/foo", "totalTimeoutMs": 500,
             "responseClassifier": {"kind": "io.l5d.http.retryableIdempotent5XX"}},
            {"prefix": "/svc/*/admin", "retries": {"backoff": {"kind": "constant", "ms": 50}}},
            {"prefix": "/svc/{service}-canary", "totalTimeoutMs": 200},
        ],
    }  # fmt: skip
    assert r["limits"]["streamIdleTimeoutMs"] == 300_000
    # flat blocks show every value, defaults filled in
    (flat,) = to_json(load_text("routers:\n- protocol: h2\n"))["routers"]
    assert flat["service"] == {
        "kind": "io.l5d.global",
        "totalTimeoutMs": None,
        "retries": {"budget": {"ttlSecs": 10, "minRetriesPerSec": 10, "percentCanRetry": 0.2},
                    "backoff": {"kind": "constant", "ms": 0}},
        "responseClassifier": {"kind": "io.l5d.h2.nonRetryable5XX"},
        "retryBufferSize": {"requestBytes": 16383, "responseBytes": 16383},
        "classificationTimeoutMs": 100,
    }  # fmt: skip
    client = flat["client"]
    assert client["kind"] == "io.l5d.global"
    assert client["loadBalancer"] == {"kind": "ewma", "maxEffort": 5, "decayTimeMs": 10000}
    assert client["failureAccrual"] == {
        "kind": "io.l5d.consecutiveFailures", "failures": 5,
        "backoff": {"kind": "equalJittered", "minMs": 5000, "maxMs": 300000},
    }  # fmt: skip
    assert client["requestAttemptTimeoutMs"] is None
    assert client["hostConnectionPool"] == {"minSize": 0, "maxSize": None, "idleTimeMs": 10000, "maxWaiters": None}
    assert client["requeueBudget"] == {"ttlSecs": 10, "minRetriesPerSec": 10, "percentCanRetry": 0.2}


def test_config_json_round_trips_through_the_loader():
    """What /config.json shows for the policy blocks loads back to the same policies."""
    import yaml

    src = load_text(
        textwrap.dedent(STATIC_SERVICE)
        + "  client:\n    loadBalancer: {kind: aperture}\n    failureAccrual: {kind: io.l5d.successRate, successRate: 0.8, requests: 50}\n"
    )
    (r,) = to_json(src)["routers"]
    client = {k: v for k, v in r["client"].items() if k != "hostConnectionPool"}  # maxConnections' twin
    again = load_text(yaml.safe_dump({"routers": [{"protocol": "http", "service": r["service"], "client": client}]}))
    (r2,) = again.routers
    for path in ("/svc/foo/admin", "/svc/a-canary", "/x"):
        assert service_policy(r2, P(path)) == service_policy(src.routers[0], P(path))
    assert client_policy(r2, P("/#/x")) == client_policy(src.routers[0], P("/#/x"))
    assert client_policy(r2, P("/#/x")).failure_accrual.backoff == DEFAULT_ACCRUAL_BACKOFF
