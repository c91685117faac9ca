"""The normalized city model every reader produces and the renderer consumes.

Geometries are in ground metres (E, N) of the map's local projection (``MapGeometry``), projected once
when the city is built, so per-quadrant queries need no reprojection. Spatial queries go through
shapely STRtrees, so the cost of one quadrant does not grow with the size of the city.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.strtree import STRtree

#: Height used for a building whose height is unknown (0 or NULL in the source): a typical
#: Manhattan low-rise. Such buildings carry ``height_estimated=True``.
DEFAULT_UNKNOWN_HEIGHT_M = 12.0


@dataclass(frozen=True, slots=True)
class Building:
    id: str
    footprint: Polygon | MultiPolygon  # ground metres; holes and multi-parts allowed
    height_m: float  # roof height above ground
    base_m: float = 0.0  # bottom of the extrusion above ground (building:part min_height)
    height_estimated: bool = False  # True when the source had no usable height
    source: str = ""
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Park:
    id: str
    geometry: Polygon | MultiPolygon
    kind: str = "park"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Road:
    id: str
    geometry: BaseGeometry  # LineString/MultiLineString centreline, or a Polygon area
    kind: str = "residential"  # OSM highway value
    width_m: float = 10.0
    name: str | None = None


@dataclass
class City:
    """Buildings, land, water, parks and roads of a map, in ground metres."""

    buildings: list[Building] = field(default_factory=list)
    #: Land area. ``None`` means "everything is land" (no shoreline known).
    land: Polygon | MultiPolygon | None = None
    #: Explicit water polygons (lakes, ponds); rivers/sea are "outside land".
    water: list[Polygon | MultiPolygon] = field(default_factory=list)
    parks: list[Park] = field(default_factory=list)
    roads: list[Road] = field(default_factory=list)
    synthetic: bool = False
    sources: list[str] = field(default_factory=list)
    attribution: str = ""
    #: What each reader did (counts of buildings, skipped placeholders, estimated heights, repairs,
    #: warnings), one dict per source, for logs and asset metadata.
    reports: list[dict[str, Any]] = field(default_factory=list)

    # --- spatial indexes (built lazily, once) --------------------------------------------------
    @cached_property
    def building_tree(self) -> STRtree:
        return STRtree([b.footprint for b in self.buildings])

    @cached_property
    def park_tree(self) -> STRtree:
        return STRtree([p.geometry for p in self.parks])

    @cached_property
    def road_tree(self) -> STRtree:
        return STRtree([r.geometry for r in self.roads])

    @cached_property
    def water_tree(self) -> STRtree:
        return STRtree(list(self.water))

    @cached_property
    def max_height_m(self) -> float:
        return max((b.height_m for b in self.buildings), default=0.0)

    @cached_property
    def building_heights(self) -> np.ndarray:
        return np.array([b.height_m for b in self.buildings], dtype=float)

    def buildings_in(self, region: BaseGeometry) -> list[Building]:
        """Buildings whose footprint intersects ``region`` (ground metres)."""
        if not self.buildings:
            return []
        idx = self.building_tree.query(region, predicate="intersects")
        return [self.buildings[i] for i in np.sort(idx)]

    def parks_in(self, region: BaseGeometry) -> list[Park]:
        if not self.parks:
            return []
        return [self.parks[i] for i in np.sort(self.park_tree.query(region, predicate="intersects"))]

    def roads_in(self, region: BaseGeometry) -> list[Road]:
        if not self.roads:
            return []
        return [self.roads[i] for i in np.sort(self.road_tree.query(region, predicate="intersects"))]

    def water_in(self, region: BaseGeometry) -> BaseGeometry:
        """All water inside ``region``: the part outside land plus explicit water polygons."""
        parts: list[BaseGeometry] = []
        if self.land is not None:
            parts.append(region.difference(self.land))
        if self.water:
            parts.extend(
                self.water[i].intersection(region) for i in self.water_tree.query(region, "intersects")
            )
        if not parts:
            return Polygon()
        return shapely.union_all(parts)
