"""Which precision a model's weights run in: ``kadr --precision`` (``KADR_PRECISION``).

``fp32``, ``fp16`` and ``bf16`` are taken as asked. ``auto`` is half precision on a
GPU, and on the CPU the fastest precision that is faithful there: bf16 weights only
where the CPU computes bf16 natively (AMX, AVX512-BF16, Arm's BF16) *and* a short
measurement on this machine finds them faster than fp32 for the model's family (a
transformer block, or a convolution stack, of the sizes kadr's models use). Elsewhere
(AVX2, most laptops) bf16 is emulated and slower, so fp32. The measurement is made once
per CPU, family and torch version and kept in kadr's cache folder
(``precision.json``), so a run decides without loading or timing anything, the same way
in a Ray driver and its actors. Faithfulness at bf16 is what the test suite shows on
full-size architectures (per-photo cosine to fp32 >= 0.99).

The precision decided is in every result store's fingerprint (see
:func:`kadr.core.models.factory.model_fingerprint`): a resume on a machine that would
decide otherwise is refused with both fingerprints shown, never mixed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from kadr.core.cache import cache_dir
from kadr.core.models.spec import PRECISION_ENV, SpecError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
FAMILIES = ("transformer", "conv")  # what the measurement times, per model family
NATIVE_BF16 = ("amx_bf16", "avx512_bf16", "bf16")  # /proc/cpuinfo flags (x86) / Features (Arm)
MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this much to be chosen (noise on a busy machine)


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32, fp16 or bf16
    reason: str  # said by `kadr models --device`


def precision_setting() -> str:
    """``KADR_PRECISION`` (``kadr --precision``): auto, fp32, fp16 or bf16."""
    want = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if want not in PRECISIONS:
        raise SpecError(f"{PRECISION_ENV}={want!r} is not one of {', '.join(PRECISIONS)}")
    return want


def cpu_features() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags, as Linux lists them (empty elsewhere)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and value.strip():
                    name = value.strip()
                elif key in ("flags", "features"):
                    flags |= set(value.split())
                if key == "" and flags:  # the first processor's block is enough
                    break
    except OSError:
        pass
    return name, flags


def choose_cpu_precision(family: str) -> PrecisionChoice:
    """``auto`` on the CPU for a model family: fp32 without native bf16, else what the
    cached (or, the first time, a new) measurement found faster."""
    name, flags = cpu_features()
    native = [f for f in NATIVE_BF16 if f in flags]
    if not native:
        return PrecisionChoice("fp32", f"this CPU ({name}) has no native bf16 (AMX, "
                                       "AVX512-BF16 or Arm BF16): bf16 would be emulated")
    import torch

    key = f"{name} | {' '.join(native)} | torch {torch.__version__} | {family}"
    path = cache_dir() / "precision.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if not isinstance(entry, dict) or "speedup" not in entry:
        fp32_s, bf16_s = measure_family(family)
        entry = {"speedup": round(fp32_s / bf16_s, 2), "fp32_s": fp32_s, "bf16_s": bf16_s,
                 "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
        known[key] = entry
        from kadr.core.store import atomic_write_text  # pyarrow only when measuring

        atomic_write_text(path, json.dumps(known, indent=2, sort_keys=True))
    speedup = float(entry["speedup"])
    said = (f"{speedup:.2f}x fp32 for {family} models on this CPU ({name}, {', '.join(native)}), "
            f"measured {entry.get('measured', '?')}, kept in {path}")
    if speedup >= MIN_SPEEDUP:
        return PrecisionChoice("bf16", "bf16 weights: " + said)
    return PrecisionChoice("fp32", f"fp32: bf16 ran only {said}")


def measure_family(family: str, rounds: int = 3, reps: int = 3) -> tuple[float, float]:
    """Seconds per call of a small workload of the family in fp32 and in bf16 weights,
    interleaved over ``rounds`` and the best of each kept (the machine's speed drifts)."""
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}: {', '.join(FAMILIES)}")
    torch.manual_seed(0)
    if family == "transformer":  # a ViT-B block on 8 photos of 50 tokens
        module = torch.nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True)
        x = torch.randn(8, 50, 768)
    else:  # the convolutions of a detector's or a UNet's middle stage
        module = torch.nn.Sequential(torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.SiLU(),
                                     torch.nn.Conv2d(128, 128, 3, padding=1))
        x = torch.randn(1, 64, 48, 48)
    runs = {"fp32": (module.eval(), x)}
    import copy

    runs["bf16"] = (copy.deepcopy(module).to(torch.bfloat16), x.to(torch.bfloat16))
    best = {k: float("inf") for k in runs}
    with torch.inference_mode():
        for m, inp in runs.values():
            m(inp)  # warm-up: kernels chosen, memory allocated
        for _ in range(rounds):
            for k, (m, inp) in runs.items():
                start = time.perf_counter()
                for _ in range(reps):
                    m(inp)
                best[k] = min(best[k], (time.perf_counter() - start) / reps)
    return best["fp32"], best["bf16"]


def resolved_precision(family: str | None, device_type: str) -> str:
    """The precision a model of ``family`` runs in on a device of ``device_type`` (family
    ``None``: not a torch model kadr converts, e.g. an ONNX detector: fp32)."""
    want = precision_setting()
    if family is None:
        return "fp32"
    if want != "auto":
        return want
    if device_type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device_type != "cpu":
        return "fp32"
    return choose_cpu_precision(family).precision


def precision_report(device_type: str) -> list[str]:
    """What ``--precision`` resolves to here, per model family, and why (``kadr models
    --device``)."""
    want = precision_setting()
    lines = [f"precision: {want} ({PRECISION_ENV})"]
    for family in FAMILIES:
        chosen = resolved_precision(family, device_type)
        if want != "auto":
            why = "as asked"
        elif device_type == "cpu":
            why = choose_cpu_precision(family).reason
        else:
            why = f"half precision on {device_type}"
        lines.append(f"  {family} models: {chosen} ({why})")
    lines.append("  SpeciesNet: as conv models; ONNX detectors (yolox) and MegaDetector: fp32, as "
                 "they ship")
    return lines
