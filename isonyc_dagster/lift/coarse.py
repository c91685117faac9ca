"""``coarse``: grow the scene with views from a dense orbit, chosen by their hole ratio, holes filled from the city.

Per round: every candidate pose of the dense orbit (``n_frames × coarse_dense_multiplier``) gets its hole ratio
(the share of pixels no splat covers); ``select_pose`` picks one exactly as the single-image pipeline does; the
selected view is rendered, its holes are filled from the city model (``citycam``: surface classes, building ids
and exact depth of the hidden walls and ground from this camera, textured by the backend), the city depth is
aligned to the scene's rendered depth (scale/shift + a smooth connection), the frame is added and trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage

from isonyc_dagster.lift.camera import OrthoCamera, orbit
from isonyc_dagster.lift.frames import Frame, make_frame
from isonyc_dagster.lift.pipeline import CoarseFrameStat, LiftError, LiftInput, LiftSettings, Log

if TYPE_CHECKING:
    from isonyc_dagster.backends.base import ImageBackend
    from isonyc_dagster.lift.export import RerunLog
    from isonyc_dagster.lift.scene import GaussianScene

#: A rendered pixel is a hole (to inpaint) below this accumulated opacity.
HOLE_ALPHA = 0.5
DIAG_TOPK = 10


@dataclass(frozen=True)
class Selection:
    index: int
    ratio: float
    fallback: bool


def _valid_indices(n: int, selected: list[int], adjacent_exclusion: int) -> np.ndarray:
    valid = np.ones(n, bool)
    ex = max(0, adjacent_exclusion)
    for s in selected:
        valid[max(0, s - ex) : min(n, s + ex + 1)] = False
    return np.flatnonzero(valid)


def select_pose(
    ratios: np.ndarray,
    selected: list[int],
    *,
    min_ratio: float,
    max_ratio: float,
    adjacent_exclusion: int,
    fallback_mode: Literal["none", "closest"],
) -> Selection | None:
    """The next pose: among candidates not within ±``adjacent_exclusion`` of a selected one, the largest ratio
    in [min_ratio, max_ratio]; else with ``fallback_mode="closest"`` the one closest to that band (a ratio of 0,
    nothing to inpaint, is never taken); else None."""
    r = np.asarray(ratios, np.float64)
    idx = _valid_indices(len(r), selected, adjacent_exclusion)
    if idx.size == 0:
        return None
    vr = r[idx]
    band = (vr >= min_ratio) & (vr <= max_ratio)
    if band.any():
        best = int(idx[np.flatnonzero(band)[np.argmax(vr[band])]])
        return Selection(best, float(r[best]), False)
    if fallback_mode == "none":
        return None
    dist = np.where(vr < min_ratio, min_ratio - vr, vr - max_ratio)
    dist = np.where(vr <= 0.0, np.inf, dist)
    k = int(np.argmin(dist))
    if not np.isfinite(dist[k]):
        return None
    best = int(idx[k])
    return Selection(best, float(r[best]), True)


def diagnostics(
    ratios: np.ndarray, selected: list[int], *, min_ratio: float, max_ratio: float, adjacent_exclusion: int
) -> list[str]:
    """The ``[COARSE][DIAG]`` lines printed when no pose is selected: which knob to turn."""
    r = np.asarray(ratios, np.float64)
    if r.size == 0:
        return ["[COARSE][DIAG] No candidate poses (empty dense trajectory)."]
    idx = _valid_indices(len(r), selected, adjacent_exclusion)
    excluded = len(r) - idx.size
    if idx.size == 0:
        return [
            "[COARSE][DIAG] All candidates were excluded by adjacent_exclusion. "
            f"selected_indices={selected}, adjacent_exclusion={adjacent_exclusion}."
        ]
    vr = r[idx]
    below, above = int((vr < min_ratio).sum()), int((vr > max_ratio).sum())
    in_range = int(((vr >= min_ratio) & (vr <= max_ratio)).sum())
    in_range_all = int(((r >= min_ratio) & (r <= max_ratio)).sum())
    order = np.argsort(-vr, kind="stable")[:DIAG_TOPK]
    top = ", ".join(f"{int(idx[i])}:{vr[i]:.3f}" for i in order)
    lines = [
        f"[COARSE][DIAG] inpaint_ratio(valid) stats: min={vr.min():.3f}, mean={vr.mean():.3f}, max={vr.max():.3f} "
        f"(n_valid={idx.size}, excluded_by_adjacent={excluded}).",
        f"[COARSE][DIAG] counts(valid): below_min={below}, in_range={in_range}, above_max={above} "
        f"(in_range_without_adj={in_range_all}).",
        f"[COARSE][DIAG] top{len(order)}(idx:ratio)={top}",
    ]
    if in_range_all > 0 and excluded > 0 and in_range == 0:
        lines.append(
            "[COARSE][DIAG] Likely blocked by adjacent_exclusion. Try `--coarse-adjacent-exclusion 0` or increase "
            "dense sampling (--coarse-dense-multiplier)."
        )
    elif vr.max() < min_ratio:
        lines.append(
            "[COARSE][DIAG] Holes are too small (< min). Try increasing motion (`--traj-forward-ratio/"
            "--traj-backward-ratio`, `--traj-max-percentage`), increasing `--coarse-margin`, or lowering "
            "`--coarse-min-inpaint-ratio`."
        )
    elif vr.min() > max_ratio:
        lines.append(
            "[COARSE][DIAG] Holes are too large (> max). Try increasing `--coarse-max-inpaint-ratio`, or reducing "
            "motion/margin."
        )
    else:
        lines.append(
            "[COARSE][DIAG] No candidate fell into the [min,max] band. Consider widening thresholds or adjusting "
            "motion so hole ratios land in-range."
        )
    return lines


def summary_lines(
    stats: list[CoarseFrameStat], settings: LiftSettings, dense_n: int, scene: GaussianScene
) -> list[str]:
    """The ``[COARSE] Summary`` block."""
    target = max(settings.n_frames - 2, 0)
    lines = [
        "[COARSE] ==================== Summary ====================",
        f"[COARSE] selected_extra_frames={len(stats)}/{target}, dense_nframes={dense_n}, "
        f"margin={settings.coarse_margin}, min_inpaint_ratio={settings.coarse_min_inpaint_ratio}, "
        f"max_inpaint_ratio={settings.coarse_max_inpaint_ratio}, "
        f"adjacent_exclusion={settings.coarse_adjacent_exclusion}, fallback_mode={settings.coarse_fallback_mode}",
    ]
    if not stats:
        lines.append(
            "[COARSE] No extra frames were selected: the result equals the `outpaint` stage. Consider loosening "
            "thresholds or increasing motion."
        )
    for i, s in enumerate(stats, start=1):
        note = f" (fallback_mode={settings.coarse_fallback_mode})" if s.fallback else ""
        lines.append(
            f"[COARSE] {i:02d}. dense_pose_index={s.dense_pose_index}, inpaint_ratio={s.inpaint_ratio:.3f}, "
            f"inpaint_pixels={s.inpaint_pixels}, inpaint_wo_edge_pixels={s.inpaint_wo_edge_pixels}, "
            f"added_splats={s.added_splats}{note}"
        )
    lines.append(
        f"[COARSE] scene_frames={len(scene.frames)}, gaussian_frames={len(scene.gaussian_frames)}, "
        f"total_splats={scene.count}"
    )
    lines.append("[COARSE] =================================================")
    return lines


def coverage_ratio(means: np.ndarray, radius_px: float, cam: OrthoCamera) -> float:
    """Share of ``cam``'s pixels that no splat covers: splat centres projected and dilated by their footprint
    (a cheap, occlusion-free stand-in for rendering the alpha of every dense candidate)."""
    uv, z = cam.project(means)
    ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
    hit = np.zeros((cam.height, cam.width), bool)
    hit[uv[ok, 1].astype(int), uv[ok, 0].astype(int)] = True
    k = max(1, int(np.ceil(radius_px)))
    covered = ndimage.binary_dilation(hit, structure=np.ones((2 * k + 1, 2 * k + 1), bool))
    return float(1.0 - covered.mean())


def align_depth(
    city: np.ndarray, rendered: np.ndarray, known: np.ndarray, band_px: float = 8.0
) -> np.ndarray:
    """City depth aligned to the scene's rendered depth: a least-squares scale/shift on the known pixels (with the
    worst 10 % of residuals dropped and refitted), then the remaining residual carried smoothly into the holes
    (normalised Gaussian smoothing, fading over ``band_px``), so new splats connect to the old ones."""
    c, r = city.astype(np.float64), rendered.astype(np.float64)
    m = known & np.isfinite(c) & np.isfinite(r)
    s, b = 1.0, 0.0
    if m.sum() >= 16:
        for _ in range(2):
            A = np.stack([c[m], np.ones(int(m.sum()))], axis=1)
            (s, b), *_ = np.linalg.lstsq(A, r[m], rcond=None)
            res = np.abs(s * c - r)
            m = m & (res <= np.quantile(res[m], 0.9))
    aligned = s * c + b
    resid = np.where(known, r - aligned, 0.0)
    w = ndimage.gaussian_filter(known.astype(np.float64), band_px)
    num = ndimage.gaussian_filter(resid, band_px)
    carry = np.where(w > 1e-3, num / np.maximum(w, 1e-3), 0.0)
    dist = ndimage.distance_transform_edt(~known)
    return (aligned + carry * np.exp(-dist / band_px)).astype(np.float32)


def run_coarse(
    scene: GaussianScene,
    inp: LiftInput,
    settings: LiftSettings,
    rlog: RerunLog,
    *,
    target: np.ndarray,
    backend: ImageBackend | None,
    log: Log,
) -> list[CoarseFrameStat]:
    """The coarse stage on an initialised scene; returns the stats of the frames it added."""
    from isonyc_dagster.lift.citycam import CityView

    if inp.region is None:
        raise LiftError("stage 'coarse' needs a map rectangle (hidden surfaces come from the city model)")
    base = scene.frames[-1].camera
    m = settings.coarse_margin
    dense_n = settings.n_frames * settings.coarse_dense_multiplier
    cams = orbit(
        base,
        target,
        dense_n,
        forward_ratio=settings.traj_forward_ratio,
        backward_ratio=settings.traj_backward_ratio,
        max_percentage=settings.traj_max_percentage,
        width=base.width + m,
        height=base.height + m,
    )
    city = CityView(inp.region, backend=backend)
    selected: list[int] = []
    stats: list[CoarseFrameStat] = []
    log(
        f"[COARSE] generating the coarse scene with up to {settings.n_frames} frames ({dense_n} candidate poses)"
    )
    for k in range(max(settings.n_frames - 2, 0)):
        arrays = scene.export_arrays()
        radius = float(np.median(np.exp(arrays["log_scales"]).max(axis=1))) * 2.0
        ratios = np.array([coverage_ratio(arrays["means"], radius * c.scale, c) for c in cams])
        sel = select_pose(
            ratios,
            selected,
            min_ratio=settings.coarse_min_inpaint_ratio,
            max_ratio=settings.coarse_max_inpaint_ratio,
            adjacent_exclusion=settings.coarse_adjacent_exclusion,
            fallback_mode=settings.coarse_fallback_mode,
        )
        if sel is None:
            for line in diagnostics(
                ratios,
                selected,
                min_ratio=settings.coarse_min_inpaint_ratio,
                max_ratio=settings.coarse_max_inpaint_ratio,
                adjacent_exclusion=settings.coarse_adjacent_exclusion,
            ):
                log(line)
            log("[COARSE] No more suitable frames found for inpainting")
            break
        selected.append(sel.index)
        note = f" (fallback_mode={settings.coarse_fallback_mode})" if sel.fallback else ""
        log(
            f"[COARSE] frame {k + 3}/{settings.n_frames}: selected pose {sel.index} with inpaint ratio {sel.ratio:.3f}{note}"
        )
        frame = inpaint_frame(scene, cams[sel.index], city, name=f"coarse_{sel.index}")
        added = scene.add_frame(frame, settings.splat_stride)
        rlog.log_frame(frame, stage="Coarse Scene")
        stats.append(
            CoarseFrameStat(
                dense_pose_index=sel.index,
                inpaint_ratio=sel.ratio,
                inpaint_pixels=int(frame.inpaint.sum()),
                inpaint_wo_edge_pixels=int(frame.inpaint_wo_edge.sum()),
                added_splats=added,
                fallback=sel.fallback,
            )
        )
        scene.train(settings.iters_per_frame, log=log, label=f"coarse {k + 1}")
    if settings.coarse_print_summary:
        for line in summary_lines(stats, settings, dense_n, scene):
            log(line)
    return stats


def inpaint_frame(scene: GaussianScene, cam: OrthoCamera, city: object, *, name: str) -> Frame:
    """Render ``cam``, fill its holes from the city model, align the city depth, and make the frame
    (``inpaint`` = the holes)."""
    from isonyc_dagster.lift.citycam import CityView

    assert isinstance(city, CityView)
    r = scene.render(cam)
    hole = r.alpha < HOLE_ALPHA
    view = city.render(cam)
    rgb = np.where(hole[..., None], view.rgb, r.rgb)
    depth = align_depth(view.depth, r.depth, r.alpha > 0.9)
    depth = np.where(hole, depth, r.depth).astype(np.float32)
    return make_frame(name, cam, rgb, depth, hole, conf=view.valid, exact_depth=False)
