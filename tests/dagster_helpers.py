"""Helpers for tests that run the real Dagster machinery on a small project in a temp dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from isonyc_dagster.geo.config import MapConfig, ProjectConfig
from isonyc_dagster.geo.geometry import MapGeometry


def rect_bounds_geojson(path: Path, x0: int, y0: int, x1: int, y1: int, inset_px: float = 16.0) -> Path:
    """A lat/lng polygon whose quadrant set is exactly the inclusive rectangle x0..x1 × y0..y1."""
    g = MapGeometry(MapConfig())
    q = g.q
    px = np.array([x0 * q + inset_px, (x1 + 1) * q - inset_px, (x1 + 1) * q - inset_px, x0 * q + inset_px])
    py = np.array([y0 * q + inset_px, y0 * q + inset_px, (y1 + 1) * q - inset_px, (y1 + 1) * q - inset_px])
    lng, lat = g.pixel_to_lnglat(px, py)
    ring = [[float(a), float(b)] for a, b in zip(lng, lat, strict=True)]
    ring.append(ring[0])
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    return path


def project_config(tmp: Path, x0: int, y0: int, x1: int, y1: int, **kw) -> ProjectConfig:
    bounds = rect_bounds_geojson(tmp / "bounds.geojson", x0, y0, x1, y1)
    return ProjectConfig(
        bounds=str(bounds),
        store=str(tmp / "store"),
        cache_dir=str(tmp / "cache"),
        output_dir=str(tmp / "map"),
        **kw,
    )


#: Every asset of the code location.
ASSET_NAMES = {
    "geodata",
    "render",
    "blocks",
    "bridges_v",
    "bridges_h",
    "corners",
    "generation",
    "water_mask",
    "dzi_pyramid",
    "pmtiles_archive",
    "published_map",
    "style_pairs",
}


def full_range_tags(order) -> dict[str, str]:
    """Run tags of a range run over every key of an asset (``project.order.quadrants`` or ``.steps[kind]``)."""
    first, last = order.keys[0], order.keys[-1]
    return {
        "dagster/asset_partition_range_start": f"{first[0]}|{first[1]}",
        "dagster/asset_partition_range_end": f"{last[0]}|{last[1]}",
    }
