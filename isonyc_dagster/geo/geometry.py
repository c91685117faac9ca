"""Exact map geometry: quadrant/pixel ↔ camera plane ↔ ground metres ↔ lat/lng.

Frames
- lat/lng: WGS84 degrees.
- ground (E, N): metres in a transverse Mercator projection centred on the map seed (scale 1 at the
  seed, < 1.2e-5 scale error anywhere in NYC). The original used 111,111 m/degree with one cos(lat),
  which drifts by metres to tens of metres across the city (see ``flat_earth_pixel``); a map with
  ``projection = "legacy-flat"`` uses that formula instead (``geo.legacy``), so its quadrant keys match the
  original's tiles.
- camera plane (r, u): metres on the image plane of the orthographic camera; r to screen-right,
  u to screen-up. A ground point at height h sits at
  ``r = E·cos(az) − N·sin(az)``, ``u = (E·sin(az) + N·cos(az))·sin(dep) + h·cos(dep)``
  where ``dep = −elevation`` is the camera's depression angle.
- world pixel (px, py): ``px = q + r/mpp``, ``py = q − u/mpp`` with q = quadrant_px, so the seed is the
  bottom-right corner of quadrant (0, 0) (the original's anchor convention; quadrant keys match
  isometric.nyc's). Quadrant (x, y) covers ``[x·q, (x+1)·q) × [y·q, (y+1)·q)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from pyproj import Geod, Transformer
from shapely.geometry import Polygon

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo import legacy
from isonyc_dagster.geo.config import MapConfig

ArrayLike = float | np.ndarray

#: The map's domain: points up to this far from the seed. The local transverse Mercator stays within 0.4 % of true
#: scale there; farther out it distorts (and turns infinite), so points beyond are refused, not silently misplaced.
MAP_RADIUS_M = 500_000.0
#: Heights above ground ``locate`` accepts (metres): the tallest building is 828 m; this is room, not a model.
HEIGHT_RANGE_M = (-1_000.0, 10_000.0)
#: Quadrant indices beyond this are refused before any arithmetic (they would overflow a float long before).
_MAX_INDEX = 10**9

_GEOD = Geod(ellps="WGS84")


class GeometryError(IsonycError, ValueError):
    """A coordinate is not a finite number, or lies outside the degree ranges or the map's domain."""


