"""``kadr traps ...``: the camera-trap commands."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from kadr.cli_common import (
    GroupLevel,
    TimePattern,
    Trust,
    batch_command,
    err,
    fail,
    finish,
    out,
    report_user_errors,
)

app = typer.Typer(help="Camera traps: detect, count, name species zero-shot, registrations.",
                  no_args_is_help=True)


@app.command()
@batch_command(batch_size=16)
def run(
    photos: Annotated[str, typer.Argument(help="folder of camera folders, or a manifest")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder")],
    prompts: Annotated[str | None, typer.Option(
        help="class prompts JSON (classes by name or by taxon), or a species checklist CSV/TSV "
             "with GBIF's scientificName/vernacularName columns (default: the shipped 21-class "
             "example)")] = None,
    detector: Annotated[str, typer.Option(help="detector spec: yolox:PATH.onnx, "
                                               "megadetector:PATH|MDV5A, or 'none' to classify "
                                               "whole photos")] = "megadetector:MDV5A",
    classifier: Annotated[list[str] | None, typer.Option(
        help="CLIP spec (open_clip:..., hf:..., open_clip:hf-hub:imageomics/bioclip-2), "
             "speciesnet:RELEASE|FOLDER, or 'none' for detector labels; give it again for an "
             "ensemble (the classifiers vote; default: open_clip:ViT-B-32@laion2b_s34b_b79k)")
    ] = None,
    ensemble: Annotated[str | None, typer.Option(
        help="speciesnet[:RELEASE|FOLDER]: SpeciesNet's whole pipeline, its classifier and the "
             "MegaDetector its model folder names (instead of --detector/--classifier)")] = None,
    country: Annotated[str | None, typer.Option(
        help="SpeciesNet's geofence: the cameras' country, ISO 3166-1 alpha-3 (KEN, USA)")] = None,
    admin1_region: Annotated[str | None, typer.Option(
        help="SpeciesNet's geofence: the US state (CA, MT), with --country USA")] = None,
    geofence: Annotated[bool, typer.Option(
        help="SpeciesNet's geofence and its rollups of species unknown where the cameras "
             "are")] = True,
    allow_detector_labels: Annotated[bool, typer.Option(
        "--allow-detector-labels",
        help="if the classifier's weights are missing, use the detector's labels")] = False,
    threshold: Annotated[float, typer.Option(help="detection confidence counted as an animal")] = 0.3,
    classify_on: Annotated[str, typer.Option(help="crops | photo | both")] = "both",
    gap: Annotated[str, typer.Option(help="pause that ends a registration, e.g. 30m, 1h")] = "30m",
    method: Annotated[str, typer.Option(help="sessions (default) | window | simple")] = "sessions",
    count_rule: Annotated[str, typer.Option(
        help="a visit's count: max, or confirmed (the largest seen on two photos)")] = "max",
    split_species: Annotated[bool, typer.Option(
        help="split a visit where another species holds a sustained run")] = False,
    deployments: Annotated[str | None, typer.Option(
        help="CSV with deploymentID (camera), latitude, longitude for Camtrap DP")] = None,
    utc_offset: Annotated[str | None, typer.Option(
        help="the cameras' clock offset from UTC, e.g. +03:00 (without it Camtrap DP marks "
             "every timestamp as uncertain)")] = None,
    media_url: Annotated[str | None, typer.Option(
        help="URL the photos will be published under: Camtrap DP filePath is URL/KEY "
             "(default: paths relative to the package)")] = None,
    video_fps: Annotated[float, typer.Option(
        help="frames a second looked at in video clips (MP4, MOV, AVI, MTS, ...; always the "
             "first and last frame too); 0 leaves clips out")] = 1.0,
    group_level: GroupLevel = None,
    time_pattern: TimePattern = None,
    trust_checkpoint: Trust = False,
    run: dict | None = None,
) -> None:
    """The whole job: detections, counts, species, registrations, exports and an HTML report."""
    from kadr.traps.pipeline import TrapSettings, run_traps

    if classify_on not in ("crops", "photo", "both"):
        fail("--classify-on must be crops, photo or both")
    if not 0 <= video_fps <= 120:
        fail(f"--video-fps must be between 0 (clips left out) and 120, not {video_fps}")
    if utc_offset is not None and not re.fullmatch(r"Z|[+-]\d\d:\d\d", utc_offset):
        fail(f"--utc-offset must look like +03:00, -05:00 or Z, not {utc_offset!r}")
    specs = classifier or [TrapSettings.classifier]
    if len(specs) > 1 and any(c.lower() == "none" for c in specs):
        fail("--classifier none stands alone (the detector's labels), not in an ensemble")
    settings = TrapSettings(
        detector=None if detector.lower() == "none" else detector,
        classifier=None if specs[0].lower() == "none" else specs[0], more_classifiers=specs[1:],
        prompts=prompts, threshold=threshold, classify_on=classify_on, gap=gap, method=method,
        count_rule=count_rule, split_species=split_species,
        group_level=group_level, time_pattern=time_pattern, trust_checkpoint=trust_checkpoint,
        deployments=deployments, utc_offset=utc_offset, media_url=media_url,
        allow_detector_labels=allow_detector_labels, video_fps=video_fps,
        country=country.upper() if country else None,
        admin1_region=admin1_region.upper() if admin1_region else None, geofence=geofence,
        **run,
    )
    if ensemble is not None:
        family, _, model = ensemble.partition(":")
        if family.lower() != "speciesnet":
            fail(f"--ensemble {ensemble!r}: the ensemble kadr runs is speciesnet[:MODEL]")
        from kadr.traps.speciesnet import with_speciesnet_ensemble

        # Classifiers given beside it vote with SpeciesNet.
        voters = [c for c in classifier or [] if c.lower() != "none"]
        settings = report_user_errors(
            lambda: with_speciesnet_ensemble(settings, model or None, voters))
    result = report_user_errors(lambda: run_traps(photos, str(output), settings))
    finish(result.summary, photos)
    out.print(f"{result.figures['registrations']} registrations: {output / 'registrations.csv'}")
    if result.figures["disputed"] is not None:
        out.print(f"the classifiers disagree on {result.figures['disputed']} of them "
                  "(`kadr traps review` shows those first)")
    out.print(f"report: {output / 'report.html'}")
    out.print(f"also: photos.parquet/csv, megadetector.json, camtrap-dp/ in {output}")


@app.command()
def events(
    predictions: Annotated[str, typer.Argument(
        help="per-photo table: the case's CSV, generic CSV/Parquet, kadr photos.parquet, MD JSON")],
    output: Annotated[Path, typer.Option("-o", "--output", help="registrations CSV")],
    method: Annotated[str, typer.Option(help="sessions | window | simple")] = "sessions",
    gap: Annotated[str, typer.Option(help="e.g. 30m")] = "30m",
    count_rule: Annotated[str, typer.Option(help="max | confirmed")] = "max",
    split_species: Annotated[bool, typer.Option(help="split visits on a sustained species "
                                                     "change")] = False,
) -> None:
    """Turn a per-photo table into registrations (the case's CSV format)."""
    from kadr.traps.registrations import PhotoColumns, registrations
    from kadr.traps.tables import read_photo_arrow, write_registrations

    def body():
        photos = read_photo_arrow(predictions)  # Arrow and NumPy from CSV to CSV
        regs = registrations(PhotoColumns.from_arrow(photos), method, gap,
                             count_rule=count_rule, split_species=split_species)
        write_registrations(regs.columns(), str(output))
        return photos, regs

    photos, regs = report_user_errors(body)
    untimed = photos.column("time").null_count
    if untimed:
        err.print(f"[yellow]{untimed} photos have no usable time; each forms its own "
                  "registration with empty times[/]")
    out.print(f"{photos.num_rows} photos -> {len(regs)} registrations ({method}): {output}")


@app.command()
def score(
    reference: Annotated[str, typer.Argument(help="registrations CSV, or per-photo table with "
                                                  "registrations_id")],
    predicted: Annotated[str, typer.Argument(help="registrations CSV")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    iou: Annotated[str, typer.Option(help="interval (true IoU) | hit (the worked example)")] = (
        "interval"),
) -> None:
    """The case's metric, with a breakdown per class."""
    from rich.table import Table

    from kadr.traps.score import score_registrations
    from kadr.traps.tables import read_registrations

    s = report_user_errors(lambda: score_registrations(read_registrations(reference),
                                            read_registrations(predicted), iou=iou))
    if as_json:
        print(json.dumps(s.as_dict(), indent=2))
        return
    out.print(f"[bold]score {s.score:.4f}[/]  mean IoU {s.mean_iou:.4f}  count F1 "
              f"{s.count_f1:.4f}  matched {s.matched}/{s.n_reference}  missed {s.missed}  "
              f"false proposals {s.false_proposals}")
    t = Table("class", "reference", "predicted", "matched", "mean IoU", "missed", "false")
    for c, v in s.per_class.items():
        t.add_row(c, str(v["reference"]), str(v["predicted"]), str(v["matched"]),
                  f"{v['mean_iou']:.3f}", str(v["missed"]), str(v["false_proposals"]))
    out.print(t)


@app.command("validate-dp")
def validate_dp(
    package: Annotated[Path, typer.Argument(help="folder with datapackage.json")],
    schemas: Annotated[Path, typer.Option(help="folder with the Camtrap DP 1.0.2 schemas")],
) -> None:
    """Validate a Camtrap DP package offline against local copies of the standard's schemas."""
    from kadr.traps.exports import validate_camtrap_dp

    errors = report_user_errors(lambda: validate_camtrap_dp(package, schemas))
    for e in errors:
        err.print(f"[red]{e}[/]")
    if errors:
        raise typer.Exit(1)
    out.print(f"{package}: valid Camtrap DP")


@app.command()
def review(
    output: Annotated[Path, typer.Argument(help="output folder of `kadr traps run`")],
    host: Annotated[str, typer.Option(help="address to serve on; 0.0.0.0 serves a lab "
                                           "network (still behind the token)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free one)")] = 0,
    reviewer: Annotated[str, typer.Option(help="your name, recorded with each decision")] = (
        "reviewer"),
    browser: Annotated[bool, typer.Option(help="open the page in a browser")] = True,
    token: Annotated[str | None, typer.Option(
        help="the secret in the address (default: a new random one)")] = None,
) -> None:
    """Check and correct registrations in the browser; decisions go into every export."""
    from kadr.traps.review_app import serve

    report_user_errors(lambda: serve(output, host, port, reviewer, browser, token, announce=out.print))
    out.print("review stopped; exporting with the decisions ...")
    export(output)


@app.command()
def export(
    output: Annotated[Path, typer.Argument(help="output folder of `kadr traps run`")],
) -> None:
    """Rewrite registrations.csv, Camtrap DP, MegaDetector JSON and the report with the
    reviewers' decisions (and learned classes) applied. Loads no model."""
    from kadr.traps.exports import export_run

    regs, summary = report_user_errors(lambda: export_run(output))
    for w in summary.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    reviewed = int(regs["reviewed"].sum()) if "reviewed" in regs else 0
    out.print(f"{len(regs)} registrations ({reviewed} reviewed): {output / 'registrations.csv'}")


@app.command()
def learn(
    output: Annotated[Path, typer.Argument(help="output folder of `kadr traps run`")],
    min_per_class: Annotated[int, typer.Option(help="reviewed registrations a class needs")] = 3,
) -> None:
    """Fit a classifier on the reviewed registrations (with the zero-shot prior, mixed by
    cross-validation), re-score the rest and rewrite the exports."""
    from kadr.traps.exports import export_run
    from kadr.traps.learn import learn_run

    report = report_user_errors(lambda: learn_run(output, min_per_class))
    out.print(report["message"])
    for c in report["per_class"]:
        out.print(f"  {c['class']}: {c['reviewed']} reviewed, zero-shot "
                  f"{c['zero_shot_accuracy']:.0%}, learned {c['learned_accuracy']:.0%}")
    report_user_errors(lambda: export_run(output))
    out.print(f"exports rewritten in {output}; figures in {output / 'learn.json'}")
