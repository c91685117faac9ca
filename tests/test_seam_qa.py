"""The ``seams`` QA score: planted faults fail it, an untouched cut and a wall painted two colours do not."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from isonyc_dagster.generate.seams import QA_THRESHOLD, misalignment, qa_seam_components, qa_seam_score

H, W, CUT = 256, 256, 128


def _scene(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A flat-shaded 'render' of isometric blocks and the 'pixel art' drawn from it: other colours, a world-aligned
    window grid on every block and dark outlines, so a cut through it is seamless."""
    rng = np.random.default_rng(seed)
    render = Image.new("RGB", (W, H), (120, 120, 120))
    draw = ImageDraw.Draw(render)
    for _ in range(14):
        x, y = int(rng.integers(-40, W)), int(rng.integers(-20, H))
        w, h = int(rng.integers(30, 90)), int(rng.integers(20, 70))
        c = tuple(int(v) for v in rng.integers(40, 220, 3))
        draw.polygon([(x, y), (x + w, y + w // 2), (x + w, y + w // 2 + h), (x, y + h)], fill=c)
    r = np.asarray(render).copy()
    lut = (rng.permutation(256) * 0.7 + 30).astype(np.uint8)  # away from 0 and 255: recolours do not clip
    g = lut[r]
    yy, xx = np.mgrid[0:H, 0:W]
    windows = ((yy % 6) < 2) & ((xx % 5) < 2) & (r.sum(-1) != 360)
    g[windows] = (g[windows] * 0.55).astype(np.uint8)
    edge = np.zeros((H, W), bool)
    edge[:, 1:] |= (r[:, 1:] != r[:, :-1]).any(-1)
    edge[1:] |= (r[1:] != r[:-1]).any(-1)
    g[edge] = (20, 20, 28)
    return r, g


def _split(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return img[:, :CUT], img[:, CUT:]


def test_untouched_cut_passes_and_planted_faults_fail() -> None:
    render, art = _scene()
    ra, rb = _split(render)
    a, b = _split(art)
    assert qa_seam_score(a, b, "lr", render_a=ra, render_b=rb) < QA_THRESHOLD
    shifted = np.roll(b, 3, axis=0)  # the context band 3 px off along the edge
    assert qa_seam_components(a, shifted, "lr", render_a=ra, render_b=rb)["align"] > QA_THRESHOLD
    across = np.roll(b, -2, axis=1)  # 2 px off across the edge
    assert qa_seam_score(a, across, "lr", render_a=ra, render_b=rb) > QA_THRESHOLD
    brighter = np.clip(b.astype(np.int16) + 8, 0, 255).astype(np.uint8)
    assert qa_seam_components(a, brighter, "lr", render_a=ra, render_b=rb)["tone"] >= 7.5
    _, other = _split(_scene(seed=11)[1])  # generated blind: other content
    assert qa_seam_score(a, other, "lr", render_a=ra, render_b=rb) > QA_THRESHOLD
    # Top/bottom edges are judged the same way.
    ta, tb = art[:CUT], art[CUT:]
    assert qa_seam_score(ta, tb, "tb", render_a=render[:CUT], render_b=render[CUT:]) < QA_THRESHOLD
    assert misalignment(ta, np.roll(tb, 4, axis=1), render[:CUT], render[CUT:], "tb") > 0.15


def test_a_wall_painted_two_colours_on_the_quadrant_line_is_scenery_not_a_seam() -> None:
    """The demo map's false failures: one building wall continues across the edge (same surface, same building),
    and the later step painted its part of the wall in another material. A person sees two facades; QA passes."""
    render, art = _scene()
    render[60:140], art = render[60:140].copy(), art.copy()
    render[60:140] = (160, 158, 170)  # one flat wall in the render, across the edge
    wall = np.full((80, W, 3), (206, 186, 148), np.uint8)  # tan facade ...
    xx = np.mgrid[0:80, 0:W][1]
    wall[(xx % 3) < 1] = (46, 44, 54)  # ... with world-aligned window columns (dark pixels on every row)
    art[60:140] = wall
    ra, rb = _split(render)
    a, b = _split(art)
    b = b.copy()
    facade = (b[60:140] == (206, 186, 148)).all(-1)
    b[60:140][facade] = (140, 164, 180)  # the later step painted its part of the wall in blue glass
    assert qa_seam_score(a, b, "lr", render_a=ra, render_b=rb) < QA_THRESHOLD
    # The same colour change over the whole quadrant (a step that drifted in tone) is a seam.
    drift = np.array([140, 164, 180]) - np.array([206, 186, 148])
    tinted = np.clip(art[:, CUT:].astype(np.int16) + drift // 4, 0, 255).astype(np.uint8)
    assert qa_seam_score(a, tinted, "lr", render_a=ra, render_b=rb) > QA_THRESHOLD


def test_featureless_render_is_not_judged_for_alignment() -> None:
    """Open water: the render is one colour, so a shifted water texture cannot be told (nor seen)."""
    rng = np.random.default_rng(0)
    water = np.full((H, W, 3), (64, 104, 168), np.uint8)
    art = np.where(rng.random((H, W, 1)) < 0.05, 84, 70).astype(np.uint8).repeat(3, -1)
    ra, rb = _split(water)
    a, b = _split(art)
    assert misalignment(a, np.roll(b, 3, axis=0), ra, rb, "lr") == 0.0
