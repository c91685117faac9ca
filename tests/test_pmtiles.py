"""PMTiles export: read the archive back with pmtiles.reader and compare every tile with the DZI pyramid."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pmtiles.reader import MmapSource, Reader, all_tiles
from pmtiles.tile import Compression, TileType

from isonyc_dagster.publish.build import build_pyramid
from isonyc_dagster.publish.layout import PyramidError
from isonyc_dagster.publish.pmtiles import export_pmtiles
from isonyc_dagster.store.local import LocalTileStore
from tests.test_pyramid import decode_rgba, fill_store

GRID = (-2, 3, 2, 5)  # 5 × 3 quadrants → zooms 0..3 (ceil(log2 5) = 3)
KEYS = [(x, y) for y in range(3, 6) for x in range(-2, 3) if (x, y) != (0, 4)]


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    root = tmp_path_factory.mktemp("pm")
    store = LocalTileStore(root / "store")
    fill_store(store, KEYS)
    meta = {"map": {"name": "demo"}, "attribution": "© test data", "dagster_url": "http://127.0.0.1:3000"}
    build_pyramid(store, root / "map", grid=GRID, meta=meta, workers=2)
    store.close()
    return root / "map"


def read_back(path):
    with open(path, "rb") as f:
        r = Reader(MmapSource(f))
        header, meta = r.header(), r.metadata()
        tiles = {zxy: bytes(data) for zxy, data in all_tiles(r.get_bytes)}
        one = bytes(r.get(3, 4, 2))
    return header, meta, tiles, one


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_archive_holds_the_same_lossless_tiles_as_the_dzi(tmp_path, fmt, pyramid):
    src = pyramid
    if fmt == "webp":
        store = LocalTileStore(tmp_path / "store")
        fill_store(store, KEYS)
        src = tmp_path / "map"
        build_pyramid(store, src, grid=GRID, meta={"map": {"name": "demo"}}, fmt="webp", workers=2)
        store.close()
    info = export_pmtiles(src, tmp_path / "out" / "demo.pmtiles")
    header, meta, tiles, one = read_back(info.path)

    assert header["tile_type"] == (TileType.PNG if fmt == "png" else TileType.WEBP)
    assert header["tile_compression"] == Compression.NONE
    assert (header["min_zoom"], header["max_zoom"]) == (0, 3) == (info.min_zoom, info.max_zoom)
    # zoom z = DZI level 9 + z (level 9 = 320×192 px is the one-tile level of this 2560×1536 map)
    assert meta["dzi_level_of_zoom"] == {"0": 9, "1": 10, "2": 11, "3": 12}
    assert meta["grid"] == {"x0": -2, "y0": 3, "x1": 2, "y1": 5, "width": 5, "height": 3}
    assert meta["format"] == fmt and meta["tileSize"] == 512 and meta["non_geographic"] is True
    if fmt == "png":
        assert meta["attribution"] == "© test data"
        assert meta["dagster"]["url"] == "http://127.0.0.1:3000"

    # exactly the DZI tiles of levels 9..12: 1 + 2 + 6 + 15
    assert len(tiles) == info.tiles == 24
    assert {(z, x, y) for z, x, y in tiles if z == 3} == {(3, c, r) for c in range(5) for r in range(3)}
    for (z, x, y), data in tiles.items():
        arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
        assert arr.shape == (512, 512, 4), (z, x, y)  # every PMTiles tile is full size
        dzi = decode_rgba(src / "demo_files" / str(9 + z) / f"{x}_{y}.{fmt}")
        h, w = dzi.shape[:2]
        assert np.array_equal(arr[:h, :w], dzi), (z, x, y)
        assert not arr[h:, :, 3].any() and not arr[:, w:, 3].any()  # edge padding is transparent
        if dzi.shape[:2] == (512, 512):  # interior tiles: the very same bytes
            assert data == (src / "demo_files" / str(9 + z) / f"{x}_{y}.{fmt}").read_bytes()
    assert one == tiles[(3, 4, 2)]


def test_export_refuses_a_directory_without_a_pyramid(tmp_path):
    with pytest.raises(PyramidError, match="run build_pyramid first"):
        export_pmtiles(tmp_path, tmp_path / "x.pmtiles")
    assert not (tmp_path / "x.pmtiles").exists()


def test_export_names_a_missing_tile_and_leaves_no_partial_archive(tmp_path, pyramid):
    import shutil

    broken = tmp_path / "map"
    shutil.copytree(pyramid, broken)
    (broken / "demo_files" / "11" / "1_0.png").unlink()
    with pytest.raises(PyramidError, match=r"11/1_0\.png is missing; re-run build_pyramid"):
        export_pmtiles(broken, tmp_path / "x.pmtiles")
    assert not list(tmp_path.glob("*.pmtiles")) and not list(tmp_path.glob(".*.tmp"))
