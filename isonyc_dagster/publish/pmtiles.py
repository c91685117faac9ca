"""Single-file PMTiles archive of a built DZI pyramid (same lossless tiles, for buckets and CDNs).

The map is not geographic (an isometric view has no lat/lng per pixel), so the archive is a plain
raster pixel pyramid in the XYZ tile scheme (y down, like DZI):

    zoom z  ↔  DZI level  L = z0 + z,   z0 = max_level − ceil(log2(max(grid_w, grid_h)))
    tile (z, x, y) = DZI tile <name>_files/<z0 + z>/<x>_<y>

z0 is the highest DZI level that fits in one tile, so zoom 0 is one tile showing the whole map and the
highest zoom is the full-resolution level where one tile is one quadrant. The DZI levels below z0
(thumbnails smaller than one tile) are left out: PMTiles clients start at one tile. Interior tiles are
copied byte for byte; edge tiles, which DZI crops to the image, are padded with transparency to the
full tile size because raster PMTiles clients expect every tile at ``tileSize``. The mapping and the
quadrant grid (quadrant (x, y) = full-resolution tile (x − x0, y − y0)) are in the archive's metadata.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer

from isonyc_dagster.fileio import atomic_output
from isonyc_dagster.publish._codec import decode_rgba, encode_rgba
from isonyc_dagster.publish.layout import Format, PyramidError, PyramidLayout, tile_path
from isonyc_dagster.publish.manifest import layout_from_sidecar, read_sidecar

__all__ = ["PMTilesInfo", "export_pmtiles", "zoom_to_dzi_level"]


@dataclass(frozen=True, slots=True)
class PMTilesInfo:
    """The written archive: its zooms, the DZI level of each, its tile count and size in bytes."""

    path: Path
    min_zoom: int
    max_zoom: int
    dzi_level_of_zoom: dict[int, int]
    tiles: int
    bytes: int


def zoom_to_dzi_level(side: dict[str, Any]) -> dict[int, int]:
    """PMTiles zoom → DZI level for a pyramid sidecar (see the module docstring)."""
    g = side["grid"]
    zmax = math.ceil(math.log2(max(g["width"], g["height"])))
    z0 = side["max_level"] - zmax
    return {z: z0 + z for z in range(zmax + 1)}


def _pad(data: bytes, w: int, h: int, tile: int, fmt: Format, what: str) -> bytes:
    """An edge tile of w×h px padded with transparency to tile×tile (full-size tiles pass through)."""
    if (w, h) == (tile, tile):
        return data
    canvas = np.zeros((tile, tile, 4), np.uint8)
    canvas[:h, :w] = decode_rgba(data, what)
    return encode_rgba(canvas, fmt)


def _write_tiles(
    w: Writer, files: Path, layout: PyramidLayout, zmap: dict[int, int], side: dict[str, Any]
) -> int:
    """Copy every DZI tile of the zooms in ``zmap`` into the archive; returns how many."""
    fmt, tile = side["format"], side["tile_size"]
    count = 0
    for z, lv in zmap.items():  # tile ids grow with z, so zooms in order keep the archive clustered
        info = layout.level(lv)
        keys = sorted((zxy_to_tileid(z, c, r), c, r) for r in range(info.rows) for c in range(info.cols))
        for tid, c, r in keys:
            p = tile_path(files, lv, c, r, fmt)
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                raise PyramidError(
                    f"pyramid tile {p} is missing; re-run build_pyramid on {files.parent} before exporting"
                ) from None
            tw, th = layout.tile_size(lv, c, r)
            w.write_tile(tid, _pad(data, tw, th, tile, fmt, f"pyramid tile {p}"))
            count += 1
    return count


def _metadata(side: dict[str, Any], zmap: dict[int, int]) -> dict[str, Any]:
    """The archive's JSON metadata: the zoom ↔ DZI mapping, the quadrant grid and the sidecar's links."""
    return {
        "name": side["name"],
        "description": f"{side['title']}: isometric pixel-art map (non-geographic raster pyramid)",
        "attribution": side["attribution"],
        "type": "baselayer",
        "format": side["format"],
        "tileSize": side["tile_size"],
        "scheme": "xyz",
        "non_geographic": True,
        "dzi_level_of_zoom": {str(z): lv for z, lv in zmap.items()},
        "grid": side["grid"],
        "quadrant_px": side["quadrant_px"],
        "image": side["image"],
        "map": side["map"],
        "dagster": side["dagster"],
        "source": side["dzi"],
        "built_at": side["built_at"],
        "updated_at": side.get("updated_at"),
    }


def export_pmtiles(
    pyramid_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], *, name: str | None = None
) -> PMTilesInfo:
    """Write ``out_path`` (a ``.pmtiles`` file) from the DZI pyramid in ``pyramid_dir`` (built with
    ``build_pyramid``). Streams tile by tile; written atomically (``fileio.atomic_output``)."""
    src = Path(pyramid_dir)
    side = read_sidecar(src, name)
    zmap = zoom_to_dzi_level(side)
    zmin, zmax = min(zmap), max(zmap)
    out = Path(out_path)
    with atomic_output(out) as tmp, open(tmp, "wb") as f:
        w = Writer(f)
        count = _write_tiles(w, src / side["tiles"], layout_from_sidecar(side), zmap, side)
        w.finalize(
            {
                "tile_type": TileType.PNG if side["format"] == "png" else TileType.WEBP,
                "tile_compression": Compression.NONE,  # PNG/WebP are compressed already
                "min_zoom": zmin,
                "max_zoom": zmax,
                "center_zoom": zmin,
            },
            _metadata(side, zmap),
        )
    return PMTilesInfo(out, zmin, zmax, zmap, count, out.stat().st_size)
