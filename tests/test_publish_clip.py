"""Publish-time clipping and placeholders, on the Battery (the demo area's southern tip) rendered from real
geodata through the real renderer: per-quadrant tiles stitch into the whole-map clip, towers keep their
height at the edge, quadrants wholly outside/inside are transparent/untouched, and incremental updates
rewrite only what the clip or a new generation changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from isonyc_dagster.geo.bounds import load_bounds
from isonyc_dagster.geo.config import (
    ConfigError,
    MapConfig,
    ProjectConfig,
    PublishConfig,
    load_project_config,
)
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geodata.load import load_city
from isonyc_dagster.project import ground_window
from isonyc_dagster.publish.build import build_pyramid, pyramid_staleness, update_pyramid
from isonyc_dagster.publish.clip import Clip, PublishSpec, dim, publish_spec
from isonyc_dagster.render import Renderer, png_bytes
from isonyc_dagster.store.local import LocalTileStore
from tests.conftest import geodata_file

Q = 512
GRID = (-26, 21, -23, 23)  # the Battery: shoreline on two sides, piers, Castle Clinton, ferry terminals
PLACEHOLDER = (-23, 21)  # rendered, never generated
META = {"map": {"name": "nyc"}}


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    """Real renders of the grid; ``generation`` = the render pixels (a stand-in model) except one quadrant."""
    geometry = MapGeometry(MapConfig())
    city = load_city(
        geometry,
        [geodata_file("lower_manhattan_buildings_osm.geojson")],
        land=geodata_file("manhattan_land_nybb.geojson"),
        window=ground_window(geometry, GRID),
    )
    renderer = Renderer(city, geometry)
    store = LocalTileStore(tmp_path_factory.mktemp("battery") / "store")
    x0, y0, x1, y1 = GRID
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            res = renderer.render_quadrant(x, y)
            aux = store.put_blob(res.to_npz(), ext="npz")
            data = png_bytes(res.rgb)
            store.put_tile("render", x, y, data, {"aux_sha256": aux})
            if (x, y) != PLACEHOLDER:
                store.put_tile("generation", x, y, data, {})
    whole = renderer.render_window(x0 * Q, y0 * Q, (x1 - x0 + 1) * Q, (y1 - y0 + 1) * Q)
    return geometry, renderer, store, whole


def own_copy(store: LocalTileStore, tmp_path: Path) -> LocalTileStore:
    """A private copy of the module's store, for a test that writes to it."""
    store.checkpoint()
    dst = tmp_path / "own_store"
    shutil.copytree(store.root, dst)
    return LocalTileStore(dst)


