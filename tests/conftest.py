"""Shared fixtures: event loops (asyncio and uvloop), and a guard that fails a test if
the loop's exception handler was called during it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still runs
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def event_loop(loop_kind: str) -> Iterator[asyncio.AbstractEventLoop]:
    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
    assert not errors, f"the loop's exception handler was called: {errors}"


@pytest.fixture
def run(event_loop: asyncio.AbstractEventLoop) -> Any:
    """`run(coro)`: run a coroutine to completion on the test's loop, bounded in time."""

    def _run(coro: Any, timeout: float = 30.0) -> Any:
        return event_loop.run_until_complete(asyncio.wait_for(coro, timeout))

    return _run
