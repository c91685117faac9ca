"""Read any OGR vector file (GeoJSON, GeoPackage, Shapefile, FlatGeobuf) with pyogrio.

Files are read through ``pyogrio.read_arrow`` (GDAL → Arrow, no per-feature Python objects; geopandas
is not needed), projected to ground metres in one vectorized pass and normalized by ``_common``.

How features are classified (each layer of a file on its own):
1. line geometries are always roads; points are ignored (counted in the report);
2. an explicit kind (``kind=`` or a ``"parks:file.geojson"`` prefix in ``load_city``) decides polygons;
3. otherwise, per polygon row, the first rule that matches: a non-empty ``highway`` makes it a road
   area; ``building``/``building:part`` (≠ "no") a building; ``kind``/``leisure``/``landuse`` with a park
   value (park, garden, playground, grass, ...) a park; ``natural=water`` or a ``water`` value water;
   then file-wide fields: NYC Parks fields (``PARK_NAME``, ``SIGNNAME``, ``GISPROPNUM``) → parks;
   DOITT/OSM height fields (``height_roof``, ``HEIGHTROOF``, ``height_m``, ``height``, ``levels``,
   ``feature_code``, ``bin``) → buildings; borough fields (``BoroName``, ``BoroCode``, ``borough``) →
   land; last, a layer or file name containing building/park/road/street/water/land/borough;
4. polygons matching none of these are an error that asks for an explicit kind (``"parks:file.geojson"``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyogrio
import shapely
from pyogrio.errors import DataSourceError
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geodata._common import (
    ATTRIBUTION_DCP,
    ATTRIBUTION_DOITT,
    ATTRIBUTION_OSM,
    ATTRIBUTION_PARKS,
    FEATURE_CODE_FIELDS,
    HEIGHT_FT_FIELDS,
    HEIGHT_M_FIELDS,
    KINDS,
    LEVELS_FIELDS,
    PARK_VALUES,
    Columns,
    FeatureSet,
    GeodataError,
    ReadReport,
    ground_features,
    in_window,
    make_areas,
    make_buildings,
    make_parks,
    make_roads,
    parse_crs,
    polygonal,
)

Kind = Literal["auto", "buildings", "parks", "roads", "land", "water"]

VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb")
_MULTI_LAYER_SUFFIXES = (".gpkg",)
_INDEXED_SUFFIXES = (".gpkg", ".shp", ".fgb")

_BUILDING_FIELDS = (
    *HEIGHT_M_FIELDS,
    *HEIGHT_FT_FIELDS,
    *LEVELS_FIELDS,
    *FEATURE_CODE_FIELDS,
    "bin",
    "doitt_id",
)
_PARK_NAME_FIELDS = ("park_name", "signname", "gispropnum")
_LAND_FIELDS = ("boroname", "borocode", "boro_name", "boro_code", "borough")
_LAYER_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("building",), "buildings"),
    (("park", "green"), "parks"),
    (("road", "street", "highway"), "roads"),
    (("water",), "water"),
    (("land", "borough", "boro"), "land"),
)


def _layer_kind(layer: str) -> str | None:
    name = layer.lower()
    for words, kind in _LAYER_HINTS:
        if any(w in name for w in words):
            return kind
    return None


def _row_kinds(cols: Columns, type_ids: np.ndarray, forced: str | None, name_hint: str | None) -> np.ndarray:
    """Kind of every row (see the module docstring); '' for rows nothing matches."""
    n = cols.n
    kinds = np.full(n, "", dtype=object)
    is_line = np.isin(type_ids, (1, 2, 5))
    is_poly = np.isin(type_ids, (3, 6, 7))
    kinds[is_line] = "roads"
    if forced is not None:
        kinds[is_poly] = forced
        return kinds

    def present(name: str) -> np.ndarray:
        col = cols.get(name)
        if col is None:
            return np.zeros(n, dtype=bool)
        return np.array([v is not None and str(v).strip() not in ("", "no", "nan") for v in col], dtype=bool)

    def value_in(name: str, values: frozenset[str]) -> np.ndarray:
        col = cols.get(name)
        if col is None:
            return np.zeros(n, dtype=bool)
        return np.array([v is not None and str(v).strip().lower() in values for v in col], dtype=bool)

    file_is_buildings = cols.has(*_BUILDING_FIELDS)
    file_is_parks = cols.has(*_PARK_NAME_FIELDS)
    file_is_land = cols.has(*_LAND_FIELDS)
    rules: list[tuple[np.ndarray, str]] = [
        (present("highway"), "roads"),
        (present("building") | present("building:part"), "buildings"),
        (
            value_in("kind", PARK_VALUES)
            | value_in("leisure", PARK_VALUES)
            | value_in("landuse", PARK_VALUES),
            "parks",
        ),
        (value_in("natural", frozenset({"water"})) | present("water"), "water"),
        (np.full(n, file_is_parks), "parks"),
        (np.full(n, file_is_buildings), "buildings"),
        (np.full(n, file_is_land), "land"),
        (np.full(n, name_hint is not None), name_hint or ""),
    ]
    for mask, kind in rules:
        sel = is_poly & mask & (kinds == "")
        kinds[sel] = kind
    return kinds


def _attribution(cols: Columns, kinds: set[str], path: Path) -> list[str]:
    out = []
    osm = cols.has("osm_id", "osm_type") or re.search(r"(^|[_.-])osm([_.-]|$)", path.stem.lower()) is not None
    if osm:
        out.append(ATTRIBUTION_OSM)
    if "buildings" in kinds and (cols.has(*HEIGHT_FT_FIELDS, "doitt_id", *FEATURE_CODE_FIELDS)):
        out.append(ATTRIBUTION_DOITT)
    if "parks" in kinds and cols.has(*_PARK_NAME_FIELDS):
        out.append(ATTRIBUTION_PARKS)
    if "land" in kinds and cols.has(*_LAND_FIELDS):
        out.append(ATTRIBUTION_DCP)
    if not out:
        out.append(f"Data: {path.name}")
    return out


def _window_bbox(
    geometry: MapGeometry, window: BaseGeometry, crs: str | None
) -> tuple[float, float, float, float]:
    """The window's bounding box in the file's CRS, for GDAL's spatial pre-filter."""
    # Densify the outline so the box still contains the window after a non-linear reprojection.
    outline = shapely.segmentize(window.envelope.exterior, max(window.length / 400, 1.0))
    e, n = shapely.get_coordinates(outline).T
    x, y = geometry.ground_to_lnglat(e, n)
    src = parse_crs(crs, "window")
    if src is not None and not src.equals("EPSG:4326", ignore_axis_order=True):
        x, y = Transformer.from_crs("EPSG:4326", src, always_xy=True).transform(x, y)
    pad_x, pad_y = (x.max() - x.min()) * 0.01, (y.max() - y.min()) * 0.01
    return (float(x.min() - pad_x), float(y.min() - pad_y), float(x.max() + pad_x), float(y.max() + pad_y))


