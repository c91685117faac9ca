"""Water classification and masks from surface buffers (synthetic and real NYC shoreline), colour tools."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import shapely
from shapely.geometry import box, shape

from isonyc_dagster.generate.water import (
    WATER_RGB,
    classify_water,
    fill_water,
    parse_color,
    seamless_margin,
    soft_replace_color,
    surface_with_margin,
    water_mask,
)
from isonyc_dagster.geo.surfaces import Surface
from isonyc_dagster.geodata.model import City
from isonyc_dagster.render import Renderer
from isonyc_dagster.store.base import Water
from tests.conftest import geodata_file

W, L = int(Surface.WATER), int(Surface.GROUND)


def disc_world(size: int, centre: tuple[float, float], r: float) -> np.ndarray:
    """A land disc (GROUND, with a ROAD stripe) in water, as a surface buffer."""
    yy, xx = np.mgrid[0:size, 0:size]
    s = np.full((size, size), W, np.uint8)
    land = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= r * r
    s[land] = L
    s[land & (abs(yy - centre[1]) < 3)] = int(Surface.ROAD)
    return s


# --- classification -------------------------------------------------------------------------------
def test_classify_water_all_land_edge():
    assert classify_water(np.full((64, 64), W, np.uint8)) is Water.ALL_WATER
    assert classify_water(np.full((64, 64), int(Surface.ROOF), np.uint8)) is Water.ALL_LAND
    s = np.full((64, 64), L, np.uint8)
    s[:, :10] = W
    assert classify_water(s) is Water.WATER_EDGE
    # a single pier pixel in open water stays ALL_WATER within the default tolerance (1/4096 < 0.001)...
    s = np.full((64, 64), W, np.uint8)
    s[5, 5] = int(Surface.ROAD)
    assert classify_water(s) is Water.ALL_WATER
    # ...but not with an exact classification
    assert classify_water(s, tolerance=0.0) is Water.WATER_EDGE


def test_classify_rejects_bad_buffers():
    with pytest.raises(ValueError, match="2-D array"):
        classify_water(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="integer Surface classes"):
        classify_water(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="tolerance"):
        classify_water(np.zeros((4, 4), np.uint8), tolerance=0.7)


# --- masks ----------------------------------------------------------------------------------------
def test_mask_is_zero_on_land_and_ramps_smoothly_into_water():
    s = np.full((40, 200), W, np.uint8)
    s[:, :100] = L  # straight shoreline at x = 100
    m = water_mask(s, falloff_px=8)
    assert m.dtype == np.uint8 and m.shape == s.shape
    assert (m[:, :100] == 0).all()
    row = m[20].astype(int)
    ramp = row[100:109]
    assert (np.diff(ramp) > 0).all()  # strictly rising over the falloff
    assert 0 < ramp[0] < 10  # soft at the shore, not a hard edge
    assert (row[108:] == 255).all()  # open water beyond the falloff
    # smoothstep: halfway (127.5) at d − 0.5 = 4, between x = 103 (d = 4) and x = 104 (d = 5): symmetric
    assert row[103] < 128 < row[104] and row[103] + row[104] == pytest.approx(255, abs=1)
    assert row[102] + row[105] == pytest.approx(255, abs=1)
    # hard mask
    hard = water_mask(s, falloff_px=0)
    assert set(np.unique(hard)) == {0, 255} and (hard[:, 100:] == 255).all()


def test_mask_of_uniform_buffers():
    assert (water_mask(np.full((32, 32), W, np.uint8)) == 255).all()
    assert (water_mask(np.full((32, 32), L, np.uint8)) == 0).all()


def test_masks_with_margin_are_seamless_and_equal_a_global_mask():
    q, falloff = 64, 8.0
    world = disc_world(4 * q, (100.0, 150.0), 70.0)  # shoreline crosses several quadrant edges
    world[20:30, 180:250] = L  # a pier
    world[q + 10 : q + 50, 3 * q - 4 : 3 * q] = L  # a quay ending exactly on a quadrant edge
    truth = water_mask(world, falloff)
    m = seamless_margin(falloff)
    assert m == 9

    def get(x, y):
        if 0 <= x < 4 and 0 <= y < 4:
            return world[y * q : (y + 1) * q, x * q : (x + 1) * q]
        return None

    stitched = np.zeros_like(truth)
    naive = np.zeros_like(truth)
    for y in range(4):
        for x in range(4):
            sw = surface_with_margin(get, x, y, m, quadrant_px=q)
            assert sw.shape == (q + 2 * m, q + 2 * m)
            stitched[y * q : (y + 1) * q, x * q : (x + 1) * q] = water_mask(sw, falloff, margin_px=m)
            naive[y * q : (y + 1) * q, x * q : (x + 1) * q] = water_mask(get(x, y), falloff)
    inner = slice(q, 3 * q)  # quadrants whose 8 neighbours all exist
    assert (stitched[inner, inner] == truth[inner, inner]).all()
    # positive control: without the margin, masks disagree with the global one next to quadrant edges
    assert (naive != truth).sum() > 200


def test_margin_validation():
    s = np.full((80, 80), W, np.uint8)
    with pytest.raises(ValueError, match="at least 9 px"):
        water_mask(s, 8.0, margin_px=4)
    with pytest.raises(ValueError, match="too small for a 40 px margin"):
        water_mask(s, 8.0, margin_px=40)
    with pytest.raises(ValueError, match="falloff_px"):
        water_mask(s, -1.0)
    with pytest.raises(ValueError, match="no surface buffer"):
        surface_with_margin(lambda x, y: None, 0, 0, 9, quadrant_px=64)


def test_surface_with_margin_repeats_edges_where_neighbours_are_missing():
    q = 16
    centre = np.full((q, q), L, np.uint8)
    centre[:, -4:] = W
    right = np.full((q, q), int(Surface.ROOF), np.uint8)
    sw = surface_with_margin(lambda x, y: {(0, 0): centre, (1, 0): right}.get((x, y)), 0, 0, 4, quadrant_px=q)
    assert (sw[4:-4, -4:] == int(Surface.ROOF)).all()  # real neighbour on the right
    assert (sw[:4, 4:-4] == centre[0]).all()  # missing neighbour above: the edge row repeated
    assert (sw[4:-4, 4:-4] == centre).all()


# --- real NYC shoreline, rendered by the real renderer ------------------------------------------------
@pytest.fixture(scope="module")
def east_river(geometry):
    """A land-only City of the five boroughs near Manhattan's East River shore at 34th St (ground metres),
    the quadrant window around it, and the land polygon in lng/lat for an independent oracle."""
    path = geodata_file("nyc_boroughs_land_nybb_simplified10ft.geojson")
    fc = json.loads(path.read_text())
    land_ll = shapely.union_all([shape(f["geometry"]) for f in fc["features"]])
    loc = geometry.locate(40.7440, -73.9700)  # near the FDR Drive at 34th St
    x0, y0, nx, ny = loc["quadrant"]["x"] - 2, loc["quadrant"]["y"] - 1, 6, 3
    q = geometry.q
    lng, lat = geometry.pixel_to_lnglat(
        np.array([x0 - 1, x0 + nx + 1]) * q, np.array([y0 - 1, y0 + ny + 1]) * q
    )
    land_ll = land_ll.intersection(
        box(lng.min() - 0.01, lat.min() - 0.01, lng.max() + 0.01, lat.max() + 0.01)
    )

    def to_ground(c):
        e, n = geometry.lnglat_to_ground(c[:, 0], c[:, 1])
        return np.stack([e, n], axis=1)

    city = City(land=shapely.transform(land_ll, to_ground))
    return Renderer(city, geometry), land_ll, (x0, y0, nx, ny)


def test_real_east_river_shoreline(geometry, east_river):
    """Water classes of rendered quadrants across the East River agree with the land polygon itself."""
    renderer, land_ll, (x0, y0, nx, ny) = east_river
    seen = set()
    for j in range(ny):
        for i in range(nx):
            x, y = x0 + i, y0 + j
            surface = renderer.render_quadrant(x, y).surface
            got = classify_water(surface)
            # Oracle: the water share of the quadrant's ground parallelogram, computed with shapely.
            corners = np.asarray(geometry.quadrant_ground_polygon(x, y).exterior.coords)
            lng, lat = geometry.ground_to_lnglat(corners[:, 0], corners[:, 1])
            quad_ll = shapely.Polygon(zip(lng, lat, strict=True))
            water_frac = 1.0 - quad_ll.intersection(land_ll).area / quad_ll.area
            assert float((surface == W).mean()) == pytest.approx(water_frac, abs=0.01), (x, y)
            if 0.01 < water_frac < 0.99:
                assert got is Water.WATER_EDGE, (x, y, water_frac)
            elif water_frac == 1.0:
                assert got is Water.ALL_WATER, (x, y)
            elif water_frac == 0.0:
                assert got is Water.ALL_LAND, (x, y)
            seen.add(got)
    assert seen == {Water.ALL_LAND, Water.WATER_EDGE, Water.ALL_WATER}, "the window crosses the river"


def test_real_masks_from_neighbour_renders_equal_a_rendered_margin_window(geometry, east_river):
    """Assembling the margin from the neighbours' quadrant renders gives the mask of a wider render."""
    renderer, _, (x0, y0, nx, ny) = east_river
    q, falloff = geometry.q, 12.0
    m = seamless_margin(falloff)
    cache = {}

    def get(x, y):
        if (x, y) not in cache:
            cache[(x, y)] = renderer.render_quadrant(x, y).surface
        return cache[(x, y)]

    edges = 0
    for x in range(x0 + 1, x0 + nx - 1):
        y = y0 + 1
        assembled = water_mask(surface_with_margin(get, x, y, m, quadrant_px=q), falloff, margin_px=m)
        wide = renderer.render_window(x * q - m, y * q - m, q + 2 * m, q + 2 * m).surface
        assert (assembled == water_mask(wide, falloff, margin_px=m)).all(), (x, y)
        if classify_water(get(x, y)) is Water.WATER_EDGE:
            edges += 1
            assert int(assembled.min()) > 0 or (assembled == 0).any()
            assert len(np.unique(assembled)) > 10, "a shoreline quadrant has a soft ramp, not a hard edge"
    assert edges >= 1


