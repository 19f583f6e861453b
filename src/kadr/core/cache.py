"""Where kadr keeps what it computes once per machine (text embeddings, model listings)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$KADR_CACHE``, else ``~/.cache/kadr``."""
    return Path(os.environ.get("KADR_CACHE", Path.home() / ".cache" / "kadr"))
