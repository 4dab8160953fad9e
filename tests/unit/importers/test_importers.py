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
