"""World-aligned integer hashing and noise for the pixel-art backend.

Every random-looking decision of the backend goes through these functions with *world* coordinates
(and building ids) as input, so the same world pixel gets the same colour whichever template window
renders it. They are pure numpy (uint32 arithmetic wraps by design) and vectorized.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_K = (np.uint32(0x8DA6B343), np.uint32(0xD8163841), np.uint32(0xCB1AB31F))
_S16 = np.uint32(16)
_S15 = np.uint32(15)


def hash_u32(*keys: np.ndarray | int, salt: int = 0) -> np.ndarray:
    """A well-mixed uint32 hash of integer arrays (broadcast together) and a salt.

    Chris Wellons' "lowbias32" finalizer over a multiplicative combination of the keys: cheap and
    without visible lattice patterns, which matters for textures seen at 1:1. Negative keys wrap to
    large uint32s, which is still a bijection, all a hash needs.
    """
    h: np.ndarray = np.asarray(np.uint32((salt * 0x9E3779B1) & 0xFFFFFFFF))
    for i, k in enumerate(keys):
        h = h ^ (np.asarray(k).astype(np.uint32) * _K[i % 3])
        h ^= h >> _S16
        h *= _M1
    h ^= h >> _S15
    h *= _M2
    h ^= h >> _S16
    return h


def hash_unit(*keys: np.ndarray | int, salt: int = 0) -> np.ndarray:
    """Hash mapped to float32 in [0, 1) (24 bits: exact in float32)."""
    return (hash_u32(*keys, salt=salt) >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def value_noise(x: np.ndarray, y: np.ndarray, cell: float, salt: int = 0) -> np.ndarray:
    """Smooth lattice value noise in [0, 1) at world pixels (x, y) (1-D arrays or broadcastable).

    The lattice is hashed once over the points' bounding range and gathered, not hashed per pixel.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    fx = x.astype(np.float32) / np.float32(cell)
    fy = y.astype(np.float32) / np.float32(cell)
    ix = np.floor(fx).astype(np.int64)
    iy = np.floor(fy).astype(np.int64)
    tx = fx - ix
    ty = fy - iy
    tx = tx * tx * (3.0 - 2.0 * tx)
    ty = ty * ty * (3.0 - 2.0 * ty)
    if ix.size == 0 or iy.size == 0:
        return np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    x0, x1 = int(ix.min()), int(ix.max()) + 1
    y0, y1 = int(iy.min()), int(iy.max()) + 1
    lat = hash_unit(
        np.arange(x0, x1 + 1, dtype=np.int64)[None, :],
        np.arange(y0, y1 + 1, dtype=np.int64)[:, None],
        salt=salt,
    )
    jx = ix - x0
    jy = iy - y0
    v00 = lat[jy, jx]
    v10 = lat[jy, jx + 1]
    v01 = lat[jy + 1, jx]
    v11 = lat[jy + 1, jx + 1]
    top = v00 + (v10 - v00) * tx
    bot = v01 + (v11 - v01) * tx
    return top + (bot - top) * ty


#: 4×4 Bayer matrix / 16: ordered-dither thresholds, indexed by world pixel (x & 3, y & 3).
BAYER4 = (
    np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]], dtype=np.float32) + 0.5
) / 16.0


def bayer(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ordered-dither threshold in (0, 1) at world pixel (x, y)."""
    return BAYER4[np.asarray(y) & 3, np.asarray(x) & 3]
