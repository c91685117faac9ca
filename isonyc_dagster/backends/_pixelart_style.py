"""Render-buffer → isometric pixel art, as pure vectorized numpy over one rectangular region.

Input: per-pixel surface class, building id and visible-point height of a region whose top-left is at
world pixel (x0, y0). Output: palette indices (see ``_pixelart_palette``). Every texture and decision
is a function of world pixel coordinates, building id, height and a *small* neighbourhood of the
buffers (≤ 2 px for outlines; the road centre-line search looks further), never of the region's
position, so overlapping regions agree on every pixel whose neighbourhood they both see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..surfaces import Surface
from . import _pixelart_palette as pal
from ._pixelart_noise import hash_u32, hash_unit, value_noise


@dataclass(frozen=True)
class Camera:
    """The few camera constants the style needs (from ``MapGeometry``)."""

    mpp: float  # metres per pixel on the image plane
    k: float  # screen pixels per metre of height
    sin_dep: float
    cos_dep: float

    @classmethod
    def from_geometry(cls, geometry) -> Camera:  # noqa: ANN001 - MapGeometry, kept import-light
        sd, cd = geometry._dep
        return cls(mpp=geometry.mpp, k=geometry.height_px_per_m, sin_dep=sd, cos_dep=cd)

    @property
    def row_m(self) -> float:
        """Ground metres per screen row (along the view direction, at h = 0)."""
        return self.mpp / self.sin_dep


@dataclass(frozen=True)
class StyleParams:
    """Knobs of the look. All of them go into provenance; change them map-wide, never per step."""

    seed: int = 0
    floor_height_m: float = 3.6
    window_spacing_m: float = 3.2
    depth_edge_m: float = 1.5  # a height jump larger than this between neighbours is an occlusion edge
    tree_density: float = 0.62
    roof_detail_density: float = 0.55
    lane_dash_m: float = 3.0

    def as_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


#: Pixels of context a region needs around the output so local operators see real neighbours.
MARGIN_PX = 64

_I = pal.idx
S_ROOF, S_WL, S_WR = int(Surface.ROOF), int(Surface.WALL_LEFT), int(Surface.WALL_RIGHT)

# Rooftop sprite grid (world px): one candidate per cell, sprites stay inside their cell, so they
# never overlap and their draw order does not matter.
_SPRITE_CELL = 26
_SPRITE_P = np.array([0.34, 0.14, 0.20, 0.12, 0.20])  # ac, ac2, bulkhead, tower, vents
# Tree grid (world px) and the largest canopy radii.
_TREE_CX, _TREE_CY = 9, 7
_TREE_RMAX = 6


class _Shift:
    """Neighbour access with edge padding: ``sh(dy, dx)[y, x] == a[y + dy, x + dx]`` (clamped)."""

    def __init__(self, a: np.ndarray, pad: int = 2, fill: float | None = None) -> None:
        self.pad = pad
        self.shape = a.shape
        if fill is None:
            self.p = np.pad(a, pad, mode="edge")
        else:
            self.p = np.pad(a, pad, mode="constant", constant_values=fill)

    def __call__(self, dy: int, dx: int) -> np.ndarray:
        p, (h, w) = self.pad, self.shape
        return self.p[p + dy : p + dy + h, p + dx : p + dx + w]


_N4 = ((-1, 0), (1, 0), (0, -1), (0, 1))


def stylize(
    surface: np.ndarray,
    building: np.ndarray,
    height: np.ndarray,
    x0: int,
    y0: int,
    cam: Camera,
    params: StyleParams,
    sprite_box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Palette indices (H, W) int16 for a region whose top-left pixel is world pixel (x0, y0).

    ``sprite_box`` (x0, y0, x1, y1 in region pixels) is where multi-pixel rooftop objects may be
    placed: an object straddling its edge is left out, which is what the neighbouring step decides
    too, so no half objects appear along step seams.
    """
    s = np.asarray(surface).astype(np.int16)
    b = np.asarray(building).astype(np.int64)
    hgt = np.asarray(height).astype(np.float64)
    hh, ww = s.shape
    X = (x0 + np.arange(ww, dtype=np.int64))[None, :]
    Y = (y0 + np.arange(hh, dtype=np.int64))[:, None]
    seed = int(params.seed)

    roof = s == S_ROOF
    wl = s == S_WL
    wr = s == S_WR
    wall = wl | wr
    bld = roof | wall
    road = s == int(Surface.ROAD)
    park = s == int(Surface.PARK)
    water = s == int(Surface.WATER)
    ground = ~(bld | road | park | water)  # GROUND and NONE

    out = np.full((hh, ww), _I("ground"), dtype=np.int16)

    _ground(out, ground, X, Y, seed)
    _roads(out, road, X, Y, cam, params)
    _water(out, water, X, Y, seed)
    _parks(out, park, X, Y, seed, params)
    _edges_ground(out, s, ground, road, park, water)
    if bld.any():
        _buildings(out, s, b, hgt, X, Y, cam, params, roof, wl, wr, wall, bld, sprite_box)
    _depth_outlines(out, hgt, bld, params)
    return out


