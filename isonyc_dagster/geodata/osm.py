"""Read OpenStreetMap PBF/XML extracts with pyosmium.

What is read
- buildings: areas (closed ways and multipolygon relations, assembled by osmium with holes) tagged
  ``building=*`` or ``building:part=*`` (≠ ``no``), heights from ``height``/``min_height`` (metres;
  "100 ft" and "12'6\"" honoured) or ``building:levels``/``building:min_level`` × 3.2 m. Following the
  Simple 3D Buildings scheme, an outline whose area is mostly covered by its ``building:part``s is
  replaced by those parts (otherwise its full height would swallow them). Underground buildings
  (``location=underground``) are skipped.
- parks: ``leisure`` park/garden/playground/recreation_ground/dog_park/nature_reserve/…,
  ``landuse`` grass/recreation_ground/village_green/cemetery.
- water: ``natural=water`` and ``landuse=reservoir/basin`` areas (ponds, reservoirs). Rivers and sea are
  not polygons in extracts: they are "outside land" (see ``land.py``).
- roads: ``highway=*`` ways as centrelines, except tunnels, sidewalks/crossings (``footway=sidewalk``)
  and planned, razed or indoor ways; ``area=yes`` highways (pedestrian squares) as areas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import osmium
import shapely
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geodata._common import (
    ATTRIBUTION_OSM,
    Columns,
    FeatureSet,
    GeodataError,
    ReadReport,
    Rows,
    in_window,
    make_areas,
    make_buildings,
    make_parks,
    make_roads,
    polygonal,
    project_to_ground,
    unique_ids,
)
from isonyc_dagster.geodata.model import Building

OSM_SUFFIXES = (".osm.pbf", ".pbf", ".osm", ".osm.gz", ".osm.bz2")

_PARK_LEISURE = frozenset(
    {"park", "garden", "playground", "recreation_ground", "dog_park", "nature_reserve", "common", "pitch"}
)
_PARK_LANDUSE = frozenset({"grass", "recreation_ground", "village_green", "cemetery"})
_WATER_LANDUSE = frozenset({"reservoir", "basin"})
_BUILDING_TAGS = ("height", "min_height", "building:levels", "building:min_level", "name")
_ROAD_TAGS = ("highway", "name", "width", "lanes")
#: Sidewalks and crossings are mapped as separate footways in NYC; drawn as roads they would double
#: the width of every street, so they are left to the street they belong to.
_SIDEWALK_FOOTWAYS = frozenset({"sidewalk", "crossing", "traffic_island"})
#: Share of an outline's area its building:parts must cover to replace it (S3DB: parts win).
PART_COVERAGE_TO_REPLACE_OUTLINE = 0.5


def is_osm_path(path: str | Path) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in OSM_SUFFIXES)


class _Collector:
    """Tags and WKB of the features of one kind, gathered while streaming the file."""

    def __init__(self, tag_names: tuple[str, ...]) -> None:
        self.tag_names = tag_names
        self.ids: list[str] = []
        self.wkb: list[bytes] = []
        self.tags: dict[str, list[str | None]] = {t: [] for t in tag_names}
        self.extra: list[str] = []

    def add(self, oid: str, wkb: str, tags: osmium.osm.TagList, extra: str = "") -> None:
        self.ids.append(oid)
        self.wkb.append(bytes.fromhex(wkb))
        for t in self.tag_names:
            self.tags[t].append(tags.get(t))
        self.extra.append(extra)

    def __len__(self) -> int:
        return len(self.ids)


def read_osm(path: str | Path, geometry: MapGeometry, *, window: BaseGeometry | None = None) -> FeatureSet:
    """Buildings (incl. building:part), parks, water and roads of an OSM PBF/XML file, in ground metres.

    ``window`` (ground metres) keeps only features that intersect it.
    """
    path = Path(path)
    if not path.exists():
        raise GeodataError(f"OSM file {path} does not exist; check the path")
    if not is_osm_path(path):
        raise GeodataError(f"{path}: not an OSM file; use one of {', '.join(OSM_SUFFIXES)}")
    source = str(path)
    report = ReadReport(source=source, buildings_expected=True)
    buildings = _Collector(_BUILDING_TAGS)
    parks = _Collector(("leisure", "landuse", "name"))
    water = _Collector(("name",))
    roads = _Collector(_ROAD_TAGS)
    wkb = osmium.geom.WKBFactory()
    unassembled: list[str] = []
    interesting = osmium.filter.KeyFilter(
        "building", "building:part", "leisure", "landuse", "natural", "highway"
    )
    fp = (
        osmium.FileProcessor(path)
        .with_areas(interesting)
        .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY | osmium.osm.AREA))
        .with_filter(interesting)
    )
    try:
        for obj in fp:
            report.features_read += 1
            tags = obj.tags
            # The entity filter lets only ways and areas through.
            if isinstance(obj, osmium.osm.Area):
                oid = ("w" if obj.from_way() else "r") + str(obj.orig_id())
                _add_area(obj, oid, tags, wkb, buildings, parks, water, roads, report, unassembled)
            elif isinstance(obj, osmium.osm.Way) and "highway" in tags and tags.get("area") != "yes":
                if (
                    tags.get("tunnel") in ("yes", "culvert", "building_passage")
                    or tags.get("indoor") == "yes"
                    or tags.get("footway") in _SIDEWALK_FOOTWAYS
                ):
                    report.ignored += 1
                    continue
                try:
                    roads.add(f"w{obj.id}", wkb.create_linestring(obj), tags)
                except (osmium.InvalidLocationError, RuntimeError):
                    report.ignored += 1  # nodes outside the extract or a degenerate way
    except RuntimeError as e:
        raise GeodataError(f"{path}: osmium cannot read it ({e}); is it a complete OSM PBF/XML file?") from e

    report.dropped_empty += unassembled
    report.warn_ids(
        f"dropped {len(unassembled)} area(s) osmium could not assemble (broken rings or cut by the extract)",
        unassembled,
    )
    out = FeatureSet(sources=[source], reports=[report], attribution=[ATTRIBUTION_OSM])
    out.buildings = _buildings(buildings, geometry, window, report, source)
    if len(parks):
        out.parks = make_parks(_prepare(parks, geometry, window, report, source), report)
    if len(water):
        out.water = make_areas(_prepare(water, geometry, window, report, source), report, "water")
        report.water = len(out.water)
    if len(roads):
        out.roads = make_roads(_prepare(roads, geometry, window, report, source), report)
    return out


def _add_area(
    obj: osmium.osm.Area,
    oid: str,
    tags: osmium.osm.TagList,
    wkb: osmium.geom.WKBFactory,
    buildings: _Collector,
    parks: _Collector,
    water: _Collector,
    roads: _Collector,
    report: ReadReport,
    unassembled: list[str],
) -> None:
    """File an area with the collector of its kind (buildings first), or note it as unassembled."""
    b, part = tags.get("building"), tags.get("building:part")
    is_building = (b is not None and b != "no") or (part is not None and part != "no")
    is_park = tags.get("leisure") in _PARK_LEISURE or tags.get("landuse") in _PARK_LANDUSE
    is_water = tags.get("natural") == "water" or tags.get("landuse") in _WATER_LANDUSE
    is_road_area = "highway" in tags and tags.get("area") == "yes"
    if not (is_building or is_park or is_water or is_road_area):
        return
    if is_building and tags.get("location") == "underground":
        report.ignored += 1
        return
    try:
        geom = wkb.create_multipolygon(obj)
    except RuntimeError:
        unassembled.append(oid)
        return
    if is_building:
        buildings.add(oid, geom, tags, "part" if (part is not None and part != "no") else "outline")
    elif is_park:
        parks.add(oid, geom, tags)
    elif is_water:
        water.add(oid, geom, tags)
    else:
        roads.add(oid, geom, tags)


def _prepare(
    c: _Collector, geometry: MapGeometry, window: BaseGeometry | None, report: ReadReport, source: str
) -> Rows:
    """The collected features that intersect ``window``, in ground metres."""
    geoms = project_to_ground(geometry, shapely.from_wkb(c.wkb), source=source)
    every = Rows(geoms, Columns(c.tags, len(c)), unique_ids(c.ids, "osm"), list(range(len(c))))
    return in_window(every, window, report)


def _buildings(
    c: _Collector, geometry: MapGeometry, window: BaseGeometry | None, report: ReadReport, source: str
) -> list[Building]:
    if not len(c):
        return []
    # Parts replace outlines over the whole file, before the window filter: otherwise an outline whose
    # parts straddle the window edge would come back or not depending on the window.
    every = _prepare(c, geometry, None, report, source)
    is_part = np.array([e == "part" for e in c.extra], dtype=bool)
    replaced = _outlines_replaced_by_parts(every.geoms, is_part)
    inside = in_window(every, window, report)
    n_replaced = int(replaced[inside.rows].sum())
    if n_replaced:
        report.warn(f"{n_replaced} building outline(s) replaced by their building:part volumes")
    kept = inside.take(~replaced[inside.rows])
    return make_buildings(kept, report, source=source, skip_placeholders=False)


def _outlines_replaced_by_parts(geoms: np.ndarray, is_part: np.ndarray) -> np.ndarray:
    """Mask of outlines whose area is at least PART_COVERAGE_TO_REPLACE_OUTLINE covered by parts."""
    replaced = np.zeros(len(geoms), dtype=bool)
    if not is_part.any() or is_part.all():
        return replaced
    part_idx = np.flatnonzero(is_part)
    outline_idx = np.flatnonzero(~is_part)
    parts = np.array(
        [g if g.is_valid else polygonal(shapely.make_valid(g)) for g in geoms[part_idx]], dtype=object
    )
    tree = shapely.STRtree(parts)
    outlines = geoms[outline_idx]
    o_hit, p_hit = tree.query(outlines, predicate="intersects")
    for o in np.unique(o_hit):
        outline = outlines[o]
        if not outline.is_valid:
            outline = shapely.make_valid(outline)
        # Union first: stacked parts (podium + tower) overlap and must not be counted twice.
        covered = shapely.union_all(parts[p_hit[o_hit == o]]).intersection(outline).area
        if outline.area > 0 and covered / outline.area >= PART_COVERAGE_TO_REPLACE_OUTLINE:
            replaced[outline_idx[o]] = True
    return replaced
