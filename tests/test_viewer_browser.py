"""The map viewer in a real headless Chromium, served by our own HTTP server from a pyramid built out of
a real LocalTileStore; plus the server's HTTP behaviour and write_viewer.

Assertions are on what a user sees: the screenshot's pixels, the readout text and the link targets.
"""

from __future__ import annotations

import io
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.publish.build import build_pyramid
from isonyc_dagster.publish.manifest import read_sidecar
from isonyc_dagster.publish.serve import MapServer, start_server
from isonyc_dagster.publish.viewer import ViewerError, find_openseadragon, write_viewer
from isonyc_dagster.store.local import LocalTileStore
from tests.test_pyramid import DETAIL, LINE, fill_store, quadrant_colours, rgb_codes

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path("/tmp/viewer_screenshot.png")
DAGSTER = "http://127.0.0.1:3000"
GRID = (-2, 3, 0, 4)  # 3 × 2 quadrants, origin away from (0, 0)
MISSING = (0, 4)
KEYS = [(x, y) for y in range(3, 5) for x in range(-2, 1) if (x, y) != MISSING]
VIEW = {"width": 1000, "height": 700}
BACKGROUND = rgb_codes(np.array([[0x1B, 0x23, 0x30]], np.uint8))  # viewer.css body background


def osd_or_skip() -> Path:
    try:
        return find_openseadragon()
    except ViewerError as e:
        pytest.skip(f"OpenSeadragon missing: {e}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    osd_or_skip()
    root = tmp_path_factory.mktemp("viewer")
    store = LocalTileStore(root / "store")
    fill_store(store, KEYS)
    meta = {
        "map": {"name": "demo"},
        "title": "Demo <map>",
        "attribution": "Buildings: NYC OTI. © OpenStreetMap contributors (ODbL).",
        "dagster_url": DAGSTER,
        "partition_key_template": "{x}|{y}",
    }
    build_pyramid(store, root / "map", grid=GRID, meta=meta, workers=2)
    store.close()
    write_viewer(root / "map", "demo")
    server = start_server(root / "map")
    yield server
    server.close()


# --- the page in Chromium ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--force-color-profile=srgb"])
        yield b
        b.close()


def open_map(browser, url: str, drawer: str | None = None):
    page = browser.new_page(viewport=VIEW, device_scale_factor=1)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + (f"?drawer={drawer}" if drawer else ""))
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    if drawer:
        got = page.evaluate("isonyc.viewer.drawer.getType()")
        if got != drawer:
            page.close()
            pytest.skip(f"this Chromium cannot run OpenSeadragon's {drawer} drawer (fell back to {got})")
    page.errors = errors
    return page


SETTLE = """async () => {
  const v = isonyc.viewer, item = v.world.getItemAt(0);
  await new Promise((done) => {
    const check = () => (item.getFullyLoaded() && !v.world.needsDraw() ? done() : setTimeout(check, 50));
    check();
  });
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
}"""


def screenshot(page) -> tuple[np.ndarray, np.ndarray]:
    """RGB pixels of the page and a mask of the map pixels not covered by UI (panel, minimap, buttons)."""
    page.evaluate(SETTLE)
    rgb = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
    rects = page.evaluate(
        """() => [document.getElementById('panel'), document.getElementById('attribution'),
                 isonyc.viewer.navigator.element, isonyc.viewer.navControl]
                .map((el) => { const r = el.getBoundingClientRect();
                               return [r.left, r.top, r.right, r.bottom]; })"""
    )
    mask = np.ones(rgb.shape[:2], bool)
    for left, top, right, bottom in rects:
        mask[max(0, int(top) - 2) : int(bottom) + 3, max(0, int(left) - 2) : int(right) + 3] = False
    return rgb, mask


def palette() -> np.ndarray:
    cols = [c for k in KEYS for c in quadrant_colours(*k)] + [DETAIL, LINE]
    return rgb_codes(np.array(cols, np.uint8))


def quadrant_pixels(rgb: np.ndarray, mask: np.ndarray, key) -> np.ndarray:
    codes = rgb_codes(rgb).reshape(rgb.shape[:2])
    return np.argwhere(np.isin(codes, rgb_codes(np.array(quadrant_colours(*key), np.uint8))) & mask)


