"""The offline pixel-art backend: contract, look per surface class, world alignment and seams.

Real components throughout: real NYC geodata (read in place from ../shared/geodata) through the real
loaders and whitebox renderer, real lattice plan and template builder for the seam test. Assertions are
on the pixels a user sees.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import shapely
from PIL import Image
from scipy import ndimage
from shapely.geometry import box

from isonyc_dagster.backends.base import BackendError, GenerationRequest
from isonyc_dagster.backends.pixelart import PixelArtBackend, StyleParams
from isonyc_dagster.backends.pixelart import palette as pal
from isonyc_dagster.geo.surfaces import Surface
from isonyc_dagster.geodata.load import load_city
from isonyc_dagster.geodata.model import Building, City, Park
from isonyc_dagster.images import png_bytes
from isonyc_dagster.render import Renderer, RenderResult
from tests.conftest import geodata_file

RED = np.array([255, 0, 0], np.uint8)
WATER_RGB = np.array([0x4A, 0x63, 0x72])
OUTLINE = pal.RGB[pal.idx("outline")]
WINDOW_COLOURS = {
    tuple(pal.RGB[pal.idx(n)]) for n in ("win_dark", "win_shade", "win_blue", "win_sky", "win_warm")
}
CITICORP = (40.7585, -73.9702)


# --- helpers -----------------------------------------------------------------------------------------


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode in ("RGB", "P")  # lossless either way: P for ≤ 256 colours
        return np.asarray(im.convert("RGB"))


def aux_of(res: RenderResult) -> dict[str, np.ndarray]:
    return {"surface": res.surface, "building": res.building, "height": res.height}


def template_rgb(
    res: RenderResult, infill: tuple[int, int, int, int], context: np.ndarray | None = None
) -> np.ndarray:
    """The step template: render inside the infill with a 2 px red border inside it, context around."""
    rgb = res.rgb.copy() if context is None else context.copy()
    x0, y0, x1, y1 = infill
    rgb[y0:y1, x0:x1] = res.rgb[y0:y1, x0:x1]
    rgb[y0 : y0 + 2, x0:x1] = RED
    rgb[y1 - 2 : y1, x0:x1] = RED
    rgb[y0:y1, x0 : x0 + 2] = RED
    rgb[y0:y1, x1 - 2 : x1] = RED
    return rgb


def request(
    res: RenderResult,
    infill: tuple[int, int, int, int] | None = None,
    context: np.ndarray | None = None,
    *,
    aux: bool = True,
    seed: int | None = None,
) -> GenerationRequest:
    h, w = res.surface.shape
    infill = infill or (0, 0, w, h)
    return GenerationRequest(
        template_png=png_bytes(template_rgb(res, infill, context)),
        infill_box=infill,
        origin_px=res.origin_px,
        aux=aux_of(res) if aux else {},
        seed=seed,
        prompt="isometric nyc pixel art",
    )


def colours_match(rgb: np.ndarray, colours: set[tuple[int, int, int]]) -> np.ndarray:
    m = np.zeros(rgb.shape[:2], bool)
    for c in colours:
        m |= np.all(rgb == np.array(c, np.uint8), axis=-1)
    return m


@pytest.fixture(scope="module")
def backend() -> PixelArtBackend:
    return PixelArtBackend()


@pytest.fixture(scope="module")
def midtown(geometry) -> Renderer:
    """Midtown East around the Citigroup Center: real footprints, parks, roads and shoreline."""
    files = [
        f"buildings:{geodata_file('midtown_east_buildings_doitt.geojson')}",
        f"parks:{geodata_file('midtown_east_parks_nycparks.geojson')}",
        f"roads:{geodata_file('midtown_east_roads_osm.geojson')}",
        f"land:{geodata_file('midtown_east_land_nybb.geojson')}",
    ]
    return Renderer(load_city(geometry, files, land=None), geometry)


@pytest.fixture(scope="module")
def citicorp_origin(geometry) -> tuple[int, int]:
    """Top-left world pixel of the 2×2 quadrants whose centre is near the Citigroup Center."""
    loc = geometry.locate(*CITICORP)
    return (loc["quadrant"]["x"] - 1) * 512, (loc["quadrant"]["y"] - 1) * 512


@pytest.fixture(scope="module")
def tile(midtown, citicorp_origin) -> RenderResult:
    return midtown.render_window(*citicorp_origin, 1024, 1024)


# --- the contract ------------------------------------------------------------------------------------


def test_output_is_a_same_size_rgb_png_with_provenance(backend, tile):
    req = request(tile, seed=7)
    result = backend.generate(req)
    out = decode(result.image_png)
    assert out.shape == (1024, 1024, 3) and out.dtype == np.uint8
    p = result.provenance
    assert p["backend"] == "pixelart" and p["model_id"] == backend.model_id == "pixelart-v1"
    assert p["prompt_sha256"] == req.prompt_sha256
    assert p["attempts"] == 1 and 0 < p["latency_s"] < 30
    assert p["seed"] == 0 and p["request_seed"] == 7
    assert p["style"]["floor_height_m"] == pytest.approx(3.6)
    assert p["buffers"] == "aux"
    json.dumps(p)  # provenance goes into the store's index as JSON


def test_deterministic_and_independent_of_the_request_seed(backend, tile):
    a = backend.generate(request(tile, seed=1)).image_png
    b = backend.generate(request(tile, seed=1)).image_png
    c = backend.generate(request(tile, seed=999)).image_png
    assert a == b
    # A per-step seed must not change the look: neighbouring steps get different seeds.
    assert np.array_equal(decode(a), decode(c))


def test_output_uses_only_the_fixed_palette(backend, tile):
    out = decode(backend.generate(request(tile)).image_png)
    packed = (out[..., 0].astype(np.int32) << 16) | (out[..., 1].astype(np.int32) << 8) | out[..., 2]
    used = np.unique(packed)
    palette = (pal.RGB[:, 0].astype(np.int32) << 16) | (pal.RGB[:, 1].astype(np.int32) << 8) | pal.RGB[:, 2]
    assert np.isin(used, palette).all()
    assert 30 <= len(used) <= len(pal.RGB)


def test_context_outside_the_infill_is_returned_unchanged(backend, tile):
    rng = np.random.default_rng(3)
    context = rng.integers(0, 256, size=(1024, 1024, 3), dtype=np.uint8)
    infill = (256, 0, 768, 1024)  # a 1×2 bridge: context on both long sides
    req = request(tile, infill, context)
    out = decode(backend.generate(req).image_png)
    outside = np.ones((1024, 1024), bool)
    outside[0:1024, 256:768] = False
    assert np.array_equal(out[outside], context[outside])
    assert not np.array_equal(out[:, 256:768], template_rgb(tile, infill, context)[:, 256:768])


def test_red_border_is_replaced_by_what_lies_under_it(backend, tile):
    infill = (256, 256, 768, 768)
    with_border = decode(backend.generate(request(tile, infill)).image_png)
    inside = with_border[256:768, 256:768]
    assert not np.any(np.all(inside == RED, axis=-1)), "red border pixels left in the infill"
    # The ring under the border is generated from the render buffers: identical to a template without
    # a border at all.
    no_border = GenerationRequest(
        template_png=png_bytes(tile.rgb), infill_box=infill, origin_px=tile.origin_px, aux=aux_of(tile)
    )
    plain = decode(backend.generate(no_border).image_png)
    assert np.array_equal(with_border, plain)


# --- world alignment and seams -------------------------------------------------------------------------


def test_overlapping_steps_generate_the_same_pixels(backend, midtown, citicorp_origin):
    """Step 1 generates quadrants A|B (window A,B); step 2 generates B|C with A as context.

    Every world pixel of B is generated twice; both must agree, except next to step 1's window edge,
    which step 1 could not see past (outlines, rooftop objects there are decided with less context).
    """
    x0, y0 = citicorp_origin
    r1 = midtown.render_window(x0, y0, 1024, 512)  # A, B
    out1 = decode(backend.generate(request(r1)).image_png)
    r2 = midtown.render_window(x0, y0, 1536, 512)  # A, B, C
    context = np.zeros((512, 1536, 3), np.uint8)
    context[:, :512] = out1[:, :512]
    res2 = backend.generate(request(r2, (512, 0, 1536, 512), context))
    out2 = decode(res2.image_png)
    b1, b2 = out1[:, 512:1024], out2[:, 512:1024]
    same = np.all(b1 == b2, axis=-1)
    assert same.mean() > 0.997
    assert same[:, : 512 - 32].all(), "pixels far from step 1's window edge differ"
    # Step 2's first generated columns continue step 1's context exactly (no seam at x = 512).
    assert np.array_equal(out2[:, 512:520], out1[:, 512:520])
    assert res2.provenance["context_agreement"] > 0.97 and res2.provenance["harmonized"] is False


@pytest.mark.slow
def test_a_lattice_plan_mosaic_equals_one_big_generation(backend, midtown, citicorp_origin):
    """Run a real 3×3-quadrant plan (block, two bridges, corner) through the real template builder and
    output validation; the stitched map must equal generating the whole area at once, except within
    a few pixels of the block's window edges."""
    from isonyc_dagster.generate.plan import LatticePlan
    from isonyc_dagster.generate.template import build_template, extract_quadrants

    qx, qy = citicorp_origin[0] // 512, citicorp_origin[1] // 512
    renders: dict[tuple[int, int], RenderResult] = {}

    def rend(x: int, y: int) -> RenderResult:
        if (x, y) not in renders:
            renders[(x, y)] = midtown.render_quadrant(x, y)
        return renders[(x, y)]

    generated: dict[tuple[int, int], np.ndarray] = {}
    plan = LatticePlan.from_quadrants([(qx + i, qy + j) for i in range(3) for j in range(3)])
    assert sorted(s.kind.value for s in plan.steps) == ["block", "bridge_h", "bridge_v", "corner"]
    for step in plan.steps:  # sorted by wave
        t = build_template(
            step,
            render_rgb=lambda x, y: rend(x, y).rgb,
            generated_rgb=lambda x, y: generated.get((x, y)),
            render_aux=lambda x, y: aux_of(rend(x, y)),
        )
        result = backend.generate(
            GenerationRequest(template_png=t.png, infill_box=t.infill_box, origin_px=t.origin_px, aux=t.aux)
        )
        if step.context:
            assert result.provenance["context_agreement"] > 0.97
            assert result.provenance["harmonized"] is False
        generated.update(extract_quadrants(step, t, result.image_png))  # raises on red remnants etc.

    mosaic = np.zeros((1536, 1536, 3), np.uint8)
    for (x, y), img in generated.items():
        mosaic[(y - qy) * 512 : (y - qy + 1) * 512, (x - qx) * 512 : (x - qx + 1) * 512] = img
    whole = midtown.render_window(qx * 512, qy * 512, 1536, 1536)
    one_shot = decode(backend.generate(request(whole)).image_png)
    diff = np.any(mosaic != one_shot, axis=-1)
    assert diff.mean() < 5e-4
    ys, xs = np.nonzero(diff)
    near_block_edge = (np.abs(xs - 1024) <= 32) | (np.abs(ys - 1024) <= 32)
    assert near_block_edge.all(), (
        f"differences away from step edges at {list(zip(xs[~near_block_edge], ys[~near_block_edge], strict=True))[:5]}"
    )


