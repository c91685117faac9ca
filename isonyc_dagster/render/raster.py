"""Numba scanline kernels of the whitebox renderer.

Why our own rasterizer instead of PIL ImageDraw or a GL context: every decision here is a function of
*world* pixel coordinates only (pixel centres at +0.5, crossings computed from the world-space vertices
in a canonical edge order), so any window of the map rasterizes exactly like the same pixels of any
other window — quadrants stitch bit-identically. PIL draws in window coordinates with its own rounding
rules and has no depth buffer; a GPU is not available offline. Numba keeps this at numpy-free C speed.

Depth: in this orthographic camera every point on one pixel's view ray has depth
``u·cot(dep) − h/sin(dep)`` with u fixed by the pixel row, so the surface nearest the camera is the one
with the greatest height h at that pixel. The height buffer therefore *is* the z-buffer (max wins).

Polygon layout (all arrays C-contiguous):
- ``xs, ys``: float64 world-pixel coordinates of ring vertices, rings closed (last == first);
- ``ring_start``: int64, ring r owns vertices ``ring_start[r]:ring_start[r+1]``;
- ``poly_ring_start``: int64, polygon p owns rings ``poly_ring_start[p]:poly_ring_start[p+1]``,
  the first of them is its exterior.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from isonyc_dagster.geo.surfaces import Surface

# Plain ints: numba freezes module globals into the compiled kernels as constants.
ROOF = int(Surface.ROOF)
WALL_LEFT = int(Surface.WALL_LEFT)
WALL_RIGHT = int(Surface.WALL_RIGHT)


@njit(cache=True, nogil=True)
def _collect_edges(xs, ys, ring_start, r0, r1, dy, y_lo, y_hi, x_hi, ex0, ey0, ex1, ey1):
    """Edges of rings r0..r1 (vertices shifted up by dy) that can cross a row centre in [y_lo, y_hi].

    Edges are stored bottom-up (ey0 < ey1) so both polygons sharing an edge compute the very same
    crossing. Edges wholly right of the last pixel centre are dropped: only crossings left of a pixel
    decide its even-odd parity (an odd count per row then means "open to the right").
    """
    n = 0
    for r in range(r0, r1):
        for i in range(ring_start[r], ring_start[r + 1] - 1):
            xa = xs[i]
            ya = ys[i] - dy
            xb = xs[i + 1]
            yb = ys[i + 1] - dy
            if ya == yb:
                continue
            if ya > yb:
                xa, ya, xb, yb = xb, yb, xa, ya
            if yb <= y_lo or ya > y_hi:
                continue
            if xa > x_hi and xb > x_hi:
                continue
            ex0[n] = xa
            ey0[n] = ya
            ex1[n] = xb
            ey1[n] = yb
            n += 1
    return n


@njit(cache=True, nogil=True)
def _row_crossings(yc, n_edges, ex0, ey0, ex1, ey1, cross):
    """Sorted x of the edge crossings of the row whose centre is yc (half-open rule ya <= yc < yb)."""
    m = 0
    for j in range(n_edges):
        ya = ey0[j]
        yb = ey1[j]
        if ya <= yc and yc < yb:
            x = ex0[j] + (yc - ya) * (ex1[j] - ex0[j]) / (yb - ya)
            # insertion sort: rows cross a handful of edges
            k = m
            while k > 0 and cross[k - 1] > x:
                cross[k] = cross[k - 1]
                k -= 1
            cross[k] = x
            m += 1
    return m


@njit(cache=True, nogil=True)
def _span(cross, m, k, x0, w):
    """Window columns [c0, c1) covered by span k (pixel centres in [cross[k], cross[k+1]))."""
    xl = cross[k]
    xr = cross[k + 1] if k + 1 < m else np.inf
    # Clamp before the int conversion; values clamped lie outside the window either way.
    xl = max(xl, x0 - 2.0)
    xr = min(xr, x0 + w + 2.0)
    c0 = int(math.ceil(xl - 0.5)) - x0
    c1 = int(math.ceil(xr - 0.5)) - x0
    return max(c0, 0), min(c1, w)


@njit(cache=True, nogil=True)
def _row_range(ey0, ey1, n, y0, h):
    lo = np.inf
    hi = -np.inf
    for j in range(n):
        lo = min(lo, ey0[j])
        hi = max(hi, ey1[j])
    r0 = max(int(math.ceil(max(lo, y0 - 2.0) - 0.5)) - y0, 0)
    r1 = min(int(math.ceil(min(hi, y0 + h + 2.0) - 0.5)) - y0, h)
    return r0, r1


@njit(cache=True, nogil=True)
def _scratch(ring_start, poly_ring_start):
    """Edge (x0, y0, x1, y1) and crossing buffers large enough for the polygon with the most vertices."""
    nmax = 1
    for p in range(poly_ring_start.shape[0] - 1):
        nmax = max(nmax, ring_start[poly_ring_start[p + 1]] - ring_start[poly_ring_start[p]])
    return np.empty(nmax), np.empty(nmax), np.empty(nmax), np.empty(nmax), np.empty(nmax + 1)


@njit(cache=True, nogil=True)
def _fill_polygon(xs, ys, ring_start, ra, rb, dy, x0, y0, scratch, surface, value, zbuf, bid, z, pid, depth):
    """Fill the polygon of rings ra..rb (even-odd, vertices lifted by dy px) with ``value``.

    Without ``depth`` every covered pixel is painted; with it only those where ``z`` beats ``zbuf``, which
    then also take ``z`` and building id ``pid``. One scan for ground layers and roofs, so both cover a
    pixel by the very same rule.
    """
    h, w = surface.shape
    ex0, ey0, ex1, ey1, cross = scratch
    n = _collect_edges(
        xs, ys, ring_start, ra, rb, dy, y0 + 0.5, y0 + h - 0.5, x0 + w - 0.5, ex0, ey0, ex1, ey1
    )
    if n == 0:
        return
    r0, r1 = _row_range(ey0, ey1, n, y0, h)
    for row in range(r0, r1):
        m = _row_crossings(y0 + row + 0.5, n, ex0, ey0, ex1, ey1, cross)
        for k in range(0, m, 2):
            c0, c1 = _span(cross, m, k, x0, w)
            for col in range(c0, c1):
                if not depth:
                    surface[row, col] = value
                elif z > zbuf[row, col]:
                    zbuf[row, col] = z
                    surface[row, col] = value
                    bid[row, col] = pid


@njit(cache=True, nogil=True)
def fill_polygons(xs, ys, ring_start, poly_ring_start, values, surface, x0, y0):
    """Paint polygons (even-odd per polygon, in order) into ``surface`` with ``values[p]``; no depth."""
    scratch = _scratch(ring_start, poly_ring_start)
    no_zbuf = np.empty((0, 0))
    no_bid = np.empty((0, 0), dtype=np.int32)
    for p in range(poly_ring_start.shape[0] - 1):
        _fill_polygon(
            xs,
            ys,
            ring_start,
            poly_ring_start[p],
            poly_ring_start[p + 1],
            0.0,
            x0,
            y0,
            scratch,
            surface,
            values[p],
            no_zbuf,
            no_bid,
            0.0,
            0,
            False,
        )


@njit(cache=True, nogil=True)
def _draw_wall(xa, ya, xb, yb, top, base, pid, k, surface, zbuf, bid, x0, y0):
    """Extrude one camera-facing ring edge (a, b with xb > xa, solid on its left) from base to top."""
    h, w = surface.shape
    cls = WALL_RIGHT if yb < ya else WALL_LEFT
    slope = (yb - ya) / (xb - xa)
    c0 = max(int(math.ceil(max(xa, x0 - 2.0) - 0.5)) - x0, 0)
    c1 = min(int(math.ceil(min(xb, x0 + w + 2.0) - 0.5)) - x0, w)
    for col in range(c0, c1):
        yg = ya + (x0 + col + 0.5 - xa) * slope  # wall foot (h = 0) at this column
        y_top = yg - top * k
        y_bot = yg - base * k
        if y_bot < y0 or y_top > y0 + h:
            continue
        rr0 = max(int(math.floor(y_top - 0.5)) - y0, 0)
        rr1 = min(int(math.ceil(y_bot - 0.5)) + 1 - y0, h)
        for row in range(rr0, rr1):
            hh = (yg - (y0 + row + 0.5)) / k
            if hh >= base and hh < top and hh > zbuf[row, col]:
                zbuf[row, col] = hh
                surface[row, col] = cls
                bid[row, col] = pid


@njit(cache=True, nogil=True)
def _draw_walls(xs, ys, ring_start, ra, rb, top, base, pid, k, surface, zbuf, bid, x0, y0):
    """The walls of rings ra..rb (ra the exterior) whose outward normal faces the camera."""
    for r in range(ra, rb):
        s = ring_start[r]
        e = ring_start[r + 1]
        # Signed area in pixel space; the ground→pixel map flips orientation (y down), so a
        # ring that is counter-clockwise on the ground has negative pixel area.
        area = 0.0
        for i in range(s, e - 1):
            area += xs[i] * ys[i + 1] - xs[i + 1] * ys[i]
        exterior = r == ra
        # Walk every ring with the solid on its left (on the ground): exterior CCW, holes CW.
        flip = (area < 0.0) != exterior
        for i in range(s, e - 1):
            if flip:
                xa, ya, xb, yb = xs[i + 1], ys[i + 1], xs[i], ys[i]
            else:
                xa, ya, xb, yb = xs[i], ys[i], xs[i + 1], ys[i + 1]
            # Solid on the left ⇒ the outward normal faces the camera iff the edge runs screen-right.
            if xb > xa:
                _draw_wall(xa, ya, xb, yb, top, base, pid, k, surface, zbuf, bid, x0, y0)


@njit(cache=True, nogil=True)
def draw_buildings(
    xs,
    ys,
    ring_start,
    part_ring_start,
    part_top,
    part_base,
    part_id,
    k,
    surface,
    zbuf,
    bid,
    x0,
    y0,
):
    """Extrude building parts (ground-level polygons) from base to top with a max-height z-buffer.

    Roofs are the part polygon lifted by ``top·k`` px; walls are the ring edges whose outward normal
    faces the camera. Ties keep the first writer, so drawing parts in global building order makes
    the result independent of which window asked.
    """
    scratch = _scratch(ring_start, part_ring_start)
    for p in range(part_ring_start.shape[0] - 1):
        top = part_top[p]
        base = part_base[p]
        if not top > base:
            continue
        ra = part_ring_start[p]
        rb = part_ring_start[p + 1]
        pid = part_id[p]
        _fill_polygon(
            xs, ys, ring_start, ra, rb, top * k, x0, y0, scratch, surface, ROOF, zbuf, bid, top, pid, True
        )
        _draw_walls(xs, ys, ring_start, ra, rb, top, base, pid, k, surface, zbuf, bid, x0, y0)


@njit(cache=True, nogil=True)
def finish(surface, zbuf, bid, palette, ids_sorted, n_classes):
    """One pass over the window: RGB from the palette, float32 heights, pixels per class, and how many
    of the candidate buildings (sorted 1-based ids) are visible at all."""
    h, w = surface.shape
    rgb = np.empty((h, w, 3), dtype=np.uint8)
    height = np.empty((h, w), dtype=np.float32)
    counts = np.zeros(n_classes, dtype=np.int64)
    seen = np.zeros(ids_sorted.shape[0], dtype=np.uint8)
    last = 0
    for r in range(h):
        for c in range(w):
            s = surface[r, c]
            rgb[r, c, 0] = palette[s, 0]
            rgb[r, c, 1] = palette[s, 1]
            rgb[r, c, 2] = palette[s, 2]
            height[r, c] = zbuf[r, c]
            counts[s] += 1
            b = bid[r, c]
            if b != 0 and b != last:  # runs of one building are the norm
                last = b
                seen[np.searchsorted(ids_sorted, b)] = 1
    return rgb, height, counts, int(seen.sum())
