"""Object storage (s3://, gs://, az://, memory://, ...) through fsspec, for sources and outputs.

Sources: a URL of a folder (listed recursively) or of a manifest is read like
a local one; photo bytes are fetched by the decoder.

Outputs: an output URL is mirrored by a local staging folder. Existing
results are downloaded first (so a run resumes), every result shard is
uploaded as soon as it is written, and the remaining files (tables, reports)
are uploaded when the command ends. Objects are uploaded whole, so readers
never see half a shard.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

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
                return fn(source, local, *args, **kwargs)
            finally:
                _UPLOADER.reset(token)

    return wrapper


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def url_fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def list_photo_urls(url: str, extensions: frozenset[str]) -> Iterator[tuple[str, str]]:
    """(relative path, full URL) of every file under a folder URL, sorted."""
    fs, root = url_fs(url)
    protocol = url.split("://", 1)[0]
    root = root.rstrip("/")
    for path in sorted(fs.find(root)):
        rel = path[len(root):].lstrip("/")
        if os.path.splitext(rel)[1].lower() in extensions:
            yield rel, f"{protocol}://{path}"


def staging_dir(url: str) -> Path:
    base = Path(os.environ.get("KADR_CACHE", Path.home() / ".cache" / "kadr")) / "staging"
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


@contextmanager
def staged_output(out: str) -> Iterator[tuple[str, callable]]:
    """A local folder for ``out`` and an ``upload(local_file)`` function.

    For a local ``out`` this is the folder itself and upload does nothing.
    """
    if not is_url(out):
        yield out, lambda _path: None
        return
    fs, root = url_fs(out)
    local = staging_dir(out)
    local.mkdir(parents=True, exist_ok=True)
    root = root.rstrip("/")
    if fs.exists(root):
        for path in fs.find(root):
            rel = path[len(root):].lstrip("/")
            target = local / rel
            if not target.exists():
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
