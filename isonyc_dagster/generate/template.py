"""Build the infill template a step sends to the model, and validate and split what comes back.

A template is the step's 2×2-quadrant window (1024² in production), lossless PNG, RGB:
- inside the infill rectangle: the whitebox render of the footprint, with a 2 px #FF0000 border drawn
  *inside* the rectangle over the outermost render pixels (the original's and its training data's rule);
- elsewhere: the generated pixels of the step's context quadrants (earlier waves of the plan);
- window parts that are neither (quadrants beyond the bounds edge, which no step generates) get the
  render, like the original's auto-padding: they are shown to the model but discarded afterwards, as are
  footprint quadrants outside the bounds (padding inside the infill). A padding quadrant with no render
  is filled flat with the GROUND colour.

Only the plan's context is used, never other generated pixels that happen to exist (a neighbour of a
later wave, or a tile outside the bounds): a template depends on exactly its step's declared
dependencies, so regenerating a step makes exactly its dependants stale.

``extract_quadrants`` refuses bad model output (wrong size, undecodable, not PNG, wrong mode, red border
left inside the infill, transparent or blank infill) with ``OutputRejected`` before cropping the step's
quadrants. Nothing is stored here.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.generate.plan import Quadrant, Step
from isonyc_dagster.geo.boxes import PixelBox
from isonyc_dagster.geo.surfaces import BORDER_PX, BORDER_RGB, PALETTE, Surface
from isonyc_dagster.images import png_bytes

RGBFn = Callable[[int, int], np.ndarray | None]
AuxFn = Callable[[int, int], dict[str, np.ndarray] | None]

#: Channel tolerance for "pure red" remnants: lossless outputs match exactly; the slack only absorbs a
#: model's off-by-a-few colours, and stays far from any real red in pixel art (no palette colour is near).
RED_TOLERANCE = 8
#: A window region whose channels all have a standard deviation below this is "uniform".
UNIFORM_STD = 2.0
#: PNG zlib level (lossless either way). Measured on 1024² pixel art: 6 is as fast as 1 and ~10 % smaller;
#: 9 is ~8× slower for < 1 % less.
PNG_COMPRESS_LEVEL = 6


class TemplateError(IsonycError, RuntimeError):
    """A template cannot be built or a model output cannot be used. ``retryable``: a later try may work."""

    retryable = False


class RenderMissing(TemplateError):
    """A quadrant the step generates has no render yet (materialize the render first)."""

    retryable = True

    def __init__(self, step_key: str, quadrants: list[Quadrant]) -> None:
        self.quadrants = tuple(quadrants)
        super().__init__(
            f"step {step_key}: no render for quadrant(s) {list(self.quadrants)}; materialize their render "
            "before generating this step"
        )


class ContextMissing(TemplateError):
    """Context quadrants the plan requires have no generation yet: fail fast, retry when they exist."""

    retryable = True

    def __init__(self, step_key: str, quadrants: list[Quadrant]) -> None:
        self.quadrants = tuple(quadrants)
        super().__init__(
            f"step {step_key}: context quadrant(s) {list(self.quadrants)} have no generation yet; this step "
            "must run after the steps that generate them (retry later; nothing was generated)"
        )


class OutputRejected(TemplateError):
    """The model output is unusable; ``reason`` is a short code (size, decode, format, mode, red_border,
    transparent, blank). Retrying the model (another seed) may work."""

    retryable = True

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"model output rejected ({reason}): {message}")


@dataclass(frozen=True, eq=False)
class Template:
    """A built template. ``rgb`` is (2q, 2q, 3) uint8; ``png``/``sha256`` its lossless encoding."""

    step_key: str
    rgb: np.ndarray
    png: bytes
    sha256: str
    infill_box: tuple[int, int, int, int]  # template px, exclusive end; the red border is inside
    origin_px: tuple[int, int]  # world pixel of the top-left corner
    context_used: tuple[Quadrant, ...]  # quadrants whose generated pixels are in the window
    missing_context: tuple[Quadrant, ...]  # only non-empty with allow_missing_context=True
    padding: tuple[Quadrant, ...]  # quadrants shown as render and discarded (outside the bounds)
    padding_unrendered: tuple[Quadrant, ...] = ()  # padding with no render: filled flat GROUND
    aux: dict[str, np.ndarray] = field(default_factory=dict)  # window-size render buffers

    @property
    def size(self) -> int:
        return self.rgb.shape[0]


def build_template(
    step: Step,
    *,
    render_rgb: RGBFn,
    generated_rgb: RGBFn,
    render_aux: AuxFn | None = None,
    allow_missing_context: bool = False,
) -> Template:
    """Assemble the template of ``step`` from per-quadrant images (q×q×3 uint8, or ``None``).

    ``render_rgb(x, y)`` is called for the step's quadrants and the padding, ``generated_rgb(x, y)`` only
    for the step's context quadrants. Raises ``RenderMissing`` if a kept quadrant has no render and
    ``ContextMissing`` listing every context quadrant without a generation (unless
    ``allow_missing_context``: then they are shown as render and reported in ``missing_context`` — for
    previews, never for a real generation).
    """
    q = step.quadrant_px
    size = step.window_px
    wx0, wy0 = step.window
    own, context = set(step.quadrants), set(step.context)

    images: dict[Quadrant, np.ndarray] = {}
    no_render: list[Quadrant] = []
    missing: list[Quadrant] = []
    used: list[Quadrant] = []
    padding: list[Quadrant] = []
    unrendered: list[Quadrant] = []
    for qd in step.window_quadrants():
        if qd in context:
            img = _quadrant_rgb(generated_rgb(*qd), qd, q, "generation")
            if img is not None:
                images[qd] = img
                used.append(qd)
                continue
            missing.append(qd)
            if not allow_missing_context:
                continue
        img = _quadrant_rgb(render_rgb(*qd), qd, q, "render")
        if img is None:
            if qd in own:
                no_render.append(qd)
            elif qd not in context:
                unrendered.append(qd)
            img = np.empty((q, q, 3), np.uint8)
            img[:] = PALETTE[Surface.GROUND]
        if qd not in own and qd not in context:
            padding.append(qd)
        images[qd] = img
    if no_render:
        raise RenderMissing(step.key, no_render)
    if missing and not allow_missing_context:
        raise ContextMissing(step.key, missing)

    rgb = np.empty((size, size, 3), np.uint8)
    for (x, y), img in images.items():
        _paste(rgb, img, x * q - wx0, y * q - wy0)

    draw_red_border(rgb, step.infill)
    rgb.setflags(write=False)

    aux = _assemble_aux(step, render_aux) if render_aux is not None else {}
    png = png_bytes(rgb, compress_level=PNG_COMPRESS_LEVEL)
    return Template(
        step_key=step.key,
        rgb=rgb,
        png=png,
        sha256=hashlib.sha256(png).hexdigest(),
        infill_box=step.infill,
        origin_px=step.window,
        context_used=tuple(used),
        missing_context=tuple(missing),
        padding=tuple(padding),
        padding_unrendered=tuple(unrendered),
        aux=aux,
    )


def extract_quadrants(
    step: Step, template: Template | bytes, output_png: bytes, *, max_red_px: int = 64
) -> dict[Quadrant, np.ndarray]:
    """Validate a model output for ``step`` and crop the step's own quadrants (q×q×3 uint8 each).

    ``template`` is the ``Template`` (or its PNG bytes) that was sent. Raises ``OutputRejected`` when the
    output is not a PNG of exactly the template's size, not RGB/RGBA, leaves more than ``max_red_px``
    pure-red border pixels inside the infill, is transparent where it is kept, or its infill is blank
    (near-uniform where the render is not, or uniform black/white).
    """
    q = step.quadrant_px
    size = step.window_px
    tmpl_rgb = template.rgb if isinstance(template, Template) else _decode_template(template, size)
    out = _decode_output(output_png, size)

    x0, y0, x1, y1 = step.infill
    wx0, wy0 = step.window
    if out.shape[2] == 4:
        alpha_bad = 0
        for x, y in step.quadrants:
            tx, ty = x * q - wx0, y * q - wy0
            alpha_bad += int(np.count_nonzero(out[ty : ty + q, tx : tx + q, 3] < 255))
        if alpha_bad:
            raise OutputRejected(
                "transparent", f"{alpha_bad} pixels of the generated quadrants are (partly) transparent"
            )
    rgb = out[..., :3]
    infill = rgb[y0:y1, x0:x1]
    n_red = int(np.count_nonzero(red_mask(infill)))
    if n_red > max_red_px:
        raise OutputRejected(
            "red_border",
            f"{n_red} pure-red (#FF0000) pixels remain inside the infill (limit {max_red_px}): the model kept "
            "the template's border instead of replacing it",
        )
    if _uniform(infill):
        colour = tuple(int(round(v)) for v in infill.reshape(-1, 3).mean(axis=0))
        b = BORDER_PX
        render = tmpl_rgb[y0 + b : y1 - b, x0 + b : x1 - b]
        if not _uniform(render) or all(v <= 8 for v in colour) or all(v >= 247 for v in colour):
            raise OutputRejected(
                "blank", f"the infill is a near-uniform colour {colour} where the render shows detail"
            )

    result: dict[Quadrant, np.ndarray] = {}
    for x, y in step.quadrants:
        tx, ty = x * q - wx0, y * q - wy0
        result[(x, y)] = rgb[ty : ty + q, tx : tx + q].copy()  # own, writable, contiguous
    return result


def draw_red_border(
    img: np.ndarray, box: PixelBox | tuple[int, int, int, int], width: int = BORDER_PX
) -> None:
    """The template contract's outline: ``width`` px of pure #FF0000 *inside* ``box`` (in place)."""
    x0, y0, x1, y1 = box
    img[y0 : y0 + width, x0:x1] = BORDER_RGB
    img[y1 - width : y1, x0:x1] = BORDER_RGB
    img[y0:y1, x0 : x0 + width] = BORDER_RGB
    img[y0:y1, x1 - width : x1] = BORDER_RGB


