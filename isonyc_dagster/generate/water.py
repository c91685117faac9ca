"""Water masks from geometry, and the original's colour-repair tools as pure functions.

The original detected water by matching one colour (#4A6372 ± 5) in the *generated* pixels and asked a
model to draw shoreline masks (weak point W8). Here water comes from the render's ``surface`` buffer,
i.e. water polygons projected with the renderer's camera, so masks are exact, exist for every rendered
quadrant and need no model:

- ``classify_water(surface)`` → ``Water.ALL_WATER`` / ``ALL_LAND`` / ``WATER_EDGE``;
- ``water_mask(surface, falloff_px)`` → uint8, 0 on land, rising smoothly from the shoreline to 255 in
  open water (Euclidean distance transform + smoothstep; the original's masks were white water with a
  blur into the water from the shore).

Seamless across quadrants: a pixel's value depends on land up to ``falloff_px`` away, which may lie in a
neighbouring quadrant. Pass a surface buffer with a margin of at least ``seamless_margin(falloff_px)``
pixels on every side (``surface_with_margin`` assembles one from the neighbours' buffers) and the
``margin_px``: the result is then identical to cropping a mask computed over the whole map, so
neighbouring masks agree along their shared edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from isonyc_dagster import layers
from isonyc_dagster.geo.surfaces import Surface
from isonyc_dagster.images import png_bytes
from isonyc_dagster.store.base import TileStore, TileVersion, Water

#: The canonical water colour of isometric.nyc (its models were trained to emit it).
WATER_RGB: tuple[int, int, int] = (74, 99, 114)  # #4A6372

Color = tuple[int, int, int] | str

#: Soft-mask falloff from the shoreline into open water, in pixels.
FALLOFF_PX = 8.0
#: zlib level of stored masks (lossless; fast).
MASK_PNG_LEVEL = 3


@dataclass(frozen=True)
class StoredMask:
    kind: Water
    png: bytes
    water_fraction: float
    version: TileVersion


def store_water_mask(
    store: TileStore,
    render_aux: Callable[[int, int], dict[str, np.ndarray]],
    x: int,
    y: int,
    *,
    quadrant_px: int,
    falloff_px: float = FALLOFF_PX,
) -> StoredMask:
    """Classify quadrant (x, y), compute its seamless mask from its and its neighbours' render buffers, and
    store the mask (``water_mask`` layer) and the class (the quadrant's ``water`` flag)."""
    margin = seamless_margin(falloff_px)
    surface = surface_with_margin(
        lambda a, b: render_aux(a, b)["surface"], x, y, margin, quadrant_px=quadrant_px
    )
    kind = classify_water(render_aux(x, y)["surface"])
    mask = water_mask(surface, falloff_px, margin_px=margin)
    png = png_bytes(mask, compress_level=MASK_PNG_LEVEL)
    provenance = {"source": "render surface buffer", "falloff_px": falloff_px}
    version = store.put_tile(layers.WATER_MASK, x, y, png, provenance)
    store.set_flags(x, y, water=kind)
    fraction = round(float(np.count_nonzero(mask)) / mask.size, 4)
    return StoredMask(kind, png, fraction, version)


def classify_water(surface: np.ndarray, *, tolerance: float = 0.001) -> Water:
    """Water class of one quadrant from its surface-class buffer (H, W).

    ``tolerance`` is the fraction of pixels allowed to disagree (a stray pier pixel, a mast of a bridge)
    before a quadrant counts as a shoreline: ≥ 1 − tolerance water → ALL_WATER, ≤ tolerance → ALL_LAND.
    """
    s = _surface(surface)
    if not 0.0 <= tolerance < 0.5:
        raise ValueError(f"tolerance must be in [0, 0.5), got {tolerance}")
    frac = float(np.count_nonzero(s == Surface.WATER)) / s.size
    if frac >= 1.0 - tolerance:
        return Water.ALL_WATER
    if frac <= tolerance:
        return Water.ALL_LAND
    return Water.WATER_EDGE


def seamless_margin(falloff_px: float) -> int:
    """Smallest margin (px) that makes ``water_mask`` of neighbouring quadrants agree exactly."""
    return math.ceil(falloff_px + 0.5) if falloff_px > 0 else 0


def water_mask(surface: np.ndarray, falloff_px: float = 8.0, *, margin_px: int = 0) -> np.ndarray:
    """Soft water mask, uint8: 0 = land, 255 = water farther than ``falloff_px`` from any land.

    ``surface`` is a surface-class buffer; with ``margin_px`` > 0 it extends that many pixels beyond the
    quadrant on every side and the result is cropped to the quadrant. ``margin_px`` must then be at least
    ``seamless_margin(falloff_px)``; with 0 the mask only sees the quadrant itself (not seamless).
    ``falloff_px`` = 0 gives a hard mask.
    """
    s = _surface(surface)
    if falloff_px < 0 or not math.isfinite(falloff_px):
        raise ValueError(f"falloff_px must be a finite number ≥ 0, got {falloff_px}")
    if isinstance(margin_px, bool) or not isinstance(margin_px, int) or margin_px < 0:
        raise ValueError(f"margin_px must be an integer ≥ 0, got {margin_px!r}")
    need = seamless_margin(falloff_px)
    if 0 < margin_px < need:
        raise ValueError(
            f"margin_px={margin_px} is too small for falloff_px={falloff_px}: neighbouring masks would disagree "
            f"at their edges; pass a surface with a margin of at least {need} px"
        )
    h, w = s.shape
    if h <= 2 * margin_px or w <= 2 * margin_px:
        raise ValueError(f"surface {s.shape} is too small for a {margin_px} px margin on every side")

    water = s == Surface.WATER
    if falloff_px == 0 or not water.any() or water.all():
        out = np.where(water, 255, 0).astype(np.uint8)
    else:
        # Distance of each water pixel to the nearest land pixel centre (1 for a water pixel next to
        # land). -0.5 puts the shoreline on the pixel edge; smoothstep makes the ramp C1 at both ends.
        d = ndimage.distance_transform_edt(water)
        t = np.clip((d - 0.5) / falloff_px, 0.0, 1.0)
        out = np.rint(255.0 * t * t * (3.0 - 2.0 * t)).astype(np.uint8)
        out[~water] = 0
    if margin_px:
        out = out[margin_px : h - margin_px, margin_px : w - margin_px]
    return np.ascontiguousarray(out)


def surface_with_margin(
    get_surface: Callable[[int, int], np.ndarray | None],
    x: int,
    y: int,
    margin_px: int,
    *,
    quadrant_px: int = 512,
) -> np.ndarray:
    """Quadrant (x, y)'s surface buffer extended by ``margin_px`` from its 8 neighbours' buffers.

    ``get_surface(x, y)`` returns a (q, q) buffer or ``None`` (not rendered, e.g. beyond the bounds); the
    margin there repeats the quadrant's own edge pixels (the shoreline continues straight), which is the
    best guess without data. The centre quadrant must exist.
    """
    q = quadrant_px
    if not 0 <= margin_px <= q:
        raise ValueError(f"margin_px must be between 0 and the quadrant size {q}, got {margin_px}")
    centre = get_surface(x, y)
    if centre is None:
        raise ValueError(f"quadrant ({x}, {y}) has no surface buffer: render it first")
    centre = _surface(centre)
    if centre.shape != (q, q):
        raise ValueError(f"surface of quadrant ({x}, {y}) is {centre.shape}, expected ({q}, {q})")
    m = margin_px
    out = np.pad(centre, m, mode="edge")
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx == dy == 0:
                continue
            nb = get_surface(x + dx, y + dy)
            if nb is None:
                continue
            nb = _surface(nb)
            if nb.shape != (q, q):
                raise ValueError(
                    f"surface of quadrant ({x + dx}, {y + dy}) is {nb.shape}, expected ({q}, {q})"
                )
            # rows/cols of the neighbour that fall inside the margin band
            ys = slice(q - m, q) if dy < 0 else (slice(0, q) if dy == 0 else slice(0, m))
            xs = slice(q - m, q) if dx < 0 else (slice(0, q) if dx == 0 else slice(0, m))
            oy = 0 if dy < 0 else (m if dy == 0 else m + q)
            ox = 0 if dx < 0 else (m if dx == 0 else m + q)
            part = nb[ys, xs]
            out[oy : oy + part.shape[0], ox : ox + part.shape[1]] = part
    return out


def soft_replace_color(
    rgb: np.ndarray, target_rgb: Color, new_rgb: Color = WATER_RGB, softness: float = 30.0
) -> np.ndarray:
    """The original's eyedropper fix (``replace_color.soft_color_replace``), same formula and rounding.

    ``d = ‖rgb/255 − target/255‖₂``, ``s = max(softness/255·√3, 1e-5)``, ``α = clip(1 − d/s, 0, 1)``,
    ``out = new·α + rgb·(1 − α)``, truncated to uint8. Alpha (RGBA input) is kept.
    """
    a = _image(rgb)
    target = np.array(parse_color(target_rgb), np.float64)
    new = np.array(parse_color(new_rgb), np.float64)
    if softness < 0 or not math.isfinite(softness):
        raise ValueError(f"softness must be a finite number ≥ 0, got {softness}")
    img = a[..., :3].astype(np.float64)
    d = np.linalg.norm(img / 255.0 - target / 255.0, axis=-1)
    s = max(softness / 255.0 * math.sqrt(3.0), 1e-5)
    alpha = np.clip(1.0 - d / s, 0.0, 1.0)[..., None]
    out = a.copy()
    out[..., :3] = (new * alpha + img * (1.0 - alpha)).astype(np.uint8)
    return out


def fill_water(
    rgb: np.ndarray, region: np.ndarray | tuple[int, int, int, int] | None = None, color: Color = WATER_RGB
) -> np.ndarray:
    """Paint water colour over ``region`` of an image (the original's Fill Water, generalised).

    ``region``: ``None`` = the whole image; ``(x0, y0, x1, y1)`` = a rectangle in pixels (exclusive end);
    a bool (H, W) mask = hard fill; a uint8 (H, W) mask such as ``water_mask`` output = blend with
    α = mask/255. Filled pixels of an RGBA image become opaque in proportion to α.
    """
    a = _image(rgb)
    h, w = a.shape[:2]
    c = np.array(parse_color(color), np.float64)
    if region is None:
        alpha = np.ones((h, w), np.float64)
    elif isinstance(region, tuple | list):
        if len(region) != 4 or any(
            isinstance(v, bool) or not isinstance(v, int | np.integer) for v in region
        ):
            raise ValueError(f"rectangle must be (x0, y0, x1, y1) integers, got {region!r}")
        x0, y0, x1, y1 = (int(v) for v in region)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ValueError(f"rectangle {region} is empty or outside the {w}×{h} image")
        alpha = np.zeros((h, w), np.float64)
        alpha[y0:y1, x0:x1] = 1.0
    else:
        m = np.asarray(region)
        if m.shape != (h, w):
            raise ValueError(f"mask shape {m.shape} does not match the image ({h}, {w})")
        if m.dtype == bool:
            alpha = m.astype(np.float64)
        elif m.dtype == np.uint8:
            alpha = m.astype(np.float64) / 255.0
        else:
            raise ValueError(f"mask must be bool or uint8 (0..255), got {m.dtype}")
    out = a.copy()
    al = alpha[..., None]
    out[..., :3] = np.rint(c * al + a[..., :3].astype(np.float64) * (1.0 - al)).astype(np.uint8)
    if a.shape[2] == 4:
        out[..., 3] = np.rint(a[..., 3] + (255.0 - a[..., 3]) * alpha).astype(np.uint8)
    return out


def parse_color(color: Color) -> tuple[int, int, int]:
    """``'#4A6372'``, ``'4a6372'`` or ``(74, 99, 114)`` → (74, 99, 114)."""
    if isinstance(color, str):
        h = color.strip().lstrip("#")
        if len(h) == 6:
            try:
                return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
            except ValueError:
                pass
        raise ValueError(f"colour {color!r} is not a hex colour like '#4A6372'")
    try:
        r, g, b = color
        vals = tuple(int(v) for v in (r, g, b))
        if all(0 <= v <= 255 and v == c for v, c in zip(vals, (r, g, b), strict=True)):
            return vals  # type: ignore[return-value]
    except (TypeError, ValueError):
        pass
    raise ValueError(f"colour {color!r} must be '#RRGGBB' or three integers 0..255")


def _surface(surface: np.ndarray) -> np.ndarray:
    s = np.asarray(surface)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"a surface buffer is a 2-D array of Surface classes, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"a surface buffer holds integer Surface classes, got dtype {s.dtype}")
    return s


def _image(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"image must be an (H, W, 3|4) uint8 array, got shape {a.shape} dtype {a.dtype}")
    return a
