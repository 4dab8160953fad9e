"""SMI `TrafficSplit` (split.smi-spec.io v1alpha1 to v1alpha4) -> a weighted union.

`spec.service` (the apex) becomes `/svc/<apex> => w1 * /svc/<backend1> & ...`.
v1alpha1 weights are Kubernetes quantities (`500m` is half of `1`); later versions use
integers; both are read. v1alpha3+ `spec.matches` name `HTTPRouteGroup`s
(specs.smi-spec.io): their matches (`pathRegex`, `methods`, `headers` as regexes)
become one rule whose blocks are ORed, so the split applies only to those requests.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .common import Index, Names, Translation, dentry, parse_quantity, routes_to_itself, union, unknown_keys


def translate_split(doc: dict[str, Any], t: Translation, index: Index, names: Names) -> None:
    unknown_keys(t, doc, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    spec = doc.get("spec") or {}
    unknown_keys(t, spec, "spec", ("service", "backends", "matches"))
    apex = spec.get("service")
    if not isinstance(apex, str) or not apex:
        t.skip("spec.service", "missing: the apex service is required")
        return
    branches: list[tuple[str, Decimal]] = []
    for i, b in enumerate(spec.get("backends") or ()):
        where = f"spec.backends[{i}]"
        if not isinstance(b, dict) or not isinstance(b.get("service"), str):
            t.skip(where, "expected {service, weight}")
            continue
        unknown_keys(t, b, where, ("service", "weight"))
        w = parse_quantity(b.get("weight", 0))
        if w is None or w < 0:
            t.skip(f"{where}.weight", f"not a non-negative weight: {b.get('weight')!r}")
            continue
        branches.append((names.service(b["service"]), w))
    if not branches:
        t.skip("spec.backends", "no usable backend")
        return
    if all(w == 0 for _, w in branches):
        t.notes.append(f"{t.ref}: every weight is 0; a dtab union then spreads traffic uniformly (docs/dtab.md §9.3)")
    if routes_to_itself(t, "spec.backends", names.service(apex), branches):
        return
    entry = dentry(names.service(apex), union(branches))
    matches = spec.get("matches")
    if not matches:
        t.dtab.append(entry)
        return
    blocks: list[dict[str, Any]] = []
    for i, ref in enumerate(matches):
        where = f"spec.matches[{i}]"
        if not isinstance(ref, dict) or ref.get("kind") != "HTTPRouteGroup":
            kind = ref.get("kind") if isinstance(ref, dict) else ref
            t.skip(where, f"only HTTPRouteGroup matches are translated, not {kind!r}")
            continue
        unknown_keys(t, ref, where, ("kind", "name", "apiGroup"))
        group = index.get("HTTPRouteGroup", t.namespace, str(ref.get("name")))
        if group is None:
            t.skip(where, f"HTTPRouteGroup {t.namespace}/{ref.get('name')} is not among the imported resources")
            continue
        blocks.extend(_route_group_blocks(group, t, f"HTTPRouteGroup {ref.get('name')}"))
    if not blocks:
        # Without its matches the split would take all traffic: leave it out entirely.
        t.skip("spec.matches", f"no match could be translated, so the split {entry!r} is not applied")
        return
    t.rules.append({
        "name": f"TrafficSplit/{t.namespace}/{t.name}",
        "source": f"{t.ref} ({t.file})",
        "match": blocks if len(blocks) > 1 else blocks[0],
        "dtab": entry,
    })  # fmt: skip


def _route_group_blocks(group: dict[str, Any], t: Translation, label: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    spec = group.get("spec") or {}
    unknown_keys(t, spec, f"{label}.spec", ("matches",))
    for i, m in enumerate(spec.get("matches") or ()):
        where = f"{label}.spec.matches[{i}]"
        if not isinstance(m, dict):
            t.skip(where, "expected a mapping")
            continue
        unknown_keys(t, m, where, ("name", "pathRegex", "methods", "headers"))
        block: dict[str, Any] = {}
        path = m.get("pathRegex")
        if isinstance(path, str) and path not in ("", ".*", "/.*"):
            block["path"] = {"regex": path}
        methods = [str(x).upper() for x in m.get("methods") or () if x != "*"]
        if methods and "*" not in (m.get("methods") or ()):
            block["method"] = methods if len(methods) > 1 else methods[0]
        headers = m.get("headers")
        pairs: list[tuple[str, Any]] = []
        if isinstance(headers, dict):  # v1alpha3: a map
            pairs = list(headers.items())
        elif isinstance(headers, list):  # v1alpha4: a list of one-entry maps
            for h in headers:
                if isinstance(h, dict):
                    pairs.extend(h.items())
        if pairs:
            # SMI header values are regular expressions (matched against the value).
            block["headers"] = {str(k).lower(): {"regex": str(v)} for k, v in pairs}
        out.append(block)
    return out
