"""The offline pixel-art backend: whitebox render → SimCity-3000-style isometric pixel art, no model.

Same contract as the remote image models (``backends.base``): a template PNG with a red-bordered
infill rectangle in, an image of the same size out, context kept. Instead of a diffusion model it
stylizes the render buffers (surface class, building id, visible height) the step passes in ``aux``
(or, without them, the classes recovered from the template's render colours).

Why it is seam-free by construction: every texture, window grid, tree and rooftop object is a
function of *world* pixel coordinates, building id and height (see ``_noise``), never of the
template window. Two steps that draw the same world pixel from the same render buffers pick the same
colour, so the pixels a step generates next to its context are exactly the ones its neighbour would
have drawn there. Local operators (outlines, rims, window piers) look ≤ 3 px around a pixel, and the
backend stylizes a margin of context around the infill so the infill edge sees real neighbours; a
rooftop object straddling the infill edge is completed only when the context already shows its other
half. Measured on real plans, the stitched map differs from one big generation in < 0.02 % of pixels,
all within 32 px of a block's window edge (an earlier step could not see past it). When the context
was made by something else (a remote model), the backend notices that it does not match its own
rendering and dithers the first pixels of the infill into it instead of leaving a hard edge.

Deterministic and stateless (thread-safe): pixels depend on no clock, RNG state, network or GPU. The
request's ``seed`` does not change the look (a per-step seed would break the seams); the map-wide
texture seed is ``StyleParams.seed``. Building ids in ``aux`` must be map-global (the renderer's
stable CRC-32 ids), not labels per window, or materials would change across steps.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from isonyc_dagster.backends.base import (
    BackendConfigError,
    BackendError,
    GenerationRequest,
    GenerationResult,
    ImageBackend,
)
from isonyc_dagster.backends.pixelart import palette as pal
from isonyc_dagster.backends.pixelart._noise import bayer, hash_u32
from isonyc_dagster.backends.pixelart.params import colourize
from isonyc_dagster.backends.pixelart.style import MARGIN_PX, Camera, StyleParams, stylize
from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geo.surfaces import BORDER_RGB, PALETTE, Surface
from isonyc_dagster.images import png_bytes
from isonyc_dagster.workers import local_workers

#: Bump when the look changes (palette, rules): it is part of ``model_id`` and of provenance.
STYLE_VERSION = 1

_MAX_SIDE = 8192

__all__ = ["STYLE_VERSION", "PixelArtBackend", "StyleParams", "infer_buffers"]


class PixelArtBackend(ImageBackend):
    """Deterministic, world-aligned pixel-art generation from whitebox render buffers.

    ``map_config`` must be the map's camera (the window-grid spacing and wall directions depend on
    it). ``harmonize`` dithers the infill edge into context that this backend would not have drawn.
    """

    name = "pixelart"

    def __init__(
        self,
        map_config: MapConfig | dict[str, Any] | None = None,
        *,
        params: StyleParams | dict[str, Any] | None = None,
        harmonize: bool = True,
        png_compress_level: int = 7,
    ) -> None:
        # Dicts are accepted so the backend can be built from flat JSON settings (backends.registry).
        if isinstance(map_config, dict):
            map_config = MapConfig.model_validate(map_config)
        if isinstance(params, dict):
            params = StyleParams.parse(params, source="pixelart params")
        self.geometry = MapGeometry(map_config or MapConfig())
        self.camera = Camera.from_geometry(self.geometry)
        self.params = params or StyleParams()
        self.harmonize = harmonize
        if not 0 <= png_compress_level <= 9:
            raise BackendConfigError(f"png_compress_level must be 0..9, got {png_compress_level}")
        self.png_compress_level = png_compress_level
        self.model_id = f"pixelart-v{STYLE_VERSION}"

    # --- public API -------------------------------------------------------------------------------
    @property
    def max_in_flight(self) -> int:
        """The run's CPU threads: generation is a pure function of the request, and its numpy, numba and PNG work
        releases the GIL."""
        return local_workers()

    def generate(self, request: GenerationRequest) -> GenerationResult:
        t0 = time.perf_counter()
        out, info = self.generate_array(request)
        # A palette PNG (≤ 256 colours, as pixel art has): the same pixels as RGB in ~55 % of the bytes, and the
        # step keeps this blob as the model's output (zlib 7 by default: 2.5 % fewer bytes than 6 for ~9 ms a step;
        # 8 saved 6 % for ~55 ms, which cost Manhattan a minute).
        image_png = png_bytes(out, compress_level=self.png_compress_level, palette=True)
        provenance: dict[str, Any] = {
            "backend": self.name,
            "model_id": self.model_id,
            "prompt_sha256": request.prompt_sha256,
            "seed": self.params.seed,
            "latency_s": round(time.perf_counter() - t0, 4),
            "attempts": 1,
            "style_version": STYLE_VERSION,
            "style": self.params.as_dict(),
            "palette_size": int(len(pal.RGB)),
            **info,
        }
        if request.seed is not None:
            # Reported, not used: textures must not depend on the step (see module docstring).
            provenance["request_seed"] = int(request.seed)
        return GenerationResult(image_png=image_png, provenance=provenance)

    def generate_array(self, request: GenerationRequest) -> tuple[np.ndarray, dict[str, Any]]:
        """Like ``generate`` but returns the RGB array (H, W, 3) uint8 and the extra provenance keys."""
        template = decode_template(request.template_png)
        hh, ww = template.shape[:2]
        bx0, by0, bx1, by1 = _check_box(request.infill_box, ww, hh)
        ox, oy = (int(v) for v in request.origin_px)
        aux = _check_aux(request.aux, hh, ww)

        if aux is not None:
            _check_aux_matches_template(template, aux["surface"], (bx0, by0, bx1, by1))
            # Render a margin of context around the infill so local operators see real neighbours.
            rx0, ry0 = max(0, bx0 - MARGIN_PX), max(0, by0 - MARGIN_PX)
            rx1, ry1 = min(ww, bx1 + MARGIN_PX), min(hh, by1 + MARGIN_PX)
            win = (slice(ry0, ry1), slice(rx0, rx1))
            surface = aux["surface"][win]
            building = aux["building"][win] if "building" in aux else None
            height = aux["height"][win] if "height" in aux else None
            if building is None or height is None:
                b2, h2 = _infer_building_height(surface, ox + rx0, oy + ry0, self.camera)
                building = b2 if building is None else building
                height = h2 if height is None else height
            source = "aux" if ("building" in aux and "height" in aux) else "aux+inferred"
        else:
            rx0, ry0, rx1, ry1 = bx0, by0, bx1, by1
            win = (slice(ry0, ry1), slice(rx0, rx1))
            surface, building, height = infer_buffers(template[win], ox + rx0, oy + ry0, self.camera)
            source = "template"

        idx = stylize(
            surface,
            building,
            height,
            ox + rx0,
            oy + ry0,
            self.camera,
            self.params,
            sprite_box=(bx0 - rx0, by0 - ry0, bx1 - rx0, by1 - ry0),
            context_rgb=template[win],
        )
        wy, wx = np.ogrid[oy + ry0 : oy + ry1, ox + rx0 : ox + rx1]
        gen = colourize(idx, wx, wy, self.params)  # region (ry0:ry1, rx0:rx1); default style: pal.RGB[idx]
        out = template.copy()
        out[by0:by1, bx0:bx1] = gen[by0 - ry0 : by1 - ry0, bx0 - rx0 : bx1 - rx0]

        info: dict[str, Any] = {"buffers": source, "infill_box": [bx0, by0, bx1, by1]}
        if aux is not None and (rx0, ry0, rx1, ry1) != (bx0, by0, bx1, by1):
            agreement = _context_agreement(template, gen, (rx0, ry0, rx1, ry1), (bx0, by0, bx1, by1))
            info["context_agreement"] = agreement
            harmonized = False
            if self.harmonize and agreement is not None and agreement < _FOREIGN_CONTEXT:
                _dither_into_context(out, template, (bx0, by0, bx1, by1), ox, oy)
                harmonized = True
            info["harmonized"] = harmonized
        return out, info


# --- template and aux validation ----------------------------------------------------------------------


def decode_template(png: bytes) -> np.ndarray:
    """Decode the template PNG to (H, W, 3) uint8, with a clear error for anything else."""
    if not isinstance(png, bytes | bytearray) or not png:
        raise BackendError("template_png is empty: pass the step's lossless PNG template")
    try:
        with Image.open(io.BytesIO(png)) as im:
            if im.format != "PNG":
                raise BackendError(f"template is {im.format}, not PNG: templates must be lossless PNG")
            if im.mode not in ("RGB", "RGBA"):
                raise BackendError(f"template PNG mode is {im.mode}; expected RGB (or RGBA)")
            w, h = im.size  # checked before decoding the pixels
            if w > _MAX_SIDE or h > _MAX_SIDE:
                raise BackendError(f"template is {w}×{h} px; the pixel-art backend accepts ≤ {_MAX_SIDE} px")
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except BackendError:
        raise
    except Exception as e:  # PIL raises several unrelated types for corrupt data
        raise BackendError(f"template_png is not a readable PNG image: {e}") from e
    return np.ascontiguousarray(arr)


def _check_box(box: tuple[int, int, int, int] | None, ww: int, hh: int) -> tuple[int, int, int, int]:
    if box is None:
        return 0, 0, ww, hh
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError) as e:
        raise BackendError(f"infill_box must be 4 integers (x0, y0, x1, y1), got {box!r}") from e
    if not (0 <= x0 < x1 <= ww and 0 <= y0 < y1 <= hh):
        raise BackendError(
            f"infill_box {box} is not a non-empty rectangle inside the {ww}×{hh} template "
            "(x0, y0, x1, y1 with exclusive ends)"
        )
    return x0, y0, x1, y1


def _check_aux(aux: dict[str, np.ndarray], hh: int, ww: int) -> dict[str, np.ndarray] | None:
    if not aux:
        return None
    unknown = set(aux) - {"surface", "building", "height"}
    if unknown:
        raise BackendError(f"aux has unknown buffers {sorted(unknown)}; expected surface, building, height")
    if "surface" not in aux:
        raise BackendError(
            f"aux has {sorted(aux)} but no 'surface': the class buffer is required whenever aux is given"
        )
    out: dict[str, np.ndarray] = {}
    for key, arr in aux.items():
        a = np.asarray(arr)
        if a.shape != (hh, ww):
            raise BackendError(
                f"aux[{key!r}] has shape {a.shape}, but the template is {ww}×{hh}: "
                "aux buffers must cover the whole template window"
            )
        out[key] = a
    s = out["surface"]
    if not np.issubdtype(s.dtype, np.integer):
        raise BackendError(f"aux['surface'] must hold integer Surface classes, got dtype {s.dtype}")
    if s.size and (int(s.min()) < 0 or int(s.max()) >= len(Surface)):
        raise BackendError(f"aux['surface'] has values outside 0..{len(Surface) - 1} (Surface classes)")
    if "building" in out and not np.issubdtype(out["building"].dtype, np.integer):
        raise BackendError(f"aux['building'] must hold integer ids, got dtype {out['building'].dtype}")
    if "height" in out:
        h = out["height"].astype(np.float32, copy=False)
        bad = int(np.count_nonzero(~np.isfinite(h)))
        if bad:
            raise BackendError(
                f"aux['height'] has {bad} non-finite values; heights must be metres (0 = ground)"
            )
        out["height"] = h
    return out


def _check_aux_matches_template(
    template: np.ndarray, surface: np.ndarray, box: tuple[int, int, int, int]
) -> None:
    """Refuse aux buffers of another window: they would paint the wrong city into the infill."""
    x0, y0, x1, y1 = box
    if x1 - x0 <= 8 or y1 - y0 <= 8:
        return
    inner = (slice(y0 + 3, y1 - 3), slice(x0 + 3, x1 - 3))  # skip the red border
    rgb = template[inner]
    cls = _exact_classes(rgb)
    known = cls != 0
    n = int(known.sum())
    # Only when most of the infill is recognisable render colour: templates may be preprocessed.
    if n < 0.5 * cls.size or n < 256:
        return
    agree = float(np.mean(cls[known] == surface[inner][known]))
    if agree < 0.9:
        raise BackendError(
            f"aux buffers do not describe this template: only {agree:.0%} of the infill's render pixels "
            "agree with aux['surface']; pass the render buffers of the same window as the template"
        )


def _exact_classes(rgb: np.ndarray) -> np.ndarray:
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    lut_keys = np.array([(r << 16) | (g << 8) | b for (r, g, b) in PALETTE.tolist()], dtype=np.int32)
    out = np.zeros(key.shape, np.uint8)
    for cls in range(1, len(lut_keys)):
        out[key == lut_keys[cls]] = cls
    return out


# --- buffers without aux ------------------------------------------------------------------------------


def infer_buffers(
    rgb: np.ndarray, x0: int, y0: int, cam: Camera
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Surface classes, building ids and heights recovered from whitebox render colours alone.

    Colours within a tolerance of a render palette colour get its class (templates may be lightly
    preprocessed); the red border and anything unrecognised take the class of the nearest recognised
    pixel. Building ids and heights are estimated (see ``_infer_building_height``).
    """
    surface = _exact_classes(rgb)
    unknown = surface == 0
    if unknown.any():
        # Off-palette pixels (preprocessed renders): nearest render colour within a tolerance.
        px = rgb[unknown].astype(np.int32)
        d = np.abs(px[:, None, :] - PALETTE[None, 1:, :].astype(np.int32)).sum(-1)
        best = np.argmin(d, axis=-1)
        near = d[np.arange(len(px)), best] <= 90
        near &= np.abs(px - np.array(BORDER_RGB)).sum(-1) >= 60  # the red border is no class
        cls = np.where(near, best + 1, 0).astype(np.uint8)
        surface[unknown] = cls
        unknown = surface == 0
    # Half the infill unrecognisable: this is not a render (a photo, an already generated tile, ...).
    if unknown.mean() > 0.5:
        raise BackendError(
            f"the infill holds no whitebox render colours (surfaces.SURFACE_RGB): {unknown.mean():.0%} of its "
            "pixels match none, and no aux buffers were given; pass aux={'surface', 'building', 'height'} or "
            "a template with the whitebox render in the infill"
        )
    if unknown.any():
        _, (iy, ix) = ndimage.distance_transform_edt(unknown, return_indices=True)
        surface = surface[iy, ix]
    b, h = _infer_building_height(surface, x0, y0, cam)
    return surface, b, h


