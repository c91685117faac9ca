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

import contextlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips
from PIL import Image
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer

from isonyc_dagster.publish.pyramid import PyramidError, layout_from_sidecar, read_sidecar

__all__ = ["PMTilesInfo", "export_pmtiles", "zoom_to_dzi_level"]


@dataclass(frozen=True, slots=True)
class PMTilesInfo:
    path: Path
    min_zoom: int
    max_zoom: int
    dzi_level_of_zoom: dict[int, int]
    tiles: int
    bytes: int


def zoom_to_dzi_level(side: dict) -> dict[int, int]:
    """PMTiles zoom → DZI level for a pyramid sidecar (see the module docstring)."""
    g = side["grid"]
    zmax = math.ceil(math.log2(max(g["width"], g["height"])))
    z0 = side["max_level"] - zmax
    return {z: z0 + z for z in range(zmax + 1)}


def _pad(data: bytes, w: int, h: int, tile: int, fmt: str) -> bytes:
    if (w, h) == (tile, tile):
        return data
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGBA"))
    canvas = np.zeros((tile, tile, 4), np.uint8)
    canvas[:h, :w] = arr
    img = pyvips.Image.new_from_memory(canvas.data, tile, tile, 4, "uchar")
    return (
        img.write_to_buffer(".png", compression=6)
        if fmt == "png"
        else img.write_to_buffer(".webp", lossless=True)
    )


def export_pmtiles(
    pyramid_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], *, name: str | None = None
) -> PMTilesInfo:
    """Write ``out_path`` (a ``.pmtiles`` file) from the DZI pyramid in ``pyramid_dir`` (built with
    ``build_pyramid``). Streams tile by tile; written to a temp file and renamed into place."""
    src = Path(pyramid_dir)
    side = read_sidecar(src, name)
    layout = layout_from_sidecar(side)
    fmt, tile = side["format"], side["tile_size"]
    files = src / side["tiles"]
    zmap = zoom_to_dzi_level(side)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "wb") as f:
            w = Writer(f)
            for z, lv in zmap.items():  # tile ids grow with z, so zooms in order keep the archive clustered
                info = layout.level(lv)
                keys = sorted(
                    (zxy_to_tileid(z, c, r), c, r) for r in range(info.rows) for c in range(info.cols)
                )
                for tid, c, r in keys:
                    p = files / str(lv) / f"{c}_{r}.{fmt}"
                    try:
                        data = p.read_bytes()
                    except FileNotFoundError:
                        raise PyramidError(
                            f"pyramid tile {p} is missing; re-run build_pyramid on {src} before exporting"
                        ) from None
                    tw, th = layout.tile_size(lv, c, r)
                    w.write_tile(tid, _pad(data, tw, th, tile, fmt))
                    count += 1
            meta = {
                "name": side["name"],
                "description": f"{side['title']}: isometric pixel-art map (non-geographic raster pyramid)",
                "attribution": side["attribution"],
                "type": "baselayer",
                "format": fmt,
                "tileSize": tile,
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
            zmin, zmax = min(zmap), max(zmap)
            w.finalize(
                {
                    "tile_type": TileType.PNG if fmt == "png" else TileType.WEBP,
                    "tile_compression": Compression.NONE,  # PNG/WebP are compressed already
                    "min_zoom": zmin,
                    "max_zoom": zmax,
                    "center_zoom": zmin,
                },
                meta,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return PMTilesInfo(out, min(zmap), max(zmap), zmap, count, out.stat().st_size)
