"""Linkerd's `l5d-*` headers: their values, read and written (docs/dtab.md §10, §13).

Owns the per-request dtab (`l5d-ctx-dtab` ++ `l5d-dtab`), the deadline and trace
context headers, `l5d-sample`, the `l5d-err` value and body, the no-route message, and
the header sets `clearContext` strips. Everything here is a pure function of bytes: it
must not touch sockets, asyncio or a clock (callers pass `now` in), and it imports only
`dtab` and `proxy.errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple
from urllib.parse import quote_plus

from dtab import Dentry, Dtab, DtabSyntaxError, Path, read_dtab
from proxy.errors import BadRequest

# The trace context codec lives with telemetry (it reads and writes spans too); the l5d
# header names and the rest of the per-request context stay here.
from ..telemetry.tracectx import (
    FLAG_DEBUG,
    FLAG_SAMPLED,
    FLAG_SAMPLING_KNOWN,
    TraceContext,
    decode_trace,
    encode_trace,
    new_root_trace,
    parse_sample,
)

log = logging.getLogger(__name__)

# -- header names ----------------------------------------------------------------------------

PREFIX: Final = b"l5d-"
CTX_PREFIX: Final = b"l5d-ctx-"
CTX_DTAB: Final = b"l5d-ctx-dtab"
USER_DTAB: Final = b"l5d-dtab"
CTX_DEADLINE: Final = b"l5d-ctx-deadline"
CTX_TRACE: Final = b"l5d-ctx-trace"
SAMPLE: Final = b"l5d-sample"
DST_SERVICE: Final = b"l5d-dst-service"
DST_CLIENT: Final = b"l5d-dst-client"
DST_RESIDUAL: Final = b"l5d-dst-residual"
REQID: Final = b"l5d-reqid"
ERR: Final = b"l5d-err"
RETRYABLE: Final = b"l5d-retryable"

#: Request headers the proxy reads and removes before forwarding (§10 step 4, §13.1-2).
#: Other `l5d-ctx-*` headers pass through untouched.
CONSUMED_REQUEST_HEADERS: Final = frozenset({USER_DTAB, CTX_DTAB, CTX_DEADLINE, CTX_TRACE, SAMPLE})
#: Request headers the proxy writes on the way to the destination (§13.1, §13.3).
ADDED_REQUEST_HEADERS: Final = frozenset(
    {DST_SERVICE, DST_CLIENT, DST_RESIDUAL, REQID, CTX_TRACE, CTX_DEADLINE, CTX_DTAB}
)
#: Response headers the proxy writes on its own errors (§13.4).
ADDED_RESPONSE_HEADERS: Final = frozenset({ERR, RETRYABLE})

#: `l5d-err` is cut to the default maximum header size (docs/dtab.md §13.4: 8 KiB).
MAX_ERR_HEADER_BYTES: Final = 8 * 1024
#: The `l5d-err` body is cut to Linkerd's `maxErrResponseKB` default (5 MiB).
MAX_ERR_BODY_BYTES: Final = 5 * 1024 * 1024

_L: Final = 0x6C  # b"l"[0]
_UPPER_L: Final = 0x4C  # b"L"[0]


def is_l5d(name: bytes) -> bool:
    """True for any `l5d-*` header name, in any case."""
    # The first-byte test keeps the common (non-l5d) header from being sliced and folded.
    return bool(name) and (name[0] == _L or name[0] == _UPPER_L) and name[:4].lower() == PREFIX


def strip_l5d(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request headers without any `l5d-*` header (`clearContext`, docs/dtab.md §13.5)."""
    return [h for h in headers if not is_l5d(h[0])]


