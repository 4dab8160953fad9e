"""Who may override routing per request, and how much (DESIGN.md "Trust at the edge").

An `l5d-dtab` / `l5d-ctx-dtab` override can send a request anywhere a dtab can name,
including `/$/inet/<any host>/<any port>`, so a server honours one only from a trusted
source (a configured CIDR, or a valid HMAC signature over the header values), within
size and entry limits, optionally only for allowed prefixes (what an override may
rewrite) and allowed destinations (where it may send a request). Every refusal is a 4xx
whose message names the config key of the rule that refused it.

At a `clearContext` server (an edge) nothing a caller sends as context counts: the wire
passes only `l5d-dtab` values and the signature here, never `l5d-ctx-*`, and `check`
ignores context values even if given. An override there is honoured from a source
trusted by `overrides.trust.cidrs` or with a valid signature, dropped silently from
anyone else, and refused (403) when its signature is wrong. `terse_for` says whether a
caller gets only a generic error (an edge's untrusted callers) or the details.

`OverridePolicy` is built once per server from config; `check` runs per request but only
when an override header is present (the caller tests for presence first: most requests
carry none and must not pay for this). No I/O, no asyncio: imports `dtab`,
`proxy.errors` and this package's pure `l5d` module only.

HMAC: the signature header carries HMAC-SHA256(key, message) as 64 hex digits (either
case) or as standard base64 (with or without padding). The message is every
`l5d-ctx-dtab` value then every `l5d-dtab` value, in header order, joined by `\\n` (a
byte no header value can contain, so the join is unambiguous); with the usual single
`l5d-dtab` header it is just that header's value. See `sign`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from typing import Final

from dtab import Dtab, DtabSyntaxError, Path, Prefix, read_prefix
from dtab.tree import leaves
from proxy.errors import OverrideRefused, RequestTooLarge
from proxy.route.l5d import read_local

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Sources trusted by default on a server without `clearContext` (an in-mesh server):
#: loopback and the private ranges (RFC 1918, RFC 4193 unique-local). IPv4-mapped IPv6
#: peers (`::ffff:10.1.2.3`, from dual-stack sockets) are matched as IPv4.
DEFAULT_TRUSTED_CIDRS: Final = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
)

#: Peers remembered per policy. A server sees few distinct peers inside a mesh; at the
#: edge the key space is the internet, hence the bound (cleared when full).
TRUST_CACHE_SIZE: Final = 4096

_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_SHA256_LEN: Final = 32


def _network(cidr: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"overrides.trust.cidrs: {cidr!r} is not a CIDR ({exc})") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        # `::ffff:10.0.0.0/104` means 10.0.0.0/8; peers are normalised the same way.
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def _address(peer_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(peer_ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return mapped
    return addr


def signed_message(ctx_values: Sequence[bytes], user_values: Sequence[bytes]) -> bytes:
    """The bytes an override signature covers (see the module docstring)."""
    if not ctx_values and len(user_values) == 1:
        return user_values[0]
    return b"\n".join((*ctx_values, *user_values))


def sign(key: bytes, ctx_values: Sequence[bytes], user_values: Sequence[bytes]) -> bytes:
    """The signature header value a trusted client sends: lower-case hex."""
    message = signed_message(ctx_values, user_values)
    return hmac.new(key, message, hashlib.sha256).hexdigest().encode("ascii")


def _decode_signature(value: bytes) -> bytes | None:
    value = value.strip()
    if len(value) == 2 * _SHA256_LEN:
        try:
            return bytes.fromhex(value.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
    if len(value) % 4:
        value += b"=" * (-len(value) % 4)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _SHA256_LEN else None


def _as_prefix(p: Prefix | Path | str, key: str = "overrides.allowPrefixes") -> Prefix:
    if isinstance(p, Prefix):
        return p
    if isinstance(p, Path):
        return Prefix(p.elems)
    try:
        return read_prefix(p)
    except DtabSyntaxError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _allowed_by(elems: tuple[bytes | None, ...], allowed: tuple[bytes | None, ...]) -> bool:
    """True when `elems` starts with `allowed` element-wise. A wildcard in the dentry's
    prefix matches anything, so it is only allowed where the allowed prefix has one."""
    if len(elems) < len(allowed):
        return False
    for e, a in zip(elems, allowed, strict=False):
        if a is not None and e != a:  # a wildcard `e` (None) never equals a label
            return False
    return True


def _subject(ctx_values: Sequence[bytes], user_values: Sequence[bytes]) -> str:
    if ctx_values and user_values:
        return "l5d-ctx-dtab + l5d-dtab"
    return "l5d-dtab" if user_values else "l5d-ctx-dtab"


class OverridePolicy:
    """The override rules of one server. Trusted sources: `trusted_cidrs` (None: the
    private ranges for a server without `clear_context`, nothing for one with it), or
    any source whose signature verifies when `hmac_header`/`hmac_key` are set.

    From an untrusted source, a `clear_context` server ignores the override (it strips
    outside context by definition, docs/dtab.md §13.5) unless the request carries a signature,
    which then must verify; any other server refuses it (403), so a misplaced override
    is an error the caller sees rather than a silent drop. A trusted or signed override
    is honoured on either kind of server, within the limits and allowed prefixes and
    destinations."""

    __slots__ = (
        "_allow",
        "_dests",
        "_nets4",
        "_nets6",
        "_trust_cache",
        "allow_destinations",
        "allow_prefixes",
        "clear_context",
        "hmac_header",
        "hmac_key",
        "max_bytes",
        "max_entries",
        "trusted_cidrs",
    )

    def __init__(
        self,
        trusted_cidrs: Sequence[str] | None = None,
        hmac_header: bytes | None = None,
        hmac_key: bytes | None = None,
        max_bytes: int = 4096,
        max_entries: int = 32,
        allow_prefixes: Sequence[Prefix | Path | str] | None = None,
        clear_context: bool = False,
        allow_destinations: Sequence[Prefix | Path | str] | None = None,
    ) -> None:
        if (hmac_header is None) != (hmac_key is None):
            raise ValueError("overrides.trust.hmac needs both a header and a key")
        if hmac_key is not None and not hmac_key:
            raise ValueError("overrides.trust.hmac: the key must not be empty")
        if max_bytes < 0 or max_entries < 0:
            raise ValueError("overrides.maxBytes and overrides.maxEntries must be >= 0")
        if trusted_cidrs is None:
            trusted_cidrs = () if clear_context else DEFAULT_TRUSTED_CIDRS
        nets = [_network(c) for c in trusted_cidrs]
        self.trusted_cidrs = tuple(trusted_cidrs)
        self._nets4 = tuple(n for n in nets if isinstance(n, ipaddress.IPv4Network))
        self._nets6 = tuple(n for n in nets if isinstance(n, ipaddress.IPv6Network))
        self.hmac_header = hmac_header.lower() if hmac_header is not None else None
        self.hmac_key = hmac_key
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.clear_context = clear_context
        self.allow_prefixes = (
            None if allow_prefixes is None else tuple(_as_prefix(p) for p in allow_prefixes)
        )
        self._allow = None if self.allow_prefixes is None else tuple(p.elems for p in self.allow_prefixes)
        self.allow_destinations = (
            None
            if allow_destinations is None
            else tuple(_as_prefix(p, "overrides.allowDestinations") for p in allow_destinations)
        )
        self._dests = None if self.allow_destinations is None else tuple(p.elems for p in self.allow_destinations)
        self._trust_cache: dict[str, bool] = {}

    def trusts(self, peer_ip: str) -> bool:
        """Whether `peer_ip` is a trusted override source by address (cached)."""
        cache = self._trust_cache
        trusted = cache.get(peer_ip)
        if trusted is None:
            addr = _address(peer_ip)
            if addr is None:
                trusted = False  # not an IP (e.g. a Unix socket peer name): no CIDR holds it
            elif isinstance(addr, ipaddress.IPv4Address):
                trusted = any(addr in n for n in self._nets4)
            else:
                trusted = any(addr in n for n in self._nets6)
            if len(cache) >= TRUST_CACHE_SIZE:
                cache.clear()
            cache[peer_ip] = trusted
        return trusted

    def terse_for(self, peer_ip: str) -> bool:
        """Whether a failure answered to `peer_ip` must be terse: the status and a generic
        message, no `l5d-err`, no dtab, no address. Only at a `clearContext` server, and
        only for callers outside `overrides.trust.cidrs` (the error path calls this, so
        the trust cache's lookup costs nothing on a request that succeeds)."""
        return self.clear_context and not self.trusts(peer_ip)

    def _verify(self, sig_value: bytes, ctx_values: Sequence[bytes], user_values: Sequence[bytes]) -> bool:
        provided = _decode_signature(sig_value)
        if provided is None or self.hmac_key is None:
            return False
        message = signed_message(ctx_values, user_values)
        expected = hmac.new(self.hmac_key, message, hashlib.sha256).digest()
        return hmac.compare_digest(expected, provided)

    def check(
        self,
        peer_ip: str,
        ctx_values: Sequence[bytes],
        user_values: Sequence[bytes],
        sig_value: bytes | None = None,
    ) -> Dtab:
        """The local dtab (`ctx ++ user`, docs/dtab.md §10) this request may use.

        Raises OverrideRefused (403) for an untrusted source, a bad signature, a disallowed
        prefix or destination, RequestTooLarge (431) past `max_bytes` or `max_entries`,
        BadRequest (400) when a value does not parse. Returns the empty dtab when there
        is nothing to honour (no values, or an unsigned override from outside on a
        `clear_context` server). On a `clear_context` server `ctx_values` are ignored:
        an edge takes no context from its callers (docs/dtab.md §13.5), only an override.
        """
        if ctx_values and self.clear_context:
            ctx_values = ()
        if not ctx_values and not user_values:
            return Dtab.EMPTY
        if not self.trusts(peer_ip):
            if self.hmac_header is None:
                if self.clear_context:
                    return Dtab.EMPTY
                raise OverrideRefused(
                    f"{_subject(ctx_values, user_values)} refused: source {peer_ip} is not a "
                    "trusted override source (overrides.trust.cidrs)"
                )
            if not sig_value:
                if self.clear_context:
                    return Dtab.EMPTY
                raise OverrideRefused(
                    f"{_subject(ctx_values, user_values)} refused: source {peer_ip} is not a "
                    f"trusted override source and the HMAC signature ({self.hmac_header.decode()}) "
                    "is missing (overrides.trust.hmac)"
                )
            if not self._verify(sig_value, ctx_values, user_values):
                raise OverrideRefused(
                    f"{_subject(ctx_values, user_values)} refused: the HMAC signature "
                    f"({self.hmac_header.decode()}) is invalid (overrides.trust.hmac)"
                )
        size = sum(map(len, ctx_values)) + sum(map(len, user_values))
        if size > self.max_bytes:
            raise RequestTooLarge(
                f"{_subject(ctx_values, user_values)} is {size} bytes, "
                f"over overrides.maxBytes {self.max_bytes}"
            )
        local = read_local(ctx_values, user_values)
        n = len(local.dentries)
        if n > self.max_entries:
            raise RequestTooLarge(
                f"{_subject(ctx_values, user_values)} has {n} entries, "
                f"over overrides.maxEntries {self.max_entries}"
            )
        allow = self._allow
        if allow is not None:
            for d in local.dentries:
                elems = d.prefix.elems
                if not any(_allowed_by(elems, a) for a in allow):
                    raise OverrideRefused(
                        f"{_subject(ctx_values, user_values)} refused: prefix {d.prefix.show()} "
                        "is not allowed by overrides.allowPrefixes"
                    )
        dests = self._dests
        if dests is not None:
            for d in local.dentries:
                # Every leaf as written, inside alternations and unions too: the trusted
                # base dtab decides where an allowed name goes, the override does not.
                for leaf in leaves(d.dst):
                    elems = leaf.elems if isinstance(leaf, Path) else leaf.id.elems
                    if not any(_allowed_by(elems, a) for a in dests):
                        raise OverrideRefused(
                            f"{_subject(ctx_values, user_values)} refused: destination {leaf.show()} "
                            f"(of {d.prefix.show()}) is not allowed by overrides.allowDestinations"
                        )
        return local
