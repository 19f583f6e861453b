"""The settings of ``kadr traps run`` and what follows from them alone: the run's class
prompts and the fingerprint of its per-photo numbers (no model is loaded for either).
Saved in ``summary.json`` and read back by export, review and learn."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from kadr.core.models.factory import backends, model_fingerprint
from kadr.core.models.spec import ModelSpec, SpecError
from kadr.core.runner import RunOptions
from kadr.traps.prompts import EXAMPLE, PromptSet, load_prompts


@dataclass(kw_only=True)
class TrapSettings(RunOptions):
    detector: str | None = "megadetector:MDV5A"  # None: classify whole photos, no boxes
    classifier: str | None = "open_clip:ViT-B-32@laion2b_s34b_b79k"  # None: detector labels
    # Classifiers that vote with the first (an ensemble); the first's columns are the run's.
    more_classifiers: list[str] = field(default_factory=list)
    prompts: str | None = None
    threshold: float = 0.3  # detection confidence that counts as an animal
    classify_on: str = "both"  # crops | photo | both
    crop_margin: float = 0.15
    max_crops: int = 8
    gap: str = "30m"
    method: str = "sessions"
    split_species: bool = False  # split a visit where another species holds a sustained run
    count_rule: str = "max"  # max | confirmed (the largest count seen twice)
    batch_size: int = 16
    group_level: int | None = None
    time_pattern: str | None = None
    trust_checkpoint: bool = False
    allow_detector_labels: bool = False  # classifier weights missing: use the detector's labels
    deployments: str | None = None  # CSV with deploymentID/camera, latitude, longitude
    utc_offset: str | None = None  # the cameras' clock offset (+03:00); None: unknown
    media_url: str | None = None  # where the photos will be published, for Camtrap DP
    video_fps: float = 1.0  # frames a second sampled from video clips (0: clips not read)
    # SpeciesNet's geofence: where the cameras are (ISO 3166-1 alpha-3; a US state's code)
    country: str | None = None
    admin1_region: str | None = None
    geofence: bool = True


def trap_fingerprint(settings: TrapSettings, prompts: PromptSet | None) -> dict:
    """Everything that changes the per-photo numbers, from the settings alone (no model is
    loaded for it). ``prompts`` is None when the detector's labels are the classes."""
    s = settings
    if not s.detector and not s.classifier:
        raise ValueError("with --detector none a classifier names the species: give "
                         "--classifier, or a detector")
    check_classifiers(s)
    fp = {"job": "traps", "detector": s.detector, "detector_model": model_fingerprint(s.detector),
          "threshold": s.threshold, "video_fps": s.video_fps}
    if not s.classifier or (uses_prompts(s) and prompts is None):
        return fp
    fp["classifier"] = {"model": s.classifier, **model_fingerprint(s.classifier)}
    if s.more_classifiers:
        fp["more_classifiers"] = [{"model": m, **model_fingerprint(m)}
                                  for m in s.more_classifiers]
    specs = classifiers(s)
    if not all(speaks_prompts(m) for m in specs):
        fp.update(ensemble="speciesnet", crops="full-res, the package's own",
                  max_crops=s.max_crops, country=s.country, admin1_region=s.admin1_region,
                  geofence=s.geofence)
    if prompts is not None and any(speaks_prompts(m) for m in specs):
        prompts_text = json.dumps([c.__dict__ for c in prompts.classes], sort_keys=True)
        fp.update(classify_on=classify_on(s), crop_margin=s.crop_margin, max_crops=s.max_crops,
                  crops="full-res padded", embedding="float32 vote-weighted mean",
                  prompts=hashlib.sha256(prompts_text.encode()).hexdigest()[:16])
        if "ensemble" in fp:  # the prompt models' crops are kadr's, SpeciesNet's its own
            fp["crops"] = "full-res padded; SpeciesNet's its own"
    return fp


def classifiers(settings: TrapSettings) -> list[str]:
    """Every classifier of a run, the first first; [] without one."""
    return [settings.classifier, *settings.more_classifiers] if settings.classifier else []


def speaks_prompts(spec: str) -> bool:
    """Whether a classifier names classes from prompts (an image-text model) rather than
    from labels of its own (SpeciesNet)."""
    try:
        backend = backends().get(ModelSpec.parse(spec).backend)
    except SpecError:
        return True  # loading it says what is wrong
    return backend is None or backend.kind == "image-text"


