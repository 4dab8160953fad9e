"""Every kind of config error names the source, the exact line and the key path."""

from __future__ import annotations

import pytest

from config import ConfigError, load_file, load_text


def error(text: str, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(text, source="config.yaml", **kw)
    return info.value


def test_the_message_format():
    e = error("routers:\n- protocol: http\n  servers:\n  - port: 4140\n  - port: abc\n")
    assert (e.source, e.line, e.key) == ("config.yaml", 5, "routers[0].servers[1].port")
    assert str(e) == (
        "config.yaml:5: routers[0].servers[1].port: expected an integer 1-65535 (or 0: any free port), got 'abc'"
    )


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        # types and ranges
        (
            "routers:\n- protocol: http\n  servers:\n  - port: 70000\n",
            4,
            "routers[0].servers[0].port",
            "got 70000",
        ),
        (
            "routers:\n- protocol: http\n  servers:\n  - port: '80'\n",
            4,
            "routers[0].servers[0].port",
            "got '80'",
        ),
        (
            "routers:\n- protocol: http\n  servers:\n  - port: true\n",
            4,
            "routers[0].servers[0].port",
            "got true",
        ),
        (
            "routers:\n- protocol: http\n  servers:\n  - ip: localhost\n",
            4,
            "routers[0].servers[0].ip",
            "expected an IP address",
        ),
        (
            "routers:\n- protocol: http\n  servers:\n  - clearContext: 1\n",
            4,
            "routers[0].servers[0].clearContext",
            "expected true or false, got 1",
        ),
        (
            "routers:\n- protocol: http\n  timeoutMs: 0\n",
            3,
            "routers[0].timeoutMs",
            "duration in milliseconds",
        ),
        (
            "routers:\n- protocol: http\n  servers: {port: 1}\n",
            3,
            "routers[0].servers",
            "expected a list, got a mapping",
        ),
        (
            "routers:\n- protocol: http\n  client: [1]\n",
            3,
            "routers[0].client",
            "expected a mapping, got a list",
        ),
        ("routers:\n- protocol: http\n  dtab: [/a]\n", 3, "routers[0].dtab", "expected a dtab string"),
        ("routers:\n- protocol: http\n  label: ''\n", 3, "routers[0].label", "expected a non-empty string"),
        # protocols
        (
            "routers:\n- protocol: htp\n",
            2,
            "routers[0].protocol",
            "unknown protocol 'htp' (did you mean 'http'?)",
        ),
        (
            "routers:\n- protocol: thrift\n",
            2,
            "routers[0].protocol",
            "protocol 'thrift' is not supported yet",
        ),
        ("routers:\n- label: x\n", 2, "routers[0]", "missing required key 'protocol'"),
        (
            "routers:\n- protocol: http\n  client: {protocol: h3}\n",
            3,
            "routers[0].client.protocol",
            "unknown protocol 'h3'",
        ),
        # identifiers
        (
            "routers:\n- protocol: http\n  identifier:\n    kind: io.l5d.methodandhost\n",
            4,
            "routers[0].identifier[0].kind",
            "did you mean 'io.l5d.methodAndHost'?",
        ),
        (
            "routers:\n- protocol: http\n  identifier:\n  - kind: io.l5d.ingress\n",
            4,
            "routers[0].identifier[0].kind",
            "identifier kind 'io.l5d.ingress' is not supported yet",
        ),
        (
            "routers:\n- protocol: http\n  identifier:\n  - kind: io.l5d.static\n",
            4,
            "routers[0].identifier[0]",
            "missing required key 'path'",
        ),
        (
            "routers:\n- protocol: h2\n  identifier:\n    kind: io.l5d.methodAndHost\n",
            4,
            "routers[0].identifier[0].kind",
            "does not apply to h2 routers",
        ),
        (
            "routers:\n- protocol: http\n  identifier:\n    kind: io.l5d.path\n    segments: 0\n",
            5,
            "routers[0].identifier[0].segments",
            "expected a segment count 1-1000, got 0",
        ),
        (
            "routers:\n- protocol: http\n  identifier:\n    kind: io.l5d.header\n    header: 'bad header'\n",
            5,
            "routers[0].identifier[0].header",
            "expected a header name",
        ),
        (
            "routers:\n- protocol: http\n  identifier:\n    kind: io.l5d.path\n    header: x\n",
            5,
            "routers[0].identifier[0]",
            "unknown key 'header'",
        ),
        (
            "routers:\n- protocol: http\n  identifier: []\n",
            3,
            "routers[0].identifier",
            "empty identifier list",
        ),
        # namers
        (
            "namers:\n- kind: io.l5d.consul\n  experimental: true\nrouters: [{protocol: http}]\n",
            2,
            "namers[0].kind",
            "namer kind 'io.l5d.consul' is not supported yet (supported: io.l5d.fs, io.l5d.k8s)",
        ),
        (
            "namers:\n- kind: io.l5d.fss\nrouters: [{protocol: http}]\n",
            2,
            "namers[0].kind",
            "unknown namer kind 'io.l5d.fss' (did you mean 'io.l5d.fs'?)",
        ),
        (
            "namers:\n- rootDir: disco\nrouters: [{protocol: http}]\n",
            2,
            "namers[0]",
            "missing required key 'kind'",
        ),
        (
            "namers:\n- kind: io.l5d.fs\nrouters: [{protocol: http}]\n",
            2,
            "namers[0]",
            "missing required key 'rootDir'",
        ),
        (
            "namers:\n- kind: io.l5d.fs\n  rootDir: /no/such/dir\nrouters: [{protocol: http}]\n",
            3,
            "namers[0].rootDir",
            "directory '/no/such/dir' does not exist",
        ),
        # overrides
        (
            "routers:\n- protocol: http\n  overrides:\n    trust:\n      cidrs:\n      - 10.0.0.0/8\n      - 10.0.0.1/8\n",
            7,
            "routers[0].overrides.trust.cidrs[1]",
            "has host bits set (did you mean 10.0.0.0/8?)",
        ),
        (
            "routers:\n- protocol: http\n  overrides:\n    trust:\n      cidrs: [10.0.0/33]\n",
            5,
            "routers[0].overrides.trust.cidrs[0]",
            "invalid CIDR '10.0.0/33'",
        ),
        (
            "routers:\n- protocol: http\n  overrides:\n    trust:\n      hmac: {key: short}\n",
            5,
            "routers[0].overrides.trust.hmac.key",
            "the HMAC key is 5 bytes; use at least 16",
        ),
        (
            "routers:\n- protocol: http\n  overrides:\n    trust:\n      hmac:\n        header: x\n",
            6,
            "routers[0].overrides.trust.hmac",
            "set exactly one of 'key' and 'keyFile'",
        ),
        (
            "routers:\n- protocol: http\n  overrides:\n    trust:\n      hmac: {keyFile: nope.key}\n",
            5,
            "routers[0].overrides.trust.hmac.keyFile",
            "does not exist",
        ),
        (
            "routers:\n- protocol: http\n  overrides:\n    allowPrefixes: [/svc/world, svc]\n",
            4,
            "routers[0].overrides.allowPrefixes[1]",
            "invalid prefix: '/' expected but 's' found at '[s]vc'",
        ),
        (
            "routers:\n- protocol: http\n  overrides:\n    maxBytes: -1\n",
            4,
            "routers[0].overrides.maxBytes",
            "got -1",
        ),
        # paths
        (
            "routers:\n- protocol: http\n  dstPrefix: /svc/\n",
            3,
            "routers[0].dstPrefix",
            "invalid path: label char expected but end of input found at '/svc/[]'",
        ),
        # Linkerd features we refuse rather than ignore
        (
            "routers:\n- protocol: http\n  interpreter:\n    kind: io.l5d.namerd\n    dst: /$/inet/n/4100\n",
            4,
            "routers[0].interpreter.kind",
            "interpreter 'io.l5d.namerd' is not supported yet",
        ),
        (
            "routers:\n- protocol: http\n  client:\n    kind: io.l5d.static\n    configs:\n    - prefix: /#/x\n      tls: {commonName: x}\n",
            7,
            "routers[0].client.configs[0].tls",
            "per-prefix TLS is not supported yet",
        ),
        (
            "admin:\n  port: 9990\n  tls: {certPath: a}\nrouters: [{protocol: http}]\n",
            3,
            "admin.tls",
            "TLS on the admin server is not supported yet",
        ),
        (
            "routers:\n- protocol: http\n  servers:\n  - tls:\n      certPath: nope.pem\n      keyPath: nope.key\n",
            5,
            "routers[0].servers[0].tls.certPath",
            "does not exist",
        ),
        (
            "routers:\n- protocol: http\n  baseDtab: /a=>/b\n  dtab: /a=>/c\n",
            3,
            "routers[0].baseDtab",
            "set 'dtab' or 'baseDtab', not both",
        ),
    ],
)
def test_value_errors(text, line, key, message, tmp_path):
    e = error(text, base_dir=str(tmp_path))
    assert (e.line, e.key) == (line, key), str(e)
    assert message in e.message, str(e)
    assert str(e).startswith(f"config.yaml:{line}: {key}: ")


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        (
            "routers:\n- protocol: http\n  dstprefix: /svc\n",
            3,
            "routers[0]",
            "unknown key 'dstprefix' (did you mean 'dstPrefix'?)",
        ),
        (
            "routers:\n- protocol: http\n  servers:\n  - port: 1\n    clearcontext: true\n",
            5,
            "routers[0].servers[0]",
            "unknown key 'clearcontext' (did you mean 'clearContext'?)",
        ),
        ("router:\n- protocol: http\n", 1, None, "unknown key 'router' (did you mean 'routers'?)"),
        ("routers:\n- protocol: http\n  frobnicate: 1\n", 3, "routers[0]", "unknown key 'frobnicate'"),
        (
            "routers:\n- protocol: http\n  limits:\n    maxHeader: 10\n",
            4,
            "routers[0].limits",
            "unknown key 'maxHeader' (did you mean 'maxHeaders'?)",
        ),
    ],
)
def test_unknown_keys(text, line, key, message):
    e = error(text)
    assert (e.line, e.key) == (line, key), str(e)
    assert e.message.startswith(message), str(e)


