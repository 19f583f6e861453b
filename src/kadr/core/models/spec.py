"""Model specs: ``BACKEND:NAME[@WEIGHTS]``, e.g. ``open_clip:ViT-B-32@laion2b_s34b_b79k``."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

PRECISION_ENV = "KADR_PRECISION"  # kadr --precision: auto, fp32, fp16 or bf16
WEIGHT_FILES = (".onnx", ".pt", ".pth", ".safetensors", ".bin", ".ckpt", ".pkl")


class SpecError(ValueError):
    """A model spec that cannot be parsed or names an unknown backend/model."""


@dataclass(frozen=True)
class ModelSpec:
    backend: str
    name: str
    weights: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        text = text.strip()
        backend, sep, rest = text.partition(":")
        if not sep or not backend or not rest:
            raise SpecError(
                f"model spec {text!r} is not BACKEND:NAME[@WEIGHTS] "
                "(e.g. open_clip:ViT-B-32@laion2b_s34b_b79k, yolox:models/yolox_nano.onnx)"
            )
        # A path may contain '@' only in the weights part; split on the last '@'.
        name, at, weights = rest.rpartition("@")
        if not at:
            name, weights = rest, None
        return cls(backend.strip(), name.strip(), (weights or "").strip() or None)

    def __str__(self) -> str:
        return f"{self.backend}:{self.name}" + (f"@{self.weights}" if self.weights else "")

    def public_name(self) -> str:
        """The spec as it may be published (Camtrap DP's classifiedBy): a local path,
        name or weights, by its file or folder name alone; hub ids and tags as they are."""
        def public(part: str | None) -> str | None:
            if part is None:
                return None
            local = (os.path.isabs(part) or part.startswith(("~", ".")) or
                     part.lower().endswith(WEIGHT_FILES) or os.path.exists(part))
            return os.path.basename(part.rstrip("/\\")) if local else part
        weights = public(self.weights)
        return f"{self.backend}:{public(self.name)}" + (f"@{weights}" if weights else "")

    @property
    def is_random(self) -> bool:
        return self.weights == "random"

    def seed(self) -> int:
        """A stable seed for ``@random`` weights: same spec, same numbers, every run."""
        return int(hashlib.sha256(str(self).encode()).hexdigest()[:8], 16)
