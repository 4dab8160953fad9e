"""Namers that need no configuration: the `/$` system namer of docs/dtab.md §6.2. Pure.

`system_lookup(path)` answers for every path whose first element is `$`:
`/$/inet/<host>/<port>` and `/$/fixedinet/…` bind (the address is an `Inet`, resolved
by the data plane), `/$/fail` fails, `/$/nil` is empty, and `/$/<name>/…` asks the
system namer called `<name>`, where the `io.buoyant.*` ones are pure rewrites whose
answer re-enters the dtab. An unknown `<name>` is an error, not `Neg`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from .errors import NamerError, UnknownNamer
from .path import Path, Prefix
from .tree import EMPTY, FAIL, NEG, Bound, Inet, Leaf, NameTree


class Namer(Protocol):
    """Anything with `lookup(path) -> NameTree` of `Path | Bound` leaves. It raises
    `NamerError` when it cannot answer. The path it gets is what follows its prefix."""

    def lookup(self, path: Path) -> NameTree: ...


_DOLLAR: Final = b"$"


def _java_int(elem: bytes) -> int | None:
    """`Integer.parseInt`: an optional sign, ASCII digits, 32-bit range."""
    body = elem[1:] if elem[:1] in (b"+", b"-") else elem
    if not body or not body.isdigit():
        return None
    value = int(elem)
    return value if -(2**31) <= value < 2**31 else None


def _utf8(elem: bytes) -> str:
    return elem.decode("utf-8", "replace")


def _inet(kind: bytes, elems: tuple[bytes, ...]) -> NameTree | None:
    """`/$/<kind>/<host>/<port>/rest` (tried first) or `/$/<kind>/<port>/rest`."""
    if len(elems) >= 4 and (port := _java_int(elems[3])) is not None:
        host, n = _utf8(elems[2]), 4
    elif len(elems) >= 3 and (port := _java_int(elems[2])) is not None:
        host, n = "localhost", 3
    else:
        return None
    if not 0 <= port <= 65535:
        raise NamerError(f"port out of range: {port}")
    return Leaf(Bound(Path(elems[:n]), Path(elems[n:]), Inet(host, port)))


def system_lookup(path: Path) -> NameTree:
    """The global namer (docs/dtab.md §6.2): `Neg` for paths not under `/$`."""
    elems = path.elems
    if not elems or elems[0] != _DOLLAR or len(elems) < 2:
        return NEG
    kind = elems[1]
    if kind in (b"inet", b"fixedinet"):
        tree = _inet(kind, elems)
        if tree is not None:
            return tree
    elif kind == b"fail":
        return FAIL
    elif kind == b"nil":
        return EMPTY
    namer = SYSTEM_NAMERS.get(_utf8(kind))
    if namer is None:
        raise UnknownNamer(f"Unknown namer: {_utf8(kind)} for path: {path.show()}")
    return namer(Path(elems[2:]))


# -- the io.buoyant rewriting namers (Linkerd's namer/core and router/http) --------------

_METHOD: Final = re.compile(r"[A-Z]+\Z")
_HOST: Final = re.compile(r"[A-Za-z0-9.:_-]+\Z")
_DNS_LABEL: Final = re.compile(r"[a-z0-9][-a-z0-9]*[a-z0-9]?\Z")


def _rewriting(rewrite: Callable[[tuple[str, ...], tuple[bytes, ...]], tuple[str, ...] | None], take: int) -> Callable[[Path], NameTree]:
    """A namer that rewrites the first `take` elements; the result is bound again
    through the whole dtab. Non-matching input is `Neg`."""

    def lookup(path: Path) -> NameTree:
        elems = path.elems
        if len(elems) < take:
            return NEG
        head = tuple(_utf8(e) for e in elems[:take])
        new = rewrite(head, elems)
        if new is None or any(not e for e in new):
            return NEG
        return Leaf(Path(tuple(e.encode() for e in new) + elems[take:]))

    return lookup


def _host_colon_port(s: str) -> tuple[str, str] | None:
    parts = s.split(":")
    while parts and parts[-1] == "":  # Java's split drops trailing empty strings
        parts.pop()
    if len(parts) == 2 and _DNS_LABEL.match(parts[1]) and len(parts[1]) <= 63:
        return parts[0], parts[1]
    return None


def _hostport(h: tuple[str, ...], _: tuple[bytes, ...]) -> tuple[str, ...] | None:
    hp = _host_colon_port(h[1])
    return None if hp is None else (h[0], hp[0], hp[1])


def _porthost(h: tuple[str, ...], _: tuple[bytes, ...]) -> tuple[str, ...] | None:
    hp = _host_colon_port(h[1])
    return None if hp is None else (h[0], hp[1], hp[0])


def _subdomain(domain: str, host: str) -> str | None:
    """`sub` when `host` is `sub.domain`, with or without a `:port` (docs/dtab.md §6.2)."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        host = name
    sfx = "." + domain
    return host[: -len(sfx)] if host.endswith(sfx) and len(host) > len(sfx) else None


