"""Render buffers → isometric pixel art, as vectorized numpy over one rectangular region.

Input: per-pixel surface class, building id and visible-point height of a region whose top-left is at
world pixel (x0, y0). Output: palette indices (see ``palette``). Every texture and decision
is a function of world pixel coordinates, building id, height and a small neighbourhood of the buffers
(≤ 3 px for outlines, rims and window piers; the road centre-line search looks ~12 m around), never of
the region's position, so overlapping regions agree on every pixel whose neighbourhood they both see.

Speed: neighbour relations are computed on whole-region shifted views of edge-padded buffers, then each
surface class is shaded as a 1-D subset of its own pixels; per-building choices are hashed once per
building and noise lattices once per lattice point. A 1024² window takes ~0.3-0.4 s of one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from isonyc_dagster.backends.pixelart import palette as pal
from isonyc_dagster.backends.pixelart._noise import hash_u32, hash_unit, value_noise
from isonyc_dagster.backends.pixelart.params import StyleParams, colourize
from isonyc_dagster.geo.surfaces import Surface

if TYPE_CHECKING:
    from isonyc_dagster.geo.geometry import MapGeometry


@dataclass(frozen=True)
class Camera:
    """The few camera constants the style needs (from ``MapGeometry``)."""

    mpp: float  # metres per pixel on the image plane
    k: float  # screen pixels per metre of height
    sin_dep: float
    cos_dep: float

    @classmethod
    def from_geometry(cls, geometry: MapGeometry) -> Camera:
        dep = math.radians(-geometry.config.elevation_deg)
        return cls(mpp=geometry.mpp, k=geometry.height_px_per_m, sin_dep=math.sin(dep), cos_dep=math.cos(dep))

    @property
    def row_m(self) -> float:
        """Ground metres per screen row (along the view direction, at h = 0)."""
        return self.mpp / self.sin_dep


#: Pixels of context a region needs around the output so local operators see real neighbours
#: (the road centre-line search is the widest: 12 m ≈ 41 rows / 29 columns).
MARGIN_PX = 48

_I = pal.idx
S_GROUND, S_ROAD, S_PARK, S_WATER = (
    int(Surface.GROUND),
    int(Surface.ROAD),
    int(Surface.PARK),
    int(Surface.WATER),
)
S_ROOF, S_WL, S_WR = int(Surface.ROOF), int(Surface.WALL_LEFT), int(Surface.WALL_RIGHT)

# Rooftop sprite grid (world px): one candidate per cell, sprites stay inside their cell, so they
# never overlap and their draw order does not matter.
_SPRITE_CELL = 24
_SPRITE_P = np.array([0.36, 0.2, 0.18, 0.1, 0.16])  # ac, ac_big, bulkhead, tower, skylight
# Tree grid (world px).
_TREE_CX, _TREE_CY = 17, 15
_PAD = 3
#: Tree canopy radius range (first, count) per ``StyleParams.tree_sprites``; "round" is the original 7..16 px.
_TREE_RADII = {"round": (7.0, 10), "small": (4.0, 5), "large": (10.0, 7)}
#: Roof palette kind remap per ``StyleParams.roof_style`` (5 base kinds; "mixed" keeps the hash's choice).
_ROOF_STYLES = {
    "pale": np.array([1, 3, 1, 3, 0]),
    "dark": np.array([2, 4, 2, 4, 0]),
    "tar": np.array([4, 4, 2, 4, 2]),
}


class _Buf:
    """Edge-padded copies of the region buffers; ``K(dy, dx)`` etc. are whole-region shifted views.

    Neighbour relations are computed on whole-region views (slicing is free, comparisons are cheap)
    and then gathered once per pixel subset, which is several times faster than gathering neighbours.
    ``key = building << 3 | surface`` answers "same building and class" in one comparison.
    """

    def __init__(self, s: np.ndarray, b: np.ndarray, h: np.ndarray) -> None:
        self.hh, self.ww = s.shape
        self.key0 = (b.astype(np.int64) << 3) | s
        self.s = np.pad(s, _PAD, mode="edge")
        self.key = np.pad(self.key0, _PAD, mode="edge")
        # NaN outside the region: a height gradient never reads a made-up neighbour.
        self.h = np.pad(h, _PAD, mode="constant", constant_values=np.nan)
        b64 = b.astype(np.int64)
        self.roof_key = (b64 << 3) | S_ROOF
        self.wall_key = (b64 << 2) | (S_WL >> 1)  # WALL_LEFT (6) and WALL_RIGHT (7) share key >> 1
        self.b = b64

    def _v(self, a: np.ndarray, dy: int, dx: int) -> np.ndarray:
        return a[_PAD + dy : _PAD + dy + self.hh, _PAD + dx : _PAD + dx + self.ww]

    def S(self, dy: int, dx: int) -> np.ndarray:
        return self._v(self.s, dy, dx)

    def K(self, dy: int, dx: int) -> np.ndarray:
        return self._v(self.key, dy, dx)

    def H(self, dy: int, dx: int) -> np.ndarray:
        return self._v(self.h, dy, dx)

    def same_roof(self, dy: int, dx: int) -> np.ndarray:
        return self.K(dy, dx) == self.roof_key

    def same_wall(self, dy: int, dx: int) -> np.ndarray:
        return (self.K(dy, dx) >> 1) == self.wall_key

    def same_building(self, dy: int, dx: int) -> np.ndarray:
        return (self.K(dy, dx) >> 3) == self.b

    def any_nb(self, offsets: tuple[tuple[int, int], ...], *classes: int) -> np.ndarray:
        m = np.zeros((self.hh, self.ww), bool)
        for dy, dx in offsets:
            ns = self.S(dy, dx)
            for c in classes:
                m |= ns == c
        return m

    def sub(self, flat: np.ndarray) -> _Sub:
        return _Sub(self, flat)


class _Sub:
    """One subset of region pixels (flat indices) and its coordinates and buffer values."""

    def __init__(self, buf: _Buf, flat: np.ndarray) -> None:
        self.buf = buf
        self.flat = flat
        self.y = flat // buf.ww
        self.x = flat - self.y * buf.ww
        self.b = buf.b.ravel()[flat]
        self.s = (buf.key0.ravel()[flat] & 7).astype(np.uint8)

    def take(self, full: np.ndarray) -> np.ndarray:
        """This subset's values of a whole-region array."""
        return full.ravel()[self.flat]

    def any_nb(self, offsets: tuple[tuple[int, int], ...], *classes: int) -> np.ndarray:
        return self.take(self.buf.any_nb(offsets, *classes))


