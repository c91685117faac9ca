"""Vertex AI image generation with a primary and a fallback model (the seam pilot's setup).

Two REST methods on ``{endpoint}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}``:

- ``:generateContent`` for Gemini image models (same body as :mod:`.gemini`: template + style refs);
- ``:predict`` for Imagen edit models (``imagen-*``): mask-based inpainting of the infill box
  (``EDIT_MODE_INPAINT_INSERTION``; the red border lies inside the mask, so it is repainted).

Quota: when the primary model answers HTTP 429 / ``RESOURCE_EXHAUSTED`` (``fallback_after_429s``
times), the call moves to the fallback model, which has its own quota, and provenance records the
fallback. ``retry_max`` (retries per model) and ``retry_max_ms`` (cap on one backoff wait) mirror
the pilot's settings. The bearer token comes from a callable (production: :func:`google_auth_token_provider`),
asked once per attempt so refreshed tokens are picked up; tokens are redacted from every message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from isonyc_dagster.backends import transport
from isonyc_dagster.backends.base import BackendConfigError, BackendError, GenerationRequest, GenerationResult
from isonyc_dagster.backends.gemini import DEFAULT_PROMPT as GEMINI_PROMPT
from isonyc_dagster.backends.gemini import ContentOptions, ContentStyleRefs
from isonyc_dagster.backends.modal import DEFAULT_PROMPT as INFILL_PROMPT
from isonyc_dagster.backends.modal import new_seed
from isonyc_dagster.backends.remote import RemoteBackend
from isonyc_dagster.backends.transport import AttemptError, CallFailed, HttpSettings
from isonyc_dagster.backends.validate import CheckedImage, checked_b64
from isonyc_dagster.images import png_bytes


def google_auth_token_provider(
    scopes: tuple[str, ...] = ("https://www.googleapis.com/auth/cloud-platform",),
) -> Callable[[], str]:
    """A token callable backed by Application Default Credentials (refreshed when expired)."""
    import google.auth
    import google.auth.transport.requests

    creds, _project = google.auth.default(scopes=list(scopes))
    lock = threading.Lock()

    def token() -> str:
        with lock:
            if not creds.valid:
                creds.refresh(google.auth.transport.requests.Request())
            return str(creds.token)

    return token


class ImagenPrediction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    bytesBase64Encoded: str = Field(min_length=1)  # noqa: N815 - wire name
    mimeType: str = "image/png"  # noqa: N815 - wire name


class ImagenResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    predictions: list[ImagenPrediction] = Field(min_length=1)


def infill_mask_png(size: tuple[int, int], box: tuple[int, int, int, int]) -> bytes:
    """White (edit) inside the infill box, black (keep) elsewhere."""
    w, h = size
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise BackendError(f"vertex: infill_box {box} is not inside the {w}×{h} template")
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return png_bytes(mask)


class VertexBackend(ContentStyleRefs, RemoteBackend):
    """Vertex AI (Gemini image or Imagen edit models) with 429 fallback to a second model."""

    name = "vertex"

    def __init__(
        self,
        project: str,
        *,
        token_provider: Callable[[], str],
        location: str = "global",
        model: str = "gemini-3-pro-image-preview",
        fallback_model: str | None = "gemini-2.5-flash-image",
        endpoint: str | None = None,
        retry_max: int = 4,
        retry_max_ms: int = 30_000,
        fallback_after_429s: int = 1,
        default_prompt: str | None = None,
        image_size: str | None = None,
        require_style_ref: bool = False,
        max_style_refs: int = 2,
        accept_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP"),
        http: HttpSettings | None = None,
    ) -> None:
        if not project:
            raise BackendConfigError("vertex project is empty; give the GCP project id")
        if not callable(token_provider):
            raise BackendConfigError("vertex token_provider must be a callable returning a bearer token")
        if retry_max < 0 or retry_max_ms < 0 or fallback_after_429s < 1:
            raise BackendConfigError(
                "vertex retry_max and retry_max_ms must be >= 0 and fallback_after_429s >= 1"
            )
        if endpoint is None:
            endpoint = (
                "https://aiplatform.googleapis.com"
                if location == "global"
                else f"https://{location}-aiplatform.googleapis.com"
            )
        if not endpoint.startswith(("http://", "https://")):
            raise BackendConfigError(f"vertex endpoint must be an http(s) URL, got {endpoint!r}")
        self.project = project
        self.location = location
        self.fallback_model = fallback_model
        self.endpoint = endpoint.rstrip("/")
        self.fallback_after_429s = fallback_after_429s
        self.default_prompt = default_prompt
        self.content = ContentOptions(image_size, max_style_refs, require_style_ref, tuple(accept_formats))
        self._token_provider = token_provider
        # retry_max / retry_max_ms are the pilot's names for these two HTTP settings.
        settings = (http or HttpSettings()).model_copy(
            update={"max_attempts": retry_max + 1, "backoff_max_s": retry_max_ms / 1000.0}
        )
        super().__init__(model_id=model, http=settings)

    def __repr__(self) -> str:
        return (
            f"VertexBackend(project={self.project!r}, location={self.location!r}, model={self.model_id!r}, "
            f"fallback_model={self.fallback_model!r})"
        )

    def _url(self, model: str, method: str) -> str:
        return (
            f"{self.endpoint}/v1/projects/{self.project}/locations/{self.location}"
            f"/publishers/google/models/{model}:{method}"
        )

    def _headers(self) -> dict[str, str]:
        try:
            token = self._token_provider()
        except Exception as e:
            raise AttemptError(
                f"could not obtain a bearer token ({type(e).__name__}); check Google credentials (ADC)",
                transient=False,
            ) from None
        self.transport.redact.add(token)
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def _body(
        self, model: str, request: GenerationRequest, size: tuple[int, int], seed: int
    ) -> tuple[str, dict[str, Any]]:
        if model.startswith("imagen"):
            if request.infill_box is None:
                raise BackendError(f"vertex: {model} inpaints a mask and needs request.infill_box")
            mask = infill_mask_png(size, request.infill_box)
            parameters: dict[str, Any] = {
                "editMode": "EDIT_MODE_INPAINT_INSERTION",
                "sampleCount": 1,
                "seed": seed,
                "addWatermark": False,  # a seed is only honoured without the watermark
                "outputOptions": {"mimeType": "image/png"},
            }
            if request.negative_prompt:
                parameters["negativePrompt"] = request.negative_prompt
            body = {
                "instances": [
                    {
                        "prompt": request.prompt or self.default_prompt or INFILL_PROMPT,
                        "referenceImages": [
                            {
                                "referenceType": "REFERENCE_TYPE_RAW",
                                "referenceId": 1,
                                "referenceImage": {"bytesBase64Encoded": transport.b64(request.template_png)},
                            },
                            {
                                "referenceType": "REFERENCE_TYPE_MASK",
                                "referenceId": 2,
                                "referenceImage": {"bytesBase64Encoded": transport.b64(mask)},
                                "maskImageConfig": {"maskMode": "MASK_MODE_USER_PROVIDED", "dilation": 0.0},
                            },
                        ],
                    }
                ],
                "parameters": parameters,
            }
            return "predict", body
        refs = request.style_refs[: self.content.max_style_refs]
        prompt = request.prompt or self.default_prompt or GEMINI_PROMPT
        body = self.content.body(
            request, prompt=prompt, style_refs=refs, seed=seed, size=size, backend=self.name
        )
        return "generateContent", body

    def _call_model(
        self, model: str, request: GenerationRequest, size: tuple[int, int], seed: int, *, is_last: bool
    ) -> tuple[CheckedImage, str | None, int]:
        method, body = self._body(model, request, size, seed)
        url = self._url(model, method)
        seen_429 = 0

        def attempt() -> tuple[CheckedImage, str | None]:
            headers = self._headers()
            data = self.transport.request_json(
                "POST", url, what=f"{model}:{method}", json=body, headers=headers
            )
            if method == "generateContent":
                return self.content.image(data, what=f"{model}:generateContent", size=size)
            resp: ImagenResponse = transport.parse_model(ImagenResponse, data, what=f"{model}:predict")
            image = checked_b64(
                resp.predictions[0].bytesBase64Encoded,
                expected_size=size,
                what=f"{model} image",
                formats=self.content.accept_formats,
            )
            return image, None

        def give_up(err: AttemptError) -> bool:
            nonlocal seen_429
            if err.rate_limited:
                seen_429 += 1
                return not is_last and seen_429 >= self.fallback_after_429s
            return False

        (image, version), attempts = self.transport.call(attempt, what=f"{model}:{method}", give_up=give_up)
        return image, version, attempts

    def generate(self, request: GenerationRequest) -> GenerationResult:
        call = self._begin(request)
        refs = self.content.style_refs(request, backend=self.name)
        seed = request.seed if request.seed is not None else new_seed()
        models = [self.model_id] + ([self.fallback_model] if self.fallback_model else [])
        fallbacks: list[dict[str, Any]] = []
        total_attempts = 0
        for i, model in enumerate(models):
            is_last = i == len(models) - 1
            try:
                image, version, attempts = self._call_model(model, request, call.size, seed, is_last=is_last)
            except CallFailed as e:
                total_attempts += e.attempts
                if e.rate_limited and not is_last:
                    fallbacks.append(
                        {
                            "from": model,
                            "to": models[i + 1],
                            "reason": "rate limited (429 RESOURCE_EXHAUSTED)",
                        }
                    )
                    continue
                # The same failure, counting every model's attempts and naming the ones given up on.
                if fallbacks:
                    e.args = (f"{e} (after falling back from {', '.join(f['from'] for f in fallbacks)})",)
                e.attempts = total_attempts
                raise
            total_attempts += attempts
            return call.result(
                image.png,
                seed=seed,
                attempts=total_attempts,
                model_id=model,
                primary_model=self.model_id,
                fallbacks=fallbacks,
                model_version=version,
                style_refs=len(refs) if not model.startswith("imagen") else 0,
                output_format=image.source_format,
            )
        raise AssertionError("unreachable: the last model either returns or raises")