def _subdomain_of(h: tuple[str, ...], _: tuple[bytes, ...]) -> tuple[str, ...] | None:
    if not (_HOST.match(h[0]) and _HOST.match(h[1])):
        return None
    sub = _subdomain(h[0], h[1])
    return None if sub is None else (sub,)


def _subdomain_of_pfx(h: tuple[str, ...], _: tuple[bytes, ...]) -> tuple[str, ...] | None:
    if not (_HOST.match(h[0]) and _HOST.match(h[2])):
        return None
    sub = _subdomain(h[0], h[2])
    return None if sub is None else (h[1], sub)


def _rinet(path: Path) -> NameTree:
    """`/$/io.buoyant.rinet/<port>/<host>/rest`: inet with the port first."""
    elems = path.elems
    if len(elems) < 2:
        return NEG
    port = _java_int(elems[0])
    if port is None or not 0 <= port <= 65535:
        raise NamerError(f"invalid port in /$/io.buoyant.rinet: {_utf8(elems[0])}")
    return Leaf(Bound(Path((b"$", b"io.buoyant.rinet") + elems[:2]), Path(elems[2:]), Inet(_utf8(elems[1]), port)))


def _insert(path: Path) -> NameTree:
    """`/<index>/<segment>/rest…`: insert `segment` at `index` in `rest`."""
    elems = path.elems
    if len(elems) < 2 or not elems[0].isdigit():
        return NEG
    i, rest = int(elems[0]), elems[2:]
    return Leaf(Path(rest[:i] + (elems[1],) + rest[i:]))


SYSTEM_NAMERS: Final[dict[str, Callable[[Path], NameTree]]] = {
    "io.buoyant.hostportPfx": _rewriting(_hostport, 2),
    "io.buoyant.porthostPfx": _rewriting(_porthost, 2),
    "io.buoyant.http.anyMethod": _rewriting(lambda h, _: () if _METHOD.match(h[0]) else None, 1),
    "io.buoyant.http.anyMethodPfx": _rewriting(lambda h, _: (h[0],) if _METHOD.match(h[1]) else None, 2),
    "io.buoyant.http.anyHost": _rewriting(lambda h, _: () if _HOST.match(h[0]) else None, 1),
    "io.buoyant.http.anyHostPfx": _rewriting(lambda h, _: (h[0],) if _HOST.match(h[1]) else None, 2),
    "io.buoyant.http.subdomainOf": _rewriting(_subdomain_of, 2),
    "io.buoyant.http.subdomainOfPfx": _rewriting(_subdomain_of_pfx, 3),
    "io.buoyant.http.domainToPath": _rewriting(
        lambda h, _: tuple(reversed(h[0].split("."))) if _HOST.match(h[0]) else None, 1
    ),
    "io.buoyant.http.domainToPathPfx": _rewriting(
        lambda h, _: (h[0], *reversed(h[1].split("."))) if _HOST.match(h[1]) else None, 2
    ),
    "io.buoyant.http.insert": _insert,
    "io.buoyant.rinet": _rinet,
}


def namer_lookup(namers: Sequence[tuple[Prefix | Path, Namer]], path: Path) -> NameTree:
    """docs/dtab.md §8.1 step 2: configured namers in order (a `Neg` answer passes to the next
    one whose prefix matches), then the system namer."""
    for prefix, namer in namers:
        n = len(prefix.elems)
        if isinstance(prefix, Prefix):
            if not prefix.matches(path):
                continue
        elif path.elems[:n] != prefix.elems:
            continue
        tree = namer.lookup(Path(path.elems[n:]))
        if tree is not NEG:
            return tree
    return system_lookup(path)
