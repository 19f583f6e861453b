"""``kadr hotels ...``: the hotel-photo commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kadr.cli_common import GroupColumn, PathColumn, Quiet, finish, guarded, out

app = typer.Typer(help="Hotel photos: profile, caption, group into themes.", no_args_is_help=True)


@app.command()
def profile(
    source: Annotated[str, typer.Argument(help="folder, manifest, or a Hotels-50K root")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder")],
    clip: Annotated[str, typer.Option(help="CLIP spec for rotation/off-topic checks, or 'none'")] = (
        "open_clip:ViT-B-32@laion2b_s34b_b79k"),
    near_distance: Annotated[int, typer.Option(help="perceptual-hash bits for near duplicates")] = 4,
    fix_rotation: Annotated[bool, typer.Option("--fix-rotation",
                                               help="write upright copies of rotated photos")] = False,
    path_column: PathColumn = None,
    group_column: GroupColumn = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    workers: Annotated[int, typer.Option(help="decode threads")] = 2,
    quiet: Quiet = False,
) -> None:
    """Rows vs unique photos, imbalance per hotel/chain/source, sizes, duplicates, rotated and
    off-topic photos: JSON, Parquet tables and a self-contained HTML page."""
    from kadr.hotels.profile import ProfileSettings, run_profile

    settings = ProfileSettings(
        clip=None if clip.lower() == "none" else clip, near_distance=near_distance,
        fix_rotation=fix_rotation, path_column=path_column, group_column=group_column,
        batch_size=batch_size, workers=workers, progress=not quiet)
    summary = guarded(lambda: run_profile(source, str(output), settings))
    finish(summary["_run"])
    if "skipped" in summary["model_checks"]:
        out.print(f"[yellow]{summary['model_checks']}[/]")
    out.print(f"{summary['rows']} rows, {summary['unique_contents']} unique photos, "
              f"{summary['missing']} missing, {summary['unreadable']} unreadable; "
              f"duplicates {summary['duplicates']}")
    out.print(f"profile: {output / 'profile.html'} and {output / 'profile.json'}")
