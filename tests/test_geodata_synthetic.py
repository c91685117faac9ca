"""The procedural offline city: deterministic, window-independent, Manhattan-like, only on land."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from isonyc_dagster.geodata import GeodataError
from isonyc_dagster.geodata.land import land_polygon
from isonyc_dagster.geodata.synthetic import (
    AVENUE_SPACING_M,
    GRID_ANGLE_DEG,
    STREET_SPACING_M,
    synthetic_city,
)


def _window(geometry, lng: float, lat: float, half_m: float) -> shapely.Polygon:
    e, n = geometry.lnglat_to_ground(lng, lat)
    return shapely.box(float(e) - half_m, float(n) - half_m, float(e) + half_m, float(n) + half_m)


def _key(b):
    return b.id, b.height_m, b.base_m, shapely.to_wkb(b.footprint)


def test_deterministic_and_independent_of_the_window(geometry):
    a = _window(geometry, -73.9850, 40.7500, 500)
    b = shapely.affinity.translate(a, 420, -310)
    city_a, again = synthetic_city(geometry, a), synthetic_city(geometry, a)
    assert [_key(x) for x in city_a.buildings] == [_key(x) for x in again.buildings]
    city_b = synthetic_city(geometry, b)
    overlap = a.intersection(b)
    in_a = {_key(x) for x in city_a.buildings if x.footprint.intersects(overlap)}
    in_b = {_key(x) for x in city_b.buildings if x.footprint.intersects(overlap)}
    assert len(in_a) > 100
    assert in_a == in_b  # the same buildings, to the byte, whichever window generated them
    other_seed = synthetic_city(geometry, a, seed=7)
    assert {_key(x) for x in other_seed.buildings} != {_key(x) for x in city_a.buildings}


def test_manhattan_grid_geometry(geometry):
    city = synthetic_city(geometry, _window(geometry, -73.9850, 40.7500, 700))
    avenues = [r for r in city.roads if r.kind == "primary"]
    streets = [r for r in city.roads if r.kind == "residential"]
    assert avenues and streets
    for r in avenues[:20]:
        (x0, y0), (x1, y1) = r.geometry.coords[0], r.geometry.coords[-1]
        bearing = math.degrees(math.atan2(x1 - x0, y1 - y0)) % 180  # clockwise from grid north (ground N)
        assert bearing == pytest.approx(GRID_ANGLE_DEG, abs=1e-6)
    # spacing: project avenue midpoints on the street direction, streets on the avenue direction
    t = math.radians(GRID_ANGLE_DEG)
    across = np.array([math.cos(t), -math.sin(t)])
    along = np.array([math.sin(t), math.cos(t)])
    av_pos = np.unique(np.round([np.dot(r.geometry.centroid.coords[0], across) for r in avenues], 3))
    st_pos = np.unique(np.round([np.dot(r.geometry.centroid.coords[0], along) for r in streets], 3))
    assert np.allclose(np.diff(av_pos), AVENUE_SPACING_M, atol=0.01)
    assert np.allclose(np.diff(st_pos), STREET_SPACING_M, atol=0.01)
    # no building stands in a street: footprints keep clear of every roadway
    roads = shapely.union_all([r.geometry.buffer(r.width_m / 2) for r in city.roads])
    assert all(b.footprint.intersection(roads).area < 1e-6 for b in city.buildings)


def test_plausible_height_mix_and_parks(geometry):
    city = synthetic_city(geometry, _window(geometry, -73.9800, 40.7550, 1600))  # ~10 km²
    h = np.array([b.height_m for b in city.buildings])
    storeys = h / 3.2
    assert len(h) > 5000
    assert ((storeys >= 4) & (storeys < 9)).mean() > 0.5  # many 4–8 storey walk-ups
    mid = ((h >= 30) & (h < 100)).mean()
    assert 0.05 < mid < 0.4  # some mid-rise
    towers = (h >= 100).sum()
    assert 1 <= towers < 0.01 * len(h)  # a few towers
    assert h.min() >= 9.6 - 1e-9 and h.max() < 300  # 3 storeys at least
    assert all(not b.height_estimated and b.source == "synthetic" for b in city.buildings)
    assert sum(1 for p in city.parks if p.kind == "park") >= 3  # whole-block parks
    assert any(p.kind == "playground" for p in city.parks)
    assert city.synthetic and city.attribution == "synthetic city on NYC DCP borough boundaries"
    assert city.reports[0]["buildings"] == len(city.buildings)


def test_stays_on_land_across_the_east_river(geometry):
    window = _window(geometry, -73.9620, 40.7530, 800)  # Midtown East, the river, Roosevelt Island, Queens
    city = synthetic_city(geometry, window)
    land = land_polygon(geometry)
    water = window.difference(land)
    assert water.area > 0.2 * window.area
    assert len(city.buildings) > 500
    wet = [b.id for b in city.buildings if b.footprint.intersection(water).area > 0.01]
    assert wet == []
    assert all(p.geometry.intersection(water).area < 0.01 for p in city.parks)
    assert all(r.geometry.intersection(water).length < 0.01 for r in city.roads)
    # buildings on both shores: Manhattan and Queens
    xs = np.array([b.footprint.centroid.x for b in city.buildings])
    e_river, _ = geometry.lnglat_to_ground(-73.9620, 40.7530)
    assert (xs < float(e_river) - 200).any() and (xs > float(e_river) + 300).any()


def test_no_land_means_everything_is_land(geometry):
    window = _window(geometry, -73.9620, 40.7530, 300)
    city = synthetic_city(geometry, window, land=None)
    assert city.land is None and city.attribution == "synthetic city"
    assert len(city.buildings) > len(synthetic_city(geometry, window).buildings)


def test_bad_windows(geometry):
    with pytest.raises(GeodataError, match="non-empty window"):
        synthetic_city(geometry, shapely.Polygon())
    with pytest.raises(GeodataError, match="too large for the synthetic city"):
        synthetic_city(geometry, shapely.box(-10_000, -10_000, 10_000, 10_000))


def test_no_sliver_buildings_on_the_shoreline(geometry):
    """At the Battery (shoreline, piers), buildings whose lot is mostly in the water are dropped, not cut to slivers."""
    from isonyc_dagster.geo.bounds import preset_polygon, quadrants_for_bounds
    from isonyc_dagster.project import ground_window

    window = ground_window(geometry, quadrants_for_bounds(geometry, preset_polygon("demo")).bbox)
    city = synthetic_city(geometry, window)
    assert len(city.buildings) > 300

    def short_side(g) -> float:
        xy = np.asarray(shapely.minimum_rotated_rectangle(g).exterior.coords)
        return float(np.hypot(*np.diff(xy, axis=0).T)[:4].min())

    assert min(short_side(b.footprint) for b in city.buildings) >= 5.0
