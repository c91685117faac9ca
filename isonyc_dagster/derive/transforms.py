"""Offline layer transforms: night, snow and dark, from the base pixels plus the render's per-pixel buffers.

Every transform is a pure function of (pixel colour, surface class, building id, height, *world* pixel position):
patterns (windows, street lamps, snow drifts, water glints) are hashed from world coordinates and building ids,
never from a window's local coordinates or a random generator. A quadrant transformed alone is therefore
pixel-identical to the same pixels of a transformed larger area, with no neighbour to read. The one feature that
looks beyond a pixel, the street lamps, looks only inside its own ``LAMP_CELL``-aligned world cell, and cells
never straddle quadrants (``check_alignment``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.surfaces import PALETTE, Surface

#: Side of the world-aligned cells that hold at most one street lamp each (divides every quadrant size used).
LAMP_CELL = 32
#: Storey height (metres): wall pixels are cut into floors by the render's height buffer.
FLOOR_M = 3.4
#: Window columns: every ``WINDOW_PERIOD`` world pixels, ``WINDOW_WIDTH`` of them are glass.
WINDOW_PERIOD = 4
WINDOW_WIDTH = 2
#: Period (px) of the smooth world noise that shapes snow drifts.
DRIFT_PX = 24

WALLS = (Surface.WALL_LEFT, Surface.WALL_RIGHT)
#: The classes snow settles on (roofs plus the ground classes); walls and water never change.
SNOW_CLASSES = (Surface.ROOF, Surface.GROUND, Surface.ROAD, Surface.PARK)
#: Ground classes lit by street lamps.
LAMP_LIT = (Surface.GROUND, Surface.ROAD, Surface.PARK)


class DeriveError(IsonycError, ValueError):
    """A derived layer cannot be computed from these inputs; the message names the input and the fix."""


@dataclass(frozen=True)
class Source:
    """What a transform reads: base pixels and the render buffers of the same window, and where it lies."""

    rgb: np.ndarray  # (H, W, 3) uint8, the source layer's pixels
    surface: np.ndarray  # (H, W) uint8 Surface classes
    building: np.ndarray  # (H, W) int32 stable building ids (0 = none)
    height: np.ndarray  # (H, W) float32 metres above ground
    origin_px: tuple[int, int]  # world pixel of the top-left pixel

    def validate(self) -> None:
        h, w = self.surface.shape[:2]
        if self.rgb.shape != (h, w, 3) or self.rgb.dtype != np.uint8:
            raise DeriveError(
                f"source pixels are {self.rgb.shape} {self.rgb.dtype}, the render buffers {h}×{w}: "
                "derive from the generation tile of the same quadrant as its render"
            )
        for name in ("building", "height"):
            if getattr(self, name).shape != (h, w):
                raise DeriveError(f"render buffer {name!r} is {getattr(self, name).shape}, expected {(h, w)}")

    def world(self) -> tuple[np.ndarray, np.ndarray]:
        """World pixel x and y of every pixel, (H, W) int64 each."""
        h, w = self.surface.shape
        ox, oy = self.origin_px
        wy, wx = np.mgrid[oy : oy + h, ox : ox + w]
        return wx.astype(np.int64), wy.astype(np.int64)


def check_alignment(src: Source, cell: int = LAMP_CELL) -> None:
    """Lamp cells must not straddle the window's edge, or two quadrants would each see half a cell."""
    h, w = src.surface.shape
    ox, oy = src.origin_px
    if ox % cell or oy % cell or w % cell or h % cell:
        raise DeriveError(
            f"window at world pixel {src.origin_px} of {w}×{h} px is not aligned to {cell} px lamp cells; "
            f"derive whole quadrants (sizes and origins multiples of {cell})"
        )


# --- world hashes ------------------------------------------------------------------------------------------


