"""Match rules: each condition kind, order and groups, the index, overlays, actions,
`Router.select`, and weighted splits (statistical and sticky)."""

from __future__ import annotations

import random
import textwrap

import pytest

from config import ConfigError, load_text
from dtab import Dtab, read_dtab, read_path
from proxy.route.identify import IdentifierChain, RequestHead
from proxy.route.router import Router
from proxy.route.rules import RuleSet, parse_cookies, parse_query, sticky_u

BASE = "/svc => /$/inet/127.0.0.1/1000; /svc/web-v2 => /$/inet/127.0.0.1/2000; /svc/web-v3 => /$/inet/127.0.0.1/3000"


def _router(rules_yaml: str, dtab: str = BASE, extra: str = "") -> Router:
    text = (
        "routers:\n- protocol: http\n"
        f"  dtab: '{dtab}'\n  servers: [{{port: 0}}]\n{extra}"
        "  rules:\n" + textwrap.indent(textwrap.dedent(rules_yaml), "  ")
    )
    rc = load_text(text).routers[0]
    return Router("t", rc.dtab, identifier=IdentifierChain.from_config(None), rules=rc.rules, hash_on=rc.hash_on)


def _req(target: str = "/", method: str = "GET", host: str = "web", headers: list[tuple[str, str]] = ()) -> tuple:
    hs = [(b"host", host.encode())] + [(n.lower().encode(), v.encode()) for n, v in headers]
    view = RequestHead(method.encode(), target.encode(), b"1.1", dict(reversed(hs)))
    return view, hs


def _matched(router: Router, *args, **kw) -> tuple[str, ...]:
    view, hs = _req(*args, **kw)
    rules = router.rules
    assert rules is not None
    host = view.headers.get(b"host")
    return tuple(rules.rules[i].name for i in rules.match(view.method, view.target, host, hs))


def _dst(router: Router, *args, **kw) -> str:
    view, hs = _req(*args, **kw)
    sel = router.select(view, hs, Dtab.EMPTY, b"")
    picked = sel.route.pick(sel.u)
    assert picked is not None
    return picked[1].id.show()


V2 = "dtab: /svc/web => /svc/web-v2"


@pytest.mark.parametrize(("cond", "yes", "no"), [
    ("headers: {x-user: alice}", [("x-user", "alice")], [("x-user", "Alice")]),
    ("headers: {x-user: {prefix: al}}", [("x-user", "alfred")], [("x-user", "bob")]),
    ("headers: {x-user: {regex: 'a.*e'}}", [("x-user", "alice")], [("x-user", "xalice")]),  # a full match
    ("headers: {x-debug: {present: true}}", [("x-debug", "")], []),
    ("headers: {x-debug: {absent: true}}", [], [("x-debug", "1")]),
    ("headers: {x-user: {exact: bob, invert: true}}", [("x-user", "alice")], [("x-user", "bob")]),
    ("headers: {X-User: alice}", [("X-USER", "alice")], []),  # names are case-insensitive
    ("cookies: {shop_session-id: 4f9e}", [("cookie", "a=b; shop_session-id=4f9e; c=d")], [("cookie", "x_shop_session-id=4f9e")]),
    ("cookies: {s: {prefix: '4f'}}", [("cookie", 's="4f9e"')], [("cookie", "s=f4")]),
    ("query: {v: '2'}", [], []),
], ids=lambda v: str(v)[:30])  # fmt: skip
def test_header_and_cookie_conditions(cond: str, yes: list, no: list) -> None:
    r = _router(f"- name: r\n  match: {{{cond}}}\n  {V2}\n")
    if "query" in cond:
        assert _matched(r, "/a?v=2") == ("r",)
        assert _matched(r, "/a?v=22&x") == ()
        return
    assert _matched(r, headers=yes) == ("r",)
    assert _matched(r, headers=no) == ()


def test_cookie_is_parsed_by_name_not_searched() -> None:
    # The value appears in the raw header, but under another cookie's name.
    r = _router(f"- name: r\n  match: {{cookies: {{user: jason}}}}\n  {V2}\n")
    assert _matched(r, headers=[("cookie", "olduser=jason; user=bob")]) == ()
    assert _matched(r, headers=[("cookie", "a=1"), ("cookie", "user=jason")]) == ("r",)  # h2: one field per pair


