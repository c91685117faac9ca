"""Shared normalization for every geodata reader: projection, field names, heights, repair.

Readers hand raw geometries (lon/lat or any CRS) plus their attribute columns to the functions here,
which produce the normalized ``Building``/``Park``/``Road`` objects of ``model.py`` in ground metres.
Doing this in one place keeps the rules (feet vs metres, unknown heights, placeholders, invalid
polygons) identical for GeoJSON, GeoPackage, Shapefile, OSM and Socrata data.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.geometry import MAP_RADIUS_M, MapGeometry
from isonyc_dagster.geodata.model import DEFAULT_UNKNOWN_HEIGHT_M, Building, Park, Road

log = logging.getLogger("isonyc_dagster.geodata")

FEET = 0.3048
#: Storey height used to turn ``building:levels`` into metres (NYC floor-to-floor is ~3–3.5 m).
LEVEL_HEIGHT_M = 3.2
#: DOITT feature code of placeholder footprints (no real building; skipped).
PLACEHOLDER_FEATURE_CODE = 1003
#: Polygons smaller than this after projection are degenerate (collinear lon/lat rings gain a few cm²
#: of area in a transverse Mercator); no real building or park is this small.
MIN_POLYGON_AREA_M2 = 0.5
#: Data further than this from the map seed is almost surely in the wrong CRS (NYC spans ~60 km); it is also
#: the map's domain, beyond which the local projection is refused.
MAX_DISTANCE_FROM_SEED_M = MAP_RADIUS_M
#: Roofs above this are a data error (feet in a metres field, 9999 placeholders), not a building: NYC's tallest
#: roof is 472 m and One WTC's spire 541 m. It is also the margin the project loads in front of the bounds
#: (``project.TALL_BUILDING_MARGIN_M``), so a taller building would be cut differently by neighbouring regions.
MAX_PLAUSIBLE_HEIGHT_M = 600.0

ATTRIBUTION_DOITT = "Building footprints: NYC OTI (NYC Open Data)"
ATTRIBUTION_DCP = "Borough boundaries: NYC DCP"
ATTRIBUTION_PARKS = "Parks: NYC Parks"
ATTRIBUTION_OSM = "© OpenStreetMap contributors (ODbL)"

KINDS = ("buildings", "parks", "roads", "land", "water")

# --- field names (matched case-insensitively; ':' and '_' are interchangeable) ---------------------
#: Heights in metres. OSM's ``height`` is metres by definition (units in the string are honoured).
HEIGHT_M_FIELDS = ("height_m", "height")
#: DOITT roof heights in feet above ground: current Socrata name, legacy 2017 name, slim-file name.
HEIGHT_FT_FIELDS = ("height_roof", "heightroof", "height_roof_ft", "height_ft")
BASE_M_FIELDS = ("min_height_m", "min_height")
LEVELS_FIELDS = ("building:levels", "levels", "num_floors", "numfloors")
MIN_LEVEL_FIELDS = ("building:min_level", "min_level")
FEATURE_CODE_FIELDS = ("feature_code", "feat_code")
# Accepted and deliberately unused: the renderer puts every building on flat ground at sea level (the
# camera model of DESIGN §2), so terrain elevation and construction year do not change a pixel.
GROUND_ELEVATION_FIELDS = ("ground_elevation", "groundelev", "ground_elevation_ft")
CONSTRUCTION_YEAR_FIELDS = ("construction_year", "cnstrct_yr")
ID_FIELDS = ("osm_id", "id", "doitt_id", "bin", "objectid", "gispropnum", "fid")
NAME_FIELDS = ("name", "park_name", "signname")
WIDTH_FIELDS = ("width_m", "width")
LANES_FIELDS = ("lanes",)

PARK_VALUES = frozenset(
    {
        "park",
        "garden",
        "playground",
        "grass",
        "recreation_ground",
        "dog_park",
        "nature_reserve",
        "village_green",
        "common",
        "cemetery",
        "sports_centre",
        "pitch",
    }
)

#: Paved widths (m) by OSM highway class, for roads that carry neither ``width`` nor ``lanes``.
ROAD_WIDTH_M = {
    "motorway": 16.0,
    "trunk": 16.0,
    "primary": 18.0,
    "secondary": 14.0,
    "tertiary": 12.0,
    "unclassified": 9.0,
    "residential": 9.0,
    "living_street": 7.0,
    "service": 5.0,
    "pedestrian": 6.0,
    "track": 4.0,
    "busway": 7.0,
    "footway": 3.0,
    "path": 3.0,
    "cycleway": 3.0,
    "steps": 3.0,
    "bridleway": 3.0,
}
DEFAULT_ROAD_WIDTH_M = 8.0
LANE_WIDTH_M = 3.3
#: Highway values that are not visible roads (planned, gone, indoor or not a way at all).
IGNORED_HIGHWAYS = frozenset(
    {
        "proposed",
        "construction",
        "abandoned",
        "razed",
        "disused",
        "platform",
        "elevator",
        "corridor",
        "bus_stop",
    }
)


class GeodataError(IsonycError, ValueError):
    """Geodata cannot be read or makes no sense; the message names the file/feature and the fix."""


@dataclass
class ReadReport:
    """What one reader did with one source, for logs and asset metadata."""

    source: str
    features_read: int = 0
    buildings: int = 0
    parks: int = 0
    roads: int = 0
    water: int = 0
    land: int = 0
    skipped_placeholders: int = 0
    heights_estimated: int = 0
    #: Buildings whose height fields held something that is not a height (text, a negative number, NaN,
    #: infinity), and those above MAX_PLAUSIBLE_HEIGHT_M; both were estimated instead (and are in heights_estimated).
    heights_invalid: int = 0
    heights_implausible: int = 0
    repaired: int = 0
    outside_window: int = 0
    ignored: int = 0  # points and other geometry no kind can use
    #: The source is meant to carry buildings (a buildings file, OSM, Socrata), so yielding none over land is suspect.
    buildings_expected: bool = False
    dropped_empty: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning("%s: %s", self.source, msg)

    def warn_ids(self, what: str, ids: Sequence[str], limit: int = 20) -> None:
        """One warning naming (up to ``limit``) features, e.g. the ids of dropped polygons."""
        if ids:
            more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
            self.warn(f"{what}: {', '.join(ids[:limit])}{more}")

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("dropped_empty", "warnings")}
        d["dropped_empty"] = len(self.dropped_empty)
        d["warnings"] = list(self.warnings)
        return d


@dataclass
class FeatureSet:
    """Normalized features from one or more sources, in ground metres."""

    buildings: list[Building] = field(default_factory=list)
    parks: list[Park] = field(default_factory=list)
    roads: list[Road] = field(default_factory=list)
    land: list[Polygon | MultiPolygon] = field(default_factory=list)
    water: list[Polygon | MultiPolygon] = field(default_factory=list)
    attribution: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    reports: list[ReadReport] = field(default_factory=list)

    def extend(self, other: FeatureSet) -> None:
        self.buildings += other.buildings
        self.parks += other.parks
        self.roads += other.roads
        self.land += other.land
        self.water += other.water
        self.attribution += [a for a in other.attribution if a not in self.attribution]
        self.sources += other.sources
        self.reports += other.reports


# --- projection -------------------------------------------------------------------------------------
def _lnglat_fn(geometry: MapGeometry, src_crs: CRS | None) -> Callable[[np.ndarray], np.ndarray]:
    to_lnglat = None
    if src_crs is not None and not src_crs.equals("EPSG:4326", ignore_axis_order=True):
        to_lnglat = Transformer.from_crs(src_crs, "EPSG:4326", always_xy=True)

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        if to_lnglat is not None:
            x, y = to_lnglat.transform(x, y)
        e, n = geometry.lnglat_to_ground(x, y)
        return np.column_stack([e, n])

    return fn


def parse_crs(crs: Any, source: str) -> CRS | None:
    if crs is None or crs == "":
        return None
    try:
        return CRS.from_user_input(crs)
    except CRSError as e:
        raise GeodataError(f"{source}: unreadable CRS {crs!r} ({e}); reproject the file to EPSG:4326") from e


def project_to_ground(
    geometry: MapGeometry, geoms: np.ndarray, *, src_crs: CRS | None = None, source: str = ""
) -> np.ndarray:
    """Project geometries from ``src_crs`` (None = lon/lat) to ground metres in one vectorized pass.

    Raises GeodataError when the coordinates cannot be what the CRS says (lon/lat out of range, or
    data hundreds of km from the map), which is what a missing or wrong ``.prj``/``crs`` looks like.
    """
    geoms = shapely.force_2d(np.asarray(geoms, dtype=object))
    if len(geoms) == 0:
        return geoms
    if src_crs is None or src_crs.is_geographic:
        xmin, ymin, xmax, ymax = shapely.total_bounds(geoms)
        if not (-180 <= xmin <= xmax <= 180 and -90 <= ymin <= ymax <= 90):
            raise GeodataError(
                f"{source}: coordinates span x {xmin:.6g}..{xmax:.6g}, y {ymin:.6g}..{ymax:.6g}, which are not "
                f"longitude/latitude although the file declares {src_crs.to_string() if src_crs else 'no CRS'}; "
                "declare the file's real CRS (e.g. a .prj with EPSG:2263) or reproject it to EPSG:4326"
            )
    out = shapely.transform(geoms, _lnglat_fn(geometry, src_crs))
    xmin, ymin, xmax, ymax = shapely.total_bounds(out)
    if not np.isfinite([xmin, ymin, xmax, ymax]).all():
        raise GeodataError(f"{source}: coordinates cannot be projected from {src_crs}; check the file's CRS")
    # Distance from the seed (ground origin) to the data's bounding box.
    dx = max(xmin, 0.0, -xmax)
    dy = max(ymin, 0.0, -ymax)
    dist = math.hypot(dx, dy)
    if dist > MAX_DISTANCE_FROM_SEED_M:
        s = geometry.config.seed
        raise GeodataError(
            f"{source}: the data lies {dist / 1000:.0f} km from the map seed ({s.lat}, {s.lng}); "
            "either the file's CRS is wrong or it covers another place than this map"
        )
    return out


# --- attribute columns ------------------------------------------------------------------------------
def _norm(name: str) -> str:
    return name.strip().lower().replace(":", "_")


class Columns:
    """Attribute columns with case-insensitive lookup, parsed column-wise (not row by row) so that
    normalizing tens of thousands of features costs a few numpy passes."""

    def __init__(self, columns: Mapping[str, Sequence[Any]], n: int) -> None:
        self.n = n
        self._cols: dict[str, Sequence[Any]] = {}
        for name, values in columns.items():
            self._cols.setdefault(_norm(name), values)
        self._cache: dict[tuple, Any] = {}

    def names(self) -> list[str]:
        return list(self._cols)

    def has(self, *names: str) -> bool:
        return any(_norm(n) in self._cols for n in names)

    def get(self, name: str) -> Sequence[Any] | None:
        return self._cols.get(_norm(name))

    def _parsed(self, name: str, kind: str) -> np.ndarray | None:
        key = (name, kind)
        if key not in self._cache:
            col = self.get(name)
            self._cache[key] = None if col is None else _parse_column(col, kind)
        return self._cache[key]

    def bad_lengths(self, name: str, unit: str = "m") -> np.ndarray | None:
        """Per row, whether column ``name`` holds a value that is not a length: text, a negative number, NaN or
        infinity (missing values and 0, DOITT's and OSM's "unknown", are not bad); None without the column."""
        key = (name, f"bad_{unit}")
        if key not in self._cache:
            col, metres = self.get(name), self._parsed(name, f"len_{unit}")
            bad = None
            if col is not None and metres is not None:
                # Only values that did not parse to a length can be bad: look at those alone.
                unparsed = np.flatnonzero(np.isnan(metres))
                bad = np.zeros(self.n, dtype=bool)
                bad[unparsed] = [_bad_length(col[i], unit) for i in unparsed.tolist()]
            self._cache[key] = bad
        return self._cache[key]

    def lengths(self, names: Sequence[str], unit: str = "m") -> np.ndarray:
        """Metres per row from the first candidate column with a usable (> 0) length; NaN if none."""
        return self._coalesce(names, f"len_{unit}")

    def numbers(self, names: Sequence[str]) -> np.ndarray:
        """Numbers per row from the first candidate column that has one; NaN if none."""
        return self._coalesce(names, "num")

    def texts(self, names: Sequence[str]) -> list[str | None]:
        """Stripped text per row from the first candidate column that has one; None if none."""
        out: list[str | None] = [None] * self.n
        for name in names:
            col = self._parsed(name, "text")
            if col is not None:
                out = [o if o is not None else v for o, v in zip(out, col, strict=True)]
        return out

    def _coalesce(self, names: Sequence[str], kind: str) -> np.ndarray:
        out = np.full(self.n, np.nan)
        for name in names:
            col = self._parsed(name, kind)
            if col is not None:
                out = np.where(np.isnan(out), col, out)
        return out


def _parse_column(values: Sequence[Any], kind: str) -> Any:
    if kind == "text":
        return [_text(v) for v in values]
    if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values):
        # Typed numeric column (GeoPackage/Shapefile/GeoJSON numbers): no per-value parsing.
        arr = np.array([np.nan if v is None else v for v in values], dtype=float)
        if kind == "num":
            return arr
        arr = arr * (FEET if kind == "len_ft" else 1.0)
        return np.where(np.isfinite(arr) & (arr > 0), arr, np.nan)
    if kind == "num":
        return np.array([np.nan if (x := parse_number(v)) is None else x for v in values], dtype=float)
    unit = "ft" if kind == "len_ft" else "m"
    return np.array([np.nan if (x := parse_length(v, unit=unit)) is None else x for v in values], dtype=float)


def _is_null(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


_LENGTH_RE = re.compile(
    r"""^\s*~?\s*(?P<num>[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+))\s*
        (?P<unit>m|meters?|metres?|ft|feet|foot|'|’)?\s*
        (?:(?P<inch>\d+(?:\.\d*)?)\s*(?:"|”|in|inch|inches))?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


def parse_length(value: Any, *, unit: str = "m") -> float | None:
    """Parse a length into metres: numbers in ``unit`` ('m' or 'ft'), or strings like "30 m",
    "100 ft", "12.5", "12'6\"" (OSM style). Returns None for missing, unparseable, NaN or ≤ 0 values
    (0 means "unknown" in DOITT and OSM data, never "flat")."""
    if _is_null(value) or isinstance(value, bool):
        return None
    factor = FEET if unit == "ft" else 1.0
    if isinstance(value, int | float | np.integer | np.floating):
        v = float(value) * factor
        return v if math.isfinite(v) and v > 0 else None
    text = str(value).split(";")[0]  # OSM multi-values: the first is the main one
    m = _LENGTH_RE.match(text)
    if m is None:
        return None
    num = float(m["num"].replace(",", "."))
    u = (m["unit"] or "").lower()
    if u in ("ft", "feet", "foot", "'", "’"):
        v = num * FEET + (float(m["inch"]) * 0.0254 if m["inch"] else 0.0)
    elif u:
        v = num
    else:
        v = num * factor
    return v if math.isfinite(v) and v > 0 else None


def _bad_length(value: Any, unit: str) -> bool:
    """A value that is present, not 0 (unknown), and yet not a positive finite length."""
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        return False
    if parse_length(value, unit=unit) is not None:
        return False
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value) != 0.0  # NaN, ±inf and negatives are bad; 0 is "unknown"
    m = _LENGTH_RE.match(str(value).split(";")[0])
    return m is None or float(m["num"].replace(",", ".")) != 0.0


def parse_number(value: Any) -> float | None:
    if _is_null(value) or isinstance(value, bool):
        return None
    try:
        v = float(str(value).split(";")[0].strip().replace(",", "."))
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _text(value: Any) -> str | None:
    if _is_null(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


# --- geometry repair ----------------------------------------------------------------------------------
def polygonal(geom: BaseGeometry | None) -> Polygon | MultiPolygon | None:
    """Keep only the polygonal parts of ``geom`` (after make_valid), or None if nothing remains."""
    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, Polygon):
        return geom
    if isinstance(geom, MultiPolygon):
        return geom.geoms[0] if len(geom.geoms) == 1 else geom
    polys: list[Polygon] = []
    for part in shapely.get_parts(geom):
        if isinstance(part, Polygon) and not part.is_empty:
            polys.append(part)
        elif isinstance(part, MultiPolygon):
            polys.extend(p for p in part.geoms if not p.is_empty)
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def repair_polygons(
    geoms: np.ndarray, ids: Sequence[str], report: ReadReport, what: str
) -> list[Polygon | MultiPolygon | None]:
    """Make invalid polygons valid (keeping polygonal parts); None for those that end up empty or
    degenerate, reported by id in one warning."""
    geoms = np.asarray(geoms, dtype=object)
    out = geoms.copy()
    present = ~shapely.is_missing(geoms)
    invalid = present & ~shapely.is_valid(geoms)
    report.repaired += int(invalid.sum())
    for i in np.flatnonzero(invalid):
        out[i] = polygonal(shapely.make_valid(geoms[i]))
    types = shapely.get_type_id(out)
    # Single-part MultiPolygons become Polygons; collections keep only their polygons.
    single = (types == 6) & (shapely.get_num_geometries(out) == 1)
    out[single] = shapely.get_geometry(out[single], 0)
    for i in np.flatnonzero(~np.isin(types, (-1, 3, 6))):
        out[i] = polygonal(out[i])
    area = shapely.area(out)
    bad = ~(area >= MIN_POLYGON_AREA_M2)  # NaN (missing) counts as bad
    out[bad] = None
    dropped = [ids[i] for i in np.flatnonzero(bad).tolist()]
    report.dropped_empty += dropped
    report.warn_ids(
        f"dropped {len(dropped)} {what}(s) whose geometry is empty or degenerate (< {MIN_POLYGON_AREA_M2} m²)",
        dropped,
    )
    return list(out)


def unique_ids(raw: Sequence[str | None], prefix: str) -> list[str]:
    """Feature ids: the source id where there is one, ``prefix:row`` otherwise; duplicates get '#n'."""
    seen: dict[str, int] = {}
    out = []
    for i, r in enumerate(raw):
        base = r if r else f"{prefix}:{i}"
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.append(base if k == 0 else f"{base}#{k}")
    return out


def row_ids(cols: Columns, prefix: str) -> list[str]:
    return unique_ids(cols.texts(ID_FIELDS), prefix)


@dataclass(frozen=True)
class Rows:
    """Some rows of one source, as the ``make_*`` functions take them: ``geoms[k]`` (ground metres) is the
    geometry of row ``rows[k]``; ``cols`` and ``ids`` cover every row of the source."""

    geoms: np.ndarray
    cols: Columns
    ids: Sequence[str]
    rows: list[int]

    def row_ids(self) -> list[str]:
        """The ids of the selected rows, in ``geoms`` order."""
        return [self.ids[r] for r in self.rows]

    def take(self, mask: np.ndarray) -> Rows:
        """The selected rows where ``mask`` (one bool per selected row) holds."""
        keep = np.flatnonzero(mask)
        return Rows(self.geoms[keep], self.cols, self.ids, [self.rows[k] for k in keep.tolist()])


def ground_features(
    geometry: MapGeometry,
    geoms: np.ndarray,
    attrs: Mapping[str, Sequence[Any]],
    report: ReadReport,
    *,
    id_prefix: str,
    what: str,
    src_crs: CRS | None = None,
) -> Rows:
    """Every row of a source, its geometry projected to ground metres. Ids come from the id fields
    (``id_prefix:row`` where there is none); rows without geometry keep None and are reported as ``what``."""
    report.features_read = len(geoms)
    cols = Columns(attrs, len(geoms))
    ids = row_ids(cols, id_prefix)
    present = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    no_geom = [ids[i] for i in np.flatnonzero(~present).tolist()]
    report.dropped_empty += no_geom
    report.warn_ids(f"dropped {len(no_geom)} {what}(s) without geometry", no_geom)
    ground = np.full(len(geoms), None, dtype=object)
    ground[present] = project_to_ground(geometry, geoms[present], src_crs=src_crs, source=report.source)
    return Rows(ground, cols, ids, list(range(len(geoms))))


def in_window(sel: Rows, window: BaseGeometry | None, report: ReadReport) -> Rows:
    """The rows of ``sel`` whose geometry intersects ``window`` (every row with a geometry when there is no
    window); the other rows with a geometry count as outside the window."""
    present = ~shapely.is_missing(sel.geoms)
    inside = present
    if window is not None:
        shapely.prepare(window)
        inside = present & np.asarray(shapely.intersects(window, sel.geoms), dtype=bool)
    report.outside_window += int((present & ~inside).sum())
    return sel.take(inside)


# --- normalization per kind -------------------------------------------------------------------------
@dataclass(frozen=True)
class Heights:
    """Per-row heights of a buildings source (see ``building_heights``)."""

    height_m: np.ndarray
    base_m: np.ndarray
    estimated: np.ndarray  # no usable height: estimated from levels or DEFAULT_UNKNOWN_HEIGHT_M
    invalid: np.ndarray  # ... because a height field held text, a negative number, NaN or infinity
    implausible: np.ndarray  # ... because the height (or levels × 3.2 m) exceeded MAX_PLAUSIBLE_HEIGHT_M
    bad_value: dict[int, str]  # row → "field=value" of the first offending value, for warnings

    def take(self, rows: np.ndarray) -> Heights:
        """The heights of ``rows`` (their offending values keyed by position in ``rows``)."""
        bad = {k: self.bad_value[r] for k, r in enumerate(rows.tolist()) if r in self.bad_value}
        return Heights(
            self.height_m[rows], self.base_m[rows], self.estimated[rows], self.invalid[rows],
            self.implausible[rows], bad,
        )  # fmt: skip


def building_heights(cols: Columns) -> Heights:
    """Heights per row from whatever height fields the source has: metres fields first, then DOITT feet.

    A height is used when it is a positive finite length up to MAX_PLAUSIBLE_HEIGHT_M. Rows without one are
    estimated from levels × 3.2 m (if that is plausible) or DEFAULT_UNKNOWN_HEIGHT_M; those whose fields held a bad
    value (text, negative, NaN, infinity) or an implausible one are flagged, never silently given 12 m.
    """
    n = cols.n
    height = np.full(n, np.nan)
    invalid = np.zeros(n, dtype=bool)
    implausible = np.zeros(n, dtype=bool)
    bad_value: dict[int, str] = {}
    for names, unit in ((HEIGHT_M_FIELDS, "m"), (HEIGHT_FT_FIELDS, "ft")):
        for name in names:
            bad = cols.bad_lengths(name, unit)
            if bad is None:
                continue
            metres = cols.lengths((name,), unit)
            too_tall = metres > MAX_PLAUSIBLE_HEIGHT_M
            open_ = np.isnan(height)
            raw = cols.get(name)
            assert raw is not None
            for r in np.flatnonzero(open_ & (bad | too_tall)).tolist():
                bad_value.setdefault(r, f"{name}={raw[r]!r}")
            invalid |= open_ & bad
            implausible |= open_ & too_tall
            height = np.where(open_ & ~too_tall, metres, height)
    base = cols.lengths(BASE_M_FIELDS, "m")
    min_level = cols.numbers(MIN_LEVEL_FIELDS)
    base = np.where(np.isnan(base), np.where(min_level > 0, min_level * LEVEL_HEIGHT_M, 0.0), base)
    estimated = np.isnan(height)
    by_levels = cols.numbers(LEVELS_FIELDS) * LEVEL_HEIGHT_M
    tall_levels = estimated & (by_levels > MAX_PLAUSIBLE_HEIGHT_M)
    levels_col = next((cols.get(f) for f in LEVELS_FIELDS if cols.get(f) is not None), None)
    for r in np.flatnonzero(tall_levels & ~implausible & ~invalid).tolist():
        bad_value.setdefault(r, f"levels={levels_col[r]!r}" if levels_col is not None else "levels")
    implausible |= tall_levels
    usable_levels = (by_levels > 0) & (by_levels <= MAX_PLAUSIBLE_HEIGHT_M)
    guess = np.where(usable_levels, by_levels, DEFAULT_UNKNOWN_HEIGHT_M)
    # A part that starts high up (min_height) still needs some volume of its own.
    guess = np.maximum(guess, base + LEVEL_HEIGHT_M)
    # Flags mean "estimated because of a bad value": a row with a usable height is never flagged.
    invalid &= estimated
    implausible &= estimated
    bad_value = {r: v for r, v in bad_value.items() if invalid[r] or implausible[r]}
    return Heights(np.where(estimated, guess, height), base, estimated, invalid, implausible, bad_value)


def placeholders(cols: Columns) -> np.ndarray:
    return cols.numbers(FEATURE_CODE_FIELDS) == PLACEHOLDER_FEATURE_CODE


def make_buildings(
    sel: Rows, report: ReadReport, *, source: str, skip_placeholders: bool = True
) -> list[Building]:
    """Buildings from ground-metre footprints and their attribute rows."""
    cols, geoms, rows_a = sel.cols, sel.geoms, np.asarray(sel.rows, dtype=int)
    if skip_placeholders:
        ph = placeholders(cols)[rows_a] if len(rows_a) else np.zeros(0, bool)
        if ph.any():
            report.skipped_placeholders += int(ph.sum())
            report.warn(f"skipped {int(ph.sum())} placeholder footprint(s) (feature_code 1003)")
            geoms, rows_a = geoms[~ph], rows_a[~ph]
    bids = [sel.ids[r] for r in rows_a.tolist()]
    fixed = repair_polygons(geoms, bids, report, "building")
    h = building_heights(cols).take(rows_a)
    height, base, estimated = h.height_m, h.base_m, h.estimated
    _report_bad_heights(h, bids, fixed, report)
    bad_base = base >= height
    if bad_base.any():
        base = np.where(bad_base, 0.0, base)
        report.warn_ids(
            "base (min_height) not below the roof, set to 0 for", [bids[k] for k in np.flatnonzero(bad_base)]
        )
    names = cols.texts(NAME_FIELDS)
    out = [
        Building(
            id=bids[k],
            footprint=g,
            height_m=round(float(height[k]), 3),
            base_m=round(float(base[k]), 3),
            height_estimated=bool(estimated[k]),
            source=source,
            name=names[r],
        )
        for k, (g, r) in enumerate(zip(fixed, rows_a.tolist(), strict=True))
        if g is not None
    ]
    report.heights_estimated += sum(b.height_estimated for b in out)
    report.buildings += len(out)
    return out


def _report_bad_heights(
    h: Heights, bids: Sequence[str], fixed: Sequence[BaseGeometry | None], report: ReadReport
) -> None:
    """Count and name (with the offending value) the kept buildings whose height had to be estimated."""
    kept = np.array([g is not None for g in fixed], dtype=bool)
    for mask, what, attr in (
        (h.invalid & kept, "are not usable numbers (text, negative, NaN or infinite)", "heights_invalid"),
        (
            h.implausible & kept,
            f"are above {MAX_PLAUSIBLE_HEIGHT_M:g} m, taller than any building (feet in a metres field?)",
            "heights_implausible",
        ),
    ):
        rows = np.flatnonzero(mask).tolist()
        if not rows:
            continue
        setattr(report, attr, getattr(report, attr) + len(rows))
        report.warn_ids(
            f"{len(rows)} building height(s) {what}; estimated from levels or {DEFAULT_UNKNOWN_HEIGHT_M:g} m instead",
            [f"{bids[k]} ({h.bad_value.get(k, '?')})" for k in rows],
        )


def park_kinds(cols: Columns, default: str = "park") -> list[str]:
    out: list[str | None] = [None] * cols.n
    for name in ("kind", "leisure", "landuse"):
        vals = cols.texts((name,))
        out = [
            o if o is not None else (v.lower() if v and v.lower() in PARK_VALUES else None)
            for o, v in zip(out, vals, strict=True)
        ]
    return [o or default for o in out]


def make_parks(sel: Rows, report: ReadReport) -> list[Park]:
    pids = sel.row_ids()
    fixed = repair_polygons(sel.geoms, pids, report, "park")
    kinds, names = park_kinds(sel.cols), sel.cols.texts(NAME_FIELDS)
    out = [
        Park(id=pid, geometry=g, kind=kinds[r], name=names[r])
        for g, r, pid in zip(fixed, sel.rows, pids, strict=True)
        if g is not None
    ]
    report.parks += len(out)
    return out


def road_width(kind: str, width: float = math.nan, lanes: float = math.nan) -> float:
    """Road width: the ``width`` tag if plausible, else lanes × 3.3 m + 2 m, else the class default."""
    if 0 < width < 100:
        return float(width)
    if 0 < lanes < 20:
        return lanes * LANE_WIDTH_M + 2.0
    return ROAD_WIDTH_M.get(kind, DEFAULT_ROAD_WIDTH_M)


def make_roads(sel: Rows, report: ReadReport) -> list[Road]:
    cols, ids = sel.cols, sel.ids
    kinds, names = cols.texts(("highway", "kind")), cols.texts(NAME_FIELDS)
    widths, lanes = cols.lengths(WIDTH_FIELDS, "m"), cols.numbers(LANES_FIELDS)
    out: list[Road] = []
    for g, r in zip(sel.geoms, sel.rows, strict=True):
        if g is None or g.is_empty:
            report.dropped_empty.append(ids[r])
            continue
        kind = (kinds[r] or "road").lower()
        if kind in IGNORED_HIGHWAYS:
            report.ignored += 1
            continue
        if g.geom_type in ("Polygon", "MultiPolygon"):
            g = polygonal(g if g.is_valid else shapely.make_valid(g))
            if g is None:
                report.dropped_empty.append(ids[r])
                continue
        out.append(
            Road(
                id=ids[r], geometry=g, kind=kind, width_m=road_width(kind, widths[r], lanes[r]), name=names[r]
            )
        )
    report.roads += len(out)
    return out


def make_areas(sel: Rows, report: ReadReport, what: str) -> list[Polygon | MultiPolygon]:
    """Land or water polygons (repaired; empty and degenerate ones dropped and reported as ``what``)."""
    return [p for p in repair_polygons(sel.geoms, sel.row_ids(), report, what) if p is not None]
