"""Deep Zoom pyramid: checked against libvips' own dzsave, byte-for-byte base tiles, incremental updates,
resume after a killed build, bounded memory, and clear errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import pyvips
from PIL import Image

from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.publish.build import build_pyramid, update_pyramid
from isonyc_dagster.publish.layout import PyramidError, PyramidLayout
from isonyc_dagster.publish.manifest import DEFAULT_ATTRIBUTION, read_sidecar
from isonyc_dagster.store.base import TileWrite
from isonyc_dagster.store.local import LocalTileStore

REPO = Path(__file__).resolve().parents[1]
Q = 512


# --- synthetic quadrants (also used by the PMTiles and browser tests) -------------------------------


def quadrant_colours(x: int, y: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two checker colours unique to quadrant (x, y) (for grids up to 16×16 around the origin)."""
    i = (x % 16) + 16 * (y % 16)
    a = (40 + (i * 37) % 180, 40 + (i * 71) % 180, 40 + (i * 113) % 180)
    b = (a[0] // 2, a[1] // 2 + 5, a[2] // 2 + 10)
    return a, b


DETAIL = (255, 255, 255)  # one 1-px dot per quadrant, at local (col 200, row 201)
LINE = (0, 0, 0)  # a 1-px vertical line at local col 300


def quadrant_rgb(x: int, y: int, size: int = Q) -> np.ndarray:
    """8-px checker in the quadrant's two colours, a 1-px dot and a 1-px line: pixel art's worst case."""
    a, b = quadrant_colours(x, y)
    yy, xx = np.mgrid[:size, :size]
    img = np.where(
        (((yy // 8) + (xx // 8)) % 2 == 0)[..., None], np.array(a, np.uint8), np.array(b, np.uint8)
    )
    img[201 * size // Q, 200 * size // Q] = DETAIL
    img[:, 300 * size // Q] = LINE
    return img.astype(np.uint8)


def png_bytes(arr: np.ndarray, level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def fill_store(store: LocalTileStore, keys, layer: str = "generation") -> dict[tuple[int, int], np.ndarray]:
    imgs = {k: quadrant_rgb(*k) for k in keys}
    store.put_tiles([TileWrite(layer, x, y, png_bytes(a), {"test": True}) for (x, y), a in imgs.items()])
    return imgs


def rgb_codes(rgb: np.ndarray) -> np.ndarray:
    """Colours as one int each (0xRRGGBB), for fast set operations."""
    rgb = rgb.reshape(-1, 3).astype(np.uint32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def decode_rgba(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"))


def tile_files(out: Path, name: str) -> dict[str, Path]:
    root = out / f"{name}_files"
    return {
        str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
    }


def assert_same_pixels(a_dir: Path, a_name: str, b_dir: Path, b_name: str) -> int:
    a, b = tile_files(a_dir, a_name), tile_files(b_dir, b_name)
    a = {k: v for k, v in a.items() if not k.endswith(".xml")}
    b = {k: v for k, v in b.items() if not k.endswith(".xml")}
    assert sorted(a) == sorted(b)
    for k in a:
        pa, pb = decode_rgba(a[k]), decode_rgba(b[k])
        assert pa.shape == pb.shape, k
        assert np.array_equal(pa, pb), f"tile {k} differs"
    return len(a)


# grid with a non-zero origin, not a power of two, one missing quadrant
GRID = (-2, 3, 2, 5)  # 5 × 3 quadrants
MISSING = (0, 4)
KEYS = [(x, y) for y in range(GRID[1], GRID[3] + 1) for x in range(GRID[0], GRID[2] + 1) if (x, y) != MISSING]


@pytest.fixture
def store(tmp_path) -> LocalTileStore:
    s = LocalTileStore(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def filled(store):
    return store, fill_store(store, KEYS)


def mosaic(imgs: dict[tuple[int, int], np.ndarray], grid) -> np.ndarray:
    x0, y0, x1, y1 = grid
    m = np.zeros(((y1 - y0 + 1) * Q, (x1 - x0 + 1) * Q, 4), np.uint8)
    for (x, y), a in imgs.items():
        m[(y - y0) * Q : (y - y0 + 1) * Q, (x - x0) * Q : (x - x0 + 1) * Q, :3] = a
        m[(y - y0) * Q : (y - y0 + 1) * Q, (x - x0) * Q : (x - x0 + 1) * Q, 3] = 255
    return m


# --- correctness against an independent implementation ---------------------------------------------


def test_pyramid_is_pixel_identical_to_vips_dzsave(filled, tmp_path):
    store, imgs = filled
    info = build_pyramid(store, tmp_path / "out", grid=GRID, meta={"map": {"name": "t"}}, workers=2)
    # libvips' own DZI writer on the whole mosaic, standard numbering, nearest shrink
    ref = pyvips.Image.new_from_array(mosaic(imgs, GRID))
    ref.dzsave(
        str(tmp_path / "ref"),
        tile_size=Q,
        overlap=0,
        depth="onepixel",
        suffix=".png",
        region_shrink="nearest",
    )
    n = assert_same_pixels(tmp_path / "out", "t", tmp_path, "ref")
    assert n == sum(li.tiles for li in info.levels) == info.stats.tiles_written
    # standard DZI descriptor, same image size as libvips'
    ours, theirs = ET.parse(info.dzi_path).getroot(), ET.parse(tmp_path / "ref.dzi").getroot()
    assert ours.tag == theirs.tag == "{http://schemas.microsoft.com/deepzoom/2008}Image"
    for k in ("TileSize", "Overlap", "Format"):
        assert ours.get(k) == theirs.get(k)
    size_ns = "{http://schemas.microsoft.com/deepzoom/2008}Size"
    assert ours.find(size_ns).attrib == theirs.find(size_ns).attrib == {"Width": "2560", "Height": "1536"}


def test_levels_follow_dzi_onepixel_numbering(filled, tmp_path):
    store, _ = filled
    info = build_pyramid(store, tmp_path / "out", grid=GRID, meta={"map": {"name": "t"}}, workers=1)
    # 2560 × 1536 → maxL = ceil(log2 2560) = 12; level L is ceil(W / 2^(12-L)); level 0 is 1×1
    assert info.layout.max_level == 12
    sizes = {li.level: (li.width, li.height) for li in info.levels}
    assert sizes[12] == (2560, 1536) and sizes[11] == (1280, 768) and sizes[10] == (640, 384)
    assert sizes[9] == (320, 192) and sizes[1] == (2, 1) and sizes[0] == (1, 1)
    files = tile_files(tmp_path / "out", "t")
    assert "12/4_2.png" in files and "12/5_0.png" not in files
    assert decode_rgba(files["11/2_1.png"]).shape == (256, 256, 4)  # right/bottom edge tiles are cropped
    assert decode_rgba(files["0/0_0.png"]).shape == (1, 1, 4)


def test_full_resolution_tiles_are_the_stored_pngs_byte_for_byte(filled, tmp_path):
    store, _ = filled
    build_pyramid(store, tmp_path / "out", grid=GRID, meta={"map": {"name": "t"}}, workers=2)
    files = tile_files(tmp_path / "out", "t")
    for x, y in KEYS:
        c, r = x - GRID[0], y - GRID[1]
        assert files[f"12/{c}_{r}.png"].read_bytes() == store.get_tile("generation", x, y)


def test_missing_quadrant_is_transparent_and_crisp_downsampling_keeps_exact_colours(filled, tmp_path):
    store, imgs = filled
    build_pyramid(store, tmp_path / "out", grid=GRID, meta={"map": {"name": "t"}}, workers=1)
    files = tile_files(tmp_path / "out", "t")
    c, r = MISSING[0] - GRID[0], MISSING[1] - GRID[1]
    hole = decode_rgba(files[f"12/{c}_{r}.png"])
    assert hole.shape == (Q, Q, 4) and not hole[..., 3].any()
    # one level down: the hole is a transparent 256² block inside an otherwise opaque tile
    lower = decode_rgba(files["11/1_0.png"])
    assert not lower[256:, :256, 3].any() and (lower[:256, :, 3] == 255).all()
    # nearest: every pixel of every level is one of the source colours (no blends)
    palette = np.unique(np.concatenate([rgb_codes(a) for a in imgs.values()]))
    for lv in (11, 10, 8, 3):
        for p in (tmp_path / "out" / "t_files" / str(lv)).iterdir():
            px = decode_rgba(p)
            opaque = rgb_codes(px[px[..., 3] == 255][:, :3])
            assert np.isin(opaque, palette).all(), p


def test_sidecar_carries_grid_map_attribution_and_lineage(filled, tmp_path):
    store, _ = filled
    cfg = MapConfig(name="midtown")
    meta = {
        "map": cfg,
        "dagster_url": "http://127.0.0.1:3000/",
        "dagster_asset": "generation",
        "partition_key_template": "{x}|{y}",
    }
    info = build_pyramid(store, tmp_path / "out", grid=GRID, meta=meta)
    assert info.name == "midtown" and info.dzi_path.name == "midtown.dzi"
    side = json.loads(info.sidecar_path.read_text())
    assert side == read_sidecar(tmp_path / "out")
    assert side["grid"] == {"x0": -2, "y0": 3, "x1": 2, "y1": 5, "width": 5, "height": 3}
    assert side["quadrant_px"] == side["tile_size"] == 512 and side["overlap"] == 0
    assert side["dzi"] == "midtown.dzi" and side["format"] == "png" and side["layer"] == "generation"
    assert MapConfig.model_validate(side["map"]) == cfg
    assert side["attribution"] == DEFAULT_ATTRIBUTION and "OpenStreetMap" in side["attribution"]
    assert side["dagster"] == {
        "url": "http://127.0.0.1:3000",
        "asset": "generation",
        "partition_key_template": "{x}|{y}",
    }
    assert datetime.fromisoformat(side["built_at"]).tzinfo is not None
    on_disk = {}
    for p in tile_files(tmp_path / "out", "midtown"):
        lv = int(p.split("/")[0])
        on_disk[lv] = on_disk.get(lv, 0) + 1
    assert {lv["level"]: lv["tiles"] for lv in side["levels"]} == on_disk
    assert side["levels"][-1] == {
        "level": 12,
        "width": 2560,
        "height": 1536,
        "cols": 5,
        "rows": 3,
        "tiles": 15,
    }


def test_webp_pyramid_is_lossless(filled, tmp_path):
    store, _ = filled
    build_pyramid(store, tmp_path / "png", grid=GRID, meta={"map": {"name": "t"}}, fmt="png", workers=2)
    info = build_pyramid(
        store, tmp_path / "webp", grid=GRID, meta={"map": {"name": "t"}}, fmt="webp", workers=2
    )
    assert ET.parse(info.dzi_path).getroot().get("Format") == "webp"
    a, b = tile_files(tmp_path / "png", "t"), tile_files(tmp_path / "webp", "t")
    assert sorted(k.replace(".png", "") for k in a) == sorted(k.replace(".webp", "") for k in b)
    for k, p in a.items():
        q = b[k.replace(".png", ".webp")]
        assert q.read_bytes()[8:12] == b"WEBP"
        assert np.array_equal(decode_rgba(p), decode_rgba(q)), k
    # switching the format of an existing pyramid leaves no tiles of the old one behind
    build_pyramid(store, tmp_path / "png", grid=GRID, meta={"map": {"name": "t"}}, fmt="webp", workers=2)
    assert sorted(tile_files(tmp_path / "png", "t")) == sorted(b)


# --- incremental ------------------------------------------------------------------------------------


def snapshot(out: Path, name: str) -> dict[str, tuple[int, bytes]]:
    return {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in tile_files(out, name).items()}


def test_update_rewrites_only_tiles_above_changed_quadrants_and_equals_a_full_rebuild(filled, tmp_path):
    store, imgs = filled
    out = tmp_path / "out"
    build_pyramid(store, out, grid=GRID, meta={"map": {"name": "t"}}, workers=2)
    before = snapshot(out, "t")
    time.sleep(0.01)
    # regenerate two neighbours (sharing every ancestor above level 12) and fill the missing quadrant
    changed = [(-2, 3), (-1, 3), MISSING]
    for x, y in changed:
        new = quadrant_rgb(x + 7, y + 5)  # other colours
        store.put_tile("generation", x, y, png_bytes(new))
    stats = update_pyramid(store, out, changed + [(40, 40)])
    assert stats.quadrants_ignored == 1
    # level 12: 3 tiles; level 11: (0,0) for the pair and (1,1) for the hole; level <= 10: one tile each
    assert stats.written_per_level[12] == 3 and stats.written_per_level[11] == 2
    assert all(stats.written_per_level[lv] == 1 for lv in range(11))
    after = snapshot(out, "t")
    rewritten = {k for k in after if after[k] != before[k]}
    expected = {"12/0_0.png", "12/1_0.png", "12/2_1.png", "11/0_0.png", "11/1_0.png"} | {
        f"{lv}/0_0.png" for lv in range(11)
    }
    assert rewritten <= expected and {"12/0_0.png", "12/1_0.png", "12/2_1.png"} <= rewritten
    assert stats.tiles_written == sum(stats.written_per_level.values()) == 16
    # the result is exactly what a from-scratch build of the new state gives
    fresh = tmp_path / "fresh"
    build_pyramid(store, fresh, grid=GRID, meta={"map": {"name": "t"}}, workers=2)
    assert_same_pixels(out, "t", fresh, "t")
    # idempotent: nothing changed since, nothing is written
    again = update_pyramid(store, out, changed)
    assert again.tiles_written == 0
    assert snapshot(out, "t") == after
    assert read_sidecar(out)["updated_at"] >= read_sidecar(out)["built_at"]


def test_update_after_reactivating_an_old_version_restores_the_old_tiles(filled, tmp_path):
    store, _ = filled
    out = tmp_path / "out"
    build_pyramid(store, out, grid=GRID, meta={"map": {"name": "t"}})
    first = snapshot(out, "t")
    store.put_tile("generation", 1, 5, png_bytes(quadrant_rgb(9, 9)))
    update_pyramid(store, out, [(1, 5)])
    assert snapshot(out, "t")["12/3_2.png"][1] != first["12/3_2.png"][1]
    store.activate("generation", 1, 5, 1)
    update_pyramid(store, out, [(1, 5)])
    now = snapshot(out, "t")
    assert all(now[k][1] == first[k][1] for k in first)


def test_rebuild_skips_unchanged_tiles_and_repairs_deleted_ones(filled, tmp_path):
    store, _ = filled
    out = tmp_path / "out"
    first = build_pyramid(store, out, grid=GRID, meta={"map": {"name": "t"}})
    again = build_pyramid(store, out, grid=GRID, meta={"map": {"name": "t"}})
    assert again.stats.tiles_written == 0 and again.stats.tiles_skipped == first.stats.tiles_written
    (out / "t_files" / "10" / "0_0.png").unlink()
    repaired = build_pyramid(store, out, grid=GRID, meta={"map": {"name": "t"}})
    assert repaired.stats.written_per_level == {10: 1}
    assert (out / "t_files" / "10" / "0_0.png").exists()
    # a file the manifest did not record (e.g. written by a build killed before it could record it,
    # whose input was then reverted) is not trusted, even though its input hash is unchanged
    stray = out / "t_files" / "11" / "0_0.png"
    os.replace(out / "t_files" / "11" / "1_1.png", stray)
    fixed = build_pyramid(store, out, grid=GRID, meta={"map": {"name": "t"}})
    assert fixed.stats.written_per_level == {11: 2}
    fresh = tmp_path / "fresh"
    build_pyramid(store, fresh, grid=GRID, meta={"map": {"name": "t"}})
    assert_same_pixels(out, "t", fresh, "t")


def test_growing_the_grid_rebuilds_and_prunes_tiles_outside_it(filled, tmp_path):
    store, _ = filled
    out = tmp_path / "out"
    build_pyramid(store, out, grid=GRID, meta={"map": {"name": "t"}})
    small = (-2, 3, -1, 3)  # 2×1 quadrants: maxL 10
    build_pyramid(store, out, grid=small, meta={"map": {"name": "t"}})
    fresh = tmp_path / "fresh"
    build_pyramid(store, fresh, grid=small, meta={"map": {"name": "t"}})
    assert_same_pixels(out, "t", fresh, "t")  # includes: no stale tiles left over
    assert not (out / "t_files" / "12").exists()


def test_concurrent_updates_of_one_pyramid_do_not_lose_each_others_tiles(filled, tmp_path):
    """Runs exporting at once (four updates of neighbours, which share every ancestor tile, started
    together) end in exactly the pyramid a fresh build gives."""
    from concurrent.futures import ThreadPoolExecutor

    store, _ = filled
    out = tmp_path / "out"
    build_pyramid(store, out, grid=GRID, meta={"map": {"name": "t"}})
    changed = [(-2, 3), (-1, 3), (-2, 4), (-1, 4)]
    for x, y in changed:
        store.put_tile("generation", x, y, png_bytes(quadrant_rgb(x + 5, y + 9)))
    start = threading.Barrier(len(changed))

    def run(key):
        start.wait()  # all four at once: they all patch the same ancestors
        return update_pyramid(store, out, [key])

    with ThreadPoolExecutor(len(changed)) as pool:
        list(pool.map(run, changed))
    fresh = tmp_path / "fresh"
    build_pyramid(store, fresh, grid=GRID, meta={"map": {"name": "t"}})
    assert_same_pixels(out, "t", fresh, "t")


def _build_script(store_root: Path, out: Path, grid) -> str:
    return textwrap.dedent(
        f"""
        from isonyc_dagster.publish.build import build_pyramid
        from isonyc_dagster.store.local import LocalTileStore
        build_pyramid(LocalTileStore({str(store_root)!r}), {str(out)!r}, grid={grid!r},
                      meta={{"map": {{"name": "t"}}}}, fmt="webp", workers=1)
        """
    )


def _recorded_tiles(manifest: Path) -> int:
    """Rows the build has committed to its manifest so far (0 while it does not exist or is locked)."""
    if not manifest.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{manifest}?mode=ro", uri=True, timeout=0.1)) as db:
            return int(db.execute("SELECT COUNT(*) FROM tiles").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_a_killed_build_resumes_without_redoing_finished_tiles(tmp_path):
    """SIGKILL a real build process midway, then rebuild: finished tiles are skipped, the result is exact."""
    store = LocalTileStore(tmp_path / "store")
    grid = (0, 0, 7, 7)
    fill_store(store, [(x, y) for y in range(8) for x in range(8)])
    out = tmp_path / "out"
    # WebP encoding is slow enough (~20 ms a tile) that 85 tiles give a wide window to kill it in.
    proc = subprocess.Popen([sys.executable, "-c", _build_script(store.root, out, grid)], cwd=REPO)
    recorded = 0
    try:
        deadline = time.monotonic() + 60
        # Kill once the build has recorded tiles as finished (files written but not yet recorded are redone;
        # counting files instead made this test depend on the machine's speed).
        while time.monotonic() < deadline and proc.poll() is None and recorded < 32:
            recorded = _recorded_tiles(out / ".t.manifest.sqlite")
            time.sleep(0.005)
        assert proc.poll() is None, "the build finished before it could be killed; make the grid larger"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert recorded >= 32
    assert not (out / "t.dzi").exists()  # the descriptor is written last: viewers never open a half pyramid
    info = build_pyramid(store, out, grid=grid, meta={"map": {"name": "t"}}, fmt="webp", workers=1)
    assert info.stats.tiles_skipped >= recorded
    assert info.stats.tiles_written + info.stats.tiles_skipped == sum(li.tiles for li in info.levels)
    assert not [p for p in (out / "t_files").rglob(".*.tmp")]
    fresh = tmp_path / "fresh"
    build_pyramid(store, fresh, grid=grid, meta={"map": {"name": "t"}}, fmt="webp", workers=2)
    assert_same_pixels(out, "t", fresh, "t")
    store.close()


def test_memory_stays_far_below_the_mosaic(tmp_path):
    """A 16×16-quadrant map is a 268 MB RGBA mosaic; the streaming build must never hold anything like it."""
    store = LocalTileStore(tmp_path / "store")
    keys = [(x, y) for y in range(16) for x in range(16)]
    store.put_tiles([TileWrite("generation", x, y, png_bytes(quadrant_rgb(x, y), 1), {}) for x, y in keys])
    tracemalloc.start()
    try:
        info = build_pyramid(
            store, tmp_path / "out", grid=(0, 0, 15, 15), meta={"map": {"name": "t"}}, workers=2
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    mosaic_bytes = 16 * 16 * Q * Q * 4
    assert info.stats.tiles_written == 256 + 64 + 16 + 4 + 1 + 9
    assert peak < mosaic_bytes / 8, f"peak {peak / 1e6:.1f} MB"
    store.close()


# --- errors -----------------------------------------------------------------------------------------


def test_bad_arguments_get_clear_errors(filled, tmp_path):
    store, _ = filled
    with pytest.raises(PyramidError, match=r"inclusive bbox .*x1 >= x0"):
        build_pyramid(store, tmp_path / "o", grid=(3, 0, 2, 0))
    with pytest.raises(PyramidError, match=r"grid must be an inclusive quadrant bbox"):
        build_pyramid(store, tmp_path / "o", grid=(0, 0, 1))
    with pytest.raises(PyramidError, match=r"must be an integer"):
        PyramidLayout(0.5, 0, 1, 1)
    with pytest.raises(PyramidError, match=r"fmt must be 'png' or 'webp'"):
        build_pyramid(store, tmp_path / "o", grid=GRID, fmt="jpeg")
    with pytest.raises(PyramidError, match=r"meta\.dagster_ur.*Extra inputs"):
        build_pyramid(store, tmp_path / "o", grid=GRID, meta={"dagster_ur": "http://x"})
    with pytest.raises(PyramidError, match=r"partition_key_template.*\{x\} and \{y\}"):
        build_pyramid(store, tmp_path / "o", grid=GRID, meta={"partition_key_template": "{x}"})
    with pytest.raises(PyramidError, match=r"dagster_url must start with http"):
        build_pyramid(store, tmp_path / "o", grid=GRID, meta={"dagster_url": "localhost:3000"})
    with pytest.raises(PyramidError, match=r"no DZI pyramid .*run build_pyramid first"):
        update_pyramid(store, tmp_path / "empty", [(0, 0)])
    with pytest.raises(PyramidError, match=r"\(x, y\) pair of integers"):
        build_pyramid(store, tmp_path / "o2", grid=GRID, meta={"map": {"name": "t"}})
        update_pyramid(store, tmp_path / "o2", [("a", 1)])


def test_wrong_size_quadrant_is_named_in_the_error(tmp_path):
    store = LocalTileStore(tmp_path / "store", tile_size=(256, 256))
    store.put_tile("generation", 4, 2, png_bytes(quadrant_rgb(4, 2, size=256)))
    with pytest.raises(PyramidError, match=r"quadrant \(4, 2\) .* is 256×256 px, expected 512×512"):
        build_pyramid(store, tmp_path / "out", grid=(4, 2, 5, 2), fmt="webp")
    store.close()
