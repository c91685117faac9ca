"""Frames: one view's RGB, depth in metres, masks and camera, as the Gaussian scene is built and trained on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from isonyc_dagster.lift.camera import OrthoCamera

#: Frame sizes are kept to multiples of this (the original's convention; also whole 16-px rasterizer tiles).
SIZE_MULTIPLE = 32
#: A pixel is on a depth edge when the depth range of its 3×3 neighbourhood exceeds this many pixel sizes
#: (a plane seen at 45° changes depth by about one pixel size per pixel).
EDGE_PIXELS = 4.0


@dataclass
class Frame:
    """One view. ``inpaint`` = supervise this pixel (train on it); ``inpaint_wo_edge`` = the supervised pixels
    that also seed new splats (no depth edge, confident depth)."""

    name: str
    camera: OrthoCamera
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres along the view
    inpaint: np.ndarray  # (H, W) bool
    conf: np.ndarray  # (H, W) bool: depth is trustworthy
    inpaint_wo_edge: np.ndarray  # (H, W) bool
    #: Depth comes from the render buffers (exact): edge pixels are then real surface points, not smeared ones.
    exact_depth: bool = True

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])

    def seed_mask(self) -> np.ndarray:
        """Pixels that get a splat when the frame is added: all supervised ones with exact depth (no flying
        pixels there), else those away from depth edges and with confident depth."""
        return self.inpaint & self.conf if self.exact_depth else self.inpaint_wo_edge


def depth_edges(depth: np.ndarray, threshold_m: float) -> np.ndarray:
    """Pixels whose 3×3 neighbourhood spans more than ``threshold_m`` metres of depth."""
    d = np.asarray(depth, np.float32)
    return (ndimage.maximum_filter(d, 3) - ndimage.minimum_filter(d, 3)) > threshold_m


def make_frame(
    name: str,
    camera: OrthoCamera,
    rgb: np.ndarray,
    depth: np.ndarray,
    inpaint: np.ndarray,
    *,
    conf: np.ndarray | None = None,
    exact_depth: bool = True,
) -> Frame:
    """A frame with its derived masks (depth edges at ``EDGE_PIXELS`` pixel sizes)."""
    conf = np.ones(depth.shape, bool) if conf is None else np.asarray(conf, bool)
    edges = depth_edges(depth, EDGE_PIXELS * camera.metres_per_pixel)
    inpaint = np.asarray(inpaint, bool)
    return Frame(
        name, camera, rgb, depth.astype(np.float32), inpaint, conf, inpaint & ~edges & conf, exact_depth
    )


def working_size(width: int, height: int, max_resolution: int) -> tuple[float, int, int]:
    """(factor, width, height): scale so the longest side is at most ``max_resolution``, then crop each side
    to a multiple of ``SIZE_MULTIPLE`` (at least one multiple)."""
    f = min(1.0, max_resolution / max(width, height))
    w = max(SIZE_MULTIPLE, int(round(width * f)) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    h = max(SIZE_MULTIPLE, int(round(height * f)) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return f, w, h


def resample_view(
    camera: OrthoCamera,
    rgb: np.ndarray,
    depth: np.ndarray,
    masks: list[np.ndarray],
    max_resolution: int,
) -> tuple[OrthoCamera, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Scale a view to the working resolution, exactly: the camera's scale follows the factor, colours are
    box-averaged, and depth and masks take the full-resolution pixel under each new pixel centre (averaging
    depth across a roof edge would float splats in mid-air). Then centre-crop to multiples of 32."""
    hh, ww = depth.shape
    f, w, h = working_size(ww, hh, max_resolution)
    sw, sh = round(ww * f), round(hh * f)
    cam = camera.resized(f) if (sw, sh) != (ww, hh) else camera
    if (sw, sh) != (ww, hh):
        # One factor on both axes (the camera has square pixels): the source box is (sw/f, sh/f).
        box = (0.0, 0.0, min(ww, sw / f), min(hh, sh / f))
        rgb = np.asarray(Image.fromarray(rgb).resize((sw, sh), Image.Resampling.BOX, box=box))
        xs = np.minimum(((np.arange(sw) + 0.5) / f).astype(int), ww - 1)
        ys = np.minimum(((np.arange(sh) + 0.5) / f).astype(int), hh - 1)
        depth = depth[np.ix_(ys, xs)]
        masks = [m[np.ix_(ys, xs)] for m in masks]
    x0, y0 = (sw - w) // 2, (sh - h) // 2
    if (w, h) != (sw, sh):
        cam = cam.with_size(w, h)
        # with_size recentres on the old centre: shift by the crop's rounding so pixels stay put.
        cam = _shift(cam, -(x0 - (sw - w) / 2.0), -(y0 - (sh - h) / 2.0))
    sl = (slice(y0, y0 + h), slice(x0, x0 + w))
    return cam, rgb[sl].copy(), depth[sl].copy(), [m[sl].copy() for m in masks]


def _shift(cam: OrthoCamera, dx: float, dy: float) -> OrthoCamera:
    from dataclasses import replace

    return replace(cam, cx=cam.cx + dx, cy=cam.cy + dy)
