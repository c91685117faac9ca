"""The 3D lift: a stretch of the map (or an image with a depth map) → a trained Gaussian-splat scene.

Stages (``LiftSettings.stage``, the names and defaults of the single-image pipeline this follows):

- ``no-outpaint``: one frame, the input, with exact depth from the whitebox render buffers.
- ``outpaint`` / ``fine``: the border is expanded by ``expansion_percent`` per side with the generation backend
  (the quadrants around the rectangle generated with it as context, through the normal step code, in a scratch
  copy of the store: the map is never written), then frames ``input`` (supervise all) + ``outpaint`` (supervise
  the new border only).
- ``coarse``: ``outpaint``, then frames chosen from a dense orbit by hole ratio (``lift.coarse``), their holes
  filled from the city model, depth aligned to the scene's rendered depth, trained in.

Outputs under ``out_dir``: ``gf.ply`` (standard 3DGS), ``lift.rrd`` (Rerun), ``flythrough.mp4``,
``frames/*.png`` and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.lift.camera import OrthoCamera

if TYPE_CHECKING:
    from isonyc_dagster.backends.base import ImageBackend
    from isonyc_dagster.project import Project

#: PSNR reported for a perfect reproduction (JSON has no infinity).
PSNR_CAP_DB = 99.0

Stage = Literal["no-outpaint", "outpaint", "fine", "coarse"]
Log = Callable[[str], None]


class LiftError(IsonycError, ValueError):
    """Bad input to the lift (no depth source, a rectangle outside the map, mismatched image sizes, ...)."""


class LiftSettings(BaseModel):
    """Every knob of the lift, with the single-image pipeline's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: Stage = "no-outpaint"
    #: Border added per side by ``outpaint`` (a fraction of the input's width/height: 0.3 = 30 %).
    expansion_percent: float = Field(0.3, ge=0.0, le=1.0)
    #: Frames of the coarse scene, counting ``input`` and ``outpaint`` (so ``n_frames - 2`` extra frames).
    n_frames: int = Field(10, ge=2, le=64)
    #: Trajectory: zoom in by up to this fraction (an orthographic camera's "forward").
    traj_forward_ratio: float = Field(0.3, ge=0.0, le=2.0)
    #: Trajectory: zoom out by up to this fraction ("backward": shows what lies beyond the frame).
    traj_backward_ratio: float = Field(0.4, ge=0.0, le=2.0)
    #: Trajectory radius: orbit yaw amplitude as a percentage of 60° (50 → ±30°; pitch half of that).
    traj_max_percentage: float = Field(50.0, ge=0.0, le=100.0)
    #: Extra pixels (total, split over both sides) of coarse candidate frames beyond the input size.
    coarse_margin: int = Field(32, ge=0, le=512)
    coarse_min_inpaint_ratio: float = Field(0.05, ge=0.0, le=1.0)
    coarse_max_inpaint_ratio: float = Field(0.25, ge=0.0, le=1.0)
    coarse_adjacent_exclusion: int = Field(1, ge=0)
    coarse_dense_multiplier: int = Field(10, ge=1, le=100)
    coarse_fallback_mode: Literal["none", "closest"] = "closest"
    coarse_print_summary: bool = True
    init_iters: int = Field(100, ge=0)
    iters_per_frame: int = Field(500, ge=0)
    #: One splat per pixel (1) or per 2×2 pixels (2).
    splat_stride: Literal[1, 2] = 1
    #: Longest side of the working image (a multiple of 32); larger inputs are scaled down (exactly: the camera
    #: scale follows).
    max_resolution: int = Field(512, ge=32, le=4096)
    #: Frames of the fly-through video; None = the original's rule, min(len(frames) × 25, 150).
    video_frames: int | None = Field(None, ge=1, le=1000)
    #: "auto" (CUDA when available), "cpu" or "cuda".
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    #: Also write the splats here (a directory gets ``gf.ply`` inside).
    export_gaussians_ply_path: Path | None = None


