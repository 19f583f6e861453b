"""Helpers shared by the command modules: consoles, error handling, common options."""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Annotated

import typer
from rich.console import Console

from kadr.core.errors import StoreLockedError, StoreMismatchError, UserError
from kadr.core.models import SpecError, UnsafeCheckpointError, WeightsNotFoundError

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

USER_ERRORS = (
    SpecError,
    WeightsNotFoundError,
    UnsafeCheckpointError,
    StoreLockedError,
    StoreMismatchError,
    UserError,
    FileNotFoundError,
    ValueError,
)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def report_user_errors(fn):
    """Run a command body; user errors become one clear message and exit code 2."""
    try:
        return fn()
    except USER_ERRORS as e:
        fail(str(e))


def finish(summary, source: str) -> None:
    """The end of a batch command: its summary, then exit 2 when the source held no photo
    (its outputs, empty and valid, are written) and 1 when no photo could be processed."""
    summary.print()
    if summary.total == 0:
        fail(f"no photo found in {source}: nothing to do (a folder of .jpg/.png/... files, "
             "in folders per camera or group, or a CSV/Parquet manifest with a path column)")
    if summary.nothing_processed:
        fail("no photo could be processed", code=1)


Workers = Annotated[int, typer.Option(help="decode threads")]
Batch = Annotated[int, typer.Option(help="photos per model batch")]
GroupLevel = Annotated[
    int | None, typer.Option(help="folder levels below the root that name a camera/group")
]
GroupColumn = Annotated[str | None, typer.Option(help="manifest column naming the group")]
PathColumn = Annotated[str | None, typer.Option(help="manifest column with paths or URLs")]
MaxPixels = Annotated[
    int | None, typer.Option(help="refuse images above this many pixels (decompression bombs)")
]
TimePattern = Annotated[
    str | None,
    typer.Option(help="strptime pattern for times in file names, e.g. %Y%m%d_%H%M%S"),
]
Trust = Annotated[
    bool, typer.Option("--trust-checkpoint", help="allow pickled checkpoints that run code")
]
RetryFailed = Annotated[bool, typer.Option(
    "--retry-failed", help="try again every photo that failed before (by default only failures a "
    "rerun may change are: I/O errors, missing files, model errors)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


Engine = Annotated[str, typer.Option(help="local, or ray (Ray Data actor pools)")]
RayAddress = Annotated[str | None, typer.Option(
    help="join this Ray cluster (e.g. ray://head:10001 or auto); default: start a local one")]
Actors = Annotated[int, typer.Option(help="Ray actors (one model load each)")]
CpusPerActor = Annotated[float, typer.Option(help="CPUs per Ray actor")]
GpusPerActor = Annotated[float, typer.Option(help="GPUs per Ray actor")]


def engine_options(engine: str, ray_address: str | None, actors: int, cpus_per_actor: float,
                   gpus_per_actor: float):
    from kadr.core.runner import EngineOptions

    if engine not in ("local", "ray"):
        fail("--engine must be local or ray")
    return EngineOptions(engine, ray_address, actors, cpus_per_actor, gpus_per_actor)


def batch_command(batch_size: int = 32, workers: int = 2):
    """Give a command the options every batch command shares (``core.runner.RunOptions``:
    columns, batch size, workers, retry, the pixel limit, progress, and the engine with its
    Ray options),
    declared here once. The command receives them as ``run``, the keyword arguments of
    its settings; ``batch_size`` and ``workers`` are the command's defaults."""
    shared = [("path_column", PathColumn, None), ("group_column", GroupColumn, None),
              ("batch_size", Batch, batch_size), ("workers", Workers, workers),
              ("engine", Engine, "local"), ("ray_address", RayAddress, None),
              ("actors", Actors, 2), ("cpus_per_actor", CpusPerActor, 1.0),
              ("gpus_per_actor", GpusPerActor, 0.0), ("quiet", Quiet, False),
              ("retry_failed", RetryFailed, False), ("max_pixels", MaxPixels, None)]

    def wrap(fn):
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.name != "run"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                   annotation=kind) for name, kind, default in shared]

        @functools.wraps(fn)
        def command(**options):
            o = {name: options.pop(name) for name, _, _ in shared}
            run = {"path_column": o["path_column"], "group_column": o["group_column"],
                   "batch_size": o["batch_size"], "workers": o["workers"],
                   "retry_failed": o["retry_failed"], "progress": not o["quiet"],
                   **({"max_pixels": o["max_pixels"]} if o["max_pixels"] else {}),
                   "engine": engine_options(o["engine"], o["ray_address"], o["actors"],
                                            o["cpus_per_actor"], o["gpus_per_actor"])}
            return fn(run=run, **options)

        # Typer reads the options from the signature and its (evaluated) annotations.
        command.__signature__ = inspect.Signature(own + added, return_annotation=None)
        command.__annotations__ = {p.name: p.annotation for p in own + added}
        return command

    return wrap
