"""Header-list helpers shared by the codecs and the wire layer.

Owns: the hop-by-hop set (RFC 9110 §7.6.1), stripping hop-by-hop fields before a
message is forwarded, and small lookups over `list[tuple[bytes, bytes]]` header
lists whose names are already lowercase (the codecs lowercase once, on parse).

Must not: allocate when there is nothing to do on the hot path, decode bytes, or
import anything beyond the standard library (codecs import this module).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 (connection-specific fields) plus the de-facto `keep-alive` and
# `proxy-connection`. `te` and `trailer` describe this hop's transfer, and
# `transfer-encoding` this hop's framing (RFC 9112 §6.1): the next hop gets its own.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)

_OWS: Final = b" \t"
_CONNECTION: Final = b"connection"


def split_tokens(value: bytes) -> list[bytes]:
    """A comma-separated list (RFC 9110 §5.6.1) as lowercase tokens, empty elements
    dropped (recipients must tolerate them)."""
    out = []
    for item in value.split(b","):
        token = item.strip(_OWS)
        if token:
            out.append(token.lower())
    return out


def get_first(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of `name` (lowercase), or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def get_all(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every field value of `name` (lowercase), in order, not split on commas."""
    return [v for n, v in headers if n == name]


def has_token(headers: Sequence[tuple[bytes, bytes]], name: bytes, token: bytes) -> bool:
    """Whether the list-valued field `name` holds `token` (lowercase), in any of its
    field lines: `has_token(h, b"connection", b"close")`."""
    for n, v in headers:
        if n == name and token in split_tokens(v):
            return True
    return False


def connection_options(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The lowercase tokens of every Connection field line (RFC 9110 §7.6.1)."""
    tokens: set[bytes] = set()
    for n, v in headers:
        if n == _CONNECTION:
            tokens.update(split_tokens(v))
    return frozenset(tokens)


def strip_hop_by_hop(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """A new list without the hop-by-hop fields and without every field the
    Connection header names (RFC 9110 §7.6.1: a proxy must remove those before
    forwarding). Order is kept; the input is not modified."""
    drop = HOP_BY_HOP
    # Most messages carry no Connection header or one naming only `keep-alive` /
    # `close`, so the extra set is built only when a Connection field exists.
    for n, _ in headers:
        if n == _CONNECTION:
            drop = HOP_BY_HOP | connection_options(headers)
            break
    return [h for h in headers if h[0] not in drop]