def rgba(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


def base_dir(out: Path) -> Path:
    return max((out / "nyc_files").iterdir(), key=lambda p: int(p.name))


def stitched(out: Path) -> np.ndarray:
    x0, y0, x1, y1 = GRID
    canvas = np.zeros(((y1 - y0 + 1) * Q, (x1 - x0 + 1) * Q, 4), np.uint8)
    for p in base_dir(out).glob("*.png"):
        c, r = (int(v) for v in p.stem.split("_"))
        canvas[r * Q : (r + 1) * Q, c * Q : (c + 1) * Q] = rgba(p)
    return canvas


def shoreline_spec(geometry: MapGeometry, **kw) -> PublishSpec:
    return publish_spec(geometry, PublishConfig(clip="manhattan", **kw), load_bounds("demo"))


def test_stitched_quadrants_equal_the_whole_map_clip(battery, tmp_path):
    geometry, _, store, whole = battery
    spec = shoreline_spec(geometry, placeholders=False)
    build_pyramid(store, tmp_path, grid=GRID, meta=META, publish=spec)
    got = stitched(tmp_path)
    x0, y0, _, _ = GRID
    full = np.concatenate([whole.rgb, np.full(whole.rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    expect = spec.clip.apply(full, x0 * Q, y0 * Q, whole.height)
    expect[(PLACEHOLDER[1] - y0) * Q : (PLACEHOLDER[1] - y0 + 1) * Q, (PLACEHOLDER[0] - x0) * Q :][:, :Q] = 0
    assert np.array_equal(got, expect)
    kept = got[..., 3] > 0
    assert 0.15 < kept.mean() < 0.85  # the river really is cut away, the Battery really is there
    # Crisp: every pixel is either the map's own pixel or fully transparent.
    assert set(np.unique(got[..., 3])) == {0, 255}


def test_a_tower_at_the_edge_keeps_its_full_height(battery):
    geometry, _, _, whole = battery
    lift = geometry.height_px_per_m
    # The tallest building in the window, and the screen rows of its ground points.
    bid = int(whole.building.flat[np.argmax(np.where(whole.building > 0, whole.height, 0))])
    rows, cols = np.nonzero(whole.building == bid)
    hmax = float(whole.height[rows, cols].max())
    assert hmax > 20
    ground = rows + 0.5 + lift * whole.height[rows, cols].astype(np.float64)
    x0, y0, x1, _ = GRID
    px0, py0 = x0 * Q, y0 * Q
    # The clip edge runs across the building's footprint: the near half (down the screen) is inside.
    edge = float(np.median(ground)) + 0.25  # never exactly on a pixel centre
    poly = shapely.box(px0 - 10, py0 + edge, (x1 + 1) * Q + 10, py0 + 100_000)
    clip = Clip(poly, lift, Q)
    keep = clip.keep_mask(px0, py0, whole.height)
    inside = ground > edge
    assert inside.any() and (~inside).any()  # it really straddles the edge
    assert np.array_equal(keep[rows, cols], inside)
    # The kept part rises to the roof, far above the clip edge on screen (not cut at its footprint).
    top_kept = rows[keep[rows, cols]].min()
    assert top_kept <= edge - 0.8 * lift * hmax
    # Without the height buffer the same tower would lose everything above the edge: the test can fail.
    flat = clip.keep_mask(px0, py0, np.zeros_like(whole.height))
    assert not (flat[rows, cols] & (rows < edge - 1)).any()


def test_quadrants_wholly_outside_are_transparent_and_wholly_inside_untouched(battery, tmp_path):
    geometry, _, store, _ = battery
    lift = geometry.height_px_per_m
    # Reaches far down the screen, so quadrant column -26 is inside even for the tallest possible tower.
    poly = shapely.box(-26 * Q - 5, 21 * Q - 5, -24.5 * Q, 40 * Q)
    spec = PublishSpec(Clip(poly, lift, Q), placeholders=False)
    build_pyramid(store, tmp_path, grid=GRID, meta=META, publish=spec)
    files = base_dir(tmp_path)
    for y in range(21, 24):
        inside = files / f"0_{y - 21}.png"
        assert inside.read_bytes() == store.get_tile("generation", -26, y)  # copied byte for byte
        outside = rgba(files / f"3_{y - 21}.png")
        assert not outside[..., 3].any()
        edge = rgba(files / f"1_{y - 21}.png")
        assert edge[:, : Q // 2 - 2, 3].all() and not edge[:, Q // 2 + 2 :, 3].any()


def test_clip_change_rebuilds_only_the_edge_and_updates_stay_incremental(battery, tmp_path):
    geometry, renderer, store, _ = battery
    lift = geometry.height_px_per_m
    a = PublishSpec(Clip(shapely.box(-26 * Q, 21 * Q, -24.5 * Q, 40 * Q), lift, Q))
    b = PublishSpec(Clip(shapely.box(-26 * Q, 21 * Q, -24.25 * Q, 40 * Q), lift, Q))
    first = build_pyramid(store, tmp_path, grid=GRID, meta=META, publish=a)
    assert first.stats.tiles_written == 26
    assert build_pyramid(store, tmp_path, grid=GRID, meta=META, publish=a).stats.tiles_written == 0
    assert pyramid_staleness(store, tmp_path, grid=GRID, name="nyc", publish=a) is None
    assert pyramid_staleness(store, tmp_path, grid=GRID, name="nyc", publish=b) is not None
    moved = build_pyramid(store, tmp_path, grid=GRID, meta=META, publish=b).stats
    # Only the column the edge moved through changes at full resolution (3 tiles), then its ancestors.
    assert moved.written_per_level[11] == 3 and moved.tiles_written < first.stats.tiles_written

    # A new generation of an edge quadrant rewrites one tile per level; the result equals a full build.
    res = renderer.render_quadrant(-25, 22)
    store = own_copy(store, tmp_path)
    store.put_tile("generation", -25, 22, png_bytes(255 - res.rgb), {})
    st = update_pyramid(store, tmp_path, [(-25, 22)])
    assert set(st.written_per_level.values()) == {1} and len(st.written_per_level) == 12
    fresh = tmp_path / "fresh"
    build_pyramid(store, fresh, grid=GRID, meta=META, publish=b)
    for p in (fresh / "nyc_files").rglob("*.png"):
        assert np.array_equal(rgba(p), rgba(tmp_path / "nyc_files" / p.relative_to(fresh / "nyc_files")))


def test_placeholders_show_the_dimmed_render_until_the_generation_arrives(battery, tmp_path):
    geometry, renderer, store, _ = battery
    spec = shoreline_spec(geometry)
    build_pyramid(store, tmp_path, grid=GRID, meta=META, publish=spec)
    side = json.loads((tmp_path / "nyc.json").read_text())
    assert side["publish"]["placeholders"] == [list(PLACEHOLDER)] and side["publish"]["clip"] is True
    c, r = PLACEHOLDER[0] - GRID[0], PLACEHOLDER[1] - GRID[1]
    tile = rgba(base_dir(tmp_path) / f"{c}_{r}.png")
    res = renderer.render_quadrant(*PLACEHOLDER)
    full = np.concatenate([res.rgb, np.full((Q, Q, 1), 255, np.uint8)], axis=2)
    expect = spec.clip.apply(
        dim(full, spec.placeholder_dim), PLACEHOLDER[0] * Q, PLACEHOLDER[1] * Q, res.height
    )
    assert np.array_equal(tile, expect) and tile[..., 3].any()

    store = own_copy(store, tmp_path)
    store.put_tile("generation", *PLACEHOLDER, png_bytes(res.rgb), {})
    st = update_pyramid(store, tmp_path, [PLACEHOLDER])
    assert st.written_per_level[11] == 1
    now = rgba(base_dir(tmp_path) / f"{c}_{r}.png")
    assert np.array_equal(now, spec.clip.apply(full, PLACEHOLDER[0] * Q, PLACEHOLDER[1] * Q, res.height))
    assert json.loads((tmp_path / "nyc.json").read_text())["publish"]["placeholders"] == []


def test_publish_config(tmp_path):
    assert ProjectConfig().publish.clip == "bounds" and ProjectConfig().publish.placeholders
    (tmp_path / "shore.geojson").write_text("{}")
    cfg = tmp_path / "p.toml"
    cfg.write_text('[publish]\nclip = "shore.geojson"\nbackground = "#102030"\nto = "site"\n')
    pub = load_project_config(cfg).publish
    assert pub.clip == str(tmp_path / "shore.geojson") and pub.to == str(tmp_path / "site")
    cfg.write_text('[publish]\nbackground = "blue"\n')
    with pytest.raises(ConfigError, match="publish.background"):
        load_project_config(cfg)
    geometry = MapGeometry(MapConfig())
    spec = publish_spec(geometry, PublishConfig(background="#102030"), load_bounds("demo"))
    assert spec.clip is not None and spec.clip.background == (16, 32, 48, 255)
    assert publish_spec(geometry, PublishConfig(clip="none", placeholders=False), load_bounds("demo")).plain
    assert PublishSpec.from_json(spec.to_json()).identity == spec.identity


def test_the_viewer_says_which_quadrants_are_placeholders(battery, tmp_path):
    from tests.test_viewer_browser import CHROMIUM, osd_or_skip

    osd_or_skip()
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    from isonyc_dagster.publish.serve import start_server
    from isonyc_dagster.publish.viewer import write_viewer

    geometry, _, store, _ = battery
    build_pyramid(store, tmp_path, grid=GRID, meta=META, publish=shoreline_spec(geometry))
    write_viewer(tmp_path, "nyc")
    server = start_server(tmp_path)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=str(CHROMIUM))
            page = b.new_page(viewport={"width": 1000, "height": 700})
            page.goto(server.url + f"index.html#{PLACEHOLDER[0]},{PLACEHOLDER[1]}")
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            assert "1 placeholder (dimmed render, not generated yet)" in page.inner_text("#status")
            # The placeholder is centred at 1:1; its generated left neighbour shows its right edge.
            for key, at, says in ((PLACEHOLDER, 0.5, True), ((-24, 21), 0.9, False)):
                pos = page.evaluate(
                    """([x, y, at]) => { const it = isonyc.viewer.world.getItemAt(0);
                        const p = it.imageToViewerElementCoordinates(new OpenSeadragon.Point(
                          (x - isonyc.side.grid.x0 + at) * 512, (y - isonyc.side.grid.y0 + 0.5) * 512));
                        const r = document.getElementById('map').getBoundingClientRect();
                        return [r.left + p.x, r.top + p.y]; }""",
                    [*key, at],
                )
                page.mouse.move(*pos)
                text = page.inner_text("#quadrant")
                assert text.startswith(f"{key[0]}, {key[1]}") and ("placeholder" in text) == says
            page.screenshot(path="/tmp/publish_battery_viewer.png")
            b.close()
    finally:
        server.close()
