"""Map geometry: exact round trips, the original's numbers, and how far its flat-earth formula drifts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyproj import Geod

from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.geo.geometry import MapGeometry

# All of NYC (the five boroughs' bbox, slightly enlarged).
NYC_LNG = (-74.27, -73.69)
NYC_LAT = (40.49, 40.92)
GEOD = Geod(ellps="WGS84")


def _random_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(*NYC_LNG, n), rng.uniform(*NYC_LAT, n), rng.uniform(0, 550, n))


def test_lnglat_pixel_round_trip_below_1cm_anywhere_in_nyc(geometry: MapGeometry) -> None:
    lng, lat, h = _random_points(20_000)
    px, py = geometry.lnglat_to_pixel(lng, lat, h)
    lng2, lat2 = geometry.pixel_to_lnglat(px, py, h)
    _, _, dist = GEOD.inv(lng, lat, lng2, lat2)
    assert np.max(dist) < 0.01, f"max round-trip error {np.max(dist)} m"


def test_pixel_lnglat_round_trip_below_1cm(geometry: MapGeometry) -> None:
    rng = np.random.default_rng(1)
    px, py = rng.uniform(-200 * 512, 160 * 512, 5000), rng.uniform(-90 * 512, 120 * 512, 5000)
    h = rng.uniform(0, 400, 5000)
    lng, lat = geometry.pixel_to_lnglat(px, py, h)
    px2, py2 = geometry.lnglat_to_pixel(lng, lat, h)
    err_m = np.hypot(px2 - px, py2 - py) * geometry.mpp
    assert err_m.max() < 0.01


def test_production_numbers_match_the_original(geometry: MapGeometry) -> None:
    assert geometry.mpp == pytest.approx(300 / 1024)
    info = geometry.quadrant_info(0, 0)
    assert info["size_m"]["camera_right"] == pytest.approx(150.0)
    assert info["size_m"]["ground_depth"] == pytest.approx(212.13, abs=0.01)
    # The seed is the bottom-right corner (anchor) of quadrant (0, 0).
    br = info["corners"]["bottom_right"]
    assert br["lat"] == pytest.approx(40.7484, abs=1e-9) and br["lng"] == pytest.approx(-73.9857, abs=1e-9)
    # One quadrant step in x moves the anchor ≈ (E +144.9 m, N +38.8 m); in y ≈ (E +54.9 m, N −204.9 m).
    e0, n0 = geometry.pixel_to_ground(512, 512)
    e1, n1 = geometry.pixel_to_ground(1024, 512)
    e2, n2 = geometry.pixel_to_ground(512, 1024)
    assert (e1 - e0, n1 - n0) == pytest.approx((144.89, 38.82), abs=0.01)
    assert (e2 - e0, n2 - n0) == pytest.approx((54.90, -204.90), abs=0.01)


def test_height_lifts_points_up_the_screen(geometry: MapGeometry) -> None:
    px0, py0 = geometry.lnglat_to_pixel(-73.97, 40.76, 0.0)
    px1, py1 = geometry.lnglat_to_pixel(-73.97, 40.76, 100.0)
    assert px1 == pytest.approx(px0)
    assert py0 - py1 == pytest.approx(100 * math.cos(math.radians(45)) / geometry.mpp)
    assert geometry.height_px_per_m == pytest.approx(2.4135, abs=1e-3)


def test_locate_and_quadrant_agree(geometry: MapGeometry) -> None:
    loc = geometry.locate(40.7583, -73.9702)  # Citigroup Center
    qx, qy = loc["quadrant"]["x"], loc["quadrant"]["y"]
    assert 0 <= loc["pixel"]["x"] < 512 and 0 <= loc["pixel"]["y"] < 512
    poly = geometry.quadrant_ground_polygon(qx, qy)
    e, n = geometry.lnglat_to_ground(-73.9702, 40.7583)
    from shapely.geometry import Point

    assert poly.contains(Point(float(e), float(n)))


def test_affine_matches_pointwise_mapping(geometry: MapGeometry) -> None:
    a, b, d, e, xo, yo = geometry.ground_to_pixel_affine
    rng = np.random.default_rng(2)
    E, N = rng.uniform(-20000, 20000, 100), rng.uniform(-20000, 20000, 100)
    px, py = geometry.ground_to_pixel(E, N)
    assert np.allclose(a * E + b * N + xo, px) and np.allclose(d * E + e * N + yo, py)
    ia, ib, id_, ie, ixo, iyo = geometry.pixel_to_ground_affine
    assert np.allclose(ia * px + ib * py + ixo, E) and np.allclose(id_ * px + ie * py + iyo, N)


def test_flat_earth_drift_of_the_original_formula(geometry: MapGeometry) -> None:
    """Document how far isometric-nyc's 111,111 m/degree formula drifts from the exact projection.

    Its metres-per-degree are off by ~0.1–0.3 %, so the error grows with the distance from the seed: decimetres
    near the seed, tens of metres at the city's edges.
    """
    lng, lat, _ = _random_points(5000, seed=3)
    px, py = geometry.lnglat_to_pixel(lng, lat)
    fx, fy = geometry.flat_earth_pixel(lat, lng)
    drift_m = np.hypot(fx - px, fy - py) * geometry.mpp
    near = geometry.flat_earth_pixel(40.7490, -73.9850)
    exact = geometry.lnglat_to_pixel(-73.9850, 40.7490)
    assert math.hypot(near[0] - exact[0], near[1] - exact[1]) * geometry.mpp < 0.5
    assert drift_m.max() > 20.0, "the flat-earth formula should drift by tens of metres at the city's edges"
    assert drift_m.max() < 300.0
    dist_m = np.hypot(*geometry.lnglat_to_ground(lng, lat))
    rel = drift_m / dist_m
    assert 0.0005 < np.median(rel) < 0.005  # a scale error: proportional to the distance from the seed


def test_other_cameras_round_trip() -> None:
    cfg = MapConfig(azimuth_deg=30, elevation_deg=-60, view_height_m=150)
    g = MapGeometry(cfg)
    lng, lat, h = _random_points(1000, seed=4)
    lng2, lat2 = g.pixel_to_lnglat(*g.lnglat_to_pixel(lng, lat, h), h)
    _, _, dist = GEOD.inv(lng, lat, lng2, lat2)
    assert dist.max() < 0.01
