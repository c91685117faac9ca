"""Bounds → the exact set of quadrants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely import affinity
from shapely.geometry import Polygon, mapping

from isonyc_dagster.geo.bounds import BoundsError, load_bounds, preset_polygon, quadrants_for_bounds
from isonyc_dagster.geo.geometry import MapGeometry
from tests.conftest import geodata_file


def test_demo_preset_is_6x6(geometry: MapGeometry) -> None:
    qs = quadrants_for_bounds(geometry, preset_polygon("demo"))
    assert len(qs) == 36 and qs.bbox == (-27, 18, -22, 23)


def test_quadrant_set_is_exact_against_brute_force(geometry: MapGeometry) -> None:
    poly = Polygon([(-73.975, 40.755), (-73.962, 40.757), (-73.965, 40.765), (-73.972, 40.761)])
    qs = quadrants_for_bounds(geometry, poly)
    e, n = geometry.lnglat_to_ground(*np.array(shapely.segmentize(poly, 1e-5).exterior.coords).T)
    ground = Polygon(zip(e, n, strict=True))
    x0, y0, x1, y1 = qs.bbox
    for x in range(x0 - 2, x1 + 3):
        for y in range(y0 - 2, y1 + 3):
            share = geometry.quadrant_ground_polygon(x, y).intersection(ground).area > 0.01
            assert ((x, y) in qs) == share, (x, y)


def test_touching_edge_does_not_count(geometry: MapGeometry) -> None:
    # The exact footprint of quadrant (5, 5) selects only (5, 5), not its 8 neighbours.
    ground = geometry.quadrant_ground_polygon(5, 5)
    lng, lat = geometry.ground_to_lnglat(*np.array(ground.exterior.coords).T)
    qs = quadrants_for_bounds(geometry, Polygon(zip(lng, lat, strict=True)))
    assert qs.keys == ((5, 5),)


def test_presets_cover_manhattan_and_nyc(geometry: MapGeometry) -> None:
    man = quadrants_for_bounds(geometry, preset_polygon("manhattan"))
    nyc = quadrants_for_bounds(geometry, preset_polygon("nyc"))
    assert 1500 < len(man) < 3000
    assert 20000 < len(nyc) < 50000
    assert set(man.keys) <= set(nyc.keys)
    assert geometry.locate(40.7484, -73.9857)["quadrant"]["x"] in {k[0] for k in man.keys}


def test_geojson_file_and_errors(tmp_path: Path, geometry: MapGeometry) -> None:
    land = load_bounds(str(geodata_file("midtown_east_land_nybb.geojson")))
    assert len(quadrants_for_bounds(geometry, land)) > 4
    p = tmp_path / "b.geojson"
    p.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}}))
    with pytest.raises(BoundsError, match="expected Polygon or MultiPolygon"):
        load_bounds(str(p))
    with pytest.raises(BoundsError, match="does not exist"):
        load_bounds(str(tmp_path / "missing.geojson"))
    p.write_text("{oops")
    with pytest.raises(BoundsError, match="not valid GeoJSON"):
        load_bounds(str(p))
    feet = affinity.scale(Polygon([(0, 0), (1000, 0), (1000, 1000)]), 1000, 1000)
    p.write_text(json.dumps(mapping(feet)))
    with pytest.raises(BoundsError, match="not lng/lat"):
        load_bounds(str(p))
    with pytest.raises(BoundsError, match="unknown bounds preset"):
        preset_polygon("brooklyn-ish")