def test_query_method_path_and_authority() -> None:
    r = _router(f"""\
        - name: q
          match: {{query: {{"a b": {{regex: "x%?.*"}}, flag: {{present: true}}}}}}
          {V2}
        - name: m
          match: {{method: [POST, put]}}
          {V2}
        - name: exact
          match: {{path: /a/b}}
          {V2}
        - name: prefix
          match: {{path: {{prefix: /ap}}}}
          {V2}
        - name: seg
          match: {{path: {{segmentPrefix: /api}}}}
          {V2}
        - name: rx
          match: {{path: {{regex: '/u/[0-9]+', ignoreCase: true}}}}
          {V2}
        - name: host
          match: {{authority: Shop.Example}}
          {V2}
        - name: hostport
          match: {{authority: 'shop.example:8080'}}
          {V2}
        - name: wild
          match: {{authority: '*.example.org'}}
          {V2}
        """)
    assert _matched(r, "/?a%20b=xyz&flag") == ("q",)
    assert _matched(r, "/?a%20b=xyz") == ()
    assert _matched(r, "/", "PUT") == ("m",)
    assert _matched(r, "/a/b?z=1") == ("exact",)
    assert _matched(r, "/a/b/") == ()
    assert _matched(r, "/apple") == ("prefix",)
    assert _matched(r, "/api") == ("prefix", "seg")
    assert _matched(r, "/api/x") == ("prefix", "seg")
    assert _matched(r, "/apix") == ("prefix",)
    assert _matched(r, "/U/42") == ("rx",)
    assert _matched(r, "/u/42x") == ()
    assert _matched(r, host="shop.example:9999") == ("host",)
    assert _matched(r, host="SHOP.example:8080") == ("host", "hostport")
    assert _matched(r, host="a.b.example.org") == ("wild",)
    assert _matched(r, host="example.org") == ()


def test_blocks_are_ored_conditions_anded() -> None:
    r = _router(f"""\
        - name: r
          match:
          - {{method: GET, headers: {{x-a: '1'}}}}
          - {{path: {{prefix: /b}}}}
          {V2}
        """)
    assert _matched(r, "/", "GET", headers=[("x-a", "1")]) == ("r",)
    assert _matched(r, "/", "POST", headers=[("x-a", "1")]) == ()
    assert _matched(r, "/", "GET") == ()
    assert _matched(r, "/b", "DELETE") == ("r",)


def test_later_rule_wins_and_group_takes_first_match() -> None:
    r = _router("""\
        - name: a
          match: {headers: {x-a: '1'}}
          dtab: /svc/web => /svc/web-v2
        - name: b
          match: {headers: {x-b: '1'}}
          dtab: /svc/web => /svc/web-v3
        - name: g1
          group: g
          match: {headers: {x-g: '1'}}
          dtab: /svc/api => /svc/web-v2
        - name: g2
          group: g
          dtab: /svc/api => /svc/web-v3
        """)
    both = [("x-a", "1"), ("x-b", "1")]
    assert _matched(r, headers=both) == ("a", "b", "g2")
    assert _dst(r, headers=both) == "/$/inet/127.0.0.1/3000"  # b comes later: its entry wins
    assert _dst(r, headers=[("x-a", "1")]) == "/$/inet/127.0.0.1/2000"
    assert _matched(r, headers=[("x-g", "1")]) == ("g1",)  # first in the group; g2 is skipped
    assert _dst(r, host="api", headers=[("x-g", "1")]) == "/$/inet/127.0.0.1/2000"
    assert _dst(r, host="api") == "/$/inet/127.0.0.1/3000"
    assert _dst(r) == "/$/inet/127.0.0.1/1000"


def test_index_skips_rules_for_other_hosts_and_paths() -> None:
    rules = "".join(f"- name: h{i}\n  match: {{authority: host{i}, path: {{prefix: /p{i}/}}}}\n  {V2}\n" for i in range(1000))
    rules += f"- name: any\n  match: {{headers: {{x: '1'}}}}\n  {V2}\n"
    r = _router(rules)
    rs = r.rules
    assert rs is not None
    assert [a.rule for a in rs.candidates(b"host7", b"p7").alts] == [7, 1000]
    assert [a.rule for a in rs.candidates(b"host7", b"other").alts] == [1000]
    assert [a.rule for a in rs.candidates(b"nohost", b"p7").alts] == [1000]
    assert _matched(r, "/p7/x", host="host7:80") == ("h7",)


