"""The viewer's layer switcher, layer deep links and swipe compare, in a real headless Chromium.

The map directory holds the base pyramid and two derived pyramids (``demo_night``, ``demo_snow``) built by the real
pyramid builder from a real LocalTileStore; each layer has its own flat colour, so the screenshot says which layer
shows where.
"""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.images import png_bytes
from isonyc_dagster.publish.build import build_pyramid
from isonyc_dagster.publish.serve import start_server
from isonyc_dagster.publish.viewer import write_viewer
from isonyc_dagster.store.base import TileWrite
from isonyc_dagster.store.local import LocalTileStore
from tests.test_viewer_browser import VIEW, browser, osd_or_skip  # noqa: F401  (browser is a fixture)

GRID = (0, 0, 1, 1)
COLOURS = {"generation": (200, 120, 60), "layer_night": (20, 30, 90), "layer_snow": (235, 240, 250)}


def _tile(rgb: tuple[int, int, int]) -> np.ndarray:
    a = np.empty((512, 512, 3), np.uint8)
    a[:] = rgb
    a[::8, ::8] = (rgb[0] // 2, rgb[1] // 2, rgb[2] // 2)  # some detail: not a blank tile
    return a


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    osd_or_skip()
    root = tmp_path_factory.mktemp("layers")
    store = LocalTileStore(root / "store")
    keys = [(x, y) for x in (0, 1) for y in (0, 1)]
    for layer, rgb in COLOURS.items():
        store.put_tiles([TileWrite(layer, x, y, png_bytes(_tile(rgb)), {"test": True}) for x, y in keys])
    meta = {"map": {"name": "demo"}, "title": "Layers"}
    build_pyramid(store, root / "map", grid=GRID, meta=meta, workers=1)
    for label, layer in (("night", "layer_night"), ("snow", "layer_snow")):
        build_pyramid(store, root / "map", grid=GRID, layer=layer, meta=meta, name=f"demo_{label}", workers=1)
    store.close()
    write_viewer(root / "map", "demo")
    server = start_server(root / "map")
    yield server
    server.close()


SETTLE = """async () => {
  const v = isonyc.viewer, t0 = Date.now();
  const shown = () => [...Array(v.world.getItemCount()).keys()]
    .map((i) => v.world.getItemAt(i)).filter((it) => it.getOpacity() > 0);
  const ok = await new Promise((done) => {
    const check = () => {
      const ready = document.body.dataset.layersState === "ready" && shown().every((it) => it.getFullyLoaded());
      if (ready && !v.world.needsDraw()) done(true);
      else if (Date.now() - t0 > 20000) done(false);
      else setTimeout(check, 50);
    };
    check();
  });
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return ok ? null : JSON.stringify({state: document.body.dataset.layersState,
    items: shown().map((it) => [it.source.url || "", it.getFullyLoaded()]), draw: v.world.needsDraw()});
}"""


def open_page(browser, url: str):  # noqa: F811
    page = browser.new_page(viewport=VIEW, device_scale_factor=1)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    page.wait_for_selector("#layer-buttons button", timeout=30_000, state="attached")
    page.errors = errors
    return page


def map_colour_at(page, fx: float) -> tuple[int, int, int]:
    """The map's colour in a column at fraction ``fx`` of the viewer's width (median over a band of rows)."""
    stuck = page.evaluate(SETTLE)
    assert stuck is None, f"the map did not settle: {stuck}"
    rgb = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
    x = int(fx * rgb.shape[1])
    band = rgb[rgb.shape[0] // 4 : rgb.shape[0] // 3, x - 3 : x + 3].reshape(-1, 3)
    return tuple(int(v) for v in np.median(band, axis=0))


def near(c: tuple[int, int, int], layer: str, tol: int = 12) -> bool:
    return max(abs(a - b) for a, b in zip(c, COLOURS[layer], strict=True)) <= tol


def _zoom_to_fill(page) -> None:
    """Fit the map's centre to the whole viewer, so every sampled column shows map pixels."""
    page.evaluate(
        """() => { const v = isonyc.viewer, it = v.world.getItemAt(0);
                   const r = it.imageToViewportRectangle(256, 256, 512, 400);
                   v.viewport.fitBounds(r, true); }"""
    )


def test_switcher_lists_existing_layers_and_switches(browser, site):  # noqa: F811
    page = open_page(browser, site.url)
    names = page.eval_on_selector_all("#layer-buttons button", "bs => bs.map((b) => b.dataset.layer)")
    assert names == ["base", "night", "snow"]  # no dark, render or water pyramid in this map
    _zoom_to_fill(page)
    assert near(map_colour_at(page, 0.5), "generation")
    page.click("#layer-buttons button[data-layer=night]")
    assert page.get_attribute("#layer-buttons button[data-layer=night]", "aria-pressed") == "true"
    assert near(map_colour_at(page, 0.5), "layer_night")
    assert parse_qs(urlparse(page.url).query)["layer"] == ["night"]
    page.click("#layer-buttons button[data-layer=base]")
    assert near(map_colour_at(page, 0.5), "generation")
    assert "layer" not in parse_qs(urlparse(page.url).query)
    assert page.errors == []
    page.close()


def test_deep_link_carries_layer_and_quadrant(browser, site):  # noqa: F811
    page = open_page(browser, site.url + "?layer=snow#1,1")
    assert page.get_attribute("body", "data-layer") == "snow"
    assert page.text_content("#selected") == "1, 1"
    assert near(map_colour_at(page, 0.5), "layer_snow")
    url = urlparse(page.url)
    assert parse_qs(url.query)["layer"] == ["snow"] and url.fragment == "1,1"
    page.close()
    # An unknown layer falls back to the base, and says so.
    page = open_page(browser, site.url + "?layer=fog")
    assert page.evaluate(SETTLE) is None
    assert page.get_attribute("body", "data-layer") == "base"
    assert "No layer fog" in page.text_content("#layer-note")
    page.close()


def test_swipe_compare_shows_one_layer_each_side_of_the_divider(browser, site):  # noqa: F811
    page = open_page(browser, site.url + "?layer=night&compare=snow&split=0.5")
    _zoom_to_fill(page)
    assert page.is_visible("#divider") and page.is_visible("#split")
    assert near(map_colour_at(page, 0.3), "layer_night")
    assert near(map_colour_at(page, 0.7), "layer_snow")
    # Drag the divider to a quarter: the column at 30 % now shows the compared layer; the URL keeps the split.
    page.eval_on_selector("#split", "el => { el.value = '25'; el.dispatchEvent(new Event('input')); }")
    assert near(map_colour_at(page, 0.3), "layer_snow")
    assert near(map_colour_at(page, 0.15), "layer_night")
    assert parse_qs(urlparse(page.url).query)["split"] == ["0.250"]
    # Compare against the base (which stays the bottom item): the layer shows left of the divider.
    page.select_option("#compare-layer", "base")
    assert near(map_colour_at(page, 0.15), "layer_night")
    assert near(map_colour_at(page, 0.6), "generation")
    page.select_option("#compare-layer", "")
    assert near(map_colour_at(page, 0.6), "layer_night") and not page.is_visible("#divider")
    page.screenshot(path="/tmp/viewer_layers.png")
    assert page.errors == []
    page.close()
