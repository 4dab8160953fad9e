"""Issue 14, items 4 and 5 on real sockets: access logs (HTTP/1.1 and HTTP/2), proxy
errors in the log once per cause with a count, and one trace across two proxy hops
whatever format the application forwards, exported to a recording collector over OTLP
and Zipkin, with sampling and bounded queues."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.telemetry.errorlog import ERRORS
from tests.integration.collector import Collector
from tests.integration.grpc_helpers import H2Client
from tests.integration.harness import Backend, Client, proxy_port, read_fields, start_proxy

_SEQ = itertools.count()
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_HEX = "0af7651916cd43dd8448eb211c80319c"


def metric(rt: Any, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(rt.telemetry.render().decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(name)


# -- access log ---------------------------------------------------------------------------------


def test_access_log_combined_and_json(run, tmp_path) -> None:
    async def go() -> None:
        web = await Backend("web").start()
        yaml = (
            "routers:\n"
            "- protocol: http\n  label: combined\n"
            f"  dtab: '/svc/web => /$/inet/127.0.0.1/{web.port}; /svc/down => /$/inet/127.0.0.1/1'\n"
            f"  httpAccessLog: {tmp_path / 'access.log'}\n"
            "  servers: [{ip: 127.0.0.1, port: 0}]\n"
            "- protocol: http\n  label: jsonlog\n"
            f"  dtab: '/svc/web => /$/inet/127.0.0.1/{web.port}'\n"
            f"  httpAccessLog: {tmp_path / 'access.json'}\n  httpAccessLogFormat: json\n"
            "  servers: [{ip: 127.0.0.1, port: 0}]\n"
        )
        rt = await start_proxy(yaml)
        c = await Client.connect(proxy_port(rt, 0))
        assert (await c.request("GET", "/a?b=1", {"host": "web", "user-agent": "test/1", "referer": "http://r/"})).status == 200
        assert (await c.request("GET", "/b", {"host": "down"})).status == 502
        assert (await c.request("GET", "/c", {"host": "nowhere"})).status == 502
        await c.close()
        c = await Client.connect(proxy_port(rt, 1))
        assert (await c.request("POST", "/j", {"host": "web"}, body=b"12345")).status == 200
        await c.close()
        await rt.drain()  # drain writes every pending line
        await web.close()

        lines = (tmp_path / "access.log").read_text().splitlines()
        assert len(lines) == 3
        assert lines[0].startswith('127.0.0.1 - - [')
        assert f'] "GET /a?b=1 HTTP/1.1" 200 {len(b"web GET /a?b=1")} "http://r/" "test/1" "/svc/web" "/$/inet/127.0.0.1/{web.port}" ' in lines[0]
        assert '"GET /b HTTP/1.1" 502 0 "-" "-" "/svc/down" "/$/inet/127.0.0.1/1" ' in lines[1]
        assert '"GET /c HTTP/1.1" 502 0 "-" "-" "/svc/nowhere" "-" ' in lines[2]
        assert all(float(x.rsplit(" ", 1)[1]) > 0 for x in lines)  # the duration, in ms
        (j,) = [json.loads(x) for x in (tmp_path / "access.json").read_text().splitlines()]
        assert j["router"] == "jsonlog" and j["method"] == "POST" and j["uri"] == "/j" and j["status"] == 200
        assert j["service"] == "/svc/web" and j["client"] == f"/$/inet/127.0.0.1/{web.port}" and j["duration_ms"] > 0

    run(go())


def test_h2_access_log_on_an_h2_router(run, tmp_path) -> None:
    async def go() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(
            "routers:\n- protocol: h2\n  label: h2\n"
            f"  dtab: '/svc/web => /$/inet/127.0.0.1/{web.port}'\n  client: {{protocol: http}}\n"
            f"  h2AccessLog: {tmp_path / 'h2.log'}\n"
            "  servers: [{ip: 127.0.0.1, port: 0}]\n"
        )
        c = await H2Client.connect(proxy_port(rt))
        r = await c.request(b"GET", b"/h2", b"web", [(b"user-agent", b"h2-test")])
        assert r.status == 200
        await rt.drain()
        await web.close()
        (line,) = (tmp_path / "h2.log").read_text().splitlines()
        assert '"GET /h2 HTTP/2.0" 200 ' in line and '"h2-test" "/svc/web"' in line

    run(go())


# -- proxy errors in the log ------------------------------------------------------------------------


def test_26_refused_connections_are_two_warning_lines(run, caplog) -> None:
    async def go() -> None:
        label = f"refusals{next(_SEQ)}"  # ERRORS is per process: a fresh key per run
        rt = await start_proxy(
            f"routers:\n- protocol: http\n  label: {label}\n"
            "  dtab: '/svc/world => /$/inet/127.0.0.1/1'\n  servers: [{ip: 127.0.0.1, port: 0}]\n"
        )
        c = await Client.connect(proxy_port(rt))
        with caplog.at_level(logging.WARNING, logger="proxy.errors"):
            for _ in range(26):
                assert (await c.request("GET", "/", {"host": "world"})).status == 502
            mine = [r.getMessage() for r in caplog.records if f"router {label}:" in r.getMessage()]
            assert len(mine) == 1 and mine[0].startswith(f"router {label}: /svc/world: 502 connect: Unable to connect to 127.0.0.1:1:")
            ERRORS.flush()  # the interval's end (a 10 s timer in a running proxy)
        await c.close()
        mine = [r.getMessage() for r in caplog.records if f"router {label}:" in r.getMessage()]
        assert len(mine) == 2 and mine[1].startswith(f"router {label}: /svc/world: 25 more 502 connect in the last 10 s")
        await rt.drain()

    run(go())


# -- tracing ---------------------------------------------------------------------------------------


async def app_server(proxy_b: list[int], keep: str) -> tuple[asyncio.AbstractServer, int, list[dict[str, str]]]:
    """An application between two proxy hops: it forwards only the trace headers of one
    format (`keep`) to its own outbound call through proxy B (`proxy_b[0]`, the port)."""
    seen: list[dict[str, str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        headers = dict(await read_fields(reader))
        seen.append(headers)
        fwd = {k: v for k, v in headers.items() if k == keep or (keep == "x-b3" and k.startswith("x-b3-"))}
        c = await Client.connect(proxy_b[0])
        r = await c.request("GET", "/final", {"host": "final", **fwd})
        await c.close()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(r.body) + r.body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def two_hops_yaml(app_port: int, final_port: int, telemetry: str) -> str:
    return (
        f"telemetry:\n{telemetry}"
        "routers:\n"
        f"- protocol: http\n  label: a\n  dtab: '/svc/app => /$/inet/127.0.0.1/{app_port}'\n"
        "  servers: [{ip: 127.0.0.1, port: 0}]\n"
        f"- protocol: http\n  label: b\n  dtab: '/svc/final => /$/inet/127.0.0.1/{final_port}'\n"
        "  servers: [{ip: 127.0.0.1, port: 0}]\n"
    )


@pytest.mark.parametrize("keep", ["traceparent", "b3", "x-b3", "l5d-ctx-trace"])
def test_one_trace_across_two_hops_whatever_the_app_forwards_otlp(run, keep: str) -> None:
    async def go() -> None:
        col = await Collector().start()
        final = await Backend("final").start()
        proxy_b: list[int] = []
        server, app_port, app_seen = await app_server(proxy_b, keep)
        rt = await start_proxy(two_hops_yaml(app_port, final.port,
                                             f"- kind: io.l5d.otlp\n  endpoint: http://127.0.0.1:{col.port}\n  sampleRate: 1.0\n"))  # fmt: skip
        proxy_b.append(proxy_port(rt, 1))
        c = await Client.connect(proxy_port(rt, 0))
        # The client sends W3C and both B3 forms: proxy A writes the child in each of
        # them and in l5d-ctx-trace; the app forwards only one of them.
        r = await c.request("GET", "/", {"host": "app", "traceparent": TP, "b3": f"{TRACE_HEX}-b7ad6b7169203331-1",
                                         "x-b3-traceid": TRACE_HEX, "x-b3-spanid": "b7ad6b7169203331",
                                         "x-b3-sampled": "1"})  # fmt: skip
        assert r.status == 200
        await c.close()
        await rt.drain()  # sends the queued spans
        hop_a_tp = app_seen[0]["traceparent"]
        assert hop_a_tp.startswith(f"00-{TRACE_HEX}-") and hop_a_tp.endswith("-01")
        span_a_id = hop_a_tp.split("-")[2]
        fin = final.seen[0]
        # The final backend sees the same trace in every format that reached proxy B.
        if keep == "traceparent":
            assert fin.header("traceparent").startswith(f"00-{TRACE_HEX}-")  # type: ignore[union-attr]
        elif keep == "b3":
            assert fin.header("b3").startswith(f"{TRACE_HEX}-")  # type: ignore[union-attr]
        elif keep == "x-b3":
            assert fin.header("x-b3-traceid") == TRACE_HEX and fin.header("x-b3-parentspanid") == span_a_id
        assert fin.header("l5d-reqid") == TRACE_HEX[16:]  # l5d-ctx-trace carries the same trace
        spans = col.otlp_spans()
        assert len(spans) == 2
        assert {s["traceId"] for s in spans} == {TRACE_HEX}
        by_router = {next(a["value"]["stringValue"] for a in s["attributes"] if a["key"] == "l5d.router"): s for s in spans}
        assert by_router["a"]["spanId"] == span_a_id
        assert by_router["a"]["parentSpanId"] == "b7ad6b7169203331"  # the client's span
        assert by_router["b"]["parentSpanId"] == span_a_id  # one trace, linked hop to hop
        assert by_router["a"]["name"] == "GET /svc/app" and by_router["a"]["kind"] == 3
        assert int(by_router["a"]["endTimeUnixNano"]) > int(by_router["a"]["startTimeUnixNano"])
        assert all(p[1] == "application/json" and p[0] == "/v1/traces" for p in col.posts)
        server.close()
        await final.close()
        await col.close()

    run(go())


def one_hop_yaml(backend: int, telemetry: str, extra: str = "") -> str:
    return (
        f"telemetry:\n{telemetry}"
        f"routers:\n- protocol: http\n  label: t\n  dtab: '/svc/web => /$/inet/127.0.0.1/{backend}'\n{extra}"
        "  servers: [{ip: 127.0.0.1, port: 0}]\n"
    )


def test_zipkin_v2_spans_and_a_new_root_sampled_by_rate(run) -> None:
    async def go() -> None:
        col = await Collector().start()
        web = await Backend("web").start()
        rt = await start_proxy(one_hop_yaml(web.port, f"- kind: io.l5d.zipkin\n  host: 127.0.0.1\n  port: {col.port}\n  sampleRate: 1.0\n"))
        c = await Client.connect(proxy_port(rt))
        assert (await c.request("GET", "/z", {"host": "web"})).status == 200  # no context: a new root
        await c.close()
        await rt.drain()
        (span,) = col.zipkin_spans()
        assert col.posts[0][0] == "/api/v2/spans" and col.posts[0][1] == "application/json"
        seen = web.seen[0]
        # The root's id is what l5d-ctx-trace carried downstream (128-bit when tracing).
        assert len(span["traceId"]) == 32 and span["traceId"].endswith(seen.header("l5d-reqid"))  # type: ignore[arg-type]
        assert "parentId" not in span and span["kind"] == "CLIENT" and span["name"] == "get /svc/web"
        assert span["remoteEndpoint"] == {"ipv4": "127.0.0.1", "port": web.port}
        assert span["tags"]["http.response.status_code"] == "200" and span["tags"]["l5d.client"] == f"/$/inet/127.0.0.1/{web.port}"
        assert span["duration"] >= 1 and span["localEndpoint"] == {"serviceName": "dtabproxy"}
        assert metric(rt, "dtabproxy_trace_spans_exported_total", exporter="io.l5d.zipkin") == 1
        await web.close()
        await col.close()

    run(go())


def test_an_inbound_sampling_decision_is_honoured(run) -> None:
    async def go() -> None:
        col = await Collector().start()
        web = await Backend("web").start()
        rt = await start_proxy(one_hop_yaml(web.port, f"- kind: io.l5d.otlp\n  endpoint: http://127.0.0.1:{col.port}/v1/traces\n  sampleRate: 0.0\n"))
        c = await Client.connect(proxy_port(rt))
        # Sampled upstream: exported even at rate 0. Not sampled upstream: not exported
        # even though... the rate is 0 here too; and undecided at rate 0: not exported.
        assert (await c.request("GET", "/1", {"host": "web", "traceparent": TP})).status == 200
        assert (await c.request("GET", "/2", {"host": "web", "traceparent": TP[:-2] + "00"})).status == 200
        assert (await c.request("GET", "/3", {"host": "web"})).status == 200
        assert (await c.request("GET", "/4", {"host": "web", "x-b3-sampled": "1"})).status == 200
        await c.close()
        await rt.drain()
        spans = col.otlp_spans()
        paths = sorted(next(a["value"]["stringValue"] for a in s["attributes"] if a["key"] == "url.path") for s in spans)
        assert paths == ["/1", "/4"]
        assert web.seen[1].header("traceparent").endswith("-00")  # type: ignore[union-attr]
        assert web.seen[3].header("x-b3-sampled") == "1"
        await web.close()
        await col.close()

    run(go())


def test_sampled_flag_rate_1_and_an_unsampled_inbound_trace(run) -> None:
    async def go() -> None:
        col = await Collector().start()
        web = await Backend("web").start()
        rt = await start_proxy(one_hop_yaml(web.port, f"- kind: io.l5d.otlp\n  endpoint: http://127.0.0.1:{col.port}\n  sampleRate: 1.0\n"))
        c = await Client.connect(proxy_port(rt))
        assert (await c.request("GET", "/no", {"host": "web", "traceparent": TP[:-2] + "00"})).status == 200
        assert (await c.request("GET", "/yes", {"host": "web"})).status == 200
        await c.close()
        await rt.drain()
        assert len(col.otlp_spans()) == 1  # the unsampled trace stays unsampled
        await web.close()
        await col.close()

    run(go())


def test_a_slow_collector_fills_the_bounded_queue_and_drops_are_counted(run) -> None:
    async def go() -> None:
        col = await Collector().start()
        col.hold()  # answers only when released
        web = await Backend("web").start()
        rt = await start_proxy(one_hop_yaml(web.port, f"- kind: io.l5d.otlp\n  endpoint: http://127.0.0.1:{col.port}\n"
                                            "  sampleRate: 1.0\n  maxQueueSize: 2\n  maxBatchSize: 1\n  flushIntervalMs: 60000\n"))  # fmt: skip
        c = await Client.connect(proxy_port(rt))
        assert (await c.request("GET", "/", {"host": "web"})).status == 200
        await asyncio.wait_for(col.received.wait(), 10)  # the first batch is in flight, held
        for _ in range(5):
            assert (await c.request("GET", "/", {"host": "web"})).status == 200
        await c.close()
        assert metric(rt, "dtabproxy_trace_spans_dropped_total", exporter="io.l5d.otlp") == 3
        col.release()
        await rt.drain()
        assert len(col.otlp_spans()) == 3
        await web.close()
        await col.close()

    run(go())


def test_grpc_metadata_carries_the_trace_through_an_h2_router(run) -> None:
    from tests.integration.grpc_helpers import Greeter, GrpcServer, channel, h2_router_yaml, unary

    async def go() -> None:
        g = Greeter("main")
        srv = GrpcServer(g)
        rt = await start_proxy(h2_router_yaml(f"/svc/hello.Greeter => /$/inet/127.0.0.1/{srv.port}"))
        ch = channel(proxy_port(rt))

        def call() -> bytes:
            return bytes(unary(ch, "/hello.Greeter/SayHello")(b"x", metadata=[("traceparent", TP)], timeout=10))

        assert await asyncio.get_running_loop().run_in_executor(None, call) == b"main:x"
        md = g.seen_metadata[0]
        assert md["traceparent"].startswith(f"00-{TRACE_HEX}-") and md["traceparent"] != TP
        assert md["l5d-reqid"] == TRACE_HEX[16:]
        ch.close()
        await rt.drain()
        srv.stop()

    run(go())


def test_trace_propagator_writes_its_format_on_every_request(run) -> None:
    async def go() -> None:
        web = await Backend("web").start()
        rt = await start_proxy(one_hop_yaml(web.port, "  []\n", "  tracePropagator: {kind: io.l5d.zipkin}\n"))
        c = await Client.connect(proxy_port(rt))
        assert (await c.request("GET", "/", {"host": "web"})).status == 200  # nothing inbound
        assert (await c.request("GET", "/", {"host": "web", "traceparent": TP})).status == 200
        await c.close()
        plain, w3c = web.seen
        assert plain.header("x-b3-traceid") == plain.header("l5d-reqid")  # one 64-bit trace, both formats
        assert plain.header("x-b3-spanid") is not None and plain.header("traceparent") is None
        assert w3c.header("x-b3-traceid") == TRACE_HEX and w3c.header("traceparent").startswith(f"00-{TRACE_HEX}-")  # type: ignore[union-attr]
        await rt.drain()
        await web.close()

    run(go())


def test_a_reload_keeps_an_unchanged_access_log_and_reopens_a_changed_one(run, tmp_path) -> None:
    from config import load_text
    from proxy.telemetry.observe import Observability

    async def go() -> None:
        obs = Observability()
        loop = asyncio.get_running_loop()

        def cfg(path: str, fmt: str = "combined") -> Any:
            return load_text(f"routers:\n- protocol: http\n  label: web\n  httpAccessLog: {path}\n"
                             f"  httpAccessLogFormat: {fmt}\n  servers: [{{port: 0}}]\n")  # fmt: skip

        def ended(log: Any, status: int) -> None:  # a request on a snapshot that had `log` ends
            rec = (time.perf_counter(), "10.0.0.1", b"GET", b"/x", b"1.1", [(b"user-agent", b"ua")])
            log.add(rec, status, 0, b"/svc/web", b"-", time.perf_counter(), None)

        await obs.apply(cfg(str(tmp_path / "a.log")), loop)
        first = obs.access_log("web")
        await obs.apply(cfg(str(tmp_path / "a.log")), loop)
        assert obs.access_log("web") is first
        assert first is not None
        ended(first, 200)
        await obs.apply(cfg(str(tmp_path / "a.log"), "json"), loop)
        second = obs.access_log("web")
        assert second is not None and second is not first and second.json
        ended(first, 201)  # in flight across the reload: its line goes to the log that replaced it
        ended(second, 202)
        await obs.apply(load_text("routers:\n- protocol: http\n  label: web\n  servers: [{port: 0}]\n"), loop)
        assert obs.access_log("web") is None
        ended(second, 203)  # its router's log is gone: dropped and counted, the request not failed
        assert second.dropped == 1
        await obs.close()
        combined, *rest = (tmp_path / "a.log").read_text().splitlines()
        assert '"GET /x HTTP/1.1" 200 0 "-" "ua" "/svc/web" "-"' in combined
        assert [json.loads(line)["status"] for line in rest] == [201, 202]

    run(go())