def test_foreign_context_is_dithered_into(backend, tile):
    """Context this backend did not draw (e.g. a remote model's) gets a dithered transition, not a cut."""
    infill = (256, 0, 768, 1024)
    foreign = tile.rgb  # flat render colours stand in for another model's style
    harm = backend.generate(request(tile, infill, foreign))
    assert harm.provenance["harmonized"] is True and harm.provenance["context_agreement"] < 0.5
    plain_backend = PixelArtBackend(harmonize=False)
    plain = decode(plain_backend.generate(request(tile, infill, foreign)).image_png)
    out = decode(harm.image_png)
    band = out[:, 256:262]  # first pixels inside the infill, next to the left context
    from_ctx = np.all(band == foreign[:, 256:262], axis=-1)
    assert 0.2 < from_ctx.mean() < 0.95  # a mix of both, not a copy
    assert np.array_equal(out[:, 300:724], plain[:, 300:724])  # the interior is untouched


# --- the look of each surface class ----------------------------------------------------------------------


def _flat_scene() -> dict[str, np.ndarray]:
    """Four 256×256 ground-level fields: water | park / road | ground."""
    s = np.empty((512, 512), np.uint8)
    s[:256, :256] = Surface.WATER
    s[:256, 256:] = Surface.PARK
    s[256:, :256] = Surface.ROAD
    s[256:, 256:] = Surface.GROUND
    return {"surface": s, "building": np.zeros_like(s, np.int32), "height": np.zeros(s.shape, np.float32)}


