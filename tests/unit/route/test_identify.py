"""Identifiers and the identifier chain (docs/dtab.md §11): every example of the spec and of
Linkerd's identifier tests, the decline/error semantics, and the memo bound."""

from __future__ import annotations

import pytest

from dtab import Path, read_path
from proxy.errors import BadRequest
from proxy.route import identify
from proxy.route.identify import (
    Identified,
    IdentifierChain,
    RequestHead,
    make_identifier,
    split_target,
    url_segments,
)

SVC = Path.of("svc")


def req(target=b"/", method=b"GET", version=b"1.1", **headers):
    return RequestHead(method, target, version, {k.encode(): v for k, v in headers.items()})


def h(pairs, target=b"/", method=b"GET", version=b"1.1"):
    return RequestHead(method, target, version, dict(pairs))


def ident(kind, options=None, prefix=SVC, protocol="http"):
    return IdentifierChain([make_identifier(kind, options or {}, prefix, protocol)])


def P(text):
    return read_path(text)


# -- io.l5d.header.token ----------------------------------------------------------------------


def test_header_token_whole_value_one_element_case_and_port_kept():
    got = ident("io.l5d.header.token").identify(req(host=b"Web.Example:8080"))
    assert got == Identified(P("/svc/Web.Example:8080"), None)
    assert got.path.elems == (b"svc", b"Web.Example:8080")


def test_header_token_value_with_non_showable_bytes_is_one_raw_element():
    got = ident("io.l5d.header.token", {"header": "x-svc"}).identify(h({b"x-svc": b"a b/c"}))
    assert got.path.elems == (b"svc", b"a b/c")
    assert got.path.show() == "/svc/\\x61\\x20\\x62\\x2f\\x63"


@pytest.mark.parametrize("headers", [{}, {b"host": b""}])
def test_header_token_declines_when_absent_or_empty(headers):
    with pytest.raises(BadRequest) as e:
        ident("io.l5d.header.token").identify(h(headers, target=b"/x"))
    assert str(e.value) == 'Unknown destination: Request("GET /x") / Host header is absent'
    assert e.value.status == 400


def test_header_token_custom_header_is_case_insensitive():
    chain = ident("io.l5d.header.token", {"header": "X-Route-To"})
    assert chain.identify(req(**{"x-route-to": b"world"})).path == P("/svc/world")


def test_header_token_h2_defaults_to_authority():
    chain = ident("io.l5d.header.token", protocol="h2")
    got = chain.identify(h({b":authority": b"hello:50051", b":path": b"/a"}, b"/a", b"POST", b"2"))
    assert got.path == P("/svc/hello:50051")


def test_header_token_host_and_authority_stand_in_for_each_other():
    # an HTTP router receiving h2 (only :authority), and an h2 router receiving Host
    assert ident("io.l5d.header.token").identify(h({b":authority": b"a"}, version=b"2")).path == P("/svc/a")
    assert ident("io.l5d.header.token", protocol="h2").identify(req(host=b"b")).path == P("/svc/b")


def test_header_token_accepts_a_lookup_callable():
    values = {b"host": b"web"}
    head = RequestHead(b"GET", b"/", b"1.1", values.get)
    assert ident("io.l5d.header.token").identify(head).path == P("/svc/web")


def test_header_token_custom_prefix():
    chain = ident("io.l5d.header.token", prefix=P("/http/1.1"))
    assert chain.identify(req(host=b"web")).path == P("/http/1.1/web")


def test_header_token_memo_returns_the_same_path_and_is_bounded(monkeypatch):
    monkeypatch.setattr(identify, "MEMO_SIZE", 3)
    tok = identify.HeaderTokenIdentifier(SVC)
    chain = IdentifierChain([tok])
    first = chain.identify(req(host=b"a")).path
    assert chain.identify(req(host=b"a")).path is first
    for name in (b"b", b"c", b"d", b"e"):
        assert chain.identify(req(host=name)).path == Path((b"svc", name))
    assert len(tok._memo) <= 3


# -- io.l5d.header -----------------------------------------------------------------------------


def test_header_reads_the_value_as_a_path():
    got = ident("io.l5d.header").identify(h({b"l5d-name": b"/web/v2"}))
    assert got.path == P("/svc/web/v2")


def test_header_path_value_skips_surrounding_whitespace_and_comments():
    got = ident("io.l5d.header").identify(h({b"l5d-name": b"  /web # note"}))
    assert got.path == P("/svc/web")


