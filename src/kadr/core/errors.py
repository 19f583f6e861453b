"""Errors a user can act on, importable without loading pyarrow, torch or any model library
(the CLI catches them to print one clear line instead of a traceback)."""

from __future__ import annotations


class UserError(RuntimeError):
    """A state of the user's files that one clear message explains (a workflow raises a
    subclass; the CLI prints its message and exits 2)."""


class StoreLockedError(RuntimeError):
    """Another run is writing to the same result store."""


class StoreMismatchError(RuntimeError):
    """A result store made with other settings or another model than this run's."""