def infill_template(
    render: np.ndarray, generated: np.ndarray, box: PixelBox | tuple[int, int, int, int]
) -> np.ndarray:
    """A template for any rectangle ``box`` of one window, not only a step's quadrant-aligned infill (training
    examples): ``render`` pixels inside ``box`` under the red border, ``generated`` pixels elsewhere.

    ``render`` and ``generated`` are (H, W, 3) uint8 of the same size (never resized here); returns a new array.
    """
    r, g = np.asarray(render), np.asarray(generated)
    if r.shape != g.shape or r.ndim != 3 or r.shape[2] != 3 or r.dtype != np.uint8 or g.dtype != np.uint8:
        raise TemplateError(
            f"render {r.shape} {r.dtype} and generation {g.shape} {g.dtype} must be (H, W, 3) uint8 of one size"
        )
    x0, y0, x1, y1 = box
    h, w = r.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h) or min(x1 - x0, y1 - y0) <= 2 * BORDER_PX:
        raise TemplateError(
            f"infill box {tuple(box)} must lie inside the {w}×{h} window and be wider than its border"
        )
    out = g.copy()
    out[y0:y1, x0:x1] = r[y0:y1, x0:x1]
    draw_red_border(out, box)
    return out


def red_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels within ``RED_TOLERANCE`` of the border's pure red: what a model left of the border."""
    c = rgb[..., :3].astype(np.int16)
    return (c[..., 0] >= 255 - RED_TOLERANCE) & (c[..., 1] <= RED_TOLERANCE) & (c[..., 2] <= RED_TOLERANCE)


