"""The contract between a generation step and an image model.

A step sends a 1024² lossless PNG *template*: render pixels inside the infill rectangle (outlined by a
2 px #FF0000 border drawn inside it) and already generated context around it. The backend returns an
image of exactly the template's size whose infill is generated and whose context is (ideally) kept.
Validation of the output (size, red-border remnants, blank) is done by the caller (``template.py``).
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from isonyc_dagster.errors import IsonycError


class BackendConfigError(IsonycError, ValueError):
    """A backend cannot be built: unknown name, missing, unknown or invalid settings."""


class BackendError(IsonycError, RuntimeError):
    """A backend failed for good (after its retries); ``retryable`` says whether a later try may work."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class GenerationRequest:
    template_png: bytes  # lossless PNG, RGB, template size (1024×1024 in production)
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None  # None = backend picks one and reports it
    style_refs: tuple[bytes, ...] = ()  # optional PNG style references (e.g. a 2×2 reference tile)
    #: Optional PNG of the template's window rendered photoreal (``render_layer = "both"``): Gemini and Vertex send
    #: it as a "COLOR REFERENCE" image; the other backends ignore it.
    color_ref: bytes | None = None
    #: Infill rectangle in template pixels (x0, y0, x1, y1), exclusive end. The red border is inside it.
    infill_box: tuple[int, int, int, int] | None = None
    #: World pixel of the template's top-left corner: lets deterministic backends align textures to the map.
    origin_px: tuple[int, int] = (0, 0)
    #: Optional per-pixel render buffers for the whole template window, each (H, W):
    #: "surface" (uint8 Surface classes), "building" (int32 ids, 0 = none), "height" (float32 metres).
    #: Remote models ignore them; the offline backend uses them for outlines and textures.
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(f"{self.prompt}\x00{self.negative_prompt}".encode()).hexdigest()


@dataclass(frozen=True)
class GenerationResult:
    image_png: bytes
    #: backend, model_id, prompt_sha256, seed, latency_s, attempts, and backend-specific keys.
    #: Never contains secrets (keys, tokens, signed URLs).
    provenance: dict[str, Any]


class ImageBackend(abc.ABC):
    """A generation backend: template in, image out, plus provenance."""

    name: str = "abstract"
    model_id: str = ""
    #: Whether the model takes style images (``GenerationRequest.style_refs``): steps select and send them only then.
    uses_style_refs: bool = False

    @property
    def requires_style_ref(self) -> bool:
        """Whether a request without a style reference is refused (steps then fail before any call)."""
        return False

    @property
    def max_style_refs(self) -> int:
        """How many style references the model gets (extra ones are not sent)."""
        return 0

    @property
    def max_in_flight(self) -> int:
        """How many ``generate`` calls may usefully run at once (a step run keeps that many in flight)."""
        return 1

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and pools."""
