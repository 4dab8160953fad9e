"""What every importer shares: reading resource files, naming services, weights,
the result of an import, and its rendering as a dtabproxy router config.

An importer turns Kubernetes routing resources that users already wrote (SMI,
Istio, Gateway API) into dtab entries and match rules, in the YAML shape of a router's
`dtab` and `rules` (docs/rules.md), so `dtabproxy import` can print them and the
loader can validate them exactly as if they had been written by hand. Anything an
importer cannot express is recorded in `untranslated` by resource and field, never
dropped silently.

Naming: a Kubernetes Service `name` in the resource's namespace is `<prefix>/name`
(prefix `/svc`, the routers' default `dstPrefix`); a service of another namespace is
`<prefix>/name.namespace`; an Istio subset `v1` of host `web` is `<prefix>/web-v1`.
The router's own dtab decides where those names go (a namer, `/$/inet/...`).

Pure: reads files, imports `yaml` and nothing from `proxy`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

#: The file names a resources directory is read from (other files are ignored).
RESOURCE_SUFFIXES = (".yaml", ".yml", ".json")


class ResourceError(ValueError):
    """A resource file that cannot be read at all (bad YAML, not a mapping)."""


@dataclass
class Translation:
    """One resource's result: unconditional dentries, rules, what was not translated,
    and notes for the reader (naming conventions it relied on)."""

    kind: str
    namespace: str
    name: str
    file: str
    dtab: list[str] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    untranslated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def skip(self, where: str, why: str) -> None:
        """Record a field that was not translated: `Kind ns/name: where: why`."""
        self.untranslated.append(f"{self.ref}: {where}: {why}")


@dataclass
class ImportResult:
    translations: list[Translation] = field(default_factory=list)
    untranslated: list[str] = field(default_factory=list)  # every resource's, plus whole documents
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)  # file -> (mtime_ns, size)
    notes: list[str] = field(default_factory=list)

    def dtab_text(self) -> str:
        return "".join(f"{d};\n" for t in self.translations for d in t.dtab)

    def router_config(self) -> dict[str, Any]:
        """The printed form: `dtab` (entries for every request) and `rules`."""
        out: dict[str, Any] = {}
        text = self.dtab_text()
        if text:
            out["dtab"] = text
        rules = [r for t in self.translations for r in t.rules]
        if rules:
            out["rules"] = rules
        return out

    def as_rules(self) -> list[dict[str, Any]]:
        """The loaded form (a `resources:` directory): each resource's unconditional
        entries become a rule without conditions, placed before its other rules, so
        the config's own base dtab stays the user's and the admin API edits only it."""
        out: list[dict[str, Any]] = []
        for t in self.translations:
            if t.dtab:
                out.append({"name": t.ref.replace(" ", "/"), "source": f"{t.ref} ({t.file})",
                            "dtab": "".join(f"{d};\n" for d in t.dtab)})  # fmt: skip
            out.extend(t.rules)
        return out

    def render(self) -> str:
        """YAML for a router (merge `dtab` into its dtab and `rules` into its rules),
        with what was not translated and the naming notes as comments at the top."""
        lines = [f"# dtabproxy import: {len(self.translations)} resource(s)"]
        for t in self.translations:
            lines.append(f"#   {t.ref} ({t.file})")
        notes = [*self.notes, *(n for t in self.translations for n in t.notes)]
        if notes:
            lines.append("# notes:")
            lines += [f"#   - {n}" for n in notes]
        if self.untranslated:
            lines.append("# NOT TRANSLATED (review these by hand):")
            lines += [f"#   - {u}" for u in self.untranslated]
        cfg = self.router_config()
        text = cfg.get("dtab")
        if text:
            lines.append("dtab: |")
            lines += [f"  {d}" for d in text.splitlines()]
        if "rules" in cfg:
            lines.append(yaml.dump({"rules": cfg["rules"]}, Dumper=_Dumper, sort_keys=False, width=1000).rstrip("\n"))
        if not text and "rules" not in cfg:
            lines.append("{}")
        return "\n".join(lines) + "\n"


class _Dumper(yaml.SafeDumper):
    """Safe YAML without `&id001` anchors: a shared edit list is printed twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# -- documents ----------------------------------------------------------------------------