# --- ground-level surfaces -------------------------------------------------------------------------


def _ground(out: np.ndarray, m: np.ndarray, X: np.ndarray, Y: np.ndarray, seed: int) -> None:
    if not m.any():
        return
    # Paving joints on the isometric 2:1 diagonals read as pavement slabs in this camera.
    joint = ((X + 2 * Y) % 14 == 0) | ((X - 2 * Y) % 14 == 0)
    n = hash_unit(X, Y, salt=seed + 1)
    patch = value_noise(X, Y, 40.0, salt=seed + 2)
    c = np.where(joint, _I("ground_joint"), _I("ground")).astype(np.int16)
    c = np.where((n < 0.05) | ((patch > 0.72) & (n < 0.3)), _I("ground_dark"), c)
    c = np.where(n > 0.965, _I("ground_light"), c)
    out[m] = c[m]


def _water(out: np.ndarray, m: np.ndarray, X: np.ndarray, Y: np.ndarray, seed: int) -> None:
    if not m.any():
        return
    # Short horizontal wave strokes on every other row, like the reference's flat textured water.
    row = Y // 2
    off = (hash_u32(row, salt=seed + 21) % 11).astype(np.int64)
    seg = (X + off) // 11
    pos = (X + off) % 11
    r = hash_unit(seg, row, salt=seed + 22)
    ln = 2 + (hash_u32(seg, row, salt=seed + 23) % 5).astype(np.int64)
    start = (hash_u32(seg, row, salt=seed + 24) % 4).astype(np.int64)
    in_stroke = (pos >= start) & (pos < start + ln) & (Y % 2 == 0)
    c = np.full(np.broadcast_shapes(X.shape, Y.shape, m.shape), _I("water"), np.int16)
    c = np.where(in_stroke & (r < 0.16), _I("water_light"), c)
    c = np.where(in_stroke & (r >= 0.16) & (r < 0.2), _I("water_hi"), c)
    c = np.where(in_stroke & (r >= 0.2) & (r < 0.3), _I("water_dark"), c)
    out[m] = c[m]


def _parks(
    out: np.ndarray, m: np.ndarray, X: np.ndarray, Y: np.ndarray, seed: int, params: StyleParams
) -> None:
    if not m.any():
        return
    ys, xs = np.nonzero(m)
    gx = X[0, xs]
    gy = Y[ys, 0]
    n = hash_unit(gx, gy, salt=seed + 31)
    col = np.full(gx.shape, _I("grass"), np.int16)
    col[n < 0.1] = _I("grass_dark")
    col[n > 0.93] = _I("grass_light")

    # Trees: one candidate per world cell, present where clustered noise is high; each pixel takes
    # the front-most (largest anchor y) canopy covering it, so canopies overlap like the reference.
    best_ay = np.full(gx.shape, np.iinfo(np.int64).min, np.int64)
    best_u = np.zeros(gx.shape)
    best_v = np.zeros(gx.shape)
    best_id = np.zeros(gx.shape, np.uint32)
    shadow = np.zeros(gx.shape, bool)
    cx0 = gx // _TREE_CX
    cy0 = gy // _TREE_CY
    for dj in (-1, 0, 1):
        for di in (-1, 0, 1):
            cx = cx0 + di
            cy = cy0 + dj
            hsh = hash_u32(cx, cy, salt=seed + 32)
            clump = value_noise(cx * _TREE_CX, cy * _TREE_CY, 46.0, salt=seed + 33)
            present = hash_unit(cx, cy, salt=seed + 34) < params.tree_density * np.clip(
                (clump - 0.28) * 2.2, 0.0, 1.0
            )
            ax = cx * _TREE_CX + (hsh % _TREE_CX).astype(np.int64)
            ay = cy * _TREE_CY + ((hsh >> np.uint32(8)) % _TREE_CY).astype(np.int64)
            r = 3.0 + ((hsh >> np.uint32(16)) % 4).astype(np.float64)  # 3..6 px
            u = (gx - ax) / r
            v = (gy - ay) / (r * 0.85)
            inside = present & (u * u + v * v <= 1.0)
            take = inside & (ay > best_ay)
            best_ay = np.where(take, ay, best_ay)
            best_u = np.where(take, u, best_u)
            best_v = np.where(take, v, best_v)
            best_id = np.where(take, hsh, best_id)
            # Canopy shadow: the canopy shifted down-right onto the grass.
            us = (gx - ax - 2) / r
            vs = (gy - ay - 2) / (r * 0.85)
            shadow |= present & (us * us + vs * vs <= 1.0)
    tree = best_ay != np.iinfo(np.int64).min
    col[shadow & ~tree] = _I("grass_shadow")
    if tree.any():
        u, v = best_u[tree], best_v[tree]
        rr = u * u + v * v
        leaf = hash_unit(gx[tree], gy[tree], salt=seed + 35)
        lit = u + v + (leaf - 0.5) * 0.5
        tc = np.full(u.shape, _I("tree_mid"), np.int16)
        tc[lit < -0.55] = _I("tree_light")
        tc[lit < -1.0] = _I("tree_hi")
        tc[lit > 0.35] = _I("tree_dark")
        tc[(rr > 0.72) & (u + v > -0.2)] = _I("tree_outline")
        col[tree] = tc
    out[ys, xs] = col