def test_unknown_key_without_a_near_miss_has_no_suggestion():
    assert "did you mean" not in error("routers:\n- protocol: http\n  frobnicate: 1\n").message


def test_dtab_error_in_a_literal_block_names_the_line_of_the_bad_entry():
    text = (
        "routers:\n"              # 1
        "- protocol: http\n"      # 2
        "  dtab: |\n"             # 3
        "    /svc => /host;\n"    # 4
        "    # a comment line\n"  # 5
        "    /host => /srv\n"     # 6  (missing ';')
        "    /srv => /$/inet/127.0.0.1/1;\n"  # 7  <- the parser stops here
    )  # fmt: skip
    e = error(text)
    assert (e.line, e.key) == (7, "routers[0].dtab")
    assert e.message.startswith("invalid dtab: end of input expected but '/' found at '")
    assert "/host => /srv\n[/]srv => /$/inet" in e.message


def test_dtab_error_after_leading_blank_lines_in_a_block():
    text = "routers:\n- protocol: http\n  dtab: |\n\n    /svc => /a;\n    /b = > /c;\n"
    e = error(text)
    assert e.line == 6
    assert "'>' expected but ' ' found at" in e.message and "/b =[ ]> /c" in e.message


def test_dtab_error_at_end_of_input_points_at_the_last_line():
    text = "routers:\n- protocol: http\n  dtab: |\n    /svc => /a;\n    /b =>\n\n"
    e = error(text)
    assert e.line == 5
    assert "end of input found at" in e.message and e.message.endswith("[]'")


