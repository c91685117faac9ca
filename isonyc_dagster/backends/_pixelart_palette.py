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
    "grass_shadow": (70, 100, 56),
    "tree_outline": (30, 54, 36),
    "tree_dark": (44, 84, 46),
    "tree_mid": (62, 112, 54),
    "tree_light": (88, 140, 64),
    "tree_hi": (124, 170, 84),
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


MATERIALS: tuple[Material, ...] = (
    Material("brick", "brick_l", "brick_s", "brick_hi", "win_dark", sills=True, weight=2.2),
    Material("brown", "brown_l", "brown_s", "brown_hi", "win_dark", sills=True, weight=1.3),
    Material("tan", "tan_l", "tan_s", "tan_hi", "win_dark", sills=False, weight=2.0),
    Material("cream", "cream_l", "cream_s", "cream_hi", "win_dark", weight=1.2),
    Material("white", "white_l", "white_s", "white_hi", "win_shade", weight=1.2),
    Material("concrete", "conc_l", "conc_s", "conc_hi", "win_dark", weight=1.1),
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

ROOF_BASE = np.array([INDEX[f"roof_{i}"] for i in range(5)], dtype=np.int16)
ROOF_DARK = np.array([INDEX[f"roof_{i}d"] for i in range(5)], dtype=np.int16)
AWNINGS = np.array([INDEX[n] for n in ("awning_red", "awning_green", "awning_blue")], dtype=np.int16)

# --- rooftop sprites -------------------------------------------------------------------------------
# Drawn bottom-centre anchored, in screen space; "." is transparent. Letters map to palette names.
_SPRITE_KEYS = {
    "o": "outline",
    "t": "ac_top",
    "s": "ac_side",
    "d": "ac_dark",
    "B": "wood_lit",
    "b": "wood_shade",
    "h": "wood_hoop",
    "c": "cone",
    "p": "pipe",
    "T": "rim",  # bulkhead top: light
    "L": "conc_l",
    "R": "conc_s",
    "D": "win_dark",
    "G": "glass_s",
    "H": "glass_hi",
}

_SPRITES_TXT: dict[str, list[str]] = {
    "ac": [
        ".ooooo.",
        "ottttto",
        "otdtdto",
        "ottttto",
        "ossssso",
        ".ooooo.",
    ],
    "ac2": [
        ".ooooooooo.",
        "ottttttttto",
        "otdtdtdtdto",
        "ottttttttto",
        "ossssssssso",
        "ossssssssso",
        ".ooooooooo.",
    ],
    "bulkhead": [
        "..ooooooo..",
        ".oTTTTTTTo.",
        "oTTTTTTTTTo",
        "oLLLLLRRRRo",
        "oLLLLLRRRRo",
        "oLLDDLRRRRo",
        "oLLDDLRRRRo",
        "oLLDDLRRRRo",
        ".ooooooooo.",
    ],
    "tower": [
        "....o....",
        "...oco...",
        "..occco..",
        ".occccco.",
        "oBBBBbbbo",
        "oBBBbbbbo",
        "ohhhhhhho",
        "oBBBbbbbo",
        "oBBBbbbbo",
        "ohhhhhhho",
        "oBBBbbbbo",
        ".oBBbbbo.",
        "..o...o..",
        "..op.po..",
        "..o...o..",
        ".oo...oo.",
    ],
    "skylight": [
        ".oooooo.",
        "oGGGGGGo",
        "oGHGGHGo",
        "oGGGGGGo",
        "oLLLLLLo",
        ".oooooo.",
    ],
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
    return Sprite(
        name, np.array(dys, np.int64), np.array(dxs, np.int64), np.array(cols, np.int16), w, h
    )


SPRITES: tuple[Sprite, ...] = tuple(_build_sprite(n, r) for n, r in _SPRITES_TXT.items())
