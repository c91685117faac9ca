"""Inference server: Qwen/Qwen-Image-Edit + our pixel-art LoRA behind the ``edit_b64`` endpoint.

Two layers:

- :func:`create_app` — a plain FastAPI app around any *pipeline* (a callable taking a PIL image, the
  validated request and the seed). It validates requests (base64, image format, size, steps and scale
  bounds) with clear 4xx errors, serialises GPU work, refuses to resize, and returns the seed it
  used. It takes PNG (lossless, what our client sends) and JPEG (what the original isometric.nyc client
  sends: q90, RGB on white), converts either to RGB and says in ``input_lossy`` which it got. Tests run it on 127.0.0.1 with a tiny fake pipeline: no GPU, no Modal account.
- The Modal deployment (``app`` / ``ImageEditor`` at the bottom), built only when this file is loaded by Modal
  (``modal deploy inference/server.py`` or inside the Modal container, where ``modal`` is already
  imported). ``modal``, ``torch`` and ``diffusers`` are imported only on that path. The container
  refuses to start if the LoRA cannot be loaded and activated: no silent base model.

Protocol::

    POST /edit_b64  {"image_b64": <PNG or JPEG base64>, "prompt": str, "negative_prompt": str|null,
                     "steps": 1..100, "true_cfg_scale": 0..20, "guidance_scale": 0..20, "seed": int|null}
    200             {"image_b64": <PNG base64>, "seed": int, "model_id": str, "lora": str,
                     "input_format": "PNG"|"JPEG", "input_lossy": bool}
    GET  /health    {"status": "ok", "model_id": str, "lora": str}

Deployment settings (read at deploy time, baked into the image; see inference/README.md):
``LORA_MODEL_ID`` (required; weights at ``/data/loras/<id>/`` on volume ``ISONYC_LORA_VOLUME``),
``LORA_WEIGHT_NAME``, ``BASE_MODEL``, ``BASE_MODEL_REVISION``, ``ISONYC_MODAL_APP``,
``ISONYC_REQUIRE_PROXY_AUTH`` (default 1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("isonyc_inference")

MAX_SIDE = 2048
MIN_SIDE = 64
#: Qwen-Image latents: VAE factor 8 × 2×2 patch packing.
SIDE_MULTIPLE = 16
MAX_STEPS = 100
#: base64 of a 2048² RGB PNG of noise is ~16 MB; anything bigger is not a template.
MAX_B64_CHARS = 24 * 1024 * 1024
ACCEPTED_FORMATS = ("PNG", "JPEG")
#: Accepted, but the template's pixels (the red border above all) are not exactly what was rendered.
LOSSY_FORMATS = ("JPEG",)
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"


class EditRequest(BaseModel):
    """One edit: the template and the generation parameters (``seed`` None = the server picks one)."""

    model_config = ConfigDict(extra="forbid")

    image_b64: str = Field(
        min_length=1, max_length=MAX_B64_CHARS, description="PNG (lossless) or JPEG, base64"
    )
    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    steps: int = Field(default=14, ge=1, le=MAX_STEPS)
    true_cfg_scale: float = Field(default=2.0, ge=0.0, le=20.0)
    guidance_scale: float = Field(default=3.0, ge=0.0, le=20.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


class EditResponse(BaseModel):
    image_b64: str
    seed: int
    model_id: str
    lora: str
    input_format: str  # the template's format as received
    input_lossy: bool  # True for JPEG: the model saw a lossy copy of the template


class EditPipeline(Protocol):
    """What the app needs from a model: ``__call__`` plus identifiers for provenance."""

    model_id: str
    lora: str

    def __call__(self, image: Image.Image, req: EditRequest, seed: int) -> Image.Image:
        """``image`` edited with ``req``'s prompt and parameters; ``seed`` replaces ``req.seed``."""


