"""Issue 14's config keys: `telemetry` / `tracers` (span exporters), `httpAccessLog*` and
`h2AccessLog*`, `tracePropagator`: implemented, or refused with file, line and key."""

from __future__ import annotations

import pytest

from config import ConfigError, load_text
from config.load import to_json

R = "routers:\n- protocol: http\n  servers: [{port: 0}]\n"


def error(text: str, base_dir: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(text, source="c.yaml", base_dir=base_dir)
    return info.value


def test_telemetry_exporters_and_their_defaults() -> None:
    cfg = load_text(
        "telemetry:\n"
        "- kind: io.l5d.otlp\n  endpoint: http://collector:4318\n  sampleRate: 0.5\n"
        "- kind: io.l5d.zipkin\n  host: zipkin\n"
        "- kind: io.l5d.prometheus\n" + R
    )
    otlp, zipkin = cfg.telemetry
    assert (otlp.kind, otlp.url, otlp.sample_rate) == ("io.l5d.otlp", "http://collector:4318/v1/traces", 0.5)
    assert (zipkin.url, zipkin.sample_rate) == ("http://zipkin:9411/api/v2/spans", 0.001)  # Linkerd's default rate
    assert (otlp.max_queue, otlp.max_batch, otlp.flush_interval_ms) == (2048, 512, 1000)
    assert any("io.l5d.prometheus: accepted, nothing to do" in n for n in cfg.notes)
    again = load_text("telemetry:\n" + "".join(
        "- " + "\n  ".join(f"{k}: {v}" for k, v in t.items()) + "\n" for t in to_json(cfg)["telemetry"]) + R)  # fmt: skip
    assert again.telemetry == cfg.telemetry


def test_linkerd_0x_tracers_are_the_same_entries() -> None:
    cfg = load_text("tracers:\n- kind: io.l5d.zipkin\n  host: 127.0.0.1\n  port: 9410\n  sampleRate: 1.0\n" + R)
    assert cfg.telemetry[0].url == "http://127.0.0.1:9410/api/v2/spans"


@pytest.mark.parametrize(("text", "line", "key", "message"), [
    ("telemetry:\n- kind: io.l5d.statsd\n", 2, "telemetry[0].kind", "telemetry kind 'io.l5d.statsd' is not supported yet"),
    ("telemetry:\n- kind: io.l5d.zipkn\n", 2, "telemetry[0].kind", "did you mean 'io.l5d.zipkin'"),
    ("telemetry:\n- kind: io.l5d.otlp\n  endpoint: https://c:4318\n", 3, "telemetry[0].endpoint", "https is not supported yet"),
    ("telemetry:\n- kind: io.l5d.otlp\n  sampleRate: 2\n", 3, "telemetry[0].sampleRate", "expected a number from 0 to 1"),
    ("telemetry:\n- kind: io.l5d.otlp\n  colour: red\n", 3, "telemetry[0]", "unknown key 'colour'"),
    ("telemetry:\n- kind: io.l5d.otlp\n  maxQueueSize: 10\n  maxBatchSize: 20\n", 4, "telemetry[0].maxBatchSize", "1-10"),
    ("tracers:\n- kind: io.l5d.prometheus\n", 2, "tracers[0].kind", "not supported yet"),
])  # fmt: skip
def test_telemetry_errors_name_line_and_key(text: str, line: int, key: str, message: str) -> None:
    e = error(text + R)
    assert (e.line, e.key) == (line, key) and message in e.message, str(e)


def test_access_log_keys(tmp_path) -> None:
    (tmp_path / "x" / "logs").mkdir(parents=True)
    cfg = load_text(R + "  httpAccessLog: logs/a.log\n  httpAccessLogFormat: json\n  httpAccessLogRollPolicy: 100.megabytes\n"
                    "  httpAccessLogAppend: false\n  httpAccessLogRotateCount: 3\n", base_dir=str(tmp_path / "x"))  # fmt: skip
    a = cfg.routers[0].access_log
    assert a is not None and a.path == str(tmp_path / "x" / "logs" / "a.log")
    assert (a.format, a.roll_policy, a.append, a.rotate_count) == ("json", "100.megabytes", False, 3)
    assert to_json(cfg)["routers"][0]["httpAccessLogFormat"] == "json"
    h2 = load_text("routers:\n- protocol: h2\n  servers: [{port: 0}]\n  h2AccessLog: /tmp/h2.log\n")
    assert h2.routers[0].access_log is not None and h2.routers[0].access_log.format == "combined"


@pytest.mark.parametrize(("extra", "line", "key", "message"), [
    ("  h2AccessLog: /tmp/a.log\n", 4, "routers[0].h2AccessLog", "h2AccessLog is for h2 routers; this http router takes httpAccessLog"),
    ("  httpAccessLog: /nonexistent-dir/a.log\n", 4, "routers[0].httpAccessLog", "directory '/nonexistent-dir' does not exist"),
    ("  httpAccessLog: /tmp\n", 4, "routers[0].httpAccessLog", "is a directory"),
    ("  httpAccessLog: /tmp/a.log\n  httpAccessLogFormat: xml\n", 5, "routers[0].httpAccessLogFormat", "unknown access log format 'xml'"),
    ("  httpAccessLog: /tmp/a.log\n  httpAccessLogRollPolicy: often\n", 5, "routers[0].httpAccessLogRollPolicy", "100.megabytes"),
    ("  httpAccessLogFormat: json\n", 4, "routers[0].httpAccessLogFormat", "without httpAccessLog"),
    ("  tracePropagator: {kind: io.l5d.b3}\n", 4, "routers[0].tracePropagator.kind", "unknown trace propagator"),
])  # fmt: skip
def test_access_log_and_propagator_errors(extra: str, line: int, key: str, message: str) -> None:
    e = error(R + extra)
    assert (e.line, e.key) == (line, key) and message in e.message, str(e)


def test_trace_propagator_kinds() -> None:
    for kind in ("io.l5d.default", "io.l5d.zipkin", "io.l5d.w3c"):
        assert load_text(R + f"  tracePropagator: {{kind: {kind}}}\n").routers[0].trace_propagator == kind
