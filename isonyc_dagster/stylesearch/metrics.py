"""Image similarity for the style search: SSIM (pixel structure) and a style distance (colour + texture).

SSIM is the standard Gaussian-window form (Wang et al. 2004; σ = 1.5, K1 = 0.01, K2 = 0.03), averaged over the R, G and
B channels (on luma alone a hue shift would score 1), in numpy/scipy.
The "perceptual" distance cannot be LPIPS here (no pretrained network may be downloaded); it is a deterministic
style distance of the statistics a pixel-art look is made of: the colour histogram (the palette and its shares)
and the texture (histograms of gradient magnitude and orientation at two scales), each a Hellinger distance in
[0, 1]. It ignores *where* things are, so it compares a render with a reference of other buildings fairly.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["luma", "ssim", "style_distance", "style_stats"]

_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def luma(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb, np.float64)
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114 if a.ndim == 3 else a


def _ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    def g(z: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(z, 1.5, truncate=3.5)

    mx, my = g(x), g(y)
    sxx = g(x * x) - mx * mx
    syy = g(y * y) - my * my
    sxy = g(x * y) - mx * my
    s = ((2 * mx * my + _C1) * (2 * sxy + _C2)) / ((mx * mx + my * my + _C1) * (sxx + syy + _C2))
    return float(s.mean())


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two same-size images (0..255): the mean over R, G and B (so colour shifts count), or grey."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: images differ in shape {a.shape} vs {b.shape}")
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.ndim == 2:
        return _ssim_channel(x, y)
    return float(np.mean([_ssim_channel(x[..., c], y[..., c]) for c in range(min(3, x.shape[2]))]))


def _soft(v: np.ndarray, n: int, circular: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Linear (soft) assignment of values in bin units [0, n) to the two nearest bin centres: (indices, weights).

    Hard bins make the statistics jump when a colour crosses a bin edge; soft ones change continuously with the
    image, which the optimisers need.
    """
    f = v - 0.5
    i0 = np.floor(f).astype(np.int64)
    w1 = f - i0
    i1 = i0 + 1
    if circular:
        i0, i1 = i0 % n, i1 % n
    else:
        w1 = np.where(i0 < 0, 1.0, np.where(i1 > n - 1, 0.0, w1))
        i0, i1 = np.clip(i0, 0, n - 1), np.clip(i1, 0, n - 1)
    return [i0, i1], [1.0 - w1, w1]


def _hist(idx: list[list[np.ndarray]], wts: list[list[np.ndarray]], sizes: tuple[int, ...]) -> np.ndarray:
    total = np.zeros(int(np.prod(sizes)))
    strides = np.cumprod((1, *sizes[:0:-1]))[::-1]
    combos = np.stack(np.meshgrid(*[range(2)] * len(sizes), indexing="ij"), -1).reshape(-1, len(sizes))
    for c in combos:
        flat = sum(idx[d][c[d]] * int(strides[d]) for d in range(len(sizes)))
        w = np.prod([wts[d][c[d]] for d in range(len(sizes))], axis=0)
        total += np.bincount(np.ravel(flat), weights=np.ravel(w), minlength=total.size)
    return total / max(total.sum(), 1e-12)


def style_stats(rgb: np.ndarray) -> np.ndarray:
    """Concatenated, each-normalised soft histograms: colour (6³ bins), texture (gradient magnitude × orientation)."""
    a = np.asarray(rgb, np.float64)[..., :3]
    ch = [_soft(a[..., c] / 256.0 * 6, 6) for c in range(3)]
    parts = [_hist([c[0] for c in ch], [c[1] for c in ch], (6, 6, 6))]
    y = luma(a)
    for scale in (1, 2):
        z = y if scale == 1 else ndimage.uniform_filter(y, 2)[::2, ::2]
        gx = ndimage.sobel(z, axis=1)
        gy = ndimage.sobel(z, axis=0)
        # Log magnitude in 6 bins; steps under ~4 grey levels (Sobel 16) count as flat: invisible grain must not
        # outweigh the drawn structure.
        mag = np.log2(1.0 + np.maximum(np.hypot(gx, gy) - 16.0, 0.0)) / 10.0 * 6
        mi, mw = _soft(np.clip(mag, 0, 5.999), 6)
        oi, ow = _soft((np.arctan2(gy, gx) % np.pi) / np.pi * 6, 6, circular=True)
        parts.append(_hist([mi, oi], [mw, ow], (6, 6)))
    return np.concatenate(parts)


def _hellinger(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(p * q)))))


def _need(img: np.ndarray | None) -> np.ndarray:
    if img is None:
        raise ValueError("style_distance: give each image or its style_stats")
    return img


def style_distance(
    a: np.ndarray | None, b: np.ndarray | None, *, sa: np.ndarray | None = None, sb: np.ndarray | None = None
) -> float:
    """Style distance in [0, 1] (0 = same colour and texture statistics): 0.5 colour + 0.5 texture."""
    pa = sa if sa is not None else style_stats(_need(a))
    pb = sb if sb is not None else style_stats(_need(b))
    colour = _hellinger(pa[:216], pb[:216])
    texture = 0.5 * (_hellinger(pa[216:252], pb[216:252]) + _hellinger(pa[252:], pb[252:]))
    return 0.5 * colour + 0.5 * texture
