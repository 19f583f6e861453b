"""Text embeddings cached on disk, so that vocabularies and prompts are encoded once per model."""

from __future__ import annotations

import hashlib
import io
import json

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
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed
    vectors = model.encode_texts(texts)
    buf = io.BytesIO()
    np.save(buf, vectors)
    atomic_write_bytes(path, buf.getvalue())
    return vectors
