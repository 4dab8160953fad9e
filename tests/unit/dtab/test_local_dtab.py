"""docs/dtab.md §10: the per-request dtab from `l5d-ctx-dtab` (ctx) and `l5d-dtab` (user) values:
local = ctx ++ user, each header value one dtab, parse errors reported, printed form on the wire."""

from __future__ import annotations

import pytest

from dtab import Dtab, DtabSyntaxError, bind, local_dtab, read_dtab
from tests.unit.dtab import P, show_bound

A1 = "/$/inet/10.0.0.1/80"

# (ctx values, user values, printed local dtab)
CASES: list[tuple[list[str | bytes], list[str | bytes], str]] = [
    ([], [], ""),
    (["/a => /c"], ["/a => /d"], "/a=>/c;/a=>/d"),  # HeadersTest, minus the existing local
    (["/a=>/c", "/b=>/e"], [], "/a=>/c;/b=>/e"),  # header order
    ([], ["/x=>/y", "/x=>/z"], "/x=>/y;/x=>/z"),
    (["/a=>/b;/a=>/c"], ["/a=>/d;"], "/a=>/b;/a=>/c;/a=>/d"),
    ([b"/a => /c"], [b"/a => /d"], "/a=>/c;/a=>/d"),  # header values arrive as bytes
    ([""], ["  "], ""),  # empty values are empty dtabs
    (["/svc/web => 9 * /svc/web-v1 & 1 * /$/nil"], [], "/svc/web=>9.00*/svc/web-v1 & /$/nil"),
]

BAD_VALUES = [
    "/a=>/b,/c=>/d",  # values are not split on commas: a comma is a parse error
    "/a=>/b, /c=>/d",
    "/a => /b\n/c => /d",
    "not a dtab",
    ";",
    "/a = > /b",
]


@pytest.mark.parametrize(("ctx", "user", "printed"), CASES)
def test_local_dtab(ctx: list[str | bytes], user: list[str | bytes], printed: str) -> None:
    local = local_dtab(ctx, user)
    assert isinstance(local, Dtab)
    assert local.show() == printed
    assert read_dtab(printed) == local


def test_ctx_then_user_order() -> None:
    local = local_dtab(["/a => /c"], ["/a => /d"])
    assert local == read_dtab("/a => /c") + read_dtab("/a => /d")


def test_headers_worked_example() -> None:
    # existing local /a => /b, then ctx /a => /c, then user /a => /d
    local = read_dtab("/a => /b") + local_dtab(["/a => /c"], ["/a => /d"])
    assert local.show() == "/a=>/b;/a=>/c;/a=>/d"
    # /a therefore binds via /d first, then /c, then /b
    assert show_bound(bind(local + read_dtab(f"/d => {A1}"), P("/a"))) == A1
    table = read_dtab(f"/c => {A1}; /d => /$/inet/10.0.0.4/80; /b => /$/inet/10.0.0.2/80")
    assert show_bound(bind(table + local, P("/a"))) == "/$/inet/10.0.0.4/80"
    table = read_dtab(f"/c => {A1}; /b => /$/inet/10.0.0.2/80")
    assert show_bound(bind(table + local, P("/a"))) == A1
    table = read_dtab("/b => /$/inet/10.0.0.2/80")
    assert show_bound(bind(table + local, P("/a"))) == "/$/inet/10.0.0.2/80"


def test_effective_dtab_is_router_then_local() -> None:
    router = read_dtab("/svc => /$/inet/10.0.0.1/80")
    local = local_dtab([], ["/svc => /$/inet/10.0.0.2/80"])
    assert show_bound(bind(router + local, P("/svc/x"))) == "/$/inet/10.0.0.2/80"
    local = local_dtab(["/svc => /$/inet/10.0.0.3/80"], ["/svc => /$/inet/10.0.0.2/80"])
    assert show_bound(bind(router + local, P("/svc/x"))) == "/$/inet/10.0.0.2/80"  # user beats ctx
    local = local_dtab(["/svc => /$/inet/10.0.0.3/80"], [])
    assert show_bound(bind(router + local, P("/svc/x"))) == "/$/inet/10.0.0.3/80"


@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_user_value(value: str) -> None:
    with pytest.raises(DtabSyntaxError):
        local_dtab([], [value])


@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_ctx_value(value: str) -> None:
    with pytest.raises(DtabSyntaxError):
        local_dtab(["/ok => /fine", value], [])


def test_bad_value_among_good_ones() -> None:
    with pytest.raises(DtabSyntaxError):
        local_dtab(["/a=>/b"], ["/c=>/d", "/a=>/b,/c=>/d"])


def test_comma_error_location() -> None:
    with pytest.raises(DtabSyntaxError) as info:
        local_dtab([], ["/a=>/b,/c=>/d"])
    assert "at '/a=>/b[,]/c=>/d'" in str(info.value)