def test_header_path_value_with_escape():
    got = ident("io.l5d.header").identify(h({b"l5d-name": b"/a\\x20b"}))
    assert got.path.elems == (b"svc", b"a b")


def test_header_declines_when_absent():
    with pytest.raises(BadRequest) as e:
        ident("io.l5d.header").identify(req())
    assert str(e.value).endswith(" / l5d-name header is absent")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"/foo/bar/", "label char expected but end of input found at '/foo/bar/[]'"),
        (b"invalid-param", "'/' expected but 'i' found at '[i]nvalid-param'"),
        (b"/foo^bar", "end of input expected but '^' found at '/foo[^]bar'"),
    ],
)
def test_header_unparsable_value_is_400_with_the_parser_message(value, message):
    with pytest.raises(BadRequest) as e:
        ident("io.l5d.header").identify(h({b"l5d-name": value}, target=b"/x"))
    assert str(e.value) == f'Unknown destination: Request("GET /x") / {message}'


def test_header_non_ascii_value_is_a_parse_error():
    with pytest.raises(BadRequest) as e:
        ident("io.l5d.header").identify(h({b"l5d-name": b"/caf\xc3\xa9"}))
    assert "found at '/caf[" in str(e.value)


# -- io.l5d.methodAndHost ------------------------------------------------------------------------


def test_method_and_host_http11_without_host_declines():
    with pytest.raises(BadRequest) as e:
        ident("io.l5d.methodAndHost", prefix=P("/https")).identify(req(b"/some/path?other=stuff"))
    assert str(e.value).endswith(" / HTTP/1.1 request missing hostname")


def test_method_and_host_http11_with_host():
    chain = ident("io.l5d.methodAndHost", prefix=P("/https"))
    got = chain.identify(req(b"/some/path?other=stuff", host=b"domain"))
    assert got == Identified(P("/https/1.1/GET/domain"))


def test_method_and_host_http11_with_uris():
    chain = ident("io.l5d.methodAndHost", {"httpUriInDst": True}, prefix=P("/https"))
    got = chain.identify(req(b"/some/path?other=stuff", host=b"domain"))
    assert got.path == P("/https/1.1/GET/domain/some/path")


def test_method_and_host_http10_has_no_host():
    chain = ident("io.l5d.methodAndHost", prefix=P("/prefix"))
    got = chain.identify(req(b"/drum/bass", b"POST", b"1.0", host=b"ignored"))
    assert got.path == P("/prefix/1.0/POST")


def test_method_and_host_http10_with_uri():
    chain = ident("io.l5d.methodAndHost", {"httpUriInDst": True}, prefix=P("/prefix"))
    assert chain.identify(req(b"/drum/bass", b"POST", b"1.0")).path == P("/prefix/1.0/POST/drum/bass")


def test_method_and_host_lower_cases_host_and_keeps_port():
    chain = ident("io.l5d.methodAndHost")
    got = chain.identify(req(host=b"WWW.Hello.World:8080"))
    assert got.path == P("/svc/1.1/GET/www.hello.world:8080")


def test_method_and_host_root_adds_nothing():
    chain = ident("io.l5d.methodAndHost", {"httpUriInDst": True})
    assert chain.identify(req(b"/?q=1", host=b"h")).path == P("/svc/1.1/GET/h")


@pytest.mark.parametrize("target", [b"/some/path/", b"/a b", b"/a!b", b"/a//b"])
def test_method_and_host_unparsable_uri_path_is_an_error(target):
    chain = ident("io.l5d.methodAndHost", {"httpUriInDst": True})
    with pytest.raises(BadRequest) as e:
        chain.identify(req(target, host=b"h"))
    assert "expected but" in str(e.value)


def test_method_and_host_absolute_form_target_uses_its_path():
    chain = ident("io.l5d.methodAndHost", {"httpUriInDst": True})
    got = chain.identify(req(b"http://h:80/a/b?x", host=b"h:80"))
    assert got.path == P("/svc/1.1/GET/h:80/a/b")


def test_method_and_host_declines_other_versions():
    with pytest.raises(BadRequest) as e:
        ident("io.l5d.methodAndHost").identify(h({b":authority": b"a"}, version=b"2"))
    assert str(e.value).endswith(" / Unknown HTTP version HTTP/2")


# -- io.l5d.path -------------------------------------------------------------------------------


HTTP = Path.of("http")


def path_chain(segments=2, consume=False, prefix=HTTP):
    return ident("io.l5d.path", {"segments": segments, "consume": consume}, prefix=prefix)


def test_path_same_number_of_segments():
    assert path_chain().identify(req(b"/mysvc/subsvc")).path == P("/http/mysvc/subsvc")


def test_path_more_segments_query_excluded():
    got = path_chain().identify(req(b"/mysvc/subsvc/some/path?other=stuff"))
    assert got == Identified(P("/http/mysvc/subsvc"), None)


def test_path_fewer_segments_declines():
    with pytest.raises(BadRequest) as e:
        path_chain().identify(req(b"/mysvc?other=stuff"))
    assert str(e.value) == 'Unknown destination: Request("GET /mysvc?other=stuff") / not enough segments in path'


def test_path_only_the_first_segments_are_examined():
    assert path_chain().identify(req(b"/mysvc/subsvc/!")).path == P("/http/mysvc/subsvc")


def test_path_trailing_empty_pieces_do_not_count():
    with pytest.raises(BadRequest):
        path_chain().identify(req(b"/mysvc//"))


def test_path_empty_middle_segment_is_an_error():
    with pytest.raises(BadRequest) as e:
        path_chain().identify(req(b"/a//b"))
    assert "empty segment" in str(e.value)


def test_path_segments_are_raw_bytes():
    got = path_chain(1, prefix=SVC).identify(req(b"/a%20b*c"))
    assert got.path.elems == (b"svc", b"a%20b*c")


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        (b"/mysvc/subsvc/some/path?other=stuff", b"/some/path?other=stuff"),
        (b"/mysvc/subsvc", b"/"),
        (b"/mysvc/subsvc/", b"/"),
        (b"/mysvc/subsvc/path1/", b"/path1/"),
        (b"/mysvc/subsvc/path1", b"/path1"),
        (b"/mysvc/subsvc/path1/path2", b"/path1/path2"),
        (b"/mysvc/subsvc/path1/path2/", b"/path1/path2/"),
        (b"/mysvc/subsvc/path1/?foo=bar", b"/path1/?foo=bar"),
        (b"/mysvc/subsvc/path1?foo=bar", b"/path1?foo=bar"),
        (b"/mysvc/subsvc/path1?foo=bar/", b"/path1?foo=bar/"),
        (b"/mysvc/subsvc?x=1", b"/?x=1"),
        (b"/mysvc/subsvc/a//b", b"/a//b"),
    ],
)
def test_path_consume(target, forwarded):
    got = path_chain(consume=True).identify(req(target))
    assert got == Identified(P("/http/mysvc/subsvc"), forwarded)


@pytest.mark.parametrize(
    "target",
    [b"/mysvc/subsvc/", b"/mysvc/subsvc/path1/", b"/mysvc/subsvc/path1", b"/mysvc/subsvc/path1/path2/"],
)
def test_path_without_consume_leaves_the_target(target):
    got = path_chain(consume=False).identify(req(target))
    assert got == Identified(P("/http/mysvc/subsvc"), None)


@pytest.mark.parametrize(("target", "forwarded"), [(b"/mysvc?other=stuff", b"/?other=stuff"), (b"/mysvc/?other=stuff", b"/?other=stuff")])
def test_path_consume_one_segment_keeps_query(target, forwarded):
    got = path_chain(1, consume=True).identify(req(target))
    assert got == Identified(P("/http/mysvc"), forwarded)


def test_path_default_is_one_segment():
    assert ident("io.l5d.path").identify(req(b"/web/x")).path == P("/svc/web")


def test_path_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(identify, "MEMO_SIZE", 2)
    p = identify.PathIdentifier(SVC)
    chain = IdentifierChain([p])
    for i in range(10):
        assert chain.identify(req(b"/s%d/x" % i)).path == Path((b"svc", b"s%d" % i))
    assert len(p._memo) <= 2


# -- io.l5d.static and io.l5d.header.path -----------------------------------------------------------


def test_static_never_declines():
    chain = ident("io.l5d.static", {"path": "/web/v1"})
    assert chain.identify(req()) == Identified(P("/svc/web/v1"))
    assert chain.identify(RequestHead(b"GET", b"*", b"1.0")) == Identified(P("/svc/web/v1"))


