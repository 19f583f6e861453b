"""Model specs and the one factory that builds every model kadr runs."""

from kadr.core.models.factory import KnownModel, known_models, load_model, register_backend
from kadr.core.models.spec import ModelSpec, SpecError
from kadr.core.models.weights import UnsafeCheckpointError, WeightsNotFoundError

__all__ = [
    "ImageTextModel",
    "KnownModel",
    "ModelSpec",
    "SpecError",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "known_models",
    "load_model",
    "register_backend",
]


def __getattr__(name: str):
    # ImageTextModel needs torch; importing it on first use keeps `import kadr.cli` (and so
    # every command's start) free of torch.
    if name == "ImageTextModel":
        from kadr.core.models.image_text import ImageTextModel

        return ImageTextModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
