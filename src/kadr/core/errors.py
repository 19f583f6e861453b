"""Errors a user can act on, importable without loading pyarrow, torch or any model library
(the CLI catches them to print one clear line instead of a traceback)."""

from __future__ import annotations


class StoreLockedError(RuntimeError):
    """Another run is writing to the same result store."""


class StoreMismatchError(RuntimeError):
    """A result store made with other settings or another model than this run's."""
