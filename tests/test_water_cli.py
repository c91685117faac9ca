"""``isonyc water``: repairs become new versions of the stored generation; the old one is kept."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from isonyc_dagster.generate.water import WATER_RGB
from isonyc_dagster.store.local import LocalTileStore
from tests.test_cli import isonyc


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_fill_and_replace_color(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'store = "{store_dir}"\ncache_dir = "{tmp_path / "cache"}"\n')
    store = LocalTileStore(store_dir)
    land = np.full((512, 512, 3), (120, 110, 90), np.uint8)
    off_water = land.copy()
    off_water[:, :200] = (76, 104, 118)  # a model's slightly wrong water colour
    store.put_tile("generation", 0, 0, _png(off_water), {"step": "block:0,0"})
    store.put_tile("generation", 1, 0, _png(land), {"step": "block:0,0"})
    mask = np.zeros((512, 512), np.uint8)
    mask[:, 300:] = 255
    store.put_tile("water_mask", 1, 0, _png(mask), {})

    out = json.loads(
        isonyc("--config", str(cfg), "water", "replace-color", "0", "0", "--target", "#4C6876").stdout
    )
    assert out["repaired"][0]["version"] == 2 and out["repaired"][0]["pixels_changed"] == 512 * 200
    fixed = _rgb(store.get_tile("generation", 0, 0))
    assert (fixed[:, :200] == WATER_RGB).all() and (fixed[:, 200:] == (120, 110, 90)).all()

    out = json.loads(isonyc("--config", str(cfg), "water", "fill", "1", "0", "--mask-only").stdout)
    assert out["repaired"][0]["pixels_changed"] == 512 * 212
    filled = _rgb(store.get_tile("generation", 1, 0))
    assert (filled[:, 300:] == WATER_RGB).all() and (filled[:, :300] == (120, 110, 90)).all()

    versions = store.versions("generation", 1, 0)
    assert [v.version for v in versions] == [1, 2]
    assert versions[1].provenance["repair"] == "fill_water" and versions[1].provenance["from_version"] == 1
    assert _rgb(store.get_blob(versions[0].sha256)).tolist() == land.tolist()  # the original is kept

    out = json.loads(isonyc("--config", str(cfg), "water", "fill", "5", "5").stdout)
    assert out["repaired"] == [{"quadrant": [5, 5], "skipped": "no generation yet"}]