def test_dtab_error_in_a_folded_block():
    text = (
        "routers:\n"
        "- protocol: http\n"
        "  dtab: >-\n"           # 3
        "    /svc => /a;\n"      # 4
        "    /b => /c;\n"        # 5
        "\n"                     # 6
        "    /d => /e;\n"        # 7
        "    /f => (/g;\n"       # 8
    )  # fmt: skip
    e = error(text)
    assert (e.line, e.key) == (8, "routers[0].dtab")
    assert "')' expected" in e.message


def test_dtab_error_in_a_one_line_and_a_plain_multiline_scalar():
    assert error("routers:\n- protocol: http\n  dtab: '/a => /b; /c => '\n").line == 3
    e = error("routers:\n- protocol: http\n  dtab: /a => /b;\n    /c => /d;\n    /e => &\n  label: x\n")
    assert e.line == 5


def test_duplicate_labels():
    e = error(
        "routers:\n- protocol: http\n  servers: [{port: 0}]\n- protocol: http\n  servers: [{port: 0}]\n"
    )
    assert (e.line, e.key) == (4, "routers[1]")
    assert e.message == "router label 'http' is already used by routers[0] (set a distinct 'label')"
    e = error("routers:\n- protocol: http\n  label: a\n- protocol: h2\n  label: a\n")
    assert (e.line, e.message) == (5, "router label 'a' is already used by routers[0]")


