"""Valid configs: Linkerd 1 shapes load unchanged, defaults are filled in, the demo
config routes the hello/world names, and `to_json` redacts secrets."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

import config
from config import (
    DEFAULT_TRUSTED_CIDRS,
    Admin,
    IdentifierConfig,
    Limits,
    OverrideConfig,
    ServerConfig,
    load_file,
    load_text,
    to_json,
)
from config.policy import (
    ClassifierConfig,
    FailureAccrualConfig,
    LoadBalancerConfig,
    client_policy,
    service_policy,
)
from dtab import Bound, Inet, Leaf, Path, Prefix, bind, read_dtab


def load(text: str, **kw) -> config.Config:
    return load_text(textwrap.dedent(text), source="config.yaml", **kw)


@pytest.fixture
def disco(tmp_path):
    (tmp_path / "disco").mkdir()
    return tmp_path


def test_linkerd_getting_started_config(disco):
    cfg = load(
        """
        admin:
          port: 9990
        namers:
        - kind: io.l5d.fs
          rootDir: disco
        routers:
        - protocol: http
          dtab: |
            /svc => /#/io.l5d.fs
          servers:
          - port: 4140
            ip: 0.0.0.0
        """,
        base_dir=str(disco),
    )
    assert cfg.admin == Admin(ip="127.0.0.1", port=9990)
    (namer,) = cfg.namers
    assert namer.kind == "io.l5d.fs"
    assert namer.prefix == Path.of("io.l5d.fs")
    assert namer.bind_prefix == Prefix((b"#", b"io.l5d.fs"))
    assert namer.root_dir == str(disco / "disco")
    assert namer.poll_interval_ms == 250
    (router,) = cfg.routers
    assert router.label == "http" and router.protocol == "http"
    assert router.dtab == read_dtab("/svc => /#/io.l5d.fs")
    assert router.dtab_text == "/svc => /#/io.l5d.fs\n"
    assert router.servers == (ServerConfig(ip="0.0.0.0", port=4140),)
    assert cfg.notes == ()


def test_linkerd_daemonset_hello_world_config(disco, caplog):
    cfg = load(
        """
        admin:
          ip: 0.0.0.0
          port: 9990
        namers:
        - kind: io.l5d.fs
          rootDir: disco
        telemetry:
        - kind: io.l5d.prometheus
        - kind: io.l5d.recentRequests
          sampleRate: 0.25
        usage:
          orgId: linkerd-examples-daemonset
        routers:
        - protocol: http
          label: outgoing
          dtab: |
            /srv        => /#/io.l5d.fs;
            /host       => /srv;
            /svc        => /host;
            /host/world => /srv/world-v1;
          interpreter:
            kind: default
          servers:
          - port: 4140
            ip: 0.0.0.0
          service:
            responseClassifier:
              kind: io.l5d.http.retryableRead5XX
        - protocol: http
          label: incoming
          dtab: |
            /srv        => /#/io.l5d.fs;
            /host       => /srv;
            /svc        => /host;
            /host/world => /srv/world-v1;
          servers:
          - port: 4141
            ip: 0.0.0.0
        """,
        base_dir=str(disco),
    )
    assert [r.label for r in cfg.routers] == ["outgoing", "incoming"]
    assert [s.port for r in cfg.routers for s in r.servers] == [4140, 4141]
    assert len(cfg.routers[0].dtab) == 4
    # the Linkerd-only blocks are accepted, noted with their lines, and logged
    assert cfg.notes == (
        "config.yaml:12: usage: ignored: usage reporting is not implemented (nothing is sent)",
        "config.yaml:9: telemetry[0]: io.l5d.prometheus: accepted, nothing to do: "
        "metrics are always served at /admin/metrics/prometheus",
        "config.yaml:10: telemetry[1]: io.l5d.recentRequests: accepted, nothing to do: "
        "recent requests are the playground's decisions (/delegator, /admin/sampling)",
    )
    assert cfg.telemetry == ()
    assert [r.getMessage() for r in caplog.records] == list(cfg.notes)
    # the service block is read, not ignored
    assert service_policy(cfg.routers[0], Path.of("svc", "x")).response_classifier == ClassifierConfig(
        "io.l5d.http.retryableRead5XX"
    )
    assert service_policy(cfg.routers[1], Path.of("svc", "x")).response_classifier == ClassifierConfig(
        "io.l5d.http.nonRetryable5XX"
    )


def test_linkerd_method_and_host_router_with_client_tuning(disco):
    cfg = load(
        """
        routers:
        - protocol: http
          label: linkerd-in
          dstPrefix: /http
          identifier:
            kind: io.l5d.methodAndHost
            httpUriInDst: true
          dtab: |
            /http/*/* => /#/io.l5d.fs/jclocal;
          servers:
          - port: 5051
            ip: 0.0.0.0
            maxConcurrentRequests: 2000
          client:
            loadBalancer:
              kind: ewma
            failureAccrual:
              kind: io.l5d.successRate
              successRate: 0.9
              requests: 1000
        """
    )
    (router,) = cfg.routers
    assert router.dst_prefix == Path.of("http")
    assert router.identifiers == (IdentifierConfig("io.l5d.methodAndHost", http_uri_in_dst=True),)
    assert router.servers[0].max_concurrent_requests == 2000
    assert router.client.protocol == "http"
    assert cfg.notes == ()  # the client tuning is read, not ignored
    policy = client_policy(router, Path.of("#", "io.l5d.fs", "jclocal"))
    assert policy.load_balancer == LoadBalancerConfig(kind="ewma")
    assert policy.failure_accrual == FailureAccrualConfig(kind="io.l5d.successRate", success_rate=0.9, requests=1000)


def test_h2_grpc_router():
    cfg = load(
        """
        routers:
        - protocol: h2
          experimental: true
          label: grpc
          identifier:
            kind: io.l5d.header.path
            segments: 1
          dtab: |
            /svc => /$/inet/127.0.0.1/8888;
          servers:
          - port: 0
        """
    )
    (router,) = cfg.routers
    assert router.protocol == "h2" and router.client.protocol == "h2"
    assert router.identifiers == (IdentifierConfig("io.l5d.header.path", segments=1),)
    assert router.servers == (ServerConfig(port=0),)


def test_h2_default_identifier_reads_authority_and_default_port():
    (router,) = load("routers: [{protocol: h2}]").routers
    assert router.identifiers == (IdentifierConfig("io.l5d.header.token", header=":authority"),)
    assert router.servers == (ServerConfig(port=4142),)


def test_defaults_of_a_minimal_router():
    cfg = load("routers:\n- protocol: http\n")
    assert cfg.admin is None and cfg.namers == () and cfg.source == "config.yaml"
    (r,) = cfg.routers
    assert r.label == "http"
    assert r.dst_prefix == Path.of("svc")
    assert r.identifiers == (IdentifierConfig("io.l5d.header.token", header="host"),)
    assert r.dtab == read_dtab("") and r.dtab_text == ""
    assert r.servers == (ServerConfig(ip="127.0.0.1", port=4140, clear_context=False),)
    assert (r.client.protocol, r.client.connect_timeout_ms, r.client.idle_timeout_ms) == ("http", 1000, 10000)
    assert r.client.max_connections is None and r.client.tls is None
    assert (r.timeout_ms, r.binding_timeout_ms) == (10000, 10000)
    assert r.overrides == OverrideConfig()
    assert r.limits == Limits(65536, 100, 10000, 60000, None)
    assert (r.add_forwarded, r.add_via) == (False, False)


def test_empty_admin_block_gives_default_admin():
    assert load("admin:\nrouters: [{protocol: http}]").admin == Admin("127.0.0.1", 9990)


def test_identifier_list_and_options():
    cfg = load(
        """
        routers:
        - protocol: http
          identifier:
          - kind: io.l5d.header
          - kind: io.l5d.header.token
            header: X-Service
          - kind: io.l5d.path
            segments: 2
            consume: true
          - kind: io.l5d.static
            path: /web
        """
    )
    assert cfg.routers[0].identifiers == (
        IdentifierConfig("io.l5d.header", header="l5d-name"),
        IdentifierConfig("io.l5d.header.token", header="x-service"),
        IdentifierConfig("io.l5d.path", segments=2, consume=True),
        IdentifierConfig("io.l5d.static", path=Path.of("web")),
    )


def test_our_own_keys(tmp_path):
    (tmp_path / "hmac.key").write_bytes(b"0123456789abcdef0123\n")
    cfg = load(
        """
        routers:
        - protocol: http
          label: edge
          servers:
          - {ip: 0.0.0.0, port: 80, clearContext: true}
          - {ip: 127.0.0.1, port: 4140}
          client: {protocol: h2, connectTimeoutMs: 250, idleTimeoutMs: 5000, maxConnections: 64}
          timeoutMs: 2000
          bindingTimeoutMs: 3000
          overrides:
            trust:
              cidrs: [10.1.0.0/16, "fd00::/8"]
              hmac: {keyFile: hmac.key}
            maxBytes: 1024
            maxEntries: 8
            allowPrefixes: [/svc/world, /svc/*/beta]
          limits: {maxHeaderBytes: 8192, maxHeaders: 50, headerReadTimeoutMs: 500,
                   idleTimeoutMs: 1000, maxRequestBodyBytes: 1048576}
          addForwarded: true
          addVia: true
        """,
        base_dir=str(tmp_path),
    )
    (r,) = cfg.routers
    assert r.servers[0].clear_context and not r.servers[1].clear_context
    assert (r.client.protocol, r.client.connect_timeout_ms, r.client.max_connections) == ("h2", 250, 64)
    assert (r.timeout_ms, r.binding_timeout_ms) == (2000, 3000)
    o = r.overrides
    assert o.cidrs == (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00::/8"))
    assert o.trusted_cidrs(clear_context=True) == o.cidrs
    assert o.hmac is not None and o.hmac.header == "l5d-dtab-sig"
    assert o.hmac.key == b"0123456789abcdef0123"  # trailing newline of the file dropped
    assert "0123456789" not in repr(o.hmac)
    assert (o.max_bytes, o.max_entries) == (1024, 8)
    assert o.allow_prefixes == (Prefix.read("/svc/world"), Prefix((b"svc", None, b"beta")))
    assert r.limits == Limits(8192, 50, 500, 1000, 1048576)
    assert r.add_forwarded and r.add_via


def test_default_trust_depends_on_clear_context():
    o = OverrideConfig()
    assert o.trusted_cidrs(clear_context=False) == DEFAULT_TRUSTED_CIDRS
    assert o.trusted_cidrs(clear_context=True) == ()
    nets = {str(n) for n in DEFAULT_TRUSTED_CIDRS}
    assert nets == {"127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7"}


def test_explicit_empty_cidrs_trusts_no_address():
    cfg = load("routers:\n- protocol: http\n  overrides: {trust: {cidrs: []}}\n")
    assert cfg.routers[0].overrides.trusted_cidrs(clear_context=False) == ()


def test_linkerd_aliases_base_dtab_max_headers_kb_and_forwarded_header():
    cfg = load(
        """
        routers:
        - protocol: http
          baseDtab: |
            /svc => /$/inet/127.0.0.1/1;
          maxHeadersKB: 16
          addForwardedHeader:
            by: {kind: ip}
            for: {kind: ip}
        """
    )
    (r,) = cfg.routers
    assert r.dtab == read_dtab("/svc => /$/inet/127.0.0.1/1")
    assert r.limits.max_header_bytes == 16 * 1024
    assert r.add_forwarded
    assert len(cfg.notes) == 1 and "routers[0].addForwardedHeader" in cfg.notes[0]


def test_yaml_anchors_and_merge_keys():
    cfg = load(
        """
        routers:
        - protocol: http
          label: a
          servers: [{port: 0}]
          limits: &lim {maxHeaders: 10, idleTimeoutMs: 500}
        - protocol: http
          label: b
          servers: [{port: 0}]
          limits:
            <<: *lim
            maxHeaders: 20
        """
    )
    assert cfg.routers[0].limits.max_headers == 10
    assert cfg.routers[1].limits.max_headers == 20  # own key beats the merged one
    assert cfg.routers[1].limits.idle_timeout_ms == 500


def test_port_zero_never_clashes():
    cfg = load("routers:\n- protocol: http\n  servers: [{port: 0}, {port: 0}]\n")
    assert [s.port for s in cfg.routers[0].servers] == [0, 0]


def test_same_port_on_different_addresses_is_fine():
    cfg = load(
        "routers:\n- protocol: http\n  servers: [{ip: 127.0.0.1, port: 80}, {ip: 127.0.0.2, port: 80}]\n"
    )
    assert len(cfg.routers[0].servers) == 2


def test_load_file_resolves_relative_paths_from_the_file(tmp_path, monkeypatch):
    (tmp_path / "etc" / "disco").mkdir(parents=True)
    path = tmp_path / "etc" / "linkerd.yaml"
    path.write_text(
        "namers:\n- kind: io.l5d.fs\n  rootDir: disco\n  prefix: /disco\nrouters:\n- protocol: http\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_file(path)
    assert cfg.source == str(path)
    assert cfg.namers[0].root_dir == str(tmp_path / "etc" / "disco")
    assert cfg.namers[0].bind_prefix == Prefix((b"#", b"disco"))


def test_default_config_routes_the_demo_names():
    cfg = config.default_config()
    assert cfg.admin == Admin("127.0.0.1", 9990)
    (r,) = cfg.routers
    assert r.label == "http" and r.servers == (ServerConfig("127.0.0.1", 4140),)
    assert r.identifiers == (IdentifierConfig("io.l5d.header.token", header="host"),)

    def target(path: str) -> Inet:
        tree = bind(r.dtab, Path.read(path))
        assert isinstance(tree, Leaf) and isinstance(tree.value, Bound)
        return tree.value.addr

    assert target("/svc/www.hello.world") == Inet("127.0.0.1", 7777)
    assert target("/svc/world") == Inet("127.0.0.1", 7778)
    assert target("/srv/world-v2") == Inet("127.0.0.1", 7779)
    # the demo's override: send world to v2 for one request
    assert bind(
        r.dtab + read_dtab("/host/world => /srv/world-v2"), Path.read("/svc/world")
    ).value.addr == Inet("127.0.0.1", 7779)


def test_to_json_is_the_effective_config_with_secrets_redacted():
    cfg = load(
        """
        admin: {port: 9991}
        routers:
        - protocol: http
          label: out
          dtab: |
            /svc => /$/inet/127.0.0.1/1;  # a comment
          overrides:
            trust:
              hmac: {header: X-Sig, key: "super-secret-key-0123456789"}
        """
    )
    out = to_json(cfg)
    assert out["admin"] == {"ip": "127.0.0.1", "port": 9991, "shutdownGraceMs": 10000, "hosts": []}
    (r,) = out["routers"]
    assert r["label"] == "out" and r["dtab"] == "/svc=>/$/inet/127.0.0.1/1"
    assert r["identifier"] == [{"kind": "io.l5d.header.token", "header": "host"}]
    assert r["servers"] == [{"ip": "127.0.0.1", "port": 4140, "clearContext": False}]
    assert r["overrides"]["trust"] == {"hmac": {"header": "x-sig", "key": "<redacted>"}}
    assert "super-secret" not in repr(out)
    # it is itself a loadable config (modulo the redacted secret)
    del r["overrides"]["trust"]["hmac"]
    import yaml

    again = load_text(yaml.safe_dump(out))
    assert again.routers[0].dtab == cfg.routers[0].dtab
    assert again.routers[0].limits == cfg.routers[0].limits
    assert again.admin == cfg.admin


def test_configs_are_frozen():
    cfg = load("routers: [{protocol: http}]")
    with pytest.raises(AttributeError):
        cfg.routers[0].label = "x"  # type: ignore[misc]
    assert not hasattr(cfg.routers[0], "__dict__")  # slots
