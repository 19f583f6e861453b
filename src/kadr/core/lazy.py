"""Heavy libraries imported on first use, so that listing models or printing help never
waits for torch (about two seconds) when no model runs."""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable
from typing import Any


class LazyModule(types.ModuleType):
    """Stands for a module; the real one is imported when an attribute is first read."""

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.__name__), attr)


torch = LazyModule("torch")


def inference_mode(fn: Callable) -> Callable:
    """``torch.inference_mode()`` as a decorator that imports torch only when called."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper
