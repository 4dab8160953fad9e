"""The io.l5d.fs namer against real temporary directories, on asyncio and uvloop.

Changes are awaited through the namer's own callbacks (an asyncio.Event set by a
subscriber), with a generous overall timeout only as a failure guard."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
import uvloop

from dtab import NEG, Bound, Leaf, Path, Prefix, bind, read_dtab
from proxy.discovery import EndpointSet
from proxy.discovery.fs import FsNamer, parse_endpoints

GUARD_S = 5.0  # failure guard only: a change normally lands within one 20 ms poll
POLL_S = 0.02


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine on a fresh loop of the parametrized kind; fail the test if the
    loop's exception handler was called."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop
    errors: list[dict] = []
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.get_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        yield runner.run
    assert errors == []


def write(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def change_waiter(endpoints: EndpointSet):
    event = asyncio.Event()
    endpoints.subscribe(lambda _: event.set())
    return event


async def wait(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), GUARD_S)


def test_initial_scan_is_ready_when_start_returns(run, tmp_path):
    write(tmp_path / "web", "127.0.0.1 8080\n10.0.0.2 8081\n")
    write(tmp_path / "db", "# primary\n\n  10.0.0.9   5432  # inline comment\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            assert namer.names() == [b"db", b"web"]
            assert namer.version == 1
            web = namer.endpoints(b"web")
            assert web is not None and web.state == "bound"
            assert web.addrs == (("127.0.0.1", 8080), ("10.0.0.2", 8081))
            assert namer.endpoints(b"db").addrs == (("10.0.0.9", 5432),)
        finally:
            await namer.stop()

    run(main())


def test_lookup_shapes(run, tmp_path):
    write(tmp_path / "web", "127.0.0.1 8080\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            tree = namer.lookup(Path.of("web", "api", "v1"))
            assert isinstance(tree, Leaf) and isinstance(tree.value, Bound)
            bound = tree.value
            assert bound.id == Path.of("#", "io.l5d.fs", "web")
            assert bound.residual == Path.of("api", "v1")
            assert bound.addr is namer.endpoints(b"web")
            assert bound.addr.to_json() == {
                "type": "bound",
                "addrs": [{"ip": "127.0.0.1", "port": 8080, "meta": {}}],
                "meta": {},
            }
            assert namer.lookup(Path.of("web")).value.residual == Path.EMPTY
            assert namer.lookup(Path.of("missing")) is NEG
            assert namer.lookup(Path.EMPTY) is NEG
            # the same live set every time, so a cached bound tree sees changes
            assert namer.lookup(Path.of("web", "x")).value.addr is bound.addr
        finally:
            await namer.stop()

    run(main())


def test_binds_through_a_dtab_with_a_custom_prefix(run, tmp_path):
    write(tmp_path / "world-v1", "127.0.0.1 7778\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("disco"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            assert namer.bind_prefix == Prefix((b"#", b"disco"))
            dtab = read_dtab("/svc => /#/disco;")
            tree = bind(dtab, Path.of("svc", "world-v1", "hi"), namers=[(namer.bind_prefix, namer)])
            assert tree == Leaf(Bound(Path.of("#", "disco", "world-v1"), Path.of("hi")))
            assert tree.value.addr.addrs == (("127.0.0.1", 7778),)
        finally:
            await namer.stop()

    run(main())


def test_edit_changes_addresses_on_the_same_set(run, tmp_path):
    write(tmp_path / "web", "127.0.0.1 8080\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            web = namer.lookup(Path.of("web")).value.addr
            before = web.version
            changed = change_waiter(web)
            # Same size as before, likely within the same mtime tick: caught by content.
            write(tmp_path / "web", "127.0.0.1 8081\n")
            await wait(changed)
            assert namer.lookup(Path.of("web")).value.addr is web
            assert web.addrs == (("127.0.0.1", 8081),)
            assert web.version == before + 1
            assert namer.version == 1  # names did not change

            changed.clear()
            write(tmp_path / "web", "127.0.0.1 8081\n127.0.0.2 8082\n")
            await wait(changed)
            assert web.addrs == (("127.0.0.1", 8081), ("127.0.0.2", 8082))
        finally:
            await namer.stop()

    run(main())


def test_atomic_replace_is_seen(run, tmp_path):
    write(tmp_path / "web", "127.0.0.1 8080\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            web = namer.endpoints(b"web")
            changed = change_waiter(web)
            write(tmp_path / ".web.tmp", "127.0.0.3 9090\n")  # hidden: never a name
            os.replace(tmp_path / ".web.tmp", tmp_path / "web")
            await wait(changed)
            assert web.addrs == (("127.0.0.3", 9090),)
            assert namer.names() == [b"web"]
        finally:
            await namer.stop()

    run(main())


def test_create_and_remove_bump_version(run, tmp_path):
    write(tmp_path / "web", "127.0.0.1 8080\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            seen: list[int] = []
            names_changed = asyncio.Event()

            def on_names(n: FsNamer) -> None:
                seen.append(n.version)
                names_changed.set()

            namer.subscribe_names(on_names)
            start_version = namer.version

            write(tmp_path / "api", "10.1.1.1 80\n")
            await wait(names_changed)
            assert namer.version == start_version + 1
            assert seen == [namer.version]
            assert namer.lookup(Path.of("api")).value.addr.addrs == (("10.1.1.1", 80),)

            names_changed.clear()
            web = namer.endpoints(b"web")
            os.remove(tmp_path / "web")
            await wait(names_changed)
            assert namer.version == start_version + 2
            assert namer.lookup(Path.of("web")) is NEG
            assert web.state == "neg" and web.addrs == ()
            assert web.to_json() == {"type": "neg"}

            # recreated: the same set object comes back to life
            names_changed.clear()
            write(tmp_path / "web", "127.0.0.1 9000\n")
            await wait(names_changed)
            assert namer.lookup(Path.of("web")).value.addr is web
            assert web.state == "bound" and web.addrs == (("127.0.0.1", 9000),)
        finally:
            await namer.stop()

    run(main())


def test_bad_line_keeps_previous_addresses_and_warns_once(run, tmp_path, caplog):
    write(tmp_path / "web", "127.0.0.1 8080\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            web = namer.endpoints(b"web")
            caplog.set_level(logging.WARNING, logger="proxy.discovery.fs")
            write(tmp_path / "web", "127.0.0.1 8080\n127.0.0.1 http\n")
            # the bad content is noticed without a change to the set; a good write
            # after it is the event we can wait on, proving the bad one was skipped
            names = asyncio.Event()
            namer.subscribe_names(lambda _: names.set())
            write(tmp_path / "marker", "127.0.0.1 1\n")
            await wait(names)
            assert web.addrs == (("127.0.0.1", 8080),) and web.state == "bound"
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1
            message = warnings[0].getMessage()
            assert os.path.join(str(tmp_path), "web") in message and "line 2" in message
            assert "'http'" in message

            # more polls of the same bad content do not warn again
            names.clear()
            write(tmp_path / "marker2", "127.0.0.1 2\n")
            await wait(names)
            assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

            changed = change_waiter(web)
            write(tmp_path / "web", "127.0.0.1 8090\n")
            await wait(changed)
            assert web.addrs == (("127.0.0.1", 8090),)
        finally:
            await namer.stop()

    run(main())


def test_file_that_never_parsed_is_failed(run, tmp_path):
    write(tmp_path / "web", "not-a-line\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            tree = namer.lookup(Path.of("web"))
            endpoints = tree.value.addr
            assert endpoints.state == "failed"
            as_json = endpoints.to_json()
            assert as_json["type"] == "failed" and "line 1" in as_json["cause"]
            changed = change_waiter(endpoints)
            write(tmp_path / "web", "127.0.0.1 80\n")
            await wait(changed)
            assert endpoints.state == "bound" and endpoints.addrs == (("127.0.0.1", 80),)
        finally:
            await namer.stop()

    run(main())


def test_empty_file_is_bound_with_no_addresses(run, tmp_path):
    write(tmp_path / "web", "# nothing yet\n\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            endpoints = namer.lookup(Path.of("web")).value.addr
            assert endpoints.state == "bound" and endpoints.addrs == ()
            assert endpoints.to_json() == {"type": "bound", "addrs": [], "meta": {}}
        finally:
            await namer.stop()

    run(main())


def test_hidden_backup_and_directories_are_not_names(run, tmp_path):
    write(tmp_path / ".web.swp", "127.0.0.1 1\n")
    write(tmp_path / "web~", "127.0.0.1 1\n")
    (tmp_path / "subdir").mkdir()
    write(tmp_path / "web", "127.0.0.1 2\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            assert namer.names() == [b"web"]
            assert namer.lookup(Path.of("subdir")) is NEG
        finally:
            await namer.stop()

    run(main())


def test_symlinked_files_are_followed(run, tmp_path):
    # Kubernetes ConfigMap volumes: name -> ..data/name, ..data -> a timestamped dir.
    data1 = tmp_path / "..2024_1"
    data1.mkdir()
    write(data1 / "web", "10.0.0.1 80\n")
    os.symlink("..2024_1", tmp_path / "..data")
    os.symlink("..data/web", tmp_path / "web")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            web = namer.endpoints(b"web")
            assert namer.names() == [b"web"] and web.addrs == (("10.0.0.1", 80),)
            changed = change_waiter(web)
            data2 = tmp_path / "..2024_2"
            data2.mkdir()
            write(data2 / "web", "10.0.0.2 80\n")
            os.symlink("..2024_2", tmp_path / "..data_tmp")
            os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
            await wait(changed)
            assert web.addrs == (("10.0.0.2", 80),)
        finally:
            await namer.stop()

    run(main())


def test_stop_ends_polling_and_start_is_idempotent(run, tmp_path):
    write(tmp_path / "web", "127.0.0.1 80\n")

    async def main():
        namer = FsNamer(tmp_path, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        await namer.start()
        tasks_before = {t for t in asyncio.all_tasks() if t.get_name().startswith("fs-namer")}
        assert len(tasks_before) == 1
        await namer.stop()
        await namer.stop()
        assert all(t.done() for t in tasks_before)

    run(main())


def test_missing_directory_at_start_then_appears(run, tmp_path):
    root = tmp_path / "disco"

    async def main():
        namer = FsNamer(root, Path.of("io.l5d.fs"), poll_interval_s=POLL_S)
        await namer.start()
        try:
            assert namer.names() == []
            names = asyncio.Event()
            namer.subscribe_names(lambda _: names.set())
            root.mkdir()
            write(root / "web", "127.0.0.1 80\n")
            await wait(names)
            assert namer.names() == [b"web"]
        finally:
            await namer.stop()

    run(main())


def test_parse_endpoints_formats():
    data = b"# c\n\n10.0.0.1 80\n  host-a.example   8080 # x\n::1 9000\n[fe80::1] 443\n\t\n10.0.0.1 80\n"
    assert parse_endpoints(data) == (
        ("10.0.0.1", 80),
        ("host-a.example", 8080),
        ("::1", 9000),
        ("fe80::1", 443),
        ("10.0.0.1", 80),  # parse keeps duplicates; EndpointSet.update drops them
    )
    assert EndpointSet(parse_endpoints(data)).addrs == (
        ("10.0.0.1", 80),
        ("host-a.example", 8080),
        ("::1", 9000),
        ("fe80::1", 443),
    )


@pytest.mark.parametrize(
    ("data", "line", "fragment"),
    [
        (b"10.0.0.1\n", 1, "expected 'host port'"),
        (b"\n10.0.0.1 80 90\n", 2, "expected 'host port'"),
        (b"10.0.0.1 0\n", 1, "bad port"),
        (b"10.0.0.1 65536\n", 1, "bad port"),
        (b"10.0.0.1 -1\n", 1, "bad port"),
        (b"h\xc3\xa9 80\n", 1, "not ASCII"),
        (b"a/b 80\n", 1, "bad host"),
    ],
)
def test_parse_endpoints_errors(data, line, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        parse_endpoints(data)
    assert info.value.line == line


def test_endpoint_set_subscribe_and_states():
    s = EndpointSet()
    assert s.state == "pending" and s.to_json() == {"type": "pending"}
    calls: list[tuple[str, tuple]] = []
    unsubscribe = s.subscribe(lambda e: calls.append((e.state, e.addrs)))
    assert s.update([("10.0.0.1", 80)]) is True
    assert s.update([("10.0.0.1", 80)]) is False  # no change, no call
    assert s.set_failed("boom") is True
    assert s.to_json() == {"type": "failed", "cause": "boom"}
    unsubscribe()
    s.set_neg()
    assert calls == [("bound", (("10.0.0.1", 80),)), ("failed", ())]
    assert s.version == 3


def test_endpoint_set_broken_subscriber_does_not_starve_others(caplog):
    s = EndpointSet([])
    got: list[int] = []

    def broken(_):
        raise RuntimeError("bug")

    s.subscribe(broken)
    s.subscribe(lambda e: got.append(e.version))
    with caplog.at_level(logging.ERROR, logger="proxy.discovery.endpoints"):
        s.update([("10.0.0.1", 80)])
    assert got == [1]
    assert any("subscriber" in r.getMessage() for r in caplog.records)
