"""Gemini "Nano Banana" (``gemini-3-pro-image-preview``) through the REST ``generateContent`` API.

Plain httpx against a configurable base URL (tests point it at 127.0.0.1; google-genai would work
too, but adds nothing over one POST and hides the wire format we must validate). The API key goes
in the ``x-goog-api-key`` header, never in the URL.

Unlike the original we do not burn text labels into the template (they covered context and infill)
and never resize the answer: the prompt names the images, and an answer that is not exactly the
template size is refused.

The request/response code (:class:`ContentOptions`) is shared with the Vertex backend (same ``generateContent``
format).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr

from isonyc_dagster.backends import transport
from isonyc_dagster.backends.base import BackendConfigError, BackendError, GenerationRequest, GenerationResult
from isonyc_dagster.backends.modal import new_seed
from isonyc_dagster.backends.remote import RemoteBackend
from isonyc_dagster.backends.transport import AttemptError, HttpSettings
from isonyc_dagster.backends.validate import CheckedImage, InvalidImage, checked_b64, validate_image

#: Style-transfer instructions (the original's "PIXEL ART STYLE TRANSFER TASK", without image labels).
DEFAULT_PROMPT = """PIXEL ART STYLE TRANSFER TASK.
Image A is a template: a 3D render of New York City seen from an isometric camera. Part of it is
outlined by a 2-pixel pure red (#FF0000) rectangle; pixels outside the rectangle are already
finished pixel art. Image B is a style reference: finished tiles of the same map.
Redraw ONLY the area inside the red rectangle as SimCity 3000 era isometric pixel art in exactly the
style, palette and scale of Image B, following the shapes, heights and positions of the buildings,
streets, parks and water in Image A. Continue every line, road, roof and texture seamlessly across
the rectangle's edges into the surrounding pixel art. Remove the red border completely. Keep every
pixel outside the rectangle unchanged. Do not copy Image B's content. Output one image of exactly
the same size as Image A, with no text, labels or borders."""

_BLOCKED_FINISH = {
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "RECITATION",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
}
_IMAGE_SIZE_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}
_ASPECT_RATIOS = {"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"}


def _alias(*names: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(*names))


class InlineData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    mime_type: str = Field(validation_alias=AliasChoices("mimeType", "mime_type"))
    data: str = Field(min_length=1)


class Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str | None = None
    inline_data: InlineData | None = _alias("inlineData", "inline_data")
    thought: bool = False  # Gemini 3 image models return draft "thought" images: never the answer


class Content(BaseModel):
    model_config = ConfigDict(extra="ignore")
    parts: list[Part] = Field(default_factory=list)


class Candidate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: Content | None = None
    finish_reason: str | None = _alias("finishReason", "finish_reason")


class PromptFeedback(BaseModel):
    model_config = ConfigDict(extra="ignore")
    block_reason: str | None = _alias("blockReason", "block_reason")


class GenerateContentResponse(BaseModel):
    """The subset of the ``generateContent`` response we rely on."""

    model_config = ConfigDict(extra="ignore")
    candidates: list[Candidate] = Field(default_factory=list)
    prompt_feedback: PromptFeedback | None = _alias("promptFeedback", "prompt_feedback")
    model_version: str | None = _alias("modelVersion", "model_version")


def aspect_ratio(size: tuple[int, int], *, backend: str) -> str:
    w, h = size
    g = gcd(w, h)
    ratio = f"{w // g}:{h // g}"
    if ratio not in _ASPECT_RATIOS:
        raise BackendError(
            f"{backend}: template {w}×{h} has aspect ratio {ratio}, which the model cannot produce"
        )
    return ratio


@dataclass(frozen=True)
class ContentOptions:
    """What the Gemini and Vertex backends share: how to build a ``generateContent`` call, which answers to accept."""

    image_size: str | None  # "1K", "2K", "4K", or None for the model's default
    max_style_refs: int
    require_style_ref: bool
    #: The model picks its own encoding; JPEG/WebP answers are decoded and stored as lossless PNG.
    accept_formats: tuple[str, ...]

    def style_refs(self, request: GenerationRequest, *, backend: str) -> tuple[bytes, ...]:
        """The request's style references this model gets, each a valid image; refused when required and absent."""
        refs = request.style_refs[: self.max_style_refs]
        if self.require_style_ref and not refs:
            raise BackendError(
                f"{backend}: no style reference in the request; pass one 2×2 reference tile in style_refs "
                "(mark reference quadrants in the store), or set require_style_ref=False"
            )
        for i, ref in enumerate(refs):
            try:
                validate_image(ref, expected_size=None, what=f"style reference {i}")
            except InvalidImage as e:
                raise BackendError(f"{backend}: bad request: {e}") from None
        return refs

    def body(
        self,
        request: GenerationRequest,
        *,
        prompt: str,
        style_refs: tuple[bytes, ...],
        seed: int,
        size: tuple[int, int],
        backend: str,
    ) -> dict[str, Any]:
        """The ``generateContent`` body: instructions, Image A (the template, of ``size``), Image B (style reference)."""
        text = prompt
        if request.negative_prompt:
            text += f"\n\nAVOID: {request.negative_prompt}"
        parts: list[dict[str, Any]] = [
            {"text": text},
            {"text": "Image A (template):"},
            {"inline_data": {"mime_type": "image/png", "data": transport.b64(request.template_png)}},
        ]
        for i, ref in enumerate(style_refs):
            label = "Image B (style reference):" if i == 0 else f"Style reference {i + 1}:"
            parts += [
                {"text": label},
                {"inline_data": {"mime_type": "image/png", "data": transport.b64(ref)}},
            ]
        if request.color_ref:
            parts += [
                {"text": "COLOR REFERENCE (photoreal render of Image A's area; use its colours):"},
                {"inline_data": {"mime_type": "image/png", "data": transport.b64(request.color_ref)}},
            ]
        image_config: dict[str, Any] = {"aspectRatio": aspect_ratio(size, backend=backend)}
        if self.image_size:
            image_config["imageSize"] = self.image_size
        return {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": {
                "responseModalities": ["TEXT", "IMAGE"],
                "imageConfig": image_config,
                "seed": seed,
            },
        }

    def image(self, data: Any, *, what: str, size: tuple[int, int]) -> tuple[CheckedImage, str | None]:
        """The answer image of a ``generateContent`` response, checked (``size``, ``accept_formats``); model version."""
        resp: GenerateContentResponse = transport.parse_model(GenerateContentResponse, data, what=what)
        if resp.prompt_feedback and resp.prompt_feedback.block_reason:
            raise AttemptError(
                f"{what}: prompt blocked ({resp.prompt_feedback.block_reason})", transient=False
            )
        if not resp.candidates:
            raise AttemptError(f"{what}: response has no candidates", transient=True, endpoint_failure=True)
        cand = resp.candidates[0]
        parts = cand.content.parts if cand.content else []
        images = [p.inline_data for p in parts if p.inline_data is not None and not p.thought]
        images = [d for d in images if d is not None and d.mime_type.startswith("image/")]
        if not images:
            reason = cand.finish_reason or "unknown"
            said = " ".join(p.text for p in parts if p.text and not p.thought)[:200]
            blocked = reason.upper() in _BLOCKED_FINISH
            raise AttemptError(
                f"{what}: model returned no image (finishReason={reason}{'; text: ' + repr(said) if said else ''})",
                transient=not blocked,
            )
        image = checked_b64(
            images[0].data, expected_size=size, what=f"{what} image", formats=self.accept_formats
        )
        return image, resp.model_version