def test_rules_overlay_is_not_forwarded_downstream() -> None:
    r = _router(f"- name: r\n  {V2}\n")
    view, hs = _req()
    local = read_dtab("/svc/other => /svc/web-v3")
    sel = r.select(view, hs, local, b"k")
    assert sel.route.local == local  # l5d-ctx-dtab carries ctx ++ user only
    assert sel.route.rules_dtab == read_dtab("/svc/web => /svc/web-v2")
    assert sel.route.pick()[1].id.show() == "/$/inet/127.0.0.1/2000"
    assert r.select(view, hs, local, b"k").route is sel.route  # cached by (rules, local, name)
    # The override is appended after the rules (docs/dtab.md §10 order): it wins.
    win = read_dtab("/svc/web => /svc/web-v3")
    assert r.select(view, hs, win, b"w").route.pick()[1].id.show() == "/$/inet/127.0.0.1/3000"


def test_router_without_rules_has_no_ruleset() -> None:
    r = Router("t", read_dtab(BASE), identifier=IdentifierChain.from_config(None))
    assert r.rules is None
    view, hs = _req()
    sel = r.select(view, hs, Dtab.EMPTY, b"")
    assert sel.route is r.route(read_path("/svc/web"), Dtab.EMPTY, b"")
    assert sel.u is None and sel.actions is None


def test_actions_rewrite_uri_authority_and_headers() -> None:
    r = _router("""\
        - name: p
          match: {path: {prefix: /api/}}
          rewrite: {uri: {prefix: /api/, replacement: /}, authority: backend.internal}
          requestHeaders: {set: {x-a: '1'}, add: {x-b: '2'}, remove: [x-drop]}
          responseHeaders: {set: {server: dtabproxy}}
        - name: rx
          match: {path: {prefix: /u/}}
          rewrite: {uri: {regex: '^/u/([^/]+)/(.*)$', replacement: '/users/\\2?/\\1'}}
        - name: full
          match: {path: /old}
          rewrite: {uri: {path: /new/place}}
        """)
    view, hs = _req("/api/v1/items?q=1", headers=[("x-a", "0"), ("x-drop", "y"), ("x-keep", "z")])
    acts = r.select(view, hs, Dtab.EMPTY, b"").actions
    assert acts is not None
    assert acts.rewrite_target(view.target) == b"/v1/items?q=1"
    assert acts.edit_request(hs) == [(b"host", b"backend.internal"), (b"x-keep", b"z"), (b"x-a", b"1"), (b"x-b", b"2")]
    assert acts.edit_response([(b"server", b"nginx"), (b"x", b"y")]) == [(b"x", b"y"), (b"server", b"dtabproxy")]
    view, hs = _req("/u/bob/profile?x")
    acts = r.select(view, hs, Dtab.EMPTY, b"").actions
    assert acts.rewrite_target(view.target) == b"/users/profile?/bob?x"
    view, hs = _req("/old?keep=1")
    assert r.select(view, hs, Dtab.EMPTY, b"").actions.rewrite_target(view.target) == b"/new/place?keep=1"


def test_cookie_and_query_parsers() -> None:
    assert parse_cookies([b"a=1; b=\"2\"; bad; a=3", b"c=4"]) == {b"a": b"1", b"b": b"2", b"c": b"4"}
    assert parse_query(b"?a=1&a=2&b&c=%2Fx&&d=") == {b"a": b"1", b"b": b"", b"c": b"/x", b"d": b""}


# -- weighted splits -----------------------------------------------------------------


SPLIT = "/svc => /$/inet/127.0.0.1/1; /svc/a => /$/inet/127.0.0.1/1001; /svc/b => /$/inet/127.0.0.1/1002; /svc/c => /$/inet/127.0.0.1/1003"


