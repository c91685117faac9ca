"""Whitebox renderer on real NYC data: camera exactness, occlusion, wall classes, ground layers, seams."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from isonyc_dagster.geo.surfaces import PALETTE, Surface
from isonyc_dagster.geodata.load import load_city
from isonyc_dagster.geodata.model import Building, City, Park, Road
from isonyc_dagster.render import Renderer, RenderResult, stable_building_id
from tests.conftest import geodata_file

CITICORP = (40.7583, -73.9702)


# --- real data, read in place --------------------------------------------------------------------
def _load(geometry, *names: str, land: str | None = None) -> City:
    return load_city(geometry, [geodata_file(n) for n in names], land=geodata_file(land) if land else None)


def _midtown_city(geometry) -> City:
    return _load(
        geometry,
        "midtown_east_buildings_doitt.geojson",
        "midtown_east_parks_nycparks.geojson",
        "midtown_east_roads_osm.geojson",
        land="midtown_east_land_nybb.geojson",
    )


@pytest.fixture(scope="module")
def midtown(geometry) -> tuple[City, Renderer]:
    city = _midtown_city(geometry)
    return city, Renderer(city, geometry)


@pytest.fixture(scope="module")
def citicorp60(geometry) -> list[Building]:
    return _load(geometry, "fixture_buildings_citicorp_60_doitt.geojson").buildings


def _citicorp_tile(geometry) -> tuple[int, int]:
    """Tile whose bottom quadrants hold the Citigroup Center's footprint and top ones its roof."""
    q = geometry.locate(*CITICORP)["quadrant"]
    return q["x"] - 1, q["y"] - 1


def _centres(res: RenderResult) -> tuple[np.ndarray, np.ndarray]:
    h, w = res.surface.shape
    x0, y0 = res.origin_px
    return np.meshgrid(np.arange(w) + x0 + 0.5, np.arange(h) + y0 + 0.5)


def _px_poly(geometry, footprint, h: float = 0.0):
    """Project a ground polygon at height h with MapGeometry.ground_to_pixel (not the renderer's path)."""
    return shapely.transform(
        footprint, lambda c: np.stack(geometry.ground_to_pixel(c[:, 0], c[:, 1], h), axis=1)
    )


def _silhouette(geometry, b: Building):
    """Screen silhouette of an extruded footprint: footprint ∪ roof ∪ every wall quad."""
    pieces = [_px_poly(geometry, b.footprint, b.base_m), _px_poly(geometry, b.footprint, b.height_m)]
    for ring in shapely.get_rings(shapely.get_parts(b.footprint)):
        c = shapely.get_coordinates(ring)
        for (e1, n1), (e2, n2) in zip(c[:-1], c[1:], strict=True):
            px, py = geometry.ground_to_pixel(
                np.array([e1, e2, e2, e1]),
                np.array([n1, n2, n2, n1]),
                np.array([b.base_m, b.base_m, b.height_m, b.height_m]),
            )
            pieces.append(Polygon(zip(px, py, strict=True)).buffer(0))
    return shapely.union_all(pieces)


def _assert_region(mask: np.ndarray, region, res: RenderResult, what: str, tol: float = 1.0) -> None:
    """mask ⊇ pixels whose centre is inside region shrunk by tol, and mask ⊆ region grown by tol."""
    cx, cy = _centres(res)
    inner = shapely.contains_xy(region.buffer(-tol), cx, cy)
    outer = shapely.contains_xy(region.buffer(tol), cx, cy)
    assert inner.sum() > 50, f"{what}: test region too small to mean anything"
    missing, extra = int((inner & ~mask).sum()), int((mask & ~outer).sum())
    assert missing == 0, f"{what}: {missing} pixels inside the projected outline are not drawn"
    assert extra == 0, f"{what}: {extra} pixels drawn more than {tol} px outside the projected outline"


