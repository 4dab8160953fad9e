"""The Kubernetes API as the proxy uses it: a small client on aiohttp, and the
list-then-watch loop (`Reflector`) behind the io.l5d.k8s namer, the transformers, the
route watcher and the dtab store.

Where the API is: `host`/`port` over plain HTTP (what `kubectl proxy` serves, Linkerd's
shape), or in-cluster: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` with
the service account's CA and bearer token. The token file is re-read when it changes
(the kubelet rotates projected tokens by swapping a symlink) and once more after a 401.

`Reflector` keeps a local copy of a collection the way client-go's reflector does:
list (paged with `limit`/`continue`), then watch from the list's `resourceVersion` with
`allowWatchBookmarks`; a watch that ends is resumed from the last version seen (a
bookmark moves it forward without an object); `410 Gone` (an HTTP status or an `ERROR`
event carrying a Status) means the version was compacted away, so it lists again and
the consumer diffs; a dropped connection or an error is retried with jittered
exponential backoff (100 ms doubling to 10 s, Linkerd's 10 s cap). Nothing here polls.

Why not kubernetes_asyncio or lightkube (both were tried): neither library's watch
helper has these semantics (kubernetes_asyncio retries a 410 once with the same stale
version and then raises; lightkube resumes after a 410 from "now" without listing, so
deletions in the gap are lost, and cannot ask for bookmarks), so the loop is ours
either way; what would remain is URL building and JSON. kubernetes_asyncio costs 36 MiB
of RSS per process at import (the proxy itself is 41 MiB) and lightkube brings a second
HTTP stack (httpx) next to the aiohttp we already run. A few requests on aiohttp are
less code than adapting either.

Owns: HTTP to the API server, tokens, backoff. Must not: touch the data path; consumer
callbacks run synchronously on the loop and must not block.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Items per list page: the API server's own pages are 500 (kubectl's default chunk).
LIST_PAGE: Final = 500
#: A watch asks the server to end it after 5-10 minutes (client-go's spread), so a
#: connection that died without a FIN is noticed; reading waits that long plus a margin.
WATCH_TIMEOUT_S: Final = (300, 600)
WATCH_READ_MARGIN_S: Final = 30.0
REQUEST_TIMEOUT_S: Final = 30.0
#: etcd refuses objects above 1.5 MiB; an event line larger than this is not Kubernetes.
MAX_EVENT_BYTES: Final = 8 * 1024 * 1024
BACKOFF_BASE_S: Final = 0.1
BACKOFF_CAP_S: Final = 10.0
#: A resource type the server does not serve (a CRD not installed) is asked for again
#: this rarely, so installing Istio or the Gateway API later is picked up.
MISSING_RETRY_S: Final = 30.0
USER_AGENT: Final = "dtabproxy/0.1"


class ApiError(Exception):
    """An answer other than success from the API server (or a transport failure
    translated once, where it entered)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message

    @classmethod
    def from_body(cls, status: int, body: bytes) -> ApiError:
        reason, message = "", body[:200].decode("utf-8", "replace").strip()
        try:
            doc = json.loads(body)
            if isinstance(doc, dict) and doc.get("kind") == "Status":
                reason = str(doc.get("reason") or "")
                message = str(doc.get("message") or "")
        except ValueError:
            pass
        kind = {404: NotFound, 409: Conflict, 410: Gone}.get(status, ApiError)
        return kind(status, reason or _REASONS.get(status, "Error"), message)

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> ApiError:
        code = int(status.get("code") or 500)
        kind = {404: NotFound, 409: Conflict, 410: Gone}.get(code, ApiError)
        return kind(code, str(status.get("reason") or _REASONS.get(code, "Error")), str(status.get("message") or ""))


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Gone(ApiError):
    """The resourceVersion asked for is older than the server keeps: list again."""


_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            410: "Gone", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}  # fmt: skip


class ApiConfigError(ValueError):
    """The API cannot be reached as configured (in-cluster without the environment)."""


@dataclass(frozen=True, slots=True)
class ApiTarget:
    """A resolved API server: its base URL and, in-cluster, the token and CA files."""

    base_url: str
    token_file: str | None = None
    ca_file: str | None = None

    def show(self) -> str:
        return self.base_url + (" (in-cluster)" if self.token_file else "")


