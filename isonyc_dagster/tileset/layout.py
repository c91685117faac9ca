"""The on-disk tile-set layouts: isometric-nyc's dataset layout and the plain ``<layer>/<x>/<y>.png`` tree.

Original (``oxen_sync/export_to_oxen.py`` and ``utils.py``)::

    DIR/generation_config.json           the map's camera and seed
    DIR/generations/XXXX_YYYY_HASH.png   one 512² quadrant; f"{x:04d}_{y:04d}", HASH = md5(png)[:8]
    DIR/generations.csv                  x, y, quadrant (relative path), hash_quadrant

Plain: ``DIR/<layer>/<x>/<y>.png``. Both get a ``manifest.json`` (this project's) and ``generation_config.json``.
A flat directory of ``<x>_<y>.png`` or ``<x>_<y>_<hash>.png`` files is read too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.config import MapConfig

CONFIG_NAME = "generation_config.json"
MANIFEST_NAME = "manifest.json"
CSV_NAME = "generations.csv"
ORIGINAL_DIR = "generations"
#: Files a tile directory may hold besides tiles (never reported as skipped).
SIDECARS = frozenset({CONFIG_NAME, MANIFEST_NAME, CSV_NAME, "bounds.json", "data.csv", ".DS_Store"})
MANIFEST_FORMAT = "isonyc-tileset/1"

# The original's parse_generation_filename accepts any lowercase-hex hash; it writes 8 digits.
_NAME_RE = re.compile(r"^(-?\d+)_(-?\d+)(?:_([0-9a-f]+))?\.png$")
# Camera values equal to this (degrees, metres per pixel) are the same camera: JSON round trips are exact, and a
# hand-written config that says 40.7484 means 40.7484.
_TOL = 1e-9


class TilesetError(IsonycError, ValueError):
    """A tile directory or its generation_config.json cannot be imported or written; the message says why."""


class CameraMismatchError(TilesetError):
    """The directory's generation_config.json describes another camera than this map's."""


def original_hash(png: bytes) -> str:
    """The original's content hash (``oxen_sync.utils.compute_hash``): md5 hex, first 8 digits."""
    return hashlib.md5(png, usedforsecurity=False).hexdigest()[:8]


def original_name(x: int, y: int, png: bytes) -> str:
    """``XXXX_YYYY_HASH.png`` as the original writes it (``format_filename``)."""
    return f"{x:04d}_{y:04d}_{original_hash(png)}.png"


def parse_name(name: str) -> tuple[int, int, str | None] | None:
    """(x, y, hash or None) of ``<x>_<y>[_<hash>].png``, or None for any other name."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3)


def generation_config(cfg: MapConfig, n_tiles: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    """The original's ``generation_config.json`` for this map (plus ``projection``, which it did not have).

    ``n_tiles`` is the seeded tile grid the original's loader requires (positive ints); nothing reads it back.
    """
    return {
        "name": cfg.name,
        "seed": {"lat": cfg.seed.lat, "lng": cfg.seed.lng},
        "n_tiles_x": max(1, n_tiles[0]),
        "n_tiles_y": max(1, n_tiles[1]),
        "camera_azimuth_degrees": cfg.azimuth_deg,
        "camera_elevation_degrees": cfg.elevation_deg,
        "width_px": cfg.tile_px,
        "height_px": cfg.tile_px,
        "view_height_meters": cfg.view_height_m,
        "tile_step": 0.5,
        "projection": cfg.projection,
    }


def read_generation_config(path: Path) -> dict[str, Any]:
    """A generation_config.json as a dict with the camera keys present and numeric; TilesetError otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TilesetError(f"{path} cannot be read as JSON ({e}); fix or remove it") from None
    if not isinstance(data, dict):
        raise TilesetError(f"{path}: expected a JSON object, found {type(data).__name__}")
    need = ("seed", "camera_azimuth_degrees", "camera_elevation_degrees", "width_px", "height_px")
    missing = [k for k in (*need, "view_height_meters") if k not in data]
    if missing:
        raise TilesetError(
            f"{path} lacks {', '.join(missing)}; it is not an isometric-nyc generation_config.json"
        )
    seed = data["seed"]
    values = [data[k] for k in need[1:]] + [data["view_height_meters"], data.get("tile_step", 0.5)]
    if isinstance(seed, dict):
        values += [seed.get("lat"), seed.get("lng")]
    if not isinstance(seed, dict) or not all(_is_number(v) for v in values):
        raise TilesetError(f"{path}: seed {{lat, lng}} and the camera values must be numbers")
    return data


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _differs(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) > _TOL * max(1.0, abs(float(b)))


def camera_mismatches(data: dict[str, Any], cfg: MapConfig) -> list[str]:
    """Every way a generation_config.json's camera differs from ``cfg``: ``"field: file X, map Y"`` each.

    A file without ``projection`` comes from the original, which placed quadrants with its flat-earth formula.
    """
    out: list[str] = []
    seed = data["seed"]
    for name, got, want in (("seed.lat", seed["lat"], cfg.seed.lat), ("seed.lng", seed["lng"], cfg.seed.lng)):
        if _differs(got, want):
            out.append(f"{name}: file {got}, map {want}")
    az = (float(data["camera_azimuth_degrees"]) - cfg.azimuth_deg + 180.0) % 360.0 - 180.0
    if abs(az) > _TOL:
        out.append(f"camera_azimuth_degrees: file {data['camera_azimuth_degrees']}, map {cfg.azimuth_deg}")
    if _differs(data["camera_elevation_degrees"], cfg.elevation_deg):
        out.append(
            f"camera_elevation_degrees: file {data['camera_elevation_degrees']}, map {cfg.elevation_deg}"
        )
    height = float(data["height_px"])
    mpp = float(data["view_height_meters"]) / height if height > 0 else math.nan
    if not math.isfinite(mpp) or _differs(mpp, cfg.meters_per_pixel):
        out.append(
            f"meters per pixel (view_height_meters / height_px): file {mpp:.6g}, map {cfg.meters_per_pixel:.6g}"
        )
    step = float(data.get("tile_step", 0.5))
    quadrant = (float(data["width_px"]) * step, height * step)
    if any(_differs(q, cfg.quadrant_px) for q in quadrant):
        out.append(
            f"quadrant size (width_px, height_px × tile_step): file {quadrant[0]:g}×{quadrant[1]:g} px, "
            f"map {cfg.quadrant_px}×{cfg.quadrant_px} px"
        )
    projection = data.get("projection", "legacy-flat")
    if projection != cfg.projection:
        source = "" if "projection" in data else " (no projection key: the original's flat-earth placement)"
        out.append(f"projection: file {projection}{source}, map {cfg.projection}")
    return out
