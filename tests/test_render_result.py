"""RenderResult encodings (npz, PNG, preview) and windows, on a real render."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import box

from isonyc_dagster.geo.surfaces import PALETTE, Surface, classes_from_rgb
from isonyc_dagster.geodata.model import Building, City, Road
from isonyc_dagster.render import Renderer, RenderResult, png_bytes, render_png_preview


@pytest.fixture(scope="module")
def result(geometry) -> RenderResult:
    city = City(
        buildings=[
            Building(id="a", footprint=box(0, 0, 40, 30), height_m=60.0),
            Building(id="b", footprint=box(60, 10, 90, 50), height_m=25.0),
        ],
        land=box(-200, -200, 200, 110),
        roads=[Road(id="r", geometry=box(-200, -20, 200, -8).exterior, width_m=8.0)],
    )
    return Renderer(city, geometry).render_tile(0, 0)


def test_rgb_is_the_flat_palette_colour_of_each_class(result):
    assert result.rgb.shape == (1024, 1024, 3) and result.rgb.dtype == np.uint8
    assert np.array_equal(result.rgb, PALETTE[result.surface])
    assert np.array_equal(classes_from_rgb(result.rgb), result.surface)
    assert set(result.stats["classes_present"]) == {
        "ground",
        "road",
        "water",
        "roof",
        "wall_left",
        "wall_right",
    }
    assert result.stats["buildings_drawn"] == 2
    assert sum(result.stats["class_pixels"].values()) == 1024 * 1024


def test_npz_round_trip_is_exact_and_deterministic(result):
    blob = result.to_npz()
    back = RenderResult.from_npz(blob)
    for name in ("rgb", "surface", "building", "height"):
        assert np.array_equal(getattr(back, name), getattr(result, name))
        assert getattr(back, name).dtype == getattr(result, name).dtype
    assert back.origin_px == result.origin_px == (0, 0)
    assert back.stats == result.stats
    assert result.to_npz() == blob  # equal content → equal bytes → usable as a content hash
    assert len(blob) < 0.2 * sum(getattr(result, n).nbytes for n in ("rgb", "surface", "building", "height"))


def test_corrupt_npz_is_refused_with_a_clear_error(result):
    with pytest.raises(ValueError, match="corrupt or not an npz"):
        RenderResult.from_npz(b"not a zip at all")
    buf = io.BytesIO()
    np.savez(buf, rgb=result.rgb)
    with pytest.raises(ValueError, match="missing arrays"):
        RenderResult.from_npz(buf.getvalue())


def test_crop_keeps_world_position(result):
    q = result.crop(512, 0, 512, 512)
    assert q.origin_px == (512, 0)
    assert np.array_equal(q.surface, result.surface[:512, 512:])
    assert np.array_equal(q.height, result.height[:512, 512:])
    assert q.stats["class_pixels"] == {
        Surface(c).name.lower(): int(n)
        for c, n in zip(*np.unique(q.surface, return_counts=True), strict=True)
    }
    with pytest.raises(ValueError, match="not inside the 1024×1024 render"):
        result.crop(600, 0, 512, 512)


def test_png_is_lossless(result):
    png = png_bytes(result.rgb)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), result.rgb)
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(result.height)


def test_preview_is_a_small_png_of_the_render(result):
    img = Image.open(io.BytesIO(render_png_preview(result)))
    assert img.size == (256, 256)
    small = Image.open(io.BytesIO(render_png_preview(result.crop(0, 0, 1024, 300), max_px=128)))
    assert small.size == (128, 38)
    # colours average block-wise: the preview of a mostly-water render is mostly water-blue
    water = render_png_preview(np.full((64, 64), Surface.WATER, np.uint8), max_px=16)
    assert np.all(np.asarray(Image.open(io.BytesIO(water))) == PALETTE[Surface.WATER])