def api_target(host: str | None, port: int | None, *, environ: Mapping[str, str] | None = None,
               sa_dir: str = SERVICE_ACCOUNT_DIR) -> ApiTarget:  # fmt: skip
    """`host`/`port` (plain HTTP, `kubectl proxy`), or with no host the in-cluster API
    from `KUBERNETES_SERVICE_HOST`/`_PORT` and the service account directory."""
    if host is not None:
        return ApiTarget(f"http://{_bracket(host)}:{port or 8001}")
    env = os.environ if environ is None else environ
    h, p = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not h or not p:
        raise ApiConfigError(
            "no 'host' is configured, so the API is reached in-cluster, but KUBERNETES_SERVICE_HOST and "
            "KUBERNETES_SERVICE_PORT are not set (not running in a pod? set host/port, e.g. for `kubectl proxy`)"
        )
    token, ca = os.path.join(sa_dir, "token"), os.path.join(sa_dir, "ca.crt")
    for f in (token, ca):
        if not os.path.isfile(f):
            raise ApiConfigError(f"in-cluster API access needs the service account's {f}, which does not exist "
                                 "(is automountServiceAccountToken off?)")  # fmt: skip
    return ApiTarget(f"https://{_bracket(h)}:{p}", token_file=token, ca_file=ca)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _Token:
    """The bearer token file, re-read when its identity or size changes."""

    __slots__ = ("path", "_sig", "_header")

    def __init__(self, path: str) -> None:
        self.path = path
        self._sig: tuple[int, int, int] | None = None
        self._header = ""

    def header(self, force: bool = False) -> str:
        try:
            st = os.stat(self.path)  # follows the kubelet's ..data symlink
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            if force or sig != self._sig:
                with open(self.path, encoding="utf-8") as f:
                    self._header = "Bearer " + f.read().strip()
                self._sig = sig
        except OSError as exc:
            if not self._header:
                raise ApiError(401, "Unauthorized", f"cannot read the token {self.path}: {exc.strerror}") from None
        return self._header


