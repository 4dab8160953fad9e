"""Override trust at the edge (DESIGN.md): trusted sources by CIDR or HMAC, size and
entry limits, allowed prefixes; every refusal a 4xx naming its rule."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from dtab import Dtab, Path, Prefix, read_dtab, read_prefix
from proxy.errors import BadRequest, OverrideRefused, RequestTooLarge
from proxy.route import trust
from proxy.route.trust import OverridePolicy, sign, signed_message

KEY = b"s3cret"
SIG = b"l5d-dtab-sig"
OVERRIDE = b"/svc/web => /$/inet/127.1/8080"


def digest(message, key=KEY):
    return hmac.new(key, message, hashlib.sha256).digest()


# -- trusted sources by address ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    ["127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "::1",
     "fd00::1", "fc00::5", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:192.168.3.4"],
)
def test_default_trust_is_loopback_and_private(ip):
    policy = OverridePolicy()
    assert policy.trusts(ip)
    assert policy.check(ip, [], [OVERRIDE]) == read_dtab(OVERRIDE.decode())


@pytest.mark.parametrize(
    "ip", ["203.0.113.7", "172.32.0.1", "11.0.0.1", "2001:db8::1", "fe80::1", "::ffff:8.8.8.8", "not-an-ip", ""]
)
def test_default_trust_refuses_public_sources(ip):
    policy = OverridePolicy()
    assert not policy.trusts(ip)
    with pytest.raises(OverrideRefused) as e:
        policy.check(ip, [], [OVERRIDE])
    assert e.value.status == 403


def test_untrusted_refusal_message_names_the_rule():
    with pytest.raises(OverrideRefused) as e:
        OverridePolicy().check("203.0.113.7", [], [OVERRIDE])
    assert str(e.value) == (
        "l5d-dtab refused: source 203.0.113.7 is not a trusted override source (overrides.trust.cidrs)"
    )
    with pytest.raises(OverrideRefused) as e:
        OverridePolicy().check("203.0.113.7", [OVERRIDE], [])
    assert str(e.value).startswith("l5d-ctx-dtab refused: source 203.0.113.7")


def test_configured_cidrs_replace_the_defaults():
    policy = OverridePolicy(["203.0.113.0/24", "2001:db8::/32"])
    assert policy.trusts("203.0.113.7")
    assert policy.trusts("::ffff:203.0.113.9")
    assert policy.trusts("2001:db8::1")
    assert not policy.trusts("10.0.0.1")
    assert not policy.trusts("127.0.0.1")


def test_mapped_ipv6_cidr_matches_ipv4_peers():
    policy = OverridePolicy(["::ffff:10.0.0.0/104"])
    assert policy.trusts("10.200.0.1")
    assert policy.trusts("::ffff:10.200.0.1")
    assert not policy.trusts("11.0.0.1")


def test_empty_cidrs_trust_nobody():
    assert not OverridePolicy([]).trusts("127.0.0.1")


def test_bad_cidr_is_a_config_error():
    with pytest.raises(ValueError, match="overrides.trust.cidrs"):
        OverridePolicy(["10.0.0.0/33"])


def test_trust_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(trust, "TRUST_CACHE_SIZE", 4)
    policy = OverridePolicy()
    for i in range(20):
        assert policy.trusts(f"10.0.0.{i}")
    assert len(policy._trust_cache) <= 4


# -- clearContext servers ------------------------------------------------------------------------------


def test_clear_context_trusts_nobody_by_default_and_ignores_the_override():
    policy = OverridePolicy(clear_context=True)
    assert not policy.trusts("127.0.0.1")
    assert policy.check("127.0.0.1", [b"/a=>/b"], [OVERRIDE]) is Dtab.EMPTY


def test_clear_context_with_cidrs_honours_trusted_sources():
    policy = OverridePolicy(["198.51.100.0/24"], clear_context=True)
    assert policy.check("198.51.100.4", [], [OVERRIDE]) == read_dtab(OVERRIDE.decode())
    assert policy.check("203.0.113.7", [], [OVERRIDE]) is Dtab.EMPTY


# -- HMAC ---------------------------------------------------------------------------------------------


def test_hmac_hex_signature_is_accepted_from_anywhere():
    policy = OverridePolicy([], SIG, KEY)
    sig = digest(OVERRIDE).hex().encode()
    assert sign(KEY, [], [OVERRIDE]) == sig
    assert policy.check("203.0.113.7", [], [OVERRIDE], sig) == read_dtab(OVERRIDE.decode())
    assert policy.check("203.0.113.7", [], [OVERRIDE], sig.upper()) == read_dtab(OVERRIDE.decode())


@pytest.mark.parametrize("strip", [False, True])
def test_hmac_base64_signature_is_accepted(strip):
    policy = OverridePolicy([], SIG, KEY)
    sig = base64.b64encode(digest(OVERRIDE))
    if strip:
        sig = sig.rstrip(b"=")
    assert policy.check("203.0.113.7", [], [OVERRIDE], sig) == read_dtab(OVERRIDE.decode())


def test_hmac_covers_ctx_then_user_values_joined_by_newline():
    ctx, user = [b"/a=>/c"], [b"/a=>/d", b"/b=>/e"]
    assert signed_message(ctx, user) == b"/a=>/c\n/a=>/d\n/b=>/e"
    policy = OverridePolicy([], SIG, KEY)
    got = policy.check("203.0.113.7", ctx, user, sign(KEY, ctx, user))
    assert got.show() == "/a=>/c;/a=>/d;/b=>/e"
    # which header a value came in does not change `ctx ++ user`, so it is not signed;
    # the order of the values does, and is
    assert policy.check("203.0.113.7", [], ctx + user, sign(KEY, ctx, user)) == got
    with pytest.raises(OverrideRefused):
        policy.check("203.0.113.7", ctx, user[::-1], sign(KEY, ctx, user))


@pytest.mark.parametrize(
    "sig",
    [
        hmac.new(b"wrong", OVERRIDE, hashlib.sha256).hexdigest().encode(),
        b"zz" * 32,
        b"not a signature",
        base64.b64encode(b"x" * 31),
    ],
)
def test_hmac_invalid_signature_is_refused_naming_the_rule(sig):
    policy = OverridePolicy([], SIG, KEY)
    with pytest.raises(OverrideRefused) as e:
        policy.check("203.0.113.7", [], [OVERRIDE], sig)
    assert str(e.value) == "l5d-dtab refused: the HMAC signature (l5d-dtab-sig) is invalid (overrides.trust.hmac)"


def test_hmac_signature_over_other_bytes_is_invalid():
    policy = OverridePolicy([], SIG, KEY)
    with pytest.raises(OverrideRefused, match="invalid"):
        policy.check("203.0.113.7", [], [OVERRIDE + b" "], sign(KEY, [], [OVERRIDE]))


def test_hmac_missing_signature_is_refused_naming_the_rule():
    policy = OverridePolicy([], SIG, KEY)
    with pytest.raises(OverrideRefused) as e:
        policy.check("203.0.113.7", [], [OVERRIDE], None)
    assert str(e.value) == (
        "l5d-dtab refused: source 203.0.113.7 is not a trusted override source and the HMAC "
        "signature (l5d-dtab-sig) is missing (overrides.trust.hmac)"
    )


def test_hmac_on_clear_context_server():
    policy = OverridePolicy(None, SIG, KEY, clear_context=True)
    assert policy.check("203.0.113.7", [], [OVERRIDE], None) is Dtab.EMPTY  # unsigned: ignored
    assert policy.check("203.0.113.7", [], [OVERRIDE], sign(KEY, [], [OVERRIDE])) == read_dtab(OVERRIDE.decode())
    with pytest.raises(OverrideRefused, match="invalid"):  # signed wrongly: a clear error
        policy.check("203.0.113.7", [], [OVERRIDE], b"00" * 32)


def test_trusted_address_needs_no_signature():
    policy = OverridePolicy(None, SIG, KEY)
    assert policy.check("10.0.0.1", [], [OVERRIDE], None) == read_dtab(OVERRIDE.decode())


def test_hmac_config_needs_header_and_key():
    with pytest.raises(ValueError, match="overrides.trust.hmac"):
        OverridePolicy(None, SIG, None)
    with pytest.raises(ValueError, match="overrides.trust.hmac"):
        OverridePolicy(None, SIG, b"")


# -- limits ----------------------------------------------------------------------------------------------


def test_max_bytes():
    policy = OverridePolicy(max_bytes=4096)
    value = b"/a=>/" + b"b" * 4995
    with pytest.raises(RequestTooLarge) as e:
        policy.check("127.0.0.1", [], [value])
    assert e.value.status == 431
    assert str(e.value) == "l5d-dtab is 5000 bytes, over overrides.maxBytes 4096"
    ok = b"/a=>/" + b"b" * 4091
    assert len(policy.check("127.0.0.1", [], [ok])) == 1


def test_max_bytes_counts_every_value():
    policy = OverridePolicy(max_bytes=10)
    with pytest.raises(RequestTooLarge, match=r"^l5d-ctx-dtab \+ l5d-dtab is 12 bytes, over overrides.maxBytes 10$"):
        policy.check("127.0.0.1", [b"/a=>/b"], [b"/c=>/d"])


def test_max_entries():
    policy = OverridePolicy(max_entries=2)
    assert len(policy.check("127.0.0.1", [b"/a=>/b"], [b"/c=>/d"])) == 2
    with pytest.raises(RequestTooLarge) as e:
        policy.check("127.0.0.1", [b"/a=>/b"], [b"/c=>/d;/e=>/f"])
    assert str(e.value) == "l5d-ctx-dtab + l5d-dtab has 3 entries, over overrides.maxEntries 2"


def test_parse_error_is_400():
    with pytest.raises(BadRequest) as e:
        OverridePolicy().check("127.0.0.1", [], [b"i am not a dtab"])
    assert e.value.status == 400
    assert str(e.value).startswith("Invalid l5d-dtab header: ")


def test_untrusted_is_refused_before_size_is_measured():
    with pytest.raises(OverrideRefused):
        OverridePolicy(max_bytes=1).check("203.0.113.7", [], [OVERRIDE])


# -- allowPrefixes ---------------------------------------------------------------------------------------


def test_allow_prefixes_accepts_entries_under_an_allowed_prefix():
    policy = OverridePolicy(allow_prefixes=[read_prefix("/svc/web"), Path.of("svc", "api")])
    local = policy.check("127.0.0.1", [], [b"/svc/web => /a; /svc/web/v2 => /b; /svc/api => /c"])
    assert len(local) == 3


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        (b"/svc/x => /a", "/svc/x"),
        (b"/svc => /a", "/svc"),  # shorter than the allowed prefix
        (b"/svc/* => /a", "/svc/*"),  # a wildcard where a label is required
        (b"/svc/web => /a; /$/inet => /b", "/$/inet"),
    ],
)
def test_allow_prefixes_refuses_naming_the_prefix_and_rule(override, shown):
    policy = OverridePolicy(allow_prefixes=["/svc/web"])
    with pytest.raises(OverrideRefused) as e:
        policy.check("127.0.0.1", [], [override])
    assert str(e.value) == f"l5d-dtab refused: prefix {shown} is not allowed by overrides.allowPrefixes"


def test_allowed_wildcard_admits_labels_and_wildcards():
    policy = OverridePolicy(allow_prefixes=[Prefix((b"svc", None, b"canary"))])
    assert len(policy.check("127.0.0.1", [], [b"/svc/web/canary => /a; /svc/*/canary/x => /b"])) == 2
    with pytest.raises(OverrideRefused):
        policy.check("127.0.0.1", [], [b"/svc/web/stable => /a"])


def test_bad_allow_prefix_is_a_config_error():
    with pytest.raises(ValueError, match="overrides.allowPrefixes"):
        OverridePolicy(allow_prefixes=["svc"])


# -- fast path -----------------------------------------------------------------------------------------------


def test_no_override_values_is_the_empty_dtab_without_any_check():
    policy = OverridePolicy([], SIG, KEY, max_bytes=0)
    assert policy.check("203.0.113.7", [], []) is Dtab.EMPTY
