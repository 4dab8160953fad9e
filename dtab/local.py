"""Per-request tables (docs/dtab.md §10): `l5d-ctx-dtab` values, then `l5d-dtab` values. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from .parse import read_dtab
from .table import Dentry, Dtab


def _text(value: str | bytes) -> str:
    # Header bytes are ISO-8859-1 on the wire (RFC 9110 §5.5); a dtab's showable
    # characters are ASCII, so anything else is a syntax error pointing at it.
    return value.decode("latin-1") if isinstance(value, bytes) else value


def local_dtab(ctx_values: Iterable[str | bytes], user_values: Iterable[str | bytes]) -> Dtab:
    """`ctx ++ user`: every `l5d-ctx-dtab` value in header order, then every `l5d-dtab`
    value; each header line is one dtab (values are not split on commas). Raises
    `DtabSyntaxError` for the first value that does not parse."""
    entries: list[Dentry] = []
    for v in ctx_values:
        entries.extend(read_dtab(_text(v)).dentries)
    for v in user_values:
        entries.extend(read_dtab(_text(v)).dentries)
    return Dtab(tuple(entries)) if entries else Dtab.EMPTY