# --- camera exactness ------------------------------------------------------------------------------
def test_citigroup_center_footprint_and_roof_land_on_the_camera(geometry, citicorp60):
    citi = next(b for b in citicorp60 if b.name == "Citigroup Center")
    assert citi.height_m == pytest.approx(911 * 0.3048, abs=0.05)
    sil = _silhouette(geometry, citi)
    x0, y0, x1, y1 = (int(v) for v in sil.bounds)
    res = Renderer(City(buildings=[citi]), geometry).render_window(x0 - 8, y0 - 8, x1 - x0 + 16, y1 - y0 + 16)

    mine = res.building == stable_building_id(citi.id)
    _assert_region(mine, sil, res, "silhouette")
    _assert_region(
        mine & (res.surface == Surface.ROOF), _px_poly(geometry, citi.footprint, citi.height_m), res, "roof"
    )
    # Every roof corner (h = 911 ft) has a roof pixel of the building within 1 px, and every footprint
    # corner on the outline of the silhouette (the ones not hidden behind the tower) has the building
    # on one side and the street on the other within 1 px.
    x0, y0 = res.origin_px
    outline = sil.boundary
    e, n = shapely.get_coordinates(citi.footprint).T
    checked = 0
    for h in (0.0, citi.height_m):
        px, py = geometry.ground_to_pixel(e, n, h)
        for x, y in zip(px, py, strict=True):
            c, r = int(np.floor(x)) - x0, int(np.floor(y)) - y0
            near = mine[r - 1 : r + 2, c - 1 : c + 2]
            roof = res.surface[r - 1 : r + 2, c - 1 : c + 2] == Surface.ROOF
            if h > 0:
                assert (near & roof).any(), f"no roof pixel within 1 px of roof corner ({x:.1f}, {y:.1f})"
                checked += 1
            elif outline.distance(shapely.Point(x, y)) < 1e-6:
                assert near.any() and not near.all(), (
                    f"footprint corner ({x:.1f}, {y:.1f}) is not on the drawn edge"
                )
                checked += 1
    assert checked > 45
    # The roof carries its height; walls run from 0 up to (not including) the roof.
    assert np.allclose(res.height[mine & (res.surface == Surface.ROOF)], citi.height_m)
    wall = mine & np.isin(res.surface, (Surface.WALL_LEFT, Surface.WALL_RIGHT))
    assert res.height[wall].min() < 1.0 and res.height[wall].max() < citi.height_m
    assert res.height[wall].max() > citi.height_m - 1.0
    # 911 ft lift ~ 670 px: the tower reaches from the footprint's quadrant into the one above it.
    assert np.ptp(np.nonzero(mine)[0]) > 670


def test_tower_reaches_up_into_a_quadrant_its_footprint_is_not_in(geometry, citicorp60):
    citi_idx = next(i for i, b in enumerate(citicorp60) if b.name == "Citigroup Center")
    citi = citicorp60[citi_idx]
    r = Renderer(City(buildings=citicorp60), geometry)
    roof = geometry.locate(*CITICORP, h=citi.height_m)["quadrant"]
    foot = geometry.locate(*CITICORP)["quadrant"]
    assert roof["y"] < foot["y"]
    qpoly = geometry.quadrant_ground_polygon(roof["x"], roof["y"])
    assert not citi.footprint.intersects(qpoly)
    res = r.render_quadrant(roof["x"], roof["y"])
    assert (res.building == stable_building_id(citicorp60[citi_idx].id)).sum() > 1000
    assert res.stats["buildings_drawn"] >= 1


# --- occlusion -------------------------------------------------------------------------------------
def test_every_pixel_shows_the_highest_surface_on_its_ray(geometry, citicorp60):
    """Rendering all 60 buildings equals the per-pixel max over rendering each building alone."""
    tile = _citicorp_tile(geometry)
    both = Renderer(City(buildings=citicorp60), geometry).render_tile(*tile)
    best_h = np.zeros(both.height.shape, np.float32)
    best_b = np.zeros(both.building.shape, np.int32)
    for b in citicorp60:
        one = Renderer(City(buildings=[b]), geometry).render_tile(*tile)
        win = one.height > best_h
        best_h[win] = one.height[win]
        best_b[win] = stable_building_id(b.id)
    assert len(np.unique(both.building)) > 12  # many buildings take part
    assert np.array_equal(both.height, best_h)
    assert np.array_equal(both.building, best_b)