def _roads(
    out: np.ndarray, m: np.ndarray, X: np.ndarray, Y: np.ndarray, cam: Camera, params: StyleParams
) -> None:
    if not m.any():
        return
    seed = params.seed
    n = hash_unit(X, Y, salt=seed + 41)
    c = np.full(np.broadcast_shapes(X.shape, Y.shape), _I("asphalt"), np.int16)
    c = np.where(n < 0.07, _I("asphalt_dark"), c)
    c = np.where(n > 0.96, _I("asphalt_light"), c)
    out[m] = c[m]

    # Centre lines: the ridge of the road's distance-to-kerb field (in ground metres: screen rows and
    # columns are the camera's ground axes, so an anisotropic EDT is exact at h = 0), kept only where
    # it is the local maximum width (not in intersections) and dashed along the local tangent.
    samp = (cam.row_m, cam.mpp)
    d, (iy, ix) = ndimage.distance_transform_edt(m, sampling=samp, return_indices=True)
    hh, ww = m.shape
    gy = np.arange(hh)[:, None]
    gx = np.arange(ww)[None, :]
    ny = (iy - gy) * samp[0]  # vector to the nearest kerb, metres
    nx = (ix - gx) * samp[1]
    nlen = np.hypot(ny, nx) + 1e-9
    # One step away from the nearest kerb along the dominant axis; on the ridge d stops growing.
    step_y = np.where(np.abs(ny) >= np.abs(nx), -np.sign(ny), 0).astype(np.int64)
    step_x = np.where(np.abs(ny) < np.abs(nx), -np.sign(nx), 0).astype(np.int64)
    yy = np.clip(gy + step_y, 0, hh - 1)
    xx = np.clip(gx + step_x, 0, ww - 1)
    ridge = m & (d[yy, xx] <= d + 0.02)
    rad_m = 12.0
    size = (2 * math.ceil(rad_m / samp[0]) + 1, 2 * math.ceil(rad_m / samp[1]) + 1)
    dmax = ndimage.maximum_filter(d, size=size, mode="nearest")
    centre = ridge & (d > 2.6) & (d >= dmax - 0.45)
    ty, tx = nx / nlen, -ny / nlen  # tangent (metres frame)
    flip = (tx < 0) | ((tx == 0) & (ty < 0))
    ty = np.where(flip, -ty, ty)
    tx = np.where(flip, -tx, tx)
    along = (Y * samp[0]) * ty + (X * samp[1]) * tx
    dash = np.mod(along, 2 * params.lane_dash_m) < params.lane_dash_m
    out[centre & dash] = _I("lane_white")


