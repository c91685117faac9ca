"""Lift inputs: a rectangle of the map (generated pixels + exact render buffers) or an image with a depth map."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from isonyc_dagster import layers
from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.geo.geometry import GeometryError, MapGeometry
from isonyc_dagster.images import decode_rgb
from isonyc_dagster.lift.camera import depth_from_height, look_at, map_camera
from isonyc_dagster.lift.pipeline import LiftError, LiftInput, MapRegion

if TYPE_CHECKING:
    from isonyc_dagster.project import Project

#: Largest rectangle side (quadrants) a lift takes: 8 × 512 px is already 4096 px before scaling down.
MAX_QUADRANTS = 8


def _check_rect(project: Project, x0: int, y0: int, w: int, h: int) -> None:
    if not (1 <= w <= MAX_QUADRANTS and 1 <= h <= MAX_QUADRANTS):
        raise LiftError(
            f"rectangle {w}×{h} quadrants is not allowed; give --w and --h between 1 and {MAX_QUADRANTS}"
        )
    try:
        for x, y in ((x0, y0), (x0 + w - 1, y0 + h - 1)):
            project.geometry.check_quadrant(x, y)
    except GeometryError as e:
        raise LiftError(str(e)) from None


def map_input(project: Project, x0: int, y0: int, w: int, h: int) -> LiftInput:
    """See ``pipeline.input_from_map``."""
    _check_rect(project, x0, y0, w, h)
    geometry = project.geometry
    q = geometry.q
    store = project.store
    keys = [(x, y) for y in range(y0, y0 + h) for x in range(x0, x0 + w)]
    missing = [k for k in keys if store.active(layers.GENERATION, *k) is None]
    if missing:
        shown = ", ".join(f"({x}, {y})" for x, y in missing[:6]) + (" …" if len(missing) > 6 else "")
        raise LiftError(
            f"quadrants {shown} have no generated pixels yet; generate the rectangle first (isonyc demo or the "
            "Dagster generation assets), or pick a generated rectangle"
        )
    rgb = np.zeros((h * q, w * q, 3), np.uint8)
    height = np.zeros((h * q, w * q), np.float32)
    surface = np.zeros((h * q, w * q), np.uint8)
    building = np.zeros((h * q, w * q), np.int32)
    # StepInputs reads each render's buffers from its stored aux blob and draws them again only when missing.
    inputs = project.step_inputs()
    for x, y in keys:
        sl = (slice((y - y0) * q, (y - y0 + 1) * q), slice((x - x0) * q, (x - x0 + 1) * q))
        png = store.get_tile(layers.GENERATION, x, y)
        assert png is not None  # checked above
        rgb[sl] = decode_rgb(png)
        aux = inputs.render_aux(x, y)
        height[sl], surface[sl], building[sl] = aux["height"], aux["surface"], aux["building"]
    origin = (x0 * q, y0 * q)
    camera = map_camera(geometry, origin, w * q, h * q)
    depth = depth_from_height(geometry, camera, origin, height)
    return LiftInput(
        rgb=rgb,
        depth=depth,
        supervise=np.ones(height.shape, bool),
        camera=camera,
        surface=surface,
        building=building,
        region=MapRegion(project, x0, y0, w, h),
        name=f"map_{x0}_{y0}_{w}x{h}",
    )


def _read_depth(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if not path.is_file():
        raise LiftError(f"depth map {path} does not exist; pass an existing .npy (metres) or 16-bit PNG (mm)")
    try:
        if path.suffix.lower() == ".npy":
            depth = np.load(path, allow_pickle=False).astype(np.float32)
        else:
            with Image.open(path) as im:
                arr = np.asarray(im)
            scale = 1000.0 if arr.dtype in (np.uint16, np.int32, np.uint32) else 1.0
            depth = arr.astype(np.float32) / scale
    except (OSError, ValueError) as e:
        raise LiftError(
            f"depth map {path} is unreadable ({e}); pass a .npy (metres) or 16-bit PNG (mm)"
        ) from None
    if depth.ndim == 3:
        depth = depth[..., 0]
    if depth.shape != shape:
        raise LiftError(
            f"depth map {path} is {depth.shape[1]}×{depth.shape[0]} but the image is {shape[1]}×{shape[0]}; "
            "give a depth map of the image's size"
        )
    if not np.isfinite(depth).all() or (depth <= 0).all():
        raise LiftError(
            f"depth map {path} holds non-finite or no positive values; depth is metres along the view"
        )
    return depth


def image_input(image_path: str | Path, depth_path: str | Path | None) -> LiftInput:
    """See ``pipeline.input_from_image``."""
    path = Path(image_path)
    if depth_path is None:
        raise LiftError(
            f"a depth source is required for {path.name}: pass --depth-path (a .npy in metres or 16-bit PNG in "
            "mm) or lift a map rectangle (--x0 --y0 --w --h), whose depth comes from the render"
        )
    if not path.is_file():
        raise LiftError(f"image {path} does not exist; pass an existing image file to --image-path")
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB")).copy()
    except OSError as e:
        raise LiftError(f"image {path} is unreadable ({e}); pass a PNG or JPEG") from None
    depth = _read_depth(Path(depth_path), rgb.shape[:2])
    geometry = MapGeometry(MapConfig())
    hh, ww = rgb.shape[:2]
    # The map's view at the map's scale; depth 0 lies on the image plane through the origin.
    camera = look_at(
        np.zeros(3),
        geometry.config.azimuth_deg,
        geometry.config.elevation_deg,
        1.0 / geometry.mpp,
        ww,
        hh,
        distance=0.0,
    )
    return LiftInput(
        rgb=rgb,
        depth=depth,
        supervise=np.ones((hh, ww), bool),
        camera=camera,
        name=path.stem,
    )