_N4 = ((-1, 0), (1, 0), (0, -1), (0, 1))
_N8 = (*_N4, (-1, -1), (-1, 1), (1, -1), (1, 1))
_R2 = (*_N8, (-2, 0), (2, 0), (0, -2), (0, 2))


def stylize(
    surface: np.ndarray,
    building: np.ndarray,
    height: np.ndarray,
    x0: int,
    y0: int,
    cam: Camera,
    params: StyleParams,
    sprite_box: tuple[int, int, int, int] | None = None,
    context_rgb: np.ndarray | None = None,
) -> np.ndarray:
    """Palette indices (H, W) int16 for a region whose top-left pixel is world pixel (x0, y0).

    ``sprite_box`` (x0, y0, x1, y1 in region pixels) is the infill: multi-pixel rooftop objects are
    placed inside it. One straddling its edge is completed only if ``context_rgb`` (the template over
    the region) already shows its other part, so objects are never cut in half at a step seam:
    whether the earlier step drew it depends on where that step's window ended, and the context says.
    """
    s = np.ascontiguousarray(surface, dtype=np.uint8)
    b = np.ascontiguousarray(building, dtype=np.int32)
    hgt = np.ascontiguousarray(height, dtype=np.float32)
    hh, ww = s.shape
    out = np.full(hh * ww, _I("ground"), dtype=np.int16)
    buf = _Buf(s, b, hgt)
    flat_s = s.ravel()
    order = np.argsort(flat_s, kind="stable")
    bounds = np.searchsorted(flat_s[order], np.arange(len(Surface) + 1))
    subsets = {c: order[bounds[c] : bounds[c + 1]] for c in range(len(Surface))}
    ctx = _Ctx(buf, out, x0, y0, cam, params)

    ctx.ground(np.concatenate([subsets[0], subsets[S_GROUND]]))
    ctx.roads(subsets[S_ROAD], s == S_ROAD)
    ctx.water(subsets[S_WATER])
    ctx.parks(subsets[S_PARK])
    walls = np.concatenate([subsets[S_WL], subsets[S_WR]])
    roofs = subsets[S_ROOF]
    if walls.size or roofs.size:
        lut = _BuildingLut(b.ravel()[np.concatenate([walls, roofs])], params.seed)
        ctx.walls(walls, lut)
        ctx.roofs(roofs, lut, b, sprite_box, context_rgb)
    ctx.depth_outlines(hgt)
    return out.reshape(hh, ww)


