"""The ``kadr`` command: a thin layer over the functions users import."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kadr.cli_common import (
    GroupLevel,
    Quiet,
    TimePattern,
    Trust,
    batch_command,
    fail,
    finish,
    out,
    report_user_errors,
)
from kadr.core.models.spec import PRECISION_ENV
from kadr.hotels.cli import app as hotels_app
from kadr.traps.cli import app as traps_app

app = typer.Typer(
    help="Turn large photo collections into answers with vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def settings(
    precision: Annotated[str, typer.Option(
        help="weights' precision: auto (half on a GPU; on the CPU bf16 where it runs faster "
             "natively, else fp32: kadr models --device says which), fp32, fp16, bf16",
        envvar=PRECISION_ENV)] = "auto",
) -> None:
    """Turn large photo collections into answers with vision-language models."""
    from kadr.core.models.precision import PRECISIONS

    if precision.lower() not in PRECISIONS:
        fail(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    # Read where each model is built (and by Ray actors, which inherit the environment).
    os.environ[PRECISION_ENV] = precision.lower()


app.add_typer(traps_app, name="traps")
app.add_typer(hotels_app, name="hotels")


@app.command()
def models(
    all_: Annotated[bool, typer.Option("--all", help="every pretrained tag too")] = False,
    device: Annotated[bool, typer.Option(
        "--device", help="also check which device models would run on (imports torch)")] = False,
) -> None:
    """List model backends and known model names, and whether their weights are here."""
    from rich.markup import escape

    from kadr.core.models import known_models
    from kadr.core.models.device import DEVICE_ENV, torch_device
    from kadr.core.models.factory import backends
    from kadr.core.models.precision import precision_report

    for b in backends().values():
        out.print(f"[bold]{b.name}:[/] ({b.kind}) {escape(b.help)}")
    table = Table("spec", "kind", "what", "weights here", "where looked")
    rows = known_models()
    shown = [m for m in rows if all_ or m.present or "@" not in m.spec or "random" in m.spec]
    for m in shown:
        table.add_row(*(escape(v) for v in (m.spec, m.kind, m.note)),
                      "yes" if m.present else "no", escape(m.location))
    out.print(table)
    if len(shown) < len(rows):
        out.print(f"{len(rows) - len(shown)} more pretrained tags: kadr models --all")
    setting = f"{DEVICE_ENV}={os.environ.get(DEVICE_ENV, 'auto')}"
    if device:
        where = report_user_errors(torch_device)
        out.print(f"models run on: {where} ({setting}; auto picks a GPU when torch sees one)")
        for line in report_user_errors(lambda: precision_report(where.type)):
            out.print(line)
    else:
        out.print(f"models run on: {setting} (auto picks a GPU when torch sees one; "
                  "kadr models --device checks)")


@app.command()
@batch_command()
def embed(
    source: Annotated[str, typer.Argument(help="folder of photos, or a CSV/Parquet manifest")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder (Parquet shards)")],
    model: Annotated[str, typer.Option(help="BACKEND:NAME[@WEIGHTS]")] = (
        "open_clip:ViT-B-32@laion2b_s34b_b79k"
    ),
    group_level: GroupLevel = None,
    time_pattern: TimePattern = None,
    trust_checkpoint: Trust = False,
    run: dict | None = None,
) -> None:
    """Image embeddings for every photo, as Parquet shards; re-runs resume."""
    from kadr.embed import embed_photos

    result = report_user_errors(lambda: embed_photos(
        source, str(output), model, group_level=group_level, time_pattern=time_pattern,
        trust_checkpoint=trust_checkpoint, **run))
    finish(result.summary, source)
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

    n = report_user_errors(lambda: embed_text_file(texts, str(output), model))
    out.print(f"{n} texts embedded: {output}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="what to draw")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder")],
    pipeline: Annotated[str, typer.Option(help="diffusers:ID_OR_FOLDER[@random]")] = (
        "diffusers:diffusers/stable-diffusion-xl-1.0-inpainting-0.1"),
    variants: Annotated[int, typer.Option()] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    steps: Annotated[int, typer.Option()] = 25,
    guidance: Annotated[float, typer.Option()] = 7.5,
    negative: Annotated[str, typer.Option()] = "",
    scheduler: Annotated[str | None, typer.Option(help="ddim, pndm, euler, euler_a, dpm, lcm")] = None,
) -> None:
    """Text to image (e.g. portraits of the guests themselves)."""
    from kadr.hotels.restyle import generate_images

    paths = report_user_errors(lambda: generate_images(prompt, str(output), pipeline, variants, seed, steps,
                                            guidance, negative, scheduler))
    for p in paths:
        out.print(str(p))


@app.command()
def demo(
    shared: Annotated[Path, typer.Option(help="the shared data folder")] = Path("../shared"),
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("demo-out"),
    quiet: Quiet = False,
) -> None:
    """Run the camera-trap job on the real photos in ../shared with the real YOLOX-Nano."""
    from kadr.demo import DEFAULT_CLASSIFIER, run_demo

    result, classifier = report_user_errors(lambda: run_demo(str(shared), str(output), not quiet))
    finish(result.summary, str(shared))
    if classifier is None:
        out.print(f"[yellow]No CLIP weights here ({DEFAULT_CLASSIFIER}); species are the "
                  "detector's COCO labels. With the internet the demo downloads them.[/]")
    out.print(f"{result.figures['registrations']} registrations: "
              f"{output / 'traps' / 'registrations.csv'}")
    out.print(f"HTML report: {output / 'traps' / 'report.html'}")


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
