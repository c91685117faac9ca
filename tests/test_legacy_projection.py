"""``projection = "legacy-flat"``: quadrant keys ↔ lat/lng exactly as isometric-nyc computes them.

The reference below is the original's formula written out independently from the anchor spec (§1.4, §1.5:
``shared.calculate_offset`` / ``calculate_quadrant_lat_lng`` / ``latlng_to_quadrant_coords``), on its own
``generation_config.json`` dict, sharing no code with ``geo.legacy``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from isonyc_dagster.geo.bounds import bounds_to_pixels
from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.geo.config import ConfigError, MapConfig, load_map_config
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geo.surfaces import Surface

# The production generation_config.json (generations/tiny-nyc, copied from generations/nyc).
ORIGINAL_CONFIG = {
    "name": "test_generation",
    "seed": {"lat": 40.7484, "lng": -73.9857},
    "n_tiles_x": 2,
    "n_tiles_y": 2,
    "camera_azimuth_degrees": -15,
    "camera_elevation_degrees": -45,
    "width_px": 1024,
    "height_px": 1024,
    "view_height_meters": 300,
    "tile_step": 0.5,
}


def original_offset(cfg: dict, shift_x_px: float, shift_y_px: float) -> tuple[float, float]:
    """``shared.calculate_offset`` from the seed: (lat, lng) after a screen shift (y up)."""
    mpp = cfg["view_height_meters"] / cfg["height_px"]
    right_m, up_m = shift_x_px * mpp, shift_y_px * mpp
    rot_x = right_m
    rot_y = -up_m / math.sin(math.radians(cfg["camera_elevation_degrees"]))
    az = math.radians(cfg["camera_azimuth_degrees"])
    east = rot_x * math.cos(az) + rot_y * math.sin(az)
    north = -rot_x * math.sin(az) + rot_y * math.cos(az)
    lat0, lng0 = cfg["seed"]["lat"], cfg["seed"]["lng"]
    return lat0 + north / 111111.0, lng0 + east / (111111.0 * math.cos(math.radians(lat0)))


def original_anchor(cfg: dict, qx: int, qy: int) -> tuple[float, float]:
    """``shared.calculate_quadrant_lat_lng``: the anchor (bottom-right corner) of quadrant (qx, qy)."""
    step = cfg["tile_step"]
    return original_offset(cfg, qx * cfg["width_px"] * step, -qy * cfg["height_px"] * step)


def original_quadrant_coords(cfg: dict, lat: float, lng: float) -> tuple[float, float]:
    """``shared.latlng_to_quadrant_coords``: fractional quadrant coords in the anchor convention."""
    mpp = cfg["view_height_meters"] / cfg["height_px"]
    lat0, lng0 = cfg["seed"]["lat"], cfg["seed"]["lng"]
    dn = (lat - lat0) * 111111.0
    de = (lng - lng0) * 111111.0 * math.cos(math.radians(lat0))
    az = math.radians(cfg["camera_azimuth_degrees"])
    rot_x = de * math.cos(az) - dn * math.sin(az)
    rot_y = de * math.sin(az) + dn * math.cos(az)
    up_m = -rot_y * math.sin(math.radians(cfg["camera_elevation_degrees"]))
    step = cfg["tile_step"]
    return (rot_x / mpp) / (cfg["width_px"] * step), -(up_m / mpp) / (cfg["height_px"] * step)


#: Quadrant keys across the original's grid (x -87…154, y -84…110), by area.
QUADRANTS = {
    "Midtown (seed)": (0, 0),
    "Midtown east": (1, -1),
    "Battery": (-26, 19),
    "Greenwich Village": (-10, 5),
    "Upper East Side": (15, -12),
    "Harlem": (33, -28),
    "Inwood": (57, -54),
    "Riverdale": (69, -70),
    "Bronx Zoo": (78, -41),
    "Pelham Bay": (117, -42),
    "Co-op City": (95, -60),
    "Astoria": (36, -2),
    "Flushing": (86, 11),
    "Eastern Queens": (130, 40),
    "JFK": (91, 75),
    "Far Rockaway": (97, 96),
    "Coney Island": (-26, 89),
    "St George": (-68, 43),
    "Great Kills": (-127, 81),
    "Tottenville": (-187, 94),
    "Staten Island west": (-150, 60),
    "grid top-left": (-87, -84),
    "grid top-right": (154, -84),
    "grid bottom-left": (-87, 110),
    "grid bottom-right": (154, 110),
}

LEGACY = MapGeometry(MapConfig(projection="legacy-flat"))
EXACT = MapGeometry(MapConfig())


def test_config_field() -> None:
    assert MapConfig().projection == "exact"
    with pytest.raises(ValueError, match="projection"):
        MapConfig(projection="flat")  # type: ignore[arg-type]


def test_config_file_projection(tmp_path) -> None:
    good = tmp_path / "m.toml"
    good.write_text('[map]\nprojection = "legacy-flat"\n')
    assert load_map_config(good).projection == "legacy-flat"
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"projection": "mercator"}))
    with pytest.raises(ConfigError, match=r"field 'projection'.*exact.*legacy-flat"):
        load_map_config(bad)


def test_anchors_match_the_original_formula() -> None:
    """Forward map: the bottom-right corner of each quadrant is the original's stored lat/lng anchor."""
    assert len(QUADRANTS) >= 20
    errors = []
    for name, (x, y) in QUADRANTS.items():
        lat, lng = original_anchor(ORIGINAL_CONFIG, x, y)
        corner = LEGACY.quadrant_info(x, y)["corners"]["bottom_right"]
        err = max(abs(corner["lat"] - lat), abs(corner["lng"] - lng))
        errors.append(err)
        assert err < 1e-9, f"{name} ({x},{y}): {corner} vs original ({lat}, {lng})"
    print(f"legacy-flat vs original anchors: {len(errors)} quadrants, max error {max(errors):.3g} degrees")


