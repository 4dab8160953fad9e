"""Response classifier tables: every kind, every method class, responses and errors."""

from __future__ import annotations

import pytest

from config.policy import H2_CLASSIFIERS, HTTP_CLASSIFIERS, ClassifierConfig
from proxy.upstream.classify import (
    CONNECT,
    ERRORS,
    FAILURE,
    FRAMING,
    OTHER,
    REFUSED,
    RESET,
    RETRYABLE,
    SUCCESS,
    TIMEOUT,
    WRITE,
    make_classifier,
)

S, F, R = SUCCESS, FAILURE, RETRYABLE
METHODS = (b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE", b"POST", b"PATCH", b"CONNECT", b"PROPFIND")
# Per kind suffix: the class of a 503 for each of METHODS.
FIVE_XX = {
    "nonRetryable5XX": (F, F, F, F, F, F, F, F, F, F),
    "retryableRead5XX": (R, R, R, R, F, F, F, F, F, F),
    "retryableIdempotent5XX": (R, R, R, R, R, R, F, F, F, F),
    "retryableAll5XX": (R, R, R, R, R, R, R, R, F, F),
    "allSuccessful": (S, S, S, S, S, S, S, S, S, S),
}


def classifier(kind: str, **kw):
    return make_classifier(ClassifierConfig(kind, **kw))


@pytest.mark.parametrize("family", ["io.l5d.http.", "io.l5d.h2."])
@pytest.mark.parametrize("suffix", list(FIVE_XX))
def test_5xx_kinds_by_method(family, suffix):
    c = classifier(family + suffix)
    assert not c.needs_trailers
    assert tuple(c.classify(m, 503, None) for m in METHODS) == FIVE_XX[suffix]
    assert tuple(c.classify(m, 500, None) for m in METHODS) == FIVE_XX[suffix]
    assert tuple(c.classify(m, 599, None) for m in METHODS) == FIVE_XX[suffix]
    for status in (100, 200, 204, 301, 400, 404, 429, 499, 600):
        assert {c.classify(m, status, None) for m in METHODS} == {SUCCESS}, status
    assert c.at_head(200, None) and c.at_head(503, None)


def test_method_names_are_case_sensitive_tokens():
    # RFC 9110 §9.1: method names are case-sensitive; "get" is not GET.
    assert classifier("io.l5d.http.retryableRead5XX").classify(b"get", 503, None) == FAILURE


@pytest.mark.parametrize("suffix", list(FIVE_XX))
def test_l5d_retryable_header_makes_a_failure_retryable_on_http_only(suffix):
    http = classifier("io.l5d.http." + suffix)
    h2 = classifier("io.l5d.h2." + suffix)
    for m, expected in zip(METHODS, FIVE_XX[suffix], strict=True):
        upgraded = RETRYABLE if expected == FAILURE else expected
        assert http.classify(m, 502, None, retryable_header=True) == upgraded
        assert h2.classify(m, 502, None, retryable_header=True) == expected
        # it never turns a success into anything else
        assert http.classify(m, 200, None, retryable_header=True) == SUCCESS


# The class of each error kind, for a method the kind retries and for POST (which only
# retryableAll5XX retries).
@pytest.mark.parametrize(
    ("kind", "method", "expected"),
    [
        ("io.l5d.http.nonRetryable5XX", b"GET", {e: F for e in ERRORS}),
        ("io.l5d.http.allSuccessful", b"GET", {e: F for e in ERRORS}),
        ("io.l5d.http.retryableRead5XX", b"GET",
         {CONNECT: R, REFUSED: R, WRITE: R, RESET: R, TIMEOUT: R, FRAMING: R, OTHER: F}),
        ("io.l5d.http.retryableRead5XX", b"POST", {e: F for e in ERRORS}),
        ("io.l5d.http.retryableAll5XX", b"POST",
         {CONNECT: R, REFUSED: R, WRITE: R, RESET: R, TIMEOUT: R, FRAMING: R, OTHER: F}),
        ("io.l5d.h2.retryableIdempotent5XX", b"PUT",
         {CONNECT: R, REFUSED: R, WRITE: R, RESET: R, TIMEOUT: R, FRAMING: F, OTHER: F}),
        ("io.l5d.h2.nonRetryable5XX", b"GET", {e: F for e in ERRORS}),
        ("io.l5d.h2.grpc.default", b"POST", {e: F for e in ERRORS}),
        ("io.l5d.h2.grpc.alwaysRetryable", b"POST", {e: F for e in ERRORS}),
        ("io.l5d.h2.grpc.compliant", b"POST", {**{e: F for e in ERRORS}, REFUSED: R}),
    ],
)  # fmt: skip
def test_errors(kind, method, expected):
    c = classifier(kind)
    assert {e: c.classify_error(method, e) for e in ERRORS} == expected


GRPC_CODES = range(17)


@pytest.mark.parametrize(
    ("kind", "kw", "retryable"),
    [
        ("io.l5d.h2.grpc.default", {}, {14}),
        ("io.l5d.h2.grpc.compliant", {}, {14}),
        ("io.l5d.h2.grpc.alwaysRetryable", {}, set(range(1, 17))),
        ("io.l5d.h2.grpc.neverRetryable", {}, set()),
        ("io.l5d.h2.grpc.retryableStatusCodes", {"retryable_status_codes": frozenset({2, 5, 14, 100})}, {2, 5, 14}),
    ],
)
def test_grpc_kinds_by_status_code(kind, kw, retryable):
    c = classifier(kind, **kw)
    assert c.needs_trailers
    table = {code: c.classify(b"POST", 200, code) for code in GRPC_CODES}
    assert table == {code: S if code == 0 else R if code in retryable else F for code in GRPC_CODES}
    # a stream that ended without any grpc-status is a failure
    assert c.classify(b"POST", 200, None) == FAILURE


def test_grpc_success_status_codes_replace_ok():
    c = classifier("io.l5d.h2.grpc.default", success_status_codes=frozenset({0, 3, 5}))
    assert [c.classify(b"POST", 200, code) for code in (0, 3, 5, 14, 13)] == [S, S, S, R, F]
    # Linkerd: when successStatusCodes is given, OK must be listed to stay a success
    c = classifier("io.l5d.h2.grpc.neverRetryable", success_status_codes=frozenset({5}))
    assert c.classify(b"POST", 200, 0) == FAILURE


@pytest.mark.parametrize("status", [400, 404, 429, 500, 502, 503, 504])
def test_grpc_http_errors_without_a_grpc_status(status):
    for kind in ("io.l5d.h2.grpc.default", "io.l5d.h2.grpc.alwaysRetryable", "io.l5d.h2.grpc.neverRetryable"):
        assert classifier(kind).classify(b"POST", status, None) == FAILURE
    compliant = classifier("io.l5d.h2.grpc.compliant")
    assert compliant.classify(b"POST", status, None) == (R if status in (429, 502, 503, 504) else F)
    # a trailers-only response's grpc-status wins over the HTTP status
    assert compliant.classify(b"POST", status, 0) == SUCCESS


def test_grpc_at_head():
    c = classifier("io.l5d.h2.grpc.default")
    assert not c.at_head(200, None)  # wait for the trailers
    assert c.at_head(200, 14)  # trailers-only
    assert c.at_head(503, None) and c.at_head(404, None)


def test_every_configured_kind_builds():
    for kind in (*HTTP_CLASSIFIERS, *H2_CLASSIFIERS):
        assert classifier(kind).kind == kind
    with pytest.raises(ValueError, match="unknown response classifier"):
        classifier("io.l5d.http.retryableEverything")