@pytest.mark.browser
@pytest.mark.parametrize("drawer", ["webgl", "canvas"])
def test_map_is_drawn_pixel_crisp_at_one_to_one(site, browser, drawer):
    page = open_map(browser, site.url, drawer)
    rgb, mask = screenshot(page)
    # Home view: every generated quadrant is on screen in its own colours, the missing one is not drawn.
    for key in KEYS:
        assert len(quadrant_pixels(rgb, mask, key)) > 10_000, f"quadrant {key} not drawn"
    allowed = np.concatenate([palette(), BACKGROUND])  # the page shows through the missing quadrant
    codes = rgb_codes(rgb).reshape(rgb.shape[:2])
    assert np.isin(codes[mask], allowed).all()  # nearest, even zoomed out

    # Zoom to 1:1 (the maximum) on quadrant (-1, 4)'s 1-px dot, at a deliberately fractional offset:
    # any smoothing would blend neighbouring pixels into colours the source does not have.
    dot = ((-1 - GRID[0]) * 512 + 200 + 0.3, (4 - GRID[1]) * 512 + 201 + 0.6)
    page.evaluate(
        """([x, y]) => { const v = isonyc.viewer, item = v.world.getItemAt(0);
             v.viewport.zoomTo(v.viewport.getMaxZoom(), null, true);
             v.viewport.panTo(item.imageToViewportCoordinates(x, y), true); }""",
        list(dot),
    )
    assert page.evaluate("isonyc.viewer.viewport.getMaxZoom()") == pytest.approx(
        page.evaluate("isonyc.viewer.world.getItemAt(0).imageToViewportZoom(1)")
    )  # maxZoomPixelRatio 1: the user cannot zoom past 1:1
    rgb, mask = screenshot(page)
    Image.fromarray(rgb).save(
        SCREENSHOT if drawer == "webgl" else SCREENSHOT.with_name(f"viewer_screenshot_{drawer}.png")
    )
    codes = rgb_codes(rgb).reshape(rgb.shape[:2])
    shown = codes[mask]
    assert np.isin(shown, allowed).all(), (
        f"{np.count_nonzero(~np.isin(shown, allowed))} interpolated pixels at 1:1 with the {drawer} drawer"
    )
    assert np.isin(shown, palette()).mean() > 0.5  # mostly map, not page background
    # the dot is one screen pixel, at the centre of the map where we put it
    white = np.argwhere((codes == rgb_codes(np.array([DETAIL], np.uint8))[0]) & mask)
    assert len(white) == 1, white
    (wy, wx) = white[0]
    assert abs(wx - VIEW["width"] / 2) <= 1 and abs(wy - VIEW["height"] / 2) <= 1
    # the 1-px lines are 100 image px right of the dot (and 512 px apart): the same on screen at 1:1
    black = np.flatnonzero((rgb[wy] == 0).all(-1) & mask[wy])
    assert wx + 100 in black and all((b - wx - 100) % 512 == 0 for b in black), black
    # 8-px checker cells stay 8 px
    runs = np.diff(np.flatnonzero((rgb[wy - 40, 1:] != rgb[wy - 40, :-1]).any(-1)))
    assert np.median(runs) == 8
    assert not page.errors
    page.close()


@pytest.mark.browser
def test_hover_readout_and_dagster_links_name_the_quadrant_under_the_mouse(site, browser):
    page = open_map(browser, site.url)
    rgb, mask = screenshot(page)
    assert page.text_content("#quadrant") == "—"
    for key in [(-2, 3), (-1, 4), (0, 3)]:
        # hover the middle of where the user sees this quadrant's colours
        pix = quadrant_pixels(rgb, mask, key)
        y, x = np.median(pix, axis=0)
        page.mouse.move(float(x), float(y))
        page.wait_for_function(
            f"document.getElementById('quadrant').textContent === '{key[0]}, {key[1]}'", timeout=5000
        )
        href = page.get_attribute("#quadrant-link", "href")
        assert (
            href
            == f"{DAGSTER}/assets/generation?view=partitions&partition={quote(f'{key[0]}|{key[1]}', safe='')}"
        )
        assert page.is_visible("#quadrant-link")
    # click selects: the selected readout and its link stay while the mouse moves on
    pix = quadrant_pixels(rgb, mask, (-1, 4))
    y, x = np.median(pix, axis=0)
    page.mouse.click(float(x), float(y))
    page.wait_for_function("document.getElementById('selected').textContent === '-1, 4'", timeout=5000)
    page.mouse.move(5, VIEW["height"] - 5)
    assert (
        page.get_attribute("#selected-link", "href")
        == f"{DAGSTER}/assets/generation?view=partitions&partition=-1%7C4"
    )
    assert page.evaluate("location.hash") == "#-1,4"
    assert page.is_visible(".selected-quadrant")
    # attribution and title from the sidecar
    assert page.text_content("#attribution") == "Buildings: NYC OTI. © OpenStreetMap contributors (ODbL)."
    assert page.title() == "Demo <map>"
    page.close()