def test_inverse_matches_the_original_formula() -> None:
    """Inverse map: lat/lng → fractional quadrant coords (anchor convention = pixel / q − 1)."""
    worst = 0.0
    for x, y in QUADRANTS.values():
        lat, lng = original_anchor(ORIGINAL_CONFIG, x, y)
        # An anchor, and a point inside the quadrant that is not on the integer lattice.
        for dlat, dlng in ((0.0, 0.0), (0.00037, -0.00051)):
            ox, oy = original_quadrant_coords(ORIGINAL_CONFIG, lat + dlat, lng + dlng)
            px, py = LEGACY.lnglat_to_pixel(lng + dlng, lat + dlat)
            worst = max(worst, abs(float(px) / 512 - 1 - ox), abs(float(py) / 512 - 1 - oy))
        assert LEGACY.locate(*original_anchor(ORIGINAL_CONFIG, x, y))["world_pixel"] == pytest.approx(
            {"x": (x + 1) * 512, "y": (y + 1) * 512}, abs=1e-6
        )
    assert worst < 1e-9
    print(f"legacy-flat inverse vs original: max error {worst:.3g} quadrants")


def test_round_trip() -> None:
    rng = np.random.default_rng(7)
    px = rng.uniform(-87 * 512, 155 * 512, 2000)
    py = rng.uniform(-84 * 512, 111 * 512, 2000)
    lng, lat = LEGACY.pixel_to_lnglat(px, py)
    bx, by = LEGACY.lnglat_to_pixel(lng, lat)
    assert np.abs(bx - px).max() < 1e-6 and np.abs(by - py).max() < 1e-6
    lng2, lat2 = LEGACY.pixel_to_lnglat(bx, by)
    assert np.abs(lng2 - lng).max() < 1e-11 and np.abs(lat2 - lat).max() < 1e-11


def _drift_px(x: int, y: int) -> float:
    """How far (px) the true position of the original's anchor of (x, y) lies from where the original drew it."""
    lat, lng = original_anchor(ORIGINAL_CONFIG, x, y)
    px, py = EXACT.lnglat_to_pixel(lng, lat)
    return math.hypot(float(px) - (x + 1) * 512, float(py) - (y + 1) * 512)


def test_exact_and_legacy_differ_by_the_documented_drift() -> None:
    """Nothing at the seed, tens of px nearby, up to about one quadrant at the city's edge (issue 13)."""
    assert _drift_px(0, 0) < 1e-6
    assert _drift_px(1, -1) < 5
    assert 20 < _drift_px(*QUADRANTS["Battery"]) < 60
    tottenville = _drift_px(*QUADRANTS["Tottenville"])
    assert 400 < tottenville < 1.2 * 512, tottenville
    assert 250 < _drift_px(*QUADRANTS["JFK"]) < 512
    # The two mappings agree where they must: same camera, so the same quadrant size on screen at the seed.
    assert LEGACY.lnglat_to_pixel(-73.9857, 40.7484) == pytest.approx((512, 512))
    assert EXACT.lnglat_to_pixel(-73.9857, 40.7484) == pytest.approx((512, 512))