class ContentStyleRefs:
    """The style-reference policy of a backend that builds Gemini content (the Gemini API and Vertex AI)."""

    uses_style_refs = True
    content: ContentOptions

    @property
    def requires_style_ref(self) -> bool:
        return self.content.require_style_ref

    @property
    def max_style_refs(self) -> int:
        return self.content.max_style_refs


class GeminiBackend(ContentStyleRefs, RemoteBackend):
    """Gemini API (AI Studio key) image generation from template + one 2×2 style reference tile."""

    name = "gemini"

    def __init__(
        self,
        api_key: str,
        *,
        model: str = "gemini-3-pro-image-preview",
        base_url: str = "https://generativelanguage.googleapis.com",
        api_version: str = "v1beta",
        default_prompt: str = DEFAULT_PROMPT,
        image_size: str | None = "1K",
        max_style_refs: int = 2,
        require_style_ref: bool = True,
        accept_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP"),
        http: HttpSettings | None = None,
    ) -> None:
        if not api_key:
            raise BackendConfigError(
                "gemini api_key is empty; set it from the environment (e.g. GEMINI_API_KEY)"
            )
        if image_size is not None and image_size not in _IMAGE_SIZE_SIDE:
            raise BackendConfigError(
                f"gemini image_size must be one of {sorted(_IMAGE_SIZE_SIDE)} or None (model default), got {image_size!r}"
            )
        if not base_url.startswith(("http://", "https://")):
            raise BackendConfigError(f"gemini base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.default_prompt = default_prompt
        self._api_key = SecretStr(api_key)
        self.content = ContentOptions(image_size, max_style_refs, require_style_ref, tuple(accept_formats))
        super().__init__(model_id=model, http=http, secrets=[api_key])

    def __repr__(self) -> str:
        return f"GeminiBackend(model={self.model_id!r}, base_url={self.base_url!r})"

    def generate(self, request: GenerationRequest) -> GenerationResult:
        call = self._begin(request)
        size = call.size
        image_size = self.content.image_size
        side = _IMAGE_SIZE_SIDE.get(image_size or "", 0)
        if side and (size[0] != size[1] or size[0] != side):
            # Fail before paying for a call whose answer could only be refused (we never resize).
            raise BackendError(
                f"gemini: template is {size[0]}×{size[1]} but image_size={image_size} answers {side}×{side}; "
                f"send a {side}×{side} template or change image_size"
            )
        refs = self.content.style_refs(request, backend=self.name)
        seed = request.seed if request.seed is not None else new_seed()
        prompt = request.prompt or self.default_prompt
        body = self.content.body(
            request, prompt=prompt, style_refs=refs, seed=seed, size=size, backend=self.name
        )
        url = f"{self.base_url}/{self.api_version}/models/{self.model_id}:generateContent"
        headers = {"x-goog-api-key": self._api_key.get_secret_value(), "Content-Type": "application/json"}

        def attempt() -> tuple[CheckedImage, str | None]:
            data = self.transport.request_json(
                "POST", url, what="generateContent", json=body, headers=headers
            )
            return self.content.image(data, what="generateContent", size=size)

        (image, model_version), attempts = self.transport.call(attempt, what="generateContent")
        return call.result(
            image.png,
            seed=seed,
            attempts=attempts,
            model_version=model_version,
            style_refs=len(refs),
            style_refs_sha256=[transport.sha256(r) for r in refs],
            output_format=image.source_format,
        )
