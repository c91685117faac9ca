"""The photoreal layer in a real headless Chromium (three.js + 3d-tiles-renderer from node_modules), rendering a
real 3D Tiles tileset built from real Midtown East buildings and served from 127.0.0.1.

Alignment is judged against the whitebox renderer of the same buildings: the photoreal building silhouette must
match the whitebox building mask (IoU ≥ 0.97, best shift zero, ≤ 1 px at footprint corners), for quadrants of
the production map (≈ 2 km from its seed) and of a map seeded 7 km away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
from scipy import ndimage

from isonyc_dagster.geo.config import LatLng, MapConfig
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geo.surfaces import Surface
from isonyc_dagster.geodata.load import load_city
from isonyc_dagster.photoreal import (
    PhotorealError,
    PhotorealRenderer,
    PhotorealRenderError,
    PhotorealSourceError,
    RenderSettings,
    TileCache,
    find_node_modules,
    resolve_source,
    strip_secrets,
)
from isonyc_dagster.photoreal.browser import redact
from isonyc_dagster.render import Renderer
from tests.conftest import geodata_file
from tests.photoreal_fixture import GROUND_RGB, SKY_RGB, TileServer, build_tileset

CHROMIUM = Path("/usr/bin/chromium")
GROUND_H = -31.3
BUILDINGS = "midtown_east_buildings_doitt.geojson"
#: A second map, seeded at the Battery (~7 km from Midtown East): far quadrants, other grid convergence.
FAR_MAP = MapConfig(seed=LatLng(lat=40.7033, lng=-74.0170))


def _skip_without_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM}")
    try:
        find_node_modules()
    except PhotorealError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tileset(geometry, tmp_path_factory):
    _skip_without_browser()
    city = load_city(geometry, [geodata_file(BUILDINGS)])
    root = tmp_path_factory.mktemp("tiles")
    build_tileset(city, geometry, root, GROUND_H)
    server = TileServer(root)
    yield city, server
    server.close()


@pytest.fixture(scope="module")
def renderer(geometry, tileset):
    _, server = tileset
    with PhotorealRenderer(
        geometry, resolve_source(server.url), RenderSettings(ground_height_m=GROUND_H)
    ) as r:
        yield r


def building_mask_photoreal(rgb: np.ndarray) -> np.ndarray:
    near = lambda c: np.abs(rgb.astype(int) - np.array(c)).max(axis=-1) <= 6  # noqa: E731
    assert not near(SKY_RGB).any(), "the frame shows sky: the ground plane does not cover it"
    return ~near(GROUND_RGB)


def building_mask_whitebox(surface: np.ndarray) -> np.ndarray:
    return np.isin(surface, [Surface.ROOF, Surface.WALL_LEFT, Surface.WALL_RIGHT])


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def corner_offset_px(
    geometry: MapGeometry, city, origin: tuple[int, int], wb: np.ndarray, pr: np.ndarray
) -> float:
    """Largest offset (px, in x or y) from a whitebox silhouette pixel at a footprint corner (ground or roof) to
    the nearest photoreal silhouette pixel."""
    pts = []
    for b in city.buildings:
        for ring in [getattr(b.footprint, "exterior", None)] if b.footprint.geom_type == "Polygon" else []:
            c = np.asarray(ring.coords)
            for h in (0.0, b.height_m):
                px, py = geometry.ground_to_pixel(c[:, 0], c[:, 1], h)
                pts.append(np.stack([px - origin[0], py - origin[1]], axis=1))
    pts = np.concatenate(pts)
    h, w = wb.shape
    inside = (pts[:, 0] >= 2) & (pts[:, 0] < w - 2) & (pts[:, 1] >= 2) & (pts[:, 1] < h - 2)
    # Chessboard distance: an offset of at most 1 px in x and in y.
    dist_pr = ndimage.distance_transform_cdt(~_boundary(pr), metric="chessboard")
    wb_edge = _boundary(wb)
    worst, n = 0.0, 0
    for x, y in pts[inside]:
        r0, c0 = int(y), int(x)
        win = wb_edge[r0 - 1 : r0 + 2, c0 - 1 : c0 + 2]
        if win.any():  # this corner is on the visible whitebox silhouette
            n += 1
            worst = max(worst, float(dist_pr[r0 - 1 : r0 + 2, c0 - 1 : c0 + 2][win].max()))
    assert n >= 4, f"only {n} silhouette corners in the window: pick a busier one"
    return worst


def best_shift(wb: np.ndarray, pr: np.ndarray, r: int = 2) -> tuple[int, int]:
    scores = {}
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            s = np.roll(pr, (dy, dx), axis=(0, 1))[r:-r, r:-r]
            scores[(dx, dy)] = (s & wb[r:-r, r:-r]).sum() / max((s | wb[r:-r, r:-r]).sum(), 1)
    return max(scores, key=scores.get)


def _busy_quadrants(geometry: MapGeometry, city, n: int) -> list[tuple[int, int]]:
    """Quadrants with the most whitebox building pixels, spread over the area (≥ 3 quadrants apart)."""
    wb = Renderer(city, geometry)
    cents = np.array([[b.footprint.centroid.x, b.footprint.centroid.y] for b in city.buildings])
    qx, qy = geometry.quadrant_of_pixel(*geometry.ground_to_pixel(cents[:, 0], cents[:, 1], 30.0))
    keys, counts = np.unique(np.stack([qx, qy], 1), axis=0, return_counts=True)
    picked: list[tuple[int, int]] = []
    for k in keys[np.argsort(-counts)]:
        k = (int(k[0]), int(k[1]))
        if all(max(abs(k[0] - p[0]), abs(k[1] - p[1])) >= 3 for p in picked):
            m = building_mask_whitebox(wb.render_quadrant(*k).surface).mean()
            if 0.25 < m < 0.85:
                picked.append(k)
        if len(picked) == n:
            break
    return picked


def _check_alignment(geometry, city, results, whitebox: Renderer, report: list[str]) -> None:
    for res in results:
        x0, y0, w, h = res.provenance["window"]
        wb = building_mask_whitebox(whitebox.render_window(x0, y0, w, h).surface)
        pr = building_mask_photoreal(res.rgb)
        iou = (wb & pr).sum() / (wb | pr).sum()
        corner = corner_offset_px(geometry, city, (x0, y0), wb, pr)
        shift = best_shift(wb, pr)
        report.append(f"window {x0},{y0}: IoU {iou:.4f}, corner offset {corner:.2f} px, best shift {shift}")
        assert iou >= 0.97, report[-1]
        assert corner <= 1.0, report[-1]
        assert shift == (0, 0), report[-1]


def test_photoreal_silhouettes_match_the_whitebox(geometry, tileset, renderer, capsys):
    city, _ = tileset
    keys = _busy_quadrants(geometry, city, 4)
    assert len(keys) >= 3
    results = renderer.render_quadrants(keys)
    report: list[str] = []
    _check_alignment(geometry, city, results, Renderer(city, geometry), report)
    for res in results:
        p = res.provenance
        assert p["tiles"]["failed"] == 0 and p["tiles"]["queued"] == 0 and p["attempts"] == 1
        assert p["camera_fit_residual_px"] < 0.25
        assert "NYC OTI" in p["attribution"]
    with capsys.disabled():
        print("\nphotoreal alignment (production map):\n  " + "\n  ".join(report))


def test_alignment_holds_on_a_map_seeded_7_km_away(tileset, tmp_path):
    """The same ECEF tileset through another map's geometry: quadrants far from that map's seed."""
    far = MapGeometry(FAR_MAP)
    city = load_city(far, [geodata_file(BUILDINGS)])
    _, server = tileset
    keys = _busy_quadrants(far, city, 2)
    d = far.seed_distance_m(
        *[float(v) for v in far.pixel_to_lnglat(keys[0][0] * 512, keys[0][1] * 512)][::-1]
    )
    assert float(d) > 5000
    with PhotorealRenderer(far, resolve_source(server.url), RenderSettings(ground_height_m=GROUND_H)) as r:
        results = r.render_quadrants(keys)
    report: list[str] = []
    _check_alignment(far, city, results, Renderer(city, far), report)


def test_four_quadrants_stitch_into_the_2x2_render(geometry, tileset, renderer):
    city, _ = tileset
    x, y = _busy_quadrants(geometry, city, 1)[0]
    tile = renderer.render_tile(x, y).rgb
    quads = renderer.render_quadrants([(x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)])
    q = geometry.q
    stitched = np.zeros_like(tile)
    for res in quads:
        ox, oy = res.origin_px[0] - x * q, res.origin_px[1] - y * q
        stitched[oy : oy + q, ox : ox + q] = res.rgb
    a, b = building_mask_photoreal(stitched), building_mask_photoreal(tile)
    diff = a ^ b
    # Any difference may only be sub-pixel rasterization on a silhouette edge, never an offset.
    near_edge = ndimage.distance_transform_edt(~_boundary(b)) <= 1.0
    assert not (diff & ~near_edge).any()
    assert diff.mean() < 0.001, f"{diff.sum()} px differ"
    assert best_shift(b, a) == (0, 0)
    seam_rows = [q - 1, q]
    assert (diff[seam_rows, :].sum() + diff[:, seam_rows].sum()) <= 4


def test_renders_are_deterministic_across_page_reuse(geometry, tileset, renderer):
    city, _ = tileset
    x, y = _busy_quadrants(geometry, city, 1)[0]
    first = renderer.render_quadrant(x, y).rgb
    renderer.render_quadrant(x + 3, y - 2)  # other tiles loaded, camera elsewhere
    assert np.array_equal(first, renderer.render_quadrant(x, y).rgb)


# --- faults ----------------------------------------------------------------------------------------------


@pytest.fixture
def fault_server(geometry, tileset):
    city, server = tileset
    server.missing.clear()
    server.stall.clear()
    server.on_request = None
    yield city, server
    server.missing.clear()
    server.stall.clear()
    server.on_request = None


def test_tiles_that_404_fail_clearly_after_retries(geometry, fault_server):
    city, server = fault_server
    server.missing.update({"detail_0.glb", "detail_1.glb", "detail_2.glb", "detail_3.glb"})
    x, y = _busy_quadrants(geometry, city, 1)[0]
    settings = RenderSettings(ground_height_m=GROUND_H, retries=1, timeout_s=20)
    with (
        PhotorealRenderer(geometry, resolve_source(server.url), settings) as r,
        pytest.raises(PhotorealRenderError, match=r"failed after 2 attempt\(s\).*detail_\d\.glb") as ei,
    ):
        r.render_quadrant(x, y)
    assert len(ei.value.attempts) == 2
    assert all("404" in a for a in ei.value.attempts), ei.value.attempts


def test_a_stalled_server_beyond_the_limit_fails_in_bounded_time(geometry, fault_server):
    city, server = fault_server
    server.stall.update({f"detail_{i}.glb": 8.0 for i in range(4)})
    x, y = _busy_quadrants(geometry, city, 1)[0]
    settings = RenderSettings(ground_height_m=GROUND_H, retries=1, timeout_s=2.0, fetch_timeout_s=2.0)
    t0 = time.monotonic()
    with (
        PhotorealRenderer(geometry, resolve_source(server.url), settings) as r,
        pytest.raises(PhotorealRenderError) as ei,
    ):
        r.render_quadrant(x, y)
    assert time.monotonic() - t0 < 2 * (2.0 + 3.0) + 10
    assert len(ei.value.attempts) == 2
    assert all(("incomplete after" in a) or ("ReadTimeout" in a) or ("504" in a) for a in ei.value.attempts)


def _kill_chromium_renderers() -> int:
    """SIGKILL the Chromium renderer processes this test process started (its descendants only)."""
    n = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if "--type=renderer" in " ".join(p.cmdline()):
                p.kill()
                n += 1
        except psutil.NoSuchProcess:
            pass
    return n


def _kill_once(killed: list[int], kill: Callable[[], int]) -> Callable[[str], None]:
    """A tile-server hook that runs ``kill`` at the first detail-tile request and records how many processes it
    killed. The server answers on several threads: a lock makes exactly one of them kill."""
    lock = threading.Lock()

    def hook(path: str) -> None:
        with lock:
            if path.startswith("detail_") and not killed:
                killed.append(kill())
                time.sleep(0.5)

    return hook


def test_a_killed_page_is_detected_and_the_quadrant_retried_on_a_fresh_page(geometry, fault_server):
    city, server = fault_server
    killed: list[int] = []
    kill_once = _kill_once(killed, _kill_chromium_renderers)

    x, y = _busy_quadrants(geometry, city, 1)[0]
    with PhotorealRenderer(
        geometry, resolve_source(server.url), RenderSettings(ground_height_m=GROUND_H)
    ) as r:
        server.on_request = kill_once
        res = r.render_quadrant(x, y)
        server.on_request = None
        again = r.render_quadrant(x, y)
    assert killed and killed[0] >= 1
    assert res.provenance["attempts"] == 2
    assert "crashed" in res.provenance["failures"][0]
    assert r.pages_created >= 2
    assert np.array_equal(res.rgb, again.rgb)


def _kill_chromium_browser() -> int:
    """SIGKILL the Chromium browser process (not its helpers) that this test process started."""
    n = 0
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
            if cmd and "chrom" in Path(cmd[0]).name and not any(a.startswith("--type=") for a in cmd):
                p.kill()
                n += 1
        except psutil.NoSuchProcess:
            pass
    return n


def test_a_killed_chromium_is_relaunched_and_the_quadrant_retried(geometry, fault_server):
    city, server = fault_server
    killed: list[int] = []
    kill_once = _kill_once(killed, _kill_chromium_browser)

    x, y = _busy_quadrants(geometry, city, 1)[0]
    with PhotorealRenderer(
        geometry, resolve_source(server.url), RenderSettings(ground_height_m=GROUND_H)
    ) as r:
        server.on_request = kill_once
        res = r.render_quadrant(x, y)
        server.on_request = None
    assert killed and killed[0] >= 1
    assert r.browser_launches == 2 and res.provenance["attempts"] == 2
    assert "crashed" in res.provenance["failures"][0]
    wb = building_mask_whitebox(Renderer(city, geometry).render_quadrant(x, y).surface)
    pr = building_mask_photoreal(res.rgb)
    assert (pr & wb).sum() / (pr | wb).sum() >= 0.97


def test_missing_google_key_and_keys_in_urls_are_refused_clearly():
    with pytest.raises(PhotorealSourceError, match="ISONYC_GOOGLE_MAPS_API_KEY"):
        resolve_source("google", api_key=None)
    with pytest.raises(PhotorealSourceError, match="carries credentials"):
        resolve_source("https://tile.example.com/tileset.json?key=abc")
    with pytest.raises(PhotorealSourceError, match="not usable"):
        resolve_source("/some/file/tileset.json")
    src = resolve_source("google", api_key="SECRET-KEY-123")
    assert "SECRET" not in repr(src) and "SECRET" not in str(src.describe())
    child = "https://tile.googleapis.com/v1/3dtiles/datasets/CgA/files/x.glb?session=S1"
    assert "key=SECRET-KEY-123" in src.request_url(child)
    assert src.cache_key(src.request_url(child)) == strip_secrets(child)
    assert "SECRET" not in src.cache_key(src.request_url(child)) and "S1" not in src.cache_key(child)
    assert "key=" not in src.request_url("http://127.0.0.1:9/tileset.json")  # other hosts never get the key
    src.note_response(
        "https://tile.googleapis.com/v1/3dtiles/root.json",
        b'{"root": {"children": [{"content": {"uri": "/v1/3dtiles/datasets/CgA/files/a.json?session=TOKEN9"}}]}}',
    )
    assert src.session == "TOKEN9" and "session=TOKEN9" in src.request_url(child.split("?")[0])
    msg = "tile https://tile.googleapis.com/v1/a.glb?session=TOKEN9&key=SECRET-KEY-123: 403"
    assert redact(msg) == "tile https://tile.googleapis.com/v1/a.glb?session=…&key=…: 403"


# --- tile cache ------------------------------------------------------------------------------------------


def test_tile_cache_serves_repeat_renders_without_refetching(geometry, fault_server, tmp_path):
    city, server = fault_server
    x, y = _busy_quadrants(geometry, city, 1)[0]
    cache = TileCache(tmp_path / "tiles.sqlite", max_bytes=64 << 20)
    settings = RenderSettings(ground_height_m=GROUND_H)
    before = sum(server.requests.values())
    with PhotorealRenderer(geometry, resolve_source(server.url), settings, cache=cache) as r:
        first = r.render_quadrant(x, y)
    fetched = sum(server.requests.values()) - before
    assert fetched >= 3 and cache.stats.misses == fetched and cache.stats.hits == 0
    with PhotorealRenderer(geometry, resolve_source(server.url), settings, cache=cache) as r:  # a new browser
        second = r.render_quadrant(x, y)
    assert sum(server.requests.values()) - before == fetched  # nothing fetched again
    assert cache.stats.hits == fetched
    assert np.array_equal(first.rgb, second.rgb)
    cache.close()


def test_tile_cache_is_bounded_and_evicts_least_recently_used(tmp_path):
    cache = TileCache(tmp_path / "c.sqlite", max_bytes=3000)
    for k in "abc":
        cache.put(k, {"Content-Type": "model/gltf-binary", "X-Other": "dropped"}, k.encode() * 1000)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", {}, b"d" * 1000)
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 3
    assert cache.stats.stored_bytes <= 3000 and cache.stats.evicted == 1
    assert cache.get("a") == ({"content-type": "model/gltf-binary"}, b"a" * 1000)
    cache.put("huge", {}, b"x" * 5000)  # larger than the whole cache: not stored, nothing evicted
    assert cache.get("huge") is None and len(cache) == 3
    cache.close()
    reopened = TileCache(tmp_path / "c.sqlite", max_bytes=3000)
    assert reopened.get("d") == ({}, b"d" * 1000)
    reopened.close()


# --- CLI ---------------------------------------------------------------------------------------------------


def test_cli_renders_the_photoreal_layer_and_refuses_a_missing_key(
    geometry, tileset, tmp_path, capsys, monkeypatch
):
    import json

    from isonyc_dagster.cli.main import main
    from isonyc_dagster.images import decode_rgb

    city, server = tileset
    x, y = _busy_quadrants(geometry, city, 1)[0]
    cfg = tmp_path / "project.toml"
    cfg.write_text(f'cache_dir = "{tmp_path / "cache"}"\n[photoreal]\nground_height_m = {GROUND_H}\n')
    out = tmp_path / "p.png"
    argv = ["--config", str(cfg), "render", str(x), str(y), "--layer", "photoreal", "--tileset", server.url]
    assert main([*argv, "-o", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == [512, 512] and info["attempts"] == 1 and info["source"]["url"] == server.url
    pr = building_mask_photoreal(decode_rgb(out.read_bytes()))
    wb = building_mask_whitebox(Renderer(city, geometry).render_quadrant(x, y).surface)
    assert (pr & wb).sum() / (pr | wb).sum() >= 0.97
    assert (tmp_path / "cache" / "photoreal" / "tiles.sqlite").is_file()  # fetched tiles cached
    monkeypatch.delenv("ISONYC_GOOGLE_MAPS_API_KEY", raising=False)
    code = main(
        [
            "--config",
            str(cfg),
            "render",
            "0",
            "0",
            "--layer",
            "photoreal",
            "--tileset",
            "google",
            "-o",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("isonyc render: error:") and "ISONYC_GOOGLE_MAPS_API_KEY" in err[0]
