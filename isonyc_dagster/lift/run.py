"""The lift's stage runner: frames → Gaussian scene → coarse frames → outputs (see ``pipeline``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from isonyc_dagster.lift import export
from isonyc_dagster.lift.camera import OrthoCamera, orbit
from isonyc_dagster.lift.frames import Frame, make_frame, resample_view
from isonyc_dagster.lift.pipeline import LiftError, LiftInput, LiftResult, LiftSettings, Log
from isonyc_dagster.lift.raster import psnr
from isonyc_dagster.lift.scene import GaussianScene, cpu_threads, resolve_device

if TYPE_CHECKING:
    from isonyc_dagster.backends.base import ImageBackend

#: The final trajectory: len(frames) × this many frames, at most ``VIDEO_MAX_FRAMES`` (the original's rule).
VIDEO_FRAMES_PER_FRAME = 25
VIDEO_MAX_FRAMES = 150


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def input_frame(inp: LiftInput, settings: LiftSettings) -> Frame:
    """The input as a frame at the working resolution (supervise = the input's mask, exact depth)."""
    if inp.depth is None:
        raise LiftError("a depth source is required: pass --depth-path or use a map rectangle")
    if inp.rgb.shape[:2] != inp.depth.shape or inp.supervise.shape != inp.depth.shape:
        raise LiftError(
            f"input image {inp.rgb.shape[:2]}, depth {inp.depth.shape} and mask {inp.supervise.shape} differ in size"
        )
    cam, rgb, depth, (sup,) = resample_view(
        inp.camera, inp.rgb, inp.depth, [inp.supervise], settings.max_resolution
    )
    return make_frame("input", cam, rgb, depth, sup)


def video_frame_count(settings: LiftSettings, n_frames: int) -> int:
    if settings.video_frames is not None:
        return settings.video_frames
    return min(n_frames * VIDEO_FRAMES_PER_FRAME, VIDEO_MAX_FRAMES)


def scene_target(frame: Frame) -> np.ndarray:
    """The point the trajectories orbit: the median depth under the input's centre region."""
    h, w = frame.depth.shape
    centre = frame.depth[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    return frame.camera.image_center_point(float(np.median(centre)))


def run_stages(
    inp: LiftInput, settings: LiftSettings, out: Path, *, backend: ImageBackend | None, log: Log
) -> LiftResult:
    """See ``pipeline.run_lift``."""
    device = resolve_device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LiftError("device 'cuda' was asked for but CUDA is not available; use --device auto or cpu")
    with cpu_threads(device):
        return _run(inp, settings, out, device, backend=backend, log=log)


def _run(
    inp: LiftInput,
    settings: LiftSettings,
    out: Path,
    device: torch.device,
    *,
    backend: ImageBackend | None,
    log: Log,
) -> LiftResult:
    timer = _Timer()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    with timer.stage("prepare"):
        frame0 = input_frame(inp, settings)
    w, h = frame0.size
    rlog = export.RerunLog(out / "lift.rrd", "landscape" if w >= h else "portrait")
    scene = GaussianScene(device, seed=settings.seed)
    log(
        f"[lift] {inp.name}: {w}×{h} px at {frame0.camera.metres_per_pixel:.3f} m/px, stage {settings.stage}, "
        f"rasterizer {scene.rasterizer}"
    )
    frames = [frame0]
    if settings.stage != "no-outpaint":
        from isonyc_dagster.lift.outpaint import outpaint_frame

        with timer.stage("outpaint"):
            frames.append(outpaint_frame(inp, frame0, settings, backend=backend, log=log))
    with timer.stage("initialize"):
        for f in frames:
            scene.add_frame(f, settings.splat_stride)
            rlog.log_frame(f, stage="Initialization", points=True)
        scene.train(settings.init_iters, log=log, label="init")
        rlog.log_splats(scene.export_arrays(), step=0)
        rlog.send_blueprint(0)
    stats = []
    if settings.stage == "coarse":
        from isonyc_dagster.lift.coarse import run_coarse

        with timer.stage("coarse"):
            stats = run_coarse(
                scene, inp, settings, rlog, target=scene_target(frame0), backend=backend, log=log
            )
        rlog.log_splats(scene.export_arrays(), step=1)
        rlog.send_blueprint(1)
    with timer.stage("evaluate"):
        r = scene.render(frame0.camera)
        score = psnr(r.rgb, frame0.rgb, frame0.inpaint)
        export.write_png(out / "frames" / "input_render.png", r.rgb)
    with timer.stage("export_ply"):
        arrays = scene.export_arrays()
        ply = export.write_ply(out / "gf.ply", arrays)
        if settings.export_gaussians_ply_path is not None:
            extra = export.write_ply(settings.export_gaussians_ply_path, arrays)
            log(f"[lift] exported Gaussian splats to {extra}")
    with timer.stage("render_video"):
        n_video = video_frame_count(settings, len(scene.frames))
        video = _render_video(
            scene,
            frames[-1].camera if len(frames) > 1 else frame0.camera,
            frame0,
            settings,
            n_video,
            rlog,
            out,
        )
        rlog.log_splats(arrays, step=2)
        rlog.send_blueprint(2)
        rlog.close()
    log(
        f"[lift] {scene.count} splats, PSNR at the input view {score:.2f} dB; wrote {ply}, {video}, {rlog.path}"
    )
    return LiftResult(
        out_dir=out,
        ply_path=ply,
        rrd_path=rlog.path,
        video_path=video,
        splat_count=scene.count,
        psnr_input=score,
        stage_seconds=timer.seconds,
        frames=len(scene.frames),
        video_frame_count=n_video,
        rasterizer=scene.rasterizer,
        coarse=stats,
    )


def _render_video(
    scene: GaussianScene,
    base: OrthoCamera,
    frame0: Frame,
    settings: LiftSettings,
    n: int,
    rlog: export.RerunLog,
    out: Path,
) -> Path:
    """Render the final orbit (``n`` frames), log each to Rerun, encode the MP4 and keep a few PNGs."""
    cams = orbit(
        base,
        scene_target(frame0),
        n,
        forward_ratio=settings.traj_forward_ratio,
        backward_ratio=settings.traj_backward_ratio,
        max_percentage=settings.traj_max_percentage,
    )
    images = []
    keep = {0, n // 4, n // 2, (3 * n) // 4}
    for i, cam in enumerate(cams):
        r = scene.render(cam)
        images.append(r.rgb)
        rlog.log_render(i, cam, r.rgb, r.depth)
        if i in keep:
            export.write_png(out / "frames" / f"video_{i:03d}.png", r.rgb)
    return export.write_mp4(out / "flythrough.mp4", images)
