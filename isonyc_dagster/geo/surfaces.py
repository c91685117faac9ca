"""Surface classes of the whitebox render and their fixed colours.

Later stages (templates, the offline pixel-art backend, QA) recover classes from render colours, so
this palette is a contract: never change a colour without bumping ``PALETTE_VERSION``. Every colour is
distinct from pure red (#FF0000, the template border) and from each other by ≥ 30 per channel sum.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

PALETTE_VERSION = 1


class Surface(IntEnum):
    NONE = 0  # nothing drawn (never present in a finished render)
    GROUND = 1  # land that is not road or park (sidewalks, lots, plazas)
    ROAD = 2
    PARK = 3
    WATER = 4
    ROOF = 5
    WALL_LEFT = 6  # walls whose outward normal points to screen-left (lit side)
    WALL_RIGHT = 7  # walls whose outward normal points to screen-right (shaded side)


#: Render colour (RGB) of each surface class, indexed by ``Surface`` value.
SURFACE_RGB: dict[Surface, tuple[int, int, int]] = {
    Surface.NONE: (0, 0, 0),
    Surface.GROUND: (196, 192, 180),
    Surface.ROAD: (112, 112, 118),
    Surface.PARK: (118, 164, 94),
    Surface.WATER: (64, 104, 168),
    Surface.ROOF: (238, 236, 230),
    Surface.WALL_LEFT: (160, 158, 170),
    Surface.WALL_RIGHT: (96, 96, 112),
}

#: (len(Surface), 3) uint8 lookup table: ``PALETTE[class_buffer]`` gives the render RGB.
PALETTE = np.array([SURFACE_RGB[s] for s in Surface], dtype=np.uint8)


def classes_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Recover the surface class of every pixel of a whitebox render (H, W, 3) → (H, W) uint8.

    Pixels that match no palette colour exactly get ``Surface.NONE``.
    """
    rgb = np.asarray(rgb)[..., :3].astype(np.int32)
    key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.zeros(key.shape, dtype=np.uint8)
    for s, (r, g, b) in SURFACE_RGB.items():
        if s is not Surface.NONE:
            out[key == ((r << 16) | (g << 8) | b)] = int(s)
    return out


#: The template contract's outline: pure red, drawn this many pixels wide *inside* the infill rectangle.
BORDER_RGB = (255, 0, 0)
BORDER_PX = 2
