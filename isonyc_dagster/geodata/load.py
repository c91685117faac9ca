"""Assemble a ``City`` from geodata sources, or the synthetic offline city when there are none.

A source is a path, optionally prefixed with the kind of its polygons (``"parks:my_parks.geojson"``;
kinds: buildings, parks, roads, land, water), or the word ``"socrata"`` (NYC Open Data building
footprints for the window, cached). The reader is chosen by extension: .geojson/.json/.gpkg/.shp/.fgb →
``vector.read_vector`` (classification rules in its docstring), .pbf/.osm.pbf/.osm(.gz/.bz2) →
``osm.read_osm``. Land is the union of the ``land`` argument ("nyc" = the packaged borough boundaries,
a vector file, or None = no shoreline known) and any land-kind sources; water is everything in the window
outside land, plus explicit water polygons (OSM ponds/reservoirs, water-kind sources).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import shapely
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geodata._common import KINDS, FeatureSet, GeodataError, ReadReport, polygonal
from isonyc_dagster.geodata.land import NYC_LAND, LandSpec, clip_land, land_attribution, land_polygon
from isonyc_dagster.geodata.model import City
from isonyc_dagster.geodata.osm import OSM_SUFFIXES, is_osm_path, read_osm
from isonyc_dagster.geodata.socrata import DEFAULT_BASE_URL, SocrataClient, read_socrata_buildings
from isonyc_dagster.geodata.synthetic import synthetic_city
from isonyc_dagster.geodata.vector import VECTOR_SUFFIXES, read_vector

__all__ = ["GeodataError", "load_city", "parse_source", "read_sources"]

log = logging.getLogger(__name__)

SOCRATA_SOURCE = "socrata"
#: Land (m²) in the window above which a buildings source that yields no building is suspect: about half a city
#: block. Open water, or a sliver of shore, may rightly have no building.
MIN_LAND_FOR_BUILDINGS_M2 = 10_000.0


def parse_source(source: str | Path) -> tuple[str, Path | str]:
    """(kind, path) of a source string: ``"parks:x.geojson"`` → ("parks", Path("x.geojson")); no
    prefix → ("auto", path); ``"socrata"`` → ("socrata", "socrata").

    The prefix is also recognised on the file-name part (``"/cfg/parks:x.geojson"``), which is what a
    config loader that makes relative paths absolute produces; likewise a bare ``…/socrata`` that is
    not an existing file means the Socrata source.
    """
    if isinstance(source, Path):
        return "auto", source
    text = str(source).strip()
    if text.lower() == SOCRATA_SOURCE:
        return SOCRATA_SOURCE, SOCRATA_SOURCE
    head, sep, rest = text.partition(":")
    if sep and head.lower() in KINDS and rest:
        return head.lower(), Path(rest)
    path = Path(text)
    head, sep, rest = path.name.partition(":")
    if sep and head.lower() in KINDS and rest:
        return head.lower(), path.with_name(rest)
    if path.name.lower() == SOCRATA_SOURCE and not path.exists():
        return SOCRATA_SOURCE, SOCRATA_SOURCE
    return "auto", path


def _check_window(window: BaseGeometry | None) -> None:
    if window is None:
        return
    if not isinstance(window, BaseGeometry) or window.geom_type not in ("Polygon", "MultiPolygon"):
        raise GeodataError(f"window must be a shapely Polygon in ground metres, got {type(window).__name__}")
    if window.is_empty or window.area <= 0:
        raise GeodataError("window is empty; pass a polygon in ground metres (MapGeometry.lnglat_to_ground)")
    xmin, ymin, xmax, ymax = window.bounds
    if window.area < 1.0 and -180 <= xmin <= xmax <= 180 and -90 <= ymin <= ymax <= 90:
        raise GeodataError(
            f"window {window.bounds} looks like lon/lat degrees; it must be in ground metres "
            "(convert with MapGeometry.lnglat_to_ground)"
        )


def read_sources(
    geometry: MapGeometry,
    sources: Sequence[str | Path],
    *,
    window: BaseGeometry | None = None,
    cache_dir: str | Path | None = None,
    socrata_base_url: str = DEFAULT_BASE_URL,
    socrata_app_token: str | None = None,
    socrata_client: SocrataClient | None = None,
) -> FeatureSet:
    """Read every source into one FeatureSet (no land default, no synthetic fallback)."""
    out = FeatureSet()
    for src in sources:
        kind, path = parse_source(src)
        if kind == SOCRATA_SOURCE:
            if window is None:
                raise GeodataError("the 'socrata' source needs a window: it queries only the area of the map")
            out.extend(
                read_socrata_buildings(
                    geometry,
                    window,
                    base_url=socrata_base_url,
                    app_token=socrata_app_token,
                    cache_dir=cache_dir,
                    client=socrata_client,
                )
            )
            continue
        assert isinstance(path, Path)
        if not path.exists():
            raise GeodataError(
                f"geodata source {path} does not exist; check the path (relative paths in a config file are "
                "relative to that file)"
            )
        if is_osm_path(path):
            if kind != "auto":
                raise GeodataError(f"{src}: OSM files carry their own kinds; drop the '{kind}:' prefix")
            out.extend(read_osm(path, geometry, window=window))
        elif path.suffix.lower() in VECTOR_SUFFIXES:
            out.extend(read_vector(path, geometry, kind=kind, window=window))  # type: ignore[arg-type]
        else:
            raise GeodataError(
                f"{path}: unsupported geodata format {path.suffix or '(no extension)'!r}; use a vector file "
                f"({', '.join(VECTOR_SUFFIXES)}) or OSM ({', '.join(OSM_SUFFIXES)}), or 'socrata'"
            )
    return out


def load_city(
    geometry: MapGeometry,
    sources: Sequence[str | Path],
    *,
    window: BaseGeometry | None = None,
    land: LandSpec = NYC_LAND,
    socrata: bool = False,
    cache_dir: str | Path | None = None,
    socrata_base_url: str = DEFAULT_BASE_URL,
    socrata_app_token: str | None = None,
    socrata_client: SocrataClient | None = None,
    synthetic_seed: int = 0,
) -> City:
    """The City of ``sources`` inside ``window`` (ground metres; None = everything in the files).

    Empty ``sources`` (and ``socrata=False``) gives the synthetic Manhattan-style city over ``window``,
    which is then required. Features are kept whole when they intersect the window (the caller's window
    should already include margins for tall buildings); land is clipped to it.
    """
    _check_window(window)
    sources = list(sources)
    if socrata and all(parse_source(s)[0] != SOCRATA_SOURCE for s in sources):
        sources.append(SOCRATA_SOURCE)
    if not sources:
        if window is None:
            raise GeodataError(
                "no geodata sources: the synthetic offline city is generated for a window, so pass window=... "
                "(a ground-metre polygon) or list geodata files"
            )
        city = synthetic_city(geometry, window, seed=synthetic_seed, land=land)
        log.info(
            "synthetic city: %d buildings, %d parks, %d roads",
            len(city.buildings),
            len(city.parks),
            len(city.roads),
        )
        return city

    fs = read_sources(
        geometry,
        sources,
        window=window,
        cache_dir=cache_dir,
        socrata_base_url=socrata_base_url,
        socrata_app_token=socrata_app_token,
        socrata_client=socrata_client,
    )
    land_parts = list(fs.land)
    attribution = list(fs.attribution)
    base_land = land_polygon(geometry, land, window=window)
    if base_land is not None:
        land_parts.append(base_land)
        if (a := land_attribution(land)) and a not in attribution:
            attribution.append(a)
    land_geom = None
    if land_parts:
        land_geom = polygonal(shapely.union_all(land_parts)) if len(land_parts) > 1 else land_parts[0]
        if window is not None and land_geom is not None:
            land_geom = clip_land(land_geom, window)
        if land_geom is None:
            land_geom = shapely.Polygon()
        shapely.prepare(land_geom)

    warn_if_no_buildings(fs, land_geom, window)
    reports = [r.as_dict() for r in fs.reports]
    for r in fs.reports:
        _log_report(r)
    return City(
        buildings=fs.buildings,
        land=land_geom,
        water=fs.water,
        parks=fs.parks,
        roads=fs.roads,
        synthetic=False,
        sources=[*fs.sources, *([f"land:{land}"] if land is not None else [])],
        attribution=". ".join(attribution) + ("." if attribution else ""),
        reports=reports,
    )


def warn_if_no_buildings(fs: FeatureSet, land: BaseGeometry | None, window: BaseGeometry | None) -> None:
    """Warn, naming each file, when the buildings sources yield no building at all over an area with land.

    An empty map with land on it is almost always a file for another area (or in a wrong CRS) rather than
    empty ground. Only a total of zero counts: several files that each cover part of a city (one per borough,
    say) are normal, and a window loaded region by region would otherwise warn for every region.
    """
    if fs.buildings:
        return
    # No shoreline known (land None) means everything is land.
    land_m2 = (window.area if window is not None else float("inf")) if land is None else land.area
    if land_m2 < MIN_LAND_FOR_BUILDINGS_M2:
        return
    area = "this area" if window is None else "the window"
    for r in fs.reports:
        if r.buildings_expected and r.buildings == 0:
            where = "" if land_m2 == float("inf") else f" although {land_m2 / 1e6:,.2f} km² of it is land"
            r.warn(
                f"{Path(r.source).name} yields no building in {area}{where}: check that the file covers the bounds and "
                "that its CRS is right"
            )


def _log_report(r: ReadReport) -> None:
    log.info(
        "%s: %d buildings (%d estimated heights: %d invalid, %d implausible; %d placeholders skipped, %d repaired, "
        "%d dropped), %d parks, %d roads, %d water",
        r.source,
        r.buildings,
        r.heights_estimated,
        r.heights_invalid,
        r.heights_implausible,
        r.skipped_placeholders,
        r.repaired,
        len(r.dropped_empty),
        r.parks,
        r.roads,
        r.water,
    )
