"""Kubernetes objects for the tests, in the API's own shapes."""

from __future__ import annotations

from typing import Any


def service(name: str, ports: list[tuple[str, int, int | str]], ns: str = "default",
            labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"ports": [{"name": n, "port": p, "targetPort": t, "protocol": "TCP"} for n, p, t in ports]},
    }


def endpoint(addr: str, node: str | None = None, ready: bool = True, serving: bool | None = None,
             terminating: bool = False) -> dict[str, Any]:
    cond: dict[str, Any] = {"ready": ready, "terminating": terminating}
    if serving is not None:
        cond["serving"] = serving
    out: dict[str, Any] = {"addresses": [addr], "conditions": cond}
    if node is not None:
        out["nodeName"] = node
    return out


def endpointslice(name: str, svc: str, ports: list[tuple[str, int]], endpoints: list[dict[str, Any]],
                  ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc, "endpointslice.kubernetes.io/managed-by": "test"}},
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
        "endpoints": endpoints,
    }


def endpoints(name: str, ports: list[tuple[str, int]], addrs: list[tuple[str, str | None]],
              ns: str = "default", not_ready: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    subset: dict[str, Any] = {
        "addresses": [{"ip": a, **({"nodeName": n} if n else {})} for a, n in addrs],
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
    }
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": a} for a in not_ready]
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns},
            "subsets": [subset] if addrs or not_ready else []}


def backends(server: Any, name: str, ports: list[tuple[str, int, int | str]], slices: bool,
             addrs: list[tuple[str, str | None]], port_name: str = "http", port: int = 8080, ns: str = "default") -> None:
    """A Service and its endpoints, as EndpointSlices or as Endpoints."""
    server.put(service(name, ports, ns))
    if slices:
        server.put(endpointslice(f"{name}-abc", name, [(port_name, port)], [endpoint(a, n) for a, n in addrs], ns))
    else:
        server.put(endpoints(name, [(port_name, port)], addrs, ns))


def dtab_object(name: str, dentries: list[tuple[str, str]], ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "l5d.io/v1alpha1", "kind": "DTab", "metadata": {"name": name, "namespace": ns},
            "dentries": [{"prefix": p, "dst": d} for p, d in dentries]}
