"""``kadr hotels ...``: the hotel-photo commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kadr.cli_common import (
    Quiet,
    Trust,
    batch_command,
    finish,
    out,
    report_user_errors,
)

app = typer.Typer(help="Hotel photos: profile, caption, group into themes.", no_args_is_help=True)


@app.command()
@batch_command(batch_size=32, workers=2)
def profile(
    source: Annotated[str, typer.Argument(help="folder, manifest, or a Hotels-50K root")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder")],
    clip: Annotated[str, typer.Option(help="CLIP spec for rotation/off-topic checks, or 'none'")] = (
        "open_clip:ViT-B-32@laion2b_s34b_b79k"),
    near_distance: Annotated[int, typer.Option(help="perceptual-hash bits for near duplicates")] = 4,
    fix_rotation: Annotated[bool, typer.Option("--fix-rotation",
                                               help="write upright copies of rotated photos")] = False,
    run: dict | None = None,
) -> None:
    """Rows vs unique photos, imbalance per hotel/chain/source, sizes, duplicates, rotated and
    off-topic photos: JSON, Parquet tables and a self-contained HTML page."""
    from kadr.hotels.profile import ProfileSettings, run_profile

    settings = ProfileSettings(
        clip=None if clip.lower() == "none" else clip, near_distance=near_distance,
        fix_rotation=fix_rotation, **run)
    result = report_user_errors(lambda: run_profile(source, str(output), settings))
    finish(result.summary, source)
    summary = result.figures
    if "skipped" in summary["model_checks"]:
        out.print(f"[yellow]{summary['model_checks']}[/]")
    out.print(f"{summary['rows']} rows, {summary['unique_contents']} unique photos, "
              f"{summary['missing']} missing, {summary['unreadable']} unreadable; "
              f"duplicates {summary['duplicates']}")
    out.print(f"profile: {output / 'profile.html'} and {output / 'profile.json'}")


@app.command()
@batch_command(batch_size=16, workers=2)
def caption(
    source: Annotated[str, typer.Argument(help="folder, manifest, or a Hotels-50K root")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder")],
    captioner: Annotated[str, typer.Option(help="caption model spec (hf-caption:..., coca:...)")] = (
        "hf-caption:Salesforce/blip-image-captioning-large"),
    clip: Annotated[str, typer.Option(help="CLIP spec that ranks the phrases")] = (
        "open_clip:ViT-L-14@openai"),
    vocab: Annotated[str, typer.Option(help="tables: hotel, generic, all, table names, .txt paths")] = (
        "hotel"),
    include: Annotated[str | None, typer.Option(help="keep only phrases matching this regex")] = None,
    exclude: Annotated[str | None, typer.Option(help="drop phrases matching this regex")] = None,
    mode: Annotated[str, typer.Option(help="fast | classic | best | negative")] = "best",
    max_phrases: Annotated[int, typer.Option(help="phrases appended at most")] = 8,
    candidates: Annotated[int, typer.Option(
        help="--vocab generic: phrases the chains consider (clip-interrogator's "
             "flavor_intermediate_count)")] = 2048,
    rank_chunk: Annotated[int, typer.Option(
        help="--vocab generic: chunk size for ranking large tables (its chunk_size)")] = 2048,
    txt: Annotated[bool, typer.Option("--txt", help="also write a .txt beside each photo")] = False,
    trust_checkpoint: Trust = False,
    run: dict | None = None,
) -> None:
    """Caption every photo CLIP-Interrogator style: a base caption plus ranked vocabulary."""
    from kadr.hotels.caption import CaptionSettings, run_caption

    settings = CaptionSettings(
        captioner=captioner, clip=clip, vocab=vocab, include=include, exclude=exclude, mode=mode,
        max_phrases=max_phrases, candidates=candidates, rank_chunk=rank_chunk,
        write_txt=txt, trust_checkpoint=trust_checkpoint, **run)
    finish(report_user_errors(lambda: run_caption(source, str(output), settings)).summary, source)
    out.print(f"captions: {output / 'captions.parquet'} and {output / 'captions.csv'}")


@app.command()
def cluster(
    input_path: Annotated[str, typer.Argument(help="caption output folder/parquet (or embeddings)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder")],
    embed: Annotated[str, typer.Option(help="caption | image | both")] = "caption",
    clip: Annotated[str, typer.Option(help="CLIP spec for the embeddings")] = (
        "open_clip:ViT-L-14@openai"),
    text_column: Annotated[str, typer.Option(help="caption or prompt")] = "caption",
    reduce: Annotated[str, typer.Option(help="tsne | umap | none")] = "tsne",
    method: Annotated[str, typer.Option("--cluster", help="dbscan | hdbscan")] = "dbscan",
    eps: Annotated[str, typer.Option(help="DBSCAN eps, or auto (k-distance knee)")] = "auto",
    min_samples: Annotated[int, typer.Option()] = 3,
    max_fit: Annotated[int, typer.Option(help="points t-SNE/UMAP is fitted on at most")] = 50_000,
    quiet: Quiet = False,
) -> None:
    """Themes: embed, reduce, cluster, label by the caption nearest each cluster's mean,
    and an interactive HTML map."""
    from kadr.hotels.cluster import ClusterSettings, run_cluster

    settings = ClusterSettings(embed=embed, clip=clip, text_column=text_column, reduce=reduce,
                               cluster=method, eps=eps, min_samples=min_samples, max_fit=max_fit,
                               progress=not quiet)
    summary = report_user_errors(lambda: run_cluster(input_path, str(output), settings)).figures
    out.print(f"{summary['photos']} photos -> {summary['clusters']} themes, {summary['noise']} "
              f"noise ({summary['reduction']})")
    out.print(f"map: {output / 'map.html'}; tables: clusters.parquet, assignments.parquet")


@app.command()
@batch_command(batch_size=1, workers=1)
def restyle(
    source: Annotated[str, typer.Argument(help="folder, manifest, or a Hotels-50K root")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder")],
    audience: Annotated[str, typer.Option(help="audience YAML, or a shipped name (aliens)")] = "aliens",
    pipeline: Annotated[str, typer.Option(help="diffusers:ID_OR_FOLDER[@random]")] = (
        "diffusers:diffusers/stable-diffusion-xl-1.0-inpainting-0.1"),
    segmenter: Annotated[str, typer.Option(help="clipseg:ID, or boxes:yolox:PATH.onnx")] = (
        "clipseg:CIDAS/clipseg-rd64-refined"),
    refine_masks: Annotated[str | None, typer.Option(help="sam:ID to refine masks")] = None,
    scheduler: Annotated[str | None, typer.Option(help="ddim, pndm, euler, euler_a, dpm, lcm")] = None,
    variants: Annotated[int, typer.Option()] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    strength: Annotated[float, typer.Option()] = 0.99,
    steps: Annotated[int, typer.Option()] = 25,
    guidance: Annotated[float, typer.Option()] = 7.5,
    refine: Annotated[float, typer.Option(help="strength of a second, refining pass (0 = off)")] = 0.0,
    composite: Annotated[bool, typer.Option("--composite", help="generate each object apart, "
                                                               "paste it, harmonise")] = False,
    whole_photo: Annotated[bool, typer.Option("--whole-photo", help="img2img: edit the whole photo "
                                              "at --strength instead of masked parts")] = False,
    captions: Annotated[str | None, typer.Option(help="captions.parquet from hotels caption")] = None,
    mask_threshold: Annotated[float, typer.Option()] = 0.4,
    mask_min_area: Annotated[float, typer.Option(help="fraction of the photo")] = 0.002,
    mask_dilate: Annotated[int, typer.Option(help="pixels")] = 6,
    mask_feather: Annotated[int, typer.Option(help="pixels")] = 4,
    llm_url: Annotated[str | None, typer.Option(
        envvar="KADR_LLM_URL", help="OpenAI-compatible base URL that writes prompts (off)")] = None,
    llm_model: Annotated[str, typer.Option(envvar="KADR_LLM_MODEL")] = "gpt-4o-mini",
    llm_key: Annotated[str | None, typer.Option(envvar="KADR_LLM_API_KEY")] = None,
    run: dict | None = None,
) -> None:
    """Restyle rooms for an audience: text-prompted masks, inpainting, before/after pairs."""
    from kadr.core.masks import MaskOps
    from kadr.hotels.restyle import PromptWriter, RestyleSettings, run_restyle

    settings = RestyleSettings(
        audience=audience, pipeline=pipeline, segmenter=segmenter, refine_masks=refine_masks,
        scheduler=scheduler, variants=variants, seed=seed, strength=strength, steps=steps,
        guidance=guidance, refine=refine, composite=composite, whole_photo=whole_photo,
        captions=captions,
        mask_ops=MaskOps(mask_threshold, mask_min_area, mask_dilate, mask_feather),
        prompt_writer=PromptWriter(llm_url, llm_model, llm_key), **run)
    finish(report_user_errors(lambda: run_restyle(source, str(output), settings)).summary, source)
    out.print(f"gallery: {output / 'gallery.html'}; edits, masks, pairs in {output}")
