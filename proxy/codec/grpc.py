"""gRPC over HTTP/2 as the proxy sees it: deadlines, status trailers, error answers.

Owns: reading and writing `grpc-timeout` (the gRPC HTTP/2 protocol document,
"Requests"), the percent-encoding of `grpc-message`, recognising a gRPC request by
its content-type, and the header list of a trailers-only response that the proxy
sends when it fails a call itself (no route, connect failure, timeout, bad override),
so a gRPC client sees a real status instead of "unknown" from a bare HTTP 502.

Must not: touch sockets, loops or clocks (callers pass durations in), import asyncio
or anything from `proxy` but `proxy.errors`. Messages themselves (the 5-byte
length-prefixed frames) are never parsed: the proxy forwards DATA unchanged.
"""

from __future__ import annotations

from typing import Final

from proxy.errors import ProxyError

# Status codes (grpc/doc/statuscodes.md) the proxy produces itself.
OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14

CONTENT_TYPE: Final = b"application/grpc"
TIMEOUT: Final = b"grpc-timeout"
STATUS: Final = b"grpc-status"
MESSAGE: Final = b"grpc-message"

#: grpc-timeout units in nanoseconds, by their byte value.
_UNIT_NS: Final = {
    ord("H"): 3_600_000_000_000,
    ord("M"): 60_000_000_000,
    ord("S"): 1_000_000_000,
    ord("m"): 1_000_000,
    ord("u"): 1_000,
    ord("n"): 1,
}
#: Encoding order: the finest unit whose value still fits the 8 digits the spec allows.
_ENCODE_UNITS: Final = ((1, b"n"), (1_000, b"u"), (1_000_000, b"m"), (1_000_000_000, b"S"),
                        (60_000_000_000, b"M"), (3_600_000_000_000, b"H"))
_MAX_DIGITS_VALUE: Final = 99_999_999  # "TimeoutValue -> {positive integer as ASCII string of at most 8 digits}"

_STATUS_BYTES: Final = tuple(b"%d" % i for i in range(17))


def is_grpc(content_type: bytes | None) -> bool:
    """`application/grpc` and its `+proto`, `+json`... forms (the spec's Content-Type)."""
    return content_type is not None and content_type[:16] == CONTENT_TYPE


def parse_timeout(value: bytes) -> int | None:
    """A `grpc-timeout` value in nanoseconds, or None when malformed (the call then
    runs under the router's timeout alone, as a server that ignores the header would)."""
    if len(value) < 2 or len(value) > 9:
        return None
    unit = _UNIT_NS.get(value[-1])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or not digits.isascii():
        return None
    return int(digits) * unit


def format_timeout(remaining_ns: int) -> bytes:
    """`grpc-timeout` for the time left: the finest unit that fits 8 digits, rounded
    down so the next hop never gets more time than this one has (minimum 1n)."""
    if remaining_ns < 1:
        remaining_ns = 1
    for unit_ns, name in _ENCODE_UNITS:
        value = remaining_ns // unit_ns
        if value <= _MAX_DIGITS_VALUE:
            return b"%d%s" % (value or 1, name)
    return b"%dH" % _MAX_DIGITS_VALUE


def encode_message(message: str) -> bytes:
    """`grpc-message` is percent-encoded UTF-8: bytes outside printable ASCII and `%`
    itself become `%XX` (gRPC HTTP/2 protocol, "Responses")."""
    raw = message.encode("utf-8", "replace")
    out = bytearray()
    for b in raw:
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def decode_message(value: bytes) -> str:
    """The inverse of `encode_message`; a malformed escape is kept as it is."""
    out = bytearray()
    i, n = 0, len(value)
    while i < n:
        b = value[i]
        if b == 0x25 and i + 2 < n and _is_hex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(b)
        i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def status_bytes(code: int) -> bytes:
    return _STATUS_BYTES[code] if 0 <= code < len(_STATUS_BYTES) else b"%d" % code


def error_trailers(
    exc: ProxyError, l5d_err: bytes | None, *, status_header: bool = True, message: str | None = None
) -> list[tuple[bytes, bytes]]:
    """The header list of a trailers-only response (HEADERS with END_STREAM) for a call
    the proxy failed itself: `:status 200`, the gRPC content-type, `grpc-status` from
    the error class, `grpc-message` (the error's own message, or `message` when the
    caller may not see it: an edge's untrusted caller gets a generic one), and `l5d-err`
    unless the caller must not see it (pass None)."""
    if message is None:
        message = str(exc) or type(exc).__name__
    out = [(b":status", b"200")] if status_header else []
    out.append((b"content-type", CONTENT_TYPE))
    out.append((STATUS, status_bytes(exc.grpc_status)))
    out.append((MESSAGE, encode_message(message)))
    if l5d_err is not None:
        out.append((b"l5d-err", l5d_err))
    return out


__all__ = [
    "CONTENT_TYPE",
    "MESSAGE",
    "STATUS",
    "TIMEOUT",
    "decode_message",
    "encode_message",
    "error_trailers",
    "format_timeout",
    "is_grpc",
    "parse_timeout",
    "status_bytes",
]
