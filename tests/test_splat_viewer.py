"""The splat viewer page (publish/viewer/splat.html: three.js + Spark) in a real headless Chromium, served by our own
HTTP server from a map directory that holds one small coloured splat scene written here with plyfile (the standard
3DGS layout), so the page is tested without the lift pipeline."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.publish.build import build_pyramid
from isonyc_dagster.publish.scenes import (
    SceneError,
    find_splat_libs,
    install_scene,
    scene_staging_dir,
    write_splat_viewer,
)
from isonyc_dagster.publish.serve import start_server
from isonyc_dagster.publish.viewer import write_viewer
from isonyc_dagster.store.local import LocalTileStore
from tests.test_pyramid import fill_store

CHROMIUM = Path("/usr/bin/chromium")
VIEW = {"width": 640, "height": 480}
BACKGROUND = np.array([0x1B, 0x23, 0x30])  # splat.html's clear colour
SH_C0 = 0.28209479177387814


def write_box_ply(path: Path, n: int = 14) -> int:
    """A 40 × 40 × 30 m box of splats in map metres (east, north, height), each face its own colour; returns the count."""
    from plyfile import PlyData, PlyElement

    t = np.linspace(0.0, 1.0, n)
    a, b = (g.ravel() for g in np.meshgrid(t, t))
    one, zero = np.ones_like(a), np.zeros_like(a)
    faces = [  # (unit-cube points, colour)
        (np.stack([a, b, zero], 1), (0.9, 0.9, 0.9)),  # floor
        (np.stack([a, b, one], 1), (0.95, 0.2, 0.2)),  # roof: red
        (np.stack([zero, a, b], 1), (0.2, 0.8, 0.2)),  # west: green
        (np.stack([one, a, b], 1), (0.2, 0.3, 0.95)),  # east: blue
        (np.stack([a, zero, b], 1), (0.95, 0.85, 0.1)),  # south: yellow
        (np.stack([a, one, b], 1), (0.8, 0.2, 0.9)),  # north: magenta
    ]
    xyz = np.concatenate([p for p, _ in faces]) * np.array([40.0, 40.0, 30.0]) + np.array(
        [1200.0, -800.0, 0.0]
    )
    rgb = np.concatenate([np.tile(c, (len(p), 1)) for p, c in faces])
    m = len(xyz)
    fields = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    fields += ["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    v = np.zeros(m, dtype=[(f, "f4") for f in fields])
    v["x"], v["y"], v["z"] = xyz.T
    for i in range(3):
        v[f"f_dc_{i}"] = (rgb[:, i] - 0.5) / SH_C0
        v[f"scale_{i}"] = np.log(1.6)
    v["opacity"] = 4.0  # logit: ~0.98
    v["rot_0"] = 1.0
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))
    return m


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    try:
        find_splat_libs()
    except SceneError as e:
        pytest.skip(f"three.js/Spark missing: {e}")
    base = tmp_path_factory.mktemp("splat")
    root = base / "map"
    # A small map (2 × 2 quadrants) with its viewer, so the map page's "3D" links are tested on the same site.
    store = LocalTileStore(base / "store")
    fill_store(store, [(x, y) for x in range(2) for y in range(2)])
    build_pyramid(store, root, grid=(0, 0, 1, 1), meta={"map": {"name": "demo"}, "title": "Demo"}, workers=1)
    store.close()
    write_viewer(root, "demo")
    write_splat_viewer(root)
    staged = scene_staging_dir(root, "box")
    count = write_box_ply(staged / "gf.ply")
    install_scene(
        root,
        "box",
        staged,
        {"x0": 1, "y0": 0, "w": 1, "h": 2, "splats": count, "azimuth_deg": -15.0, "elevation_deg": -45.0},
    )
    server = start_server(root)
    yield server, count
    server.close()


@pytest.fixture(scope="module")
def page(site):
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from isonyc_dagster.photoreal.browser import CHROMIUM_ARGS  # WebGL2 on SwiftShader without a GPU

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        pg = browser.new_page(viewport=VIEW)
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.errors = errors  # type: ignore[attr-defined]
        yield pg
        browser.close()


def _shot(pg) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(pg.screenshot())).convert("RGB")).astype(int)


def _scene_pixels(img: np.ndarray) -> np.ndarray:
    """Mask of pixels that are not the page background (the panel in the corner is cut away)."""
    mask = np.abs(img - BACKGROUND).sum(axis=2) > 30
    mask[:140, :360] = False
    return mask


def _wait_drawn(pg, min_fraction: float = 0.01, timeout_s: float = 30.0) -> np.ndarray:
    t0 = time.monotonic()
    while True:
        img = _shot(pg)
        if _scene_pixels(img).mean() >= min_fraction or time.monotonic() - t0 > timeout_s:
            return img
        pg.wait_for_timeout(300)


def test_viewer_shows_the_scene_and_the_picture_changes_when_the_camera_orbits(site, page) -> None:
    server, count = site
    page.goto(f"{server.url}splat.html?scene=box")
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=60_000)
    status = page.text_content("#status")
    assert page.get_attribute("body", "data-state") == "ready", status
    assert f"{count:,} splats" in status
    assert page.evaluate("window.isonycSplat.splats") == count

    before = _wait_drawn(page)
    scene = _scene_pixels(before)
    assert scene.mean() > 0.01, "the canvas shows no splats"
    colours = before[scene]
    assert (colours[:, 0] > 150).sum() > 100 and (colours[:, 0] < 120).sum() > 100, (
        "expected several face colours"
    )

    # A mouse drag on the canvas turns the camera through OrbitControls; the picture changes.
    page.mouse.move(420, 300)
    page.mouse.down()
    page.mouse.move(520, 320, steps=8)
    page.mouse.up()
    page.wait_for_timeout(800)
    dragged = _wait_drawn(page)
    changed = (np.abs(dragged - before).sum(axis=2) > 40).mean()
    assert changed > 0.005, f"only {changed:.4f} of the pixels changed after a drag"

    # The same through the page's hook: half a turn shows the box from the other side.
    page.evaluate("window.isonycSplat.orbit(180, 0)")
    page.wait_for_timeout(800)
    turned = _wait_drawn(page)
    assert _scene_pixels(turned).mean() > 0.01
    assert (np.abs(turned - dragged).sum(axis=2) > 40).mean() > 0.005
    Image.fromarray(turned.astype(np.uint8)).save("/tmp/splat_viewer_box.png")
    assert page.errors == []  # type: ignore[attr-defined]


def test_unknown_scene_says_so(site, page) -> None:
    server, _ = site
    page.goto(f"{server.url}splat.html?scene=nowhere")
    page.wait_for_selector("body[data-state=error]", timeout=60_000)
    assert "scenes/nowhere/gf.ply" in page.text_content("#status")


def test_scene_index_lists_installed_scenes(site) -> None:
    server, count = site
    index = json.loads(Path(server.root, "scenes", "index.json").read_text())
    assert [s["name"] for s in index["scenes"]] == ["box"]
    assert index["scenes"][0]["ply"] == "scenes/box/gf.ply" and index["scenes"][0]["splats"] == count


def test_map_viewer_outlines_each_scene_with_a_3d_link_that_opens_the_splat_viewer(site, page) -> None:
    server, count = site
    page.goto(f"{server.url}index.html")
    page.wait_for_selector("body[data-state=ready]", timeout=60_000)
    page.wait_for_selector("#scenes a.scene-3d", timeout=10_000)
    assert page.text_content("#scenes .label") == "3D scenes"
    listed = page.eval_on_selector_all(
        "#scenes a.scene-3d", "els => els.map(a => [a.textContent, a.getAttribute('href')])"
    )
    assert listed == [["box", "splat.html?scene=box"]]
    label = page.locator(".scene-region a.scene-3d")
    assert label.text_content() == "3D · box"
    assert f"{count:,} splats" in label.get_attribute("title")
    # The outline covers the region's quadrants (x 1, y 0..1): the right half of the 2 × 2 map.
    region = page.locator(".scene-region").bounding_box()
    left = page.evaluate(
        "(() => { const it = isonyc.viewer.world.getItemAt(0);"
        " const r = it.imageToViewerElementCoordinates(new OpenSeadragon.Point(512, 0)); return [r.x, r.y]; })()"
    )
    assert abs(region["x"] - left[0]) <= 2 and abs(region["y"] - left[1]) <= 2
    assert region["height"] == pytest.approx(2 * region["width"], rel=0.02)
    # Clicking the label on the map opens the scene in the splat viewer.
    with page.context.expect_page() as popup:
        label.click()
    scene_page = popup.value
    scene_page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=60_000)
    assert scene_page.url == f"{server.url}splat.html?scene=box"
    assert scene_page.get_attribute("body", "data-state") == "ready", scene_page.text_content("#status")
    page.wait_for_timeout(500)
    assert len(page.context.pages) == 2, "one click opens one scene page"
    scene_page.close()


@pytest.mark.slow  # a fresh Dagster instance (SQLite schema) is created by the request: ~10 s on a busy machine
def test_a_region_added_from_the_map_page_needs_the_console_token(site, page, tmp_path, monkeypatch) -> None:
    import dagster as dg

    from isonyc_dagster.cli.console import Console
    from isonyc_dagster.geo.config import LiftConfig
    from isonyc_dagster.lift.regions import RegionRegistry
    from isonyc_dagster.publish.serve import MapServer
    from tests.dagster_helpers import project_config

    server, _ = site
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    lift = LiftConfig(regions_file=str(tmp_path / "regions.json"))
    cfg = project_config(tmp_path, 0, 0, 1, 1, lift=lift)
    api = Console(cfg, dagster_url="http://127.0.0.1:9", token="s3cret", map_dir=server.root)
    with MapServer(server.root, port=0, api=api).start() as console_server:
        page = page.context.browser.new_page(viewport={"width": 1100, "height": 760})  # room for the console
        page.goto(f"{console_server.url}index.html#1,0")
        page.wait_for_selector("#region-form", timeout=60_000)

        def submit(name: str, w: int) -> str:
            page.fill("#region-form input[name=name]", name)
            page.fill("#region-form input[name=w]", str(w))
            page.fill("#region-form input[name=h]", "1")
            page.click("#region-form button")
            page.wait_for_function("document.querySelector('#region-form output').textContent !== ''")
            text = page.text_content("#region-form output")
            page.evaluate("document.querySelector('#region-form output').textContent = ''")
            return text

        assert "console token" in submit("east", 1)  # no token yet: refused
        assert RegionRegistry(lift.regions_file, []).list() == []
        page.evaluate("sessionStorage.setItem('isonyc-console-token', 's3cret')")
        assert "outside the map's quadrants" in submit("wide", 2)  # x 1..2: beyond the 2 × 2 map
        assert submit("east", 1).startswith("added east")
        page.close()
    assert [r.to_json() for r in RegionRegistry(lift.regions_file, []).list()] == [
        {"name": "east", "x0": 1, "y0": 0, "w": 1, "h": 1}
    ]
    with dg.DagsterInstance.get() as inst:
        assert inst.get_dynamic_partitions("regions") == ["east"]


def test_install_scene_replaces_the_previous_scene_whole_and_missing_libraries_are_one_clear_error(
    tmp_path,
) -> None:
    root = tmp_path / "map"
    for n in (1, 2):
        staged = scene_staging_dir(root, "r")
        (staged / "gf.ply").write_bytes(b"v%d" % n)
        if n == 1:
            (staged / "old-only.txt").write_text("x")
        install_scene(root, "r", staged, {"x0": 0, "y0": 0, "w": 1, "h": 1, "splats": n})
    assert sorted(p.name for p in (root / "scenes").iterdir()) == [".index.lock", "index.json", "r"]
    assert (root / "scenes" / "r" / "gf.ply").read_bytes() == b"v2" and not (
        root / "scenes" / "r" / "old-only.txt"
    ).exists()
    assert json.loads((root / "scenes" / "index.json").read_text())["scenes"][0]["splats"] == 2
    with pytest.raises(SceneError, match=r"three.js and @sparkjsdev/spark not found .*npm ci"):
        find_splat_libs(tmp_path / "nowhere")
    with pytest.raises(SceneError, match="invalid scene name"):
        scene_staging_dir(root, "../up")
