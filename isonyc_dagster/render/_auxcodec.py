"""Lossless compact encoding of a render's aux buffers (surface, building, height) for the store.

Why not the npz of old: its float32 height buffer is ~150k distinct values per quadrant (every wall pixel has
its own height) and deflate cannot see the structure, so it took ~90 % of a ~600 kB blob. Here each height is
predicted from pixels already decoded (same surface class and building above or to the left: a roof repeats, a
wall falls by exactly one pixel's worth of metres per row) and only the difference of the float32 *bit
patterns* is kept, in wrapping uint32 arithmetic: the decoder repeats the same prediction and adds the
difference back, so every bit pattern (NaN, −0.0, anything) comes back exactly. The residuals are almost all 0
or ±1 ulp; zig-zagged and split into byte planes they deflate to a few kB. Building ids become indices into a
sorted id table; the RGB buffer is dropped when it is exactly ``PALETTE[surface]`` (the renderer's contract)
and stored otherwise, so the round trip is exact either way.

Layout: ``MAGIC``, uint32-LE length of a JSON header, the header, then one zlib stream of the sections the
header lists (name, dtype, shape), concatenated in that order.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np
from numba import njit

from isonyc_dagster.geo.surfaces import PALETTE, Surface

MAGIC = b"ISOAUX\x02\n"
FORMAT = 2
_ZLIB_LEVEL = 6  # level 9 saves ~5 % more for ~5× the time
_WALLS = np.array([int(Surface.WALL_LEFT), int(Surface.WALL_RIGHT)], dtype=np.uint8)


@njit(cache=True, nogil=True)
def _walk(hb, codes, surface, building, drop, wall_a, wall_b, decode):  # pragma: no cover - numba
    """Both directions of the height coding in one pass, so encoder and decoder predict alike: encoding reads the
    bit patterns ``hb`` and writes ``codes``; decoding reads ``codes`` and writes ``hb``.

    A pixel is predicted from decoded neighbours of the same class and building: a wall continues its column's
    line (height = A - row/k, raster.py ``_draw_wall``, with A pinned down by every row of the wall so far), a
    roof repeats the pixel above, else the one to the left. One fused loop of scalars: with the prediction and
    the anchor update as separate jitted helpers taking arrays it was 12× slower (24 ms a quadrant)."""
    h, w = hb.shape
    hf = hb.view(np.float32)
    anchor_lo = np.zeros(w, dtype=np.float64)
    anchor_hi = np.zeros(w, dtype=np.float64)
    tmp_f = np.empty(1, dtype=np.float32)
    tmp_u = tmp_f.view(np.uint32)
    for r in range(h):
        row_drop = r * drop
        for c in range(w):
            s = surface[r, c]
            b = building[r, c]
            wall = s == wall_a or s == wall_b  # noqa: SIM109 - numba compiles this to two compares
            up = r > 0 and surface[r - 1, c] == s and building[r - 1, c] == b
            if up and wall:
                tmp_f[0] = 0.5 * (anchor_lo[c] + anchor_hi[c]) - row_drop
                p = np.int64(tmp_u[0])
            elif up:
                p = np.int64(hb[r - 1, c])
            elif c > 0 and surface[r, c - 1] == s and building[r, c - 1] == b:
                p = np.int64(hb[r, c - 1])
            else:
                p = np.int64(0)
            if decode:
                z = np.int64(codes[r, c])
                d = (z >> 1) if (z & 1) == 0 else -((z + 1) >> 1)
                hb[r, c] = (d + p) & 0xFFFFFFFF
            else:
                d = (np.int64(hb[r, c]) - p) & 0xFFFFFFFF  # wrapping uint32 difference ...
                if d >= 0x80000000:
                    d -= 0x100000000  # ... read as signed
                codes[r, c] = (d << 1) if d >= 0 else ((-d) << 1) - 1  # zig-zag: small |d| → small code
            if wall:  # narrow the column's anchor interval with this height (restart it on a new wall)
                v = np.float64(hf[r, c])
                # ≥ half a float32 ulp: the float64 height rounded to v lies within
                half = abs(v) * 2.0**-24 + 1e-45
                lo = v - half + row_drop
                hi = v + half + row_drop
                if up and lo <= anchor_hi[c] and hi >= anchor_lo[c]:
                    anchor_lo[c] = max(lo, anchor_lo[c])
                    anchor_hi[c] = min(hi, anchor_hi[c])
                else:  # a new wall, or one that does not follow the line (any choice decodes exactly)
                    anchor_lo[c] = lo
                    anchor_hi[c] = hi


def _encode(hb: np.ndarray, surface: np.ndarray, building: np.ndarray, drop: float) -> np.ndarray:
    codes = np.empty(hb.shape, dtype=np.uint32)
    _walk(hb, codes, surface, building, drop, _WALLS[0], _WALLS[1], False)
    return codes


def _decode(codes: np.ndarray, surface: np.ndarray, building: np.ndarray, drop: float) -> np.ndarray:
    hb = np.empty(codes.shape, dtype=np.uint32)
    _walk(hb, codes, surface, building, drop, _WALLS[0], _WALLS[1], True)
    return hb


def _wall_drop(height: np.ndarray, surface: np.ndarray, building: np.ndarray) -> float:
    """Metres a wall falls per pixel row (1/k), read off the buffers; any value decodes exactly, a good one
    just makes the residuals zero."""
    same = (surface[1:] == surface[:-1]) & (building[1:] == building[:-1]) & np.isin(surface[1:], _WALLS)
    steps = (height[:-1].astype(np.float64) - height[1:])[same]
    steps = steps[np.isfinite(steps)]
    if not steps.size:
        return 0.0
    # The mean of the steps of one wall telescopes to (top - bottom) / rows: far finer than any one float32
    # step. Steps off the median (two walls of one building meeting in a column) are left out.
    med = np.median(steps)
    return float(steps[np.abs(steps - med) < 1e-3 * max(abs(med), 1e-6)].mean())


def _planes(codes: np.ndarray) -> np.ndarray:
    """uint32 codes → 4 byte planes (low byte first): the mostly-zero high planes deflate to almost nothing."""
    return np.ascontiguousarray(codes.view(np.uint8).reshape(*codes.shape, 4).transpose(2, 0, 1))


def encode(
    rgb: np.ndarray,
    surface: np.ndarray,
    building: np.ndarray,
    height: np.ndarray,
    origin_px: tuple[int, int],
    stats: dict[str, Any],
) -> bytes:
    """The buffers (shapes and dtypes already validated) as one deterministic blob."""
    surface = np.ascontiguousarray(surface)
    # Ids come in runs along rows: the distinct ones are among the run starts (a sort of those, not of all).
    flat = building.ravel()
    starts = np.flatnonzero(np.diff(flat, prepend=flat[:1] - 1))
    ids = np.unique(flat[starts])
    index = np.searchsorted(ids, building).astype(np.uint16 if ids.size <= 1 << 16 else np.uint32)
    drop = _wall_drop(height, surface, building)
    hf = np.ascontiguousarray(height, dtype=np.float32)
    codes = _encode(hf.view(np.uint32), surface, np.ascontiguousarray(building), drop)
    sections: dict[str, np.ndarray] = {
        "surface": surface,
        "building_ids": ids.astype("<i4"),
        "building_index": index.astype(index.dtype.newbyteorder("<")),
        "height_codes": _planes(codes.astype("<u4")),
    }
    if not np.array_equal(rgb, PALETTE[surface]):
        sections["rgb"] = np.ascontiguousarray(rgb)
    header = {
        "format": FORMAT,
        "origin_px": [int(origin_px[0]), int(origin_px[1])],
        "stats": stats,
        "wall_drop_m": drop,
        "sections": [[k, v.dtype.str, list(v.shape)] for k, v in sections.items()],
    }
    head = json.dumps(header, sort_keys=True).encode()
    payload = zlib.compress(b"".join(v.tobytes() for v in sections.values()), _ZLIB_LEVEL)
    return MAGIC + struct.pack("<I", len(head)) + head + payload


def _sections(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the named arrays of a blob; ValueError naming what is malformed."""
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(bytes(data[start : start + n]).decode())
    if header.get("format") != FORMAT:
        raise ValueError(
            f"render aux blob format {header.get('format')!r} is not supported (expected {FORMAT})"
        )
    raw = zlib.decompress(bytes(data[start + n :]))
    sections: dict[str, np.ndarray] = {}
    pos = 0
    for name, dtype, shape in header["sections"]:
        dt, count = np.dtype(dtype), int(np.prod(shape))
        if dt.hasobject or pos + dt.itemsize * count > len(raw):
            raise ValueError(f"section {name!r} is truncated or of a bad type {dtype!r}")
        sections[name] = np.frombuffer(raw, dtype=dt, count=count, offset=pos).reshape(shape)
        pos += dt.itemsize * count
    missing = {"surface", "building_ids", "building_index", "height_codes"} - set(sections)
    if missing or pos != len(raw):
        raise ValueError(f"sections {sorted(missing)} missing or {len(raw) - pos} trailing bytes")
    return header, sections


