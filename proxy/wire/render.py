"""Rendering the proxy's own answers: one function for every error response.

Status, `l5d-err` and `l5d-retryable` come from the `ProxyError` class (spec §13.4).
Imported by the wire protocols only.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

from ..errors import ProxyError
from ..route.l5d import encode_l5d_err, err_body

_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def error_response(exc: ProxyError, *, close: bool, clear_context: bool = False, head: bool = False) -> bytes:
    """The whole HTTP/1.1 response for a proxy failure. With `clearContext` the client
    learns only the status: no `l5d-*` headers, no body (spec §13.5)."""
    status = exc.status
    message = str(exc) or type(exc).__name__
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
    body = b"" if clear_context else err_body(message)
    if not clear_context:
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
