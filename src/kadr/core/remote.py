"""Object storage (s3://, gs://, az://, memory://, ...) through fsspec, for sources and outputs.

Sources: a URL of a folder (listed recursively) or of a manifest is read like
a local one; photo bytes are fetched by the decoder.

Outputs: an output URL is mirrored by a local staging folder. Existing
results are downloaded first (so a run resumes), every result shard is
uploaded as soon as it is written, and the remaining files (tables, reports)
are uploaded when the command ends. Objects are uploaded whole, so readers
never see half a shard. A lease object in the output (``.kadr-lease.json``,
renewed by a heartbeat) keeps a second run, on any machine, from writing
into the same output at the same time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

LEASE_NAME = ".kadr-lease.json"

# Set while a command writes into a staging folder: uploads each finished shard at once.
_UPLOADER: ContextVar[Callable | None] = ContextVar("kadr_uploader", default=None)


def upload_now(path: str | os.PathLike) -> None:
    """Upload a just-written file when the output is object storage; no-op otherwise."""
    up = _UPLOADER.get()
    if up is not None:
        up(path)


def staged(fn: Callable) -> Callable:
    """Let ``fn(source, out, ...)`` take an object-storage URL as ``out``."""

    @functools.wraps(fn)
    def wrapper(source, out, *args, **kwargs):
        with staged_output(str(out)) as (local, upload):
            token = _UPLOADER.set(upload if is_url(out) else None)
            try:
                result = fn(source, local, *args, **kwargs)
            finally:
                _UPLOADER.reset(token)
            if is_url(out) and hasattr(result, "table"):  # a WorkflowResult names the URL
                result.output = str(out)
                result.table = str(result.table).replace(str(local), str(out).rstrip("/"), 1)
            return result

    return wrapper


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def url_fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def list_photo_urls(url: str, extensions: frozenset[str]) -> Iterator[tuple[str, str]]:
    """(relative path, full URL) of every photo under a folder URL.

    Streamed folder by folder (names sorted within each, folders in sorted order),
    as the local listing is: a bucket of a million objects is never held in memory.
    """
    fs, root = url_fs(url)
    protocol = url.split("://", 1)[0]
    root = root.rstrip("/")
    for dirpath, dirnames, filenames in fs.walk(root, topdown=True):
        dirnames.sort()  # in place: fsspec then walks them in this order
        for name in sorted(filenames):
            path = f"{dirpath.rstrip('/')}/{name}"
            rel = path[len(root):].lstrip("/")
            if os.path.splitext(rel)[1].lower() in extensions:
                yield rel, f"{protocol}://{path}"


def staging_dir(url: str) -> Path:
    from kadr.core.cache import cache_dir

    base = cache_dir() / "staging"
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


class Lease:
    """A run's claim on an output URL: an object renewed every ``ttl / 3`` seconds.

    Object stores have no locks; this is the usual lease instead. A run finding
    another run's lease renewed less than ``ttl`` seconds ago stops; a lease
    left by a run that died expires after ``ttl`` (``KADR_LEASE_SECONDS``, 600).
    """

    def __init__(self, fs, root: str, ttl: float | None = None):
        self.fs, self.root, self.path = fs, root, f"{root}/{LEASE_NAME}"
        self.ttl = ttl or float(os.environ.get("KADR_LEASE_SECONDS", "600"))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            with self.fs.open(self.path, "rb") as f:
                return json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return None

    def _write(self) -> None:
        record = {"owner": self.owner, "started": self.started, "renewed": time.time()}
        with self.fs.open(self.path, "wb") as f:
            f.write(json.dumps(record).encode())

    def __enter__(self) -> Lease:
        from kadr.core.errors import StoreLockedError

        held = self._read()
        age = time.time() - held.get("renewed", 0) if held else None
        if held and held.get("owner") != self.owner and age < self.ttl:
            raise StoreLockedError(
                f"{self.root} is in use by another kadr run ({held.get('owner')}, "
                f"lease renewed {age:.0f} s ago); wait for it to finish or choose another output. "
                f"A lease of a run that died expires after {self.ttl:.0f} s (KADR_LEASE_SECONDS)"
            )
        self._write()
        time.sleep(min(1.0, self.ttl / 10))  # two runs that wrote at once: the last writer wins
        if (self._read() or {}).get("owner") != self.owner:
            raise StoreLockedError(f"{self.root} was claimed by another kadr run at the same "
                                   "moment; choose another output")
        self._thread = threading.Thread(target=self._renew, name="kadr-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the run goes on
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (self._read() or {}).get("owner") == self.owner:
            self.fs.rm(self.path)


@contextmanager
def staged_output(out: str) -> Iterator[tuple[str, callable]]:
    """A local folder for ``out`` and an ``upload(local_file)`` function.

    For a local ``out`` this is the folder itself and upload does nothing.
    """
    if not is_url(out):
        yield out, lambda _path: None
        return
    fs, root = url_fs(out)
    root = root.rstrip("/")
    with Lease(fs, root):
        local = staging_dir(out)
        local.mkdir(parents=True, exist_ok=True)
        if fs.exists(root):
            for path in fs.find(root):
                rel = path[len(root):].lstrip("/")
                target = local / rel
                if rel != LEASE_NAME and not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fs.get(path, str(target))

        sent: dict[str, float] = {}

        def upload(path: str | os.PathLike) -> None:
            p = Path(path)
            rel = p.resolve().relative_to(local.resolve()).as_posix()
            fs.put(str(p), f"{root}/{rel}")
            sent[rel] = p.stat().st_mtime

        try:
            yield str(local), upload
        finally:
            for p in sorted(local.rglob("*")):
                rel = p.relative_to(local).as_posix()
                if (p.is_file() and not p.name.startswith(".") and not p.name.endswith(".tmp")
                        and sent.get(rel) != p.stat().st_mtime):
                    upload(p)