class _BuildingLut:
    """Per-building choices, hashed once per distinct id present and gathered per pixel."""

    def __init__(self, ids_of_pixels: np.ndarray, seed: int) -> None:
        bmax = int(ids_of_pixels.max()) if ids_of_pixels.size else 0
        bmin = int(ids_of_pixels.min()) if ids_of_pixels.size else 0
        # A direct lookup table for small ids (< 2^22); the renderer's stable CRC-32 ids and ids
        # inferred from colours are sorted instead.
        self._lut: np.ndarray | None = None
        if bmin >= 0 and bmax < 1 << 22:
            present = np.zeros(bmax + 1, bool)
            present[ids_of_pixels] = True
            ub = np.flatnonzero(present)
            self._lut = np.zeros(bmax + 1, np.int32)
            self._lut[ub] = np.arange(ub.size, dtype=np.int32)
        else:
            ub = np.unique(ids_of_pixels)
        self._sorted = ub  # the present ids, ascending: searched when there is no lookup table
        self.ids = ub.astype(np.int64)
        u = hash_unit(self.ids, salt=seed + 11)
        self.mat = np.searchsorted(pal.MATERIAL_CDF, u, side="right").clip(0, len(pal.MATERIALS) - 1)
        self.floor_f = 0.92 + 0.22 * hash_unit(self.ids, salt=seed + 13)
        self.spacing = 0.85 + 0.35 * hash_unit(self.ids, salt=seed + 14)
        self.phase_x = (hash_u32(self.ids, salt=seed + 15) % 64).astype(np.int64)
        self.roof_kind = (hash_u32(self.ids, salt=seed + 12) % len(pal.ROOF_BASE)).astype(np.int64)
        self.awning = hash_unit(self.ids, salt=seed + 17) < 0.45
        self.awning_c = pal.AWNINGS[(hash_u32(self.ids, salt=seed + 18) % len(pal.AWNINGS)).astype(np.int64)]
        self.detail = 0.2 + 1.6 * hash_unit(self.ids, salt=seed + 54)

    def index(self, bvals: np.ndarray) -> np.ndarray:
        if self._lut is not None:
            return self._lut[bvals]
        return np.searchsorted(self._sorted, bvals)


