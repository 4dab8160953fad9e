"""A small Chrome DevTools Protocol driver for tests: headless Chromium over one
websocket (aiohttp's client), one page, evaluate / type / click / screenshot.

No new dependencies: the protocol is JSON over a websocket. Waiting is done inside the
page (a promise that resolves when a condition holds), never with sleeps here.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import tempfile
from typing import Any

import aiohttp

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env and os.path.exists(env):
        return env
    for c in CHROMIUM_CANDIDATES:
        if os.path.exists(c):
            return c
    return shutil.which("chromium")


class CdpError(Exception):
    pass


class Browser:
    """A headless Chromium and one page target, attached with a flat session."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.page_session: str | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._profile = tempfile.mkdtemp(prefix="dtabproxy-chromium-")
        self.console: list[str] = []
        self.exceptions: list[str] = []

    async def start(self, binary: str, width: int = 1400, height: int = 1000) -> Browser:
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--remote-debugging-port=0", f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        url = None
        while url is None:
            line = await self.proc.stderr.readline()
            if not line:
                raise CdpError("chromium exited before it listened for DevTools")
            m = _LISTENING.search(line)
            if m:
                url = m.group(1).decode()
        self._stderr_task = asyncio.ensure_future(self._drain_stderr())  # a full pipe would block it
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, max_msg_size=64 * 1024 * 1024)
        self._reader = asyncio.ensure_future(self._read())
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        self.page_session = attached["sessionId"]
        await self.page("Page.enable")
        await self.page("Runtime.enable")
        return self

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(CdpError(str(data["error"])))
                    else:
                        fut.set_result(data.get("result", {}))
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(json.dumps(data["params"].get("exceptionDetails", {}))[:2000])
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(CdpError("the DevTools connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        assert self.ws is not None
        i = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        return await fut

    async def page(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.send(method, params, self.page_session)

    # -- conveniences ------------------------------------------------------------------------

    async def goto(self, url: str) -> None:
        await self.page("Page.navigate", {"url": url})
        await self.wait("document.readyState === 'complete' && window.__delegator && window.__delegator.ready === true")

    async def eval(self, expression: str) -> Any:
        res = await self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise CdpError(json.dumps(res["exceptionDetails"])[:2000])
        return res["result"].get("value")

    async def wait(self, condition: str, timeout_ms: int = 10_000) -> Any:
        """Resolve when the JS `condition` is truthy (checked every animation frame)."""
        js = (
            "new Promise((resolve, reject) => { const t0 = performance.now(); (function check() {"
            f" let v; try {{ v = ({condition}); }} catch (e) {{ v = false; }}"
            " if (v) return resolve(v);"
            f" if (performance.now() - t0 > {timeout_ms}) return reject(new Error('timed out waiting for: ' + {json.dumps(condition)}));"
            " setTimeout(check, 10); })(); })"
        )
        return await self.eval(js)

    async def texts(self, selector: str) -> list[str]:
        """The text of every element `selector` matches, in document order."""
        return list(await self.eval(f"Array.from(document.querySelectorAll({json.dumps(selector)})).map(e => e.textContent)"))

    async def data(self, selector: str, key: str) -> list[str | None]:
        """`dataset[key]` of every element `selector` matches."""
        js = f"Array.from(document.querySelectorAll({json.dumps(selector)})).map(e => e.dataset[{json.dumps(key)}] ?? null)"
        return list(await self.eval(js))

    async def type_into(self, selector: str, text: str, *, replace: bool = True) -> None:
        """Focus the field and type as a user would (input events fire)."""
        sel = json.dumps(selector)
        await self.eval(f"(() => {{ const e = document.querySelector({sel}); e.focus(); if ({'true' if replace else 'false'}) e.select(); }})()")
        if replace:
            await self.page("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Backspace", "code": "Backspace", "windowsVirtualKeyCode": 8})
            await self.page("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Backspace", "code": "Backspace", "windowsVirtualKeyCode": 8})
        await self.page("Input.insertText", {"text": text})

    async def click(self, selector: str) -> None:
        sel = json.dumps(selector)
        box = await self.eval(
            f"(() => {{ const e = document.querySelector({sel}); e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.page("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    async def screenshot(self, path: str, full_page: bool = True) -> None:
        res = await self.page("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page})
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(res["data"]))

    async def close(self) -> None:
        if self.ws is not None:
            try:
                await self.send("Browser.close")
            except CdpError:
                pass
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._stderr_task is not None:
            await asyncio.gather(self._stderr_task, return_exceptions=True)
        shutil.rmtree(self._profile, ignore_errors=True)