def test_each_ground_class_has_its_own_look(backend):
    aux = _flat_scene()
    req = GenerationRequest(
        template_png=png_bytes(np.zeros((512, 512, 3), np.uint8)), origin_px=(1000, -3000), aux=aux
    )
    out = decode(backend.generate(req).image_png).astype(int)
    water = out[8:248, 8:248].reshape(-1, 3)
    park = out[8:248, 264:504].reshape(-1, 3)
    road = out[264:504, 8:248].reshape(-1, 3)
    ground = out[264:504, 264:504].reshape(-1, 3)
    # Water: flat #4A6372 with a light texture.
    assert np.abs(water.mean(0) - WATER_RGB).max() < 6
    assert 0.6 < np.all(water == WATER_RGB, axis=1).mean() < 0.97
    # Parks: green (grass and tree canopies), several shades.
    assert np.mean((park[:, 1] > park[:, 0] + 10) & (park[:, 1] > park[:, 2] + 10)) > 0.95
    assert len(np.unique(park, axis=0)) >= 6
    trees = colours_match(out[8:248, 264:504].astype(np.uint8), {tuple(pal.RGB[pal.idx("tree_mid")])})
    assert 0.05 < trees.mean() < 0.8
    # Roads: neutral grey, darker than the warm light-grey sidewalks/plazas.
    assert np.abs(road.mean(0)[0] - road.mean(0)[2]) < 12 and road.mean() < 110
    assert ground.mean() > road.mean() + 50 and ground.mean(0)[0] > ground.mean(0)[2]