def _split_router(tree: str, hash_on: str = "") -> Router:
    extra = f"  hashOn: {hash_on}\n" if hash_on else ""
    text = f"routers:\n- protocol: http\n  dtab: '{SPLIT}; /svc/web => {tree}'\n  servers: [{{port: 0}}]\n{extra}"
    rc = load_text(text).routers[0]
    return Router("t", rc.dtab, identifier=IdentifierChain.from_config(None), hash_on=rc.hash_on)


def test_split_shares_within_two_percent_and_chi_square() -> None:
    r = _split_router("2 * /svc/a & 3 * /svc/b & 5 * /svc/c")
    route = r.select(*_req(), Dtab.EMPTY, b"").route
    random.seed(20_000)
    n = 20_000
    counts: dict[str, int] = {}
    for _ in range(n):
        name = route.pick()[1].id.show()
        counts[name] = counts.get(name, 0) + 1
    shares = {"/$/inet/127.0.0.1/1001": 0.2, "/$/inet/127.0.0.1/1002": 0.3, "/$/inet/127.0.0.1/1003": 0.5}
    assert set(counts) == set(shares)
    for name, p in shares.items():
        assert abs(counts[name] / n - p) < 0.02
    chi2 = sum((counts[k] - n * p) ** 2 / (n * p) for k, p in shares.items())
    assert chi2 < 13.82  # chi-square, 2 degrees of freedom, p = 0.001


def test_zero_weights() -> None:
    random.seed(7)
    zero = _split_router("0 * /svc/a & 1 * /svc/b").select(*_req(), Dtab.EMPTY, b"").route
    assert {zero.pick()[1].id.show() for _ in range(2000)} == {"/$/inet/127.0.0.1/1002"}
    uniform = _split_router("0 * /svc/a & 0 * /svc/b").select(*_req(), Dtab.EMPTY, b"").route
    seen = [uniform.pick()[1].id.show() for _ in range(4000)]
    assert abs(seen.count("/$/inet/127.0.0.1/1001") / 4000 - 0.5) < 0.03  # all zero: uniform (§9.3)


def _sticky(tree: str, users: list[str], hash_on: str = "{header: x-user}") -> dict[str, str]:
    r = _split_router(tree, hash_on)
    out = {}
    for u in users:
        view, hs = _req(headers=[("x-user", u), ("cookie", f"sid={u}")])
        sel = r.select(view, hs, Dtab.EMPTY, b"")
        assert sel.u is not None
        out[u] = sel.route.pick(sel.u)[1].id.show()
    return out


def test_sticky_split_is_stable_and_moves_only_the_users_between_the_points() -> None:
    users = [f"user-{i}" for i in range(5000)]
    at25 = _sticky("25 * /svc/a & 75 * /svc/b", users)
    assert at25 == _sticky("25 * /svc/a & 75 * /svc/b", users)  # same user, same version
    at50 = _sticky("50 * /svc/a & 50 * /svc/b", users)
    a, b = "/$/inet/127.0.0.1/1001", "/$/inet/127.0.0.1/1002"
    moved = [u for u in users if at25[u] != at50[u]]
    assert all(at25[u] == b and at50[u] == a for u in moved)  # nobody leaves the canary
    assert all(0.25 <= sticky_u(u.encode()) < 0.5 for u in moved)
    assert abs(len(moved) / len(users) - 0.25) < 0.03
    assert abs(sum(v == a for v in at25.values()) / len(users) - 0.25) < 0.03
    assert _sticky("25 * /svc/a & 75 * /svc/b", users[:50], "{cookie: sid}") == {u: at25[u] for u in users[:50]}


def test_sticky_nested_union_keeps_the_shares() -> None:
    users = [f"u{i}" for i in range(6000)]
    got = _sticky("3 * (3 * /svc/a & 2 * /svc/b) & 1 * /svc/c", users)
    for port, p in (("1001", 0.45), ("1002", 0.30), ("1003", 0.25)):
        assert abs(sum(v.endswith(port) for v in got.values()) / len(users) - p) < 0.03


def test_without_the_hash_value_the_pick_is_random() -> None:
    r = _split_router("1 * /svc/a & 1 * /svc/b", "{header: x-user}")
    sel = r.select(*_req(), Dtab.EMPTY, b"")
    assert sel.u is None


# -- config errors ---------------------------------------------------------------------