def world_hash(*keys: np.ndarray | int) -> np.ndarray:
    """A well-mixed uint32 hash of integer arrays (broadcast together): same inputs, same bits, anywhere."""
    h: np.ndarray = np.asarray(0x9E3779B9, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            v = np.asarray(k).astype(np.int64).astype(np.uint64) & np.uint64(0xFFFFFFFF)
            h = (h ^ v) * np.uint64(0x85EBCA6B) & np.uint64(0xFFFFFFFF)
            h ^= h >> np.uint64(13)
            h = h * np.uint64(0xC2B2AE35) & np.uint64(0xFFFFFFFF)
            h ^= h >> np.uint64(16)
    return h.astype(np.uint32)


def unit_hash(*keys: np.ndarray | int) -> np.ndarray:
    """``world_hash`` as floats in [0, 1)."""
    return world_hash(*keys).astype(np.float64) / 2.0**32


def value_noise(wx: np.ndarray, wy: np.ndarray, period: int, salt: int) -> np.ndarray:
    """Smooth noise in [0, 1] on the world grid: hashed lattice values, smoothstep-interpolated."""
    cx, cy = np.floor_divide(wx, period), np.floor_divide(wy, period)
    fx = (wx - cx * period + 0.5) / period
    fy = (wy - cy * period + 0.5) / period
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    if cx.size == 0:
        return np.zeros(cx.shape)
    # Hash the lattice once (a few hundred points), then look the corners up per pixel.
    x0, y0 = int(cx.min()), int(cy.min())
    gy, gx = np.mgrid[y0 : int(cy.max()) + 2, x0 : int(cx.max()) + 2]
    lattice = unit_hash(gx, gy, salt)
    ix, iy = cx - x0, cy - y0
    v00, v10 = lattice[iy, ix], lattice[iy, ix + 1]
    v01, v11 = lattice[iy + 1, ix], lattice[iy + 1, ix + 1]
    return (v00 * (1 - fx) + v10 * fx) * (1 - fy) + (v01 * (1 - fx) + v11 * fx) * fy


#: 4×4 Bayer matrix (0..15)/16: ordered dithering on world coordinates gives pixel-art soft edges.
BAYER4 = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]], np.float64) / 16.0 + 1 / 32


