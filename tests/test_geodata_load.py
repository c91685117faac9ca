"""load_city: reader dispatch, kinds, land/water, attribution, the synthetic fallback and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely

from isonyc_dagster.geodata.load import GeodataError, load_city, parse_source
from isonyc_dagster.geodata.socrata import SocrataClient
from tests.conftest import geodata_file
from tests.socrata_server import SocrataTestServer


@pytest.fixture
def midtown_east(geometry):
    """A ground window over the Midtown East fixtures that reaches into the East River."""
    e, n = geometry.lnglat_to_ground(np.array([-73.9736, -73.9590]), np.array([40.7543, 40.7615]))
    return shapely.box(e.min(), n.min(), e.max(), n.max())


def test_parse_source(tmp_path):
    assert parse_source("parks:a/b.geojson") == ("parks", Path("a/b.geojson"))
    assert parse_source("x.gpkg") == ("auto", Path("x.gpkg"))
    assert parse_source("socrata") == ("socrata", "socrata")
    assert parse_source("C:/data/x.shp")[0] == "auto"  # a drive letter is not a kind
    # what a config loader makes of relative entries: base directory joined in front
    assert parse_source(f"{tmp_path}/parks:b.geojson") == ("parks", tmp_path / "b.geojson")
    assert parse_source(f"{tmp_path}/socrata") == ("socrata", "socrata")
    (tmp_path / "socrata").mkdir()
    assert parse_source(f"{tmp_path}/socrata") == ("auto", tmp_path / "socrata")


def test_real_files_assemble_one_city(geometry, midtown_east):
    sources = [
        geodata_file("midtown_east_buildings_doitt.geojson"),
        geodata_file("midtown_east_parks_nycparks.geojson"),
        str(geodata_file("midtown_east_roads_osm.geojson")),
    ]
    city = load_city(geometry, sources, window=midtown_east)
    assert not city.synthetic
    assert len(city.buildings) == 642  # 643 footprints, one placeholder skipped
    assert all(b.footprint.intersects(midtown_east) for b in city.buildings)
    assert len(city.parks) >= 2 and len(city.roads) > 50
    citi = next(b for b in city.buildings if b.name == "Citigroup Center")
    assert citi.height_m == pytest.approx(277.67, abs=0.01)
    assert city.max_height_m == pytest.approx(citi.height_m)
    # land is the window minus the East River, water the rest
    water = city.water_in(midtown_east)
    assert 0.02 * midtown_east.area < water.area < 0.3 * midtown_east.area
    assert city.land.area + water.area == pytest.approx(midtown_east.area, rel=1e-6)
    assert all(b.footprint.intersection(water).area < 5.0 for b in city.buildings)  # no building in the river
    assert city.attribution == (
        "Building footprints: NYC OTI (NYC Open Data). Parks: NYC Parks. © OpenStreetMap contributors (ODbL). "
        "Borough boundaries: NYC DCP."
    )
    assert city.sources[-1] == "land:nyc" and len(city.sources) == 4
    reports = {r["source"].rsplit("/", 1)[-1]: r for r in city.reports}
    assert reports["midtown_east_buildings_doitt.geojson"]["skipped_placeholders"] == 1
    # the spatial index answers per-quadrant queries: the quadrant showing Citicorp's base finds it
    where = geometry.locate(40.75842, -73.97034)  # 601 Lexington Ave (Citigroup Center)
    q = geometry.quadrant_ground_polygon(where["quadrant"]["x"], where["quadrant"]["y"])
    assert citi in city.buildings_in(q)


def test_explicit_kind_prefix_and_land_file(geometry, tmp_path):
    # fixture_land_nybb is a land polygon; read as parks by prefix it becomes a park
    land_file = geodata_file("fixture_land_nybb.geojson")
    city = load_city(geometry, [f"parks:{land_file}"], land=land_file)
    assert len(city.parks) == 1 and not city.buildings
    assert city.land is not None and city.land.equals_exact(city.parks[0].geometry, 1e-6)
    assert city.attribution.endswith("Land: fixture_land_nybb.geojson.")
    no_land = load_city(geometry, [geodata_file("fixture_buildings_citicorp_60_doitt.geojson")], land=None)
    assert no_land.land is None and len(no_land.buildings) == 59


def test_socrata_source_through_load_city(geometry, midtown_east, tmp_path):
    server = SocrataTestServer(geodata_file("midtown_east_buildings_socrata_raw.geojson"))
    with server, SocrataClient(server.url, page_size=300) as client:
        city = load_city(
            geometry, [], window=midtown_east, socrata=True, cache_dir=tmp_path, socrata_client=client
        )
        assert client.requests == 4  # 300 + 300 + 43 + the empty page
        again = load_city(
            geometry, ["socrata"], window=midtown_east, cache_dir=tmp_path, socrata_client=client
        )
        assert client.requests == 4  # from the cache
    assert not city.synthetic and len(city.buildings) == 642 == len(again.buildings)
    assert city.attribution.startswith("Building footprints: NYC OTI (NYC Open Data).")


def test_no_sources_means_the_synthetic_city(geometry, midtown_east):
    city = load_city(geometry, [], window=midtown_east)
    assert city.synthetic and len(city.buildings) > 300
    assert city.attribution == "synthetic city on NYC DCP borough boundaries"
    with pytest.raises(GeodataError, match="pass window="):
        load_city(geometry, [])


def test_clear_errors(geometry, tmp_path, midtown_east):
    with pytest.raises(GeodataError, match="does not exist"):
        load_city(geometry, [tmp_path / "missing.geojson"], window=midtown_east)
    kml = tmp_path / "buildings.kml"
    kml.write_text("<kml/>")
    with pytest.raises(GeodataError, match=r"unsupported geodata format '\.kml'.*\.geojson.*\.osm\.pbf"):
        load_city(geometry, [kml], window=midtown_east)
    with pytest.raises(GeodataError, match="drop the 'parks:' prefix"):
        load_city(geometry, [f"parks:{geodata_file('lower_manhattan.osm.pbf')}"])
    with pytest.raises(GeodataError, match="looks like lon/lat degrees"):
        load_city(geometry, [], window=shapely.box(-73.98, 40.75, -73.97, 40.76))
    with pytest.raises(GeodataError, match="needs a window"):
        load_city(geometry, ["socrata"])
