"""Image-generation backends: one interface for the offline pixel-art backend and every remote model."""

from isonyc_dagster.backends.base import BackendError, GenerationRequest, GenerationResult, ImageBackend

__all__ = ["BackendError", "GenerationRequest", "GenerationResult", "ImageBackend"]
