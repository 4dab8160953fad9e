"""docs/dtab.md §12: the delegator's explanation tree and its JSON rendering (§12.3–§12.5),
including the byte-exact DelegateApiHandlerTest worked example and the 'other shapes'."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dtab import DtabError, bind, delegate_json, read_dtab
from tests.unit.dtab import ErrorNamer, P, namer_entry, show_bound

WORKED_DTAB = (
    "/beh => /#/error; /bah/humbug => /$/inet/127.1/8080;\n"
    "/foo => /bah | /beh | /$/fail; /foo => /bar; /boo => /foo;\n"
    "/meh => /heh; /neg => ~"
)

# Linkerd's DelegateApiHandlerTest example (§12.5 shapes), laid out with whitespace between tokens only.
WORKED_JSON = """
{"type":"delegate","path":"/boo/humbug","delegate":{
  "type":"alt","path":"/foo/humbug","dentry":{"prefix":"/boo","dst":"/foo"},"alt":[
    {"type":"neg","path":"/bar/humbug","dentry":{"prefix":"/foo","dst":"/bar"}},
    {"type":"delegate","path":"/bah/humbug","dentry":{"prefix":"/foo","dst":"/bah | /beh | /$/fail"},
     "delegate":{"type":"leaf","path":"/$/inet/127.1/8080",
                 "dentry":{"prefix":"/bah/humbug","dst":"/$/inet/127.1/8080"},
                 "bound":{"addr":{"type":"bound","addrs":[{"ip":"127.0.0.1","port":8080,"meta":{}}],"meta":{}},
                          "id":"/$/inet/127.1/8080","path":"/"}}},
    {"type":"delegate","path":"/beh/humbug","dentry":{"prefix":"/foo","dst":"/bah | /beh | /$/fail"},
     "delegate":{"type":"exception","path":"/#/error/humbug","dentry":{"prefix":"/beh","dst":"/#/error"},
                 "message":"error naming /#/error/humbug"}},
    {"type":"fail","path":"/$/fail/humbug","dentry":{"prefix":"/foo","dst":"/bah | /beh | /$/fail"}}]}}
"""


def compact(value: Any) -> str:
    """The byte form the delegator would send: key order kept, no spaces between tokens."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def error_namers() -> list[tuple[object, object]]:
    return [namer_entry("/#/error", ErrorNamer("/#/error"))]


def explain(dtab: str, path: str) -> dict[str, Any]:
    return delegate_json(read_dtab(dtab), P(path), namers=error_namers())


def test_worked_example_structure() -> None:
    assert explain(WORKED_DTAB, "/boo/humbug") == json.loads(WORKED_JSON)


def test_worked_example_byte_exact() -> None:
    expected = compact(json.loads(WORKED_JSON))
    assert compact(explain(WORKED_DTAB, "/boo/humbug")) == expected


def test_worked_example_binding_never_touches_the_error_namer() -> None:
    namer = ErrorNamer("/#/error")
    result = bind(read_dtab(WORKED_DTAB), P("/boo/humbug"), namers=[namer_entry("/#/error", namer)])
    assert show_bound(result) == "/$/inet/127.1/8080"
    assert namer.calls == []