def test_header_path_grpc_service():
    chain = ident("io.l5d.header.path", protocol="h2")
    head = h({b":path": b"/hello.Greeter/SayHello", b":authority": b"x"}, b"/hello.Greeter/SayHello", b"POST", b"2")
    assert chain.identify(head).path == P("/svc/hello.Greeter")


def test_header_path_two_segments_and_http1_target():
    chain = ident("io.l5d.header.path", {"segments": 2})
    got = chain.identify(req(b"/hello.Greeter/SayHello?x=1", b"POST"))
    assert got == Identified(P("/svc/hello.Greeter/SayHello"))


def test_header_path_declines_short_path():
    with pytest.raises(BadRequest) as e:
        ident("io.l5d.header.path", {"segments": 2}).identify(req(b"/only"))
    assert str(e.value).endswith(" / Path must have at least 2 segment(s)")


# -- the chain ---------------------------------------------------------------------------------


def test_chain_first_identifying_wins_and_declines_pass_on():
    chain = IdentifierChain.from_config(
        [{"kind": "io.l5d.header", "header": "x-name"}, {"kind": "io.l5d.header.token"}]
    )
    assert chain.identify(req(host=b"web")).path == P("/svc/web")
    assert chain.identify(req(host=b"web", **{"x-name": b"/other"})).path == P("/svc/other")


def test_chain_error_stops_even_when_a_later_identifier_would_identify():
    chain = IdentifierChain.from_config([{"kind": "io.l5d.header"}, {"kind": "io.l5d.header.token"}])
    with pytest.raises(BadRequest) as e:
        chain.identify(req(host=b"web", **{"l5d-name": b"not a path"}))
    assert "'/' expected but 'n' found" in str(e.value)


def test_chain_nothing_identifies_lists_every_reason_in_order():
    chain = IdentifierChain.from_config(
        [{"kind": "io.l5d.header"}, {"kind": "io.l5d.path", "segments": 3}, {"kind": "io.l5d.header.token"}]
    )
    with pytest.raises(BadRequest) as e:
        chain.identify(req(b"/a/b"))
    assert str(e.value) == (
        'Unknown destination: Request("GET /a/b") / l5d-name header is absent; '
        "not enough segments in path; Host header is absent"
    )


def test_chain_default_is_header_token_on_host():
    chain = IdentifierChain.from_config(None)
    assert chain.identify(req(host=b"web")).path == P("/svc/web")
    chain_h2 = IdentifierChain.from_config(None, protocol="h2")
    assert chain_h2.identify(h({b":authority": b"g"}, version=b"2")).path == P("/svc/g")


def test_chain_single_block_and_dst_prefix():
    chain = IdentifierChain.from_config({"kind": "io.l5d.path"}, dst_prefix=P("/http"))
    assert chain.identify(req(b"/x/y")).path == P("/http/x")


def test_chain_quotes_a_long_target_cut():
    chain = ident("io.l5d.header.token")
    with pytest.raises(BadRequest) as e:
        chain.identify(req(b"/" + b"a" * 5000))
    assert len(str(e.value)) < 1200


def test_empty_chain_is_rejected():
    with pytest.raises(ValueError, match="at least one"):
        IdentifierChain([])


# -- configuration errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "match"),
    [
        ("io.l5d.nope", {}, "unknown identifier kind"),
        ("io.l5d.path", {"segments": 0}, "io.l5d.path: segments must be an integer >= 1"),
        ("io.l5d.path", {"segments": True}, "segments must be an integer"),
        ("io.l5d.path", {"consume": "yes"}, "consume must be true or false"),
        ("io.l5d.path", {"segmnets": 2}, "unknown option"),
        ("io.l5d.static", {}, "io.l5d.static: path is required"),
        ("io.l5d.static", {"path": "not/a/path"}, "io.l5d.static: path: '/' expected"),
        ("io.l5d.header.token", {"header": ""}, "header must be a non-empty header name"),
        ("io.l5d.header.path", {"segments": -1}, "segments must be an integer >= 1"),
    ],
)
def test_bad_options_name_the_kind_and_key(kind, options, match):
    with pytest.raises(ValueError, match=match):
        make_identifier(kind, options, SVC)