def test_tall_building_in_front_hides_short_one_behind(geometry):
    # Ground axes: the camera looks roughly north (azimuth −15°), so "in front" = south.
    short = Building(id="behind", footprint=box(0, 60, 30, 100), height_m=20.0)
    tall = Building(id="front", footprint=box(0, 0, 30, 30), height_m=80.0)
    for order in ([short, tall], [tall, short]):
        r = Renderer(City(buildings=order), geometry)
        px, py = geometry.ground_to_pixel(15.0, 80.0, 20.0)  # the short roof's centre
        res = r.render_window(int(px) - 200, int(py) - 400, 400, 800)
        c, rr = int(px) - res.origin_px[0], int(py) - res.origin_px[1]
        front_id = stable_building_id(tall.id)
        assert res.building[rr, c] == front_id, "the short roof's centre is behind the 80 m tower"
        # the short roof still shows where the tower does not cover it (its far edge, up the screen)
        px2, py2 = geometry.ground_to_pixel(5.0, 98.0, 20.0)
        assert res.building[int(py2) - res.origin_px[1], int(px2) - res.origin_px[0]] == stable_building_id(
            short.id
        )


# --- walls, holes, parts -----------------------------------------------------------------------------
def _at(res: RenderResult, geometry, e: float, n: float, h: float) -> tuple[int, int, float]:
    px, py = geometry.ground_to_pixel(e, n, h)
    r, c = int(np.floor(py)) - res.origin_px[1], int(np.floor(px)) - res.origin_px[0]
    return int(res.surface[r, c]), int(res.building[r, c]), float(res.height[r, c])


def _render_around(
    r: Renderer, geometry, e0: float, n0: float, e1: float, n1: float, top: float
) -> RenderResult:
    """Render the window that shows the ground box [e0, e1] × [n0, n1] up to height ``top``."""
    e, n, h = (a.ravel() for a in np.meshgrid([e0, e1], [n0, n1], [0.0, top]))
    px, py = geometry.ground_to_pixel(e, n, h)
    x0, y0 = int(np.floor(px.min())) - 4, int(np.floor(py.min())) - 4
    return r.render_window(x0, y0, int(np.ceil(px.max())) - x0 + 4, int(np.ceil(py.max())) - y0 + 4)


def test_wall_orientation_classes_holes_and_floating_parts(geometry):
    # azimuth −15°: a south face's normal points screen-left, an east face's screen-right;
    # north and west faces point away from the camera.
    court = Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [[(20, 20), (80, 20), (80, 80), (20, 80)]])
    tower = box(200, 0, 240, 40)
    floating = Building(id="bridge", footprint=box(300, 0, 340, 40), height_m=40.0, base_m=30.0)
    city = City(
        buildings=[Building(id="court", footprint=MultiPolygon([court, tower]), height_m=10.0), floating]
    )
    res = _render_around(Renderer(city, geometry), geometry, -10, -10, 360, 120, 50)
    court_id, part_id = stable_building_id("court"), stable_building_id("bridge")

    assert _at(res, geometry, 50, 0, 5) == (
        Surface.WALL_LEFT,
        court_id,
        pytest.approx(5, abs=0.3),
    )  # south face
    assert _at(res, geometry, 100, 50, 5)[:2] == (Surface.WALL_RIGHT, court_id)  # east face
    assert _at(res, geometry, 10, 50, 10) == (Surface.ROOF, court_id, 10.0)
    # courtyard: its floor is visible, and so is the inner face of its north side (it faces south)
    assert _at(res, geometry, 50, 50, 0) == (Surface.GROUND, 0, 0.0)
    assert _at(res, geometry, 50, 80, 5)[:2] == (Surface.WALL_LEFT, court_id)
    # second part of the MultiPolygon
    assert _at(res, geometry, 220, 20, 10)[:2] == (Surface.ROOF, court_id)
    assert _at(res, geometry, 240, 20, 5)[:2] == (Surface.WALL_RIGHT, court_id)
    # a building:part from 30 m to 40 m: its walls start at 30 m, the ground shows beneath
    assert _at(res, geometry, 320, 0, 35)[:2] == (Surface.WALL_LEFT, part_id)
    assert _at(res, geometry, 320, 5, 0) == (Surface.GROUND, 0, 0.0)
    assert _at(res, geometry, 320, 20, 40)[:2] == (Surface.ROOF, part_id)
    # back faces never show: where the tower's west face projects, the ray first meets its roof
    assert _at(res, geometry, 200, 20, 5)[:2] == (Surface.ROOF, court_id)