def bayer(wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    return BAYER4[np.mod(wy, 4), np.mod(wx, 4)]


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _isin(surface: np.ndarray, classes: tuple[Surface, ...]) -> np.ndarray:
    return np.isin(surface, [int(c) for c in classes])


# --- night -------------------------------------------------------------------------------------------------

#: Night tint: desaturate halfway, scale per channel (blue kept most), lift toward night-sky blue.
NIGHT_SCALE = np.array([0.24, 0.28, 0.46])
NIGHT_LIFT = np.array([6.0, 9.0, 24.0])
WINDOW_RGB = np.array([[255, 214, 120], [255, 236, 168], [255, 190, 96], [214, 232, 255]], np.float64)
LAMP_RGB = np.array([255, 226, 150], np.float64)
GLINT_RGB = np.array([236, 206, 128], np.float64)


def night_base(rgb: np.ndarray) -> np.ndarray:
    """The global night look every pixel gets before lights: darker, bluer, less saturated (float RGB)."""
    f = rgb.astype(np.float64)
    grey = luma(f)[..., None]
    return (0.5 * f + 0.5 * grey) * NIGHT_SCALE + NIGHT_LIFT


@dataclass(frozen=True)
class NightLights:
    """Where night adds light: lit windows (walls), lamp light (ground classes), water glints."""

    windows: np.ndarray  # (H, W) bool
    lamps: np.ndarray  # (H, W) bool: lamp heads and the light pools around them
    glints: np.ndarray  # (H, W) bool

    def any(self) -> np.ndarray:
        return self.windows | self.lamps | self.glints


def window_mask(src: Source, wx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lit window pixels and a per-pixel colour index: floors from the height buffer, columns from world x.

    Which windows are lit is hashed from (building, floor, column), and how many from the building alone, so a
    building keeps its pattern in every quadrant it reaches and in every re-run.
    """
    h = src.height.astype(np.float64)
    floor = np.floor(h / FLOOR_M).astype(np.int64)
    in_floor = (h / FLOOR_M) - floor
    glass = _isin(src.surface, WALLS) & (src.building > 0) & (src.height > 0.6 * FLOOR_M)
    glass &= (in_floor > 0.28) & (in_floor < 0.78) & (np.mod(wx, WINDOW_PERIOD) < WINDOW_WIDTH)
    # Hash only the glass pixels (a fraction of the quadrant): the same values, a fraction of the time.
    ys, xs = np.nonzero(glass)
    b, f, col = (
        src.building[ys, xs].astype(np.int64),
        floor[ys, xs],
        np.floor_divide(wx[ys, xs], WINDOW_PERIOD),
    )
    share = 0.12 + 0.5 * unit_hash(b, 7)  # this building's share of lit windows
    lit = np.zeros_like(glass)
    lit[ys, xs] = unit_hash(b, f, col, 11) < share
    colour = np.zeros(glass.shape, np.int64)
    colour[ys, xs] = world_hash(b, f // 3, col // 2, 13) % len(WINDOW_RGB)
    return lit, colour


def lamp_light(src: Source, wx: np.ndarray, wy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Street lamps on road pixels, one at most per world cell, and their stepped pools of light (0..1)."""
    check_alignment(src)
    c = LAMP_CELL
    ox, oy = src.origin_px
    h, w = src.surface.shape
    # One lamp candidate per cell, hashed per cell and spread over its pixels.
    gy, gx = np.mgrid[oy // c : (oy + h) // c, ox // c : (ox + w) // c]
    # Lamp position inside its cell (jittered away from the cell's edge so the pool stays inside it).
    cell_lx = gx * c + (c // 2 - 6 + world_hash(gx, gy, 21) % 13).astype(np.int64)
    cell_ly = gy * c + (c // 2 - 6 + world_hash(gx, gy, 22) % 13).astype(np.int64)
    surf_at_lamp = src.surface[cell_ly - oy, cell_lx - ox]  # same quadrant: cells never straddle it
    cell_on = (surf_at_lamp == Surface.ROAD) & (unit_hash(gx, gy, 23) < 0.75)
    spread = (np.s_[:, None, :, None], (gy.shape[0], c, gx.shape[1], c))
    lx = np.broadcast_to(cell_lx[spread[0]], spread[1]).reshape(h, w)
    ly = np.broadcast_to(cell_ly[spread[0]], spread[1]).reshape(h, w)
    on = np.broadcast_to(cell_on[spread[0]], spread[1]).reshape(h, w)
    # The ground plane is foreshortened on screen: a round pool is twice as wide as it is tall.
    d = np.hypot((wx - lx) / 2.0, (wy - ly).astype(np.float64)) / 5.0
    ring = np.where(d <= 0.35, 1.0, np.where(d < 1.0, 0.55, np.where(d < 1.6, 0.28, 0.0)))
    ring = np.where((ring == 0.28) & (bayer(wx, wy) > 0.5), 0.0, ring)  # dithered outer ring
    lit = on & (ring > 0) & _isin(src.surface, LAMP_LIT)
    return lit, np.where(lit, ring, 0.0)


def glint_mask(src: Source, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """City lights reflected on water: short horizontal dashes on a world-hashed scatter."""
    out = (src.surface == Surface.WATER) & (np.mod(wx, 6) < 4)
    ys, xs = np.nonzero(out)
    px, py = wx[ys, xs], wy[ys, xs]
    # Denser in world-noise patches (lit stretches of shore), sparse elsewhere: no uniform static.
    density = 0.004 + 0.06 * np.clip(value_noise(px, py, 64, 32) * 2 - 0.8, 0, 1)
    out[ys, xs] = unit_hash(np.floor_divide(px + np.mod(py, 2) * 3, 6), py, 31) < density
    return out


def night_lights(src: Source) -> NightLights:
    wx, wy = src.world()
    windows, _ = window_mask(src, wx)
    lamps, _ = lamp_light(src, wx, wy)
    return NightLights(windows, lamps, glint_mask(src, wx, wy))


def night(src: Source) -> np.ndarray:
    """Night: everything darkened and blue-shifted; lit windows on walls, lamp pools on the ground, glints on
    water. Pixels outside ``night_lights`` are exactly ``night_base``."""
    src.validate()
    wx, wy = src.world()
    out = night_base(src.rgb)
    windows, colour = window_mask(src, wx)
    shade = np.where(src.surface == Surface.WALL_RIGHT, 0.82, 1.0)[..., None]  # the shaded side glows less
    out = np.where(windows[..., None], WINDOW_RGB[colour] * shade, out)
    lamps, ring = lamp_light(src, wx, wy)
    pool = out + (LAMP_RGB - out) * (ring[..., None] * 0.75)
    out = np.where(lamps[..., None], np.where((ring == 1.0)[..., None], LAMP_RGB, pool), out)
    glints = glint_mask(src, wx, wy)
    out = np.where(glints[..., None], out + (GLINT_RGB - out) * 0.55, out)
    return _u8(out)


# --- snow --------------------------------------------------------------------------------------------------

#: How much snow each class holds before drift noise (roofs and open ground most, roads are ploughed slush).
SNOW_COVER = {Surface.ROOF: 0.95, Surface.GROUND: 0.85, Surface.PARK: 0.9, Surface.ROAD: 0.35}
SNOW_RGB = np.array([[250, 251, 255], [228, 234, 246], [200, 210, 230], [170, 180, 204]], np.float64)
SLUSH_RGB = np.array([150, 150, 160], np.float64)


def snow_amount(src: Source, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """Snow cover in {0, 1/3, 2/3, 1} per pixel: class cover shaped by world drift noise, with soft, dithered
    edges; 0 wherever the class holds no snow (walls, water)."""
    cover = np.zeros(src.surface.shape)
    for cls, amount in SNOW_COVER.items():
        cover[src.surface == cls] = amount
    drift = value_noise(wx, wy, DRIFT_PX, 41) * 0.6 + value_noise(wx, wy, DRIFT_PX // 3, 42) * 0.4
    s = np.clip((cover + 0.9 * (drift - 0.5) - 0.15) / 0.5, 0.0, 1.0) * (cover > 0)
    # Quantise to thirds with ordered dithering: a pixel-art soft edge, aligned to the world grid.
    return np.floor(s * 3 + bayer(wx, wy)).clip(0, 3) / 3.0 * (cover > 0)


def tree_mask(src: Source) -> np.ndarray:
    """Tree pixels of parks: green-dominant and darker than open lawn."""
    f = src.rgb.astype(np.int32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    return (src.surface == Surface.PARK) & (g > r + 8) & (g >= b) & (luma(f) < 120)


def snow(src: Source) -> np.ndarray:
    """Snow: roofs, parks and ground whitened by class (roads to slush), trees frosted; walls and water
    untouched. Snow keeps the base's light and shade: darker base pixels get shadowed snow."""
    src.validate()
    wx, wy = src.world()
    f = src.rgb.astype(np.float64)
    lum = luma(f)
    amount = snow_amount(src, wx, wy)
    # Shade index 0 (bright) … 3 (shadow) from the base's luminance, dithered so gradients stay pixel art.
    shade = np.clip(np.floor((200 - lum) / 40 + bayer(wx, wy)), 0, 3).astype(np.int64)
    snow_rgb = SNOW_RGB[shade]
    road = src.surface == Surface.ROAD
    snow_rgb = np.where(road[..., None], np.where((amount >= 1)[..., None], snow_rgb, SLUSH_RGB), snow_rgb)
    out = f + (snow_rgb - f) * amount[..., None]
    trees = tree_mask(src)
    # Frost: the sunlit top of a crown turns white, the rest keeps a cold, dark green.
    # Per pixel only (no neighbour): the crown's lit pixels, plus a dithered sprinkle on the rest.
    top = trees & ((lum > np.float64(92)) | (bayer(wx, wy) > 0.9))
    frosted = np.where(top[..., None], SNOW_RGB[1], f * np.array([0.7, 0.8, 0.9]) + np.array([10, 14, 24]))
    out = np.where(trees[..., None], frosted, out)
    return _u8(out)


# --- dark --------------------------------------------------------------------------------------------------

#: Dark theme: one base colour per class; pixels keep their relative brightness in ``DARK_STEPS`` steps.
DARK_RGB = {
    Surface.NONE: (18, 20, 26),
    Surface.GROUND: (40, 43, 52),
    Surface.ROAD: (58, 62, 74),
    Surface.PARK: (30, 52, 40),
    Surface.WATER: (16, 28, 48),
    Surface.ROOF: (64, 67, 78),
    Surface.WALL_LEFT: (48, 51, 62),
    Surface.WALL_RIGHT: (34, 36, 46),
}
DARK_STEPS = (-16, -8, 0, 8, 16)


def dark_palette() -> np.ndarray:
    """The dark theme's palette: (classes, steps, 3) uint8."""
    base = np.array([DARK_RGB[s] for s in Surface], np.int32)
    return np.clip(base[:, None, :] + np.array(DARK_STEPS)[None, :, None], 0, 255).astype(np.uint8)


def dark(src: Source) -> np.ndarray:
    """Dark theme: every pixel becomes a colour of its class's dark ramp (``dark_palette``), chosen by how much
    brighter or darker than its class's render colour the base pixel is; windows and details survive as steps."""
    src.validate()
    pal = dark_palette()
    cls = np.clip(src.surface, 0, len(Surface) - 1)
    ref = luma(PALETTE[cls].astype(np.float64))
    dev = luma(src.rgb.astype(np.float64)) - ref
    step = np.clip(np.rint(dev / 24.0) + len(DARK_STEPS) // 2, 0, len(DARK_STEPS) - 1).astype(np.int64)
    return pal[cls, step]


# --- registry ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    name: str
    fn: Callable[[Source], np.ndarray]
    #: Bumped whenever the transform's output changes, so stored tiles of an older version read as stale.
    version: int
    description: str


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("night", night, 1, "lit windows on walls, street lamps on roads, glints on water"),
        Transform("snow", snow, 1, "snow on roofs, parks and ground by surface class; frosted trees"),
        Transform("dark", dark, 1, "palette-mapped dark theme for reading at night"),
    )
}


def get_transform(name: str) -> Transform:
    if name not in TRANSFORMS:
        raise DeriveError(f"unknown derived layer {name!r}; choose from {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name]


def parse_layer_names(text: str) -> list[str]:
    """``"night,snow"`` → ``["night", "snow"]`` (order kept, duplicates dropped); unknown names are refused."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        get_transform(n)
    return list(dict.fromkeys(names))
