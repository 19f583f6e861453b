"""Model specs and the one factory that builds every model kadr runs."""

from kadr.core.models.factory import KnownModel, known_models, load_model, register_backend
from kadr.core.models.image_text import ImageTextModel
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