def test_trees_are_clustered_not_uniform(backend):
    s = np.full((512, 1024), Surface.PARK, np.uint8)
    aux = {"surface": s, "building": np.zeros(s.shape, np.int32), "height": np.zeros(s.shape, np.float32)}
    req = GenerationRequest(
        template_png=png_bytes(np.zeros((512, 1024, 3), np.uint8)), origin_px=(0, 0), aux=aux
    )
    out = decode(backend.generate(req).image_png)
    canopy = colours_match(
        out,
        {
            tuple(pal.RGB[pal.idx(n)])
            for n in ("tree_dark", "tree_mid", "tree_light", "tree_hi", "tree_outline")
        },
    )
    cover = canopy.reshape(8, 64, 16, 64).mean(axis=(1, 3))  # canopy share per 64 px cell
    assert cover.max() > 0.5 and cover.min() < 0.15  # dense groves and open lawns


def test_water_texture_is_world_aligned(backend):
    """The same world pixel of water gets the same colour from windows at different offsets."""
    s = np.full((300, 300), Surface.WATER, np.uint8)
    aux = {"surface": s, "building": np.zeros(s.shape, np.int32), "height": np.zeros(s.shape, np.float32)}
    tmpl = png_bytes(np.zeros((300, 300, 3), np.uint8))
    a = decode(
        backend.generate(GenerationRequest(template_png=tmpl, origin_px=(100, 200), aux=aux)).image_png
    )
    b = decode(
        backend.generate(GenerationRequest(template_png=tmpl, origin_px=(137, 251), aux=aux)).image_png
    )
    # Pixels away from the windows' borders (where the shore-line rule sees the window edge).
    assert np.array_equal(a[51 + 2 : 298, 37 + 2 : 298], b[2 : 298 - 51, 2 : 298 - 37])


@pytest.fixture(scope="module")
def tower(geometry) -> RenderResult:
    """One 80 m tower on the Manhattan grid (29° east of north), rendered by the real renderer."""
    fp = shapely.affinity.rotate(box(-22, -22, 22, 22), -29, origin=(0, 0))
    city = City(buildings=[Building(id="t", footprint=fp, height_m=80.0)])
    px, py = geometry.ground_to_pixel(0.0, 0.0, 40.0)
    return Renderer(city, geometry).render_window(int(px) - 256, int(py) - 256, 512, 512)


def test_walls_have_window_grids_that_follow_the_wall_slope(backend, tower):
    out = decode(backend.generate(request(tower)).image_png)
    windows = colours_match(out, WINDOW_COLOURS)
    for face in (Surface.WALL_LEFT, Surface.WALL_RIGHT):
        wall = tower.surface == face
        share = windows[wall].mean()
        assert 0.15 < share < 0.6, f"{face.name}: {share:.0%} of the wall is windows"
        # Column by column: the top window pixel sits a constant distance below the roof edge, so the
        # window rows run parallel to the (sloped) roof edge, not horizontally.
        offsets, n_rows = [], []
        for x in np.nonzero(wall.any(axis=0))[0]:
            col = wall[:, x]
            win = windows[:, x] & col
            if col.sum() < 100 or not win.any():
                continue
            top = np.argmax(col)
            offsets.append(np.argmax(win) - top)
            n_rows.append(ndimage.label(win)[1])
        assert len(offsets) > 20
        edge_slope = _edge_slope(wall)
        assert abs(edge_slope) > 0.2  # the faces really are sloped on screen
        assert np.percentile(offsets, 90) - np.percentile(offsets, 10) <= 2
        assert np.median(n_rows) >= 15  # one row of windows per ~3.6 m floor on an 80 m tower


