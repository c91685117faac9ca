"""Derived layers (night, snow, dark) on real Midtown East data: seam-free by construction, lights and snow only
where the surface classes allow them, deterministic, stored with provenance."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster import layers
from isonyc_dagster.backends.base import GenerationRequest
from isonyc_dagster.backends.pixelart import PixelArtBackend
from isonyc_dagster.derive import TRANSFORMS, DeriveError, Source, derive_quadrant, get_transform
from isonyc_dagster.derive.transforms import (
    LAMP_CELL,
    SNOW_CLASSES,
    WALLS,
    check_alignment,
    dark_palette,
    night,
    night_base,
    night_lights,
    snow,
    snow_amount,
)
from isonyc_dagster.geo.surfaces import Surface
from isonyc_dagster.geodata.load import load_city
from isonyc_dagster.images import png_bytes
from isonyc_dagster.render import Renderer, RenderResult
from isonyc_dagster.store import open_store
from tests.conftest import geodata_file

#: Near the East River at 45th St: ground, roads, a park, water, roofs and both wall classes in one 2×2 area.
EAST_RIVER = (40.755, -73.963)


@pytest.fixture(scope="module")
def area(geometry) -> dict:
    """A 2×2-quadrant area: per-quadrant renders (as the store keeps them) and the base map generated over it."""
    files = [
        geodata_file("midtown_east_buildings_doitt.geojson"),
        geodata_file("midtown_east_parks_nycparks.geojson"),
        geodata_file("midtown_east_roads_osm.geojson"),
    ]
    city = load_city(geometry, [str(f) for f in files], land=geodata_file("midtown_east_land_nybb.geojson"))
    renderer = Renderer(city, geometry)
    q = geometry.locate(*EAST_RIVER)["quadrant"]
    qx, qy = q["x"] - 1, q["y"] - 1
    whole = renderer.render_window(qx * 512, qy * 512, 1024, 1024)
    out = PixelArtBackend().generate(
        GenerationRequest(
            template_png=png_bytes(whole.rgb),
            infill_box=(0, 0, 1024, 1024),
            origin_px=whole.origin_px,
            aux=whole.aux(),
            prompt="isometric nyc pixel art",
        )
    )
    with Image.open(io.BytesIO(out.image_png)) as im:
        base = np.asarray(im.convert("RGB")).copy()
    quads = {(qx + i, qy + j): renderer.render_quadrant(qx + i, qy + j) for i in (0, 1) for j in (0, 1)}
    return {"origin": (qx, qy), "whole": whole, "base": base, "quads": quads}


def _source(res: RenderResult, rgb: np.ndarray) -> Source:
    return Source(rgb, res.surface, res.building, res.height, res.origin_px)


def _whole(area) -> Source:
    return _source(area["whole"], area["base"])


def _quadrant(area, x: int, y: int) -> Source:
    qx, qy = area["origin"]
    i, j = x - qx, y - qy
    return _source(area["quads"][(x, y)], area["base"][j * 512 : (j + 1) * 512, i * 512 : (i + 1) * 512])


def test_the_area_holds_every_surface_class(area):
    present = set(np.unique(area["whole"].surface).tolist())
    assert {int(s) for s in Surface if s is not Surface.NONE} <= present


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_stitched_quadrants_equal_the_whole_area_transform(area, name):
    fn = get_transform(name).fn
    whole = fn(_whole(area))
    qx, qy = area["origin"]
    stitched = np.zeros_like(whole)
    for x, y in area["quads"]:
        i, j = x - qx, y - qy
        stitched[j * 512 : (j + 1) * 512, i * 512 : (i + 1) * 512] = fn(_quadrant(area, x, y))
    assert np.array_equal(stitched, whole)
    assert not np.array_equal(whole, area["base"])  # the transform did something


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transforms_are_deterministic(area, name):
    fn = get_transform(name).fn
    a, b = fn(_whole(area)), fn(_whole(area))
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == area["base"].shape


def test_night_lights_windows_only_on_building_walls_and_nothing_else_changes(area):
    """Every pixel is exactly the global night look (``night_base``) except: lit windows, which lie on wall
    pixels of buildings only; lamp light, which lies on ground, road and park pixels only; glints, on water only.
    Roofs get no light at all."""
    src = _whole(area)
    out = night(src).astype(np.int32)
    base = np.clip(np.rint(night_base(src.rgb)), 0, 255).astype(np.int32)
    lights = night_lights(src)
    s = src.surface
    wall = np.isin(s, [int(c) for c in WALLS]) & (src.building > 0)
    assert lights.windows.any() and lights.lamps.any() and lights.glints.any()
    assert not (lights.windows & ~wall).any()
    assert not (lights.lamps & ~np.isin(s, [Surface.GROUND, Surface.ROAD, Surface.PARK])).any()
    assert not (lights.glints & (s != Surface.WATER)).any()
    assert np.array_equal(out[~lights.any()], base[~lights.any()])
    roof = s == Surface.ROOF
    assert np.array_equal(out[roof], base[roof])
    # Lights brighten: lit windows are much brighter than the night wall around them.
    assert out[lights.windows].mean() > base[lights.windows].mean() + 80
    # The night is dark and blue: mean brightness drops, blue dominates red.
    assert out.mean() < 0.5 * src.rgb.mean() and out[..., 2].mean() > out[..., 0].mean()


def test_a_building_keeps_its_window_pattern_whichever_window_draws_it(area):
    """Buildings straddling the quadrant line: the lit windows of each quadrant match the whole-area ones."""
    whole = night_lights(_whole(area)).windows
    qx, qy = area["origin"]
    for x, y in area["quads"]:
        i, j = x - qx, y - qy
        part = night_lights(_quadrant(area, x, y)).windows
        assert np.array_equal(part, whole[j * 512 : (j + 1) * 512, i * 512 : (i + 1) * 512])


def test_snow_whitens_only_roof_and_ground_classes(area):
    src = _whole(area)
    out = snow(src)
    changed = np.any(out != src.rgb, axis=-1)
    holds_snow = np.isin(src.surface, [int(c) for c in SNOW_CLASSES])
    assert not (changed & ~holds_snow).any(), "snow changed a wall or water pixel"
    for cls in (Surface.ROOF, Surface.GROUND, Surface.PARK):
        m = src.surface == cls
        assert out[m].mean() > src.rgb[m].mean() + 25, f"{cls.name} was not whitened"
    # Soft edges: snow cover takes intermediate values, not just on/off.
    amount = snow_amount(src, *src.world())
    assert {0.0, 1.0} < set(np.unique(np.round(amount, 3)).tolist())


def test_dark_theme_uses_only_its_palette(area):
    out = get_transform("dark").fn(_whole(area))
    pal = {tuple(c) for c in dark_palette().reshape(-1, 3).tolist()}
    assert {tuple(c) for c in np.unique(out.reshape(-1, 3), axis=0).tolist()} <= pal
    assert out.mean() < 80


def test_misaligned_windows_and_bad_inputs_are_refused(area):
    res = area["whole"]
    crop = res.crop(8, 0, 512, 512)
    src = _source(crop, area["base"][:512, 8:520])
    with pytest.raises(DeriveError, match=f"not aligned to {LAMP_CELL} px lamp cells"):
        check_alignment(src)
    with pytest.raises(DeriveError, match="render buffers"):
        night(_source(res, area["base"][:512]))
    with pytest.raises(DeriveError, match="unknown derived layer 'fog'; choose from"):
        get_transform("fog")


def test_derived_tiles_are_stored_with_provenance_and_reused(area, tmp_path):
    store = open_store(str(tmp_path / "store"))
    qx, qy = area["origin"]
    x, y = qx + 1, qy
    aux = {k: v.aux() for k, v in area["quads"].items()}
    with pytest.raises(
        DeriveError, match="no 'generation' tile to derive from; materialize generation first"
    ):
        derive_quadrant(store, "night", x, y, lambda a, b: aux[(a, b)])
    gen = store.put_tile(layers.GENERATION, x, y, png_bytes(_quadrant(area, x, y).rgb), {"step": "test"})
    first = derive_quadrant(store, "night", x, y, lambda a, b: aux[(a, b)])
    assert not first.reused and first.version.layer == "layer_night"
    prov = first.version.provenance
    assert (
        prov["source_sha256"] == gen.sha256
        and prov["transform"] == "night"
        and prov["transform_version"] == 1
    )
    with Image.open(io.BytesIO(store.get_blob(first.version.sha256))) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), night(_quadrant(area, x, y)))
    again = derive_quadrant(store, "night", x, y, lambda a, b: aux[(a, b)])
    assert again.reused and again.version.version == first.version.version
    # A new source tile makes a new derived version; the old one stays in the store.
    store.put_tile(layers.GENERATION, x, y, png_bytes(255 - _quadrant(area, x, y).rgb), {"step": "test2"})
    third = derive_quadrant(store, "night", x, y, lambda a, b: aux[(a, b)])
    assert not third.reused and third.version.version == first.version.version + 1
    assert len(store.versions("layer_night", x, y)) == 2


def test_demo_takes_layer_names_and_refuses_unknown_ones(capsys):
    from isonyc_dagster.cli.main import build_parser

    assert build_parser().parse_args(["demo", "--layers", "night,snow,night"]).layers == ["night", "snow"]
    assert build_parser().parse_args(["demo"]).layers is None
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["demo", "--layers", "night,fog"])
    assert e.value.code == 2
    assert "unknown derived layer 'fog'; choose from night, snow, dark" in capsys.readouterr().err