def read_vector(
    path: str | Path,
    geometry: MapGeometry,
    *,
    kind: Kind = "auto",
    window: BaseGeometry | None = None,
    layers: Sequence[str] | None = None,
    skip_placeholders: bool = True,
) -> FeatureSet:
    """Read every layer of an OGR vector file into normalized features in ground metres.

    ``kind`` forces how polygons are interpreted (lines are always roads); ``window`` (ground metres)
    keeps only features that intersect it (land/water are clipped to it instead). ``layers`` restricts
    which layers of a multi-layer file (GeoPackage) are read.
    """
    path = Path(path)
    if kind != "auto" and kind not in KINDS:
        raise GeodataError(f"unknown kind {kind!r} for {path}; use one of {', '.join(KINDS)}")
    if not path.exists():
        raise GeodataError(f"geodata file {path} does not exist; check the path")
    if path.suffix.lower() not in VECTOR_SUFFIXES:
        raise GeodataError(
            f"{path}: unsupported vector format {path.suffix!r}; use one of {', '.join(VECTOR_SUFFIXES)}"
        )
    if path.suffix.lower() in _MULTI_LAYER_SUFFIXES:
        try:
            all_layers = [(str(name), gtype) for name, gtype in pyogrio.list_layers(path)]
        except DataSourceError as e:
            raise GeodataError(f"{path}: GDAL cannot open it ({e}); is it corrupt or truncated?") from e
        if layers is not None and (missing := set(layers) - {name for name, _ in all_layers}):
            raise GeodataError(
                f"{path}: no layer(s) {sorted(missing)}; the file has {[n for n, _ in all_layers]}"
            )
        wanted: list[str | None] = [
            name for name, gtype in all_layers if gtype is not None and (layers is None or name in layers)
        ]
        if not wanted:
            raise GeodataError(f"{path}: the file has no layer with geometries")
    else:
        # Single-layer formats: listing layers would make GDAL parse a GeoJSON one extra time.
        wanted = [None]
    out = FeatureSet(sources=[str(path)])
    for layer in wanted:
        out.extend(
            _read_layer(path, layer, geometry, kind, window, skip_placeholders, multi_layer=len(wanted) > 1)
        )
    out.sources = [str(path)]
    return out