# -- helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/a/b?x=1", (b"/a/b", b"?x=1")),
        (b"/a", (b"/a", b"")),
        (b"http://h:8080/a?q", (b"/a", b"?q")),
        (b"https://h", (b"/", b"")),
        (b"*", (b"*", b"")),
    ],
)
def test_split_target(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [(b"/", []), (b"", []), (b"/a/b/", [b"a", b"b"]), (b"/a//b", [b"a", b"", b"b"]), (b"/a//", [b"a"])],
)
def test_url_segments(path, expected):
    assert url_segments(path) == expected


# -- config objects (the validated config's IdentifierConfig shape) ---------------------------------


class _Cfg:
    def __init__(self, kind, header=None, http_uri_in_dst=False, segments=None, consume=False, path=None):
        self.kind = kind
        self.header = header
        self.http_uri_in_dst = http_uri_in_dst
        self.segments = segments
        self.consume = consume
        self.path = path


def test_from_config_objects_take_only_their_kinds_fields():
    chain = IdentifierChain.from_config(
        [
            _Cfg("io.l5d.methodAndHost", http_uri_in_dst=True),
            _Cfg("io.l5d.path", segments=2, consume=True),
            _Cfg("io.l5d.static", path=P("/fallback")),
        ]
    )
    assert chain.identify(req(b"/a/b", host=b"H")).path == P("/svc/1.1/GET/h/a/b")
    assert chain.identify(req(b"/a/b/c", version=b"2")) == Identified(P("/svc/a/b"), b"/c")
    assert chain.identify(req(b"/a", version=b"2")) == Identified(P("/svc/fallback"))


def test_from_config_single_object_and_none_options_mean_defaults():
    chain = IdentifierChain.from_config(_Cfg("io.l5d.header.token"), protocol="h2")
    assert chain.identify(h({b":authority": b"x"}, version=b"2")).path == P("/svc/x")
    assert ident("io.l5d.path", {"segments": None, "consume": None}).identify(req(b"/a/b")).path == P("/svc/a")


def test_from_config_block_without_kind():
    with pytest.raises(ValueError, match="needs a kind"):
        IdentifierChain.from_config([{"header": "x"}])


# -- HTTP/1.0 without Host, and the empty dstPrefix (issue 10, items 10 and 15) ---------------


def test_http10_without_host_names_the_identifier_and_what_can_name_it():
    # The codec gives such a request an empty Host; this identifier cannot name it.
    with pytest.raises(BadRequest) as e:
        ident("io.l5d.header.token").identify(req(b"/x", version=b"1.0", host=b""))
    msg = str(e.value)
    assert msg.startswith('Unknown destination: Request("GET /x") / Host header is absent: io.l5d.header.token')
    assert "HTTP/1.0" in msg and "io.l5d.methodAndHost" in msg and e.value.status == 400
    # an identifier that needs no Host names it
    got = ident("io.l5d.methodAndHost").identify(req(b"/x", version=b"1.0", host=b""))
    assert got.path == P("/svc/1.0/GET")
    # another header than Host keeps the plain reason
    with pytest.raises(BadRequest, match=r"/ x-svc header is absent$"):
        ident("io.l5d.header.token", {"header": "x-svc"}).identify(req(b"/x", version=b"1.0"))


ROOT = Path(())


@pytest.mark.parametrize(
    ("kind", "options", "request_", "name"),
    [
        ("io.l5d.header.token", {}, req(host=b"web"), "/web"),
        ("io.l5d.header", {}, h({b"l5d-name": b"/web/v2"}), "/web/v2"),
        ("io.l5d.methodAndHost", {}, req(host=b"Web"), "/1.1/GET/web"),
        ("io.l5d.methodAndHost", {"httpUriInDst": True}, req(b"/a/b", host=b"web"), "/1.1/GET/web/a/b"),
        ("io.l5d.path", {"segments": 2}, req(b"/a/b/c"), "/a/b"),
        ("io.l5d.static", {"path": "/web"}, req(), "/web"),
        ("io.l5d.header.path", {}, req(b"/hello.Greeter/SayHello"), "/hello.Greeter"),
    ],
)
def test_empty_dst_prefix_names_without_a_prefix(kind, options, request_, name):
    assert ident(kind, options, prefix=ROOT).identify(request_).path == P(name)


def test_empty_dst_prefix_through_the_chain_from_config():
    chain = IdentifierChain.from_config([{"kind": "io.l5d.path"}, {"kind": "io.l5d.header.token"}], ROOT)
    assert chain.identify(req(b"/", host=b"web")).path == P("/web")
    assert chain.identify(req(b"/api/x", host=b"web")).path == P("/api")