def _edges_ground(
    out: np.ndarray,
    s: np.ndarray,
    ground: np.ndarray,
    road: np.ndarray,
    park: np.ndarray,
    water: np.ndarray,
) -> None:
    sh = _Shift(s.astype(np.int8), pad=2)
    road_c, water_c, park_c, gnd_c = int(Surface.ROAD), int(Surface.WATER), int(Surface.PARK), int(Surface.GROUND)
    nb4 = [sh(dy, dx) for dy, dx in _N4]
    road_nb = np.zeros_like(road)
    land_nb = np.zeros_like(road)
    water_nb = np.zeros_like(road)
    for q in nb4:
        road_nb |= q == road_c
        land_nb |= (q == gnd_c) | (q == park_c)
        water_nb |= q == water_c
    water_nb2 = water_nb.copy()
    for dy, dx in ((-2, 0), (2, 0), (0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1)):
        water_nb2 |= sh(dy, dx) == water_c
    out[ground & road_nb] = _I("curb")
    out[road & land_nb] = _I("asphalt_kerb")
    land = ground | road | park
    # A concrete bulkhead along the shore (the reference's sea wall), its water line darker.
    out[land & water_nb2] = _I("seawall")
    out[land & water_nb] = _I("seawall_dark")
    wedge = np.zeros_like(water)
    for q in nb4:
        wedge |= (q != water_c) & (q != 0)
    out[water & wedge] = _I("water_edge")


# --- buildings ---------------------------------------------------------------------------------------