def _read_layer(
    path: Path,
    layer: str | None,
    geometry: MapGeometry,
    kind: Kind,
    window: BaseGeometry | None,
    skip_placeholders: bool,
    *,
    multi_layer: bool,
) -> FeatureSet:
    source = f"{path}" + (f"#{layer}" if multi_layer else "")
    report = ReadReport(source=source)
    bbox = None
    if window is not None and path.suffix.lower() in _INDEXED_SUFFIXES:
        # GDAL skips features by bbox through the spatial index of GPKG/Shapefile/FlatGeobuf; a GeoJSON
        # is parsed whole anyway, and its features are filtered exactly after projection below.
        try:
            info = pyogrio.read_info(path, layer=layer)
        except DataSourceError as e:
            raise GeodataError(f"{source}: GDAL cannot open it ({e}); is it corrupt or truncated?") from e
        bbox = _window_bbox(geometry, window, info.get("crs"))
    try:
        meta, table = pyogrio.read_arrow(path, layer=layer, bbox=bbox)
    except DataSourceError as e:
        raise GeodataError(f"{source}: GDAL cannot open it ({e}); is it corrupt or truncated?") from e
    crs = parse_crs(meta.get("crs"), source)
    geom_col = meta.get("geometry_name") or "wkb_geometry"
    if geom_col not in table.column_names:
        raise GeodataError(f"{source}: no geometry column found (columns: {table.column_names})")
    wkb = table.column(geom_col).to_numpy(zero_copy_only=False)
    geoms = shapely.from_wkb(wkb, on_invalid="ignore")
    attrs = {
        name: _column_values(table.column(name))
        for name in table.column_names
        if name != geom_col and name != meta.get("fid_column")
    }
    every = ground_features(
        geometry,
        geoms,
        attrs,
        report,
        id_prefix=f"{path.stem}" + (f".{layer}" if multi_layer else ""),
        what="feature",
        src_crs=crs,
    )
    cols = every.cols
    present = ~shapely.is_missing(every.geoms)
    type_ids = shapely.get_type_id(every.geoms)

    forced = None if kind == "auto" else kind
    name_hint = (_layer_kind(layer) if layer else None) or _layer_kind(path.stem)
    kinds = _row_kinds(cols, type_ids, forced, name_hint)
    kinds[~present] = ""

    unresolved = np.isin(type_ids, (3, 6, 7)) & (kinds == "")
    if unresolved.any():
        raise GeodataError(
            f"{source}: cannot tell whether its {int(unresolved.sum())} polygon(s) are buildings, parks, land or "
            f"water from the fields {cols.names() or '(none)'}; prefix the path with the kind, e.g. "
            f"'buildings:{path}' or 'parks:{path}'"
        )
    report.ignored += int((present & (kinds == "")).sum())
    # Judged on every row read and on the fields, not on the window: a buildings file that misses the area is the
    # case the "no building over land" warning in load_city exists for.
    report.buildings_expected = bool(
        forced == "buildings"
        or (kinds == "buildings").any()
        or (forced is None and (cols.has(*_BUILDING_FIELDS) or name_hint == "buildings"))
    )

    fs = FeatureSet(sources=[source], reports=[report])
    for k in KINDS:
        chosen = every.take((kinds == k) & present)
        if k in ("buildings", "parks", "roads"):  # kept whole or not at all; land/water are clipped
            chosen = in_window(chosen, window, report)
        if not chosen.rows:
            continue
        if k == "buildings":
            fs.buildings = make_buildings(chosen, report, source=source, skip_placeholders=skip_placeholders)
        elif k == "parks":
            fs.parks = make_parks(chosen, report)
        elif k == "roads":
            fs.roads = make_roads(chosen, report)
        else:
            polys = make_areas(chosen, report, k)
            if window is not None:
                # rectangle clip first: cheap, and it shrinks borough-sized polygons before the exact cut
                near = [shapely.clip_by_rect(p, *window.bounds) for p in polys]
                polys = [c for p in near if (c := polygonal(p.intersection(window))) is not None]
            if k == "land":
                fs.land = polys
                report.land = len(polys)
            else:
                fs.water = polys
                report.water = len(polys)
    fs.attribution = _attribution(cols, set(kinds[present].tolist()) - {""}, path)
    return fs


def _column_values(col: pa.ChunkedArray) -> list:
    # Everything the normalizer reads is a number or a string (Socrata sends even numbers as strings);
    # other Arrow types (dates, lists) are handed over as their text.
    t = col.type
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
    ):
        return col.to_pylist()
    return [None if v is None else str(v) for v in col.to_pylist()]