def test_duplicate_addresses():
    e = error(
        "routers:\n- protocol: http\n  servers:\n  - port: 4140\n- protocol: h2\n  servers:\n  - port: 4140\n"
    )
    assert (e.line, e.key) == (7, "routers[1].servers[0]")
    assert e.message == "127.0.0.1:4140 is already used by routers[0].servers[0]"
    # a wildcard address overlaps every address of its family on the port
    e = error(
        "routers:\n- protocol: http\n  servers:\n  - {ip: 127.0.0.1, port: 80}\n  - {ip: 0.0.0.0, port: 80}\n"
    )
    assert (e.line, e.message) == (5, "0.0.0.0:80 is already used by routers[0].servers[0]")
    e = error(
        "admin: {ip: 0.0.0.0, port: 9990}\nrouters:\n- protocol: http\n  servers: [{ip: 127.0.0.1, port: 9990}]\n"
    )
    assert (e.line, e.message) == (4, "127.0.0.1:9990 is already used by admin")
    # an unconfigured router still has its default server on 4140
    e = error("routers:\n- protocol: http\n- protocol: h2\n  servers: [{port: 4140}]\n")
    assert (e.line, e.key) == (4, "routers[1].servers[0]")
    assert e.message == "127.0.0.1:4140 is already used by routers[0].servers[0] (the default server)"


def test_duplicate_namer_prefixes(tmp_path):
    (tmp_path / "d").mkdir()
    text = "namers:\n- {kind: io.l5d.fs, rootDir: d}\n- kind: io.l5d.fs\n  rootDir: d\nrouters: [{protocol: http}]\n"
    e = error(text, base_dir=str(tmp_path))
    assert (e.line, e.key) == (3, "namers[1]")
    assert e.message == "prefix /io.l5d.fs is already used by namers[0]"
    e = error("namers:\n- {kind: io.l5d.fs, rootDir: d, prefix: '/#/x'}\nrouters: [{protocol: http}]\n",
              base_dir=str(tmp_path))  # fmt: skip
    assert e.line == 2 and "without '/#'" in e.message


def test_duplicate_keys():
    e = error("routers:\n- protocol: http\n  label: a\n  label: b\n")
    assert (e.line, e.key, e.message) == (4, "routers[0]", "duplicate key 'label' (first set on line 3)")


def test_yaml_syntax_error_has_its_line():
    e = error("routers:\n- protocol: http\n  servers: [{port: 1}\n  label: x\n")
    assert e.key is None and e.line is not None and e.line >= 3
    assert e.message.startswith("YAML syntax error: ")
    assert str(e).startswith(f"config.yaml:{e.line}: YAML syntax error")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", None, "empty config"),
        ("# only a comment\n", None, "empty config"),
        ("- a\n- b\n", 1, "expected a mapping, got a list"),
        ("admin: {port: 9990}\n", 1, "at least one router is required"),
        ("routers: []\n", 1, "at least one router is required"),
    ],
)
def test_whole_file_errors(text, line, message):
    e = error(text)
    assert e.line == line and message in e.message, str(e)


def test_load_file_errors_name_the_file(tmp_path):
    path = tmp_path / "l5d.yaml"
    path.write_text("routers:\n- protocol: http\n  bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert str(info.value).startswith(f"{path}:3: routers[0]: unknown key 'bogus'")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_file(tmp_path / "missing.yaml")