# (dtab, path, expected JSON text) — §12.5 "other shapes" first, then shapes derived from §12.3/§12.4
SHAPES = [
    (
        WORKED_DTAB,
        "/meh",
        '{"type":"delegate","path":"/meh","delegate":{"type":"neg","path":"/heh",'
        '"dentry":{"prefix":"/meh","dst":"/heh"}}}',
    ),
    (
        WORKED_DTAB,
        "/neg",
        '{"type":"delegate","path":"/neg","delegate":{"type":"neg","path":"~",'
        '"dentry":{"prefix":"/neg","dst":"~"}}}',
    ),
    (WORKED_DTAB, "/nope", '{"type":"neg","path":"/nope"}'),
    (
        "/yeezy => /a; /yeezy => /b",
        "/yeezy",
        '{"type":"alt","path":"/yeezy","alt":['
        '{"type":"neg","path":"/b","dentry":{"prefix":"/yeezy","dst":"/b"}},'
        '{"type":"neg","path":"/a","dentry":{"prefix":"/yeezy","dst":"/a"}}]}',
    ),
    # '!' from the dtab: the fail node keeps the path being explained but prints "!"
    (
        "/x => !",
        "/x",
        '{"type":"delegate","path":"/x","delegate":{"type":"fail","path":"!","dentry":{"prefix":"/x","dst":"!"}}}',
    ),
    (
        "/x => $",
        "/x/y",
        '{"type":"delegate","path":"/x/y","delegate":{"type":"empty","path":"/x/y",'
        '"dentry":{"prefix":"/x","dst":"$"}}}',
    ),
    # /$/fail and /$/nil answered by the global namer carry the dentry that led there
    (
        "/x => /$/fail",
        "/x/y",
        '{"type":"delegate","path":"/x/y","delegate":{"type":"fail","path":"/$/fail/y",'
        '"dentry":{"prefix":"/x","dst":"/$/fail"}}}',
    ),
    (
        "/x => /$/nil",
        "/x",
        '{"type":"delegate","path":"/x","delegate":{"type":"empty","path":"/$/nil",'
        '"dentry":{"prefix":"/x","dst":"/$/nil"}}}',
    ),
    # a union whose path equals the root's replaces the root delegate (§12.4), taking its
    # (absent) dentry; weights are JSON numbers
    (
        "/x => 0.3*/a & 0.7*/b",
        "/x",
        '{"type":"union","path":"/x","union":['
        '{"weight":0.3,"tree":{"type":"neg","path":"/a","dentry":{"prefix":"/x","dst":"0.30*/a & 0.70*/b"}}},'
        '{"weight":0.7,"tree":{"type":"neg","path":"/b","dentry":{"prefix":"/x","dst":"0.30*/a & 0.70*/b"}}}]}',
    ),
    (
        "/x => /a | /b",
        "/x",
        '{"type":"alt","path":"/x","alt":['
        '{"type":"neg","path":"/a","dentry":{"prefix":"/x","dst":"/a | /b"}},'
        '{"type":"neg","path":"/b","dentry":{"prefix":"/x","dst":"/a | /b"}}]}',
    ),
    # a leaf bound directly at the root: no dentry anywhere
    (
        "",
        "/$/inet/127.0.0.1/8080/rest",
        '{"type":"leaf","path":"/$/inet/127.0.0.1/8080/rest","bound":{"addr":{"type":"bound",'
        '"addrs":[{"ip":"127.0.0.1","port":8080,"meta":{}}],"meta":{}},'
        '"id":"/$/inet/127.0.0.1/8080","path":"/rest"}}',
    ),
    # the namer's error at the root
    (
        "",
        "/#/error/x",
        '{"type":"exception","path":"/#/error/x","message":"error naming /#/error/x"}',
    ),
    # a chain: each delegate keeps its own dentry
    (
        "/a => /b; /b => /c",
        "/a/z",
        '{"type":"delegate","path":"/a/z","delegate":{"type":"delegate","path":"/b/z",'
        '"dentry":{"prefix":"/a","dst":"/b"},"delegate":{"type":"neg","path":"/c/z",'
        '"dentry":{"prefix":"/b","dst":"/c"}}}}',
    ),
]


@pytest.mark.parametrize(("dtab", "path", "expected"), SHAPES)
def test_shapes(dtab: str, path: str, expected: str) -> None:
    result = explain(dtab, path)
    assert result == json.loads(expected)
    assert compact(result) == expected


def test_every_node_starts_with_type() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "tree" in node and "weight" in node:
                walk(node["tree"])
                return
            if "type" in node and "path" in node:
                assert next(iter(node)) == "type"
                if "dentry" in node:
                    assert list(node["dentry"]) == ["prefix", "dst"]
            for key, value in node.items():
                if key not in ("bound", "dentry"):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(explain(WORKED_DTAB, "/boo/humbug"))
    walk(explain("/x => 0.3*/a & 0.7*/b", "/x"))


def test_delegator_expands_every_alternative() -> None:
    # binding stops at the first non-negative alternative; the delegator shows them all
    result = explain("/x => /$/inet/127.0.0.1/1 | /$/inet/127.0.0.1/2", "/x")
    assert result["type"] == "alt"
    ids = [member["bound"]["id"] for member in result["alt"]]
    assert ids == ["/$/inet/127.0.0.1/1", "/$/inet/127.0.0.1/2"]


def test_depth_limit_inside_alternative_becomes_exception_node() -> None:
    result = explain("/loop => /loop/x; /root => /loop | /$/inet/127.0.0.1/9", "/root")
    members = result["alt"]
    assert result["type"] == "alt"
    kinds = [m["type"] for m in members]
    assert kinds[0] == "exception"
    assert members[0]["message"] == "Max recursion level reached."
    assert members[1]["type"] == "leaf"


def test_depth_limit_without_enclosing_alt_fails_the_request() -> None:
    with pytest.raises(DtabError, match="Max recursion level"):
        explain("/loop => /loop/x", "/loop")


def test_explanation_uses_only_the_given_dtab() -> None:
    assert explain("", "/svc/web") == {"type": "neg", "path": "/svc/web"}
