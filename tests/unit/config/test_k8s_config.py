"""Config keys for Kubernetes: the io.l5d.k8s namer, interpreter transformers,
`resources: {kind: io.l5d.k8s}` and `dtabStore`: values, defaults, where the API is
taken from, and errors that name the file, line and key."""

from __future__ import annotations

import pytest

from config import ConfigError, load_text, to_json
from config.schema import K8sApiConfig
from dtab import Path

FULL = """\
namers:
- kind: io.l5d.k8s
  host: 127.0.0.1
  port: 8001
  labelSelector: version
routers:
- protocol: http
  label: outgoing
  dtab: /svc => /#/io.l5d.k8s/default/http;
  interpreter:
    kind: default
    transformers:
    - kind: io.l5d.k8s.daemonset
      namespace: dtabproxy
      port: incoming
      service: l5d
  resources: [{kind: io.l5d.k8s, namespaces: [default, shop]}]
  dtabStore: {kind: io.l5d.k8s, namespace: dtabproxy}
  servers: [{port: 4140}]
- protocol: http
  label: incoming
  interpreter:
    kind: default
    transformers:
    - kind: io.l5d.k8s.localnode
      hostNetwork: true
    - kind: io.l5d.k8s.daemonset
      namespace: dtabproxy
      port: 4141
      service: l5d
      k8sHost: 10.0.0.1
      k8sPort: 8080
      hostNetwork: true
  servers: [{port: 4141}]
"""


def test_every_key_and_where_the_api_comes_from():
    cfg = load_text(FULL, source="config.yaml")
    (namer,) = cfg.namers
    assert namer.kind == "io.l5d.k8s" and namer.api == K8sApiConfig("127.0.0.1", 8001)
    assert namer.label_selector == "version" and namer.prefix == Path.of("io.l5d.k8s")
    out, inc = cfg.routers
    (ds,) = out.transformers
    assert (ds.kind, ds.namespace, ds.port, ds.service, ds.host_network) == ("io.l5d.k8s.daemonset", "dtabproxy", "incoming", "l5d", False)
    assert ds.prefix == Path.of("%", "io.l5d.k8s.daemonset", "dtabproxy", "incoming", "l5d")
    assert ds.api == namer.api  # no k8sHost: the namer's API
    assert ds.where == "config.yaml:13: routers[0].interpreter.transformers[0]"
    assert out.k8s_resources is not None and out.k8s_resources.namespaces == ("default", "shop")
    assert out.k8s_resources.api == namer.api and out.resources == ()
    assert out.dtab_store is not None
    assert (out.dtab_store.namespace, out.dtab_store.name, out.dtab_store.api) == ("dtabproxy", "outgoing", namer.api)
    ln, ds2 = inc.transformers
    assert ln.kind == "io.l5d.k8s.localnode" and ln.host_network and ln.prefix == Path.of("%", "io.l5d.k8s.localnode")
    assert ds2.api == K8sApiConfig("10.0.0.1", 8080) and ds2.port == "4141"
    j = to_json(cfg)
    assert j["namers"] == [{"kind": "io.l5d.k8s", "prefix": "/io.l5d.k8s", "host": "127.0.0.1", "port": 8001, "labelSelector": "version"}]
    r = j["routers"][0]
    assert r["resources"] == [{"kind": "io.l5d.k8s", "namespaces": ["default", "shop"], "host": "127.0.0.1", "port": 8001}]
    assert r["dtabStore"] == {"kind": "io.l5d.k8s", "namespace": "dtabproxy", "name": "outgoing", "host": "127.0.0.1", "port": 8001}
    assert r["interpreter"]["transformers"][0]["prefix"] == "/%/io.l5d.k8s.daemonset/dtabproxy/incoming/l5d"


def test_without_host_everything_is_in_cluster():
    cfg = load_text("namers: [{kind: io.l5d.k8s}]\nrouters: [{protocol: http, dtabStore: {kind: io.l5d.k8s}}]\n")
    assert cfg.namers[0].api == K8sApiConfig(None)
    store = cfg.routers[0].dtab_store
    assert store is not None and store.api == K8sApiConfig(None) and (store.namespace, store.name) == ("default", "http")
    assert to_json(cfg)["namers"][0]["host"] is None


@pytest.mark.parametrize(("text", "line", "key", "message"), [
    ("namers: [{kind: io.l5d.k8s, port: 80}]\nrouters: [{protocol: http}]\n", 1, "namers[0].port", "'port' needs 'host' too"),
    ("namers: [{kind: io.l5d.k8s, labelSelector: 'a b'}]\nrouters: [{protocol: http}]\n", 1, "namers[0].labelSelector", "expected a label key"),
    ("namers: [{kind: io.l5d.k8s, rootDir: x}]\nrouters: [{protocol: http}]\n", 1, "namers[0]", "unknown key 'rootDir'"),
    ("namers: [{kind: io.l5d.k8s, transformers: []}]\nrouters: [{protocol: http}]\n", 1, "namers[0].transformers", "router's interpreter.transformers"),
    ("routers:\n- protocol: http\n  interpreter:\n    kind: default\n    transformers:\n    - kind: io.l5d.port\n", 6,
     "routers[0].interpreter.transformers[0].kind", "transformer kind 'io.l5d.port' is not supported yet"),
    ("routers:\n- protocol: http\n  interpreter:\n    kind: default\n    transformers:\n    - kind: io.l5d.k8s.daemonset\n      namespace: x\n      service: y\n", 6,
     "routers[0].interpreter.transformers[0]", "missing required key 'port'"),
    ("routers:\n- protocol: http\n  interpreter:\n    kind: default\n    transformers:\n    - {kind: io.l5d.k8s.daemonset, namespace: Bad_NS, service: y, port: p}\n", 6,
     "routers[0].interpreter.transformers[0].namespace", "expected a namespace name"),
    ("routers:\n- protocol: http\n  interpreter:\n    kind: default\n    transformers:\n    - {kind: io.l5d.k8s.localnode, namespace: x}\n", 6,
     "routers[0].interpreter.transformers[0]", "unknown key 'namespace'"),
    ("routers:\n- protocol: http\n  label: Out_1\n  dtabStore: {kind: io.l5d.k8s}\n", 4, "routers[0].dtabStore", "set 'name'"),
    ("routers:\n- protocol: http\n  dtabStore: {kind: io.l5d.zk}\n", 3, "routers[0].dtabStore.kind", "'io.l5d.zk' is not supported yet"),
    ("routers:\n- protocol: http\n  resources: {kind: io.l5d.k8s}\n", 3, "routers[0].resources.namespaces", "at least one"),
    ("routers:\n- protocol: http\n  resources: [{kind: io.l5d.k8s, namespaces: [a]}, {kind: io.l5d.k8s, namespaces: [b]}]\n", 3,
     "routers[0].resources[1]", "only one"),
    ("routers:\n- protocol: http\n  resources: {kind: io.l5d.k8s, namespaces: [a, a]}\n", 3, "routers[0].resources.namespaces[1]", "listed twice"),
    ("resources: [{kind: io.l5d.k8s}]\nrouters: [{protocol: http}]\n", 1, "resources[0]", "set per router"),
])
def test_errors_name_the_line_and_key(text, line, key, message):
    with pytest.raises(ConfigError) as info:
        load_text(text, source="config.yaml")
    err = info.value
    assert (err.line, err.key) == (line, key), str(err)
    assert message in err.message, str(err)
