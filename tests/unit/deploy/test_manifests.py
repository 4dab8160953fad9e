"""deploy/ against a pinned Kubernetes API: every manifest validates with
`kubernetes-validate` (strict: unknown fields are errors), the DTab objects against
the CRD's own schema, the ConfigMap's config loads, and the RBAC grants exactly what
the proxy's watchers and store use."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from config import load_text

#: The Kubernetes version the manifests are checked against (kubernetes-validate's
#: bundled schemas); raise it deliberately, with the manifests.
K8S_VERSION = "1.34.0"
DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out.extend((path.name, d) for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return out


def crd_schema() -> dict[str, Any]:
    (crd,) = [d for _, d in docs() if d["kind"] == "CustomResourceDefinition"]
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize(("name", "doc"), [pytest.param(n, d, id=f"{n}:{d['kind']}/{d['metadata']['name']}") for n, d in docs()])
def test_every_manifest_validates_against_the_pinned_api(name: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"] == "l5d.io/v1alpha1":
        jsonschema.validate(doc, crd_schema())  # a custom resource: its CRD is the schema
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validation_would_catch_a_mistake() -> None:
    (ds,) = [d for _, d in docs() if d["kind"] == "DaemonSet"]
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["hostPorts"] = [4140]  # a typo'd field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    (dtab,) = [d for _, d in docs() if d["kind"] == "DTab"]
    broken = copy.deepcopy(dtab)
    broken["dentries"][0].pop("dst")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, crd_schema())


def test_the_config_uses_the_namer_in_cluster_the_two_transformers_and_the_store(tmp_path) -> None:
    (cm,) = [d for _, d in docs() if d["kind"] == "ConfigMap"]
    token = tmp_path / "token"  # the mounted Secret (deploy/secret/admin-token.yaml)
    token.write_text("a-token-of-32-characters-0123456\n")
    cfg = load_text(cm["data"]["config.yaml"].replace("/secrets/admin/token", str(token)), source="config.yaml")
    assert cfg.admin is not None and cfg.admin.auth is not None  # writes need the Secret's token
    (namer,) = cfg.namers
    assert namer.kind == "io.l5d.k8s" and namer.api is not None and namer.api.host is None  # in-cluster
    routers = {r.label: r for r in cfg.routers}
    out, inc = routers["outgoing"], routers["incoming"]
    assert [s.port for s in out.servers] == [4140] and [s.port for s in inc.servers] == [4141]
    (ds,) = out.transformers
    assert (ds.kind, ds.namespace, ds.service, ds.port) == ("io.l5d.k8s.daemonset", "dtabproxy", "l5d", "incoming")
    assert [t.kind for t in inc.transformers] == ["io.l5d.k8s.localnode"]
    assert out.dtab_store is not None and inc.dtab_store == out.dtab_store
    (dtab,) = [d for _, d in docs() if d["kind"] == "DTab"]
    assert (dtab["metadata"]["namespace"], dtab["metadata"]["name"]) == (out.dtab_store.namespace, out.dtab_store.name)
    # The stored entries are the config's (the same table until someone edits it).
    assert [f"{e['prefix']}=>{e['dst']}" for e in dtab["dentries"]] == [d.show() for d in out.dtab.dentries]
    # The daemonset Service names the port the transformer asks for, and selects the proxies.
    (svc,) = [d for _, d in docs() if d["kind"] == "Service" and d["metadata"]["name"] == ds.service]
    assert svc["metadata"]["namespace"] == ds.namespace
    assert any(p["name"] == ds.port and p["port"] == 4141 for p in svc["spec"]["ports"])
    (daemonset,) = [d for _, d in docs() if d["kind"] == "DaemonSet"]
    assert svc["spec"]["selector"].items() <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert {"NODE_NAME", "POD_IP"} <= {e["name"] for e in container["env"]}
    assert {p["containerPort"] for p in container["ports"]} >= {4140, 4141, 4142, 9990}


def test_rbac_grants_exactly_what_is_read_watched_and_updated() -> None:
    from proxy.discovery.k8s_routes import KINDS

    all_docs = [d for _, d in docs()]
    (role,) = [d for d in all_docs if d["kind"] == "ClusterRole"]
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    wanted = {("", "services"), ("", "endpoints"), ("discovery.k8s.io", "endpointslices")}
    wanted |= {(g, p) for g, p, _ in KINDS}
    assert granted == {key: {"list", "watch"} for key in wanted}
    (dtabs,) = [d for d in all_docs if d["kind"] == "Role"]
    assert dtabs["metadata"]["namespace"] == "dtabproxy"
    assert dtabs["rules"] == [{"apiGroups": ["l5d.io"], "resources": ["dtabs"], "verbs": ["list", "watch", "update"]}]
    (sa,) = [d for d in all_docs if d["kind"] == "ServiceAccount"]
    for kind, ref in (("ClusterRoleBinding", role), ("RoleBinding", dtabs)):
        (b,) = [d for d in all_docs if d["kind"] == kind]
        assert b["roleRef"]["name"] == ref["metadata"]["name"]
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}]
