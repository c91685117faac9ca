"""Image-generation backends: one interface for the offline pixel-art backend and every remote model."""

from .base import BackendError, GenerationRequest, GenerationResult, ImageBackend

__all__ = ["BackendError", "GenerationRequest", "GenerationResult", "ImageBackend"]
