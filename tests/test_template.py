"""Templates for each step kind (exact pixels) and validation/extraction of model outputs."""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.generate.plan import LatticePlan, StepKind
from isonyc_dagster.generate.template import (
    ContextMissing,
    OutputRejected,
    RenderMissing,
    Template,
    TemplateError,
    build_template,
    extract_quadrants,
    png_bytes,
)
from isonyc_dagster.geo.surfaces import PALETTE, Surface

Q = 512
RED = np.array([255, 0, 0], np.uint8)


_I, _J = np.meshgrid(np.arange(Q), np.arange(Q))


def pattern(x: int, y: int, salt: int) -> np.ndarray:
    """A distinct 512² image per (quadrant, salt): a 1 px shift changes R or G, another quadrant or salt
    changes the offsets. Cheap to PNG-encode, unlike noise."""
    r = (_I + 13 * x + 71 * salt) & 255
    g = (_J + 17 * y + 31 * salt) & 255
    b = ((_I // 4) * 5 + (_J // 4) * 3 + 29 * salt + 7 * x * y) & 255
    return np.dstack([r, g, b]).astype(np.uint8)


def render(x, y):
    return pattern(x, y, 1)


def generated(x, y):
    return pattern(x, y, 2)


def rect(x0, y0, w, h):
    return {(x, y) for x in range(x0, x0 + w) for y in range(y0, y0 + h)}


@pytest.fixture(scope="module")
def plan() -> LatticePlan:
    return LatticePlan.from_quadrants(rect(0, 0, 9, 9))


def world(step, fn):
    """What the window should show from ``fn`` images alone (no border), built independently."""
    x0, y0 = step.window
    big = np.zeros((3 * Q, 3 * Q, 3), np.uint8)
    bx, by = (x0 // Q), (y0 // Q)
    for j in range(3):
        for i in range(3):
            big[j * Q : (j + 1) * Q, i * Q : (i + 1) * Q] = fn(bx + i, by + j)
    ox, oy = x0 - bx * Q, y0 - by * Q
    return big[oy : oy + 2 * Q, ox : ox + 2 * Q]


def assert_border(rgb, box):
    """Exactly 2 px of #FF0000 inside ``box``, and not red right inside or outside it."""
    x0, y0, x1, y1 = box
    for i in (0, 1):
        assert (rgb[y0 + i, x0:x1] == RED).all() and (rgb[y1 - 1 - i, x0:x1] == RED).all()
        assert (rgb[y0:y1, x0 + i] == RED).all() and (rgb[y0:y1, x1 - 1 - i] == RED).all()
    inner = rgb[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
    assert not (inner == RED).all(axis=-1).any(), "red inside the 2 px border"
    # outside the box (where the box does not touch the window edge) nothing is red either
    if x0 > 0:
        assert not (rgb[y0:y1, x0 - 1] == RED).all(axis=-1).any()
    if y1 < rgb.shape[0]:
        assert not (rgb[y1, x0:x1] == RED).all(axis=-1).any()


def test_block_template_is_the_render_with_a_border(plan):
    step = plan.step(StepKind.BLOCK, (1, 1))
    t = build_template(step, render_rgb=render, generated_rgb=generated)
    assert t.rgb.shape == (1024, 1024, 3) and t.infill_box == (0, 0, 1024, 1024)
    assert t.origin_px == (3 * Q, 3 * Q) and t.context_used == () and t.padding == ()
    assert_border(t.rgb, t.infill_box)
    expect = world(step, render)
    assert (t.rgb[2:-2, 2:-2] == expect[2:-2, 2:-2]).all()
    # the PNG is lossless and the hash is of the PNG bytes
    assert (np.asarray(Image.open(io.BytesIO(t.png))) == t.rgb).all()
    assert t.sha256 == hashlib.sha256(t.png).hexdigest()


def test_block_never_uses_existing_generations_of_later_steps(plan):
    # Regenerating a block after its bridges exist must not peek at them (they become stale instead).
    step = plan.step(StepKind.BLOCK, (0, 0))
    calls = []
    t = build_template(
        step, render_rgb=render, generated_rgb=lambda x, y: calls.append((x, y)) or generated(x, y)
    )
    assert calls == [] and t.context_used == ()


@pytest.mark.parametrize(
    ("kind", "cell", "infill", "origin"),
    [
        (StepKind.BRIDGE_V, (1, 1), (256, 0, 768, 1024), (5 * Q - 256, 3 * Q)),
        (StepKind.BRIDGE_H, (1, 1), (0, 256, 1024, 768), (3 * Q, 5 * Q - 256)),
        (StepKind.CORNER, (1, 1), (256, 256, 768, 768), (5 * Q - 256, 5 * Q - 256)),
    ],
)
def test_bridge_and_corner_templates_have_256_px_context_copied_exactly(plan, kind, cell, infill, origin):
    step = plan.step(kind, cell)
    t = build_template(step, render_rgb=render, generated_rgb=generated)
    assert t.infill_box == infill and t.origin_px == origin
    assert set(t.context_used) == set(step.context) and t.padding == ()
    assert_border(t.rgb, infill)
    x0, y0, x1, y1 = infill
    gen, ren = world(step, generated), world(step, render)
    outside = np.ones((1024, 1024), bool)
    outside[y0:y1, x0:x1] = False
    assert (t.rgb[outside] == gen[outside]).all(), "context pixels are the neighbours' generations, exactly"
    assert (t.rgb[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] == ren[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]).all()
    # the context band is 256 px deep on each long side (all four sides for a corner)
    if kind is not StepKind.BRIDGE_H:
        assert x0 == 256 and 1024 - x1 == 256
    if kind is not StepKind.BRIDGE_V:
        assert y0 == 256 and 1024 - y1 == 256
    # spot-check against the neighbour images themselves (not through world())
    if kind is StepKind.BRIDGE_V:
        assert (t.rgb[:512, :256] == generated(4, 3)[:, 256:]).all()
        assert (t.rgb[512:, 768:] == generated(6, 4)[:, :256]).all()
    if kind is StepKind.CORNER:
        assert (t.rgb[:256, :256] == generated(4, 4)[256:, 256:]).all()
        assert (t.rgb[768:, 256:768] == generated(5, 6)[:256]).all()


def test_bridge_at_the_bounds_edge_gets_a_full_quadrant_of_one_sided_context():
    plan = LatticePlan.from_quadrants(rect(0, 0, 3, 2))  # V bridge in column 2 has a block only on its left
    step = plan.step(StepKind.BRIDGE_V, (0, 0))
    t = build_template(step, render_rgb=render, generated_rgb=generated)
    assert t.infill_box == (512, 0, 1024, 1024) and t.origin_px == (Q, 0)
    assert (t.rgb[:512, :512] == generated(1, 0)).all() and (t.rgb[512:, :512] == generated(1, 1)).all()
    assert_border(t.rgb, t.infill_box)


def test_padding_beyond_the_bounds_is_render_and_is_reported():
    bounds = rect(0, 0, 2, 2) | {(2, 0), (3, 0), (3, 1)}  # (2, 1) is a hole in the V bridge
    plan = LatticePlan.from_quadrants(bounds)
    step = plan.step(StepKind.BRIDGE_V, (0, 0))
    assert step.quadrants == ((2, 0),)

    def render_in_bounds(x, y):
        return render(x, y) if (x, y) in bounds else None

    t = build_template(step, render_rgb=render_in_bounds, generated_rgb=generated)
    assert t.padding == ((2, 1),) and t.padding_unrendered == ((2, 1),)
    assert (t.rgb[512 + 2 : 1024 - 2, 256 + 2 : 768 - 2] == PALETTE[Surface.GROUND]).all()
    t2 = build_template(step, render_rgb=render, generated_rgb=generated)
    assert t2.padding_unrendered == ()
    assert (t2.rgb[514:1022, 258:766] == render(2, 1)[2:510, 2:510]).all()


def test_missing_context_fails_fast_listing_every_quadrant(plan):
    step = plan.step(StepKind.CORNER, (0, 0))  # (2, 2); context = its 8 neighbours
    absent = {(1, 1), (3, 2)}
    with pytest.raises(ContextMissing) as ei:
        build_template(
            step, render_rgb=render, generated_rgb=lambda x, y: None if (x, y) in absent else generated(x, y)
        )
    assert set(ei.value.quadrants) == absent and ei.value.retryable
    assert "(1, 1)" in str(ei.value) and "(3, 2)" in str(ei.value) and "corner:0,0" in str(ei.value)
    t = build_template(
        step,
        render_rgb=render,
        generated_rgb=lambda x, y: None if (x, y) in absent else generated(x, y),
        allow_missing_context=True,
    )
    assert set(t.missing_context) == absent and len(t.context_used) == 6
    assert (t.rgb[:256, :256] == render(1, 1)[256:, 256:]).all()


def test_missing_render_and_bad_images_are_named(plan):
    step = plan.step(StepKind.BLOCK, (0, 0))
    with pytest.raises(RenderMissing, match=r"\(1, 0\)"):
        build_template(
            step, render_rgb=lambda x, y: None if (x, y) == (1, 0) else render(x, y), generated_rgb=generated
        )
    with pytest.raises(
        TemplateError, match=r"render of quadrant \(0, 0\) must be a 512×512×3 uint8.*\(256, 256, 3\)"
    ):
        build_template(
            step, render_rgb=lambda x, y: np.zeros((256, 256, 3), np.uint8), generated_rgb=generated
        )
    with pytest.raises(TemplateError, match="float64"):
        build_template(step, render_rgb=lambda x, y: np.zeros((Q, Q, 3)), generated_rgb=generated)


def test_aux_buffers_are_assembled_over_the_window(plan):
    step = plan.step(StepKind.BRIDGE_V, (0, 0))  # window x from 768: quadrants x = 1, 2, 3

    def aux(x, y):
        if x == 3 and y == 1:
            return None  # a quadrant with no buffers: zeros
        return {
            "surface": np.full((Q, Q), x + 10 * y, np.uint8),
            "height": np.full((Q, Q), float(x), np.float32),
        }

    t = build_template(step, render_rgb=render, generated_rgb=generated, render_aux=aux)
    s = t.aux["surface"]
    assert s.shape == (1024, 1024) and s.dtype == np.uint8 and t.aux["height"].dtype == np.float32
    assert (s[:512, :256] == 1).all() and (s[:512, 256:768] == 2).all() and (s[:512, 768:] == 3).all()
    assert (s[512:, 256:768] == 12).all() and (s[512:, 768:] == 0).all()


# --- extraction -------------------------------------------------------------------------------------
def fake_model(t: Template, fill=None) -> np.ndarray:
    """A well-behaved model: keeps the context, paints new pixel art (a pattern) over the infill."""
    out = t.rgb.copy()
    x0, y0, x1, y1 = t.infill_box
    if fill is None:  # blocky "pixel art": 4 px cells of random colours (none near pure red)
        cells = np.random.default_rng(7).integers(0, 200, ((y1 - y0) // 4, (x1 - x0) // 4, 3), dtype=np.uint8)
        fill = cells.repeat(4, 0).repeat(4, 1)
    out[y0:y1, x0:x1] = fill
    return out


def test_extraction_round_trip_crops_only_the_steps_quadrants():
    plan = LatticePlan.from_quadrants(rect(0, 0, 5, 5) - {(2, 1)})
    step = plan.step(StepKind.BRIDGE_V, (0, 0))  # keeps (2, 0); (2, 1) is padding inside the infill
    t = build_template(step, render_rgb=render, generated_rgb=generated)
    out = fake_model(t)
    quads = extract_quadrants(step, t, png_bytes(out))
    assert list(quads) == [(2, 0)]
    x0, y0 = step.window
    assert (quads[(2, 0)] == out[0:Q, 2 * Q - x0 : 3 * Q - x0]).all()
    assert quads[(2, 0)].shape == (Q, Q, 3) and quads[(2, 0)].dtype == np.uint8
    # the stored template PNG works as well as the Template object; RGBA opaque output is fine
    rgba = np.dstack([out, np.full((1024, 1024), 255, np.uint8)])
    again = extract_quadrants(step, t.png, png_bytes(rgba))
    assert (again[(2, 0)] == quads[(2, 0)]).all()


def test_extraction_of_a_block_returns_four_quadrants(plan):
    step = plan.step(StepKind.BLOCK, (0, 0))
    t = build_template(step, render_rgb=render, generated_rgb=generated)
    out = fake_model(t)
    quads = extract_quadrants(step, t, png_bytes(out))
    assert sorted(quads) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (quads[(1, 1)] == out[Q:, Q:]).all() and (quads[(0, 1)] == out[Q:, :Q]).all()


@pytest.fixture(scope="module")
def corner(plan):
    step = plan.step(StepKind.CORNER, (0, 0))
    return step, build_template(step, render_rgb=render, generated_rgb=generated)


def test_rejects_wrong_size_without_resizing(corner):
    step, t = corner
    small = png_bytes(fake_model(t)[:1023, :1023])
    with pytest.raises(OutputRejected, match=r"1023×1023 px, expected exactly 1024×1024") as ei:
        extract_quadrants(step, t, small)
    assert ei.value.reason == "size" and ei.value.retryable


def test_rejects_corrupt_lossy_and_wrong_mode(corner):
    step, t = corner
    good = png_bytes(fake_model(t))
    with pytest.raises(OutputRejected, match="not a decodable image") as ei:
        extract_quadrants(step, t, b"\x89PNG this is not an image")
    assert ei.value.reason == "decode"
    with pytest.raises(OutputRejected, match="corrupt"):
        extract_quadrants(step, t, good[: len(good) // 2])  # truncated download
    with pytest.raises(OutputRejected, match="empty"):
        extract_quadrants(step, t, b"")
    flipped = bytearray(good)
    flipped[len(good) // 2 : len(good) // 2 + 64] = bytes(64)  # corrupt the compressed pixel data
    with pytest.raises(OutputRejected, match="corrupt"):
        extract_quadrants(step, t, bytes(flipped))
    buf = io.BytesIO()
    Image.fromarray(fake_model(t)).save(buf, "JPEG", quality=95)
    with pytest.raises(OutputRejected, match="JPEG, expected lossless PNG"):
        extract_quadrants(step, t, buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(fake_model(t)).convert("L").save(buf, "PNG")
    with pytest.raises(OutputRejected, match="mode L"):
        extract_quadrants(step, t, buf.getvalue())


def test_rejects_red_border_remnants_above_the_threshold(corner):
    step, t = corner
    with pytest.raises(OutputRejected, match=r"pure-red") as ei:  # the model returned the template
        extract_quadrants(step, t, t.png)
    assert ei.value.reason == "red_border"
    assert int(re.search(r"(\d+) pure-red", str(ei.value)).group(1)) >= 512 * 512 - 508 * 508  # the border
    out = fake_model(t)
    out[300, 300:364] = (255, 0, 0)  # exactly 64 stray red pixels: tolerated
    assert (2, 2) in extract_quadrants(step, t, png_bytes(out))
    out[301, 300:310] = (250, 3, 2)  # near-pure red counts too
    with pytest.raises(OutputRejected, match="74 pure-red"):
        extract_quadrants(step, t, png_bytes(out))
    out = fake_model(t)
    out[300:310, 300:310] = (200, 30, 30)  # a real red roof is not a remnant
    extract_quadrants(step, t, png_bytes(out))


def test_rejects_blank_and_transparent_infill(corner):
    step, t = corner
    with pytest.raises(OutputRejected, match=r"near-uniform colour \(128, 128, 128\)") as ei:
        extract_quadrants(step, t, png_bytes(fake_model(t, fill=(128, 128, 128))))
    assert ei.value.reason == "blank"
    noisy_grey = np.random.default_rng(1).integers(127, 130, (512, 512, 3), dtype=np.uint8)
    with pytest.raises(OutputRejected, match="blank"):
        extract_quadrants(step, t, png_bytes(fake_model(t, fill=noisy_grey)))
    out = fake_model(t)
    rgba = np.dstack([out, np.full((1024, 1024), 255, np.uint8)])
    rgba[400, 400, 3] = 0
    with pytest.raises(OutputRejected, match="1 pixels of the generated quadrants are") as ei:
        extract_quadrants(step, t, png_bytes(rgba))
    assert ei.value.reason == "transparent"


def test_uniform_output_is_fine_where_the_render_is_uniform_water(plan):
    # Open harbour: the render is all water, so a flat water colour is a correct generation.
    step = plan.step(StepKind.CORNER, (1, 1))
    water = np.empty((Q, Q, 3), np.uint8)
    water[:] = PALETTE[Surface.WATER]
    t = build_template(step, render_rgb=lambda x, y: water, generated_rgb=generated)
    quads = extract_quadrants(step, t, png_bytes(fake_model(t, fill=(74, 99, 114))))
    assert (quads[(5, 5)] == (74, 99, 114)).all()
    with pytest.raises(OutputRejected, match="blank"):  # but a black frame is a failed call
        extract_quadrants(step, t, png_bytes(fake_model(t, fill=(0, 0, 0))))


def test_real_render_template_and_aux_line_up_with_a_window_render(geometry):
    """With the real renderer, the assembled template render and aux buffers equal one render of the window."""
    import json

    import shapely
    from shapely.geometry import shape

    from isonyc_dagster.geodata.model import City
    from isonyc_dagster.render import Renderer
    from tests.conftest import geodata_file

    fc = json.loads(geodata_file("midtown_east_land_nybb.geojson").read_text())

    def to_ground(c):
        e, n = geometry.lnglat_to_ground(c[:, 0], c[:, 1])
        return np.stack([e, n], axis=1)

    land = shapely.transform(shapely.union_all([shape(f["geometry"]) for f in fc["features"]]), to_ground)
    renderer = Renderer(City(land=land), geometry)
    loc = geometry.locate(40.7540, -73.9650)  # East River shore at 49th St
    qx, qy = loc["quadrant"]["x"], loc["quadrant"]["y"]
    plan = LatticePlan.from_quadrants(rect(qx - 2, qy - 2, 6, 6))
    step = plan.step_for_quadrant(qx, qy)
    renders = {}

    def rr(x, y):
        if (x, y) not in renders:
            renders[(x, y)] = renderer.render_quadrant(x, y)
        return renders[(x, y)]

    t = build_template(
        step,
        render_rgb=lambda x, y: rr(x, y).rgb,
        generated_rgb=lambda x, y: rr(x, y).rgb,  # stand-in pixels: only placement is checked here
        render_aux=lambda x, y: {"surface": rr(x, y).surface, "height": rr(x, y).height},
    )
    whole = renderer.render_window(*t.origin_px, 1024, 1024)
    assert (t.aux["surface"] == whole.surface).all()
    assert (t.aux["height"] == whole.height).all()
    x0, y0, x1, y1 = t.infill_box
    inner = (slice(y0 + 2, y1 - 2), slice(x0 + 2, x1 - 2))
    assert (t.rgb[inner] == whole.rgb[inner]).all()
    assert len(np.unique(whole.surface)) >= 2  # land and water: a real, non-trivial window