def _finite(name: str, value: float, lo: float, hi: float, unit: str) -> float:
    """``value`` as a float, if it is a finite number within [lo, hi]; else a GeometryError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise GeometryError(f"{name} {value!r} is not a number; give {unit} in {lo:g}…{hi:g}") from None
    if not math.isfinite(v):
        raise GeometryError(f"{name} {value!r} is not a finite number; give {unit} in {lo:g}…{hi:g}")
    if not lo <= v <= hi:
        raise GeometryError(f"{name} {v:g} is out of range; give {unit} in {lo:g}…{hi:g}")
    return v


def check_lat_lng(lat: float, lng: float) -> tuple[float, float]:
    """(lat, lng) as floats if both are finite degrees in range; else a GeometryError naming the bad one."""
    return (
        _finite("latitude", lat, -90.0, 90.0, "degrees"),
        _finite("longitude", lng, -180.0, 180.0, "degrees"),
    )


@lru_cache(maxsize=32)
def _transformers(lat0: float, lon0: float) -> tuple[Transformer, Transformer]:
    crs = f"+proj=tmerc +lat_0={lat0!r} +lon_0={lon0!r} +k=1 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
    fwd = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    inv = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return fwd, inv


@dataclass(frozen=True)
class MapGeometry:
    """All coordinate mappings of one map. Cheap to create; transformers are cached per seed."""

    config: MapConfig

    # --- constants -------------------------------------------------------------------------
    @cached_property
    def mpp(self) -> float:
        return self.config.meters_per_pixel

    @cached_property
    def q(self) -> int:
        return self.config.quadrant_px

    @cached_property
    def _az(self) -> tuple[float, float]:
        a = math.radians(self.config.azimuth_deg)
        return math.cos(a), math.sin(a)

    @cached_property
    def _dep(self) -> tuple[float, float]:
        d = math.radians(-self.config.elevation_deg)
        return math.sin(d), math.cos(d)

    @property
    def height_px_per_m(self) -> float:
        """Screen pixels a point rises per metre of height (≈ 2.41 for the production camera)."""
        return self._dep[1] / self.mpp

    @property
    def ground_depth_px_per_m(self) -> float:
        """Screen pixels per metre of ground along the view direction (≈ 2.41)."""
        return self._dep[0] / self.mpp

    @cached_property
    def ground_to_pixel_affine(self) -> tuple[float, float, float, float, float, float]:
        """Coefficients (a, b, d, e, xoff, yoff) for shapely.affinity.affine_transform: E,N → px,py at h=0."""
        ca, sa = self._az
        sd, _ = self._dep
        m, q = self.mpp, self.q
        return (ca / m, -sa / m, -sa * sd / m, -ca * sd / m, float(q), float(q))

    @cached_property
    def pixel_to_ground_affine(self) -> tuple[float, float, float, float, float, float]:
        """Inverse of ``ground_to_pixel_affine`` (px,py at h=0 → E,N)."""
        a, b, d, e, xo, yo = self.ground_to_pixel_affine
        det = a * e - b * d
        ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
        return (ia, ib, id_, ie, -(ia * xo + ib * yo), -(id_ * xo + ie * yo))

    # --- lat/lng ↔ ground ---------------------------------------------------------------------
    def lnglat_to_ground(self, lng: ArrayLike, lat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        if self.config.projection == "legacy-flat":
            return legacy.lnglat_to_ground(self.config, lng, lat)
        fwd, _ = _transformers(self.config.seed.lat, self.config.seed.lng)
        e, n = fwd.transform(np.asarray(lng, dtype=float), np.asarray(lat, dtype=float))
        return np.asarray(e), np.asarray(n)

    def ground_to_lnglat(self, e: ArrayLike, n: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        if self.config.projection == "legacy-flat":
            return legacy.ground_to_lnglat(self.config, e, n)
        _, inv = _transformers(self.config.seed.lat, self.config.seed.lng)
        lng, lat = inv.transform(np.asarray(e, dtype=float), np.asarray(n, dtype=float))
        return np.asarray(lng), np.asarray(lat)

    # --- ground ↔ camera plane ↔ pixel ---------------------------------------------------------
    def ground_to_camera(
        self, e: ArrayLike, n: ArrayLike, h: ArrayLike = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        ca, sa = self._az
        sd, cd = self._dep
        e, n, h = np.asarray(e, float), np.asarray(n, float), np.asarray(h, float)
        r = e * ca - n * sa
        u = (e * sa + n * ca) * sd + h * cd
        return r, u

    def camera_to_ground(
        self, r: ArrayLike, u: ArrayLike, h: ArrayLike = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        ca, sa = self._az
        sd, cd = self._dep
        r, u, h = np.asarray(r, float), np.asarray(u, float), np.asarray(h, float)
        f = (u - h * cd) / sd
        return r * ca + f * sa, -r * sa + f * ca

    def camera_to_pixel(self, r: ArrayLike, u: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        return self.q + np.asarray(r, float) / self.mpp, self.q - np.asarray(u, float) / self.mpp

    def pixel_to_camera(self, px: ArrayLike, py: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(px, float) - self.q) * self.mpp, (self.q - np.asarray(py, float)) * self.mpp

    def ground_to_pixel(
        self, e: ArrayLike, n: ArrayLike, h: ArrayLike = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ground metres (+ height in metres) → world pixel. Heights lift points up the screen."""
        return self.camera_to_pixel(*self.ground_to_camera(e, n, h))

    def pixel_to_ground(
        self, px: ArrayLike, py: ArrayLike, h: ArrayLike = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """World pixel → the ground point at height h that is drawn there."""
        return self.camera_to_ground(*self.pixel_to_camera(px, py), h)

    def lnglat_to_pixel(
        self, lng: ArrayLike, lat: ArrayLike, h: ArrayLike = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.ground_to_pixel(*self.lnglat_to_ground(lng, lat), h)

    def pixel_to_lnglat(
        self, px: ArrayLike, py: ArrayLike, h: ArrayLike = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.ground_to_lnglat(*self.pixel_to_ground(px, py, h))

    # --- the map's domain ------------------------------------------------------------------------
    def seed_distance_m(self, lat: ArrayLike, lng: ArrayLike) -> np.ndarray:
        """Geodesic distance (metres, WGS84) from the map seed to each (lat, lng)."""
        lat_a, lng_a = np.broadcast_arrays(np.asarray(lat, float), np.asarray(lng, float))
        s = self.config.seed
        _, _, d = _GEOD.inv(np.full(lat_a.shape, s.lng), np.full(lat_a.shape, s.lat), lng_a, lat_a)
        return np.asarray(d)

    def check_point(self, lat: float, lng: float, h: float = 0.0) -> tuple[float, float, float]:
        """(lat, lng, h) as floats if they are finite, in range and within ``MAP_RADIUS_M`` of the seed."""
        lat, lng = check_lat_lng(lat, lng)
        h = _finite("height", h, *HEIGHT_RANGE_M, "metres above ground")
        d = float(self.seed_distance_m(lat, lng))
        if d > MAP_RADIUS_M:
            s = self.config.seed
            swapped = abs(lng) <= 90 and float(self.seed_distance_m(lng, lat)) <= MAP_RADIUS_M
            raise GeometryError(
                f"point ({lat:g}, {lng:g}) lies {d / 1000:,.0f} km from the map seed ({s.lat:g}, {s.lng:g}); this map "
                f"covers {MAP_RADIUS_M / 1000:,.0f} km around it"
                + (": latitude and longitude look swapped (give LAT first, then LNG)" if swapped else "")
            )
        return lat, lng, h

    def check_quadrant(self, x: int, y: int) -> None:
        """Raise GeometryError unless quadrant (x, y) has integer keys and lies within the map's domain."""
        for name, v in (("x", x), ("y", y)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise GeometryError(f"quadrant {name} {v!r} is not an integer")
        if max(abs(int(x)), abs(int(y))) <= _MAX_INDEX:
            e, n = self.pixel_to_ground((x + 0.5) * self.q, (y + 0.5) * self.q)
            d = math.hypot(float(e), float(n))  # ground metres are metres from the seed
            if d <= MAP_RADIUS_M:
                return
            far = f"lies {d / 1000:,.0f} km from the map seed"
        else:
            far = "lies far outside the map"
        raise GeometryError(
            f"quadrant ({x}, {y}) {far}; this map covers {MAP_RADIUS_M / 1000:,.0f} km around its seed "
            "(use `isonyc locate LAT LNG` to find a quadrant's key)"
        )

    # --- quadrants -----------------------------------------------------------------------------
    def quadrant_of_pixel(self, px: ArrayLike, py: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        return np.floor(np.asarray(px) / self.q).astype(int), np.floor(np.asarray(py) / self.q).astype(int)

    def quadrant_origin_px(self, x: int, y: int) -> tuple[int, int]:
        """World pixel of the quadrant's top-left corner."""
        return x * self.q, y * self.q

    def locate(self, lat: float, lng: float, h: float = 0.0) -> dict:
        """Which quadrant and pixel show the point (lat, lng) at height h (GeometryError outside the map)."""
        lat, lng, h = self.check_point(lat, lng, h)
        px_arr, py_arr = self.lnglat_to_pixel(lng, lat, h)
        px, py = float(px_arr), float(py_arr)
        qx, qy = (int(v) for v in self.quadrant_of_pixel(px, py))
        return {
            "lat": lat,
            "lng": lng,
            "height_m": h,
            "quadrant": {"x": qx, "y": qy},
            "pixel": {"x": px - qx * self.q, "y": py - qy * self.q},
            "world_pixel": {"x": px, "y": py},
        }

    def quadrant_ground_polygon(self, x: int, y: int, margin_px: float = 0.0) -> Polygon:
        """The quadrant's ground footprint (h = 0) in ground metres: a parallelogram."""
        x0, y0 = x * self.q - margin_px, y * self.q - margin_px
        x1, y1 = (x + 1) * self.q + margin_px, (y + 1) * self.q + margin_px
        e, n = self.pixel_to_ground(np.array([x0, x1, x1, x0]), np.array([y0, y0, y1, y1]))
        return Polygon(zip(e.tolist(), n.tolist(), strict=True))

    def quadrant_info(self, x: int, y: int) -> dict:
        """Ground corners (TL, TR, BR, BL) and centre of quadrant (x, y) in lat/lng, at h = 0."""
        self.check_quadrant(x, y)
        q = self.q
        px = np.array([x * q, (x + 1) * q, (x + 1) * q, x * q, (x + 0.5) * q])
        py = np.array([y * q, y * q, (y + 1) * q, (y + 1) * q, (y + 0.5) * q])
        lng, lat = self.pixel_to_lnglat(px, py)
        names = ["top_left", "top_right", "bottom_right", "bottom_left", "center"]
        pts = {k: {"lat": float(a), "lng": float(o)} for k, a, o in zip(names, lat, lng, strict=True)}
        return {
            "quadrant": {"x": x, "y": y},
            "corners": {k: pts[k] for k in names[:4]},
            "center": pts["center"],
            "size_m": {"camera_right": q * self.mpp, "ground_depth": q * self.mpp / self._dep[0]},
            "world_pixel_origin": {"x": x * q, "y": y * q},
        }

    # --- the original's formula, kept only to measure how far it drifts ------------------------
    def flat_earth_pixel(self, lat: ArrayLike, lng: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """World pixel by isometric-nyc's flat-earth inverse (111,111 m/deg, one cos(lat) at the seed)."""
        return self.ground_to_pixel(*legacy.lnglat_to_ground(self.config, lng, lat))