class K8sApi:
    """Requests to one API server. The aiohttp session is made on first use (it needs
    the running loop); `close()` ends it."""

    __slots__ = ("target", "_session", "_token", "_ssl")

    def __init__(self, target: ApiTarget) -> None:
        self.target = target
        self._session: aiohttp.ClientSession | None = None
        self._token = _Token(target.token_file) if target.token_file else None
        self._ssl: ssl.SSLContext | bool = True
        if target.ca_file:
            self._ssl = ssl.create_default_context(cafile=target.ca_file)

    def __repr__(self) -> str:
        return f"<K8sApi {self.target.show()}>"

    def _client(self) -> aiohttp.ClientSession:
        s = self._session
        if s is None or s.closed:
            # No connection limit: every watch holds a connection for minutes, and their
            # number is fixed by the config (a limit would make the last ones wait forever).
            conn = aiohttp.TCPConnector(limit=0, ssl=self._ssl if self.target.base_url.startswith("https") else False)
            s = self._session = aiohttp.ClientSession(
                self.target.base_url, connector=conn, headers={"User-Agent": USER_AGENT, "Accept": "application/json"}
            )
        return s

    def _headers(self, force_token: bool = False) -> dict[str, str]:
        if self._token is None:
            return {}
        return {"Authorization": self._token.header(force_token)}

    async def close(self) -> None:
        s, self._session = self._session, None
        if s is not None:
            await s.close()

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None) -> Any:  # fmt: skip
        """One request; the decoded JSON answer. Raises `ApiError` (`NotFound`,
        `Conflict`, `Gone`) for a failure status, `aiohttp.ClientError`/`OSError`/
        `TimeoutError` when the server cannot be reached."""
        data = None if body is None else json.dumps(body).encode()
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        for attempt in (0, 1):
            headers = self._headers(force_token=attempt == 1)
            if data is not None:
                headers["Content-Type"] = "application/json"
            async with self._client().request(method, path, params=params, data=data, headers=headers,
                                              timeout=timeout) as resp:  # fmt: skip
                raw = await resp.read()
                if resp.status == 401 and attempt == 0 and self._token is not None:
                    continue  # the token may have rotated: read it again, once
                if resp.status >= 400:
                    raise ApiError.from_body(resp.status, raw)
                try:
                    return json.loads(raw)
                except ValueError:
                    raise ApiError(resp.status, "BadResponse", f"not JSON: {raw[:100]!r}") from None
        raise AssertionError("unreachable")

    async def list_items(self, path: str, params: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
        """Every item of a collection, page by page, and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        q = dict(params or {})
        q["limit"] = str(LIST_PAGE)
        while True:
            doc = await self.request("GET", path, params=q)
            page = doc.get("items") or []
            items.extend(i for i in page if isinstance(i, dict))
            meta = doc.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                return items, str(meta.get("resourceVersion") or "")
            q["continue"] = cont

    def watch(self, path: str, params: Mapping[str, str] | None, resource_version: str,
              *, timeout_s: int | None = None) -> Watch:  # fmt: skip
        """A watch from `resource_version`: `async with api.watch(...) as w: async for
        type, obj in w`. Entering raises `Gone` for a compacted version."""
        q = dict(params or {})
        q["watch"] = "true"
        q["allowWatchBookmarks"] = "true"
        if resource_version:
            q["resourceVersion"] = resource_version
        t = timeout_s if timeout_s is not None else random.randint(*WATCH_TIMEOUT_S)
        q["timeoutSeconds"] = str(t)
        return Watch(self, path, q, t + WATCH_READ_MARGIN_S)

    async def group_versions(self, group: str) -> list[str] | None:
        """The versions a group serves, preferred first; None when the group is not
        served (its CRDs are not installed)."""
        try:
            doc = await self.request("GET", f"/apis/{group}")
        except NotFound:
            return None
        versions = [str(v.get("version")) for v in doc.get("versions") or () if isinstance(v, dict)]
        preferred = str((doc.get("preferredVersion") or {}).get("version") or "")
        if preferred in versions:
            versions.remove(preferred)
            versions.insert(0, preferred)
        return versions

    async def serves(self, group_version: str, plural: str) -> bool:
        """Whether `/apis/<group_version>` lists the resource `plural`."""
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        try:
            doc = await self.request("GET", base)
        except NotFound:
            return False
        return any(isinstance(r, dict) and r.get("name") == plural for r in doc.get("resources") or ())


class Watch:
    """One watch request: entering sends it, iterating yields `(type, object)` until
    the server ends the stream. A `BOOKMARK` is yielded too (its object has only
    `metadata.resourceVersion`); an `ERROR` event raises its Status as `ApiError`."""

    __slots__ = ("_api", "_path", "_params", "_read_s", "_resp")

    def __init__(self, api: K8sApi, path: str, params: dict[str, str], read_s: float) -> None:
        self._api = api
        self._path = path
        self._params = params
        self._read_s = read_s
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> Watch:
        timeout = aiohttp.ClientTimeout(total=None, connect=REQUEST_TIMEOUT_S, sock_read=self._read_s)
        for attempt in (0, 1):
            resp = await self._api._client().get(self._path, params=self._params,
                                                 headers=self._api._headers(attempt == 1), timeout=timeout)  # fmt: skip
            if resp.status == 200:
                self._resp = resp
                return self
            raw = await resp.read()
            resp.release()
            if resp.status == 401 and attempt == 0 and self._api._token is not None:
                continue
            raise ApiError.from_body(resp.status, raw)
        raise AssertionError("unreachable")

    async def __aexit__(self, *exc: object) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()  # not release(): an unread stream cannot go back to the pool

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self._events()

    async def _events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        assert self._resp is not None
        buf = bytearray()
        async for chunk in self._resp.content.iter_any():
            buf += chunk
            start = 0
            while (end := buf.find(b"\n", start)) >= 0:
                line = bytes(buf[start:end]).strip()
                start = end + 1
                if line:
                    yield _event(line)
            del buf[:start]
            if len(buf) > MAX_EVENT_BYTES:
                raise ApiError(500, "BadResponse", f"a watch event longer than {MAX_EVENT_BYTES} bytes")
        if buf.strip():
            yield _event(bytes(buf).strip())


def _event(line: bytes) -> tuple[str, dict[str, Any]]:
    try:
        doc = json.loads(line)
    except ValueError:
        raise ApiError(500, "BadResponse", f"a watch event that is not JSON: {line[:100]!r}") from None
    kind = doc.get("type") if isinstance(doc, dict) else None
    obj = doc.get("object") if isinstance(doc, dict) else None
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise ApiError(500, "BadResponse", f"a watch event without type and object: {line[:100]!r}")
    if kind == "ERROR":
        raise ApiError.from_status(obj)
    return kind, obj


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def collection_path(group_version: str, plural: str, namespace: str | None = None) -> str:
    """`/api/v1/namespaces/ns/services`, `/apis/discovery.k8s.io/v1/endpointslices`."""
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    if namespace is not None:
        return f"{base}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{base}/{plural}"


class Backoff:
    """Jittered exponential backoff: 100 ms doubling to 10 s, each wait drawn from
    [d/2, d] so many proxies restarting together do not call in step."""

    __slots__ = ("base_s", "cap_s", "failures")

    def __init__(self, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def next_s(self) -> float:
        d = min(self.cap_s, self.base_s * (2 ** min(self.failures, 30)))
        self.failures += 1
        return random.uniform(d / 2, d)

    def reset(self) -> None:
        self.failures = 0


class Reflector:
    """Keeps a consumer in step with one collection: `on_list(items)` after every
    (re)list, with the complete current state, and `on_event(type, object)` for each
    ADDED, MODIFIED or DELETED after it. Both run on the loop, synchronously.

    `synced` is set after the first list. `on_missing()` is called (once per
    outage) when the server does not serve the collection at all (404 on the list)."""

    __slots__ = (
        "api", "path", "params", "what", "on_list", "on_event", "on_missing", "synced", "lists", "watches",
        "relists", "errors", "events", "bookmarks", "resource_version", "last_error", "_task", "_backoff",
        "watch_timeout_s", "missing_retry_s", "_moved",
    )  # fmt: skip

    def __init__(self, api: K8sApi, path: str, *, what: str, on_list: Callable[[list[dict[str, Any]]], None],
                 on_event: Callable[[str, dict[str, Any]], None], params: Mapping[str, str] | None = None,
                 on_missing: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.api = api
        self.path = path
        self.params = dict(params or {})
        self.what = what
        self.on_list = on_list
        self.on_event = on_event
        self.on_missing = on_missing
        self.synced = asyncio.Event()
        self.lists = 0  # lists made (the first, and one per 410 or missing resource)
        self.watches = 0  # watch requests made
        self.relists = 0  # lists forced by 410 Gone
        self.errors = 0
        self.events = 0
        self.bookmarks = 0
        self.resource_version = ""
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff()
        self.watch_timeout_s: int | None = None  # tests shorten it; None: 5-10 minutes
        self.missing_retry_s = MISSING_RETRY_S
        self._moved = asyncio.Event()  # set whenever resource_version changes

    def __repr__(self) -> str:
        return f"<Reflector {self.what} rv={self.resource_version!r}>"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"k8s watch {self.what}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def _run(self) -> None:
        missing = False
        while True:
            try:
                if not self.resource_version:
                    items, rv = await self.api.list_items(self.path, self.params)
                    self.lists += 1
                    if missing:
                        missing = False
                        log.info("k8s: %s is served now", self.what)
                    self._deliver_list(items)
                    self.resource_version = rv
                    self.synced.set()
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Gone:
                # Compacted away: only a full list tells what was deleted meanwhile.
                self.relists += 1
                log.info("k8s: watch of %s: resourceVersion %s is gone (410); listing again",
                         self.what, self.resource_version)  # fmt: skip
                self.resource_version = ""
                if self._backoff.failures:  # 410 again before any watch got through
                    await asyncio.sleep(self._backoff.next_s())
                else:
                    self._backoff.failures = 1
            except NotFound as exc:
                self.resource_version = ""
                if not missing:
                    missing = True
                    log.warning("k8s: %s is not served by the API (%s); asking again every %.0fs",
                                self.what, exc, self.missing_retry_s)  # fmt: skip
                    if self.on_missing is not None:
                        self._call(self.on_missing)
                self.synced.set()  # known: nothing there
                await asyncio.sleep(self.missing_retry_s)
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                # A dropped or refused watch resumes from the last version seen.
                self.errors += 1
                text = _describe(exc)
                if text != self.last_error:
                    log.warning("k8s: watch of %s failed: %s; retrying with backoff", self.what, text)
                self.last_error = text
                await asyncio.sleep(self._backoff.next_s())

    async def _watch(self) -> None:
        """Watch from the last version seen until the server ends the stream."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        delivered = False
        self.watches += 1
        async with self.api.watch(self.path, self.params, self.resource_version, timeout_s=self.watch_timeout_s) as w:
            if self.last_error is not None:
                log.info("k8s: watch of %s resumed", self.what)
                self.last_error = None
            self._backoff.reset()
            async for kind, obj in w:
                delivered = True
                if kind == "BOOKMARK":
                    self.bookmarks += 1
                elif kind in ("ADDED", "MODIFIED", "DELETED"):
                    self.events += 1
                    self._call(self.on_event, kind, obj)
                rv = resource_version(obj)
                if rv:
                    self.resource_version = rv
                    self._moved.set()
        if not delivered and loop.time() - started < 1.0:
            # A server that ends every watch at once must not make us spin.
            await asyncio.sleep(self._backoff.next_s())

    async def wait_version(self, rv: str) -> None:
        """Until the reflector has seen version `rv` (an event or a bookmark)."""
        while self.resource_version != rv:
            self._moved.clear()
            await self._moved.wait()

    def _deliver_list(self, items: list[dict[str, Any]]) -> None:
        self._call(self.on_list, items)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # our bug in a consumer: the watch goes on
            log.error("k8s: consumer of %s failed", self.what, exc_info=True)

    def stats(self) -> dict[str, Any]:
        return {
            "synced": self.synced.is_set(), "resourceVersion": self.resource_version, "lists": self.lists,
            "relists": self.relists, "watches": self.watches, "events": self.events, "bookmarks": self.bookmarks,
            "errors": self.errors, "lastError": self.last_error,
        }  # fmt: skip


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ApiError) else str(exc)