def _buildings(
    out: np.ndarray,
    s: np.ndarray,
    b: np.ndarray,
    hgt: np.ndarray,
    X: np.ndarray,
    Y: np.ndarray,
    cam: Camera,
    params: StyleParams,
    roof: np.ndarray,
    wl: np.ndarray,
    wr: np.ndarray,
    wall: np.ndarray,
    bld: np.ndarray,
    sprite_box: tuple[int, int, int, int] | None,
) -> None:
    seed = params.seed
    hh, ww = s.shape
    sS = _Shift(s, pad=3)
    sB = _Shift(b, pad=3)
    sH = _Shift(hgt, pad=3, fill=np.nan)  # NaN outside: a gradient never reads a fake neighbour

    def same(dy: int, dx: int, cls: np.ndarray | None = None) -> np.ndarray:
        """Neighbour is the same building and (if given) one of the classes in ``cls``."""
        r = sB(dy, dx) == b
        if cls is not None:
            r &= np.isin(sS(dy, dx), cls)
        return r

    roof_c = np.array([S_ROOF])
    wall_c = np.array([S_WL, S_WR])

    # Per-building choices, all hashed from the (map-global) building id.
    bh = hash_unit(b, salt=seed + 11)
    mat = np.searchsorted(pal.MATERIAL_CDF, bh, side="right").clip(0, len(pal.MATERIALS) - 1)
    floor_m = params.floor_height_m * (0.92 + 0.22 * hash_unit(b, salt=seed + 13))
    fp = np.maximum(np.rint(floor_m * cam.k), 6).astype(np.int64)  # floor height in pixels
    spacing_m = params.window_spacing_m * (0.85 + 0.35 * hash_unit(b, salt=seed + 14))
    phase_x = (hash_u32(b, salt=seed + 15) % 64).astype(np.int64)

    # --- walls --------------------------------------------------------------------------------------
    # Wall direction from the height gradient along screen rows: on a planar wall h changes linearly
    # with x, and dh/dx fixes the wall's angle to the camera, hence metres along the wall per pixel.
    same_r = wall & (sS(0, 1) == s) & (sB(0, 1) == b)
    same_l = wall & (sS(0, -1) == s) & (sB(0, -1) == b)
    g_r = sH(0, 1) - hgt
    g_l = hgt - sH(0, -1)
    ok_r = same_r & np.isfinite(g_r)
    ok_l = same_l & np.isfinite(g_l)
    g = np.where(ok_r & ok_l, 0.5 * (np.nan_to_num(g_r) + np.nan_to_num(g_l)), 0.0)
    g = np.where(ok_r & ~ok_l, np.nan_to_num(g_r), g)
    g = np.where(ok_l & ~ok_r, np.nan_to_num(g_l), g)
    known = ok_r | ok_l
    rho = -g * cam.cos_dep / (cam.sin_dep * cam.mpp)
    rho = np.where(known, rho, 1.0)  # unknown: a wall at 45° to the view, the Manhattan grid's case
    m_per_px = cam.mpp * np.sqrt(1.0 + rho * rho)
    period = np.clip(np.rint(spacing_m / m_per_px), 3, 16).astype(np.int64)
    cx = (X + phase_x) % period
    win_w = np.maximum(1, np.rint(period * 0.5)).astype(np.int64)
    col_on = (cx >= 1) & (cx <= win_w)

    # Floors are bands of height: integer "height pixels" step exactly once per screen row on a wall.
    hp = np.floor(hgt * cam.k + 0.5).astype(np.int64)
    hp = np.where(wall, hp, 0)
    floor_i = hp // fp
    rp = hp % fp
    win_h = np.maximum(2, np.rint(fp * 0.45)).astype(np.int64)
    row_on = (rp >= 2) & (rp < 2 + win_h)

    # Piers at the wall's ends and under the cornice: no windows within 1 px of another surface.
    pier = ~(same(0, 1, wall_c) & same(0, -1, wall_c) & same(0, 2, wall_c) & same(0, -2, wall_c))
    below_roof1 = wall & same(-1, 0, roof_c)
    below_roof = below_roof1 | (wall & same(-2, 0, roof_c)) | (wall & same(-3, 0, roof_c))

    lit_t = pal.material_table("lit")
    shade_t = pal.material_table("shade")
    hi_t = pal.material_table("hi")
    win_t = pal.material_table("window")
    glass = pal.MAT_GLASS[mat]

    base = np.where(wl, lit_t[mat], shade_t[mat]).astype(np.int16)
    col_i = (X + phase_x) // period
    cell = hash_unit(b, col_i, floor_i, salt=seed + 16)
    win = np.where(wl, win_t[mat], _I("win_shade")).astype(np.int16)
    win = np.where(cell > 0.80, _I("win_blue"), win)
    win = np.where(wl & (cell > 0.93), _I("win_sky"), win)
    win = np.where(cell > 0.985, _I("win_warm"), win)

    punched = wall & ~glass
    is_win = punched & col_on & row_on & ~pier & ~below_roof & (floor_i >= 1)
    wc = np.where(is_win, win, base)
    sill = punched & pal.MAT_SILLS[mat] & col_on & (rp == 1) & ~pier & ~below_roof & (floor_i >= 1)
    wc = np.where(sill & wl, _I("sill"), wc)

    # Curtain walls: glass with a mullion grid (one column line per bay, one line per floor).
    gl = wall & glass
    mull = (cx == 0) | (rp == 0)
    gcol = np.where(wl, lit_t[mat], shade_t[mat]).astype(np.int16)
    gcol = np.where(cell > 0.82, np.where(wl, hi_t[mat], lit_t[mat]), gcol)
    gcol = np.where(mull, np.where(wl, _I("mullion"), _I("mullion_s")), gcol)
    wc = np.where(gl, gcol, wc)

    # Ground floor: shop windows and, for some buildings, an awning band.
    store = wall & (floor_i == 0) & ~pier
    period2 = 2 * period
    cx2 = (X + phase_x) % period2
    shop = store & (rp >= 1) & (rp < fp - 3) & (cx2 >= 1) & (cx2 < period2 - 1)
    wc = np.where(shop, _I("store_glass"), wc)
    has_awning = hash_unit(b, salt=seed + 17) < 0.45
    awn = store & has_awning & ((rp == fp - 3) | (rp == fp - 2))
    awn_c = pal.AWNINGS[(hash_u32(b, salt=seed + 18) % len(pal.AWNINGS)).astype(np.int64)]
    wc = np.where(awn, awn_c, wc)

    # Cornice under the roof edge and a highlight down the lit side of each corner.
    wc = np.where(below_roof1, hi_t[mat], wc)
    corner = wl & same(0, 1, np.array([S_WR]))
    wc = np.where(corner, hi_t[mat], wc)
    # Dark foot where a wall stands on something that is not this building.
    foot = wall & ~same(1, 0)
    wc = np.where(foot, _I("outline_soft"), wc)
    out[wall] = wc[wall]

    # --- roofs --------------------------------------------------------------------------------------
    kind = (hash_u32(b, salt=seed + 12) % len(pal.ROOF_BASE)).astype(np.int64)
    n = hash_unit(X, Y, salt=seed + 19)
    weather = value_noise(X, Y, 18.0, salt=seed + 20 + 0) + 0.25 * hash_unit(b, salt=seed + 25)
    rc = pal.ROOF_BASE[kind]
    rc = np.where((n < 0.07) | ((weather > 0.9) & (n < 0.45)), pal.ROOF_DARK[kind], rc)
    same_roof = [same(dy, dx, roof_c) for dy, dx in _N4]
    rim = roof & ~(same_roof[0] & same_roof[1] & same_roof[2] & same_roof[3])
    rim2 = roof & ~rim & ~(same(-2, 0, roof_c) & same(2, 0, roof_c) & same(0, -2, roof_c) & same(0, 2, roof_c))
    rim2 |= roof & ~rim & ~(same(-1, -1, roof_c) & same(-1, 1, roof_c) & same(1, -1, roof_c) & same(1, 1, roof_c))
    white_rim = glass | (pal.material_table("lit")[mat] == _I("white_l"))
    rc = np.where(rim2, pal.ROOF_DARK[kind], rc)
    rc = np.where(rim, np.where(white_rim, _I("rim_white"), _I("rim")), rc)
    out[roof] = rc[roof]

    interior = roof & ~rim & ~rim2
    _roof_sprites(out, b, interior, roof, X, Y, params, sprite_box, int(X[0, 0]), int(Y[0, 0]))