def decode(data: bytes) -> dict[str, Any]:
    """Inverse of ``encode``: rgb, surface, building, height, origin_px, stats. ValueError when malformed."""
    try:
        header, sec = _sections(data)
        surface = sec["surface"].astype(np.uint8)
        building = sec["building_ids"].astype(np.int32)[sec["building_index"]]
        codes = np.ascontiguousarray(sec["height_codes"].transpose(1, 2, 0)).view("<u4")[..., 0]
        if not surface.shape == building.shape == codes.shape:
            raise ValueError(f"buffer shapes {surface.shape}, {building.shape}, {codes.shape} differ")
        hb = _decode(codes.astype(np.uint32), surface, building, float(header["wall_drop_m"]))
        rgb = sec["rgb"].copy() if "rgb" in sec else PALETTE[surface]
        origin = (int(header["origin_px"][0]), int(header["origin_px"][1]))
        stats = dict(header["stats"])
    except (struct.error, UnicodeDecodeError, zlib.error, KeyError, TypeError, IndexError, ValueError) as e:
        raise ValueError(f"render aux blob is corrupt ({e}); re-render the quadrant") from e
    return {
        "rgb": rgb,
        "surface": surface,
        "building": building,
        "height": hb.view(np.float32),
        "origin_px": origin,
        "stats": stats,
    }