def _decode_template(image_b64: str) -> tuple[Image.Image, str]:
    """The template as RGB and its format; HTTPException with one clear line when it is unusable."""
    try:
        raw = base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, "image_b64 is not valid base64") from None
    try:
        im = Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError):
        raise HTTPException(
            400, f"image_b64 does not decode to an image ({len(raw)} bytes); send a PNG"
        ) from None
    fmt = im.format or "?"
    if fmt not in ACCEPTED_FORMATS:
        raise HTTPException(
            415, f"image is {fmt}; send a lossless PNG (JPEG is accepted too, but blurs the red border)"
        )
    w, h = im.size
    if w > MAX_SIDE or h > MAX_SIDE:
        raise HTTPException(413, f"image is {w}×{h}; at most {MAX_SIDE}×{MAX_SIDE}")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise HTTPException(400, f"image is {w}×{h}; at least {MIN_SIDE}×{MIN_SIDE}")
    if w % SIDE_MULTIPLE or h % SIDE_MULTIPLE:
        raise HTTPException(
            400, f"image is {w}×{h}; both sides must be multiples of {SIDE_MULTIPLE} (no resizing here)"
        )
    # Checked by hand too: PIL loads a truncated image when some library set LOAD_TRUNCATED_IMAGES.
    end = _PNG_IEND if fmt == "PNG" else _JPEG_EOI
    if not raw.rstrip(b"\x00").endswith(end):
        raise HTTPException(400, f"image does not decode (truncated {fmt}: {len(raw)} bytes)")
    try:
        im.load()
    except Exception as e:  # truncated or corrupt image
        raise HTTPException(400, f"image does not decode ({type(e).__name__}: {e})") from None
    return im.convert("RGB"), fmt


