"""Orthographic cameras: the map's exact camera and the lift's trajectory cameras.

World frame: metres (E, N, h) in the map's ground projection (``geo.geometry``: east, north, height above
ground), origin at the map seed. Camera frame: OpenCV (x right, y down, z forward = into the scene).

The map is drawn by an orthographic camera (azimuth −15°, elevation −45°, 0.293 m/px), so ``map_camera``
reproduces ``MapGeometry.ground_to_pixel`` exactly. Trajectory cameras are orthographic too: the scene keeps
its isometric look, and a Gaussian's projection is then exactly affine (no EWA linearisation error), so one
rasterizer is exact for every view. "Forward"/"backward" motion of an orthographic camera is a zoom.

Pixel coordinates are continuous, with pixel (i, j) covering [i, i+1) × [j, j+1) (centre at +0.5), as the
whitebox renderer samples them: ``u = s·x_c + cx``, ``v = s·y_c + cy``, depth = ``z_c`` in metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from isonyc_dagster.geo.geometry import MapGeometry

#: Distance (metres) from a map camera's centre to its target along the view: beyond any building (828 m).
CAMERA_DISTANCE_M = 2000.0


def _axes(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """World→camera rotation (rows: camera x/right, y/down, z/forward) of the map camera at these angles.

    Mirrors ``MapGeometry.ground_to_camera``: r = E·cos(az) − N·sin(az); u = (E·sin(az) + N·cos(az))·sin(dep)
    + h·cos(dep), with dep = −elevation.
    """
    a = math.radians(azimuth_deg)
    d = math.radians(-elevation_deg)
    ca, sa, sd, cd = math.cos(a), math.sin(a), math.sin(d), math.cos(d)
    right = np.array([ca, -sa, 0.0])
    up = np.array([sa * sd, ca * sd, cd])
    forward = np.array([sa * cd, ca * cd, -sd])
    return np.stack([right, -up, forward])


@dataclass(frozen=True)
class OrthoCamera:
    """An orthographic camera: ``x_c = R·X + t``; pixel = ``scale·x_c[:2] + (cx, cy)``; depth = ``x_c[2]``."""

    R: np.ndarray  # (3, 3) world → camera
    t: np.ndarray  # (3,)
    scale: float  # pixels per metre
    cx: float
    cy: float
    width: int
    height: int
    azimuth_deg: float = -15.0
    elevation_deg: float = -45.0

    @property
    def K(self) -> np.ndarray:
        """Intrinsics (3×3): maps camera (x, y, 1) to pixels (an affine map: orthographic)."""
        return np.array([[self.scale, 0.0, self.cx], [0.0, self.scale, self.cy], [0.0, 0.0, 1.0]])

    @property
    def world_to_cam(self) -> np.ndarray:
        """Extrinsics (4×4, world → camera)."""
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = self.R, self.t
        return m

    @property
    def cam_to_world(self) -> np.ndarray:
        """Pose (4×4, camera → world)."""
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = self.R.T, -self.R.T @ self.t
        return m

    @property
    def center(self) -> np.ndarray:
        """The camera centre in world metres (its image plane passes through it)."""
        return -self.R.T @ self.t

    @property
    def metres_per_pixel(self) -> float:
        return 1.0 / self.scale

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) → pixels (N, 2) and depths (N,) in metres along the view."""
        pc = np.asarray(points, float) @ self.R.T + self.t
        uv = pc[:, :2] * self.scale + np.array([self.cx, self.cy])
        return uv, pc[:, 2]

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) at depths (N,) → world points (N, 3): the exact inverse of ``project``."""
        uv = np.asarray(uv, float)
        pc = np.empty((len(uv), 3))
        pc[:, 0] = (uv[:, 0] - self.cx) / self.scale
        pc[:, 1] = (uv[:, 1] - self.cy) / self.scale
        pc[:, 2] = np.asarray(depth, float)
        return (pc - self.t) @ self.R

    def pixel_grid(self, stride: int = 1) -> np.ndarray:
        """Centres (H/stride·W/stride, 2) of the pixels (or stride×stride blocks), row-major."""
        ys, xs = np.mgrid[0 : self.height : stride, 0 : self.width : stride]
        off = stride / 2.0
        return np.stack([xs.ravel() + off, ys.ravel() + off], axis=1).astype(float)

    def unproject_image(self, depth: np.ndarray, stride: int = 1) -> np.ndarray:
        """A depth image (H, W) → world points (H/stride, W/stride, 3) of the pixel (block) centres."""
        d = np.asarray(depth, float)
        if stride > 1:
            h, w = d.shape[0] // stride, d.shape[1] // stride
            d = d[: h * stride, : w * stride].reshape(h, stride, w, stride).mean(axis=(1, 3))
        pts = self.unproject(self.pixel_grid(stride), d.ravel())
        return pts.reshape(d.shape[0], d.shape[1], 3)

    def resized(self, factor: float) -> OrthoCamera:
        """The same view at ``factor`` × the resolution: pixel (i, j) of this camera maps to (i·f, j·f); the size
        is rounded to whole pixels."""
        f = float(factor)
        return replace(
            self,
            scale=self.scale * f,
            cx=self.cx * f,
            cy=self.cy * f,
            width=round(self.width * f),
            height=round(self.height * f),
        )

    def with_size(self, width: int, height: int) -> OrthoCamera:
        """Same view direction and scale, ``width × height`` pixels, principal point recentred."""
        return replace(
            self,
            cx=self.cx + (width - self.width) / 2.0,
            cy=self.cy + (height - self.height) / 2.0,
            width=width,
            height=height,
        )

    def image_center_point(self, depth: float) -> np.ndarray:
        """The world point seen at the image centre at ``depth``."""
        return self.unproject(np.array([[self.width / 2.0, self.height / 2.0]]), np.array([depth]))[0]


def look_at(
    target: np.ndarray,
    azimuth_deg: float,
    elevation_deg: float,
    scale: float,
    width: int,
    height: int,
    distance: float = CAMERA_DISTANCE_M,
) -> OrthoCamera:
    """An orthographic camera at these angles whose image centre shows ``target``, ``distance`` in front."""
    R = _axes(azimuth_deg, elevation_deg)
    center = np.asarray(target, float) - distance * R[2]
    return OrthoCamera(
        R=R,
        t=-R @ center,
        scale=float(scale),
        cx=width / 2.0,
        cy=height / 2.0,
        width=int(width),
        height=int(height),
        azimuth_deg=azimuth_deg,
        elevation_deg=elevation_deg,
    )


def map_camera(geometry: MapGeometry, origin_px: tuple[float, float], width: int, height: int) -> OrthoCamera:
    """The map's exact camera for the window of world pixels starting at ``origin_px``, ``width × height``.

    The pixel ``(i, j)`` of the window is world pixel ``origin + (i, j)``: a world point projects where
    ``geometry.ground_to_pixel`` puts it (minus the origin). The principal point is the window's centre.
    """
    cfg = geometry.config
    ox, oy = origin_px
    cpx, cpy = ox + width / 2.0, oy + height / 2.0
    e, n = geometry.pixel_to_ground(cpx, cpy, 0.0)
    target = np.array([float(e), float(n), 0.0])
    return look_at(target, cfg.azimuth_deg, cfg.elevation_deg, 1.0 / geometry.mpp, width, height)


def depth_from_height(
    geometry: MapGeometry, camera: OrthoCamera, origin_px: tuple[float, float], height_m: np.ndarray
) -> np.ndarray:
    """Depth (metres along the view) of each pixel of a render window from its height buffer.

    A pixel drawing a surface at height h shows the ground point ``pixel_to_ground(px, py, h)`` lifted to h;
    its depth is that point's ``z`` in ``camera`` (the map camera of the same window).
    """
    hh, ww = height_m.shape
    ys, xs = np.mgrid[0:hh, 0:ww]
    px = origin_px[0] + xs.ravel() + 0.5
    py = origin_px[1] + ys.ravel() + 0.5
    h = height_m.ravel().astype(float)
    e, n = geometry.pixel_to_ground(px, py, h)
    pts = np.stack([np.asarray(e), np.asarray(n), h], axis=1)
    _, z = camera.project(pts)
    return z.reshape(hh, ww).astype(np.float32)


def orbit(
    base: OrthoCamera,
    target: np.ndarray,
    n: int,
    *,
    forward_ratio: float,
    backward_ratio: float,
    max_percentage: float,
    width: int | None = None,
    height: int | None = None,
) -> list[OrthoCamera]:
    """``n`` cameras on a closed spiral around ``target``: yaw swings ±(max_percentage % of 60°) once, pitch ±half
    of that twice (kept between −80° and −15° elevation), and the zoom breathes three times between
    1/(1 + backward_ratio) and 1 + forward_ratio. Index 0 is the base view; neighbouring indices are
    neighbouring poses."""
    if n <= 0:
        return []
    w, h = width or base.width, height or base.height
    yaw_amp = 60.0 * max_percentage / 100.0
    pitch_amp = yaw_amp / 2.0
    cams = []
    for k in range(n):
        s = 2.0 * math.pi * k / n
        yaw = yaw_amp * math.sin(s)
        pitch = pitch_amp * math.sin(2.0 * s)
        el = min(-15.0, max(-80.0, base.elevation_deg + pitch))
        z = math.sin(3.0 * s)  # −1…1, zero at the base view
        zoom = 1.0 + z * forward_ratio if z >= 0 else 1.0 / (1.0 - z * backward_ratio)
        cams.append(look_at(target, base.azimuth_deg + yaw, el, base.scale * zoom, w, h))
    return cams