def _infer_building_height(
    surface: np.ndarray, x0: int, y0: int, cam: Camera
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate building ids and visible heights from classes only.

    Ids: connected roof/wall regions, each named by a hash of the world position of its lowest pixel
    (its front corner on the ground), so the same building gets the same id in overlapping windows.
    Heights: a wall pixel stands (rows to the wall's foot) / (px per metre) above ground; a roof has the
    height of the wall top in front of it.
    """
    s = np.asarray(surface)
    wall = (s == Surface.WALL_LEFT) | (s == Surface.WALL_RIGHT)
    roof = s == Surface.ROOF
    bld = wall | roof
    hh, ww = s.shape
    building = np.zeros((hh, ww), np.int32)
    height = np.zeros((hh, ww), np.float32)
    if not bld.any():
        return building, height
    labels, n = ndimage.label(bld)
    rows = np.arange(hh, dtype=np.int64)[:, None]
    # Lowest pixel of each component (largest row; ties broken by column).
    order = rows * (ww + 1) + np.arange(ww)[None, :]
    pos = ndimage.maximum(order, labels, index=np.arange(1, n + 1)).astype(np.int64)
    py, px = pos // (ww + 1), pos % (ww + 1)
    ids = (hash_u32(px + x0, py + y0, salt=0x5EED) >> np.uint32(1)).astype(np.int64) | 1
    lut = np.concatenate([[0], ids]).astype(np.int64)
    building = (lut[labels] & 0x7FFFFFFF).astype(np.int32)

    below_stop = np.where(~wall, rows, hh)
    next_stop = np.minimum.accumulate(below_stop[::-1], axis=0)[::-1]  # first non-wall row at/below
    wall_h = (next_stop - rows - 0.5) / cam.k
    height = np.where(wall, wall_h, 0.0)
    # Roofs: the wall directly below the roof's front edge, found by scanning down each column.
    roof_stop = np.where(~roof, rows, hh)
    after_roof = np.minimum.accumulate(roof_stop[::-1], axis=0)[::-1]
    ar = np.clip(after_roof, 0, hh - 1)
    cols = np.broadcast_to(np.arange(ww)[None, :], (hh, ww))
    under_is_wall = (after_roof < hh) & wall[ar, cols]
    roof_h = np.where(under_is_wall, wall_h[ar, cols] + 1.0 / cam.k, 0.0)
    height = np.where(roof, roof_h, height)
    return building, height.astype(np.float32)


# --- context harmonization -----------------------------------------------------------------------------

#: Below this share of identical pixels the context is "foreign" (not drawn by this backend's rules).
_FOREIGN_CONTEXT = 0.8
_DITHER_PX = 8


def _context_agreement(
    template: np.ndarray, gen: np.ndarray, region: tuple[int, int, int, int], box: tuple[int, int, int, int]
) -> float | None:
    """Share of context pixels next to the infill that equal what this backend draws there."""
    rx0, ry0, rx1, ry1 = region
    bx0, by0, bx1, by1 = box
    band = np.zeros((ry1 - ry0, rx1 - rx0), bool)
    k = 4
    band[max(0, by0 - ry0 - k) : by1 - ry0 + k, max(0, bx0 - rx0 - k) : bx1 - rx0 + k] = True
    band[by0 - ry0 : by1 - ry0, bx0 - rx0 : bx1 - rx0] = False
    if not band.any():
        return None
    ctx = template[ry0:ry1, rx0:rx1][band]
    mine = gen[band]
    return round(float(np.mean(np.all(ctx == mine, axis=-1))), 4)


def _dither_into_context(
    out: np.ndarray, template: np.ndarray, box: tuple[int, int, int, int], ox: int, oy: int
) -> None:
    """Ordered-dither the first infill pixels into the nearest context colours (no new colours, crisp).

    Used only for context this backend did not draw (a remote model's), where continuing our own
    rendering would leave a hard style edge.
    """
    hh, ww = out.shape[:2]
    bx0, by0, bx1, by1 = box
    ctx = np.ones((hh, ww), bool)
    ctx[by0:by1, bx0:bx1] = False
    d, (iy, ix) = ndimage.distance_transform_edt(~ctx, return_indices=True)
    sel = ~ctx & (d <= _DITHER_PX)
    if not sel.any():
        return
    ys, xs = np.nonzero(sel)
    t = 1.0 - d[ys, xs] / (_DITHER_PX + 1)
    use_ctx = bayer(xs + ox, ys + oy) < t * 0.9
    out[ys[use_ctx], xs[use_ctx]] = template[iy[ys[use_ctx], xs[use_ctx]], ix[ys[use_ctx], xs[use_ctx]]]
