"""The OSM reader: the real lower-Manhattan PBF extract, and a small hand-written OSM XML file."""

from __future__ import annotations

import json
from xml.sax.saxutils import quoteattr

import numpy as np
import pytest
import shapely

from isonyc_dagster.geodata import GeodataError
from isonyc_dagster.geodata.load import load_city
from isonyc_dagster.geodata.model import DEFAULT_UNKNOWN_HEIGHT_M
from isonyc_dagster.geodata.osm import read_osm
from tests.conftest import geodata_file


@pytest.fixture(scope="module")
def pbf_city(geometry):
    return read_osm(geodata_file("lower_manhattan.osm.pbf"), geometry)


def test_pbf_buildings_parts_and_heights(pbf_city):
    by_id = {b.id: b for b in pbf_city.buildings}
    assert len(pbf_city.buildings) > 12000
    # One WTC is mapped as an outline (w713565776) plus building:part w241029253 (417 m, 94 levels):
    # the part carries the volume, the outline that would swallow it is replaced.
    assert (
        by_id["w241029253"].height_m == pytest.approx(417.0)
        and by_id["w241029253"].name == "One World Trade Centre"
    )
    assert "w713565776" not in by_id
    assert by_id["w277890516"].height_m == pytest.approx(228.0)  # 7 WTC, a plain outline
    # building:part volumes that start above the ground keep their base (min_height)
    lifted = [b for b in pbf_city.buildings if b.base_m > 0]
    assert len(lifted) > 500
    assert all(b.base_m < b.height_m for b in lifted)
    # multipolygon relations arrive with their holes
    rel = [b for b in pbf_city.buildings if b.id.startswith("r")]
    assert len(rel) > 90
    assert sum(1 for b in rel if any(len(p.interiors) for p in shapely.get_parts(b.footprint))) > 80
    # underground stations (height 0, location=underground) are not buildings on the map
    assert "w812927889" not in by_id
    assert all(b.height_m > 0 for b in pbf_city.buildings)
    assert all(b.footprint.is_valid and b.footprint.area >= 0.5 for b in pbf_city.buildings)


def test_pbf_agrees_with_the_geojson_export_of_the_same_extract(pbf_city, geometry):
    """lower_manhattan_buildings_osm.geojson was exported from this PBF: same ids, same heights."""
    feats = json.loads(geodata_file("lower_manhattan_buildings_osm.geojson").read_text())["features"]
    by_id = {b.id: b for b in pbf_city.buildings}
    found = [f for f in feats if f["properties"]["osm_id"] in by_id]
    assert len(found) > 0.95 * len(feats)  # the rest are outlines replaced by their parts, or degenerate
    for f in found:
        h = f["properties"]["height_m"]
        if h:
            assert by_id[f["properties"]["osm_id"]].height_m == pytest.approx(h, abs=1e-3)  # mm rounding


def test_pbf_parks_water_and_roads(pbf_city):
    kinds = {p.kind for p in pbf_city.parks}
    assert {"park", "garden", "playground", "grass"} <= kinds
    battery = [p for p in pbf_city.parks if p.id == "w5029111"]  # Battery Park
    assert battery and battery[0].name == "Battery Park" and battery[0].geometry.area > 50_000  # ~25 acres
    assert pbf_city.water and all(w.area > 0 for w in pbf_city.water)
    roads = {r.kind for r in pbf_city.roads}
    assert {"motorway", "primary", "residential", "footway"} <= roads
    assert all(r.geometry.geom_type in ("LineString", "MultiPolygon", "Polygon") for r in pbf_city.roads)
    broadway = [r for r in pbf_city.roads if r.name == "Broadway"]
    assert broadway and sum(r.geometry.length for r in broadway) > 2000
    assert pbf_city.attribution == ["© OpenStreetMap contributors (ODbL)"]


def test_pbf_window_filter_through_load_city(pbf_city, geometry):
    """load_city picks the OSM reader by extension; the window keeps exactly the intersecting buildings,
    and outline/part replacement does not depend on where the window cuts."""
    e, n = geometry.lnglat_to_ground(-74.0134, 40.7127)  # One WTC
    window = shapely.box(float(e) - 150, float(n) - 150, float(e) + 150, float(n) + 150)
    city = load_city(geometry, [geodata_file("lower_manhattan.osm.pbf")], window=window)
    expected = {b.id for b in pbf_city.buildings if b.footprint.intersects(window)}
    assert {b.id for b in city.buildings} == expected
    assert "w241029253" in expected and len(expected) < 200
    assert city.attribution == "© OpenStreetMap contributors (ODbL). Borough boundaries: NYC DCP."