def _edge_slope(wall: np.ndarray) -> float:
    xs = np.nonzero(wall.any(axis=0))[0]
    xs = xs[5:-5]
    tops = np.array([np.argmax(wall[:, x]) for x in xs])
    return float(np.polyfit(xs, tops, 1)[0])


def test_occlusion_edges_are_outlined_and_roofs_have_a_light_rim(backend, tower):
    out = decode(backend.generate(request(tower)).image_png)
    h = tower.height
    # Ground pixels right beside the tower's walls: the occluded side of a depth edge → dark outline.
    bld = tower.building > 0
    beside = ~bld & (
        (np.roll(h, 1, axis=1) > 1.5)
        | (np.roll(h, -1, axis=1) > 1.5)
        | (np.roll(h, 1, axis=0) > 1.5)
        | (np.roll(h, -1, axis=0) > 1.5)
    )
    beside[[0, -1], :] = beside[:, [0, -1]] = False
    assert beside.sum() > 200
    assert np.all(out[beside] == OUTLINE, axis=-1).mean() > 0.98
    # The roof's boundary pixels are a light parapet rim, lighter than the roof.
    roof = tower.surface == Surface.ROOF
    rim = roof & ~ndimage.binary_erosion(roof)
    rim_l = out[rim].astype(int).sum(-1)
    inner_l = out[ndimage.binary_erosion(roof, iterations=4)].astype(int).sum(-1)
    assert np.median(rim_l) > np.median(inner_l) + 150


def test_buildings_vary_in_material_and_carry_roof_details(backend, tile):
    out = decode(backend.generate(request(tile)).image_png)
    lit = tile.surface == Surface.WALL_LEFT
    ids = np.unique(tile.building[lit])
    wall_colours = set()
    for b in ids:
        px = out[lit & (tile.building == b)]
        if len(px) > 500:
            vals, counts = np.unique(px, axis=0, return_counts=True)
            wall_colours.add(tuple(vals[np.argmax(counts)]))
    assert len(wall_colours) >= 4  # brick, limestone, glass, ... not one colour for the city
    roof = tile.surface == Surface.ROOF
    details = colours_match(
        out, {tuple(pal.RGB[pal.idx(n)]) for n in ("ac_top", "ac_side", "wood_lit", "glass_hi")}
    )
    roofs_with_details = {b for b in np.unique(tile.building[roof & details])}
    assert len(roofs_with_details) >= 5
    assert (roof & details).sum() < 0.1 * roof.sum()  # details, not clutter


# --- without aux ------------------------------------------------------------------------------------------


def test_without_aux_the_template_render_colours_drive_the_look(backend, tile):
    infill = (0, 0, 1024, 1024)
    res = backend.generate(request(tile, infill, aux=False))
    assert res.provenance["buffers"] == "template"
    out = decode(res.image_png)
    assert not np.any(np.all(out == RED, axis=-1))
    with_aux = decode(backend.generate(request(tile, infill)).image_png)
    # Classes come from the same render: ground-level surfaces look the same either way.
    ground = np.isin(tile.surface, [Surface.GROUND, Surface.ROAD, Surface.PARK, Surface.WATER])
    ground &= ndimage.binary_erosion(ground, iterations=3)
    ground[:4], ground[-4:], ground[:, :4], ground[:, -4:] = False, False, False, False
    assert np.all(out[ground] == with_aux[ground], axis=-1).mean() > 0.95
    walls = np.isin(tile.surface, [Surface.WALL_LEFT, Surface.WALL_RIGHT])
    assert colours_match(out, WINDOW_COLOURS)[walls].mean() > 0.1