# --- internals ------------------------------------------------------------------------------------
def _quadrant_rgb(img: np.ndarray | None, qd: Quadrant, q: int, what: str) -> np.ndarray | None:
    if img is None:
        return None
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[:2] != (q, q) or a.shape[2] not in (3, 4):
        raise TemplateError(
            f"{what} of quadrant {qd} must be a {q}×{q}×3 uint8 RGB array, got shape {a.shape} dtype {a.dtype} "
            "(images are never resized; fix the producer)"
        )
    return a[..., :3]


def _paste(dst: np.ndarray, src: np.ndarray, ox: int, oy: int) -> None:
    """Copy ``src`` to ``dst`` at offset (ox, oy), clipped to ``dst``."""
    h, w = dst.shape[:2]
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    sx1 = min(src.shape[1], w - ox)
    sy1 = min(src.shape[0], h - oy)
    if sx1 > sx0 and sy1 > sy0:
        dst[dy0 : dy0 + sy1 - sy0, dx0 : dx0 + sx1 - sx0] = src[sy0:sy1, sx0:sx1]


def _assemble_aux(step: Step, render_aux: AuxFn) -> dict[str, np.ndarray]:
    q, size = step.quadrant_px, step.window_px
    wx0, wy0 = step.window
    parts = {qd: render_aux(*qd) for qd in step.window_quadrants()}
    out: dict[str, np.ndarray] = {}
    for qd, bufs in parts.items():
        for name, arr in (bufs or {}).items():
            a = np.asarray(arr)
            if a.shape[:2] != (q, q):
                raise TemplateError(f"aux buffer {name!r} of quadrant {qd} must be {q}×{q}, got {a.shape}")
            if name not in out:
                # quadrants without this buffer stay 0 (Surface.NONE / no building / height 0)
                out[name] = np.zeros((size, size, *a.shape[2:]), dtype=a.dtype)
            elif out[name].dtype != a.dtype or out[name].shape[2:] != a.shape[2:]:
                raise TemplateError(
                    f"aux buffer {name!r} of quadrant {qd} has dtype {a.dtype} shape {a.shape}, other quadrants "
                    f"have {out[name].dtype} {out[name].shape[2:]}"
                )
            _paste(out[name], a, qd[0] * q - wx0, qd[1] * q - wy0)
    return out