def _osm_xml(geometry, ways: list[tuple[str, list[tuple[float, float]], dict]], relations: list) -> str:
    """An OSM XML document; node coordinates are given in ground metres and converted to lon/lat."""
    nodes, way_xml, nid = [], [], 0
    for wid, coords, tags in ways:
        refs = []
        for k, (e, n) in enumerate(coords):
            if k == len(coords) - 1 and coords[0] == coords[-1] and len(coords) > 2:
                refs.append(refs[0])
                continue
            nid += 1
            lng, lat = geometry.ground_to_lnglat(e, n)
            nodes.append(f'<node id="{nid}" version="1" lat="{float(lat):.9f}" lon="{float(lng):.9f}"/>')
            refs.append(nid)
        nds = "".join(f'<nd ref="{r}"/>' for r in refs)
        tg = "".join(f"<tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in tags.items())
        way_xml.append(f'<way id="{wid}" version="1">{nds}{tg}</way>')
    rel_xml = []
    for rid, members, tags in relations:
        ms = "".join(f'<member type="way" ref="{w}" role="{role}"/>' for w, role in members)
        tg = "".join(f"<tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in tags.items())
        rel_xml.append(f'<relation id="{rid}" version="1">{ms}{tg}</relation>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator="test">'
        + "".join(nodes)
        + "".join(way_xml)
        + "".join(rel_xml)
        + "</osm>"
    )


def _sq(x: float, y: float, s: float) -> list[tuple[float, float]]:
    return [(x, y), (x + s, y), (x + s, y + s), (x, y + s), (x, y)]


def test_osm_xml_tags_units_parts_and_relations(geometry, tmp_path):
    ways = [
        ("1", _sq(0, 0, 20), {"building": "yes", "height": "100 ft"}),
        ("2", _sq(40, 0, 20), {"building": "apartments", "building:levels": "6"}),
        ("3", _sq(80, 0, 20), {"building": "yes", "height": "12'6\""}),
        ("4", _sq(120, 0, 20), {"building": "yes"}),
        ("5", _sq(160, 0, 20), {"building": "yes", "location": "underground"}),
        ("6", _sq(200, 0, 20), {"building:part": "yes", "min_height": "10 m", "height": "30"}),
        # a multipolygon relation: outer 60×60 with a 20×20 courtyard
        ("10", _sq(0, 100, 60), {}),
        ("11", _sq(20, 120, 20), {}),
        # an outline fully covered by two stacked parts → replaced by them
        ("20", _sq(300, 0, 40), {"building": "yes", "height": "80"}),
        ("21", _sq(300, 0, 40), {"building:part": "yes", "height": "20"}),
        ("22", _sq(310, 10, 20), {"building:part": "yes", "height": "80", "min_height": "20"}),
        # roads and green
        ("30", [(0, -30), (300, -30)], {"highway": "residential", "name": "Test Street", "lanes": "2"}),
        ("31", [(0, -40), (300, -40)], {"highway": "footway", "footway": "sidewalk"}),
        ("32", [(0, -50), (300, -50)], {"highway": "primary", "tunnel": "yes"}),
        ("33", [(0, -60), (300, -60)], {"highway": "proposed"}),
        ("40", _sq(400, 100, 50), {"leisure": "park", "name": "Test Park"}),
        ("41", _sq(400, 200, 30), {"natural": "water"}),
    ]
    relations = [
        (
            "100",
            [("10", "outer"), ("11", "inner")],
            {"type": "multipolygon", "building": "yes", "height": "25"},
        )
    ]
    f = tmp_path / "tiny.osm"
    f.write_text(_osm_xml(geometry, ways, relations), encoding="utf-8")
    fs = read_osm(f, geometry)
    by_id = {b.id: b for b in fs.buildings}
    assert set(by_id) == {"w1", "w2", "w3", "w4", "w6", "r100", "w21", "w22"}
    assert by_id["w1"].height_m == pytest.approx(30.48) and not by_id["w1"].height_estimated
    assert by_id["w2"].height_m == pytest.approx(6 * 3.2) and by_id["w2"].height_estimated
    assert by_id["w3"].height_m == pytest.approx(3.81)
    assert by_id["w4"].height_m == DEFAULT_UNKNOWN_HEIGHT_M and by_id["w4"].height_estimated
    assert (by_id["w6"].base_m, by_id["w6"].height_m) == (10.0, 30.0)
    assert (by_id["w22"].base_m, by_id["w22"].height_m) == (20.0, 80.0)
    court = by_id["r100"].footprint
    assert court.geom_type == "Polygon" and len(court.interiors) == 1
    assert court.area == pytest.approx(60 * 60 - 20 * 20, rel=1e-3)
    assert by_id["w1"].footprint.area == pytest.approx(400, rel=1e-3)  # metres in, metres out
    assert [r.id for r in fs.roads] == ["w30"]
    assert fs.roads[0].width_m == pytest.approx(2 * 3.3 + 2) and fs.roads[0].name == "Test Street"
    assert [p.name for p in fs.parks] == ["Test Park"]
    assert len(fs.water) == 1 and fs.water[0].area == pytest.approx(900, rel=1e-3)
    assert any("replaced by their building:part" in w for w in fs.reports[0].warnings)
    assert np.isclose(
        sum(b.footprint.area for b in fs.buildings if b.id in ("w21", "w22")), 1600 + 400, rtol=1e-3
    )


def test_osm_errors(geometry, tmp_path):
    with pytest.raises(GeodataError, match="does not exist"):
        read_osm(tmp_path / "missing.osm.pbf", geometry)
    bad = tmp_path / "corrupt.osm.pbf"
    bad.write_bytes(b"\x00\x00\x00\x0dnot a pbf at all")
    with pytest.raises(GeodataError, match="osmium cannot read it"):
        read_osm(bad, geometry)