@pytest.mark.parametrize(("rules", "message"), [
    ("- name: r\n  match: {path: {prefix: api}}\n  dtab: /a => /b\n", "rules[0].match.path: a path starts with '/'"),
    ("- name: r\n  match: {headers: {x: {regex: '('}}}\n  dtab: /a => /b\n", "rules[0].match.headers.x.regex: invalid regex"),
    ("- name: r\n  match: {headers: {x: {exact: a, prefix: b}}}\n  dtab: /a => /b\n", "set exactly one of exact, prefix"),
    ("- name: r\n  match: {cookie: {a: b}}\n  dtab: /a => /b\n", "unknown key 'cookie' (did you mean 'cookies'?)"),
    ("- name: r\n  dtab: /a => \n", "rules[0].dtab: invalid dtab"),
    ("- name: r\n  match: {method: GET}\n", "it does nothing"),
    ("- name: r\n  dtab: /a=>/b\n- name: r\n  dtab: /a=>/c\n", "rule name 'r' is used twice"),
    ("- name: r\n  rewrite: {uri: {prefix: /a}}\n", "rules[0].rewrite.uri.replacement: a prefix rewrite needs 'replacement'"),
    ("- name: r\n  hashOn: {header: x, cookie: y}\n", "rules[0].hashOn: set exactly one of 'header' and 'cookie'"),
    ("- name: r\n  match: []\n  dtab: /a=>/b\n", "an empty match list matches nothing"),
])  # fmt: skip
def test_rule_config_errors_name_key_and_line(rules: str, message: str) -> None:
    text = "routers:\n- protocol: http\n  servers: [{port: 0}]\n  rules:\n" + textwrap.indent(rules, "  ")
    with pytest.raises(ConfigError) as info:
        load_text(text, source="c.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("c.yaml:")
    assert info.value.line is not None and info.value.line >= 5


def test_rules_round_trip_through_config_json() -> None:
    from config.load import rule_json

    rules = """\
        - name: r
          group: g
          match:
          - {method: [GET, POST], path: {segmentPrefix: /a, ignoreCase: true}, authority: x, headers: {h: {present: true}}}
          - {cookies: {c: v}, query: {q: {regex: 'a+', invert: true}}}
          dtab: /svc/a => /svc/b
          rewrite: {uri: {prefix: /a, replacement: /b}, authority: y}
          requestHeaders: {set: {a: '1'}, remove: [b]}
          responseHeaders: {add: {c: '2'}}
          hashOn: {cookie: sid}
        """
    rc = load_text("routers:\n- protocol: http\n  servers: [{port: 0}]\n  rules:\n" + textwrap.indent(textwrap.dedent(rules), "  ")).routers[0]
    import yaml

    again = load_text("routers:\n- protocol: http\n  servers: [{port: 0}]\n  rules:\n"
                      + textwrap.indent(yaml.safe_dump([rule_json(r) for r in rc.rules]), "  ")).routers[0]
    assert again.rules == rc.rules


def test_ruleset_overlay_is_memoised_per_key() -> None:
    r = _router(f"- name: a\n  match: {{headers: {{x: '1'}}}}\n  {V2}\n")
    rs: RuleSet = r.rules
    assert rs.overlay((0,)) is rs.overlay((0,))
    assert rs.overlay(()).table is r.base


def test_rules_needing_an_absent_header_or_cookie_are_not_candidates() -> None:
    rules = "".join(f"- name: h{i}\n  match: {{headers: {{x-flag-{i}: 'on'}}}}\n  {V2}\n" for i in range(500))
    rules += "".join(f"- name: c{i}\n  match: {{cookies: {{k{i}: {{present: true}}}}}}\n  {V2}\n" for i in range(500))
    rules += f"- name: inv\n  match: {{headers: {{x-flag-1: {{exact: 'on', invert: true}}}}}}\n  {V2}\n"
    r = _router(rules)
    cand = r.rules.candidates(b"web", b"")
    assert [a.rule for a in cand.always] == [1000]  # only the inverted one must always be checked
    assert len(cand.by_header) == 500 and len(cand.by_cookie) == 500
    assert _matched(r) == ("inv",)
    assert _matched(r, headers=[("x-flag-7", "on"), ("cookie", "k9=1")]) == ("h7", "c9", "inv")
    assert _matched(r, headers=[("x-flag-1", "on")]) == ("h1",)