def _decode(data: bytes, size: int, what: str) -> np.ndarray:
    if not isinstance(data, bytes | bytearray | memoryview) or not len(data):
        raise OutputRejected("decode", f"{what} is empty or not bytes ({type(data).__name__})")
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise OutputRejected("decode", f"{what} is not a decodable image: {e}") from None
    if img.format != "PNG":
        raise OutputRejected("format", f"{what} is {img.format}, expected lossless PNG")
    if img.size != (size, size):
        raise OutputRejected(
            "size",
            f"{what} is {img.size[0]}×{img.size[1]} px, expected exactly {size}×{size} (never resized)",
        )
    if img.mode not in ("RGB", "RGBA", "P"):
        raise OutputRejected("mode", f"{what} has mode {img.mode}, expected RGB, RGBA or a palette")
    try:
        img.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure after a valid header (truncated, bad zlib, CRC)
        raise OutputRejected("decode", f"{what} is corrupt: {type(e).__name__}: {e}") from None
    if img.mode == "P":  # lossless as well (the offline backend writes one): its colours, alpha if it has any
        return np.asarray(img.convert("RGBA" if "transparency" in img.info else "RGB"))
    return np.asarray(img)


def _decode_output(data: bytes, size: int) -> np.ndarray:
    return _decode(data, size, "the output")


def _decode_template(data: bytes, size: int) -> np.ndarray:
    try:
        return _decode(data, size, "the template")[..., :3]
    except OutputRejected as e:
        raise TemplateError(str(e).replace("model output rejected", "bad template")) from None


def _uniform(region: np.ndarray) -> bool:
    if region.size == 0:
        return True
    return bool(region.reshape(-1, region.shape[-1]).std(axis=0).max() < UNIFORM_STD)
