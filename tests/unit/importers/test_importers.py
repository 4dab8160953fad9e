"""Importers: every fixture in tests/fixtures/importers/ against its reviewed expected
config, the printed config loads as a router, and what is not translated is named."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap
from decimal import Decimal

import pytest
import yaml

from config import load_text
from config.importers import import_documents, import_paths
from config.importers.common import parse_quantity, short_host
from dtab import read_dtab

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "importers")
CASES = sorted(os.path.basename(f) for f in glob.glob(os.path.join(FIXTURES, "*.yaml")) if not f.endswith(".expected.yaml"))


def _expected(name: str) -> dict:
    with open(os.path.join(FIXTURES, name[:-5] + ".expected.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("name", CASES)
def test_fixture_imports_to_the_expected_config(name: str) -> None:
    result = import_paths([os.path.join(FIXTURES, name)])
    exp = _expected(name)
    assert result.router_config() == exp["config"]
    assert result.untranslated == exp["untranslated"]


@pytest.mark.parametrize("name", CASES)
def test_printed_config_loads_as_a_router(name: str) -> None:
    text = import_paths([os.path.join(FIXTURES, name)]).render()
    body = textwrap.indent(text, "  ")
    cfg = load_text(f"routers:\n- protocol: http\n  servers: [{{port: 0}}]\n{body}")
    rc = cfg.routers[0]
    exp = _expected(name)["config"]
    assert rc.dtab == read_dtab(exp.get("dtab", ""))
    assert [r.name for r in rc.rules] == [r["name"] for r in exp.get("rules", ())]


def test_canary_walkthrough_weights() -> None:
    shown = [
        import_paths([os.path.join(FIXTURES, f)]).dtab_text()
        for f in ("smi-web-apex-v1alpha1.yaml", "smi-web-apex-v1alpha2.yaml", "smi-web-apex-v1alpha4.yaml",
                  "istio-micro-api-70-30.yaml", "istio-micro-api-0-100.yaml")
    ]
    assert shown == [
        "/svc/web-apex => 500 * /svc/web-svc & 500 * /svc/web-svc-2;\n",
        "/svc/web-apex => 250 * /svc/web-svc & 750 * /svc/web-svc-2;\n",
        "/svc/web-apex => 0 * /svc/web-svc & 1 * /svc/web-svc-2;\n",
        "/svc/micro-api => 70 * /svc/micro-api-v1 & 30 * /svc/micro-api-v2;\n",
        "/svc/micro-api => 0 * /svc/micro-api-v1 & 100 * /svc/micro-api-v2;\n",
    ]


@pytest.mark.parametrize(("text", "value"), [
    ("500m", Decimal("0.5")), ("1", Decimal(1)), (250, Decimal(250)), ("2k", Decimal(2000)),
    ("1Ki", Decimal(1024)), ("0", Decimal(0)), ("abc", None), (True, None), ("5x", None),
])  # fmt: skip
def test_quantities(text: object, value: Decimal | None) -> None:
    assert parse_quantity(text) == value


def test_mixed_quantities_are_counted_in_milli_units() -> None:
    doc = {"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit", "metadata": {"name": "s"},
           "spec": {"service": "a", "backends": [{"service": "b", "weight": "1"}, {"service": "c", "weight": "250m"}]}}
    assert import_documents([("f", doc)]).dtab_text() == "/svc/a => 1000 * /svc/b & 250 * /svc/c;\n"


def test_short_host() -> None:
    assert short_host("web.default.svc.cluster.local", "default") == "web"
    assert short_host("web.other.svc.cluster.local", "default") == "web.other"
    assert short_host("web", "default") == "web"
    assert short_host("api.example.com", "default") == "api.example.com"


def test_a_split_onto_its_own_apex_is_reported_not_looped() -> None:
    doc = {"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit", "metadata": {"name": "s", "namespace": "n"},
           "spec": {"service": "web", "backends": [{"service": "web", "weight": 90}, {"service": "web-v2", "weight": 10}]}}
    r = import_documents([("f", doc)])
    assert r.dtab_text() == ""
    assert len(r.untranslated) == 1 and "TrafficSplit n/s: spec.backends:" in r.untranslated[0]


def test_unknown_fields_are_reported_by_name() -> None:
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "v"},
           "spec": {"hosts": ["a"], "http": [{"match": [{"uri": {"prefix": "/x"}, "sourceLabels": {"app": "b"}}],
                                              "route": [{"destination": {"host": "b"}}], "futureField": 1}]}}
    r = import_documents([("f", doc)])
    assert "VirtualService default/v: spec.http[0].futureField: not supported" in r.untranslated
    assert any("spec.http[0].match[0].sourceLabels" in u for u in r.untranslated)
    # The only block could not be translated: the route is left out rather than widened.
    assert r.router_config() == {}


def test_trafficsplit_with_a_missing_route_group_is_left_out() -> None:
    doc = {"apiVersion": "split.smi-spec.io/v1alpha3", "kind": "TrafficSplit", "metadata": {"name": "s"},
           "spec": {"service": "a", "matches": [{"kind": "HTTPRouteGroup", "name": "nope"}],
                    "backends": [{"service": "b", "weight": 1}]}}
    r = import_documents([("f", doc)])
    assert r.router_config() == {}
    assert any("HTTPRouteGroup default/nope is not among the imported resources" in u for u in r.untranslated)
    assert any("is not applied" in u for u in r.untranslated)


def test_cli_prints_config_and_reports(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    fx = os.path.join(FIXTURES, "gateway-httproute.yaml")
    p = subprocess.run([sys.executable, "-m", "proxy", "import", fx], capture_output=True, text=True, env=env, check=False)
    assert p.returncode == 0
    assert "/svc/store => 90 * /svc/store-v1 & 10 * /svc/store-v2;" in p.stdout
    assert "not translated: HTTPRoute shop/store: spec.rules[2].filters[1]: mirroring is not translated" in p.stderr
    strict = subprocess.run([sys.executable, "-m", "proxy", "import", "--strict", fx], capture_output=True, text=True, env=env, check=False)
    assert strict.returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [\n")
    p = subprocess.run([sys.executable, "-m", "proxy", "import", str(bad)], capture_output=True, text=True, env=env, check=False)
    assert p.returncode == 1 and "YAML syntax error" in p.stderr


def test_resources_directory_loads_into_router_rules(tmp_path) -> None:
    res = tmp_path / "res"
    res.mkdir()
    for f in ("smi-web-apex-v1alpha2.yaml", "istio-reviews.yaml"):
        shutil.copy(os.path.join(FIXTURES, f), res / f)
    (res / "README.txt").write_text("not a resource")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("routers:\n- protocol: http\n  dtab: /svc => /$/inet/127.0.0.1/1\n  resources: res\n  servers: [{port: 0}]\n")
    from config import load_file

    cfg = load_file(cfg_file)
    rc = cfg.routers[0]
    assert rc.dtab == read_dtab("/svc => /$/inet/127.0.0.1/1")  # the base stays the user's
    names = [r.name for r in rc.rules]
    # Unconditional entries first, then the conditional rules.
    assert names[:2] == ["VirtualService/shop/reviews", "TrafficSplit/trafficsplit-sample/web-split"]
    assert names[2:] == ["VirtualService/shop/reviews/jason", "VirtualService/shop/reviews/api/0", "VirtualService/shop/reviews/api/1"]
    assert all(not r.match for r in rc.rules[:2])
    assert any("not translated: VirtualService shop/reviews: spec.http[0].retries" in n for n in cfg.notes)
    watched = {os.path.basename(p) for p, _, _ in cfg.inputs}
    assert watched == {"c.yaml", "smi-web-apex-v1alpha2.yaml", "istio-reviews.yaml"}


# -- issue 14: the feature-branch seed (wildcard hosts, cookies, several versions) ---------


def _vs(name: str, hosts: list[str], http: list[dict], **spec: object) -> dict:
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"hosts": hosts, "http": http, **spec}}  # fmt: skip


FEATURE = [
    {"match": [{"headers": {"cookie": {"exact": "shop_session-id=4f9e11"}}}], "route": [{"destination": {"host": "frontend-myfeature"}}]},
    {"route": [{"destination": {"host": "frontend"}}]},
]


def test_a_wildcard_host_names_every_request_of_its_router_and_says_how() -> None:
    r = import_documents([("f.yaml", _vs("frontend-ingress", ["*"], FEATURE, gateways=["frontend-gateway"]))])
    assert r.untranslated == []  # the gateway binding is what "the router it is loaded into" means
    rules = r.router_config()["rules"]
    assert [x.get("service") for x in rules] == ["/vs/default/frontend-ingress"] * 2
    assert rules[0]["match"] == {"cookies": {"shop_session-id": {"exact": "4f9e11"}}}
    assert rules[0]["dtab"] == "/vs/default/frontend-ingress => /svc/frontend-myfeature"
    assert "match" not in rules[1] and rules[1]["dtab"] == "/vs/default/frontend-ingress => /svc/frontend"
    notes = "\n".join(t for tr in r.translations for t in tr.notes)
    assert "apply to every request of the router it is loaded into" in notes
    assert "routed by the name /vs/default/frontend-ingress (rule key `service`)" in notes
    assert "is one cookie: matched as the cookie shop_session-id" in notes
    rendered = r.render()
    assert "# notes:" in rendered and "rule key `service`" in rendered


def test_a_wildcard_subdomain_host_is_an_authority_condition() -> None:
    r = import_documents([("f", _vs("shop", ["*.example.com"], [{"route": [{"destination": {"host": "web"}}]}]))])
    (rule,) = r.router_config()["rules"]
    assert rule["match"] == {"authority": "*.example.com"} and rule["service"] == "/vs/default/shop"


def test_named_and_wildcard_hosts_say_each_thing_once() -> None:
    http = [{"route": [{"destination": {"host": "web"}}], "retries": {"attempts": 3}}]
    r = import_documents([("f", _vs("both", ["api", "*"], http))])
    assert r.dtab_text() == "/svc/api => /svc/web;\n"
    assert [x["group"] for x in r.router_config()["rules"]] == ["VirtualService/default/both/*"]
    assert r.untranslated == ["VirtualService default/both: spec.http[0].retries: retries are not translated"]


@pytest.mark.parametrize(("cond", "cookie"), [
    ({"exact": "shop_session-id=4f9e11"}, ("shop_session-id", "4f9e11")),
    ({"exact": ' sid = "abc" '}, ("sid", "abc")),
    ({"exact": "a=1; b=2"}, None),            # two pairs: the header as sent
    ({"exact": "no-equals-sign"}, None),
    ({"exact": "a b=1"}, None),              # not a cookie name
    ({"regex": "^(.*?;)?(user=jason)(;.*)?$"}, None),
    ({"prefix": "sid="}, None),
])  # fmt: skip
def test_cookie_exact_of_one_pair_is_a_cookie_match_anything_else_the_whole_header(cond: dict, cookie: tuple | None) -> None:
    http = [{"match": [{"headers": {"Cookie": cond}}], "route": [{"destination": {"host": "b"}}]},
            {"route": [{"destination": {"host": "a"}}]}]  # fmt: skip
    r = import_documents([("f", _vs("v", ["a"], http))])
    match = r.router_config()["rules"][0]["match"]
    notes = "\n".join(t for tr in r.translations for t in tr.notes)
    if cookie is None:
        assert match == {"headers": {"cookie": cond}}
        assert "match on the whole Cookie header as sent" in notes
    else:
        assert match == {"cookies": {cookie[0]: {"exact": cookie[1]}}}
        assert f"matched as the cookie {cookie[0]}" in notes


def test_several_versions_of_one_resource_are_reported_with_the_winner() -> None:
    old = _vs("frontend-ingress", ["*"], [{"route": [{"destination": {"host": "frontend-old"}}]}])
    new = _vs("frontend-ingress", ["*"], FEATURE)
    other = _vs("other", ["x"], [{"route": [{"destination": {"host": "y"}}]}])
    r = import_documents([("a.yaml", old), ("a.yaml", other), ("b.yaml", new)])
    assert r.untranslated == [
        "VirtualService default/frontend-ingress (a.yaml, document 1): a later version of the same resource "
        "(b.yaml, document 1) is the one imported; this one is not used"
    ]
    assert [t.ref for t in r.translations] == ["VirtualService default/other", "VirtualService default/frontend-ingress"]
    assert "frontend-old" not in r.render() and "frontend-myfeature" in r.render()


def test_rule_service_key_round_trips_and_an_empty_one_is_refused() -> None:
    from config import ConfigError
    from config.load import rule_json

    cfg = load_text("routers:\n- protocol: http\n  servers: [{port: 0}]\n  rules:\n"
                    "  - {name: r, service: /vs/x, dtab: '/vs/x => /svc/y'}\n")  # fmt: skip
    (rule,) = cfg.routers[0].rules
    assert rule.service is not None and rule.service.show() == "/vs/x"
    assert rule_json(rule)["service"] == "/vs/x"
    with pytest.raises(ConfigError, match=r":6: routers\[0\].rules\[0\].service: a service name must not be the empty path"):
        load_text("routers:\n- protocol: http\n  servers: [{port: 0}]\n  rules:\n  - name: r\n    service: /\n")