# --- ground layers -----------------------------------------------------------------------------------
def test_ground_layers_match_the_polygons(geometry, midtown):
    """Where no building stands, every pixel has the class its ground point has in the source polygons."""
    city, r = midtown
    # The East River shore at E 50th St: land, water, parks and roads in one tile.
    p = geometry.locate(40.7535, -73.9640)["quadrant"]
    res = r.render_tile(p["x"] - 1, p["y"] - 1)
    assert {"water", "ground", "road", "park"} <= set(res.stats["classes_present"])

    def px(g):
        return _px_poly(geometry, g)

    land = px(city.land)
    parks = shapely.union_all([px(pk.geometry) for pk in city.parks])
    roads = shapely.union_all([px(rd.geometry.buffer(rd.width_m / 2, quad_segs=8)) for rd in city.roads])
    cx, cy = _centres(res)
    expect = np.where(shapely.contains_xy(land, cx, cy), Surface.GROUND, Surface.WATER).astype(np.uint8)
    expect[shapely.contains_xy(parks, cx, cy)] = Surface.PARK
    expect[shapely.contains_xy(roads, cx, cy)] = Surface.ROAD
    edges = shapely.union_all([shapely.boundary(g) for g in (land, parks, roads)]).buffer(1.0)
    sure = (res.building == 0) & ~shapely.contains_xy(edges, cx, cy)
    assert sure.sum() > 100_000
    wrong = int((res.surface[sure] != expect[sure]).sum())
    assert wrong == 0, f"{wrong} ground pixels disagree with the source polygons"
    assert np.all(res.height[res.building == 0] == 0)


def test_road_polygons_and_explicit_water_and_empty_places(geometry):
    road_area = Road(id="plaza", geometry=box(0, 0, 40, 40), kind="pedestrian")
    pond = box(60, 0, 100, 40)
    park = Park(id="p", geometry=box(50, -10, 110, 50))
    city = City(land=box(-100, -100, 150, 150), water=[pond], parks=[park], roads=[road_area])
    r = Renderer(city, geometry)
    res = _render_around(r, geometry, -120, -120, 220, 170, 0)
    x0, y0 = res.origin_px

    def cls(e, n):
        x, y = geometry.ground_to_pixel(e, n)
        return res.surface[int(y) - y0, int(x) - x0]

    assert cls(20, 20) == Surface.ROAD
    assert cls(80, 20) == Surface.WATER  # a pond inside the park
    assert cls(105, 45) == Surface.PARK
    assert cls(-50, 100) == Surface.GROUND
    assert cls(200, 0) == Surface.WATER  # outside land
    # far from every feature: plain water (outside land) or plain ground (no land polygon)
    far = r.render_quadrant(300, 300)
    assert np.all(far.surface == Surface.WATER) and far.stats["buildings_drawn"] == 0
    empty = Renderer(City(), geometry).render_quadrant(0, 0)
    assert np.all(empty.surface == Surface.GROUND) and np.all(empty.building == 0)
    assert np.array_equal(empty.rgb, PALETTE[empty.surface])
    # a loader clipping land to a window with no land in it gives an empty polygon: all water
    no_land = Renderer(City(land=Polygon()), geometry).render_quadrant(0, 0)
    assert np.all(no_land.surface == Surface.WATER)