class _Ctx:
    """The region being stylized: buffers, output palette indices, world origin, camera, style."""

    def __init__(
        self, buf: _Buf, out: np.ndarray, x0: int, y0: int, cam: Camera, params: StyleParams
    ) -> None:
        self.buf = buf
        self.out = out
        self.x0 = int(x0)
        self.y0 = int(y0)
        self.cam = cam
        self.params = params
        self.seed = int(params.seed)

    def world(self, sub: _Sub) -> tuple[np.ndarray, np.ndarray]:
        return sub.x.astype(np.int64) + self.x0, sub.y.astype(np.int64) + self.y0

    # --- ground-level surfaces ----------------------------------------------------------------------
    def ground(self, flat: np.ndarray) -> None:
        if not flat.size:
            return
        sub = self.buf.sub(flat)
        wx, wy = self.world(sub)
        # Paving joints along the two screen diagonals of slope ±0.7 (ground lines at 45° to the view in
        # this camera), one pixel per column every 10 rows: pavement slabs.
        joint = ((10 * wy + 7 * wx) // 10 % 10 == 0) | ((10 * wy - 7 * wx) // 10 % 10 == 0)
        n = hash_unit(wx, wy, salt=self.seed + 1)
        patch = value_noise(wx, wy, 40.0, salt=self.seed + 2)
        c = np.where(joint, _I("ground_joint"), _I("ground")).astype(np.int16)
        c[(n < 0.04) | ((patch > 0.74) & (n < 0.25))] = _I("ground_dark")
        c[n > 0.97] = _I("ground_light")
        # Kerb stones along roads, a concrete bulkhead along the water.
        c[sub.any_nb(_N4, S_ROAD)] = _I("curb")
        self._shore(sub, c)
        self.out[flat] = c

    def _shore(self, sub: _Sub, c: np.ndarray) -> None:
        near2 = sub.any_nb(_R2, S_WATER)
        if near2.any():
            c[near2] = _I("seawall")
            c[sub.any_nb(_N4, S_WATER)] = _I("seawall_dark")

    def water(self, flat: np.ndarray) -> None:
        if not flat.size:
            return
        sub = self.buf.sub(flat)
        wx, wy = self.world(sub)
        # Short horizontal wave strokes on every other row: the reference's flat, lightly textured water.
        row = wy // 2
        off = (hash_u32(row, salt=self.seed + 21) % 13).astype(np.int64)
        seg = (wx + off) // 13
        pos = (wx + off) % 13
        hs = hash_u32(seg, row, salt=self.seed + 22)
        r = (hs >> np.uint32(8)).astype(np.float32) * np.float32(1 / 16777216)
        ln = 2 + (hs % 5).astype(np.int64)
        start = ((hs >> np.uint32(3)) % 5).astype(np.int64)
        stroke = (pos >= start) & (pos < start + ln) & (wy % 2 == 0)
        c = np.full(flat.shape, _I("water"), np.int16)
        c[stroke & (r < 0.14)] = _I("water_light")
        c[stroke & (r >= 0.14) & (r < 0.18)] = _I("water_hi")
        c[stroke & (r >= 0.18) & (r < 0.28)] = _I("water_dark")
        buf = self.buf
        edge2d = np.zeros((buf.hh, buf.ww), bool)
        for dy, dx in _N4:
            ns = buf.S(dy, dx)
            edge2d |= (ns != S_WATER) & (ns != 0)
        edge = sub.take(edge2d)
        c[edge] = _I("water_edge")
        self.out[flat] = c

    def parks(self, flat: np.ndarray) -> None:
        if not flat.size:
            return
        sub = self.buf.sub(flat)
        gx, gy = self.world(sub)
        seed = self.seed
        n = hash_unit(gx, gy, salt=seed + 31)
        col = np.full(flat.shape, _I("grass"), np.int16)
        col[n < 0.08] = _I("grass_dark")
        col[n > 0.94] = _I("grass_light")

        # Trees: one candidate per world cell, present where clustered noise is high; each pixel takes
        # the front-most (largest anchor y) canopy covering it, so canopies overlap like the reference.
        none = np.iinfo(np.int64).min
        best_ay = np.full(flat.shape, none, np.int64)
        best_u = np.zeros(flat.shape, np.float32)
        best_v = np.zeros(flat.shape, np.float32)
        shadow = np.zeros(flat.shape, bool)
        cx0 = gx // _TREE_CX
        cy0 = gy // _TREE_CY
        # Per-cell tree attributes on the grid of cells around the pixels, hashed once per cell.
        gx0, gy0 = int(cx0.min()) - 1, int(cy0.min()) - 1
        cxs = np.arange(gx0, int(cx0.max()) + 2, dtype=np.int64)[None, :]
        cys = np.arange(gy0, int(cy0.max()) + 2, dtype=np.int64)[:, None]
        hsh = hash_u32(cxs, cys, salt=seed + 32)
        clump = value_noise(cxs * _TREE_CX, cys * _TREE_CY, 52.0, salt=seed + 33)
        p = self.params.tree_density * np.clip((clump - 0.22) * 2.6, 0.0, 1.0)
        present_g = (hsh >> np.uint32(8)).astype(np.float32) * np.float32(1 / 16777216) < p
        ax_g = cxs * _TREE_CX + (hsh % _TREE_CX).astype(np.int64)
        ay_g = cys * _TREE_CY + ((hsh >> np.uint32(4)) % _TREE_CY).astype(np.int64)
        r0, rn = _TREE_RADII[self.params.tree_sprites]
        r_g = r0 + ((hsh >> np.uint32(12)) % rn).astype(np.float32)  # ≤ 16 px ≤ cell: ±1 cell suffices
        # Lumpy canopy edges: the unit-circle test is perturbed by small-scale noise of the pixel.
        wobble = 1.0 + (value_noise(gx, gy, 3.0, salt=seed + 37) - 0.5) * 0.45
        for dj in (-1, 0, 1):
            for di in (-1, 0, 1):
                jy = cy0 + (dj - gy0)
                jx = cx0 + (di - gx0)
                cand = np.flatnonzero(present_g[jy, jx])
                if not cand.size:
                    continue
                jy, jx = jy[cand], jx[cand]
                ax, ay, r = ax_g[jy, jx], ay_g[jy, jx], r_g[jy, jx]
                u = (gx[cand] - ax).astype(np.float32) / r
                v = (gy[cand] - ay).astype(np.float32) / (r * np.float32(0.85))
                take = (u * u + v * v <= wobble[cand]) & (ay > best_ay[cand])
                t = cand[take]
                best_ay[t] = ay[take]
                best_u[t] = u[take]
                best_v[t] = v[take]
                # Canopy shadow: the canopy shifted down-right onto the grass.
                us = u - 3.0 / r
                vs = v - 3.0 / (r * np.float32(0.85))
                shadow[cand[us * us + vs * vs <= wobble[cand]]] = True
        tree = best_ay != none
        col[shadow & ~tree] = _I("grass_shadow")
        if tree.any():
            u, v = best_u[tree], best_v[tree]
            rr = (u * u + v * v) / wobble[tree]
            # Leaf clumps: small-scale noise breaks the canopy shading into lit and shaded tufts.
            tufts = value_noise(gx[tree], gy[tree], 3.5, salt=seed + 36)
            lit = u + v + (tufts - 0.5) * 1.6 + (n[tree] - 0.5) * 0.3
            tc = np.full(u.shape, _I("tree_mid"), np.int16)
            tc[lit < -0.45] = _I("tree_light")
            tc[lit < -0.95] = _I("tree_hi")
            tc[lit > 0.4] = _I("tree_dark")
            tc[(rr > 0.8) | ((rr > 0.66) & (u + v > 0.2))] = _I("tree_outline")
            col[tree] = tc
        self._shore(sub, col)
        self.out[flat] = col

    def roads(self, flat: np.ndarray, mask: np.ndarray) -> None:
        if not flat.size:
            return
        sub = self.buf.sub(flat)
        wx, wy = self.world(sub)
        n = hash_unit(wx, wy, salt=self.seed + 41)
        c = np.full(flat.shape, _I("asphalt"), np.int16)
        c[n < 0.06] = _I("asphalt_dark")
        c[n > 0.965] = _I("asphalt_light")
        if self.params.lane_markings:
            c[self._centre_line(sub, mask, wx, wy)] = _I("lane_white")
        c[sub.any_nb(_N4, S_GROUND, S_PARK)] = _I("asphalt_kerb")
        self._shore(sub, c)
        self.out[flat] = c

    def _centre_line(self, sub: _Sub, mask: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
        """Dashed centre line: the ridge of the distance-to-kerb field where the road is at its widest.

        Screen rows and columns are the camera's ground axes at h = 0, so an EDT with per-axis
        sampling gives exact ground metres. The ridge is where a step away from the nearest kerb stops
        increasing the distance; requiring the local maximum width (12 m around) drops the diagonal
        ridges inside intersections. Dashes follow the local tangent (perpendicular to the kerb).
        """
        cam = self.cam
        samp = (cam.row_m, cam.mpp)
        ys, xs = np.nonzero(mask)
        # The roads' bounding box plus one pixel, so the kerbs bounding it are in the EDT's input.
        hh, ww = mask.shape
        y0, y1 = max(0, ys.min() - 1), min(hh, ys.max() + 2)
        x0, x1 = max(0, xs.min() - 1), min(ww, xs.max() + 2)
        m = mask[y0:y1, x0:x1]
        d, (iy, ix) = ndimage.distance_transform_edt(m, sampling=samp, return_indices=True)
        rad = 12.0
        size = (2 * math.ceil(rad / samp[0]) + 1, 2 * math.ceil(rad / samp[1]) + 1)
        dmax = ndimage.maximum_filter(d, size=size, mode="nearest")
        result = np.zeros(sub.flat.shape, bool)
        ly, lx = sub.y - y0, sub.x - x0
        dd = d[ly, lx]
        # Cheap tests first: only pixels at the local maximum width of a real street can be centre.
        # Not at the region's border either: the road may go on beyond, so there is no evidence of a
        # ridge there; the step that sees past this border draws the line if it is real.
        cand = np.flatnonzero(
            (dd > 2.6)
            & (dd >= dmax[ly, lx] - 0.45)
            & (sub.y > 0)
            & (sub.y < self.buf.hh - 1)
            & (sub.x > 0)
            & (sub.x < self.buf.ww - 1)
        )
        if not cand.size:
            return result
        ly, lx, dd = ly[cand], lx[cand], dd[cand]
        ky, kx = iy[ly, lx], ix[ly, lx]  # nearest kerb pixel
        # The nearest kerb must be at ground level: a road sliver seen between two towers is bounded
        # by walls, not kerbs, and has no meaningful centre.
        kerb_s = self.buf.S(0, 0)[ky + y0, kx + x0]
        at_ground = (kerb_s == S_GROUND) | (kerb_s == S_PARK) | (kerb_s == S_WATER)
        ny = (ky - ly) * samp[0]  # vector to the nearest kerb, metres
        nx = (kx - lx) * samp[1]
        vert = np.abs(ny) >= np.abs(nx)
        qy = np.clip(ly - np.where(vert, np.sign(ny), 0).astype(np.int64), 0, m.shape[0] - 1)
        qx = np.clip(lx - np.where(vert, 0, np.sign(nx)).astype(np.int64), 0, m.shape[1] - 1)
        centre = at_ground & (d[qy, qx] <= dd + 0.02)  # a step away from the kerb stops gaining
        if centre.any():
            # Keep only ridge lines of some length: isolated ridge specks inside plazas are not lines.
            c2 = np.zeros(m.shape, bool)
            c2[ly[centre], lx[centre]] = True
            lab, nlab = ndimage.label(c2, structure=np.ones((3, 3), bool))
            sizes = np.bincount(lab.ravel(), minlength=nlab + 1)
            centre &= sizes[lab[ly, lx]] >= 12
        nlen = np.hypot(ny, nx) + 1e-9
        ty, tx = nx / nlen, -ny / nlen  # tangent, metres frame
        flip = (tx < 0) | ((tx == 0) & (ty < 0))
        ty = np.where(flip, -ty, ty)
        tx = np.where(flip, -tx, tx)
        along = (wy[cand] * samp[0]) * ty + (wx[cand] * samp[1]) * tx
        dash = np.mod(along, 2 * self.params.lane_dash_m) < self.params.lane_dash_m
        result[cand] = centre & dash
        return result

    # --- buildings ----------------------------------------------------------------------------------
    def walls(self, flat: np.ndarray, lut: _BuildingLut) -> None:
        if not flat.size:
            return
        cam, seed = self.cam, self.seed
        buf = self.buf
        sub = buf.sub(flat)
        wx, _ = self.world(sub)
        bi = lut.index(sub.b)
        mat = lut.mat[bi]
        lit = sub.s == S_WL
        h = sub.take(buf.H(0, 0))

        # Wall direction from the height gradient along screen rows: on a planar wall h changes
        # linearly with x, and dh/dx fixes the wall's angle to the camera, hence metres per pixel
        # along the wall (so window bays are ~3 m whatever the wall's orientation).
        K0 = buf.key0
        g_r2 = buf.H(0, 1) - buf.H(0, 0)
        g_l2 = buf.H(0, 0) - buf.H(0, -1)
        g_r2[buf.K(0, 1) != K0] = np.nan
        g_l2[buf.K(0, -1) != K0] = np.nan
        g_r, g_l = sub.take(g_r2), sub.take(g_l2)
        ok_r = np.isfinite(g_r)
        ok_l = np.isfinite(g_l)
        g = np.where(ok_r, np.where(ok_l, 0.5 * (g_r + g_l), g_r), np.where(ok_l, g_l, np.nan))
        rho = -g * (cam.cos_dep / (cam.sin_dep * cam.mpp))
        rho = np.where(np.isfinite(rho), rho, 1.0)  # unknown: a wall at 45° to the view
        m_per_px = cam.mpp * np.sqrt(1.0 + rho * rho)
        spacing_m = self.params.window_spacing_m * lut.spacing[bi]
        period = np.clip(np.rint(spacing_m / m_per_px), 3, 16).astype(np.int64)
        phase = lut.phase_x[bi]
        cx = (wx + phase) % period
        col_i = (wx + phase) // period
        win_w = np.clip(np.rint(period * pal.MAT_WIN_W[mat]), 2, period - 1).astype(np.int64)
        col_on = (cx >= 1) & (cx <= win_w)
        pattern = self.params.window_pattern
        if pattern == "bands":  # ribbon windows: a continuous band per floor
            col_on = np.ones_like(col_on)

        # Floors are bands of height: integer "height pixels" step exactly once per screen row.
        fp = np.maximum(np.rint(self.params.floor_height_m * lut.floor_f * cam.k), 6).astype(np.int64)[bi]
        hp = np.floor(h * cam.k + 0.5).astype(np.int64)
        floor_i = hp // fp
        rp = hp - floor_i * fp
        win_h = np.clip(np.rint(fp * pal.MAT_WIN_H[mat]), 2, fp - 3).astype(np.int64)
        row_on = (rp >= 2) & (rp < 2 + win_h)
        if pattern == "checker":
            col_on &= (col_i + floor_i) % 2 == 0

        # Piers at the wall's ends and the cornice under the roof: no windows there.
        pier = sub.take(
            ~(buf.same_wall(0, 1) & buf.same_wall(0, -1) & buf.same_wall(0, 2) & buf.same_wall(0, -2))
        )
        b1 = buf.same_roof(-1, 0)
        below1 = sub.take(b1)
        below = sub.take(b1 | buf.same_roof(-2, 0) | buf.same_roof(-3, 0))

        lit_t, shade_t = pal.material_table("lit"), pal.material_table("shade")
        hi_t, win_t = pal.material_table("hi"), pal.material_table("window")
        glass = pal.MAT_GLASS[mat]
        base = np.where(lit, lit_t[mat], shade_t[mat]).astype(np.int16)
        cell = hash_unit(sub.b, col_i, floor_i, salt=seed + 16)
        win = np.where(lit, win_t[mat], _I("win_shade")).astype(np.int16)
        win[cell > 0.82] = _I("win_blue")
        win[lit & (cell > 0.94)] = _I("win_sky")
        win[cell > 1.0 - self.params.window_lit_fraction] = _I("win_warm")  # default: exactly 0.988

        ok = ~pier & ~below & (floor_i >= 1)
        c = base.copy()
        punched = ~glass
        is_win = punched & col_on & row_on & ok
        if self.params.window_density < 1.0:
            is_win &= hash_unit(sub.b, col_i, floor_i, salt=seed + 61) < self.params.window_density
        c[is_win] = win[is_win]
        sill = punched & pal.MAT_SILLS[mat] & col_on & (rp == 1) & ok & lit & self.params.window_sills
        c[sill] = _I("sill")

        # Curtain walls: glass with a mullion grid; whole bays catch the sky now and then.
        bay = hash_unit(sub.b, col_i, salt=seed + 19)
        gcol = base.copy()
        refl = (bay > 0.7) | (cell > 0.93)
        gcol[refl] = np.where(lit, hi_t[mat], lit_t[mat])[refl]
        mull = (cx == 0) | (rp == 0)
        gcol[mull] = np.where(lit, _I("mullion"), _I("mullion_s"))[mull]
        c[glass] = gcol[glass]

        # Ground floor: shop windows and, for some buildings, an awning band.
        store = (floor_i == 0) & ~pier
        p2 = 2 * period
        cx2 = (wx + phase) % p2
        shop = store & (rp >= 1) & (rp < fp - 3) & (cx2 >= 1) & (cx2 < p2 - 1)
        c[shop] = _I("store_glass")
        awn = store & lut.awning[bi] & ((rp == fp - 3) | (rp == fp - 2)) & self.params.awnings
        c[awn] = lut.awning_c[bi][awn]

        # Cornice under the roof edge, a highlight down the lit side of each corner, a dark foot.
        c[below1] = hi_t[mat][below1]
        corner = lit & sub.take(buf.K(0, 1) == ((buf.b << 3) | S_WR))
        c[corner] = hi_t[mat][corner]
        foot = ~sub.take(buf.same_building(1, 0))
        c[foot] = _I("outline_soft")
        self.out[flat] = c

    def roofs(
        self,
        flat: np.ndarray,
        lut: _BuildingLut,
        b2d: np.ndarray,
        sprite_box: tuple[int, int, int, int] | None,
        context_rgb: np.ndarray | None,
    ) -> None:
        if not flat.size:
            return
        seed = self.seed
        sub = self.buf.sub(flat)
        wx, wy = self.world(sub)
        bi = lut.index(sub.b)
        kind = lut.roof_kind[bi]
        if self.params.roof_style != "mixed":
            kind = _ROOF_STYLES[self.params.roof_style][kind]
        mat = lut.mat[bi]
        n = hash_unit(wx, wy, salt=seed + 19)
        weather = value_noise(wx, wy, 22.0, salt=seed + 20)
        c = pal.ROOF_BASE[kind]
        dark = (n < 0.03) | ((weather > 0.84) & (n < 0.35))
        c = np.where(dark, pal.ROOF_DARK[kind], c)
        buf = self.buf
        in4 = buf.same_roof(-1, 0) & buf.same_roof(1, 0) & buf.same_roof(0, -1) & buf.same_roof(0, 1)
        inner2d = in4.copy()
        for dy, dx in _R2[4:]:
            inner2d &= buf.same_roof(dy, dx)
        rim = ~sub.take(in4)
        inner = sub.take(inner2d)
        rim2 = ~rim & ~inner
        white_rim = pal.MAT_GLASS[mat] | (pal.material_table("lit")[mat] == _I("white_l"))
        c = np.where(rim2, pal.ROOF_DARK[kind], c)
        c = np.where(rim, np.where(white_rim, _I("rim_white"), _I("rim")), c).astype(np.int16)
        self.out[flat] = c

        hh, ww = self.buf.hh, self.buf.ww
        roof2d = np.zeros(hh * ww, bool)
        roof2d[flat] = True
        interior = inner2d & (buf.key0 == buf.roof_key)
        self._sprites(roof2d.reshape(hh, ww), interior, b2d, lut, sprite_box, context_rgb)

    def _sprites(
        self,
        roof: np.ndarray,
        interior: np.ndarray,
        b: np.ndarray,
        lut: _BuildingLut,
        sprite_box: tuple[int, int, int, int] | None,
        context_rgb: np.ndarray | None,
    ) -> None:
        """Rooftop objects (AC units, bulkheads, water towers, skylights) on a world grid of cells.

        A cell's object (position, kind: hashes of the cell) is placed only if its footprint corners all
        lie inside one building's roof, away from the rim, and inside the region; if it is not wholly
        inside ``sprite_box``, only if the context already shows it (see ``stylize``).
        """
        if not interior.any():
            return
        seed = self.seed
        hh, ww = b.shape
        out2d = self.out.reshape(hh, ww)
        bx0, by0, bx1, by1 = sprite_box if sprite_box is not None else (0, 0, ww, hh)
        c = _SPRITE_CELL
        x0, y0 = self.x0, self.y0
        cxs = np.arange(x0 // c - 1, (x0 + ww) // c + 2, dtype=np.int64)
        cys = np.arange(y0 // c - 1, (y0 + hh) // c + 2, dtype=np.int64)
        CX, CY = (a.ravel() for a in np.meshgrid(cxs, cys))
        pick = hash_unit(CX, CY, salt=seed + 51)
        kind = np.searchsorted(np.cumsum(_SPRITE_P), hash_unit(CX, CY, salt=seed + 52), side="right")
        kind = kind.clip(0, len(pal.SPRITES) - 1)
        hj = hash_u32(CX, CY, salt=seed + 53)
        for k, spr in enumerate(pal.SPRITES):
            sel = kind == k
            cx, cy, pk, hk = CX[sel], CY[sel], pick[sel], hj[sel]
            # Anchor = bottom-centre of the sprite, placed so the sprite stays inside its cell.
            ax = cx * c + spr.width // 2 + (hk % (c - spr.width + 1)).astype(np.int64) - x0
            ay = (
                cy * c + spr.height - 1 + ((hk >> np.uint32(10)) % (c - spr.height + 1)).astype(np.int64) - y0
            )
            left = ax - spr.width // 2
            right = left + spr.width - 1
            top = ay - spr.height + 1
            inreg = (left >= 0) & (right < ww) & (top >= 0) & (ay < hh)
            touches = (right >= bx0) & (left < bx1) & (ay >= by0) & (top < by1)
            keep = inreg & touches
            cx, cy, ax, ay, left, right, top, pk = (a[keep] for a in (cx, cy, ax, ay, left, right, top, pk))
            if ax.size == 0:
                continue
            inbox = (left >= bx0) & (right < bx1) & (top >= by0) & (ay < by1)
            bid = b[ay, ax]
            ok = interior[ay, ax] & (bid != 0)
            for yy, xx in (
                (ay, left),
                (ay, right),
                (top, left),
                (top, right),
                (top, ax),
                ((ay + top) // 2, ax),
            ):
                ok &= interior[yy, xx] & (b[yy, xx] == bid)
            if not ok.any():
                continue
            # Equipment clusters (value noise over cells) instead of an even sprinkle.
            clump = np.clip((value_noise(cx[ok], cy[ok], 3.0, salt=seed + 55) - 0.3) * 2.5, 0.0, 1.0)
            ok[ok] &= pk[ok] < self.params.roof_detail_density * lut.detail[lut.index(bid[ok])] * clump
            if not ok.any():
                continue
            ax, ay, bid, inbox = ax[ok], ay[ok], bid[ok], inbox[ok]
            ty = ay[:, None] + spr.dy[None, :]
            tx = ax[:, None] + spr.dx[None, :]
            col = np.broadcast_to(spr.colour[None, :], ty.shape)
            # Only over this building's roof: anything in front of it hides the object.
            vis = roof[ty, tx] & (b[ty, tx] == bid[:, None])
            if not inbox.all():
                outside = (tx < bx0) | (tx >= bx1) | (ty < by0) | (ty >= by1)
                seen = vis & outside
                if context_rgb is not None:
                    drawn = colourize(col, tx + x0, ty + y0, self.params)  # the colour the context step drew
                    match = np.all(context_rgb[ty, tx] == drawn, axis=-1) & seen
                    shown = match.sum(axis=1) >= 0.75 * np.maximum(seen.sum(axis=1), 1)
                else:
                    shown = np.zeros(len(ax), bool)
                vis &= (inbox | (shown & (seen.sum(axis=1) > 0)))[:, None]
            out2d[ty[vis], tx[vis]] = col[vis]

    def depth_outlines(self, hgt: np.ndarray) -> None:
        """Dark outline on the far side of every occlusion edge.

        Between two neighbouring pixels the nearer surface is the higher one (depth along an
        orthographic ray is u·cot(dep) − h/sin(dep), and u is nearly equal for neighbours), so a pixel
        whose neighbour stands more than ``depth_edge_m`` higher is hidden behind it: the line goes
        there, which keeps the occluder's silhouette (and its light roof rim) intact.
        """
        if self.params.outline_mode == "none":
            return
        hp = np.pad(hgt, 1, mode="edge")
        hh, ww = hgt.shape
        lim = hgt + np.float32(self.params.depth_edge_m)
        far = hp[0:hh, 1 : ww + 1] > lim
        far |= hp[2 : hh + 2, 1 : ww + 1] > lim
        far |= hp[1 : hh + 1, 0:ww] > lim
        far |= hp[1 : hh + 1, 2 : ww + 2] > lim
        if self.params.outline_mode == "thick":  # two pixels: the line grows onto the far side's next pixel
            far = ndimage.binary_dilation(far)
        self.out[far.ravel()] = _I("outline")
