"""Image-generation backends: one interface for the offline pixel-art backend and every remote model."""

from isonyc_dagster.backends.base import (
    BackendConfigError,
    BackendError,
    GenerationRequest,
    GenerationResult,
    ImageBackend,
)

__all__ = ["BackendConfigError", "BackendError", "GenerationRequest", "GenerationResult", "ImageBackend"]
