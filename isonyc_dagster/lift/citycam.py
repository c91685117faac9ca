"""The city model seen from any orthographic camera: surface classes, building ids and exact depth, textured.

The whitebox renderer draws the map's one camera only, so the coarse stage needs its own small rasterizer for
the hidden surfaces a turned camera sees: the ground plane (classes from the map's render where the ground shows
there, else plain ground), each building's roof polygon and its walls (back faces culled, left/right wall class
by the wall's facing on screen), with a z-buffer. The buffers then go to the generation backend as a template
with render buffers, exactly as a map step's infill does (offline: the pixel-art backend textures walls, windows
and ground from them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import shapely
from PIL import Image, ImageDraw
from shapely.geometry import MultiPoint
from shapely.geometry.polygon import orient

from isonyc_dagster.backends.base import GenerationRequest
from isonyc_dagster.geo.surfaces import PALETTE, Surface
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.lift.camera import OrthoCamera
from isonyc_dagster.render.result import stable_building_id

if TYPE_CHECKING:
    from isonyc_dagster.backends.base import ImageBackend
    from isonyc_dagster.geodata.model import Building
    from isonyc_dagster.lift.pipeline import MapRegion

#: Quadrants of map render around the rectangle whose surface classes colour the ground.
GROUND_MARGIN_Q = 1
#: A map pixel shows the ground (not a roof or wall) below this height (metres).
GROUND_EPS_M = 0.5


@dataclass
class CityViewImage:
    rgb: np.ndarray  # (H, W, 3) uint8, textured by the backend
    depth: np.ndarray  # (H, W) float32 metres
    surface: np.ndarray  # (H, W) uint8
    building: np.ndarray  # (H, W) int32
    height: np.ndarray  # (H, W) float32 metres above ground
    valid: np.ndarray  # (H, W) bool


class CityView:
    """Renders the region's city from arbitrary orthographic cameras."""

    def __init__(self, region: MapRegion, *, backend: ImageBackend | None = None) -> None:
        from isonyc_dagster.generate.step import StepInputs
        from isonyc_dagster.lift.outpaint import default_backend

        project = region.project
        self.geometry = project.geometry
        self.city = project.renderer_at(region.x0, region.y0).city
        self.backend = backend or default_backend(region)
        q = self.geometry.q
        m = GROUND_MARGIN_Q
        self.qx0, self.qy0 = region.x0 - m, region.y0 - m
        nx, ny = region.w + 2 * m, region.h + 2 * m
        self.ground_class = np.full((ny * q, nx * q), int(Surface.GROUND), np.uint8)
        inputs = StepInputs(project.store, stored=frozenset(), render=project.render_quadrant)
        for j in range(ny):
            for i in range(nx):
                aux = inputs.render_aux(self.qx0 + i, self.qy0 + j)
                cls = np.where(aux["height"] < GROUND_EPS_M, aux["surface"], int(Surface.GROUND))
                self.ground_class[j * q : (j + 1) * q, i * q : (i + 1) * q] = cls
        heights = [b.height_m for b in self.city.buildings]
        self.max_height = float(max(heights)) if heights else 0.0

    # --- geometry ------------------------------------------------------------------------------------
    def _ground_classes(self, e: np.ndarray, n: np.ndarray) -> np.ndarray:
        px, py = self.geometry.ground_to_pixel(e, n, 0.0)
        q = self.geometry.q
        ix = np.floor(px - self.qx0 * q).astype(int)
        iy = np.floor(py - self.qy0 * q).astype(int)
        hh, ww = self.ground_class.shape
        inside = (ix >= 0) & (ix < ww) & (iy >= 0) & (iy < hh)
        out = np.full(e.shape, int(Surface.GROUND), np.uint8)
        out[inside] = self.ground_class[iy[inside], ix[inside]]
        return out

    def _ground(self, cam: OrthoCamera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth and class of the ground plane h = 0 at every pixel (each pixel's ray meets it: f_z < 0)."""
        uv = cam.pixel_grid()
        p0 = cam.unproject(uv, np.zeros(len(uv)))
        f = cam.R[2]
        t = -p0[:, 2] / f[2]
        g = p0 + t[:, None] * f
        cls = self._ground_classes(g[:, 0], g[:, 1])
        shape = (cam.height, cam.width)
        return t.reshape(shape), cls.reshape(shape), g

    def _buildings_in_view(self, cam: OrthoCamera) -> list[int]:
        corners = np.array([[0, 0], [cam.width, 0], [cam.width, cam.height], [0, cam.height]], float)
        p0 = cam.unproject(corners, np.zeros(4))
        f = cam.R[2]
        pts = []
        for h in (0.0, self.max_height):
            t = (h - p0[:, 2]) / f[2]
            pts.append((p0 + t[:, None] * f)[:, :2])
        hull = MultiPoint(np.concatenate(pts)).convex_hull
        return sorted(int(i) for i in self.city.building_tree.query(hull, predicate="intersects"))

    # --- rasterisation ---------------------------------------------------------------------------------
    @staticmethod
    def _fill(
        cam: OrthoCamera,
        world: np.ndarray,
        holes: list[np.ndarray],
        zbuf: np.ndarray,
        cls_buf: np.ndarray,
        id_buf: np.ndarray,
        cls: int,
        bid: int,
    ) -> None:
        """Z-buffer a planar polygon (world vertices (K, 3), optional hole rings) into the buffers."""
        uv, z = cam.project(world)
        x0, y0 = np.floor(uv.min(axis=0)).astype(int)
        x1, y1 = np.ceil(uv.max(axis=0)).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, cam.width), min(y1, cam.height)
        if x1 <= x0 or y1 <= y0:
            return
        # Depth is affine in (u, v) on a plane: fit it from the vertices (exact for planar faces).
        A = np.concatenate([uv, np.ones((len(uv), 1))], axis=1)
        coef, *_ = np.linalg.lstsq(A, z, rcond=None)
        if not np.all(np.isfinite(coef)) or np.linalg.matrix_rank(A) < 3:
            return
        img = Image.new("1", (x1 - x0, y1 - y0), 0)
        draw = ImageDraw.Draw(img)
        draw.polygon([(float(u) - x0 - 0.5, float(v) - y0 - 0.5) for u, v in uv], fill=1)
        for ring in holes:
            huv, _ = cam.project(ring)
            draw.polygon([(float(u) - x0 - 0.5, float(v) - y0 - 0.5) for u, v in huv], fill=0)
        mask = np.asarray(img, bool)
        if not mask.any():
            return
        ys, xs = np.nonzero(mask)
        d = coef[0] * (xs + x0 + 0.5) + coef[1] * (ys + y0 + 0.5) + coef[2]
        sel = (ys + y0, xs + x0)
        closer = d < zbuf[sel]
        sel = (sel[0][closer], sel[1][closer])
        zbuf[sel] = d[closer]
        cls_buf[sel] = cls
        id_buf[sel] = bid

    def _draw_building(
        self, cam: OrthoCamera, b: Building, zbuf: np.ndarray, cls_buf: np.ndarray, id_buf: np.ndarray
    ) -> None:
        bid = stable_building_id(b.id)
        top, base = float(b.height_m), max(float(b.base_m), 0.0)
        if not np.isfinite(top) or top <= base:
            return
        f = cam.R[2]
        right = cam.R[0]
        for part in shapely.get_parts(b.footprint):
            if part.is_empty or part.area <= 0:
                continue
            poly = orient(part, sign=1.0)
            ext = np.asarray(poly.exterior.coords)[:-1, :2]
            holes = [np.asarray(r.coords)[:-1, :2] for r in poly.interiors]
            rings = [ext, *holes]
            for ring in rings:
                nxt = np.roll(ring, -1, axis=0)
                for a, c in zip(ring, nxt, strict=True):
                    d = c - a
                    n3 = np.array([d[1], -d[0], 0.0])
                    if n3 @ f >= 0:  # back face (or edge-on)
                        continue
                    quad = np.array(
                        [[a[0], a[1], base], [c[0], c[1], base], [c[0], c[1], top], [a[0], a[1], top]]
                    )
                    cls = Surface.WALL_LEFT if n3 @ right < 0 else Surface.WALL_RIGHT
                    self._fill(cam, quad, [], zbuf, cls_buf, id_buf, int(cls), bid)
            roof = np.concatenate([ext, np.full((len(ext), 1), top)], axis=1)
            roof_holes = [np.concatenate([h, np.full((len(h), 1), top)], axis=1) for h in holes]
            self._fill(cam, roof, roof_holes, zbuf, cls_buf, id_buf, int(Surface.ROOF), bid)

    def buffers(self, cam: OrthoCamera) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(depth, surface, building, height) of the city from ``cam``."""
        depth, surface, _ = self._ground(cam)
        zbuf = depth.astype(np.float64).copy()
        building = np.zeros(zbuf.shape, np.int32)
        for i in self._buildings_in_view(cam):
            self._draw_building(cam, self.city.buildings[i], zbuf, surface, building)
        pts = cam.unproject(cam.pixel_grid(), zbuf.ravel())
        height = np.clip(pts[:, 2].reshape(zbuf.shape), 0.0, None).astype(np.float32)
        return zbuf.astype(np.float32), surface, building, height

    def render(self, cam: OrthoCamera) -> CityViewImage:
        """The city from ``cam``, textured by the backend from its buffers (the whole image is the infill)."""
        depth, surface, building, height = self.buffers(cam)
        template = PALETTE[surface]
        request = GenerationRequest(
            template_png=png_bytes(template),
            prompt="isometric nyc pixel art",
            infill_box=(0, 0, cam.width, cam.height),
            origin_px=(0, 0),
            aux={"surface": surface, "building": building, "height": height},
        )
        rgb = decode_rgb(self.backend.generate(request).image_png)
        if rgb.shape[:2] != surface.shape:
            rgb = np.asarray(Image.fromarray(rgb).resize((cam.width, cam.height), Image.Resampling.BOX))
        return CityViewImage(rgb, depth, surface, building, height, np.ones(surface.shape, bool))
