"""A recording trace collector for tests: a real HTTP server on 127.0.0.1 (aiohttp) that
accepts OTLP/HTTP JSON at /v1/traces and Zipkin v2 JSON at /api/v2/spans and records
what it received. `hold()` makes it wait before answering (a slow collector)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web


class Collector:
    def __init__(self) -> None:
        self.posts: list[tuple[str, str, Any]] = []  # (path, content type, JSON body)
        self.received = asyncio.Event()  # set at every POST
        self._release: asyncio.Event | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._post)
        app.router.add_post("/api/v2/spans", self._post)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    def hold(self) -> None:
        self._release = asyncio.Event()

    def release(self) -> None:
        if self._release is not None:
            self._release.set()

    async def _post(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.posts.append((request.path, request.content_type, body))
        self.received.set()
        if self._release is not None:
            await self._release.wait()
        return web.Response(status=200 if request.path == "/v1/traces" else 202, text="{}" if request.path == "/v1/traces" else "")

    def otlp_spans(self) -> list[dict[str, Any]]:
        return [s for path, _, b in self.posts if path == "/v1/traces"
                for rs in b["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]  # fmt: skip

    def zipkin_spans(self) -> list[dict[str, Any]]:
        return [s for path, _, b in self.posts if path == "/api/v2/spans" for s in b]

    async def close(self) -> None:
        self.release()
        if self.runner is not None:
            await self.runner.cleanup()
