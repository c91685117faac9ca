"""Coarse-stage pose selection (thresholds, adjacent exclusion, fallback), its diagnostics and summary, and the
depth alignment of inpainted frames — on synthetic ratios and depths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isonyc_dagster.lift.camera import look_at
from isonyc_dagster.lift.coarse import (
    Selection,
    align_depth,
    coverage_ratio,
    diagnostics,
    select_pose,
    summary_lines,
)
from isonyc_dagster.lift.pipeline import CoarseFrameStat, LiftSettings
from isonyc_dagster.lift.scene import GaussianScene

BAND = {"min_ratio": 0.05, "max_ratio": 0.25}


def sel(ratios, selected=(), exclusion=1, fallback="none"):
    return select_pose(
        np.array(ratios), list(selected), adjacent_exclusion=exclusion, fallback_mode=fallback, **BAND
    )


def test_the_largest_ratio_inside_the_band_wins() -> None:
    assert sel([0.01, 0.10, 0.24, 0.30, 0.05]) == Selection(2, 0.24, False)
    # The band is inclusive at both ends.
    assert sel([0.25, 0.01]) == Selection(0, 0.25, False)
    assert sel([0.05, 0.01]) == Selection(0, 0.05, False)
    # Above the band never wins while something inside it remains.
    assert sel([0.90, 0.06]).index == 1


def test_adjacent_exclusion_skips_neighbours_of_selected_poses() -> None:
    ratios = [0.10, 0.20, 0.24, 0.21, 0.05, 0.11]
    assert sel(ratios).index == 2
    assert sel(ratios, selected=[2]).index == 5  # 1 and 3 are within ±1 of 2; 2 itself is taken
    assert sel(ratios, selected=[2], exclusion=0).index == 3
    assert sel(ratios, selected=[2], exclusion=3) is None  # 0…5 all excluded
    assert sel(ratios, selected=[2, 5], exclusion=1).index == 0


def test_fallback_closest_picks_the_pose_nearest_the_band() -> None:
    below = [0.01, 0.03, 0.02]
    above = [0.60, 0.30, 0.90]
    assert sel(below) is None and sel(above) is None
    assert sel(below, fallback="closest") == Selection(1, 0.03, True)
    assert sel(above, fallback="closest") == Selection(1, 0.30, True)
    assert sel([0.04, 0.40], fallback="closest").index == 0  # 0.01 below vs 0.15 above
    # Nothing to inpaint is never worth a frame, even as a fallback.
    assert sel([0.0, 0.0], fallback="closest") is None
    # The fallback respects the exclusion too.
    assert sel([0.03, 0.02, 0.04], selected=[2], fallback="closest") == Selection(0, 0.03, True)


def test_diagnostics_say_which_knob_to_turn() -> None:
    small = diagnostics(np.array([0.01, 0.02, 0.03]), [], adjacent_exclusion=1, **BAND)
    assert small[0].startswith("[COARSE][DIAG] inpaint_ratio(valid) stats: min=0.010, mean=0.020, max=0.030")
    assert "below_min=3, in_range=0, above_max=0 (in_range_without_adj=0)" in small[1]
    assert small[2] == "[COARSE][DIAG] top3(idx:ratio)=2:0.030, 1:0.020, 0:0.010"
    assert "too small" in small[3] and "--coarse-min-inpaint-ratio" in small[3]
    large = diagnostics(np.array([0.5, 0.6]), [], adjacent_exclusion=1, **BAND)
    assert "too large" in large[-1]
    blocked = diagnostics(np.array([0.5, 0.1, 0.5, 0.5]), [0], adjacent_exclusion=1, **BAND)
    assert "in_range=0" in blocked[1] and "in_range_without_adj=1" in blocked[1]
    assert "adjacent_exclusion" in blocked[-1]


def test_the_summary_lists_each_frame_and_says_when_nothing_was_selected() -> None:
    scene = GaussianScene(torch.device("cpu"))
    settings = LiftSettings(stage="coarse", n_frames=5)
    none = summary_lines([], settings, 50, scene)
    assert none[0] == "[COARSE] ==================== Summary ===================="
    assert none[1].startswith("[COARSE] selected_extra_frames=0/3, dense_nframes=50, margin=32")
    assert "the result equals the `outpaint` stage" in none[2]
    stats = [
        CoarseFrameStat(7, 0.2, 100, 80, 80),
        CoarseFrameStat(30, 0.31, 120, 90, 90, fallback=True),
    ]
    two = summary_lines(stats, settings, 50, scene)
    assert two[2] == (
        "[COARSE] 01. dense_pose_index=7, inpaint_ratio=0.200, inpaint_pixels=100, inpaint_wo_edge_pixels=80, "
        "added_splats=80"
    )
    assert two[3].endswith("added_splats=90 (fallback_mode=closest)")
    assert two[4] == "[COARSE] scene_frames=0, gaussian_frames=0, total_splats=0"


def test_depth_alignment_recovers_scale_and_shift_and_connects_smoothly() -> None:
    rng = np.random.default_rng(0)
    city = 100.0 + rng.random((40, 40)).astype(np.float32) * 20.0
    rendered = (1.02 * city + 3.0).astype(np.float32)
    known = np.ones((40, 40), bool)
    known[10:30, 10:30] = False
    aligned = align_depth(city, rendered, known)
    assert np.abs(aligned - (1.02 * city + 3.0)).max() < 1e-2
    # With a local offset on the known side, the hole's depth starts from it and fades back to the fit.
    bumped = rendered.copy()
    bumped[:, :10] += 1.0
    a2 = align_depth(city, bumped, known)
    edge, deep = a2[20, 10] - (1.02 * city[20, 10] + 3.0), a2[20, 20] - (1.02 * city[20, 20] + 3.0)
    assert edge > deep > -0.5


@pytest.mark.parametrize("shift", [0.0, 8.0])
def test_coverage_ratio_counts_the_pixels_no_splat_reaches(shift: float) -> None:
    cam = look_at(np.zeros(3), -15.0, -45.0, 1.0, 32, 32)
    ys, xs = np.mgrid[0:32, 0:16]
    pts = cam.unproject(np.stack([xs.ravel() + 0.5 + shift, ys.ravel() + 0.5], 1), np.full(xs.size, 10.0))
    r = coverage_ratio(pts, 1.0, cam)
    covered = 16 + 1 if shift == 0 else 16 + 2
    assert r == pytest.approx(1 - covered * 32 / (32 * 32))
