"""The ``kadr`` command: a thin layer over the functions users import."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kadr.core.models import SpecError, UnsafeCheckpointError, WeightsNotFoundError
from kadr.core.store import StoreLockedError, StoreMismatchError

app = typer.Typer(
    help="Turn large photo collections into answers with vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

USER_ERRORS = (
    SpecError,
    WeightsNotFoundError,
    UnsafeCheckpointError,
    StoreLockedError,
    StoreMismatchError,
    FileNotFoundError,
    ValueError,
)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def guarded(fn):
    """Run a command body; user errors become one clear message and exit code 2."""
    try:
        return fn()
    except USER_ERRORS as e:
        fail(str(e))


def finish(summary) -> None:
    summary.print()
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
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


@app.command()
def models(
    all_: Annotated[bool, typer.Option("--all", help="every pretrained tag too")] = False,
) -> None:
    """List model backends and known model names, and whether their weights are here."""
    from kadr.core.models import known_models
    from kadr.core.models.factory import backends

    for b in backends().values():
        out.print(f"[bold]{b.name}:[/] ({b.kind}) {b.help}")
    table = Table("spec", "kind", "what", "weights here", "where looked")
    rows = known_models()
    shown = [m for m in rows if all_ or m.present or "@" not in m.spec or "random" in m.spec]
    for m in shown:
        table.add_row(m.spec, m.kind, m.note, "yes" if m.present else "no", m.location)
    out.print(table)
    if len(shown) < len(rows):
        out.print(f"{len(rows) - len(shown)} more pretrained tags: kadr models --all")


@app.command()
def embed(
    source: Annotated[str, typer.Argument(help="folder of photos, or a CSV/Parquet manifest")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder (Parquet shards)")],
    model: Annotated[str, typer.Option(help="BACKEND:NAME[@WEIGHTS]")] = (
        "open_clip:ViT-B-32@laion2b_s34b_b79k"
    ),
    batch_size: Batch = 32,
    workers: Workers = 2,
    group_level: GroupLevel = None,
    group_column: GroupColumn = None,
    path_column: PathColumn = None,
    max_pixels: MaxPixels = None,
    time_pattern: TimePattern = None,
    trust_checkpoint: Trust = False,
    quiet: Quiet = False,
) -> None:
    """Image embeddings for every photo, as Parquet shards; re-runs resume."""
    from kadr.embed import embed_photos

    summary = guarded(lambda: embed_photos(
        source, str(output), model, batch_size=batch_size, workers=workers,
        group_level=group_level, group_column=group_column, path_column=path_column,
        max_pixels=max_pixels, time_pattern=time_pattern, trust_checkpoint=trust_checkpoint,
        progress=not quiet,
    ))
    finish(summary)
    out.print(f"embeddings: {output}")


@app.command("embed-text")
def embed_text(
    texts: Annotated[str, typer.Argument(help="text file (one phrase a line) or JSON prompts")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output .parquet")],
    model: Annotated[str, typer.Option(help="BACKEND:NAME[@WEIGHTS]")] = (
        "open_clip:ViT-B-32@laion2b_s34b_b79k"
    ),
) -> None:
    """Text embeddings for prompt lists and vocabularies (cached by model and content)."""
    from kadr.embed import embed_text_file

    n = guarded(lambda: embed_text_file(texts, str(output), model))
    out.print(f"{n} texts embedded: {output}")


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