def read_documents(path: str) -> list[dict[str, Any]]:
    """Every YAML document of a file (a `List` kind is flattened into its items)."""
    try:
        with open(path, encoding="utf-8") as f:
            docs = list(yaml.safe_load_all(f))
    except OSError as exc:
        raise ResourceError(f"cannot read '{path}': {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ResourceError(f"{path}{where}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    out: list[dict[str, Any]] = []
    for d in docs:
        if d is None:
            continue
        if not isinstance(d, dict):
            raise ResourceError(f"{path}: expected Kubernetes resources (mappings), got {type(d).__name__}")
        if d.get("kind") == "List" and isinstance(d.get("items"), list):
            out.extend(i for i in d["items"] if isinstance(i, dict))
        else:
            out.append(d)
    return out


def resource_files(paths: Iterable[str]) -> list[str]:
    """Files named, and the resource files directly inside directories named, sorted."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            files.extend(
                os.path.join(p, n) for n in sorted(os.listdir(p))
                if n.endswith(RESOURCE_SUFFIXES) and not n.startswith(".") and os.path.isfile(os.path.join(p, n))
            )  # fmt: skip
        else:
            files.append(p)
    return files


def import_paths(paths: Sequence[str], *, prefix: str = "/svc") -> ImportResult:
    """Import every resource in the files and directories given."""
    docs: list[tuple[str, dict[str, Any]]] = []
    inputs: dict[str, tuple[int, int]] = {}
    for f in resource_files(paths):
        docs.extend((os.path.basename(f), d) for d in read_documents(f))
        try:
            st = os.stat(f)
            inputs[os.path.abspath(f)] = (st.st_mtime_ns, st.st_size)
        except OSError:
            pass
    result = import_documents(docs, prefix=prefix)
    result.inputs = inputs
    return result


def import_documents(docs: Sequence[tuple[str, dict[str, Any]]], *, prefix: str = "/svc") -> ImportResult:
    """Translate resources (file name, document). Documents refer to each other (a
    TrafficSplit to its HTTPRouteGroups, a VirtualService to DestinationRule subsets),
    so all are indexed first."""
    from . import gateway, istio, smi

    result = ImportResult()
    docs = _latest_versions(docs, result)
    index = Index(docs)
    for file, doc in docs:
        kind = str(doc.get("kind", ""))
        api = str(doc.get("apiVersion", ""))
        group = api.split("/", 1)[0]
        meta = doc.get("metadata") or {}
        ns = str(meta.get("namespace") or "default")
        name = str(meta.get("name") or "?")
        t = Translation(kind, ns, name, file)
        names = Names(prefix, ns)
        if kind == "TrafficSplit" and group == "split.smi-spec.io":
            smi.translate_split(doc, t, index, names)
        elif kind == "HTTPRouteGroup" and group == "specs.smi-spec.io":
            continue  # read through the TrafficSplits that name it
        elif kind == "VirtualService" and group == "networking.istio.io":
            istio.translate_virtual_service(doc, t, index, names)
        elif kind == "DestinationRule" and group == "networking.istio.io":
            istio.translate_destination_rule(doc, t, names)
        elif kind in ("HTTPRoute", "GRPCRoute") and group == "gateway.networking.k8s.io":
            gateway.translate_route(doc, t, names)
        else:
            result.untranslated.append(f"{kind or '(no kind)'} {ns}/{name} ({file}): not a routing resource this importer reads "
                                       "(SMI TrafficSplit, Istio VirtualService/DestinationRule, Gateway API HTTPRoute/GRPCRoute)")  # fmt: skip
            continue
        result.translations.append(t)
        result.untranslated.extend(t.untranslated)
    return result


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata") or {}
    return str(doc.get("kind", "")), str(meta.get("namespace") or "default"), str(meta.get("name") or "?")


def _latest_versions(docs: Sequence[tuple[str, dict[str, Any]]], result: ImportResult) -> list[tuple[str, dict[str, Any]]]:
    """One version of each resource (kind, namespace, name): the last one read (files in
    name order, documents in file order), which is what `kubectl apply -f` of the same
    files leaves in the cluster. Every earlier version is reported with the one that wins."""
    last: dict[tuple[str, str, str], int] = {}
    for i, (_, d) in enumerate(docs):
        last[_key(d)] = i
    out = []
    for i, (file, d) in enumerate(docs):
        k = _key(d)
        j = last[k]
        if j == i:
            out.append((file, d))
            continue
        where = f"{file}, document {sum(1 for f, _ in docs[: i + 1] if f == file)}"
        winner = f"{docs[j][0]}, document {sum(1 for f, _ in docs[: j + 1] if f == docs[j][0])}"
        result.untranslated.append(f"{k[0]} {k[1]}/{k[2]} ({where}): a later version of the same resource "
                                   f"({winner}) is the one imported; this one is not used")  # fmt: skip
    return out


class Index:
    """Documents by (kind, namespace, name), and DestinationRules by host."""

    def __init__(self, docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        self.by_name: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rules_by_host: dict[str, list[dict[str, Any]]] = {}
        for _, d in docs:
            meta = d.get("metadata") or {}
            ns = str(meta.get("namespace") or "default")
            self.by_name[(str(d.get("kind")), ns, str(meta.get("name")))] = d
            if d.get("kind") == "DestinationRule":
                host = str((d.get("spec") or {}).get("host", ""))
                self.rules_by_host.setdefault(short_host(host, ns), []).append(d)

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        return self.by_name.get((kind, ns, name))

    def subset(self, host: str, subset: str) -> dict[str, Any] | None:
        for dr in self.rules_by_host.get(host, ()):
            for s in (dr.get("spec") or {}).get("subsets") or ():
                if isinstance(s, dict) and s.get("name") == subset:
                    return s
        return None


# -- names and weights ------------------------------------------------------------------

_CLUSTER_SUFFIX = re.compile(r"\.svc(\.cluster\.local)?$")


def short_host(host: str, ns: str) -> str:
    """`web.default.svc.cluster.local` read in namespace default -> `web`; in another
    namespace -> `web.default`; a name without the cluster suffix stays as written."""
    m = _CLUSTER_SUFFIX.search(host)
    if m is None:
        return host
    name, _, host_ns = host[: m.start()].partition(".")
    return name if not host_ns or host_ns == ns else f"{name}.{host_ns}"


class Names:
    """Logical names for services in one resource's namespace."""

    def __init__(self, prefix: str, ns: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.ns = ns

    def service(self, name: str, namespace: str | None = None) -> str:
        name = short_host(name, self.ns)
        if namespace and namespace != self.ns:
            name = f"{name}.{namespace}"
        return f"{self.prefix}/{name}"

    def subset(self, host: str, subset: str | None) -> str:
        h = short_host(host, self.ns)
        return f"{self.prefix}/{h}-{subset}" if subset else f"{self.prefix}/{h}"


_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|)$")
_SUFFIX = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(1000), "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18, "Ki": Decimal(1024),
    "Mi": Decimal(1024) ** 2, "Gi": Decimal(1024) ** 3, "Ti": Decimal(1024) ** 4, "Pi": Decimal(1024) ** 5,
    "Ei": Decimal(1024) ** 6,
}  # fmt: skip


