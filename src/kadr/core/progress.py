"""Progress bars on stderr (rich): photos of a batch job, and rows of a pass over a store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
T = TypeVar("T")


class PhotoProgress:
    """The bar every engine shows: count, rate, ETA."""

    def __init__(self, name: str, total: int, done: int, enabled: bool):
        columns = [TextColumn(f"[bold]{name}[/]"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:.1f} photos/s"), TimeElapsedColumn(),
                   TimeRemainingColumn()]
        self.bar = Progress(*columns, console=console, disable=not enabled)
        self.done = done
        self.task = self.bar.add_task(name, total=total, completed=done, rate=0.0)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def update(self, processed: int) -> None:
        elapsed = self.bar.tasks[self.task].elapsed or 1e-9
        self.bar.update(self.task, completed=self.done + processed, rate=processed / elapsed)


def row_blocks(blocks: Iterable[T], name: str, total: int | None, enabled: bool,
               rows=len) -> Iterator[T]:
    """``blocks`` passed through, with a bar of the rows done (``rows(block)`` each)."""
    columns = [TextColumn(f"[bold]{name}[/]"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not enabled) as bar:
        task = bar.add_task(name, total=total)
        for block in blocks:
            yield block
            bar.advance(task, rows(block))