def uses_prompts(settings: TrapSettings) -> bool:
    """Whether the (first) classifier names classes from prompts; False without one."""
    return bool(settings.classifier) and speaks_prompts(settings.classifier)


def check_classifiers(settings: TrapSettings) -> None:
    """Several classifiers are told apart by their public names (a classifier named twice,
    or two that publish as one, is refused), and the geofence is checked."""
    if settings.more_classifiers and not settings.classifier:
        raise ValueError("more classifiers need a first one: --classifier none stands alone")
    names = [ModelSpec.parse(m).public_name() for m in classifiers(settings)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--classifier {twice[0]} is given twice: each classifier of an "
                         "ensemble once")
    check_geofence(settings)


def check_geofence(settings: TrapSettings) -> None:
    """A country or region is SpeciesNet's geofence: refused in the forms it cannot read,
    and without a SpeciesNet classifier (it would change nothing, silently)."""
    s = settings
    if s.country is None and s.admin1_region is None:
        return
    if all(speaks_prompts(m) for m in classifiers(s)):
        raise ValueError("--country and --admin1-region are SpeciesNet's geofence: they need "
                         "--classifier speciesnet:... (or --ensemble speciesnet)")
    if not s.country:
        raise ValueError("--admin1-region needs --country")
    if not re.fullmatch(r"[A-Z]{3}", s.country):
        raise ValueError(f"--country {s.country!r}: give the country as an ISO 3166-1 alpha-3 "
                         "code in capitals (USA, KEN, RUS)")
    if s.admin1_region is not None and not re.fullmatch(r"[A-Z]{2}", s.admin1_region):
        raise ValueError(f"--admin1-region {s.admin1_region!r}: SpeciesNet's regions are US "
                         "states by their two-letter code (CA, MT)")


def run_prompts(settings: TrapSettings) -> PromptSet | None:
    """The class prompts a run's classifiers read; None when each has labels of its own or
    there is no classifier."""
    return (settings_prompts(settings) if any(speaks_prompts(m) for m in classifiers(settings))
            else None)


def classify_on(settings: TrapSettings) -> str:
    """What the classifier looks at: without a detector there are no crops, only photos."""
    return settings.classify_on if settings.detector else "photo"


def settings_prompts(settings: TrapSettings) -> PromptSet:
    """The class prompts a run uses: the user's file, else the shipped example."""
    return load_prompts(settings.prompts or str(EXAMPLE))


def classified_by(settings: TrapSettings, model: str | None = None) -> str:
    """Who classified a run's observations, as Camtrap DP's classifiedBy names it: kadr's
    release and the models (by their public names: no path of this machine). ``model``:
    the classifier whose vote won (an ensemble's), named alone with the detector."""
    from kadr import __version__

    named = [model] if model else [ModelSpec.parse(m).public_name() for m in classifiers(settings)]
    models = [*named, *([ModelSpec.parse(settings.detector).public_name()]
                        if settings.detector else [])]
    return f"kadr {__version__} ({', '.join(models)})" if models else f"kadr {__version__}"


def registration_options(settings: TrapSettings | dict) -> dict:
    """How a run's visits become registrations: the rule's own options (a recorded
    settings dict from before they existed gives the defaults)."""
    get = settings.get if isinstance(settings, dict) else settings.__dict__.get
    return {"split_species": bool(get("split_species", False)),
            "count_rule": get("count_rule", "max") or "max"}


def saved_settings(saved: dict) -> TrapSettings:
    """The settings of an earlier run, as ``summary.json`` recorded them."""
    known = TrapSettings.__dataclass_fields__
    return TrapSettings(**{k: v for k, v in saved.items() if k in known and k != "engine"})


def recorded_settings(settings: TrapSettings) -> dict:
    """The settings as ``summary.json`` keeps them (where the batches ran is not one)."""
    return {k: v for k, v in settings.__dict__.items() if k != "engine"}


def saved_prompts(saved: dict) -> PromptSet | None:
    """The class prompts an earlier run used; None without a classifier, or when its prompt
    file is gone or unreadable (the run's own tables still name every class)."""
    if not saved.get("classifier"):
        return None
    try:
        return run_prompts(saved_settings(saved))
    except (OSError, ValueError):
        return None
