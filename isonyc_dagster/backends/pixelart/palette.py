"""The fixed, limited palette of the pixel-art backend and its building materials and sprites.

Colours were picked by eye against the SimCity-3000-style references (warm greys, brick, limestone,
white and glass towers, #4A6372 water). The whole output is drawn from this one table, so a map made
by this backend has a bounded, reproducible palette. Changing any colour changes every tile: bump
``STYLE_VERSION`` in ``pixelart.py`` when you do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_COLOURS: dict[str, tuple[int, int, int]] = {
    # --- outlines and neutrals
    "outline": (38, 34, 40),
    "outline_soft": (62, 56, 60),
    # --- water (#4A6372 is the map's water colour, shared with the water-mask stage)
    "water": (74, 99, 114),
    "water_light": (84, 111, 127),
    "water_hi": (100, 128, 142),
    "water_dark": (66, 89, 103),
    "water_edge": (56, 76, 88),
    "seawall": (150, 146, 138),
    "seawall_dark": (112, 108, 102),
    # --- ground: sidewalks, plazas, lots
    "ground": (184, 178, 164),
    "ground_joint": (172, 166, 152),
    "ground_dark": (164, 158, 146),
    "ground_light": (196, 190, 176),
    "ground_shadow": (140, 134, 126),
    "curb": (212, 208, 196),
    # --- roads
    "asphalt": (94, 94, 100),
    "asphalt_dark": (86, 86, 92),
    "asphalt_light": (104, 104, 108),
    "asphalt_kerb": (70, 70, 76),
    "lane_white": (214, 212, 200),
    "lane_yellow": (206, 178, 84),
    # --- parks and trees
    "grass": (106, 142, 72),
    "grass_dark": (94, 128, 64),
    "grass_light": (120, 156, 82),
    "grass_shadow": (72, 104, 56),
    "tree_outline": (24, 44, 30),
    "tree_dark": (38, 72, 42),
    "tree_mid": (54, 98, 50),
    "tree_light": (78, 126, 60),
    "tree_hi": (110, 154, 76),
    # --- roofs
    "roof_0": (134, 126, 116),
    "roof_0d": (116, 108, 100),
    "roof_1": (152, 148, 140),
    "roof_1d": (132, 128, 122),
    "roof_2": (112, 106, 100),
    "roof_2d": (96, 90, 86),
    "roof_3": (168, 158, 140),
    "roof_3d": (146, 136, 120),
    "roof_4": (98, 98, 102),
    "roof_4d": (84, 84, 90),
    "rim": (222, 216, 202),
    "rim_white": (240, 238, 230),
    # --- rooftop objects
    "ac_top": (204, 204, 200),
    "ac_side": (160, 160, 160),
    "ac_shade": (138, 138, 142),
    "ac_dark": (92, 92, 96),
    "wood_lit": (164, 112, 70),
    "wood_shade": (120, 80, 52),
    "wood_hoop": (84, 58, 44),
    "cone": (96, 80, 72),
    "pipe": (120, 116, 112),
    # --- walls: materials (lit = WALL_LEFT, shade = WALL_RIGHT)
    "brick_l": (156, 82, 64),
    "brick_s": (112, 58, 50),
    "brick_hi": (178, 102, 80),
    "brown_l": (140, 100, 76),
    "brown_s": (100, 70, 56),
    "brown_hi": (160, 118, 90),
    "tan_l": (206, 186, 148),
    "tan_s": (156, 138, 108),
    "tan_hi": (224, 206, 170),
    "cream_l": (220, 210, 184),
    "cream_s": (166, 156, 132),
    "cream_hi": (236, 228, 206),
    "white_l": (230, 230, 224),
    "white_s": (168, 170, 174),
    "white_hi": (246, 246, 240),
    "conc_l": (178, 174, 166),
    "conc_s": (126, 124, 124),
    "conc_hi": (198, 194, 186),
    "glass_l": (92, 108, 124),
    "glass_s": (62, 72, 88),
    "glass_hi": (132, 150, 164),
    "teal_l": (104, 130, 138),
    "teal_s": (72, 94, 106),
    "teal_hi": (146, 168, 172),
    "win_dark": (46, 44, 54),
    "win_shade": (36, 36, 44),
    "win_blue": (96, 118, 138),
    "win_sky": (140, 164, 180),
    "win_warm": (214, 190, 120),
    "sill": (214, 200, 178),
    "mullion": (170, 180, 186),
    "mullion_s": (118, 128, 138),
    "store_glass": (58, 66, 78),
    "awning_red": (150, 52, 46),
    "awning_green": (52, 100, 70),
    "awning_blue": (50, 70, 120),
}

NAMES: tuple[str, ...] = tuple(_COLOURS)
INDEX: dict[str, int] = {n: i for i, n in enumerate(NAMES)}
#: (N, 3) uint8: palette index → RGB.
RGB = np.array([_COLOURS[n] for n in NAMES], dtype=np.uint8)


def idx(name: str) -> int:
    return INDEX[name]


@dataclass(frozen=True)
class Material:
    """A facade material: colours for the lit and shaded faces and the kind of window grid."""

    name: str
    lit: str
    shade: str
    hi: str
    window: str
    glass: bool = False  # curtain wall: the wall is glass with a mullion grid instead of punched windows
    sills: bool = False
    weight: float = 1.0
    win_w: float = 0.55  # window width / bay width
    win_h: float = 0.5  # window height / floor height


MATERIALS: tuple[Material, ...] = (
    Material("brick", "brick_l", "brick_s", "brick_hi", "win_dark", sills=True, weight=2.2, win_w=0.5),
    Material("brown", "brown_l", "brown_s", "brown_hi", "win_dark", sills=True, weight=1.3, win_w=0.5),
    Material("tan", "tan_l", "tan_s", "tan_hi", "win_dark", weight=2.0),
    Material("cream", "cream_l", "cream_s", "cream_hi", "win_dark", weight=1.2),
    Material("white", "white_l", "white_s", "white_hi", "win_shade", weight=1.2, win_w=0.7, win_h=0.62),
    Material("concrete", "conc_l", "conc_s", "conc_hi", "win_dark", weight=1.1, win_w=0.62, win_h=0.56),
    Material("glass", "glass_l", "glass_s", "glass_hi", "win_shade", glass=True, weight=0.9),
    Material("teal", "teal_l", "teal_s", "teal_hi", "win_shade", glass=True, weight=0.5),
)

#: Cumulative weights for picking a material from a uniform hash.
MATERIAL_CDF = np.cumsum([m.weight for m in MATERIALS]) / sum(m.weight for m in MATERIALS)


def material_table(attr: str) -> np.ndarray:
    """Palette indices of one colour role for every material (indexable by a material array)."""
    return np.array([INDEX[getattr(m, attr)] for m in MATERIALS], dtype=np.int16)


MAT_GLASS = np.array([m.glass for m in MATERIALS])
MAT_SILLS = np.array([m.sills for m in MATERIALS])
MAT_WIN_W = np.array([m.win_w for m in MATERIALS], dtype=np.float32)
MAT_WIN_H = np.array([m.win_h for m in MATERIALS], dtype=np.float32)

ROOF_BASE = np.array([INDEX[f"roof_{i}"] for i in range(5)], dtype=np.int16)
ROOF_DARK = np.array([INDEX[f"roof_{i}d"] for i in range(5)], dtype=np.int16)
AWNINGS = np.array([INDEX[n] for n in ("awning_red", "awning_green", "awning_blue")], dtype=np.int16)

# --- rooftop sprites -------------------------------------------------------------------------------
# Small isometric objects drawn procedurally as character grids ("." transparent, letters → palette
# names), anchored at their bottom centre. Ground edges at 45° to the view have a screen slope of
# sin(45°)·cos(45°)/cos(45°) ≈ 0.707 in this camera, so box tops are 0.707-diamonds that sit on the
# (mostly grid-aligned) Manhattan roofs.
_SPRITE_KEYS = {
    "o": "outline",
    "t": "ac_top",
    "s": "ac_side",
    "S": "ac_shade",
    "d": "ac_dark",
    "B": "wood_lit",
    "b": "wood_shade",
    "h": "wood_hoop",
    "c": "cone",
    "p": "pipe",
    "T": "rim",
    "L": "conc_l",
    "R": "conc_s",
    "D": "win_dark",
    "G": "glass_s",
    "H": "glass_hi",
}
_SLOPE = 0.707


def _outlined(g: np.ndarray) -> list[str]:
    shape = g != "."
    pad = np.pad(shape, 1)
    edge = shape & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    g[edge] = "o"
    rows = np.nonzero(shape.any(axis=1))[0]
    cols = np.nonzero(shape.any(axis=0))[0]
    g = g[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return ["".join(r) for r in g]


def iso_box(
    a: int,
    hv: int,
    *,
    top: str = "t",
    left: str = "s",
    right: str = "S",
    fans: tuple[tuple[int, int], ...] = (),
    door: bool = False,
    glint: bool = False,
) -> list[str]:
    """A box with a 0.707-diamond top of half-width ``a`` px and ``hv`` px tall faces."""
    b = max(1, round(a * _SLOPE))
    g = np.full((2 * b + 2 + hv, 2 * a + 1), ".", dtype="<U1")
    yy, xx = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    dxn = np.abs(xx - a) / a
    top_m = dxn + np.abs(yy - b) / b <= 1.0 + 1e-9
    lower = np.floor(b + b * (1 - dxn) + 0.5)
    face = ~top_m & (yy > lower - 1) & (yy <= lower + hv) & (dxn <= 1)
    g[top_m] = top
    g[face & (xx < a)] = left
    g[face & (xx >= a)] = right
    for fx, fy in fans:  # fan grilles: a dark ring around a hub
        for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)):
            g[fy + dy, fx + dx] = "d"
        g[fy, fx] = "p"
    if glint:
        g[b, a - 1 : a + 2] = "H"
    if door:
        x0 = a // 2
        base = int(lower[0, x0])
        g[base + hv - 4 : base + hv, x0 : x0 + 2] = "D"
    return _outlined(g)


def water_tower(rx: int = 4, body: int = 8, legs: int = 4) -> list[str]:
    """The classic New York wooden water tank: conical roof, hooped barrel, braced legs."""
    w = 2 * rx + 1
    g = np.full((rx + body + legs + 1, w), ".", dtype="<U1")
    for r in range(rx):
        hw = round(rx * (r + 1) / rx)
        g[r, rx - hw : rx + hw + 1] = "c"
    for r in range(rx, rx + body):
        hw = rx if r < rx + body - 1 else rx - 1
        g[r, rx - hw : rx] = "B"
        g[r, rx : rx + hw + 1] = "b"
        if (r - rx) % 3 == 2:
            g[r, rx - hw : rx + hw + 1] = "h"
    base = rx + body
    for x in (1, rx, w - 2):
        g[base : base + legs, x] = "o"
    g[base + legs // 2, 1 : w - 1] = "p"
    g[base + legs // 2, [1, rx, w - 2]] = "o"
    return _outlined(g)


_SPRITES_TXT: dict[str, list[str]] = {
    "ac": iso_box(5, 3, fans=((3, 4), (7, 4))),
    "ac_big": iso_box(8, 4, fans=((4, 6), (8, 4), (12, 6))),
    "bulkhead": iso_box(6, 8, top="T", left="L", right="R", door=True),
    "tower": water_tower(),
    "skylight": iso_box(4, 1, top="G", glint=True),
}


@dataclass(frozen=True)
class Sprite:
    name: str
    dy: np.ndarray  # row offsets relative to the anchor (≤ 0: sprites grow up from their base)
    dx: np.ndarray
    colour: np.ndarray  # palette indices
    width: int
    height: int


def _build_sprite(name: str, rows: list[str]) -> Sprite:
    h, w = len(rows), len(rows[0])
    if any(len(r) != w for r in rows):
        raise ValueError(f"sprite {name!r}: rows differ in width")
    dys, dxs, cols = [], [], []
    for r, line in enumerate(rows):
        for c, ch in enumerate(line):
            if ch == ".":
                continue
            dys.append(r - (h - 1))
            dxs.append(c - w // 2)
            cols.append(INDEX[_SPRITE_KEYS[ch]])
    return Sprite(name, np.array(dys, np.int64), np.array(dxs, np.int64), np.array(cols, np.int16), w, h)


SPRITES: tuple[Sprite, ...] = tuple(_build_sprite(n, r) for n, r in _SPRITES_TXT.items())