@dataclass
class MapRegion:
    """Where a ``LiftInput`` came from on the map: needed by ``outpaint`` and ``coarse``."""

    project: Project
    x0: int
    y0: int
    w: int
    h: int


@dataclass
class LiftInput:
    """One input view: image, exact depth and the orthographic camera that sees it."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray | None  # (H, W) float32 metres along the view direction; None = no depth source
    supervise: np.ndarray  # (H, W) bool: pixels the scene is trained on (``inpaint = True``)
    camera: OrthoCamera
    #: (H, W) uint8 surface classes of the render (map input only): masks and the coarse fill.
    surface: np.ndarray | None = None
    #: (H, W) int32 building ids of the render (map input only).
    building: np.ndarray | None = None
    region: MapRegion | None = None
    name: str = "input"


@dataclass
class CoarseFrameStat:
    """One extra frame of the coarse stage (the fields of the ``[COARSE] Summary``)."""

    dense_pose_index: int
    inpaint_ratio: float
    inpaint_pixels: int
    inpaint_wo_edge_pixels: int
    added_splats: int
    fallback: bool = False


@dataclass
class LiftResult:
    """What ``run_lift`` wrote and measured."""

    out_dir: Path
    ply_path: Path
    rrd_path: Path
    video_path: Path
    splat_count: int
    #: PSNR (dB) of the final scene rendered from the input camera, on the input's supervised pixels.
    psnr_input: float
    stage_seconds: dict[str, float]
    #: Frames the scene was trained on (input, outpaint, coarse extras).
    frames: int
    video_frame_count: int
    rasterizer: str  # "torch-cpu", "torch" (on CUDA) or "gsplat"
    coarse: list[CoarseFrameStat] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (paths as strings)."""
        return {
            "ply_path": str(self.ply_path),
            "rrd_path": str(self.rrd_path),
            "video_path": str(self.video_path),
            "splat_count": self.splat_count,
            # Identical images have an infinite PSNR: capped so the summary stays valid JSON.
            "psnr_input_db": round(min(self.psnr_input, PSNR_CAP_DB), 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "frames": self.frames,
            "video_frame_count": self.video_frame_count,
            "rasterizer": self.rasterizer,
            "coarse": [vars(c) for c in self.coarse],
        }


def input_from_map(project: Project, x0: int, y0: int, w: int, h: int) -> LiftInput:
    """The rectangle of quadrants x0..x0+w-1 × y0..y0+h-1 as a lift input.

    RGB: the active ``generation`` tiles from the store; depth, surface class and building id: the render
    buffers (the ``aux`` blob of each stored ``render`` tile, or drawn again when missing). Raises ``LiftError``
    when a quadrant has no generation yet or the rectangle is empty.
    """
    from isonyc_dagster.lift.inputs import map_input

    return map_input(project, x0, y0, w, h)


def input_from_image(image_path: str | Path, depth_path: str | Path | None) -> LiftInput:
    """Any image with a depth map (``.npy`` metres, or a 16-bit PNG in millimetres) as a lift input.

    Without a depth map: ``LiftError`` (a depth source is required: pass --depth-path or use a map rectangle).
    The camera is the map's orthographic camera at the map's scale, centred on the image.
    """
    from isonyc_dagster.lift.inputs import image_input

    return image_input(image_path, depth_path)


def run_lift(
    inp: LiftInput,
    settings: LiftSettings,
    out_dir: str | Path,
    *,
    backend: ImageBackend | None = None,
    log: Log = print,
) -> LiftResult:
    """Run the lift's stages on ``inp`` and write every output under ``out_dir``.

    ``backend`` outpaints and inpaints (``outpaint``/``fine``/``coarse``); None = the project's configured
    backend for map input. ``log`` receives progress lines and the ``[COARSE]`` summary.
    """
    from isonyc_dagster.lift.run import run_stages

    out = Path(out_dir)
    t0 = time.perf_counter()
    result = run_stages(inp, settings, out, backend=backend, log=log)
    result.stage_seconds.setdefault("total", time.perf_counter() - t0)
    atomic_write(out / "summary.json", json.dumps(result.summary(), indent=2).encode())
    return result