def create_app(pipeline: EditPipeline, *, title: str = "isonyc Qwen-Image-Edit + LoRA") -> FastAPI:
    """The HTTP app around ``pipeline``. One generation at a time (one GPU, one pipeline)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None)
    gpu_lock = threading.Lock()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes every input back, i.e. megabytes of base64: name field and problem only.
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": "; ".join(problems)})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model_id": pipeline.model_id, "lora": pipeline.lora}

    @app.post("/edit_b64", response_model=EditResponse)
    @app.post("/", response_model=EditResponse, include_in_schema=False)
    def edit_b64(req: EditRequest) -> EditResponse:
        image, fmt = _decode_template(req.image_b64)
        lossy = fmt in LOSSY_FORMATS
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        started = time.monotonic()
        with gpu_lock:
            out = pipeline(image, req, seed)
        if out.size != image.size:
            raise HTTPException(
                500,
                f"pipeline returned {out.size[0]}×{out.size[1]} for a {image.size[0]}×{image.size[1]} "
                "input; refusing to resize",
            )
        buf = io.BytesIO()
        out.convert("RGB").save(buf, format="PNG")
        log.info(
            "edit_b64 %dx%d %s steps=%d seed=%d in %.2f s",
            image.width,
            image.height,
            fmt + (" (lossy input)" if lossy else ""),
            req.steps,
            seed,
            time.monotonic() - started,
        )
        return EditResponse(
            image_b64=base64.b64encode(buf.getvalue()).decode("ascii"),
            seed=seed,
            model_id=pipeline.model_id,
            lora=pipeline.lora,
            input_format=fmt,
            input_lossy=lossy,
        )

    return app


# --------------------------------------------------------------------------------------------------
# The real pipeline (GPU only)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class QwenLoraPipeline:
    """Qwen-Image-Edit (bf16, CUDA when deployed) with one LoRA adapter, which must load and be active."""

    ADAPTER = "isometric"

    def __init__(
        self,
        base_model: str,
        revision: str | None,
        lora_dir: Path,
        weight_name: str,
        cache_dir: str,
        *,
        pipe: Any = None,
        device: str = "cuda",
    ) -> None:
        """``pipe``: an already built ``QwenImageEditPipeline`` (the tests' tiny random one); None loads
        ``base_model`` from the hub in bf16."""
        weights = lora_dir / weight_name
        if not weights.is_file():  # checked first: fail in seconds, before downloading the base model
            raise RuntimeError(
                f"LoRA weights {weights} not found on the volume; upload them first (inference/README.md). "
                "Refusing to serve the base model."
            )
        import torch

        if pipe is None:
            from diffusers import QwenImageEditPipeline

            pipe = QwenImageEditPipeline.from_pretrained(
                base_model, revision=revision, torch_dtype=torch.bfloat16, cache_dir=cache_dir
            )
        # Any failure here propagates and the container fails to start: the original only printed it.
        pipe.load_lora_weights(str(lora_dir), weight_name=weight_name, adapter_name=self.ADAPTER)
        pipe.set_adapters([self.ADAPTER], adapter_weights=[1.0])
        if self.ADAPTER not in pipe.get_active_adapters():
            raise RuntimeError(
                f"LoRA adapter {self.ADAPTER!r} did not become active; refusing to serve the base model"
            )
        self.pipe = pipe.to(device)
        self.device = device
        self._torch = torch
        self.model_id = f"{base_model}@{revision or 'main'}"
        self.lora = f"{lora_dir.name}/{weight_name}@sha256:{_file_sha256(weights)[:16]}"

    def __call__(self, image: Image.Image, req: EditRequest, seed: int) -> Image.Image:
        torch = self._torch
        generator = torch.Generator(device=self.device).manual_seed(seed)
        with torch.inference_mode():
            result = self.pipe(
                image=image,
                height=image.height,  # explicit: the output must be the template's size
                width=image.width,
                generator=generator,
                prompt=req.prompt,
                negative_prompt=req.negative_prompt,
                true_cfg_scale=req.true_cfg_scale,
                num_inference_steps=req.steps,
                guidance_scale=req.guidance_scale,
            )
        return result.images[0]


# --------------------------------------------------------------------------------------------------
# Modal deployment


def modal_settings() -> dict[str, str]:
    """Deploy-time settings baked into the Modal image (so the container sees what was deployed)."""
    lora_id = os.environ.get("LORA_MODEL_ID", "")
    if not lora_id:
        raise RuntimeError(
            "set LORA_MODEL_ID (the LoRA folder under /loras on the volume) before `modal deploy`"
        )
    return {
        "LORA_MODEL_ID": lora_id,
        "LORA_WEIGHT_NAME": os.environ.get("LORA_WEIGHT_NAME", "pytorch_lora_weights.safetensors"),
        "BASE_MODEL": os.environ.get("BASE_MODEL", "Qwen/Qwen-Image-Edit"),
        "BASE_MODEL_REVISION": os.environ.get("BASE_MODEL_REVISION", ""),
        "ISONYC_LORA_VOLUME": os.environ.get("ISONYC_LORA_VOLUME", "isonyc-lora-vol"),
        "ISONYC_MODAL_APP": os.environ.get("ISONYC_MODAL_APP", "isonyc-qwen-edit"),
        "ISONYC_REQUIRE_PROXY_AUTH": os.environ.get("ISONYC_REQUIRE_PROXY_AUTH", "1"),
        "TORCHINDUCTOR_CACHE_DIR": "/data/torch_cache",
    }


def _modal_wanted() -> bool:
    # `modal deploy`/`modal serve` and the Modal container import this file with `modal` already
    # loaded; tests and the pipeline's own code never do, so they never import modal/torch/diffusers.
    return "modal" in sys.modules and os.environ.get("ISONYC_MODAL_BUILD", "1") != "0"


if _modal_wanted():
    import modal

    _settings = modal_settings()
    # Modal needs the app and the class at module scope (it re-imports them by name in the container).
    app = modal.App(
        _settings["ISONYC_MODAL_APP"],
        image=modal.Image.debian_slim(python_version="3.11")
        .pip_install_from_requirements(str(Path(__file__).with_name("requirements.txt")))
        .env(_settings),
    )

    @app.cls(
        gpu="H100",
        volumes={"/data": modal.Volume.from_name(_settings["ISONYC_LORA_VOLUME"])},
        scaledown_window=300,
        timeout=600,
        startup_timeout=1800,  # first start downloads ~40 GB of base weights into /data/hf
    )
    class ImageEditor:
        @modal.enter()
        def setup(self) -> None:
            env = os.environ
            self.pipeline = QwenLoraPipeline(
                env["BASE_MODEL"],
                env.get("BASE_MODEL_REVISION") or None,
                Path("/data/loras") / env["LORA_MODEL_ID"],
                env["LORA_WEIGHT_NAME"],
                cache_dir="/data/hf",
            )
            self.web_app = create_app(self.pipeline)

        @modal.asgi_app(requires_proxy_auth=_settings["ISONYC_REQUIRE_PROXY_AUTH"] != "0")
        def web(self) -> FastAPI:
            return self.web_app
