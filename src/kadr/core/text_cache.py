"""Text embeddings cached on disk, so that vocabularies and prompts are encoded once per model.

For texts that come back run after run (vocabularies, class prompts), not for
texts made per batch (captions being chained): those are encoded directly. The
cache is bounded: past ``KADR_TEXT_CACHE_MB`` (2,048 MB) the files used least
recently are removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np

from kadr.core.cache import cache_dir
from kadr.core.store import atomic_write_bytes


def text_embeddings(model, texts: list[str]) -> np.ndarray:
    """Embeddings of ``texts`` [N, D], cached by (model fingerprint, exact text list)."""
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; got {type(bad[0]).__name__}: {bad[0]!r}")
    key = hashlib.sha256(
        (json.dumps(model.fingerprint, sort_keys=True) + "\n" + "\n".join(texts)).encode()
    ).hexdigest()
    path = cache_dir() / "text" / f"{key}.npy"
    if path.exists():
        try:
            cached = np.load(path)
            if cached.shape[0] == len(texts):
                os.utime(path)  # recently used: the last to be pruned
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed
    vectors = model.encode_texts(texts)
    buf = io.BytesIO()
    np.save(buf, vectors)
    atomic_write_bytes(path, buf.getvalue())
    prune(path.parent, int(float(os.environ.get("KADR_TEXT_CACHE_MB", "2048")) * 2**20), keep=path)
    return vectors


def prune(folder, limit_bytes: int, keep=None) -> int:
    """Remove the least recently used cache files until the folder holds ``limit_bytes``
    at most (never ``keep``, the file just written); returns how many were removed."""
    files = []
    for entry in os.scandir(folder):
        if entry.is_file() and entry.name.endswith(".npy"):
            st = entry.stat()
            files.append((st.st_mtime_ns, st.st_size, entry.path))
    total = sum(size for _, size, _ in files)
    removed = 0
    for _, size, path in sorted(files):
        if total <= limit_bytes:
            break
        if keep is not None and os.path.samefile(path, keep):
            continue
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        total -= size
        removed += 1
    return removed