@pytest.mark.browser
def test_deep_link_opens_a_quadrant_at_one_to_one_and_bad_map_names_show_an_error(site, browser):
    page = open_map(browser, site.url + "#0,3")
    assert page.text_content("#selected") == "0, 3"
    rgb, mask = screenshot(page)
    # at 1:1 the centre of the screen is quadrant (0, 3): a 512-px block of its colours around it
    pix = quadrant_pixels(rgb, mask, (0, 3))
    assert len(pix) > 200_000
    page.close()

    page = browser.new_page(viewport=VIEW)
    page.goto(site.url + "?map=nope")
    page.wait_for_selector("body[data-state=error]", timeout=15_000)
    assert "nope.json" in page.text_content("#status")
    page.close()


# --- the HTTP server --------------------------------------------------------------------------------


def get(url: str, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_server_types_caching_ranges_and_hidden_files(site):
    url = site.url
    assert site.server_address[0] == "127.0.0.1" and url.startswith("http://127.0.0.1:")
    (site.root / "sample.webp").write_bytes(b"RIFF0000WEBPVP8L")
    (site.root / "sample.pmtiles").write_bytes(bytes(range(256)))
    for path, ctype in [
        ("", "text/html"),
        ("demo.dzi", "application/xml"),
        ("demo.json", "application/json"),
        ("demo_files/10/0_0.png", "image/png"),
        ("sample.webp", "image/webp"),
        ("viewer.js", "text/javascript"),
        ("viewer.css", "text/css"),
        ("sample.pmtiles", "application/vnd.pmtiles"),
    ]:
        status, headers, _ = get(url + path)
        assert status == 200, path
        assert headers["Content-Type"].startswith(ctype), (path, headers["Content-Type"])
        assert headers["Cache-Control"] == "no-cache"
    assert get(url + "demo.json")[2] == (site.root / "demo.json").read_bytes()

    # revalidation: tiles change in place on update_pyramid, so clients revalidate with the ETag
    status, headers, body = get(url + "demo_files/11/0_0.png")
    assert status == 200 and headers["ETag"] and body == (site.root / "demo_files/11/0_0.png").read_bytes()
    assert get(url + "demo_files/11/0_0.png", {"If-None-Match": headers["ETag"]})[0] == 304

    # byte ranges, as PMTiles clients read archives
    status, headers, body = get(url + "sample.pmtiles", {"Range": "bytes=10-19"})
    assert status == 206 and body == bytes(range(10, 20)) and headers["Content-Range"] == "bytes 10-19/256"
    assert get(url + "sample.pmtiles", {"Range": "bytes=-6"})[2] == bytes(range(250, 256))
    assert get(url + "sample.pmtiles", {"Range": "bytes=300-"})[0] == 416

    # the manifest and lock beside the tiles are never served, however the path is spelled
    assert (site.root / ".demo.manifest.sqlite").exists()
    assert get(url + ".demo.manifest.sqlite")[0] == 404
    assert get(url + "%2edemo.manifest.sqlite")[0] == 404
    assert get(url + "../store/index.sqlite")[0] == 404


def test_server_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; build the pyramid"):
        MapServer(tmp_path / "nope")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:\d+ .*choose another port"):
            MapServer(tmp_path, port=s.getsockname()[1])


# --- write_viewer -----------------------------------------------------------------------------------


def test_write_viewer_installs_openseadragon_into_the_map_directory_only(site):
    root = site.root
    for f in [
        "index.html",
        "viewer.js",
        "viewer.css",
        "openseadragon/openseadragon.min.js",
        "openseadragon/LICENSE.txt",
    ]:
        assert (root / f).is_file(), f
    assert (root / "openseadragon/images/zoomin_rest.png").is_file()
    page = (root / "index.html").read_text()
    assert 'data-map="demo"' in page and "<title>Demo &lt;map&gt;</title>" in page  # escaped
    assert read_sidecar(root)["title"] == "Demo <map>"
    repo_viewer = Path(__file__).resolve().parents[1] / "isonyc_dagster" / "viewer"
    assert not (repo_viewer / "openseadragon").exists()


def test_write_viewer_errors_tell_the_user_what_to_do(tmp_path):
    with pytest.raises(ViewerError, match="run build_pyramid first"):
        write_viewer(tmp_path)
    store = LocalTileStore(tmp_path / "store")
    fill_store(store, [(0, 0)])
    build_pyramid(store, tmp_path / "map", grid=(0, 0, 0, 0), meta={"map": {"name": "m"}})
    store.close()
    with pytest.raises(ViewerError, match=r"OpenSeadragon not found .*Run `npm ci`"):
        write_viewer(tmp_path / "map", openseadragon_dir=tmp_path / "no_node_modules")
