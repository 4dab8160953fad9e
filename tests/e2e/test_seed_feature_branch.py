"""The README's feature-branch seed, run exactly as written there: `dtabproxy import` of
the Online Boutique VirtualServices, the proxy from docs/examples/boutique/dtabproxy.yaml,
curl with and without the developer's cookie, and a grpcio call with and without the
`userid` metadata. Only the ports differ (free ones instead of the README's)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .proc import ProxyProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "docs" / "examples" / "boutique"
CURL = shutil.which("curl")
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


@contextmanager
def backend(*argv: str) -> Iterator[int]:
    """A backend process that prints `ready <port>` once it listens (port 0: a free one)."""
    p = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
    try:
        assert p.stdout is not None
        for line in p.stdout:  # bounded: the process prints ready or exits
            m = re.search(rb"ready (\d+)", line)
            if m:
                yield int(m.group(1))
                break
        else:
            raise RuntimeError(f"{argv} exited before it was ready")
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def readme_commands() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## The feature-branch seed")
    return text[start : text.index("\n## ", start + 10)]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_the_feature_branch_seed_as_the_readme_runs_it(tmp_path: Path) -> None:
    section = readme_commands()
    # 1. import: the wildcard host and the cookie, said in the report.
    out = subprocess.run([sys.executable, "-m", "proxy", "import", "docs/examples/boutique/frontend-ingress.yaml"],
                         capture_output=True, text=True, env=ENV, cwd=REPO, check=True).stdout  # fmt: skip
    shown = section.split("$ dtabproxy import docs/examples/boutique/frontend-ingress.yaml\n", 1)[1].split("```", 1)[0]
    assert shown == out  # the README shows the import's output as it is
    assert "apply to every request of the router it is loaded into" in out
    assert "matched as the cookie shop_session-id" in out
    assert "service: /vs/default/frontend-ingress" in out

    with (
        backend("-m", "proxy.demo.apps", "world", "--port", "0", "--text", "frontend") as frontend,
        backend("-m", "proxy.demo.apps", "world", "--port", "0", "--text", "frontend-myfeature") as feature,
        backend(str(SEED / "ads.py"), "serve", "adservice", "0") as ads,
        backend(str(SEED / "ads.py"), "serve", "adservice-myfeature", "0") as ads_feature,
    ):
        # 2. the example config, with free ports for the README's fixed ones.
        ports = {"8081": frontend, "8082": feature, "9555": ads, "9556": ads_feature, "4140": 0, "4142": 0, "9990": 0}
        cfg = (SEED / "dtabproxy.yaml").read_text()
        cfg = re.sub(r"\b(8081|8082|9555|9556|4140|4142|9990)\b", lambda m: str(ports[m.group(1)]), cfg)
        for f in ("frontend-ingress.yaml", "adservice.yaml"):
            shutil.copy(SEED / f, tmp_path / f)
        with ProxyProcess(cfg, tmp_path) as p:
            p.wait_ready(2)
            edge, grpc_port = p.ports["edge"], p.ports["grpc"]

            # 3. curl, with and without the developer's cookie (and with other cookies beside it).
            def curl(*args: str) -> str:
                return subprocess.run([CURL, "-s", *args, f"localhost:{edge}/"], capture_output=True, text=True,
                                      timeout=20, check=True).stdout  # fmt: skip

            assert "curl -s localhost:4140/" in section
            assert curl().startswith("frontend (")
            assert "curl -s -H 'Cookie: shop_session-id=4f9e11' localhost:4140/" in section
            assert curl("-H", "Cookie: shop_session-id=4f9e11").startswith("frontend-myfeature (")
            assert curl("-H", "Cookie: a=1; shop_session-id=4f9e11").startswith("frontend-myfeature (")
            assert curl("-H", "Cookie: shop_session-id=someone-else").startswith("frontend (")

            # 4. a grpcio call, with and without the userid metadata.
            def ads_call(*args: str) -> str:
                return subprocess.run([sys.executable, str(SEED / "ads.py"), "call", f"127.0.0.1:{grpc_port}", *args],
                                      capture_output=True, text=True, env=ENV, timeout=30, check=True).stdout.strip()  # fmt: skip

            assert "python docs/examples/boutique/ads.py call 127.0.0.1:4142 --userid 4f9e11" in section
            assert ads_call() == "adservice"
            assert ads_call("--userid", "4f9e11") == "adservice-myfeature"
            assert ads_call("--userid", "someone-else") == "adservice"
            assert p.stop() == 0