def strip_l5d_response(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The response headers without any `l5d-*` header, and whether an `l5d-err` was
    among them: with `clearContext` the body of such a response is cleared too
    (docs/dtab.md §13.5), so the caller must drop it (and fix the framing)."""
    kept: list[tuple[bytes, bytes]] = []
    had_err = False
    for h in headers:
        name = h[0]
        if is_l5d(name):
            if name.lower() == ERR:
                had_err = True
        else:
            kept.append(h)
    return kept, had_err


# -- per-request dtab (docs/dtab.md §10) -------------------------------------------------------

#: Parsed header values, value -> dentries. A mesh forwards the same `l5d-ctx-dtab` on
#: every hop of a request tree, so the parse is worth remembering; bounded because the
#: values come from clients.
_DTAB_MEMO_SIZE: Final = 1024
_dtab_memo: dict[bytes, tuple[Dentry, ...]] = {}


def parse_dtab_value(header: bytes, value: bytes) -> tuple[Dentry, ...]:
    """The dentries of one header value; each value is one dtab, never split on commas.
    Raises BadRequest naming the header and quoting the parser (docs/dtab.md §10 step 3)."""
    dentries = _dtab_memo.get(value)
    if dentries is None:
        try:
            # latin-1 keeps offsets on bytes; non-ASCII is a syntax error anyway.
            dentries = read_dtab(value.decode("latin-1")).dentries
        except DtabSyntaxError as exc:
            raise BadRequest(f"Invalid {header.decode()} header: {exc}") from None
        if len(_dtab_memo) >= _DTAB_MEMO_SIZE:
            _dtab_memo.clear()
        _dtab_memo[value] = dentries
    return dentries


def read_local(ctx_values: Sequence[bytes], user_values: Sequence[bytes]) -> Dtab:
    """`l5d-ctx-dtab` values ++ `l5d-dtab` values, each in header order (docs/dtab.md §10), so a
    user override beats upstream context. Raises BadRequest (400) on a parse error."""
    if not ctx_values and not user_values:
        return Dtab.EMPTY
    dentries: tuple[Dentry, ...] = ()
    for v in ctx_values:
        dentries += parse_dtab_value(CTX_DTAB, v)
    for v in user_values:
        dentries += parse_dtab_value(USER_DTAB, v)
    return Dtab(dentries) if dentries else Dtab.EMPTY


def format_local(local: Dtab) -> bytes | None:
    """The `l5d-ctx-dtab` value for a downstream request, or None to send none
    (an empty local dtab sends no header, docs/dtab.md §10)."""
    if not local.dentries:
        return None
    return local.show().encode("latin-1")  # show() escapes everything non-ASCII


# -- l5d-ctx-deadline (docs/dtab.md §13.1) -----------------------------------------------------


class Deadline(NamedTuple):
    """When the request was stamped and when it must be done, both in nanoseconds since
    the Unix epoch. Advisory: the proxy shrinks its own timeout to it."""

    timestamp_ns: int
    deadline_ns: int

    def combine(self, other: Deadline | None) -> Deadline:
        """The strictest of two: the later timestamp and the earlier deadline."""
        if other is None:
            return self
        return Deadline(
            max(self.timestamp_ns, other.timestamp_ns), min(self.deadline_ns, other.deadline_ns)
        )

    def remaining_ns(self, now_ns: int) -> int:
        return self.deadline_ns - now_ns


_LONG_MIN: Final = -(1 << 63)
_LONG_MAX: Final = (1 << 63) - 1


def _decimal(text: bytes) -> int | None:
    # int() would also take b" 1_0" and b"+1"; the header is plain decimals that fit a
    # Java long (a leading minus is legal in Finagle's reader, so it is accepted here).
    digits = text[1:] if text[:1] == b"-" else text
    if not digits or not digits.isdigit():
        return None
    n = int(text)
    return n if _LONG_MIN <= n <= _LONG_MAX else None


def parse_deadline(values: Iterable[bytes]) -> Deadline | None:
    """All `l5d-ctx-deadline` values combined to the strictest; unparsable values are
    ignored; None when none parsed."""
    result: Deadline | None = None
    for value in values:
        parts = value.strip().split(b" ")
        if len(parts) != 2:
            continue
        ts, dl = _decimal(parts[0]), _decimal(parts[1])
        if ts is None or dl is None:
            continue
        d = Deadline(ts, dl)
        result = d if result is None else result.combine(d)
    return result


def format_deadline(deadline: Deadline) -> bytes:
    return b"%d %d" % (deadline.timestamp_ns, deadline.deadline_ns)


# -- l5d-err (docs/dtab.md §13.4) -----------------------------------------------------------------


def encode_l5d_err(message: str, max_bytes: int = MAX_ERR_HEADER_BYTES) -> bytes:
    """The `l5d-err` value: the message form-URL-encoded from ISO-8859-1 (as Java's
    URLEncoder: letters, digits and `.-*_` kept, space as `+`, every other byte `%XX`
    upper-case; a character outside ISO-8859-1 becomes `?`, i.e. `%3F`), cut to
    `max_bytes` without splitting an escape."""
    # quote_plus keeps `~` and not `*`; URLEncoder does the opposite.
    encoded = quote_plus(message, safe="*", encoding="latin-1", errors="replace")
    value = encoded.replace("~", "%7E").encode("ascii")
    if len(value) > max_bytes:
        cut = max_bytes
        pct = value.rfind(b"%", max(0, cut - 2), cut)
        if pct >= 0:  # an escape would straddle the cut: drop it whole
            cut = pct
        value = value[:cut]
    return value


def err_body(message: str, max_bytes: int = MAX_ERR_BODY_BYTES) -> bytes:
    """The `text/plain` (UTF-8) body of an `l5d-err` response, cut to `max_bytes`
    without splitting a character."""
    body = message.encode("utf-8", "replace")
    if len(body) > max_bytes:
        body = body[:max_bytes].decode("utf-8", "ignore").encode("utf-8")
    return body


# -- the no-route message (docs/dtab.md §13.4) ----------------------------------------------------


def _dentry_lines(table: Dtab) -> str:
    return "\n".join(f"  {d.prefix.show()} => {d.dst.show()}" for d in table.dentries)


def no_route_message(
    service: Path, base: Dtab, local: Dtab, interpreter_dtab: Dtab | None = None,
    rules: Sequence[tuple[str, Dtab]] = (),
) -> str:
    """The 502 message when a name binds to nothing, laid out as Linkerd 1.7 lays it
    out: a headline, a blank line, the service name, then three tables (the name
    interpreter's own — empty unless it is namerd — the router's base dtab, and the
    per-request override), one `  prefix => dst` line per entry, each table ending with
    a newline (so an empty table leaves an empty line). The entries of the match rules
    this request matched (ours, not Linkerd's) come between base and override, one
    `rule <name>:` table each, so they are never mistaken for the base dtab."""
    matched = "".join(f"rule {name}:\n{_dentry_lines(table)}\n" for name, table in rules)
    return (
        "Unable to route request!\n"
        "\n"
        f"service name: {service.show()}\n"
        "dtab:\n"
        f"{_dentry_lines(interpreter_dtab or Dtab.EMPTY)}\n"
        "base dtab:\n"
        f"{_dentry_lines(base)}\n"
        f"{matched}"
        "override dtab:\n"
        f"{_dentry_lines(local)}\n"
    )


__all__ = [
    "ADDED_REQUEST_HEADERS",
    "FLAG_DEBUG",
    "FLAG_SAMPLED",
    "FLAG_SAMPLING_KNOWN",
    "new_root_trace",
    "ADDED_RESPONSE_HEADERS",
    "CONSUMED_REQUEST_HEADERS",
    "Deadline",
    "TraceContext",
    "decode_trace",
    "encode_l5d_err",
    "encode_trace",
    "err_body",
    "format_deadline",
    "format_local",
    "is_l5d",
    "no_route_message",
    "parse_deadline",
    "parse_dtab_value",
    "parse_sample",
    "read_local",
    "strip_l5d",
    "strip_l5d_response",
]



