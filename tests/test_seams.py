"""Seam scores: 0 for a continuous image, large for visible seams; orientation and bookkeeping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.generate.seams import (
    DEFAULT_THRESHOLD,
    aggregate,
    score_step_seams,
    seam_components,
    seam_score,
)
from tests.conftest import STYLE


def pixel_art(h: int = 128, w: int = 256, seed: int = 0) -> np.ndarray:
    """Blocky 'pixel art': 10 px flat blocks from a small palette, 2 px dither speckles, and a few long
    vertical/horizontal lines (roads, walls).

    Blocks do not line up with the cuts the tests make: a texture edge that coincides with the
    boundary along its whole length is indistinguishable from a seam (see seams module doc).
    """
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 220, (6, 3))
    idx = rng.integers(0, 6, (h // 10 + 2, w // 10 + 2)).repeat(10, 0).repeat(10, 1)[5 : h + 5, 5 : w + 5]
    img = palette[idx]
    speckle = rng.random((h // 2, w // 2)).repeat(2, 0).repeat(2, 1) < 0.1
    img = np.where(speckle[..., None], img - 25, img).clip(0, 255).astype(np.uint8)
    img[:, ::37] = (20, 20, 30)
    img[::29, :] = (200, 190, 170)
    return img


def test_continuous_image_scores_low_and_identical_flat_is_zero():
    img = pixel_art()
    a, b = img[:, :128], img[:, 128:]
    assert seam_score(a, b, "lr") < 1.0
    flat = np.full((64, 64, 3), 90, np.uint8)
    assert seam_score(flat, flat, "lr") == 0.0 and seam_score(flat, flat, "tb") == 0.0


def test_visible_seams_score_high():
    img = pixel_art()
    a, b = img[:, :128], img[:, 128:]
    brighter = np.clip(b.astype(int) + 25, 0, 255).astype(np.uint8)
    other = pixel_art(seed=7)[:, 128:]
    misaligned = np.roll(b, 6, axis=0)
    true = seam_score(a, b, "lr")
    assert true < 1.0
    for broken in (other, misaligned, brighter):  # each flagged, and far worse than the true continuation
        assert seam_score(a, broken, "lr") > max(DEFAULT_THRESHOLD, 5 * true)
    # a uniform tone shift on flat ground reads as its size in grey levels
    flat = np.full((64, 64, 3), 100, np.uint8)
    c = seam_components(flat, flat + 10, "lr")
    assert (
        c["step"] == pytest.approx(10) and c["tone"] == pytest.approx(10) and c["score"] == pytest.approx(20)
    )


def test_orientation_and_symmetry():
    img = pixel_art(128, 128, seed=3)
    a, b = img[:, :64], np.clip(img[:, 64:].astype(int) + 15, 0, 255).astype(np.uint8)
    lr = seam_score(a, b, "lr")
    assert seam_score(a.transpose(1, 0, 2), b.transpose(1, 0, 2), "tb") == pytest.approx(lr)
    assert seam_score(b[:, ::-1], a[:, ::-1], "lr") == pytest.approx(lr)  # mirrored: same seam
    # greyscale and RGBA inputs work (alpha ignored)
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    assert seam_score(rgba[:, :64], rgba[:, 64:], "lr") == pytest.approx(
        seam_score(img[:, :64], img[:, 64:], "lr")
    )
    grey = img.mean(-1).astype(np.uint8)
    assert seam_score(grey[:, :64], grey[:, 64:], "lr") >= 0


def test_only_the_band_matters():
    img = pixel_art()
    a, b = img[:, :128].copy(), img[:, 128:].copy()
    before = seam_score(a, b, "lr", overlap_px=8)
    a[:, :100] = 0  # far from the edge
    b[:, 30:] = 255
    assert seam_score(a, b, "lr", overlap_px=8) == pytest.approx(before)


def test_bad_inputs_are_clear():
    a = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="same height"):
        seam_score(a, np.zeros((12, 10, 3), np.uint8), "lr")
    with pytest.raises(ValueError, match="same width"):
        seam_score(a, np.zeros((10, 12, 3), np.uint8), "tb")
    with pytest.raises(ValueError, match="edge must be 'lr'.*or 'tb'"):
        seam_score(a, a, "left")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overlap_px must be >= 2"):
        seam_score(a, a, "lr", overlap_px=1)
    with pytest.raises(ValueError, match=r"\(H, W, 3\|4\)"):
        seam_score(np.zeros((10, 10, 2)), a, "lr")


def test_score_step_seams_keys_and_orientation():
    q = 32
    world = pixel_art(4 * q, 4 * q, seed=5)

    def quad(x: int, y: int) -> np.ndarray:
        return world[y * q : (y + 1) * q, x * q : (x + 1) * q]

    new = {(1, 1): quad(1, 1), (2, 1): quad(2, 1)}  # a 2×1 step
    ctx = {xy: quad(*xy) for xy in [(0, 1), (3, 1), (1, 0), (2, 0), (1, 2), (2, 2), (0, 0), (2, 1)]}
    scores = score_step_seams(new, ctx)
    # left/right, above, below; no diagonal (0,0), no edge inside the step, (2,1) counts as new
    # although it is also in the context
    assert set(scores) == {
        ((0, 1), (1, 1)),
        ((2, 1), (3, 1)),
        ((1, 0), (1, 1)),
        ((2, 0), (2, 1)),
        ((1, 1), (1, 2)),
        ((2, 1), (2, 2)),
    }
    assert max(scores.values()) < DEFAULT_THRESHOLD  # all cut from one continuous image
    bad = dict(new)
    bad[(1, 1)] = np.clip(quad(1, 1).astype(int) + 40, 0, 255).astype(np.uint8)
    bad_scores = score_step_seams(bad, ctx)
    assert aggregate(bad_scores) > 2 * DEFAULT_THRESHOLD
    assert bad_scores[((2, 1), (3, 1))] == pytest.approx(scores[((2, 1), (3, 1))])
    assert aggregate({}) == 0.0


def test_on_real_pixel_art_true_cuts_rank_below_foreign_content():
    files = sorted(Path(STYLE).glob("*.jpg"))
    if not files:
        pytest.skip(f"style references not available under {STYLE}")
    rng = np.random.default_rng(1)
    wins = total = 0
    for f in files:
        img = np.array(Image.open(f).convert("RGB"))
        H, W = img.shape[:2]
        for _ in range(10):
            y, x = int(rng.integers(0, H - 128)), int(rng.integers(128, W - 128))
            y2, x2 = int(rng.integers(0, H - 128)), int(rng.integers(0, W - 128))
            a = img[y : y + 128, x - 128 : x]
            true = seam_score(a, img[y : y + 128, x : x + 128], "lr")
            foreign = seam_score(a, img[y2 : y2 + 128, x2 : x2 + 128], "lr")
            wins += true < foreign
            total += 1
    assert wins / total >= 0.9


def test_continuity_mask_ignores_scene_edges_on_the_quadrant_line() -> None:
    """A wall corner lying exactly on the quadrant line is scenery: masked out. A real seam (a brightness shift where
    the render continues across) still scores high."""
    from isonyc_dagster.generate.seams import continuity_mask

    h = w = 64
    rng = np.random.default_rng(0)
    tex = rng.integers(90, 110, (h, 2 * w, 3)).astype(np.uint8)
    surface = np.full((h, 2 * w), 5, np.uint8)  # roof
    building = np.full((h, 2 * w), 7, np.int32)
    # rows 0..31: a different building starts exactly at the boundary, and the art shows it (dark wall)
    building[:32, w:] = 9
    surface[:32, w:] = 7
    img = tex.copy()
    img[:32, w:] = img[:32, w:] // 3
    a, b = img[:, :w], img[:, w:]
    mask = continuity_mask(surface[:, :w], building[:, :w], surface[:, w:], building[:, w:], "lr")
    assert mask[:32].sum() == 0 and mask[32:].all()
    assert seam_score(a, b, "lr") > DEFAULT_THRESHOLD  # unmasked: the wall edge looks like a seam
    assert seam_score(a, b, "lr", mask=mask) < 1.0  # masked: nothing wrong where the render continues
    shifted = b.astype(int)
    shifted[32:] += 25
    shifted = np.clip(shifted, 0, 255).astype(np.uint8)
    assert seam_score(a, shifted, "lr", mask=mask) > DEFAULT_THRESHOLD  # a real seam is still caught
    assert seam_score(a, b, "lr", mask=np.zeros(h, bool)) == 0.0