def test_buildings_without_aux_get_ids_and_heights_from_the_render(geometry):
    from isonyc_dagster.backends.pixelart.backend import infer_buffers
    from isonyc_dagster.backends.pixelart.style import Camera

    fp = shapely.affinity.rotate(box(-18, -12, 18, 12), -29, origin=(0, 0))
    city = City(
        buildings=[Building(id="t", footprint=fp, height_m=50.0)],
        parks=[Park(id="p", geometry=box(40, -80, 120, -20))],
    )
    px, py = geometry.ground_to_pixel(0.0, 0.0, 25.0)
    res = Renderer(city, geometry).render_window(int(px) - 200, int(py) - 200, 400, 400)
    s, b, h = infer_buffers(res.rgb, *res.origin_px, Camera.from_geometry(geometry))
    assert np.array_equal(s, res.surface)
    assert np.array_equal(b > 0, res.building > 0)
    assert len(np.unique(b[b > 0])) == 1
    roof = res.surface == Surface.ROOF
    assert np.median(h[roof]) == pytest.approx(50.0, abs=1.5)
    walls = np.isin(res.surface, [Surface.WALL_LEFT, Surface.WALL_RIGHT])
    assert np.abs(h[walls] - res.height[walls]).mean() < 1.0


# --- bad input ---------------------------------------------------------------------------------------------


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template_png": b"not an image"}, "not a readable PNG"),
        ({"template_png": b""}, "template_png is empty"),
        ({"template_png": _jpeg()}, "not PNG"),
        ({"infill_box": (0, 0, 65, 64)}, "infill_box"),
        ({"infill_box": (10, 10, 10, 20)}, "infill_box"),
        ({"aux": {"surface": np.zeros((32, 64), np.uint8)}}, "aux['surface'] has shape (32, 64)"),
        ({"aux": {"height": np.zeros((64, 64), np.float32)}}, "no 'surface'"),
        ({"aux": {"surface": np.full((64, 64), 9, np.uint8)}}, "outside 0..7"),
        (
            {
                "aux": {
                    "surface": np.ones((64, 64), np.uint8),
                    "height": np.full((64, 64), np.nan, np.float32),
                }
            },
            "non-finite",
        ),
        (
            {"aux": {"surface": np.ones((64, 64), np.uint8), "colour": np.ones((64, 64), np.uint8)}},
            "unknown buffers",
        ),
    ],
)
def test_bad_requests_fail_with_a_clear_message(backend, kwargs, message):
    base = {"template_png": png_bytes(np.full((64, 64, 3), 196, np.uint8))}
    base.update(kwargs)
    with pytest.raises(BackendError) as e:
        backend.generate(GenerationRequest(**base))
    assert message in str(e.value)
    assert e.value.retryable is False


def test_aux_of_another_window_is_refused(backend, tile, midtown, citicorp_origin):
    other = midtown.render_window(citicorp_origin[0] + 2048, citicorp_origin[1], 1024, 1024)
    req = GenerationRequest(
        template_png=png_bytes(template_rgb(tile, (0, 0, 1024, 1024))),
        origin_px=tile.origin_px,
        aux=aux_of(other),
    )
    with pytest.raises(BackendError, match="aux buffers do not describe this template"):
        backend.generate(req)


def test_template_without_render_colours_and_without_aux_is_refused(backend):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # not a render
    with pytest.raises(BackendError, match="no whitebox render colours"):
        backend.generate(GenerationRequest(template_png=png_bytes(noise)))


# --- construction from flat settings ----------------------------------------------------------------------


def test_registry_builds_the_backend_from_flat_settings(tower):
    from isonyc_dagster.backends.registry import make_backend

    be = make_backend("pixelart", params={"seed": 5, "tree_density": 0.3}, map_config={"name": "nyc"})
    assert isinstance(be, PixelArtBackend) and be.params == StyleParams(seed=5, tree_density=0.3)
    other = decode(be.generate(request(tower)).image_png)
    base = decode(PixelArtBackend().generate(request(tower)).image_png)
    assert not np.array_equal(other, base)  # the map-wide style seed does change the look
    with pytest.raises(ValueError, match="unknown pixel-art style parameter"):
        PixelArtBackend(params={"colour": 1})
    with pytest.raises(ValueError, match="tree_density"):
        StyleParams(tree_density=2.0)


def test_surface_only_aux_infers_building_ids_and_heights(backend, tower):
    req = GenerationRequest(
        template_png=png_bytes(tower.rgb), origin_px=tower.origin_px, aux={"surface": tower.surface}
    )
    res = backend.generate(req)
    assert res.provenance["buffers"] == "aux+inferred"
    out = decode(res.image_png)
    walls = np.isin(tower.surface, [Surface.WALL_LEFT, Surface.WALL_RIGHT])
    assert 0.15 < colours_match(out, WINDOW_COLOURS)[walls].mean() < 0.6
