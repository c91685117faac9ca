"""Whitebox isometric renderer: City (ground metres) → per-pixel surface class, building id and height.

Pipeline of one window
1. Ground layers at h = 0, painted in order: water (outside land) / ground (land), parks, explicit water
   (lakes inside parks), roads (buffered centrelines or polygons; bridges show over rivers, so a loader
   must drop tunnels). Each feature is projected to world pixels once and cached.
2. Buildings whose screen extent can reach the window: the city's STRtree is queried with the window's
   ground region extended toward the camera by the tallest building's lift (a 900 ft tower standing
   ~280 m in front of the window still reaches into it), then filtered by each building's conservative
   screen box. Their parts are extruded by the numba kernel with a max-height z-buffer (see raster.py).

All projection goes through ``MapGeometry.ground_to_pixel_affine`` and ``height_px_per_m``, applied
element-wise (no BLAS), and all rasterization is in world-pixel coordinates, so the output of a pixel
never depends on the window that contains it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geo.surfaces import PALETTE, Surface
from isonyc_dagster.geodata.model import City
from isonyc_dagster.render.result import RenderResult, stable_building_id

if TYPE_CHECKING:
    from types import ModuleType

log = logging.getLogger(__name__)

#: Largest window edge accepted: buffers cost 20 bytes a pixel, so 8192² is already 1.3 GB.
MAX_WINDOW_PX = 8192
_POLYGONAL = (3, 6)  # shapely type ids: Polygon, MultiPolygon
_MAX_IDS_IN_WARNING = 25


class _PolySet:
    """Polygons in world pixels, flattened into the ring layout the kernels take."""

    __slots__ = ("xs", "ys", "ring_start", "poly_ring_start", "poly_owner")

    def __init__(self, geoms: Sequence[BaseGeometry] | np.ndarray) -> None:
        arr = np.asarray(geoms, dtype=object) if len(geoms) else np.empty(0, dtype=object)
        parts, owner = shapely.get_parts(arr, return_index=True)
        keep = np.isin(shapely.get_type_id(parts), (3,))  # parts of (Multi)Polygons are Polygons
        parts, owner = parts[keep], owner[keep]
        rings, ring_poly = shapely.get_rings(parts, return_index=True)
        coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
        self.xs = np.ascontiguousarray(coords[:, 0], dtype=np.float64)
        self.ys = np.ascontiguousarray(coords[:, 1], dtype=np.float64)
        self.ring_start = np.zeros(len(rings) + 1, dtype=np.int64)
        np.cumsum(np.bincount(coord_ring, minlength=len(rings)), out=self.ring_start[1:])
        self.poly_ring_start = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(np.bincount(ring_poly, minlength=len(parts)), out=self.poly_ring_start[1:])
        self.poly_owner = owner.astype(np.int64)

    @property
    def n_polys(self) -> int:
        return len(self.poly_ring_start) - 1


def _polygonal(g: BaseGeometry) -> Polygon | MultiPolygon | None:
    """The polygonal part of a geometry (make_valid can return collections with lines/points)."""
    tid = shapely.get_type_id(g)
    if tid in _POLYGONAL:
        return g
    if tid == 7:  # GeometryCollection
        polys = [p for p in shapely.get_parts(g) if shapely.get_type_id(p) in _POLYGONAL]
        if polys:
            u = shapely.union_all(polys)
            return u if shapely.get_type_id(u) in _POLYGONAL else None
    return None


def _warn(what: str, items: list[str]) -> None:
    if not items:
        return
    shown = "; ".join(items[:_MAX_IDS_IN_WARNING])
    more = f" (and {len(items) - _MAX_IDS_IN_WARNING} more)" if len(items) > _MAX_IDS_IN_WARNING else ""
    msg = f"renderer {what} {len(items)} building(s): {shown}{more}"
    log.warning(msg)
    warnings.warn(msg, stacklevel=3)


class Renderer:
    """Renders any window of the map from a City. Thread-safe for concurrent ``render_*`` calls
    (the kernels release the GIL; the feature caches only ever gain equal entries)."""

    def __init__(self, city: City, geometry: MapGeometry) -> None:
        # numba is imported here, not at module import: it costs ~1 s, and modules that only need
        # RenderResult/png_bytes (Dagster definitions, the store) should not pay it.
        from isonyc_dagster.render import raster

        self._raster: ModuleType = raster
        self.city = city
        self.geometry = geometry
        self._aff = tuple(float(v) for v in geometry.ground_to_pixel_affine)
        self._k = float(geometry.height_px_per_m)
        self._prepare_buildings()
        self._land = self._project_polys([city.land]) if city.land is not None else None
        self._park_cache: dict[int, BaseGeometry | None] = {}
        self._water_cache: dict[int, BaseGeometry | None] = {}
        self._road_cache: dict[int, BaseGeometry | None] = {}
        widths = np.array([r.width_m for r in city.roads], dtype=float)
        widths = widths[np.isfinite(widths)]
        self._road_reach_m = float(widths.max()) / 2.0 + 1.0 if widths.size else 0.0

    # --- preparation ------------------------------------------------------------------------------
    def _to_px(self, coords: np.ndarray) -> np.ndarray:
        # Element-wise on purpose: a matmul may use FMA/blocked sums that differ with array length,
        # and a vertex must land on the same float whichever window asked for it.
        a, b, d, e, xo, yo = self._aff
        x, y = coords[:, 0], coords[:, 1]
        return np.stack([a * x + b * y + xo, d * x + e * y + yo], axis=1)

    def _project(self, geoms: np.ndarray) -> np.ndarray:
        return shapely.transform(geoms, self._to_px)

    def _project_polys(self, geoms: Sequence[BaseGeometry]) -> _PolySet:
        return _PolySet(self._project(np.asarray(geoms, dtype=object)))

    def _prepare_buildings(self) -> None:
        """Repair invalid footprints, drop unusable buildings (with a warning naming them), and
        precompute each building's conservative screen box for the per-window filter."""
        blds = self.city.buildings
        n = len(blds)
        fps = np.empty(n, dtype=object)
        fps[:] = [b.footprint for b in blds]
        top = np.array([b.height_m for b in blds], dtype=np.float64)
        base = np.array([b.base_m for b in blds], dtype=np.float64)
        ok = np.ones(n, dtype=bool)
        repaired: list[str] = []
        skipped: list[str] = []
        if n:
            bad = ~(shapely.is_valid(fps) & np.isin(shapely.get_type_id(fps), _POLYGONAL))
            for i in np.flatnonzero(bad):
                fixed = _polygonal(shapely.make_valid(fps[i])) if fps[i] is not None else None
                if fixed is None or fixed.is_empty or fixed.area <= 0.0:
                    ok[i] = False
                    skipped.append(f"{blds[i].id!r} (footprint empty or degenerate even after make_valid)")
                else:
                    fps[i] = fixed
                    repaired.append(repr(blds[i].id))
            empty = ok & (shapely.is_empty(fps) | (shapely.area(fps) <= 0.0))
            for i in np.flatnonzero(empty):
                ok[i] = False
                skipped.append(f"{blds[i].id!r} (empty footprint)")
            bad_h = ok & ~(np.isfinite(top) & np.isfinite(base) & (top > np.maximum(base, 0.0)))
            for i in np.flatnonzero(bad_h):
                ok[i] = False
                skipped.append(f"{blds[i].id!r} (height_m={top[i]!r} not above base_m={base[i]!r})")
        _warn("repaired invalid footprints (shapely.make_valid) of", repaired)
        _warn("skipped", skipped)
        self._fps = fps
        self._sid = np.array([stable_building_id(b.id) for b in blds], dtype=np.int32)
        self._top = top
        self._base = np.maximum(np.nan_to_num(base), 0.0)
        self._ok = ok
        self.max_height_m = float(top[ok].max()) if ok.any() else 0.0
        # Screen box from the four corners of the ground bbox (a superset of the true extent).
        sx0 = np.full(n, np.inf)
        sx1 = np.full(n, -np.inf)
        sy0 = np.full(n, np.inf)
        sy1 = np.full(n, -np.inf)
        if ok.any():
            bnd = shapely.bounds(fps[ok])
            for ex, ny in ((0, 1), (2, 1), (2, 3), (0, 3)):
                p = self._to_px(np.stack([bnd[:, ex], bnd[:, ny]], axis=1))
                sx0[ok] = np.minimum(sx0[ok], p[:, 0])
                sx1[ok] = np.maximum(sx1[ok], p[:, 0])
                sy0[ok] = np.minimum(sy0[ok], p[:, 1])
                sy1[ok] = np.maximum(sy1[ok], p[:, 1])
            sy0[ok] -= top[ok] * self._k
            sy1[ok] -= self._base[ok] * self._k
        self._sbox = (sx0, sx1, sy0, sy1)

    # --- per-window queries -------------------------------------------------------------------------
    def _ground_region(self, px0: float, py0: float, px1: float, py1: float) -> Polygon:
        e, n = self.geometry.pixel_to_ground(np.array([px0, px1, px1, px0]), np.array([py0, py0, py1, py1]))
        return Polygon(zip(e.tolist(), n.tolist(), strict=True))

    def _buildings_for(self, px0: int, py0: int, w: int, h: int) -> np.ndarray:
        if not self.city.buildings:
            return np.empty(0, dtype=np.int64)
        lift_px = self.max_height_m * self._k
        region = self._ground_region(px0 - 2, py0 - 2, px0 + w + 2, py0 + h + lift_px + 2)
        idx = np.sort(self.city.building_tree.query(region, predicate="intersects"))
        sx0, sx1, sy0, sy1 = self._sbox
        keep = (
            self._ok[idx]
            & (sx1[idx] >= px0 - 1)
            & (sx0[idx] <= px0 + w + 1)
            & (sy1[idx] >= py0 - 1)
            & (sy0[idx] <= py0 + h + 1)
        )
        return idx[keep]

    def _cached(self, cache: dict[int, BaseGeometry | None], idx: np.ndarray, make) -> list[BaseGeometry]:
        missing = [int(i) for i in idx if int(i) not in cache]
        if missing:
            for i, g in zip(missing, make(missing), strict=True):
                cache[i] = g
        return [g for i in idx if (g := cache[int(i)]) is not None]

    def _park_polys(self, region: Polygon) -> list[BaseGeometry]:
        if not self.city.parks:
            return []
        idx = np.sort(self.city.park_tree.query(region, predicate="intersects"))
        return self._cached(
            self._park_cache,
            idx,
            lambda ids: self._project_features([self.city.parks[i].geometry for i in ids]),
        )

    def _water_polys(self, region: Polygon) -> list[BaseGeometry]:
        if not self.city.water:
            return []
        idx = np.sort(self.city.water_tree.query(region, predicate="intersects"))
        return self._cached(
            self._water_cache, idx, lambda ids: self._project_features([self.city.water[i] for i in ids])
        )

    def _road_polys(self, region: Polygon) -> list[BaseGeometry]:
        if not self.city.roads:
            return []
        # The tree holds centrelines: widen the query by the widest half-width so a road whose
        # centreline runs just outside the window still paints its near half into it.
        reach = region.buffer(self._road_reach_m, join_style="mitre") if self._road_reach_m > 0 else region
        idx = np.sort(self.city.road_tree.query(reach, predicate="intersects"))
        return self._cached(self._road_cache, idx, self._make_roads)

    def _project_features(self, geoms: list[BaseGeometry]) -> list[BaseGeometry | None]:
        arr = np.empty(len(geoms), dtype=object)
        arr[:] = geoms
        out = self._project(arr)
        return [g if shapely.get_type_id(g) in _POLYGONAL and not g.is_empty else None for g in out]

    def _make_roads(self, ids: list[int]) -> list[BaseGeometry | None]:
        roads = [self.city.roads[i] for i in ids]
        geoms = np.empty(len(roads), dtype=object)
        geoms[:] = [r.geometry for r in roads]
        tid = shapely.get_type_id(geoms)
        lines = np.isin(tid, (1, 2, 5))  # LineString, LinearRing, MultiLineString
        widths = np.array([r.width_m for r in roads], dtype=float)
        usable = lines & np.isfinite(widths) & (widths > 0)
        for r in (r for r, u, ln in zip(roads, usable, lines, strict=True) if ln and not u):
            log.warning("road %r has unusable width_m=%r; not drawn", r.id, r.width_m)
        out = geoms.copy()
        if usable.any():
            # Round joins/caps so crossing streets meet without notches; 8 segments per quarter circle
            # keep the arc within 0.1 px of a true circle up to 30 m wide roads.
            out[usable] = shapely.buffer(geoms[usable], widths[usable] / 2.0, quad_segs=8)
        out[lines & ~usable] = None
        polys = np.array(
            [g if g is not None and shapely.get_type_id(g) in _POLYGONAL else None for g in out], dtype=object
        )
        res = [None] * len(roads)
        have = np.flatnonzero(polys != None)  # noqa: E711 — element-wise on an object array
        if have.size:
            for j, g in zip(have, self._project(polys[have]), strict=True):
                res[int(j)] = g
        return res

    # --- rendering ---------------------------------------------------------------------------------
    def render_window(self, px0: int, py0: int, width: int, height: int) -> RenderResult:
        """Render the world-pixel window [px0, px0+width) × [py0, py0+height)."""
        for name, v in (("px0", px0), ("py0", py0), ("width", width), ("height", height)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"render_window: {name} must be an integer world-pixel value, got {v!r}")
        px0, py0, width, height = int(px0), int(py0), int(width), int(height)
        if not (0 < width <= MAX_WINDOW_PX and 0 < height <= MAX_WINDOW_PX):
            raise ValueError(
                f"render_window: size {width}×{height} px is out of range; each side must be 1..{MAX_WINDOW_PX}"
            )
        h, w = height, width
        surface = np.empty((h, w), dtype=np.uint8)
        zbuf = np.zeros((h, w), dtype=np.float64)
        bid = np.zeros((h, w), dtype=np.int32)

        # 1. ground layers (h = 0), painter's order
        region = self._ground_region(px0 - 2, py0 - 2, px0 + w + 2, py0 + h + 2)
        if self._land is not None:
            surface.fill(Surface.WATER)
            self._fill(self._land, Surface.GROUND, surface, px0, py0)
        else:
            surface.fill(Surface.GROUND)
        for polys, cls in (
            (self._park_polys(region), Surface.PARK),
            (self._water_polys(region), Surface.WATER),
            (self._road_polys(region), Surface.ROAD),
        ):
            if polys:
                self._fill(_PolySet(polys), cls, surface, px0, py0)

        # 2. buildings, z-buffered
        # Draw order decides ties (equal heights on a shared wall): order by the stable id, not the city's list
        # order, so any city holding these buildings draws the same pixels.
        idx = self._buildings_for(px0, py0, w, h)
        idx = idx[np.argsort(self._sid[idx], kind="stable")]
        if idx.size:
            parts, owner = shapely.get_parts(self._fps[idx], return_index=True)
            rings, ring_part = shapely.get_rings(parts, return_index=True)
            coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
            pc = self._to_px(coords)
            ring_start = np.zeros(len(rings) + 1, dtype=np.int64)
            np.cumsum(np.bincount(coord_ring, minlength=len(rings)), out=ring_start[1:])
            part_ring_start = np.zeros(len(parts) + 1, dtype=np.int64)
            np.cumsum(np.bincount(ring_part, minlength=len(parts)), out=part_ring_start[1:])
            gidx = idx[owner]
            self._raster.draw_buildings(
                np.ascontiguousarray(pc[:, 0]),
                np.ascontiguousarray(pc[:, 1]),
                ring_start,
                part_ring_start,
                np.ascontiguousarray(self._top[gidx]),
                np.ascontiguousarray(self._base[gidx]),
                self._sid[gidx],
                self._k,
                surface,
                zbuf,
                bid,
                px0,
                py0,
            )
        rgb, height_m, counts, drawn = self._raster.finish(
            surface, zbuf, bid, PALETTE, np.unique(self._sid[idx]), len(Surface)
        )
        classes = {Surface(i).name.lower(): int(c) for i, c in enumerate(counts) if c}
        stats = {
            "buildings_drawn": drawn,
            "classes_present": sorted(classes),
            "class_pixels": classes,
            "buildings_considered": int(idx.size),
        }
        return RenderResult(
            rgb=rgb, surface=surface, building=bid, height=height_m, origin_px=(px0, py0), stats=stats
        )

    def _fill(self, ps: _PolySet, cls: Surface, surface: np.ndarray, px0: int, py0: int) -> None:
        if ps.n_polys == 0:
            return
        values = np.full(ps.n_polys, int(cls), dtype=np.uint8)
        self._raster.fill_polygons(ps.xs, ps.ys, ps.ring_start, ps.poly_ring_start, values, surface, px0, py0)

    def render_quadrant(self, x: int, y: int) -> RenderResult:
        """One quadrant (quadrant_px², 512² in production)."""
        q = self.geometry.q
        return self.render_window(x * q, y * q, q, q)

    def render_tile(self, x: int, y: int) -> RenderResult:
        """One tile: the 2×2 quadrants (x..x+1, y..y+1), 1024² in production."""
        q = self.geometry.q
        return self.render_window(x * q, y * q, 2 * q, 2 * q)

    def lift_px(self, height_m: float) -> float:
        """Screen pixels a point at ``height_m`` is lifted (for callers planning render margins)."""
        return height_m * self._k if math.isfinite(height_m) else math.inf


__all__ = ["Renderer", "RenderResult"]