def test_bounds_follow_the_projection() -> None:
    """A bounds polygon lands on the original's pixels in legacy-flat (what its bounds overlay showed)."""
    x, y = QUADRANTS["JFK"]
    pts = [original_anchor(ORIGINAL_CONFIG, x + dx, y + dy) for dx, dy in ((0, 0), (2, 0), (2, 3), (0, 3))]
    poly = Polygon([(lng, lat) for lat, lng in pts])
    px = np.asarray(bounds_to_pixels(LEGACY, poly).exterior.coords)
    want = {((x + dx + 1) * 512, (y + dy + 1) * 512) for dx, dy in ((0, 0), (2, 0), (2, 3), (0, 3))}
    got = {(round(a, 6), round(b, 6)) for a, b in px}
    assert want <= got  # densified edges add vertices; the corners are exact
    ex = np.asarray(bounds_to_pixels(EXACT, poly).exterior.coords)
    assert np.abs(ex[0] - px[0]).max() > 200  # the exact map puts the same polygon elsewhere


def _park_centroid(geometry: MapGeometry, tmp_path, x: int, y: int) -> tuple[float, float] | None:
    """Render quadrant (x, y) with one square park centred where the original drew the quadrant's centre."""
    from isonyc_dagster.geodata.load import load_city
    from isonyc_dagster.project import ground_window
    from isonyc_dagster.render import Renderer

    lat, lng = original_offset(ORIGINAL_CONFIG, (x - 0.5) * 512, -(y - 0.5) * 512)
    d = 0.0003
    ring = [
        [lng - d, lat - d],
        [lng + d, lat - d],
        [lng + d, lat + d],
        [lng - d, lat + d],
        [lng - d, lat - d],
    ]
    path = tmp_path / f"park-{geometry.config.projection}.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"name": "test park"},
                        "geometry": {"type": "Polygon", "coordinates": [ring]},
                    }
                ],
            }
        )
    )
    city = load_city(geometry, [f"parks:{path}"], window=ground_window(geometry, QuadRect(x, y, x, y)))
    result = Renderer(city, geometry).render_quadrant(x, y)
    ys, xs = np.nonzero(result.surface == Surface.PARK)
    if len(xs) == 0:
        return None
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def test_render_shows_the_originals_ground(tmp_path) -> None:
    """legacy-flat renders, at quadrant (x, y), the ground the original showed there; exact shows it shifted."""
    x, y = QUADRANTS["Pelham Bay"]
    cx, cy = _park_centroid(LEGACY, tmp_path, x, y) or (math.nan, math.nan)
    assert abs(cx - 256) < 1.0 and abs(cy - 256) < 1.0, (cx, cy)
    exact = _park_centroid(EXACT, tmp_path, x, y)
    assert exact is None or math.hypot(exact[0] - 256, exact[1] - 256) > 40, exact


def test_land_and_water_follow_the_projection() -> None:
    """The land polygon (water = not land) is cached per projection, not only per seed."""
    from isonyc_dagster.geodata.land import land_polygon

    exact = land_polygon(EXACT)
    legacy = land_polygon(LEGACY)
    assert exact is not None and legacy is not None
    # Tottenville's tip: the two projections put the shoreline ~150 m apart on the ground.
    assert abs(exact.bounds[0] - legacy.bounds[0]) > 50
    # Legacy ground metres are the original's: its westernmost point maps back through the flat formula.
    e, n = LEGACY.lnglat_to_ground(-74.2555, 40.4961)
    ee, nn = EXACT.lnglat_to_ground(-74.2555, 40.4961)
    assert abs(float(e) - float(ee)) > 50
    assert abs(legacy.bounds[0] - exact.bounds[0] - (float(e) - float(ee))) < 30


def test_cli_uses_the_projection(tmp_path, capsys) -> None:
    """`isonyc quadrant` / `isonyc locate` under a legacy-flat project answer with the original's positions."""
    from isonyc_dagster.cli.main import main

    cfg = tmp_path / "project.toml"
    cfg.write_text('[map]\nprojection = "legacy-flat"\n')
    x, y = QUADRANTS["Tottenville"]
    assert main(["--config", str(cfg), "quadrant", str(x), str(y)]) == 0
    corner = json.loads(capsys.readouterr().out)["corners"]["bottom_right"]
    lat, lng = original_anchor(ORIGINAL_CONFIG, x, y)
    assert corner == pytest.approx({"lat": lat, "lng": lng}, abs=1e-9)
    clat, clng = original_offset(ORIGINAL_CONFIG, (x - 0.5) * 512, -(y - 0.5) * 512)  # the quadrant's centre
    assert main(["--config", str(cfg), "locate", str(clat), str(clng)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["quadrant"] == {"x": x, "y": y}
    assert found["pixel"] == pytest.approx({"x": 256, "y": 256}, abs=1e-6)
    # The exact map puts the same point almost a quadrant away.
    assert main(["locate", str(clat), str(clng)]) == 0
    assert json.loads(capsys.readouterr().out)["quadrant"] != {"x": x, "y": y}
