"""A procedural Manhattan-style city: the offline default when no geodata is given.

The street grid is Manhattan's: avenues run 29° clockwise from true north, 280 m apart (centre to
centre, 30 m right of way); streets cross them every 80 m (18 m right of way). Each block is filled with
lots along its two street frontages, deeper buildings on the avenue ends, rear yards between the rows,
a few parks and playgrounds. Heights follow a smooth "district intensity" field: mostly 4–8 storey
walk-ups, mid-rises along denser districts, a few towers (with podiums) where intensity peaks.

Determinism: everything about block (i, j) comes from an RNG seeded by (seed, i, j), and the district
field from hashed lattice values, so the city does not depend on the query window: a building is
identical in every window that contains it. The grid is anchored at a fixed lon/lat (Herald Square), so
maps with different seeds see the same city too. Everything is kept only on land (real borough
polygons): buildings crossing the shoreline are cut to it, no building stands in a river.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geodata._common import LEVEL_HEIGHT_M, GeodataError, polygonal
from isonyc_dagster.geodata.land import NYC_LAND, LandSpec, land_polygon
from isonyc_dagster.geodata.model import Building, City, Park, Road

GRID_ANGLE_DEG = 29.0  # avenues, clockwise from true north (Manhattan's "grid north")
AVENUE_SPACING_M = 280.0
STREET_SPACING_M = 80.0
AVENUE_ROW_M = 30.0  # right of way, kerb to kerb plus sidewalks (100 ft)
STREET_ROW_M = 18.0  # 60 ft
AVENUE_ROADWAY_M = 20.0
STREET_ROADWAY_M = 11.0
#: Fixed anchor of the grid (an avenue/street crossing), independent of the map seed.
GRID_ORIGIN_LNGLAT = (-73.9880, 40.7496)
#: District-intensity lattice cell, in blocks (≈ 1.1 km × 1 km).
DISTRICT_CELL_BLOCKS = (4, 12)
#: Largest window generated at once; beyond this the real loaders are the right tool.
MAX_WINDOW_KM2 = 150.0
ATTRIBUTION = "synthetic city on NYC DCP borough boundaries"

_PARAPET_M = 1.5
_MIN_CLIPPED_AREA_M2 = 25.0
#: Share of a building lot that must be on land for the building to exist (no sliver towers on the shore).
_MIN_BUILDING_LAND_FRACTION = 0.85


@dataclass(frozen=True, slots=True)
class _Rect:
    a0: float
    a1: float
    s0: float
    s1: float


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([_zigzag(seed), *(_zigzag(k) for k in key)])


class SyntheticCity:
    """Generator bound to one map geometry and seed; ``city(window)`` builds any window."""

    def __init__(self, geometry: MapGeometry, *, seed: int = 0, land: LandSpec = NYC_LAND) -> None:
        self.geometry = geometry
        self.seed = int(seed)
        self.land_spec = land
        t = math.radians(GRID_ANGLE_DEG)
        self.u_st = np.array([math.cos(t), -math.sin(t)])  # along streets, towards the East River
        self.u_av = np.array([math.sin(t), math.cos(t)])  # along avenues, uptown
        e, n = geometry.lnglat_to_ground(*GRID_ORIGIN_LNGLAT)
        self.origin = np.array([float(e), float(n)])

    # --- frames -------------------------------------------------------------------------------------
    def to_grid(self, xy: np.ndarray) -> np.ndarray:
        d = np.asarray(xy, float) - self.origin
        return np.column_stack([d @ self.u_st, d @ self.u_av])

    def to_ground(self, a: np.ndarray, s: np.ndarray) -> np.ndarray:
        return self.origin + np.multiply.outer(a, self.u_st) + np.multiply.outer(s, self.u_av)

    def _rects_to_polygons(self, rects: np.ndarray) -> np.ndarray:
        """(N, 4) array of a0, a1, s0, s1 → N ground polygons."""
        a = rects[:, [0, 1, 1, 0, 0]]
        s = rects[:, [2, 2, 3, 3, 2]]
        return shapely.polygons(self.to_ground(a, s))

    # --- district field -----------------------------------------------------------------------------
    def intensity(self, i: int, j: int) -> float:
        """Smooth 0..1 density of block (i, j): bilinear value noise over a coarse hashed lattice."""
        ci, cj = DISTRICT_CELL_BLOCKS
        fi, fj = i / ci, j / cj
        i0, j0 = math.floor(fi), math.floor(fj)
        ti, tj = fi - i0, fj - j0
        ti, tj = ti * ti * (3 - 2 * ti), tj * tj * (3 - 2 * tj)  # smoothstep: no creases at cell edges

        def v(a: int, b: int) -> float:
            return float(_rng(self.seed, 7, a, b).random())

        top = v(i0, j0) * (1 - ti) + v(i0 + 1, j0) * ti
        bot = v(i0, j0 + 1) * (1 - ti) + v(i0 + 1, j0 + 1) * ti
        return top * (1 - tj) + bot * tj

    # --- one block ------------------------------------------------------------------------------------
    def block(
        self, i: int, j: int
    ) -> tuple[list[tuple[str, _Rect, float, float]], list[tuple[str, _Rect, str]]]:
        """Buildings (id, rect, height, base) and parks (id, rect, kind) of block (i, j), grid frame."""
        rng = _rng(self.seed, 1, i, j)
        d = self.intensity(i, j)
        a0 = i * AVENUE_SPACING_M + AVENUE_ROW_M / 2
        a1 = (i + 1) * AVENUE_SPACING_M - AVENUE_ROW_M / 2
        s0 = j * STREET_SPACING_M + STREET_ROW_M / 2
        s1 = (j + 1) * STREET_SPACING_M - STREET_ROW_M / 2
        bid = f"syn-{i}-{j}"
        if rng.random() < 0.035 + 0.05 * (1 - d):
            kind = "playground" if rng.random() < 0.25 else "park"
            return [], [(f"{bid}-park", _Rect(a0, a1, s0, s1), kind)]

        buildings: list[tuple[str, _Rect, float, float]] = []
        parks: list[tuple[str, _Rect, str]] = []
        mid_s = (s0 + s1) / 2
        # Avenue ends: deep buildings through the whole block, facing the avenue.
        lo, hi = a0, a1
        for side in (0, 1):
            if rng.random() < 0.75:
                w = float(rng.uniform(18, 36))
                r = _Rect(a0, a0 + w, s0, s1) if side == 0 else _Rect(a1 - w, a1, s0, s1)
                buildings.append((f"{bid}-av{side}", r, self._height(rng, d, avenue=True), 0.0))
                lo, hi = (r.a1, hi) if side == 0 else (lo, r.a0)
        # Sometimes a tower on a plaza in the middle of the block, with a podium.
        if rng.random() < 0.01 + 0.10 * d**3 and hi - lo > 80:
            w = float(rng.uniform(35, 60))
            c = float(rng.uniform(lo + w / 2 + 5, hi - w / 2 - 5))
            tower = _Rect(c - w / 2, c + w / 2, s0 + 6, s1 - 6)
            height = float(rng.uniform(110, 290))
            buildings.append((f"{bid}-tower", tower, round(height, 1), 0.0))
            if rng.random() < 0.6:
                podium = _Rect(c - w / 2 - 10, c + w / 2 + 10, s0, s1)
                buildings.append((f"{bid}-podium", podium, round(float(rng.uniform(18, 40)), 1), 0.0))
            left, right = (lo, c - w / 2 - 12), (c + w / 2 + 12, hi)
            spans = [sp for sp in (left, right) if sp[1] - sp[0] > 6]
        else:
            spans = [(lo, hi)]
        # Two rows of lots along the streets, rear yards between them.
        for row, (rs0, rs1) in enumerate(((s0, mid_s), (mid_s, s1))):
            depth = rs1 - rs0
            for span_no, (x0, x1) in enumerate(spans):
                x, k = x0, 0
                while x1 - x > 5:
                    cls = self._class(rng, d)
                    w = float({"low": rng.uniform(7, 14), "mid": rng.uniform(16, 34)}[cls])
                    w = min(w, x1 - x) if x1 - x - w > 5 else x1 - x  # absorb slivers
                    lot = f"{bid}-r{row}s{span_no}l{k}"
                    u = rng.random()
                    if u < 0.03:
                        parks.append((lot, _Rect(x, x + w, rs0, rs1), "playground"))
                    elif u > 0.04:  # 1 % empty lots (parking, construction)
                        yard = float(rng.uniform(0, 9)) if cls == "low" else float(rng.uniform(0, 4))
                        d_built = max(depth - yard, 8.0)
                        r = (
                            _Rect(x, x + w, rs0, rs0 + d_built)
                            if row == 0
                            else _Rect(x, x + w, rs1 - d_built, rs1)
                        )
                        buildings.append((lot, r, self._height(rng, d, cls=cls), 0.0))
                    x += w
                    k += 1
        return buildings, parks

    @staticmethod
    def _class(rng: np.random.Generator, d: float) -> str:
        return "mid" if rng.random() < 0.08 + 0.35 * d * d else "low"

    @staticmethod
    def _height(rng: np.random.Generator, d: float, *, cls: str = "low", avenue: bool = False) -> float:
        if avenue and rng.random() < 0.3 + 0.5 * d:
            cls = "mid"
        if cls == "mid":
            floors = int(rng.integers(9, 23))
        elif d < 0.25 and rng.random() < 0.5:
            floors = int(rng.integers(3, 6))  # brownstone rows
        else:
            floors = int(rng.integers(4, 9))
        return round(floors * LEVEL_HEIGHT_M + _PARAPET_M * float(rng.random()), 1)

    # --- a window -----------------------------------------------------------------------------------
    def cells(self, window: BaseGeometry) -> list[tuple[int, int]]:
        """Grid cells (i, j) (block plus its west avenue and south street) that touch ``window``."""
        ga = self.to_grid(shapely.get_coordinates(window.envelope))
        i0, i1 = math.floor(ga[:, 0].min() / AVENUE_SPACING_M), math.floor(ga[:, 0].max() / AVENUE_SPACING_M)
        j0, j1 = math.floor(ga[:, 1].min() / STREET_SPACING_M), math.floor(ga[:, 1].max() / STREET_SPACING_M)
        grid_i, grid_j = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
        ii, jj = grid_i.ravel(), grid_j.ravel()
        rects = np.column_stack(
            [
                ii * AVENUE_SPACING_M - AVENUE_ROW_M / 2,
                (ii + 1) * AVENUE_SPACING_M + AVENUE_ROW_M / 2,
                jj * STREET_SPACING_M - STREET_ROW_M / 2,
                (jj + 1) * STREET_SPACING_M + STREET_ROW_M / 2,
            ]
        )
        hit = shapely.intersects(window, self._rects_to_polygons(rects))
        return list(zip(ii[hit].tolist(), jj[hit].tolist(), strict=True))

    def city(self, window: BaseGeometry) -> City:
        """The synthetic city over ``window`` (ground metres): whole buildings that intersect it."""
        if window is None or window.is_empty or window.area <= 0:
            raise GeodataError("the synthetic city needs a non-empty window (a polygon in ground metres)")
        if window.area > MAX_WINDOW_KM2 * 1e6:
            raise GeodataError(
                f"window of {window.area / 1e6:.0f} km² is too large for the synthetic city "
                f"(max {MAX_WINDOW_KM2:.0f} km²); load real geodata for areas this big"
            )
        shapely.prepare(window)
        # Land around the window, wide enough that a building's cut never depends on the window.
        margin = AVENUE_SPACING_M + STREET_SPACING_M
        land = land_polygon(self.geometry, self.land_spec, window=window.buffer(margin, join_style="mitre"))
        if land is not None:
            shapely.prepare(land)
        cells = self.cells(window)

        b_ids: list[str] = []
        b_rects: list[tuple[float, float, float, float]] = []
        b_h: list[float] = []
        b_base: list[float] = []
        p_ids: list[str] = []
        p_rects: list[tuple[float, float, float, float]] = []
        p_kind: list[str] = []
        for i, j in cells:
            bs, ps = self.block(i, j)
            for bid, r, h, base in bs:
                b_ids.append(bid)
                b_rects.append((r.a0, r.a1, r.s0, r.s1))
                b_h.append(h)
                b_base.append(base)
            for pid, r, kind in ps:
                p_ids.append(pid)
                p_rects.append((r.a0, r.a1, r.s0, r.s1))
                p_kind.append(kind)

        buildings = []
        if b_ids:
            polys = self._rects_to_polygons(np.asarray(b_rects))
            for k, poly in self._on_land(polys, window, land, min_land_fraction=_MIN_BUILDING_LAND_FRACTION):
                buildings.append(
                    Building(
                        id=b_ids[k], footprint=poly, height_m=b_h[k], base_m=b_base[k], source="synthetic"
                    )
                )
        parks = []
        if p_ids:
            polys = self._rects_to_polygons(np.asarray(p_rects))
            parks = [
                Park(id=p_ids[k], geometry=poly, kind=p_kind[k])
                for k, poly in self._on_land(polys, window, land)
            ]
        roads = self._roads(cells, window, land)
        attribution = ATTRIBUTION if str(self.land_spec) == NYC_LAND else "synthetic city"
        return City(
            buildings=buildings,
            land=land,
            parks=parks,
            roads=roads,
            synthetic=True,
            sources=[f"synthetic:seed={self.seed}"],
            attribution=attribution,
            reports=[
                {
                    "source": f"synthetic:seed={self.seed}",
                    "blocks": len(cells),
                    "buildings": len(buildings),
                    "parks": len(parks),
                    "roads": len(roads),
                }
            ],
        )

    @staticmethod
    def _on_land(
        polys: np.ndarray, window: BaseGeometry, land: BaseGeometry | None, min_land_fraction: float = 0.0
    ) -> list[tuple[int, Polygon | BaseGeometry]]:
        """(index, polygon) of polygons intersecting the window, cut to land (None = all land).

        A polygon with less than ``min_land_fraction`` of its area on land is dropped: a building lot cut by the
        shoreline or sitting on a narrow pier would otherwise become a thin sliver tower standing in the water.
        """
        idx = np.flatnonzero(shapely.intersects(window, polys))
        if land is None:
            return [(int(k), polys[k]) for k in idx]
        out = []
        inside = shapely.within(polys[idx], land)
        for k, ok in zip(idx, inside, strict=True):
            if ok:
                out.append((int(k), polys[k]))
                continue
            cut = polygonal(polys[k].intersection(land))
            if (
                cut is not None
                and cut.area >= _MIN_CLIPPED_AREA_M2
                and cut.area >= min_land_fraction * polys[k].area
            ):
                out.append((int(k), cut))
        return out

    def _roads(
        self, cells: list[tuple[int, int]], window: BaseGeometry, land: BaseGeometry | None
    ) -> list[Road]:
        """One avenue and one street segment per cell (its west and south edges)."""
        ids, kinds, widths, segs = [], [], [], []
        for i, j in cells:
            a, s = i * AVENUE_SPACING_M, j * STREET_SPACING_M
            av = self.to_ground(np.array([a, a]), np.array([s, s + STREET_SPACING_M]))
            st = self.to_ground(np.array([a, a + AVENUE_SPACING_M]), np.array([s, s]))
            ids += [f"syn-av-{i}-{j}", f"syn-st-{i}-{j}"]
            kinds += ["primary", "residential"]
            widths += [AVENUE_ROADWAY_M, STREET_ROADWAY_M]
            segs += [LineString(av), LineString(st)]
        lines = np.asarray(segs, dtype=object)
        if len(lines) == 0:
            return []
        keep = shapely.intersects(window, lines)
        if land is not None:
            keep &= shapely.intersects(land, lines)
        out = []
        for k in np.flatnonzero(keep):
            g = (
                lines[k]
                if land is None or shapely.within(lines[k], land)
                else _linear(lines[k].intersection(land))
            )
            if g is None:
                continue
            out.append(Road(id=ids[k], geometry=g, kind=kinds[k], width_m=widths[k]))
        return out


def _linear(g: BaseGeometry) -> BaseGeometry | None:
    """The line parts of a line ∩ polygon result (which may carry stray points)."""
    parts = [p for p in shapely.get_parts(g) if p.geom_type == "LineString" and p.length > 0]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else shapely.multilinestrings(parts)


def synthetic_city(
    geometry: MapGeometry, window: BaseGeometry, *, seed: int = 0, land: LandSpec = NYC_LAND
) -> City:
    """A procedural Manhattan-style city over ``window`` (ground metres), only on ``land``."""
    return SyntheticCity(geometry, seed=seed, land=land).city(window)
