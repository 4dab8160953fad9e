"""The staging walkthrough in cluster shape, on one machine: two "nodes" are two proxy
processes on 127.0.0.2 and 127.0.0.3, each with Linkerd's per-host routers (outgoing
with io.l5d.k8s.daemonset, incoming with io.l5d.k8s.localnode), the demo apps run on
addresses of their own, and the test API server (a process too) holds the Services and
EndpointSlices that say which app runs on which node. An `l5d-dtab` override sent to
the first hop decides the second one, across both proxies of each hop."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .proc import ProxyProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NODES = {"node-a": "127.0.0.2", "node-b": "127.0.0.3"}
APPS = {  # name: (address, node, argv)
    "hello": ("127.0.0.11", "node-a", ["hello"]),
    "world-v1": ("127.0.0.12", "node-b", ["world", "--text", "world"]),
    "world-v2": ("127.0.0.13", "node-a", ["world", "--text", "earth"]),
}


def bindable(ip: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def port_free_on_all(ips: list[str]) -> int:
    """A port the OS gives on the first address that is free on the others too (a
    DaemonSet's pods all listen on the same port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((ips[0], 0))
            port = s.getsockname()[1]
        if all(_free(ip, port) for ip in ips):
            return port
    raise RuntimeError("no common free port")


def _free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def post(api: str, path: str, obj: dict) -> None:
    req = urllib.request.Request(f"{api}{path}", data=json.dumps(obj).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201


def service(name: str, ns: str, port_name: str, port: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}]}}


def slice_(name: str, svc: str, ns: str, port_name: str, port: int, eps: list[tuple[str, str]]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}, "nodeName": n} for a, n in eps]}


DTAB = """\
    /k8s  => /#/io.l5d.k8s;
    /srv  => /k8s/default/http;
    /host => /srv;
    /svc  => /host;
    /host/www.hello.world => /srv/hello;
    /host/world           => /srv/world-v1;
"""


def node_config(ip: str, api_port: int, out_port: int, in_port: int) -> str:
    return f"""
admin: {{ip: {ip}, port: 0}}
namers:
- kind: io.l5d.k8s
  host: 127.0.0.1
  port: {api_port}
routers:
- protocol: http
  label: outgoing
  dtab: |
{DTAB}  interpreter:
    kind: default
    transformers:
    - kind: io.l5d.k8s.daemonset
      namespace: dtabproxy
      port: incoming
      service: l5d
  servers: [{{ip: {ip}, port: {out_port}}}]
- protocol: http
  label: incoming
  dtab: |
{DTAB}  interpreter:
    kind: default
    transformers:
    - kind: io.l5d.k8s.localnode
  servers: [{{ip: {ip}, port: {in_port}}}]
"""


class Proc:
    """A child that prints one line when ready; killed at the end; stdin closed ends it."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))

    def first_line(self) -> str:
        assert self.p.stdout is not None
        line = self.p.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"{self.p.args} exited: {self.p.stdout.read().decode(errors='replace')}")
        return line

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.communicate()


def get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=15) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_staging_walkthrough_across_two_nodes_with_the_daemonset_and_localnode_transformers(tmp_path: Path) -> None:
    ips = [*NODES.values(), *(a for a, _, _ in APPS.values())]
    if not all(bindable(ip) for ip in ips):
        pytest.skip("127.0.0.2 and friends are not bindable here (only Linux routes all of 127/8 to lo)")
    procs: list[Proc] = []
    proxies: dict[str, ProxyProcess] = {}
    try:
        api_proc = Proc([sys.executable, "-m", "tests.k8s.apiserver", "--port", "0"])
        procs.append(api_proc)
        api = api_proc.first_line().rsplit(" ", 1)[1]
        api_port = int(api.rsplit(":", 1)[1])
        out_port = port_free_on_all(list(NODES.values()))
        in_port = port_free_on_all(list(NODES.values()))
        # The apps, each on its own address; hello calls world through its node's proxy.
        app_ports: dict[str, int] = {}
        for name, (ip, node, argv) in APPS.items():
            extra = ["--proxy", f"{NODES[node]}:{out_port}"] if name == "hello" else []
            app = Proc([sys.executable, "-m", "proxy.demo.apps", *argv, "--host", ip, "--port", "0", *extra],
                       env={"POD_IP": ip})
            procs.append(app)
            line = app.first_line()
            assert line.startswith("ready "), line
            app_ports[name] = int(line.split()[1])
        # What the cluster would hold: the apps' Services and EndpointSlices (with node
        # names), and the proxies' own Service with its `incoming` port.
        for name, (ip, node, _) in APPS.items():
            post(api, "/api/v1/namespaces/default/services", service(name, "default", "http", 80))
            post(api, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                 slice_(f"{name}-1", name, "default", "http", app_ports[name], [(ip, node)]))
        post(api, "/api/v1/namespaces/dtabproxy/services", service("l5d", "dtabproxy", "incoming", 4141))
        post(api, "/apis/discovery.k8s.io/v1/namespaces/dtabproxy/endpointslices",
             slice_("l5d-1", "l5d", "dtabproxy", "incoming", in_port, [(ip, node) for node, ip in NODES.items()]))
        # The two "nodes": one proxy each (the namer lists before the routers listen).
        for node, ip in NODES.items():
            d = tmp_path / node
            d.mkdir()
            p = ProxyProcess(node_config(ip, api_port, out_port, in_port), d, env={"NODE_NAME": node, "POD_IP": ip})
            proxies[node] = p
            p.wait_ready(2, admin=True)
        a = NODES["node-a"]
        status, _, body = get(f"http://{a}:{out_port}/", {"Host": "www.hello.world"})
        assert (status, body.strip()) == (200, "Hello (127.0.0.11) world (127.0.0.12)!!")
        # The override, given to the first hop only, decides the second: world-v2 on node-a.
        override = "/host/world => /srv/world-v2;"
        status, headers, body = get(f"http://{a}:{out_port}/", {"Host": "www.hello.world", "l5d-dtab": override})
        assert (status, body.strip()) == (200, "Hello (127.0.0.11) earth (127.0.0.13)!!")
        assert "/host/world=>/srv/world-v2" in headers.get("x-seen-l5d-ctx", "")  # what reached world
        # Each hop went outgoing -> the destination node's incoming: hello and world-v2
        # through node-a's incoming, world-v1 through node-b's.
        seen = {}
        for node, p in proxies.items():
            with urllib.request.urlopen(f"http://{NODES[node]}:{p.admin_port}/admin/metrics/prometheus", timeout=10) as r:
                seen[node] = r.read().decode()
        svc_metric = "dtabproxy_service_requests_total"
        assert metric(seen["node-a"], svc_metric, router="incoming", service="/svc/www.hello.world") == 2
        assert metric(seen["node-b"], svc_metric, router="incoming", service="/svc/world") == 1
        assert metric(seen["node-a"], svc_metric, router="incoming", service="/svc/world", traffic="override") == 1
        assert metric(seen["node-b"], svc_metric, router="outgoing") == 0  # nobody called through node-b
        client = "dtabproxy_client_requests_total"
        assert metric(seen["node-a"], client, router="outgoing",
                      client="/%/io.l5d.k8s.daemonset/dtabproxy/incoming/l5d/#/io.l5d.k8s/default/http/world-v1") == 1
        assert metric(seen["node-b"], client, router="incoming",
                      client="/%/io.l5d.k8s.localnode/127.0.0.3/#/io.l5d.k8s/default/http/world-v1") == 1
    finally:
        for p in proxies.values():
            p.stop()
        for proc in procs:
            proc.stop()
