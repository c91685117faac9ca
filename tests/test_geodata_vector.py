"""The OGR vector reader on the real NYC files in ../shared/geodata (read in place)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyogrio
import pytest
import shapely
import shapely.affinity
from pyproj import Geod, Transformer
from shapely.geometry import Polygon, box, shape

from isonyc_dagster.geodata import GeodataError
from isonyc_dagster.geodata._common import parse_length  # white-box test of the unit parser
from isonyc_dagster.geodata.model import DEFAULT_UNKNOWN_HEIGHT_M
from isonyc_dagster.geodata.vector import read_vector
from tests.conftest import geodata_file


def _features(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["features"]


def _write(
    path: Path,
    columns: dict[str, list],
    geoms: list,
    *,
    crs: str,
    driver: str,
    layer: str | None = None,
    append: bool = False,
) -> None:
    table = pa.table(
        {**columns, "geometry": pa.array(shapely.to_wkb(np.asarray(geoms, dtype=object)), pa.binary())}
    )
    pyogrio.write_arrow(
        table,
        path,
        layer=layer,
        driver=driver,
        geometry_name="geometry",
        geometry_type="Unknown",
        crs=crs,
        append=append,
    )


# --- heights and fields -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "unit", "metres"),
    [
        (12.5, "m", 12.5),
        ("12.5", "m", 12.5),
        ("30 m", "m", 30.0),
        ("100 ft", "m", 30.48),
        ("12'6\"", "m", 3.81),
        ("911", "ft", 277.6728),
        ("0", "ft", None),
        (0.0, "m", None),
        (None, "m", None),
        ("", "m", None),
        ("tall", "m", None),
        (float("nan"), "m", None),
        ("25;30", "m", 25.0),
        ("7,5", "m", 7.5),
    ],
)
def test_parse_length(value, unit, metres):
    got = parse_length(value, unit=unit)
    assert got == pytest.approx(metres) if metres is not None else got is None


def test_doitt_fixture_heights_in_metres_and_placeholder_skipped(geometry, caplog):
    path = geodata_file("fixture_buildings_citicorp_60_doitt.geojson")
    with caplog.at_level(logging.WARNING):
        fs = read_vector(path, geometry)
    report = fs.reports[0]
    assert report.features_read == 60
    assert report.skipped_placeholders == 1
    assert "skipped 1 placeholder" in caplog.text
    assert len(fs.buildings) == 59
    citi = next(b for b in fs.buildings if b.name == "Citigroup Center")
    src = next(f["properties"] for f in _features(path) if f["properties"]["name"] == "Citigroup Center")
    assert citi.id == src["doitt_id"]  # ids come from the source, not from row numbers
    assert citi.height_m == pytest.approx(911 * 0.3048, abs=0.01)  # 277.7 m
    assert not citi.height_estimated
    assert all(b.height_m > 0 and not b.height_estimated for b in fs.buildings)
    assert fs.attribution == ["Building footprints: NYC OTI (NYC Open Data)"]


def test_zero_height_building_becomes_estimated_not_flat(geometry):
    path = geodata_file("fixture_buildings_citicorp_60_doitt.geojson")
    fs = read_vector(path, geometry, skip_placeholders=False)
    assert len(fs.buildings) == 60
    zero = [b for b in fs.buildings if b.id == "1290940"]  # doitt_id of the height-0 footprint
    assert len(zero) == 1
    assert zero[0].height_estimated
    assert zero[0].height_m == DEFAULT_UNKNOWN_HEIGHT_M
    assert fs.reports[0].heights_estimated == 1


def test_socrata_strings_in_feet_match_slim_file_in_metres(geometry):
    raw = read_vector(geodata_file("midtown_east_buildings_socrata_raw.geojson"), geometry)
    slim = read_vector(geodata_file("midtown_east_buildings_doitt.geojson"), geometry)
    assert len(raw.buildings) == len(slim.buildings) == 642
    by_id = {b.id: b for b in slim.buildings}
    for b in raw.buildings:
        s = by_id[b.id]
        assert b.height_m == pytest.approx(s.height_m, abs=0.01)
        assert b.footprint.symmetric_difference(s.footprint).area < 0.01 * s.footprint.area + 0.5


def test_footprints_are_projected_exactly_to_ground_metres(geometry):
    path = geodata_file("fixture_buildings_citicorp_60_doitt.geojson")
    feats = _features(path)
    fs = read_vector(path, geometry)
    citi_src = shape(next(f for f in feats if f["properties"]["name"] == "Citigroup Center")["geometry"])
    citi = next(b for b in fs.buildings if b.name == "Citigroup Center")
    lng, lat = shapely.get_coordinates(citi_src).T
    e, n = geometry.lnglat_to_ground(lng, lat)
    assert np.allclose(shapely.get_coordinates(citi.footprint), np.column_stack([e, n]), atol=1e-6)
    # Area agrees with the geodesic area on the ellipsoid (the local tmerc has scale ~1 here).
    geodesic = abs(Geod(ellps="WGS84").geometry_area_perimeter(citi_src)[0])
    assert citi.footprint.area == pytest.approx(geodesic, rel=1e-4)


def test_osm_buildings_geojson_counts_holes_multiparts_and_estimates(geometry):
    path = geodata_file("lower_manhattan_buildings_osm.geojson")
    feats = _features(path)
    fs = read_vector(path, geometry)
    # One of the 8,372 is a degenerate OSM way (three collinear nodes, 0.06 m²): dropped, by id.
    assert fs.reports[0].features_read == 8372
    assert fs.reports[0].dropped_empty == ["w250264350"]
    assert len(fs.buildings) == 8371
    assert fs.attribution == ["© OpenStreetMap contributors (ODbL)"]
    by_id = {b.id: b for b in fs.buildings}
    src_holes = {
        f["properties"]["osm_id"] for f in feats if any(len(p) > 1 for p in f["geometry"]["coordinates"])
    }
    src_multi = {f["properties"]["osm_id"] for f in feats if len(f["geometry"]["coordinates"]) > 1}
    assert len(src_holes) == 82 and len(src_multi) == 3
    for oid in src_holes:
        fp = by_id[oid].footprint
        assert sum(len(p.interiors) for p in shapely.get_parts(fp)) >= 1, oid
    for oid in src_multi:
        assert by_id[oid].footprint.geom_type == "MultiPolygon"
        assert len(by_id[oid].footprint.geoms) == 2
    # levels fallback: w241844933 has no height but 16 levels
    b = by_id["w241844933"]
    assert b.height_estimated and b.height_m == pytest.approx(16 * 3.2)
    # min_height survives as the base of the extrusion
    assert by_id["w109337830"].base_m == pytest.approx(12.0) and by_id[
        "w109337830"
    ].height_m == pytest.approx(19.3)
    # unknown heights are estimated, never flat; known ones are the source metres
    no_height = [
        f["properties"]["osm_id"]
        for f in feats
        if not f["properties"]["height_m"] and f["properties"]["osm_id"] in by_id
    ]
    assert all(by_id[i].height_estimated and by_id[i].height_m > 0 for i in no_height)
    assert fs.reports[0].heights_estimated == len(no_height)
    tallest = max(fs.buildings, key=lambda b: b.height_m)
    assert tallest.height_m == pytest.approx(417.0) and not tallest.height_estimated


def test_parks_roads_and_land_are_classified_by_their_fields(geometry):
    parks = read_vector(geodata_file("midtown_east_parks_nycparks.geojson"), geometry)
    assert len(parks.parks) == 10 and not parks.buildings
    assert {p.name for p in parks.parks} >= {"MacArthur Playground"}
    assert parks.attribution == ["Parks: NYC Parks"]
    osm_parks = read_vector(geodata_file("lower_manhattan_parks_osm.geojson"), geometry)
    assert len(osm_parks.parks) == 4275
    assert {p.kind for p in osm_parks.parks} >= {"park", "garden", "playground", "grass"}
    roads_path = geodata_file("midtown_east_roads_osm.geojson")
    roads = read_vector(roads_path, geometry)
    assert len(roads.roads) == 229
    lanes = {f["properties"]["osm_id"]: f["properties"].get("lanes") for f in _features(roads_path)}
    fdr = [r for r in roads.roads if r.name == "FDR Drive"]
    assert fdr and all(r.kind == "motorway" and r.geometry.geom_type == "LineString" for r in fdr)
    assert all(r.width_m == pytest.approx(int(lanes[r.id]) * 3.3 + 2) for r in fdr)  # width from lanes
    no_lanes = [r for r in roads.roads if not lanes[r.id] and r.kind == "service"]
    assert no_lanes and all(r.width_m == 5.0 for r in no_lanes)  # class default
    land = read_vector(geodata_file("manhattan_land_nybb.geojson"), geometry)
    assert len(land.land) == 1 and 58e6 < land.land[0].area < 60e6  # Manhattan: 59.1 km² of land
    assert land.attribution == ["Borough boundaries: NYC DCP"]


def test_window_keeps_only_intersecting_features(geometry):
    path = geodata_file("midtown_east_buildings_doitt.geojson")
    e, n = geometry.lnglat_to_ground(-73.9690, 40.7580)
    window = box(float(e) - 100, float(n) - 100, float(e) + 100, float(n) + 100)
    fs = read_vector(path, geometry, window=window)
    full = read_vector(path, geometry)
    expected = {b.id for b in full.buildings if b.footprint.intersects(window)}
    assert {b.id for b in fs.buildings} == expected
    assert 5 < len(expected) < len(full.buildings) / 3
    everything = read_vector(path, geometry, skip_placeholders=False).buildings
    assert fs.reports[0].outside_window == sum(1 for b in everything if not b.footprint.intersects(window))


# --- other formats, legacy names, CRS -----------------------------------------------------------------
def test_legacy_uppercase_shapefile_in_state_plane_feet(geometry, tmp_path):
    """The 2017 DOITT shapefile schema (HEIGHTROOF, GROUNDELEV, FEAT_CODE, CNSTRCT_YR) in EPSG:2263."""
    src = geodata_file("fixture_buildings_citicorp_60_doitt.geojson")
    feats = _features(src)
    to_2263 = Transformer.from_crs("EPSG:4326", "EPSG:2263", always_xy=True)
    geoms = [
        shapely.transform(shape(f["geometry"]), lambda xy: np.column_stack(to_2263.transform(*xy.T)))
        for f in feats
    ]
    p = [f["properties"] for f in feats]
    cols = {
        "BIN": [x["bin"] for x in p],
        "NAME": [x["name"] for x in p],
        "HEIGHTROOF": [x["height_roof_ft"] for x in p],
        "GROUNDELEV": [x["ground_elevation_ft"] for x in p],
        "FEAT_CODE": [int(x["feature_code"]) for x in p],
        "CNSTRCT_YR": [x["construction_year"] for x in p],
    }
    shp = tmp_path / "building_footprints_legacy.shp"
    _write(shp, cols, geoms, crs="EPSG:2263", driver="ESRI Shapefile")
    fs = read_vector(shp, geometry)
    assert fs.reports[0].skipped_placeholders == 1
    assert len(fs.buildings) == 59
    citi = next(b for b in fs.buildings if b.name == "Citigroup Center")
    assert citi.id == "1036474"
    assert citi.height_m == pytest.approx(277.67, abs=0.01)
    ref = next(b for b in read_vector(src, geometry).buildings if b.name == "Citigroup Center")
    # reprojected EPSG:2263 → ground agrees with lon/lat → ground to millimetres
    assert citi.footprint.symmetric_difference(ref.footprint).area < 0.01


def test_geopackage_layers_are_classified_by_name(geometry, tmp_path):
    e, n = geometry.lnglat_to_ground(-73.97, 40.757)
    lng, lat = geometry.ground_to_lnglat(
        np.array([float(e), float(e) + 40]), np.array([float(n), float(n) + 40])
    )
    square = box(lng[0], lat[0], lng[1], lat[1])
    line = shapely.LineString([(lng[0], lat[0]), (lng[1], lat[1])])
    gpkg = tmp_path / "area.gpkg"
    _write(gpkg, {"label": ["a"]}, [square], crs="EPSG:4326", driver="GPKG", layer="my_buildings")
    _write(gpkg, {"label": ["b"]}, [square], crs="EPSG:4326", driver="GPKG", layer="green_parks", append=True)
    _write(gpkg, {"label": ["c"]}, [line], crs="EPSG:4326", driver="GPKG", layer="streets", append=True)
    fs = read_vector(gpkg, geometry)
    assert len(fs.buildings) == 1 and len(fs.parks) == 1 and len(fs.roads) == 1
    b = fs.buildings[0]
    assert b.height_estimated and b.height_m == DEFAULT_UNKNOWN_HEIGHT_M
    assert b.footprint.area == pytest.approx(1600, rel=0.01)
    # a window goes to GDAL as a bbox (spatial index) and is then applied exactly
    near = shapely.box(float(e) - 10, float(n) - 10, float(e) + 10, float(n) + 10)
    far = shapely.affinity.translate(near, 5000, 0)
    assert len(read_vector(gpkg, geometry, window=near).buildings) == 1
    assert read_vector(gpkg, geometry, window=far).buildings == []
    assert [len(read_vector(gpkg, geometry, layers=["green_parks"]).parks)] == [1]
    with pytest.raises(GeodataError, match=r"no layer\(s\) \['nope'\]"):
        read_vector(gpkg, geometry, layers=["nope"])


def test_unclassifiable_polygons_ask_for_an_explicit_kind(geometry, tmp_path):
    f = tmp_path / "shapes.geojson"
    _write(f, {"label": ["x"]}, [box(-73.97, 40.75, -73.969, 40.751)], crs="EPSG:4326", driver="GeoJSON")
    with pytest.raises(GeodataError, match=r"prefix the path with the kind.*'parks:"):
        read_vector(f, geometry)
    assert len(read_vector(f, geometry, kind="parks").parks) == 1


def test_invalid_polygons_are_repaired_and_empty_ones_dropped_by_id(geometry, tmp_path, caplog):
    bowtie = Polygon([(-73.970, 40.750), (-73.969, 40.751), (-73.969, 40.750), (-73.970, 40.751)])
    sliver = Polygon([(-73.970, 40.750), (-73.969, 40.750), (-73.968, 40.750)])  # zero area
    f = tmp_path / "bad_buildings.geojson"
    _write(
        f,
        {"bin": ["111", "222"], "height_m": [20.0, 30.0]},
        [bowtie, sliver],
        crs="EPSG:4326",
        driver="GeoJSON",
    )
    with caplog.at_level(logging.WARNING):
        fs = read_vector(f, geometry)
    assert [b.id for b in fs.buildings] == ["111"]
    assert fs.buildings[0].footprint.is_valid
    assert fs.buildings[0].footprint.geom_type == "MultiPolygon"  # the bowtie's two triangles
    assert fs.reports[0].repaired == 1  # the sliver is valid (if tiny) once projected: dropped, not repaired
    assert fs.reports[0].dropped_empty == ["222"]
    assert "dropped 1 building(s) whose geometry is empty or degenerate (< 0.5 m²): 222" in caplog.text


def test_wrong_crs_is_a_clear_error(geometry, tmp_path):
    # State-plane feet written into a GeoJSON (which is lon/lat by definition): the classic mistake.
    f = tmp_path / "feet_buildings.geojson"
    _write(f, {"height_m": [10.0]}, [box(990000, 210000, 990100, 210100)], crs="EPSG:4326", driver="GeoJSON")
    with pytest.raises(GeodataError, match="not longitude/latitude.*declare the file's real CRS"):
        read_vector(f, geometry)
    # Lon/lat that is simply somewhere else (Paris) is far from the map seed.
    g = tmp_path / "paris_buildings.geojson"
    _write(g, {"height_m": [10.0]}, [box(2.35, 48.85, 2.351, 48.851)], crs="EPSG:4326", driver="GeoJSON")
    with pytest.raises(GeodataError, match="km from the map seed"):
        read_vector(g, geometry)


def test_missing_and_unsupported_files(geometry, tmp_path):
    with pytest.raises(GeodataError, match="does not exist"):
        read_vector(tmp_path / "nope.geojson", geometry)
    csv = tmp_path / "buildings.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(GeodataError, match=r"unsupported vector format '\.csv'"):
        read_vector(csv, geometry)
    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(GeodataError, match="cannot open it"):
        read_vector(broken, geometry)