def parse_quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity (`500m`, `1`, `2k`) or a number; None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value.strip())
    if m is None:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2)]
    except InvalidOperation:
        return None


def scale_weights(weights: Sequence[Decimal]) -> list[Decimal]:
    """Relative weights as small whole numbers where possible: integers stay, and
    fractions (SMI's milli-units, `500m`) are counted in thousandths (`500`)."""
    if all(w == w.to_integral_value() for w in weights):
        return list(weights)
    milli = [w * 1000 for w in weights]
    return milli


def show_weight(w: Decimal) -> str:
    if w == w.to_integral_value():
        return str(int(w))
    return format(w.normalize(), "f")


def union(branches: Sequence[tuple[str, Decimal]]) -> str:
    """`250 * /svc/a & 750 * /svc/b`; one branch is the plain name."""
    if len(branches) == 1:
        return branches[0][0]
    scaled = scale_weights([w for _, w in branches])
    return " & ".join(f"{show_weight(w)} * {n}" for (n, _), w in zip(branches, scaled, strict=True))


def dentry(prefix: str, dst: str) -> str:
    return f"{prefix} => {dst}"


def entries_text(entries: Sequence[str]) -> str:
    """Dentries as one dtab string for a rule: `a => b; c => d`."""
    return "; ".join(entries)


def routes_to_itself(t: Translation, where: str, apex: str, branches: Sequence[tuple[str, Any]]) -> bool:
    """A split whose branch is its own apex (`/svc/web => 90 * /svc/web & ...`) would
    bind the same name again and again; report it instead of emitting a loop."""
    if any(n == apex for n, _ in branches):
        if len(branches) == 1:
            t.notes.append(f"{t.ref}: {where} routes {apex} to itself: nothing to add, the name's own binding applies")
        else:
            t.skip(where, f"a split of {apex} that sends part of it to {apex} itself cannot be a dtab entry "
                          "(it would rewrite the name forever); name that share by another service")  # fmt: skip
        return True
    return False


def unknown_keys(t: Translation, obj: Any, where: str, known: Iterable[str], why: str = "not supported") -> None:
    """Report every key of `obj` outside `known`."""
    if not isinstance(obj, dict):
        return
    known = set(known)
    for k in obj:
        if k not in known:
            t.skip(f"{where}.{k}" if where else str(k), why)


def header_edits(set_: Iterable[tuple[str, str]], add: Iterable[tuple[str, str]], remove: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    s = dict(set_)
    a = dict(add)
    r = list(remove)
    if s:
        out["set"] = s
    if a:
        out["add"] = a
    if r:
        out["remove"] = r
    return out
