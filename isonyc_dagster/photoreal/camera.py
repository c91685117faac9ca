"""The photoreal camera: an orthographic three.js camera, in Earth-centred (ECEF) metres, that draws every
point exactly where the whitebox draws it.

The whitebox maps (ground E, N in the map's transverse Mercator, height h above ground) to world pixels
(``MapGeometry.ground_to_pixel``). A 3D tileset lives in ECEF. For one render window we take sample points
over the window at several heights, place each on the ellipsoid (its lat/lng from the project's own geometry,
ellipsoidal height = ``ground_height_m + h``) and fit the affine map ECEF → world pixel by least squares.
Over a window of a few hundred metres that map is affine to a few hundredths of a pixel (the fit
residual is recorded and checked), so a single orthographic camera reproduces the whitebox's projection,
including the transverse Mercator's local scale and grid convergence far from the seed.

Matrices go to the page column-major (three.js ``Matrix4.fromArray``). The camera sits ``CAMERA_BACK_M`` behind
the window's ground centre; the GPU only ever sees camera-relative coordinates (three.js composes the
model-view matrix in float64), so ECEF's large numbers cost no precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pyproj import Transformer

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.geometry import MapGeometry

#: Distance from the window's ground centre back to the camera along the view ray (metres).
CAMERA_BACK_M = 3000.0
#: Depth range kept in front of the camera: the tallest tower (541 m) is far inside it.
NEAR_M, FAR_M = 1.0, CAMERA_BACK_M + 2000.0
#: Heights (m above ground) the fit samples: ground, a mid-rise roof and a supertall's.
_FIT_HEIGHTS_M = (0.0, 150.0, 450.0)
#: Largest fit residual accepted (pixels). The fit's only error is the Earth's curvature, which the whitebox's
#: flat extrusion ignores: a 450 m tower 300 m from the window centre stands along its own vertical, 5e-5 rad
#: off the centre's (~0.1 px at its top). Beyond this bound the window is too large for one affine camera.
MAX_FIT_RESIDUAL_PX = 0.25


class CameraError(IsonycError, ValueError):
    """The window cannot be drawn by one orthographic camera within the accepted error."""


@lru_cache(maxsize=1)
def _to_ecef() -> Transformer:
    # EPSG:4979 (lat, lon, ellipsoidal height) → EPSG:4978 (geocentric X, Y, Z), both WGS84.
    return Transformer.from_crs("EPSG:4979", "EPSG:4978", always_xy=True)


def lnglath_to_ecef(lng: np.ndarray, lat: np.ndarray, h: np.ndarray) -> np.ndarray:
    """WGS84 (lng, lat, ellipsoidal height) → ECEF metres, shape (n, 3)."""
    x, y, z = _to_ecef().transform(np.asarray(lng, float), np.asarray(lat, float), np.asarray(h, float))
    return np.stack([np.asarray(x), np.asarray(y), np.asarray(z)], axis=1)


@dataclass(frozen=True)
class Camera:
    """One render window's camera. ``matrix`` is camera → ECEF, ``projection`` camera → clip; both
    column-major 16-lists for three.js. ``pixel_of`` maps ECEF to world pixels by the same fit."""

    window: tuple[int, int, int, int]
    ground_height_m: float
    matrix: tuple[float, ...]
    projection: tuple[float, ...]
    affine: np.ndarray  # 2×4: world pixel = affine @ (X − anchor, 1)
    anchor: np.ndarray  # ECEF of the window's ground centre
    residual_px: float

    def pixel_of(self, ecef: np.ndarray) -> np.ndarray:
        """World pixels (n, 2) of ECEF points (n, 3), by the fitted projection."""
        d = np.asarray(ecef, float) - self.anchor
        return d @ self.affine[:, :3].T + self.affine[:, 3]

    def to_json(self) -> dict:
        px0, py0, w, h = self.window
        return {
            "width": w,
            "height": h,
            "matrix": list(self.matrix),
            "projection": list(self.projection),
        }


def camera_for_window(
    geometry: MapGeometry, px0: int, py0: int, width: int, height: int, ground_height_m: float
) -> Camera:
    """The orthographic camera drawing world-pixel window [px0, px0+width) × [py0, py0+height) exactly as
    the whitebox does, with the whitebox's ground (h = 0) at ellipsoidal height ``ground_height_m``."""
    # Sample the window (and a margin: tall buildings in front reach in) on a grid at several heights.
    gx = np.linspace(px0 - width / 2, px0 + 1.5 * width, 5)
    gy = np.linspace(py0 - height / 2, py0 + 1.5 * height, 5)
    hh = np.asarray(_FIT_HEIGHTS_M)
    px, py, h = (a.ravel() for a in np.meshgrid(gx, gy, hh, indexing="ij"))
    lng, lat = geometry.pixel_to_lnglat(px, py, h)
    pts = lnglath_to_ecef(lng, lat, ground_height_m + h)
    cx, cy = px0 + width / 2, py0 + height / 2
    alng, alat = geometry.pixel_to_lnglat(cx, cy)
    anchor = lnglath_to_ecef(np.atleast_1d(alng), np.atleast_1d(alat), np.atleast_1d(ground_height_m))[0]
    design = np.hstack([pts - anchor, np.ones((len(pts), 1))])
    target = np.stack([px, py], axis=1)
    sol, *_ = np.linalg.lstsq(design, target, rcond=None)
    affine = sol.T  # 2×4
    residual = float(np.abs(design @ sol - target).max())
    if not residual <= MAX_FIT_RESIDUAL_PX:
        raise CameraError(
            f"window {width}×{height} px at ({px0}, {py0}) is not drawn by one orthographic camera within "
            f"{MAX_FIT_RESIDUAL_PX} px (fit residual {residual:.3f} px); render it in smaller windows"
        )
    a = affine[:, :3]
    # The view direction is the one direction the projection ignores; it points down, into the scene.
    view = np.cross(a[0], a[1])
    view /= np.linalg.norm(view)
    if np.dot(view, anchor) > 0:
        view = -view
    z_axis = -view  # three.js cameras look down their −z
    x_axis = a[0] - np.dot(a[0], z_axis) * z_axis
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(z_axis, x_axis)
    rot = np.stack([x_axis, y_axis, z_axis])  # rows: camera axes in ECEF
    eye = anchor - view * CAMERA_BACK_M
    cam_to_world = np.eye(4)
    cam_to_world[:3, :3] = rot.T
    cam_to_world[:3, 3] = eye
    # Camera coords → world pixels: pixel = a @ (rot.T @ c + eye − anchor) + b.
    lin = a @ rot.T  # 2×3; its z column is ~0 (the view direction)
    off = a @ (eye - anchor) + affine[:, 3]
    proj = np.zeros((4, 4))
    # NDC x = 2(px − px0)/W − 1, NDC y = 1 − 2(py − py0)/H: pixel centres land on GL's pixel centres.
    proj[0, :3] = 2.0 * lin[0] / width
    proj[0, 3] = 2.0 * (off[0] - px0) / width - 1.0
    proj[1, :3] = -2.0 * lin[1] / height
    proj[1, 3] = 1.0 - 2.0 * (off[1] - py0) / height
    proj[2, 2] = -2.0 / (FAR_M - NEAR_M)
    proj[2, 3] = -(FAR_M + NEAR_M) / (FAR_M - NEAR_M)
    proj[3, 3] = 1.0
    return Camera(
        window=(px0, py0, width, height),
        ground_height_m=float(ground_height_m),
        matrix=tuple(float(v) for v in cam_to_world.T.ravel()),
        projection=tuple(float(v) for v in proj.T.ravel()),
        affine=affine,
        anchor=anchor,
        residual_px=residual,
    )