# --- seams -------------------------------------------------------------------------------------------
def _assert_same(a: RenderResult, b: RenderResult, what: str) -> None:
    for name in ("rgb", "surface", "building", "height"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: {name} dtype/shape differ"
        assert np.array_equal(x, y), f"{what}: {name} differs at {int((x != y).sum())} values"
    assert a.origin_px == b.origin_px


@pytest.mark.parametrize(("lat", "lng"), [CITICORP, (40.7535, -73.9640)], ids=["citicorp", "east-river"])
def test_four_quadrants_stitch_into_the_tile_exactly(geometry, midtown, lat, lng):
    _, r = midtown
    p = geometry.locate(lat, lng)["quadrant"]
    x, y = p["x"] - 1, p["y"] - 1
    tile = r.render_tile(x, y)
    q = geometry.q
    for dx in (0, 1):
        for dy in (0, 1):
            _assert_same(
                r.render_quadrant(x + dx, y + dy), tile.crop(dx * q, dy * q, q, q), f"quadrant +{dx},+{dy}"
            )
    # any window, aligned or not, equals the same pixels of a bigger render
    _assert_same(r.render_window(x * q + 37, y * q + 11, 301, 203), tile.crop(37, 11, 301, 203), "odd window")
    assert tile.stats["buildings_drawn"] > 10


# --- bad input ---------------------------------------------------------------------------------------
def test_invalid_and_degenerate_buildings_are_repaired_or_skipped_by_name(geometry):
    bowtie = Polygon([(0, 0), (40, 40), (40, 0), (0, 40), (0, 0)])
    assert not bowtie.is_valid
    blds = [
        Building(id="bowtie-17", footprint=bowtie, height_m=30.0),
        Building(id="sliver-3", footprint=Polygon([(100, 0), (140, 0), (120, 0)]), height_m=30.0),
        Building(id="nan-height-9", footprint=box(200, 0, 230, 30), height_m=float("nan")),
        Building(id="ok-1", footprint=box(300, 0, 330, 30), height_m=30.0),
    ]
    with pytest.warns(UserWarning) as rec:
        r = Renderer(City(buildings=blds), geometry)
    text = " ".join(str(w.message) for w in rec)
    assert "bowtie-17" in text and "make_valid" in text
    assert "sliver-3" in text and "nan-height-9" in text
    assert "ok-1" not in text
    res = _render_around(r, geometry, -20, -20, 350, 60, 40)
    drawn = set(np.unique(res.building).tolist())
    sid = {b.id: stable_building_id(b.id) for b in blds}
    assert {sid["bowtie-17"], sid["ok-1"]} <= drawn
    assert sid["sliver-3"] not in drawn and sid["nan-height-9"] not in drawn


def test_valid_city_renders_without_warnings(geometry, citicorp60):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Renderer(City(buildings=citicorp60), geometry).render_quadrant(0, 0)


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((0, 0, 0, 10), ValueError, "size 0×10"),
        ((0, 0, 10, 100_000), ValueError, "1..8192"),
        ((0.5, 0, 10, 10), TypeError, "px0 must be an integer"),
    ],
)
def test_bad_windows_are_refused_clearly(geometry, args, exc, match):
    with pytest.raises(exc, match=match):
        Renderer(City(), geometry).render_window(*args)


def test_building_ids_do_not_depend_on_the_city_they_were_loaded_with(geometry, citicorp60):
    """The same building is drawn with the same id whichever other buildings (and order) the city holds."""
    tile = _citicorp_tile(geometry)
    full = Renderer(City(buildings=citicorp60), geometry).render_tile(*tile)
    subset = [b for b in reversed(citicorp60) if b.height_m > 60]
    part = Renderer(City(buildings=subset), geometry).render_tile(*tile)
    keep = np.isin(full.building, [stable_building_id(b.id) for b in subset]) & (
        full.building == part.building
    )
    assert keep.sum() > 100_000
    assert set(np.unique(part.building).tolist()) - {0} <= {stable_building_id(b.id) for b in subset}


def test_equal_heights_on_a_shared_wall_do_not_depend_on_the_city_order(geometry):
    """Row houses: two buildings of the same height share a wall. Whichever order a city lists them in (regions
    load different subsets in different orders), every pixel is drawn the same."""
    a = Building(id="row-a", footprint=box(0, 0, 20, 30), height_m=15.0)
    b = Building(id="row-b", footprint=box(20, 0, 40, 30), height_m=15.0)
    c = Building(id="row-c", footprint=box(40, 0, 60, 30), height_m=15.0)
    renders = [
        _render_around(Renderer(City(buildings=order), geometry), geometry, -10, -10, 70, 40, 20)
        for order in ([a, b, c], [c, b, a], [b, c, a])
    ]
    for other in renders[1:]:
        assert np.array_equal(renders[0].building, other.building)
        assert np.array_equal(renders[0].surface, other.surface)
