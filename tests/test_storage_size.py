"""Bytes per quadrant: the render's aux buffers in their compact lossless encoding, and small previews in Dagster.

The aux blob must give back exactly the arrays it was given (every float32 bit pattern, every id), stay readable
for stores written with the old npz encoding, and be several times smaller than that npz on real renders.
"""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely import affinity
from shapely.geometry import box

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import THUMBNAIL_MAX_B64, blob_link, thumbnail_md
from isonyc_dagster.geo.surfaces import PALETTE
from isonyc_dagster.geodata.model import Building, City
from isonyc_dagster.images import png_bytes
from isonyc_dagster.project import Project
from isonyc_dagster.render import AUX_BLOB_EXT, Renderer, RenderResult
from isonyc_dagster.render._auxcodec import MAGIC
from tests.dagster_helpers import project_config

BUFFERS = ("rgb", "surface", "building", "height")


def _assert_identical(a: RenderResult, b: RenderResult) -> None:
    for name in BUFFERS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        # Bit patterns, not values: NaN, -0.0 and every rounding must come back as they were.
        assert x.tobytes() == y.tobytes(), name
    assert a.origin_px == b.origin_px and a.stats == b.stats


@pytest.fixture(scope="module")
def city_render(geometry) -> RenderResult:
    """A tile of rotated towers of many heights: slanted walls of every length, roofs, ground and a road."""
    rng = np.random.default_rng(7)
    blds = []
    for i in range(40):
        x, y = rng.uniform(-150, 150, 2)
        fp = affinity.rotate(box(x, y, x + rng.uniform(8, 30), y + rng.uniform(8, 30)), rng.uniform(0, 90))
        blds.append(Building(id=f"b{i}", footprint=fp, height_m=float(rng.uniform(5, 120))))
    city = City(buildings=blds, land=box(-300, -300, 300, 300))
    return Renderer(city, geometry).render_tile(0, 0)


def test_real_render_round_trips_exactly_and_is_much_smaller_than_npz(city_render: RenderResult) -> None:
    blob = city_render.to_blob()
    assert blob.startswith(MAGIC)
    _assert_identical(RenderResult.from_blob(blob), city_render)
    assert city_render.to_blob() == blob  # deterministic: the blob hash is a data version
    npz = city_render.to_npz()
    assert len(blob) * 5 < len(npz), (len(blob), len(npz))
    # Per 512×512 quadrant of this dense tile (1024² = 4 quadrants): far under the 250 kB store budget.
    assert len(blob) / 4 < 40_000


def test_old_npz_blobs_are_still_read(city_render: RenderResult) -> None:
    _assert_identical(RenderResult.from_blob(city_render.to_npz()), city_render)


def test_any_buffer_contents_round_trip_exactly() -> None:
    rng = np.random.default_rng(1)
    h, w = 300, 257  # more distinct building ids than a uint16 index holds; odd width
    surface = rng.integers(0, len(PALETTE), (h, w), dtype=np.uint8)
    building = rng.permutation(h * w).astype(np.int32).reshape(h, w) * 7 - 5
    height = rng.standard_normal((h, w)).astype(np.float32) * 1e6
    height.view(np.uint32)[0, :4] = [0x7FC00001, 0x80000000, 0x7F800000, 0xFF800000]  # NaN payload, -0, ±inf
    rgb = PALETTE[surface].copy()
    rgb[5, 5] = (1, 2, 3)  # not the palette colour: must be kept, not recomputed
    res = RenderResult(
        rgb=rgb, surface=surface, building=building, height=height, origin_px=(-3, 9), stats={}
    )
    _assert_identical(RenderResult.from_blob(res.to_blob()), res)
    one = RenderResult(
        rgb=PALETTE[np.zeros((1, 1), np.uint8)],
        surface=np.zeros((1, 1), np.uint8),
        building=np.zeros((1, 1), np.int32),
        height=np.full((1, 1), 2.5, np.float32),
        origin_px=(0, 0),
        stats={"x": [1]},
    )
    _assert_identical(RenderResult.from_blob(one.to_blob()), one)


def test_a_damaged_aux_blob_is_refused_with_one_clear_error(city_render: RenderResult) -> None:
    blob = city_render.to_blob()
    head_end = len(MAGIC) + 4 + struct.unpack_from("<I", blob, len(MAGIC))[0]
    payload = zlib.decompress(blob[head_end:])
    bad = [
        blob[: len(blob) // 2],  # truncated
        blob[:head_end] + zlib.compress(payload[:-1]),  # a section short by one byte
        blob[:head_end] + zlib.compress(payload + b"\0"),  # trailing bytes
        blob.replace(b'"format": 2', b'"format": 9'),
        MAGIC + b"\xff\xff\xff\x00",
    ]
    for data in bad:
        with pytest.raises(ValueError, match="re-render the quadrant|not supported"):
            RenderResult.from_blob(data)
    with pytest.raises(ValueError, match="not an npz"):
        RenderResult.from_blob(b"neither format")


def test_project_stores_the_compact_blob_and_steps_read_it(tmp_path: Path) -> None:
    project = Project(project_config(tmp_path, 0, 0, 0, 0))
    version, res = project.store_render(0, 0)
    sha = version.provenance["aux_sha256"]
    blobs = list((tmp_path / "store" / "blobs").rglob(f"{sha}.*"))
    assert [b.suffix for b in blobs] == [f".{AUX_BLOB_EXT}"]
    assert blobs[0].stat().st_size < 0.25 * len(res.to_npz())
    aux = project.step_inputs().render_aux(0, 0)
    for name in ("surface", "building", "height"):
        assert aux[name].tobytes() == getattr(res, name).tobytes()


def test_previews_in_metadata_are_tiny_and_link_the_full_image() -> None:
    rng = np.random.default_rng(3)
    noisy = png_bytes(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))  # worst case: incompressible
    flat = png_bytes(np.repeat(PALETTE[np.arange(6, dtype=np.uint8)][:, None], 512, axis=1)[:, :512])
    link = blob_link("http://127.0.0.1:8000/", "ab" * 32)
    assert link == f"http://127.0.0.1:8000/api/blob/{'ab' * 32}"
    for png in (noisy, flat):
        md = thumbnail_md(png, max_px=256, title="generation 1|2", link=link).value
        m = re.search(r"base64,([A-Za-z0-9+/=]+)\)", md)
        assert m and len(m.group(1)) <= THUMBNAIL_MAX_B64, len(md)
        with Image.open(io.BytesIO(base64.b64decode(m.group(1)))) as im:
            assert 8 <= max(im.size) <= 256
        assert f"[generation 1|2: full size]({link})" in md
    # Small enough images keep their full preview size.
    md = thumbnail_md(flat, max_px=64).value
    with Image.open(io.BytesIO(base64.b64decode(md.split("base64,")[1][:-1]))) as im:
        assert max(im.size) == 64


def test_render_layer_tile_is_unchanged_by_the_aux_encoding(tmp_path: Path) -> None:
    """The render tile (PNG) keeps its bytes: only the aux blob's encoding changed, not what the layer shows."""
    project = Project(project_config(tmp_path, 0, 0, 0, 0))
    version, res = project.store_render(0, 0)
    assert project.store.get_tile(layers.RENDER, 0, 0) == project.store.get_blob(version.sha256)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(project.store.get_blob(version.sha256)))), res.rgb)
