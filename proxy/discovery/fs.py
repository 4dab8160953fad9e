"""The `io.l5d.fs` namer: service discovery from a directory of files.

Each regular file in the directory is a service named by its file name; each line is
`host port` (blank lines and `#` comments ignored). A dtab reaches the namer under
`/#/<prefix>` (default `/#/io.l5d.fs`), so `/#/io.l5d.fs/web/rest` binds to the file
`web`, residual `/rest`.

The directory is polled (`os.scandir`, by inode, mtime and size) every 250 ms by
default: the standard library has no inotify, and a quarter second keeps a change
well within the one-second budget. `lookup` is synchronous and only reads the
in-memory snapshot. Every name keeps one `EndpointSet` for the namer's lifetime, so
a bound tree cached by a router sees address changes without being rebuilt; the
namer's `version` changes only when names appear or disappear.

Owns: reading and watching the directory. Must not: touch sockets or the router.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from dtab import NEG, Bound, Leaf, NameTree, Path, Prefix

from .endpoints import BOUND, Addr, EndpointSet

if TYPE_CHECKING:
    from config import NamerConfig

log = logging.getLogger(__name__)

NamesCallback = Callable[["FsNamer"], None]

DEFAULT_POLL_INTERVAL_S: Final = 0.25
# A discovery file lists endpoints, a few bytes each; anything this large is a mistake
# (a log or a binary dropped in the directory), refused rather than parsed.
MAX_FILE_BYTES: Final = 1 << 20
# mtime is only as fine as the kernel's coarse clock (a few ms on Linux, 1-2 s on some
# file systems), so two same-size writes within one tick leave the signature unchanged.
# A file modified this recently is re-read and compared by content on every poll, as
# git does for its "racily clean" index entries.
RACY_WINDOW_NS: Final = 2_000_000_000
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})\Z")

Signature = tuple[int, int, int]  # (inode, mtime_ns, size)


class BadLine(ValueError):
    """A line of a discovery file that is not `host port`."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def parse_endpoints(data: bytes) -> tuple[Addr, ...]:
    """`host port` per line; `#` starts a comment; blank lines are skipped. An IPv6
    address may be written bare (`::1 80`) or bracketed (`[::1] 80`)."""
    addrs: list[Addr] = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        line = raw.split(b"#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise BadLine(lineno, f"expected 'host port', got {raw.strip().decode('utf-8', 'replace')!r}")
        host_b, port_b = fields
        try:
            host = host_b.decode("ascii")
        except UnicodeDecodeError:
            raise BadLine(lineno, "the host is not ASCII (write IDNs in their xn-- form)") from None
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not _is_host(host):
            raise BadLine(lineno, f"bad host {host!r}")
        if not port_b.isdigit() or not 1 <= int(port_b) <= 65535:
            raise BadLine(lineno, f"bad port {port_b.decode('utf-8', 'replace')!r} (expected 1-65535)")
        addrs.append((host, int(port_b)))
    return tuple(addrs)


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return _HOSTNAME.match(host) is not None


class _File:
    """What the namer knows about one file: its last signature and content."""

    __slots__ = ("content", "name", "signature")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.signature: Signature | None = None
        self.content: bytes | str | None = None  # str: why it could not be read


class _Scan:
    """One look at the directory: the signature of every file, and the content of
    those that may have changed (an `OSError` message when one could not be read)."""

    __slots__ = ("contents", "signatures")

    def __init__(self) -> None:
        self.signatures: dict[str, Signature] = {}
        self.contents: dict[str, bytes | str] = {}


class FsNamer:
    """`io.l5d.fs`: names are file names under `root_dir`, answered at `/#/<prefix>`.

    `prefix` is the configured prefix without `/#` (`/io.l5d.fs`); a prefix that
    already starts with `#` is taken as the full one."""

    __slots__ = (
        "_dir_missing",
        "_files",
        "_name_subscribers",
        "_names",
        "_sets",
        "_task",
        "bind_prefix",
        "id_prefix",
        "poll_interval_s",
        "root_dir",
        "version",
    )

    def __init__(self, root_dir: str | os.PathLike[str], prefix: Path,
                 *, poll_interval_s: float = DEFAULT_POLL_INTERVAL_S) -> None:  # fmt: skip
        self.root_dir = os.path.abspath(os.fspath(root_dir))
        full = prefix if prefix.elems[:1] == (b"#",) else Path((b"#", *prefix.elems))
        self.id_prefix: Path = full  # bound ids are /#/<prefix>/<name>
        self.bind_prefix: Prefix = Prefix(full.elems)  # what `dtab.bind(namers=...)` matches
        self.poll_interval_s = poll_interval_s
        self.version = 0
        self._sets: dict[bytes, EndpointSet] = {}  # every name ever seen: one set per name for good
        self._names: dict[bytes, EndpointSet] = {}  # the names whose file exists now
        self._files: dict[str, _File] = {}
        self._name_subscribers: tuple[NamesCallback, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._dir_missing = False

    @classmethod
    def from_config(cls, config: NamerConfig) -> FsNamer:
        return cls(config.root_dir, config.prefix, poll_interval_s=config.poll_interval_ms / 1000)

    def __repr__(self) -> str:
        return f"<FsNamer {self.id_prefix.show()} {self.root_dir!r} v{self.version} names={len(self._names)}>"

    # -- the namer interface ------------------------------------------------------------

    def lookup(self, path: Path) -> NameTree:
        """`/<name>/rest…` -> the bound name `/#/<prefix>/<name>` with residual `/rest…`,
        or `NEG` when there is no file `<name>`. Reads memory only."""
        elems = path.elems
        if not elems:
            return NEG
        endpoints = self._names.get(elems[0])
        if endpoints is None:
            return NEG
        return Leaf(Bound(self.id_prefix + Path(elems[:1]), Path(elems[1:]), endpoints))

    def endpoints(self, name: bytes) -> EndpointSet | None:
        """The live set of a name that exists now."""
        return self._names.get(name)

    def names(self) -> list[bytes]:
        return sorted(self._names)

    def subscribe_names(self, callback: NamesCallback) -> Callable[[], None]:
        """Call `callback(self)` whenever a name appears or disappears (after
        `version` changed); returns the unsubscribe function."""
        self._name_subscribers = (*self._name_subscribers, callback)

        def unsubscribe() -> None:
            subs = list(self._name_subscribers)
            if callback in subs:
                subs.remove(callback)
                self._name_subscribers = tuple(subs)

        return unsubscribe

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Scan once (so lookups answer as soon as this returns), then poll."""
        if self._task is not None:
            return
        self._apply(self._scan(self._known()))
        self._task = asyncio.get_running_loop().create_task(self._poll(), name=f"fs-namer {self.root_dir}")
        log.info("fs namer %s watching %s (%d names)", self.id_prefix.show(), self.root_dir, len(self._names))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # we were cancelled too: pass it on
                raise

    def poll_now(self) -> None:
        """One synchronous scan and apply (tests and reload use it)."""
        self._apply(self._scan(self._known()))

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                # Off the loop: a slow file system (NFS, a busy disk) must not stall traffic.
                scan = await loop.run_in_executor(None, self._scan, self._known())
            except Exception:
                log.error(
                    "fs namer %s: scan of %s failed", self.id_prefix.show(), self.root_dir, exc_info=True
                )
                continue
            self._apply(scan)

    # -- scanning: `_scan` only reads (it may run in a thread); `_apply` changes state --

    def _known(self) -> dict[str, Signature | None]:
        return {name: f.signature for name, f in self._files.items()}

    def _scan(self, known: dict[str, Signature | None]) -> _Scan | None:
        try:
            with os.scandir(self.root_dir) as it:
                entries = list(it)
        except OSError:
            return None
        scan = _Scan()
        now = time.time_ns()
        for entry in entries:
            filename = entry.name
            # Editors save through hidden temp files and leave `name~` backups; Kubernetes
            # ConfigMap volumes keep their `..data` links hidden too.
            if filename.startswith(".") or filename.endswith("~"):
                continue
            try:
                if not entry.is_file():  # follows symlinks, as ConfigMap volumes need
                    continue
                st = entry.stat()
            except OSError:  # removed between listing and stat
                continue
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            scan.signatures[filename] = signature
            if known.get(filename) == signature and now - st.st_mtime_ns > RACY_WINDOW_NS:
                continue
            if st.st_size > MAX_FILE_BYTES:
                scan.contents[filename] = f"file is {st.st_size} bytes; the limit is {MAX_FILE_BYTES}"
                continue
            try:
                with open(entry.path, "rb") as f:
                    data = f.read(MAX_FILE_BYTES + 1)
                scan.contents[filename] = (
                    data if len(data) <= MAX_FILE_BYTES else "file is over the size limit"
                )
            except FileNotFoundError:  # removed since the stat: gone
                del scan.signatures[filename]
            except OSError as exc:
                scan.contents[filename] = exc.strerror or str(exc)
        return scan

    def _apply(self, scan: _Scan | None) -> None:
        if scan is None:
            if not self._dir_missing:
                self._dir_missing = True
                log.warning("fs namer %s: cannot list %s; keeping the last known names",
                            self.id_prefix.show(), self.root_dir)  # fmt: skip
            return
        if self._dir_missing:
            self._dir_missing = False
            log.info("fs namer %s: %s is readable again", self.id_prefix.show(), self.root_dir)
        names_changed = False
        for filename in [f for f in self._files if f not in scan.signatures]:
            gone = self._files.pop(filename)
            self._names.pop(gone.name, None)
            self._sets[gone.name].set_neg()
            names_changed = True
        for filename, signature in scan.signatures.items():
            file = self._files.get(filename)
            if file is None:
                file = _File(os.fsencode(filename))
                self._files[filename] = file
                endpoints = self._sets.get(file.name)
                if endpoints is None:
                    endpoints = self._sets[file.name] = EndpointSet()
                self._names[file.name] = endpoints
                names_changed = True
            file.signature = signature
            content = scan.contents.get(filename)
            if content is not None and content != file.content:
                file.content = content
                self._load(filename, file, content)
        if names_changed:
            self.version += 1
            for callback in self._name_subscribers:
                try:
                    callback(self)
                except Exception:  # one broken subscriber must not starve the others
                    log.error("fs namer names subscriber %r failed", callback, exc_info=True)

    def _load(self, filename: str, file: _File, content: bytes | str) -> None:
        """Parse a file's new content into its endpoint set. A file that does not parse
        keeps its previous addresses (a half-written edit must not empty a service);
        one that never parsed is marked failed."""
        endpoints = self._sets[file.name]
        path = os.path.join(self.root_dir, filename)
        if isinstance(content, str):
            problem = content
        else:
            try:
                endpoints.update(parse_endpoints(content))
                return
            except BadLine as exc:
                problem = str(exc)
        if endpoints.state == BOUND:
            log.warning(
                "fs namer: %s: %s; keeping the previous %d addresses", path, problem, len(endpoints.addrs)
            )
        else:
            log.warning("fs namer: %s: %s", path, problem)
            endpoints.set_failed(f"{path}: {problem}")
