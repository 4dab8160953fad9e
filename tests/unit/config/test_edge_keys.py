"""The config keys of the edge: `admin.auth` (token or tokenFile), `admin.hosts` and
`overrides.allowDestinations`: values, defaults, redaction, and errors that name the
file, line and key."""

from __future__ import annotations

import pytest
import yaml

from config import AdminAuth, ConfigError, load_text, to_json
from dtab import read_prefix

TOKEN = "abcdefghijklmnop-0123"
ROUTER = "routers:\n- protocol: http\n  servers:\n  - port: 0\n"


def load(text: str, base_dir: str | None = None):
    return load_text(text, source="config.yaml", base_dir=base_dir)


def error(text: str, base_dir: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, base_dir)
    return info.value


def test_admin_token_and_hosts():
    cfg = load(f"admin:\n  auth: {{token: {TOKEN}}}\n  hosts: [L5D.example., admin]\n{ROUTER}")
    assert cfg.admin is not None
    assert cfg.admin.auth == AdminAuth(token=TOKEN.encode())
    assert cfg.admin.hosts == ("l5d.example", "admin")
    assert TOKEN not in repr(cfg)
    out = to_json(cfg)
    assert out["admin"]["auth"] == {"token": "<redacted>"} and out["admin"]["hosts"] == ["l5d.example", "admin"]
    assert TOKEN not in repr(out)


def test_no_auth_by_default():
    cfg = load(f"admin: {{}}\n{ROUTER}")
    assert cfg.admin is not None and cfg.admin.auth is None and cfg.admin.hosts == ()


def test_admin_token_file_is_read_at_load(tmp_path):
    (tmp_path / "token").write_bytes(TOKEN.encode() + b"\r\n")
    cfg = load(f"admin:\n  auth:\n    tokenFile: token\n{ROUTER}", base_dir=str(tmp_path))
    assert cfg.admin is not None and cfg.admin.auth is not None
    assert cfg.admin.auth.token == TOKEN.encode()
    assert cfg.admin.auth.token_file == str(tmp_path / "token")
    out = to_json(cfg)
    assert out["admin"]["auth"] == {"tokenFile": str(tmp_path / "token")}
    again = load(yaml.safe_dump(out), base_dir=str(tmp_path))  # the effective config loads again
    assert again.admin == cfg.admin


@pytest.mark.parametrize(
    ("admin", "line", "key", "message"),
    [
        ("admin:\n  auth: {}\n", 2, "admin.auth", "set exactly one of 'token' and 'tokenFile'"),
        (f"admin:\n  auth: {{token: {TOKEN}, tokenFile: t}}\n", 2, "admin.auth", "set exactly one"),
        ("admin:\n  auth:\n    token: short\n", 3, "admin.auth.token", "the token is 5 bytes; use at least 16"),
        ("admin:\n  auth:\n    token: 'has spaces in it, 20+'\n", 3, "admin.auth.token", "must be a bearer token"),
        ("admin:\n  auth:\n    token: 12345678901234567890\n", 3, "admin.auth.token", "expected a non-empty string"),
        ("admin:\n  auth:\n    tokenFile: missing\n", 3, "admin.auth.tokenFile", "does not exist"),
        ("admin:\n  auth:\n    tokn: x\n", 3, "admin.auth", "unknown key 'tokn' (did you mean 'token'?)"),
        ("admin:\n  hosts: [ok.example, 'bad host']\n", 2, "admin.hosts[1]", "expected a host name without a port"),
        ("admin:\n  hosts:\n  - a.example:9990\n", 3, "admin.hosts[0]", "expected a host name without a port"),
        ("admin:\n  hosts: a.example\n", 2, "admin.hosts", "expected a list"),
    ],
)
def test_admin_auth_errors_name_line_and_key(admin, line, key, message, tmp_path):
    e = error(admin + ROUTER, base_dir=str(tmp_path))
    assert (e.source, e.line, e.key) == ("config.yaml", line, key), str(e)
    assert message in e.message


def test_a_token_file_without_a_usable_token(tmp_path):
    (tmp_path / "token").write_text("\n")
    e = error(f"admin:\n  auth:\n    tokenFile: token\n{ROUTER}", base_dir=str(tmp_path))
    assert (e.line, e.key) == (3, "admin.auth.tokenFile") and "0 bytes" in e.message


def test_allow_destinations():
    cfg = load(ROUTER + "  overrides:\n    allowDestinations: [/#/io.l5d.k8s, /srv, '/svc/*/x']\n")
    o = cfg.routers[0].overrides
    assert o.allow_destinations == (read_prefix("/#/io.l5d.k8s"), read_prefix("/srv"), read_prefix("/svc/*/x"))
    assert to_json(cfg)["routers"][0]["overrides"]["allowDestinations"] == ["/#/io.l5d.k8s", "/srv", "/svc/*/x"]
    assert load(ROUTER).routers[0].overrides.allow_destinations is None
    assert load(ROUTER + "  overrides: {allowDestinations: []}\n").routers[0].overrides.allow_destinations == ()


@pytest.mark.parametrize(
    ("value", "line", "key", "message"),
    [
        ("[/srv, srv]", 6, "routers[0].overrides.allowDestinations[1]", "invalid prefix"),
        ("/srv", 6, "routers[0].overrides.allowDestinations", "expected a list"),
        ("\n    - /ok\n    - 7", 8, "routers[0].overrides.allowDestinations[1]", "expected prefix"),
    ],
)
def test_allow_destinations_errors(value, line, key, message):
    e = error(ROUTER + f"  overrides:\n    allowDestinations: {value}\n")
    assert (e.line, e.key) == (line, key), str(e)
    assert message in e.message
