"""Match rules compiled for the data plane: which rules a request matches, the dtab
overlay those rules add, and the request/response rewrites they carry.

DESIGN.md's one idea holds here: a rule never routes by itself. A matching rule
appends its dentries after the base dtab (docs/dtab.md §10: base ++ rules ++ ctx ++ user), so
the one resolver and the delegator explain every decision. What this module owns:

* `RuleSet.compile(rules)`: once per router snapshot. Each rule's match blocks become
  `_Alt`s of pre-built conditions (bytes, compiled byte regexes), indexed by the exact
  host they name (if any) and the first path segment they pin (if any).
* `RuleSet.match(...)`: per request. The candidate alternatives for (host, first
  segment) are memoised, so rules about other hosts or paths cost nothing; only the
  header names, cookies and query parameters those candidates mention are read.
* `RuleSet.overlay(key)`: the precomputed table and actions for one set of matched
  rules (the key is the tuple of their indexes), memoised per snapshot.
* `sticky_u(value)`: the position in [0, 1) that makes a weighted pick a stable
  function of a header or cookie value.

It must not do I/O or touch asyncio, and it never sees a transport: the wire layer
applies the `Actions` it returns. Bytes stay bytes.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from config.schema import HashOn, HeaderEdits, MatchBlock, NamedMatch, RuleConfig, StringMatch, UriRewrite
from dtab import CompiledDtab, Dtab
from dtab import compile as compile_dtab

from .identify import split_target

log = logging.getLogger(__name__)

#: Memoised candidate lists per (host, first segment). The key space is what clients
#: send, so it is bounded; a full memo is cleared (one rebuild per key, no LRU work).
CANDIDATE_MEMO_SIZE: Final = 4096
#: Memoised overlays per set of matched rules. Distinct sets are few in practice
#: (a handful of canaries); the bound only guards against a pathological config.
OVERLAY_MEMO_SIZE: Final = 1024

_EXACT, _PREFIX, _REGEX, _PRESENT, _ABSENT, _SEGMENT = range(6)
_KINDS: Final = {
    "exact": _EXACT, "prefix": _PREFIX, "regex": _REGEX, "present": _PRESENT, "absent": _ABSENT,
    "segmentPrefix": _SEGMENT,
}  # fmt: skip
_SCALE: Final = float(1 << 64)


def sticky_u(value: bytes) -> float:
    """A stable position in [0, 1) for `value`: the same user lands on the same branch
    of every weighted split, in every process (Python's own `hash` is salted per process,
    so it cannot be used). Moving a split's weight from 25 % to 50 % moves exactly the
    values in [0.25, 0.5)."""
    return int.from_bytes(hashlib.blake2b(value, digest_size=8).digest(), "big") / _SCALE


class _Cond:
    """One compiled string condition. `test(value)` with value None for "absent"."""

    __slots__ = ("kind", "value", "rx", "invert", "fold")

    def __init__(self, m: StringMatch) -> None:
        self.kind = _KINDS[m.kind]
        self.fold = m.ignore_case
        text = m.value.lower() if m.ignore_case and self.kind != _REGEX else m.value
        self.value = text.encode("latin-1")
        # RE2 and Envoy match a regex against the whole value; so does fullmatch.
        self.rx = re.compile(self.value, re.IGNORECASE if m.ignore_case else 0) if self.kind == _REGEX else None
        self.invert = m.invert

    def test(self, value: bytes | None) -> bool:
        k = self.kind
        if k == _PRESENT:
            ok = value is not None
        elif k == _ABSENT:
            ok = value is None
        elif value is None:
            ok = False
        else:
            if self.fold:
                value = value.lower()
            if k == _EXACT:
                ok = value == self.value
            elif k == _PREFIX:
                ok = value.startswith(self.value)
            elif k == _SEGMENT:
                p = self.value
                ok = value.startswith(p) and (len(value) == len(p) or p.endswith(b"/") or value[len(p)] == 47)
            else:
                assert self.rx is not None
                ok = self.rx.fullmatch(value) is not None
        return ok is not self.invert


class _AuthorityCond:
    """An authority condition. Host names are case-insensitive (RFC 3986 §3.2.2); a
    pattern without a port ignores the request's port, and `*.example.com` matches
    one or more labels before `.example.com` (the Gateway API's hostname rule)."""

    __slots__ = ("cond", "with_port", "suffix")

    def __init__(self, m: StringMatch) -> None:
        lower = StringMatch(m.kind, m.value.lower() if m.kind != "regex" else m.value, m.invert, m.kind != "regex" or m.ignore_case)
        self.cond = _Cond(lower)
        self.with_port = b":" in lower.value.encode("latin-1").rsplit(b"]", 1)[-1]
        self.suffix: bytes | None = None
        if m.kind == "exact" and m.value.startswith("*."):
            self.suffix = m.value[1:].lower().encode("latin-1")

    def test(self, authority: bytes | None, host: bytes | None) -> bool:
        c = self.cond
        if c.kind == _REGEX:
            return c.test(authority)
        value = authority if self.with_port else host
        if self.suffix is not None:
            ok = value is not None and value.endswith(self.suffix) and len(value) > len(self.suffix)
            return ok is not c.invert
        return c.test(value)


class _Alt:
    """One match block of one rule, compiled."""

    __slots__ = ("rule", "order", "methods", "path", "authority", "headers", "cookies", "query", "required")

    def __init__(self, rule: int, order: int, block: MatchBlock) -> None:
        self.rule = rule
        self.order = order
        self.methods = frozenset(m.encode("latin-1") for m in block.methods) or None
        self.path = _Cond(block.path) if block.path is not None else None
        self.authority = _AuthorityCond(block.authority) if block.authority is not None else None
        self.headers = tuple((h.name.encode("latin-1"), _Cond(h.match)) for h in block.headers)
        self.cookies = tuple((c.name.encode("latin-1"), _Cond(c.match)) for c in block.cookies)
        self.query = tuple((q.name.encode("latin-1"), _Cond(q.match)) for q in block.query)
        # A header or cookie that must be present for this block to match (a value
        # condition that is not inverted): the block is a candidate only when the
        # request carries it, so rules on headers a request lacks cost nothing.
        self.required: tuple[str, bytes] | None = None
        for kind, conds in (("h", self.headers), ("c", self.cookies)):
            for name, cond in conds:
                if self.required is None and cond.kind != _ABSENT and not cond.invert:
                    self.required = (kind, name)

    def matches(self, req: _Request) -> bool:
        if self.methods is not None and req.method not in self.methods:
            return False
        if self.path is not None and not self.path.test(req.path):
            return False
        if self.authority is not None and not self.authority.test(req.authority, req.host):
            return False
        if self.headers:
            values = req.headers
            for name, cond in self.headers:
                if not cond.test(values.get(name)):
                    return False
        if self.cookies:
            jar = req.cookies()
            for name, cond in self.cookies:
                if not cond.test(jar.get(name)):
                    return False
        if self.query:
            params = req.params()
            for name, cond in self.query:
                if not cond.test(params.get(name)):
                    return False
        return True

    def index_keys(self, block: MatchBlock) -> tuple[bytes | None, bytes | None]:
        """(exact host, first path segment) this block pins, None for "any"."""
        host: bytes | None = None
        a = block.authority
        if a is not None and a.kind == "exact" and not a.invert and not a.value.startswith("*."):
            host = _host_of(a.value.lower().encode("latin-1"))
            if self.authority is not None and self.authority.with_port:
                host = None  # keyed by host only; a port-pinned pattern still filters below
        seg: bytes | None = None
        p = block.path
        if p is not None and not p.invert and not p.ignore_case:
            v = p.value.encode("latin-1")
            if p.kind == "exact" and v.startswith(b"/"):
                seg = v[1:].split(b"/", 1)[0]
            elif p.kind in ("prefix", "segmentPrefix") and v.startswith(b"/"):
                rest = v[1:]
                if b"/" in rest or (p.kind == "segmentPrefix" and rest):
                    seg = rest.split(b"/", 1)[0]
        return host, seg


def _host_of(authority: bytes) -> bytes:
    """The host of an authority, lower-cased, port removed (`[::1]:80` -> `[::1]`)."""
    if authority.startswith(b"["):
        end = authority.find(b"]")
        return authority[: end + 1] if end >= 0 else authority
    colon = authority.rfind(b":")
    return authority[:colon] if colon >= 0 else authority


class _Request:
    """What the conditions read from one request, gathered once: only the header
    names the candidate rules mention, and cookies/query parsed on first use."""

    __slots__ = ("method", "path", "query", "authority", "host", "headers", "_cookie_lines", "_jar", "_params")

    def __init__(self, method: bytes, path: bytes, query: bytes, authority: bytes | None,
                 headers: dict[bytes, bytes], cookie_lines: list[bytes]) -> None:  # fmt: skip
        self.method = method
        self.path = path
        self.query = query
        self.authority = authority
        self.host = _host_of(authority) if authority is not None else None
        self.headers = headers
        self._cookie_lines = cookie_lines
        self._jar: dict[bytes, bytes] | None = None
        self._params: dict[bytes, bytes] | None = None

    def cookies(self) -> dict[bytes, bytes]:
        jar = self._jar
        if jar is None:
            jar = self._jar = parse_cookies(self._cookie_lines)
        return jar

    def params(self) -> dict[bytes, bytes]:
        params = self._params
        if params is None:
            params = self._params = parse_query(self.query)
        return params


def parse_cookies(lines: Sequence[bytes]) -> dict[bytes, bytes]:
    """`Cookie` header values -> name -> first value (RFC 6265 §5.4: pairs separated
    by `;`; HTTP/2 may send one field per pair, RFC 9113 §8.2.3). A quoted value keeps
    its quotes out, as browsers send them."""
    jar: dict[bytes, bytes] = {}
    for line in lines:
        for pair in line.split(b";"):
            name, eq, value = pair.partition(b"=")
            if not eq:
                continue
            name = name.strip()
            value = value.strip()
            if len(value) >= 2 and value[0] == 34 and value[-1] == 34:  # 34: '"'
                value = value[1:-1]
            if name and name not in jar:
                jar[name] = value
    return jar


def parse_query(query: bytes) -> dict[bytes, bytes]:
    """`?a=1&b=x%20y` -> {a: 1, b: x y}: percent-decoded, first value of each name;
    a name without `=` has the empty value."""
    params: dict[bytes, bytes] = {}
    if query.startswith(b"?"):
        query = query[1:]
    for piece in query.split(b"&"):
        if not piece:
            continue
        name, _, value = piece.partition(b"=")
        if b"%" in name:
            name = unquote_to_bytes(name)
        if b"%" in value:
            value = unquote_to_bytes(value)
        if name not in params:
            params[name] = value
    return params


class _Candidates:
    """The alternatives a (host, segment) can match, in rule order, and what they
    read: those that need no particular header or cookie, and the others by the
    header or cookie they need."""

    __slots__ = ("alts", "always", "by_header", "by_cookie", "header_names", "wants_cookies")

    def __init__(self, alts: list[_Alt]) -> None:
        self.alts = tuple(alts)
        names: set[bytes] = set()
        cookies = False
        always: list[_Alt] = []
        by_header: dict[bytes, list[_Alt]] = {}
        by_cookie: dict[bytes, list[_Alt]] = {}
        for a in alts:
            names.update(n for n, _ in a.headers)
            cookies = cookies or bool(a.cookies)
            req = a.required
            if req is None:
                always.append(a)
            else:
                (by_header if req[0] == "h" else by_cookie).setdefault(req[1], []).append(a)
        self.always = tuple(always)
        self.by_header = {k: tuple(v) for k, v in by_header.items()}
        self.by_cookie = {k: tuple(v) for k, v in by_cookie.items()}
        self.header_names = frozenset(names)
        self.wants_cookies = cookies


class Actions:
    """What a set of matched rules does to the request beyond the dtab: URI and
    authority rewrites, header edits, the sticky-hash source. Built once per set of
    matched rules; immutable."""

    __slots__ = ("uri", "authority", "request", "response", "hash_on", "_uri_rx")

    def __init__(self, rules: Sequence[RuleConfig], router_hash_on: HashOn | None) -> None:
        self.uri: UriRewrite | None = None
        self.authority: bytes | None = None
        req: list[HeaderEdits] = []
        resp: list[HeaderEdits] = []
        self.hash_on = router_hash_on
        for r in rules:  # a later rule's rewrite replaces an earlier one's
            if r.uri is not None:
                self.uri = r.uri
            if r.authority is not None:
                self.authority = r.authority.encode("latin-1")
            if r.request_headers:
                req.append(r.request_headers)
            if r.response_headers:
                resp.append(r.response_headers)
            if r.hash_on is not None:
                self.hash_on = r.hash_on
        self._uri_rx = re.compile(self.uri.match.encode("latin-1")) if self.uri is not None and self.uri.kind == "regex" else None
        self.request = _compile_edits(req)
        self.response = _compile_edits(resp)

    def is_noop(self) -> bool:
        return self.uri is None and self.authority is None and self.request is None and self.response is None

    def rewrite_target(self, target: bytes) -> bytes:
        """The request-target after the URI rewrite (the query is kept as it was)."""
        u = self.uri
        if u is None:
            return target
        path, query = split_target(target)
        if u.kind == "path":
            new = u.replacement.encode("latin-1")
        elif u.kind == "prefix":
            old = u.match.encode("latin-1")
            if not path.startswith(old):
                return target
            rest = path[len(old) :]
            repl = u.replacement.encode("latin-1")
            if repl.endswith(b"/") and rest.startswith(b"/"):
                rest = rest[1:]  # `/api` -> `/` on `/api/x` gives `/x`, not `//x`
            new = repl + rest
            if not new.startswith(b"/"):
                new = b"/" + new
        else:
            assert self._uri_rx is not None
            new = self._uri_rx.sub(u.replacement.encode("latin-1"), path)
        return new + query

    def edit_request(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Authority rewrite and request header edits on the outgoing header list."""
        auth = self.authority
        if auth is not None:
            headers = [(n, auth) if n == b"host" else (n, v) for n, v in headers]
        edit = self.request
        return edit(headers) if edit is not None else headers

    def edit_response(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        edit = self.response
        return edit(headers) if edit is not None else headers


def _compile_edits(edits: list[HeaderEdits]) -> Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]] | None:
    if not edits:
        return None
    steps: list[tuple[frozenset[bytes], list[tuple[bytes, bytes]]]] = []
    for e in edits:
        drop = frozenset(n.lower().encode("latin-1") for n in (*e.remove, *(k for k, _ in e.set)))
        append = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (*e.set, *e.add)]
        steps.append((drop, append))

    def apply(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        for drop, append in steps:
            if drop:
                headers = [h for h in headers if h[0] not in drop]
            else:
                headers = list(headers)
            headers.extend(append)
        return headers

    return apply


class Overlay:
    """One set of matched rules, precomputed: the table to bind with (base ++ the
    rules' dentries, compiled, with its own lookup memo) and the merged actions."""

    __slots__ = ("key", "dtab", "table", "actions", "names", "rules", "service")

    def __init__(self, key: tuple[int, ...], base: CompiledDtab, rules: Sequence[RuleConfig], hash_on: HashOn | None) -> None:
        self.key = key
        self.rules = tuple(rules)  # the matched rules, for explanations (no-route message, admin)
        # A rule's `service` renames the request (the last such rule wins, as rewrites do).
        self.service = next((r.service for r in reversed(self.rules) if r.service is not None), None)
        entries = [d for r in rules for d in r.dtab.dentries]
        self.dtab = Dtab(tuple(entries)) if entries else Dtab.EMPTY
        self.table = compile_dtab(base.dtab + self.dtab) if entries else base
        acts = Actions(rules, hash_on)
        self.actions: Actions | None = None if acts.is_noop() and acts.hash_on is None else acts
        self.names = tuple(r.name for r in rules)


class RuleSet:
    """A router's rules, compiled. Immutable apart from its bounded memos."""

    __slots__ = ("rules", "hash_on", "_index", "_groups", "_candidates", "_overlays", "_base", "_empty")

    def __init__(self, rules: Sequence[RuleConfig], base: CompiledDtab, hash_on: HashOn | None = None) -> None:
        self.rules = tuple(rules)
        self.hash_on = hash_on
        self._base = base
        self._groups: tuple[int, ...] = _group_ids(self.rules)
        index: dict[tuple[bytes | None, bytes | None], list[_Alt]] = {}
        order = 0
        for i, r in enumerate(self.rules):
            for block in r.match or (MatchBlock(),):  # no conditions: always matches
                alt = _Alt(i, order, block)
                order += 1
                index.setdefault(alt.index_keys(block), []).append(alt)
        self._index = index
        self._candidates: dict[tuple[bytes | None, bytes], _Candidates] = {}
        self._overlays: dict[tuple[int, ...], Overlay] = {}
        self._empty = Overlay((), base, (), hash_on)

    def __len__(self) -> int:
        return len(self.rules)

    def candidates(self, host: bytes | None, seg: bytes) -> _Candidates:
        """The alternatives that can match a request for `host` whose path starts
        with the segment `seg`: those pinned to this host and segment, to this host
        and any path, to any host and this segment, and to neither (memoised)."""
        key = (host, seg)
        memo = self._candidates
        c = memo.get(key)
        if c is not None:
            return c
        idx = self._index
        keys: tuple[tuple[bytes | None, bytes | None], ...] = ((None, seg), (None, None))
        if host is not None:
            keys = ((host, seg), (host, None), *keys)
        alts = [a for k in keys for a in idx.get(k, ())]
        alts.sort(key=lambda a: a.order)
        c = _Candidates(alts)
        if len(memo) >= CANDIDATE_MEMO_SIZE:
            memo.clear()
        memo[key] = c
        return c

    def match(self, method: bytes, target: bytes, authority: bytes | None,
              headers: Sequence[tuple[bytes, bytes]]) -> tuple[int, ...]:  # fmt: skip
        """The indexes of the rules this request matches, in rule order; within a
        group only the first matching rule is kept."""
        path, query = split_target(target)
        host = _host_of(authority.lower()) if authority is not None else None
        seg = path[1:].split(b"/", 1)[0] if len(path) > 1 else b""
        cand = self.candidates(host, seg)
        alts = cand.alts
        if not alts:
            return ()
        wanted = cand.header_names
        values: dict[bytes, bytes] = {}
        cookie_lines: list[bytes] = []
        wants_cookies = cand.wants_cookies
        if wanted or wants_cookies:
            for n, v in headers:  # one pass, only the names the candidates mention
                if n in wanted:
                    old = values.get(n)
                    # Repeated fields are one comma-joined list (RFC 9110 §5.3).
                    values[n] = v if old is None else old + b"," + v
                if wants_cookies and n == b"cookie":
                    cookie_lines.append(v)
        req = _Request(method, path, query, authority, values, cookie_lines)
        # Only the alternatives whose required header or cookie is present.
        alts = cand.always
        extra: list[_Alt] | None = None
        if cand.by_header and values:
            by_header = cand.by_header
            for n in values:
                hit = by_header.get(n)
                if hit is not None:
                    extra = [*hit] if extra is None else extra + [*hit]
        if cand.by_cookie and cookie_lines:
            by_cookie = cand.by_cookie
            for n in req.cookies():
                hit = by_cookie.get(n)
                if hit is not None:
                    extra = [*hit] if extra is None else extra + [*hit]
        if extra is not None:
            extra.extend(alts)
            extra.sort(key=_order)
            alts = tuple(extra)
        if not alts:
            return ()
        matched: list[int] = []
        groups = self._groups
        taken: set[int] | None = None
        last = -1
        for alt in alts:  # in rule order, so `matched` comes out sorted
            r = alt.rule
            if r == last:
                continue  # another block of a rule that already matched
            g = groups[r]
            if g >= 0 and taken is not None and g in taken:
                continue
            if alt.matches(req):
                matched.append(r)
                last = r
                if g >= 0:
                    if taken is None:
                        taken = set()
                    taken.add(g)
        return tuple(matched)

    def overlay(self, key: tuple[int, ...]) -> Overlay:
        if not key:
            return self._empty
        memo = self._overlays
        o = memo.get(key)
        if o is None:
            if len(memo) >= OVERLAY_MEMO_SIZE:
                memo.clear()
            o = memo[key] = Overlay(key, self._base, [self.rules[i] for i in key], self.hash_on)
        return o


def _order(alt: _Alt) -> int:
    return alt.order


def _group_ids(rules: Sequence[RuleConfig]) -> tuple[int, ...]:
    ids: dict[str, int] = {}
    out = []
    for r in rules:
        if r.group is None:
            out.append(-1)
        else:
            out.append(ids.setdefault(r.group, len(ids)))
    return tuple(out)


def hash_value(hash_on: HashOn, headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The value a sticky split hashes: the named header's first value, or the named
    cookie's value; None when the request has neither."""
    if hash_on.header is not None:
        name = hash_on.header.encode("latin-1")
        for n, v in headers:
            if n == name:
                return v
        return None
    assert hash_on.cookie is not None
    return parse_cookies([v for n, v in headers if n == b"cookie"]).get(hash_on.cookie.encode("latin-1"))


__all__ = ["Actions", "NamedMatch", "Overlay", "RuleSet", "hash_value", "parse_cookies", "parse_query", "sticky_u"]


def describe(rules: Sequence[RuleConfig]) -> list[dict[str, Any]]:
    """A short JSON view of rules for logs and the admin API."""
    return [{"name": r.name, "group": r.group, "dtab": r.dtab.show(), "blocks": len(r.match)} for r in rules]