def _roof_sprites(
    out: np.ndarray,
    b: np.ndarray,
    interior: np.ndarray,
    roof: np.ndarray,
    X: np.ndarray,
    Y: np.ndarray,
    params: StyleParams,
    sprite_box: tuple[int, int, int, int] | None,
    x0: int,
    y0: int,
) -> None:
    if not interior.any():
        return
    seed = params.seed
    hh, ww = b.shape
    bx0, by0, bx1, by1 = sprite_box if sprite_box is not None else (0, 0, ww, hh)
    c = _SPRITE_CELL
    cxs = np.arange((x0 // c) - 1, (x0 + ww) // c + 2, dtype=np.int64)
    cys = np.arange((y0 // c) - 1, (y0 + hh) // c + 2, dtype=np.int64)
    CX, CY = (a.ravel() for a in np.meshgrid(cxs, cys))
    pick = hash_unit(CX, CY, salt=seed + 51)
    kind = np.searchsorted(np.cumsum(_SPRITE_P), hash_unit(CX, CY, salt=seed + 52), side="right")
    kind = kind.clip(0, len(pal.SPRITES) - 1)
    for k, spr in enumerate(pal.SPRITES):
        sel = kind == k
        if not sel.any():
            continue
        cx, cy, pk = CX[sel], CY[sel], pick[sel]
        hj = hash_u32(cx, cy, salt=seed + 53)
        # Anchor = bottom-centre of the sprite, placed so the sprite stays inside its cell.
        ax = cx * c + spr.width // 2 + (hj % (c - spr.width + 1)).astype(np.int64) - x0
        ay = cy * c + spr.height - 1 + ((hj >> np.uint32(10)) % (c - spr.height + 1)).astype(np.int64) - y0
        left = ax - spr.width // 2
        right = left + spr.width - 1
        top = ay - spr.height + 1
        inbox = (left >= bx0) & (right < bx1) & (top >= by0) & (ay < by1)
        ax, ay, left, right, top, pk = ax[inbox], ay[inbox], left[inbox], right[inbox], top[inbox], pk[inbox]
        if ax.size == 0:
            continue
        bid = b[ay, ax]
        ok = interior[ay, ax] & (bid != 0)
        for yy, xx in ((ay, left), (ay, right), (top, left), (top, right), (top, ax), ((ay + top) // 2, ax)):
            ok &= interior[yy, xx] & (b[yy, xx] == bid)
        dens = params.roof_detail_density * (0.2 + 1.6 * hash_unit(bid, salt=seed + 54))
        ok &= pk < dens
        if not ok.any():
            continue
        ax, ay, bid = ax[ok], ay[ok], bid[ok]
        ty = ay[:, None] + spr.dy[None, :]
        tx = ax[:, None] + spr.dx[None, :]
        col = np.broadcast_to(spr.colour[None, :], ty.shape)
        # Only over this building's roof: anything in front of it hides the object.
        vis = roof[ty, tx] & (b[ty, tx] == bid[:, None])
        out[ty[vis], tx[vis]] = col[vis]


def _depth_outlines(out: np.ndarray, hgt: np.ndarray, bld: np.ndarray, params: StyleParams) -> None:
    """Dark outline on the far side of every occlusion edge.

    Between two neighbouring pixels the nearer surface is the higher one (depth along an orthographic
    ray is u·cot(dep) − h/sin(dep), and u is nearly equal for neighbours), so a pixel whose neighbour
    stands more than ``depth_edge_m`` higher is hidden behind it: that is where the line goes, which
    keeps the occluder's silhouette (and its light roof rim) intact.
    """
    sH = _Shift(hgt, pad=1)
    far = np.zeros(hgt.shape, bool)
    for dy, dx in _N4:
        far |= sH(dy, dx) > hgt + params.depth_edge_m
    out[far] = _I("outline")
