"""Geometry of the Deep Zoom (DZI) pyramid: its levels, its tiles, their file names and the ``.dzi`` XML.

Layout (standard DZI, ``depth=onepixel`` numbering, what OpenSeadragon and every DZI viewer expect)::

    <out>/<name>.dzi                          XML: TileSize = quadrant_px, Overlap 0, Format png|webp
    <out>/<name>_files/<level>/<col>_<row>.<fmt>

Level ``L`` of an image W×H is ``ceil(W / 2^(maxL-L)) × ceil(H / 2^(maxL-L))`` with
``maxL = ceil(log2(max(W, H)))``, down to 1×1 at level 0. The tiles are aligned to quadrants (TileSize ==
quadrant_px, no overlap), so full-resolution tile ``(maxL, c, r)`` is quadrant ``(x0 + c, y0 + r)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.boxes import QuadRect

__all__ = ["Format", "LevelInfo", "PyramidError", "PyramidLayout", "dzi_xml", "tile_path", "tiles_dirname"]

Format = Literal["png", "webp"]


class PyramidError(IsonycError, ValueError):
    """Bad input to the pyramid export, or an output directory that is not a pyramid we can update."""


@dataclass(frozen=True, slots=True)
class LevelInfo:
    """One pyramid level: its image size in pixels and its tile grid."""

    level: int
    width: int
    height: int
    cols: int
    rows: int

    @property
    def tiles(self) -> int:
        return self.cols * self.rows


@dataclass(frozen=True)
class PyramidLayout:
    """The DZI pyramid over an inclusive quadrant bbox; tile (maxL, c, r) is quadrant (x0 + c, y0 + r)."""

    x0: int
    y0: int
    x1: int
    y1: int
    tile: int = 512

    def __post_init__(self) -> None:
        for k in ("x0", "y0", "x1", "y1", "tile"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise PyramidError(f"grid value {k}={v!r} must be an integer (quadrant keys are integers)")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise PyramidError(
                f"grid ({self.x0}, {self.y0}, {self.x1}, {self.y1}) is empty: it is an inclusive bbox "
                "(x0, y0, x1, y1) and needs x1 >= x0 and y1 >= y0"
            )
        if self.tile < 16:
            raise PyramidError(f"tile size {self.tile} is too small (quadrant_px must be >= 16)")

    @cached_property
    def grid(self) -> QuadRect:
        """The quadrants the pyramid covers."""
        return QuadRect(self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> int:
        """Full-resolution image width in pixels."""
        return self.grid.width * self.tile

    @property
    def height(self) -> int:
        """Full-resolution image height in pixels."""
        return self.grid.height * self.tile

    @cached_property
    def max_level(self) -> int:
        return math.ceil(math.log2(max(self.width, self.height)))

    @cached_property
    def _levels(self) -> tuple[LevelInfo, ...]:
        out = []
        for lv in range(self.max_level + 1):
            s = 1 << (self.max_level - lv)
            w, h = -(-self.width // s), -(-self.height // s)
            out.append(LevelInfo(lv, w, h, -(-w // self.tile), -(-h // self.tile)))
        return tuple(out)

    def level(self, level: int) -> LevelInfo:
        return self._levels[level]

    def levels(self) -> list[LevelInfo]:
        return list(self._levels)

    def tile_size(self, level: int, col: int, row: int) -> tuple[int, int]:
        """(width, height) of a tile: ``tile`` square except at the right and bottom edges."""
        info = self.level(level)
        return min(self.tile, info.width - col * self.tile), min(self.tile, info.height - row * self.tile)

    def contains(self, level: int, col: int, row: int) -> bool:
        if not 0 <= level <= self.max_level:
            return False
        info = self._levels[level]
        return 0 <= col < info.cols and 0 <= row < info.rows

    def quadrant_of(self, col: int, row: int) -> tuple[int, int]:
        """The quadrant of full-resolution tile (col, row)."""
        return self.x0 + col, self.y0 + row


def layers_index_path(out: Path, map_name: str) -> Path:
    """``<map>_layers.json``: the layer pyramids built beside map ``map_name``, in the order the viewer offers them."""
    return out / f"{map_name}_layers.json"


def tiles_dirname(name: str) -> str:
    """The name of pyramid ``name``'s tiles directory, beside its ``.dzi``."""
    return f"{name}_files"


def tile_path(files: Path, level: int, col: int, row: int, fmt: str) -> Path:
    """The file of tile (level, col, row) under the tiles directory ``files``."""
    return files / str(level) / f"{col}_{row}.{fmt}"


def dzi_xml(layout: PyramidLayout, fmt: Format) -> str:
    """The ``<name>.dzi`` descriptor of the pyramid."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" Overlap="0" '
        f'TileSize="{layout.tile}">\n'
        f'  <Size Width="{layout.width}" Height="{layout.height}"/>\n'
        "</Image>\n"
    )
