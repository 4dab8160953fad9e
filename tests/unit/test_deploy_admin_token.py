"""deploy/ gives the admin its token from a Secret: the ConfigMap's configs name the file
the DaemonSet mounts from the Secret `l5d-admin-token`, readable by the proxy's group, and
the Secret manifest's placeholder is refused, so nobody runs with a published token."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from config import ConfigError, admin_token_problem, load_text

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _daemonset() -> dict:
    (ds,) = [d for d in _docs(DEPLOY / "30-daemonset.yaml") if d["kind"] == "DaemonSet"]
    return ds


def test_the_daemonset_mounts_the_secret_where_the_configs_read_it() -> None:
    spec = _daemonset()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    secret = volumes["l5d-admin-token"]["secret"]
    assert secret["secretName"] == "l5d-admin-token"
    assert secret["defaultMode"] == 0o440 and spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    (container,) = spec["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["l5d-admin-token"]["mountPath"] == "/secrets/admin" and mounts["l5d-admin-token"]["readOnly"]
    (cm,) = _docs(DEPLOY / "20-config.yaml")
    for name, text in cm["data"].items():
        admin = yaml.safe_load(text)["admin"]
        assert admin["auth"] == {"tokenFile": "/secrets/admin/token"}, name
        assert "l5d.dtabproxy" in admin["hosts"], name


def test_the_secret_manifest_is_kept_out_of_apply_and_its_placeholder_is_refused(tmp_path) -> None:
    assert not list(DEPLOY.glob("*secret*.yaml"))  # `kubectl apply -f deploy/` never overwrites a real token
    (secret,) = _docs(DEPLOY / "secret" / "admin-token.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"] == {
        "name": "l5d-admin-token", "namespace": "dtabproxy", "labels": {"app.kubernetes.io/name": "dtabproxy"}}
    placeholder = secret["stringData"]["token"]
    assert admin_token_problem(placeholder.encode()) is not None
    (tmp_path / "token").write_text(placeholder)
    (cm,) = _docs(DEPLOY / "20-config.yaml")
    text = cm["data"]["config.yaml"].replace("/secrets/admin/token", str(tmp_path / "token"))
    with pytest.raises(ConfigError, match=r"admin\.auth\.tokenFile: the token must be a bearer token"):
        load_text(text, source="config.yaml")
