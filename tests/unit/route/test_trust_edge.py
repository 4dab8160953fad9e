"""OverridePolicy at a clearContext edge (context from callers never counts; who gets
terse errors) and `overrides.allowDestinations` (every leaf of every override dentry)."""

from __future__ import annotations

import pytest

from dtab import Dtab, read_dtab
from proxy.errors import OverrideRefused
from proxy.route.trust import OverridePolicy, sign

KEY = b"0123456789abcdef"
SIG = b"l5d-dtab-sig"
OVERRIDE = b"/svc/web => /srv/v2"


def test_an_edge_ignores_context_values_even_from_a_trusted_source():
    policy = OverridePolicy(["127.0.0.0/8"], clear_context=True)
    assert policy.check("127.0.0.1", [b"/svc/web => /srv/evil"], []) is Dtab.EMPTY
    assert policy.check("127.0.0.1", [b"/svc/web => /srv/evil"], [OVERRIDE]) == read_dtab(OVERRIDE.decode())


def test_an_edge_signature_covers_the_override_alone():
    policy = OverridePolicy([], SIG, KEY, clear_context=True)
    good = sign(KEY, [], [OVERRIDE])
    assert policy.check("203.0.113.7", [b"/a => /b"], [OVERRIDE], good) == read_dtab(OVERRIDE.decode())
    with pytest.raises(OverrideRefused, match=r"overrides\.trust\.hmac"):
        policy.check("203.0.113.7", [], [OVERRIDE], sign(b"another key 16by", [], [OVERRIDE]))


def test_terse_for_only_untrusted_callers_of_an_edge():
    inside = OverridePolicy()
    assert not inside.terse_for("203.0.113.7")  # an inside server always shows details
    edge = OverridePolicy(["10.0.0.0/8"], clear_context=True)
    assert edge.terse_for("203.0.113.7") and edge.terse_for("127.0.0.1")
    assert not edge.terse_for("10.1.2.3")
    assert OverridePolicy(clear_context=True).terse_for("127.0.0.1")  # no CIDRs: nobody is trusted
    # A valid signature makes an override trusted, not the caller: errors stay terse.
    assert OverridePolicy([], SIG, KEY, clear_context=True).terse_for("203.0.113.7")


@pytest.mark.parametrize(
    "override",
    [
        b"/svc/web => /srv/v2",
        b"/svc/web => /#/io.l5d.k8s/default/http/web",
        b"/svc/web => /srv/v2 | /#/io.l5d.k8s/ns/http/web",
        b"/svc/web => 1 * /srv/a & 3 * (/srv/b | /srv/c)",
        b"/svc/web => ~",  # negative, failed and empty trees send nowhere
        b"/svc/web => !",
        b"/svc/web => $",
        b"/svc/web => /srv",  # the allowed prefix itself
    ],
)
def test_allow_destinations_admits_every_leaf_under_a_prefix(override):
    policy = OverridePolicy(allow_destinations=["/#/io.l5d.k8s", "/srv"])
    assert policy.check("127.0.0.1", [], [override]) == read_dtab(override.decode())


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        (b"/svc/web => /$/inet/127.0.0.1/8080", "/$/inet/127.0.0.1/8080"),
        (b"/svc/web => /srv/v2 | /$/inet/127.0.0.1/1", "/$/inet/127.0.0.1/1"),
        (b"/svc/web => /srv/a & (/srv/b | /svc/x)", "/svc/x"),
        (b"/svc/web => /sr", "/sr"),  # element-wise: /sr is not under /srv
        (b"/svc/web => /srvx/a", "/srvx/a"),
        (b"/svc/web => /#/io.l5d.k8", "/#/io.l5d.k8"),
        (b"/svc/web => /#", "/#"),  # shorter than the allowed prefix
    ],
)
def test_allow_destinations_refuses_naming_the_leaf_and_the_key(override, shown):
    policy = OverridePolicy(allow_destinations=["/#/io.l5d.k8s", "/srv"])
    with pytest.raises(OverrideRefused) as e:
        policy.check("127.0.0.1", [], [override])
    assert e.value.status == 403
    assert str(e.value) == (
        f"l5d-dtab refused: destination {shown} (of /svc/web) is not allowed by overrides.allowDestinations"
    )


def test_allow_destinations_checks_context_dtabs_too():
    policy = OverridePolicy(allow_destinations=["/srv"])
    with pytest.raises(OverrideRefused, match=r"^l5d-ctx-dtab refused: destination /\$/inet/h/1 "):
        policy.check("127.0.0.1", [b"/svc/a => /$/inet/h/1"], [])


def test_allow_destinations_wildcard_in_the_allowed_prefix():
    policy = OverridePolicy(allow_destinations=["/srv/*/canary"])
    assert len(policy.check("127.0.0.1", [], [b"/svc/web => /srv/web/canary/x"])) == 1
    with pytest.raises(OverrideRefused):
        policy.check("127.0.0.1", [], [b"/svc/web => /srv/web/stable"])


def test_an_empty_allow_destinations_admits_only_trees_without_leaves():
    policy = OverridePolicy(allow_destinations=[])
    assert len(policy.check("127.0.0.1", [], [b"/svc/web => ~"])) == 1
    with pytest.raises(OverrideRefused):
        policy.check("127.0.0.1", [], [OVERRIDE])


def test_bad_allow_destination_is_a_config_error():
    with pytest.raises(ValueError, match=r"overrides\.allowDestinations"):
        OverridePolicy(allow_destinations=["srv"])
