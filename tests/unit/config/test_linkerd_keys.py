"""Linkerd 1 keys that change routing, safety or resource use: each is implemented or
refused with the file, the key's line, the key path and what to use instead (issue 10,
item 7's rule). `dstPrefix: /` is the empty prefix."""

from __future__ import annotations

import textwrap

import pytest

from config import ConfigError, load_text
from config.load import _REFUSED_ADMIN, _REFUSED_CLIENT, _REFUSED_ROUTER, _REFUSED_SERVER, to_json
from dtab import Path


def load(text: str):
    return load_text(textwrap.dedent(text), source="config.yaml")


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text)
    return info.value


ROUTER = "routers:\n- protocol: http\n  dtab: /svc => /$/inet/127.0.0.1/1;\n"


# -- refused ------------------------------------------------------------------------------


def _placed(section: str, key: str) -> tuple[str, int, str]:
    """A config setting `key` (to a mapping) in `section`, the key's line and path."""
    if section == "router":
        return ROUTER + f"  {key}:\n    x: 1\n", 4, f"routers[0].{key}"
    if section == "server":
        return ROUTER + f"  servers:\n  - port: 0\n    {key}:\n      x: 1\n", 6, f"routers[0].servers[0].{key}"
    if section == "client":
        return ROUTER + f"  client:\n    {key}:\n      x: 1\n", 5, f"routers[0].client.{key}"
    return f"admin:\n  port: 0\n  {key}:\n    x: 1\n" + ROUTER, 3, f"admin.{key}"


CASES = [
    *(("router", k) for k in _REFUSED_ROUTER),
    *(("server", k) for k in _REFUSED_SERVER),
    *(("client", k) for k in _REFUSED_CLIENT),
    *(("admin", k) for k in _REFUSED_ADMIN),
]


@pytest.mark.parametrize(("section", "key"), CASES)
def test_refused_keys_name_file_line_key_and_what_to_do(section, key):
    text, line, path = _placed(section, key)
    with pytest.raises(ConfigError) as info:
        load_text(text, source="config.yaml")
    e = info.value
    assert (e.source, e.line, e.key) == ("config.yaml", line, path), str(e)
    assert e.message.startswith("not supported: "), str(e)
    assert len(e.message) > 40  # says why and what instead, not just "no"


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        (ROUTER + "  maxResponseKB: 5120\n", 4, "routers[0].maxResponseKB", "streamed"),
        (ROUTER + "  maxChunkKB: 8\n", 4, "routers[0].maxChunkKB", "limits.maxRequestBodyBytes"),
        (ROUTER + "  maxErrResponseKB: 5\n", 4, "routers[0].maxErrResponseKB", "clearContext"),
        (ROUTER + "  bindingCache:\n    paths: 100\n", 4, "routers[0].bindingCache", "10000 routes"),
        (ROUTER + "  client:\n    initialStreamWindowBytes: 65535\n", 5,
         "routers[0].client.initialStreamWindowBytes", "1 MiB stream window"),
        (ROUTER + "  client:\n    kind: io.l5d.global\n    maxConcurrentStreamsPerConnection: 10\n", 6,
         "routers[0].client.maxConcurrentStreamsPerConnection", "SETTINGS_MAX_CONCURRENT_STREAMS"),
        ("admin:\n  workerThreads: 4\n" + ROUTER, 2, "admin.workerThreads", "event loop"),
    ],
)  # fmt: skip
def test_refusals_say_what_instead(text, line, key, words):
    e = error(text)
    assert (e.line, e.key) == (line, key), str(e)
    assert words in e.message, str(e)


def test_the_first_refused_key_in_file_order_is_reported():
    e = error(ROUTER + "  socketOptions: {noDelay: true}\n  announcers: []\n")
    assert (e.line, e.key) == (4, "routers[0].socketOptions")


def test_a_null_refused_key_is_not_set():
    cfg = load(ROUTER + "  bindingCache:\n  servers:\n  - port: 0\n    socketOptions: ~\n")
    assert cfg.routers[0].servers[0].port == 0


# -- accepted only at the value that describes what the proxy does -------------------------------


