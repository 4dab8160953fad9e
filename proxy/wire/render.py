"""Rendering the proxy's own answers: one function for every error response.

Status, `l5d-err` and `l5d-retryable` come from the `ProxyError` class (docs/dtab.md §13.4).
At a `clearContext` edge an untrusted caller gets a terse answer instead (`terse`):
the status and `public_message`, never `l5d-*`, a dtab, a bound name or an address.
Imported by the wire protocols only.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

from ..errors import ProxyError
from ..route.l5d import encode_l5d_err, err_body

_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}

#: What an edge's untrusted caller learns of a failure on the proxy's or the
#: destination's side (5xx), one sentence per failure stage. The full message names the
#: dtab a name was bound with (no route) or the address that refused a connection; both
#: are the operator's, not the caller's.
EDGE_MESSAGES: Final = {
    "bind": "no route to the requested service",
    "connect": "the requested service is unavailable",
    "upstream": "the requested service failed",
    "timeout": "the requested service did not answer in time",
    "overload": "the proxy is overloaded",
    "protocol": "the requested service answered something the proxy cannot forward",
}
EDGE_DEFAULT: Final = "the proxy could not complete the request"


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def public_message(exc: ProxyError) -> str:
    """The message for a caller that may not see details. A 4xx is about the caller's
    own request (an override it sent, a limit its head broke): its message quotes only
    what the caller sent and names the rule it broke, so it is kept (DESIGN.md: "a
    clear 4xx that names the limit"). A 5xx gets its stage's generic sentence."""
    if exc.status < 500:
        return str(exc) or type(exc).__name__
    return EDGE_MESSAGES.get(exc.stage, EDGE_DEFAULT)


def error_response(exc: ProxyError, *, close: bool, terse: bool = False, head: bool = False) -> bytes:
    """The whole HTTP/1.1 response for a proxy failure. `terse` (an edge's untrusted
    caller, `OverridePolicy.terse_for`): the status and `public_message` as the body,
    no `l5d-*` field (docs/dtab.md §13.5)."""
    status = exc.status
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
    if terse:
        body = err_body(public_message(exc))
    else:
        message = str(exc) or type(exc).__name__
        body = err_body(message)
        parts.append(b"l5d-err: " + encode_l5d_err(message) + b"\r\n")
        if exc.retryable:
            parts.append(b"l5d-retryable: true\r\n")
    parts.append(b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)