# --- colour tools -----------------------------------------------------------------------------------
def test_soft_replace_color_matches_the_original_formula():
    img = np.array([[[74, 99, 114], [80, 100, 110], [200, 30, 30], [100, 120, 130]]], np.uint8)
    target = (80, 100, 110)
    out = soft_replace_color(img, target, "#102030", softness=30)
    s = 30 / 255 * math.sqrt(3)
    for i, px in enumerate(img[0]):
        dist = math.dist([c / 255 for c in px], [c / 255 for c in target])
        al = min(max(1 - dist / s, 0.0), 1.0)
        expect = [int(n * al + c * (1 - al)) for n, c in zip((16, 32, 48), px, strict=True)]
        assert out[0, i].tolist() == expect
    assert out[0, 1].tolist() == [16, 32, 48]  # exact target → fully replaced
    assert out[0, 2].tolist() == [200, 30, 30]  # far colour untouched
    # RGBA keeps alpha; default replacement is the canonical water colour
    rgba = np.dstack([img, np.array([[10, 20, 30, 40]], np.uint8)])
    out4 = soft_replace_color(rgba, target)
    assert out4[..., 3].tolist() == [[10, 20, 30, 40]] and out4[0, 1, :3].tolist() == list(WATER_RGB)


def test_fill_water_whole_rect_hard_and_soft_masks():
    img = np.zeros((4, 6, 3), np.uint8)
    assert (fill_water(img) == WATER_RGB).all()
    r = fill_water(img, (1, 1, 3, 4))
    assert (r[1:4, 1:3] == WATER_RGB).all() and (r[0] == 0).all() and (r[:, 3:] == 0).all()
    hard = np.zeros((4, 6), bool)
    hard[0, 0] = True
    assert fill_water(img, hard)[0, 0].tolist() == list(WATER_RGB) and (fill_water(img, hard)[1:] == 0).all()
    soft = np.full((4, 6), 128, np.uint8)
    assert fill_water(img, soft)[0, 0].tolist() == [round(v * 128 / 255) for v in WATER_RGB]
    rgba = np.zeros((4, 6, 4), np.uint8)
    assert (fill_water(rgba, soft)[..., 3] == 128).all()
    # the mask from geometry drives the fill: land untouched, open water fully painted
    s = np.full((4, 6), L, np.uint8)
    s[:, 3:] = W
    painted = fill_water(np.full((4, 6, 3), 200, np.uint8), water_mask(s, 0))
    assert (painted[:, :3] == 200).all() and (painted[:, 3:] == WATER_RGB).all()


def test_colour_tools_reject_bad_input():
    img = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="hex colour"):
        soft_replace_color(img, "#12345")
    with pytest.raises(ValueError, match="three integers"):
        parse_color((300, 0, 0))
    with pytest.raises(ValueError, match="outside the 6×4 image"):
        fill_water(img, (0, 0, 7, 2))
    with pytest.raises(ValueError, match="does not match the image"):
        fill_water(img, np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match=r"\(H, W, 3\|4\) uint8"):
        fill_water(np.zeros((4, 6)), None)
    assert parse_color("4a6372") == WATER_RGB