@pytest.mark.parametrize(
    ("key", "ok", "bad", "words"),
    [
        ("streamingEnabled", "true", "false", "always streamed"),
        ("compressionLevel", "0", "6", "never compresses"),
        ("failFast", "false", "true", "failure accrual"),
        ("originator", "false", "true", "not supported"),
    ],
)
def test_router_flags_accept_only_what_the_proxy_does(key, ok, bad, words):
    assert load(ROUTER + f"  {key}: {ok}\n").notes == ()
    e = error(ROUTER + f"  {key}: {bad}\n")
    assert (e.line, e.key) == (4, f"routers[0].{key}")
    assert e.message.startswith(f"{bad} is not supported: ") and words in e.message


def test_flags_check_their_type():
    e = error(ROUTER + "  streamingEnabled: 'yes'\n")
    assert e.key == "routers[0].streamingEnabled" and "expected true or false" in e.message
    e = error(ROUTER + "  compressionLevel: high\n")
    assert "expected an integer" in e.message


def test_forward_client_cert():
    assert load(ROUTER + "  client:\n    forwardClientCert: false\n").notes == ()
    e = error(ROUTER + "  client:\n    forwardClientCert: true\n")
    assert (e.line, e.key) == (5, "routers[0].client.forwardClientCert")


def test_usage_is_a_telemetry_note_unless_disabled():
    assert load("usage:\n  enabled: false\n  orgId: x\n" + ROUTER).notes == ()
    (note,) = load("usage:\n  orgId: x\n" + ROUTER).notes
    assert note == "config.yaml:1: usage: ignored: usage reporting is not implemented (nothing is sent)"
    e = error("usage:\n  enabled: nope\n" + ROUTER)
    assert (e.line, e.key) == (2, "usage.enabled")
    e = error("usage:\n  sendData: true\n" + ROUTER)
    assert e.key == "usage" and "unknown key 'sendData'" in e.message


# -- implemented: maxRequestKB and maxInitialLineKB ------------------------------------------------


def test_max_request_kb_is_the_body_limit():
    r = load(ROUTER + "  maxRequestKB: 5120\n").routers[0]
    assert r.limits.max_request_body_bytes == 5120 * 1024
    assert to_json(load(ROUTER + "  maxRequestKB: 1\n"))["routers"][0]["limits"]["maxRequestBodyBytes"] == 1024
    assert load(ROUTER + "  maxRequestKB: 0\n").routers[0].limits.max_request_body_bytes == 0


def test_max_request_kb_and_max_request_body_bytes_must_agree():
    same = load(ROUTER + "  maxRequestKB: 2\n  limits:\n    maxRequestBodyBytes: 2048\n").routers[0]
    assert same.limits.max_request_body_bytes == 2048
    e = error(ROUTER + "  limits:\n    maxRequestBodyBytes: 1000\n  maxRequestKB: 2\n")
    assert (e.line, e.key) == (6, "routers[0].maxRequestKB")
    assert e.message == (
        "maxRequestKB (2048 bytes) disagrees with limits.maxRequestBodyBytes (1000 bytes); set one of them"
    )


def test_max_request_kb_range():
    e = error(ROUTER + "  maxRequestKB: -1\n")
    assert e.key == "routers[0].maxRequestKB" and "(KiB)" in e.message


def test_max_initial_line_kb_is_the_request_target_limit():
    r = load(ROUTER + "  maxInitialLineKB: 4\n").routers[0]
    assert r.limits.max_request_target_bytes == 4096
    assert load(ROUTER).routers[0].limits.max_request_target_bytes == 8192
    own = load(ROUTER + "  limits: {maxRequestTargetBytes: 100}\n").routers[0]
    assert own.limits.max_request_target_bytes == 100
    assert to_json(load(ROUTER))["routers"][0]["limits"]["maxRequestTargetBytes"] == 8192
    e = error(ROUTER + "  maxInitialLineKB: 4\n  limits: {maxRequestTargetBytes: 100}\n")
    assert (e.line, e.key) == (4, "routers[0].maxInitialLineKB") and "disagrees" in e.message
    e = error(ROUTER + "  maxInitialLineKB: 0\n")
    assert "a size 1-16384 (KiB)" in e.message


# -- dstPrefix: / -----------------------------------------------------------------------------------


def test_dst_prefix_root_is_the_empty_prefix():
    r = load(ROUTER + "  dstPrefix: /\n").routers[0]
    assert r.dst_prefix == Path(()) and r.dst_prefix.show() == "/"
    assert load(ROUTER).routers[0].dst_prefix == Path.of("svc")
    assert to_json(load(ROUTER + "  dstPrefix: /\n"))["routers"][0]["dstPrefix"] == "/"
