"""TLS contexts for listeners and upstream connections, with ALPN.

Owns: building `ssl.SSLContext`s from the validated `ServerTls` / `ClientTls` config
(certificate and key files, trust roots, mutual TLS) and the ALPN lists: an `h2`
router offers `h2` then `http/1.1` (RFC 9113 §3.2; a client offering only `http/1.1`
gets HTTP/1.1 on the same port), an `http` router only `http/1.1`.

Must not: read certificates per connection (a context is built once per listener or
client and shared), or do any I/O besides loading the configured files.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any


def server_context(tls: Any, alpn: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 9113 §9.2: HTTP/2 over TLS needs TLS 1.2 or later.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_path, tls.key_path)
    if tls.ca_cert_path:
        ctx.load_verify_locations(tls.ca_cert_path)
    if tls.require_client_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(list(alpn))
    # RFC 9113 §9.2.1: no renegotiation, no compression (CRIME).
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


def client_context(tls: Any, alpn: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.disable_validation:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.trust_certs:
        for path in tls.trust_certs:
            ctx.load_verify_locations(path)
    else:
        ctx.load_default_certs()
    if tls.cert_path and tls.key_path:
        ctx.load_cert_chain(tls.cert_path, tls.key_path)
    ctx.set_alpn_protocols(list(alpn))
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def alpn_for(protocol: str) -> tuple[str, ...]:
    return ("h2", "http/1.1") if protocol == "h2" else ("http/1.1",)
