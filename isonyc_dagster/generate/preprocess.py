"""Model-input preprocessing: the render pixels of a template's infill, degraded the way a model was trained.

The original's fine-tunes saw renders that were desaturated, noised and gamma-crushed (anchor §4.6, order
desaturation → noise → gamma); matching that at inference matters. Only the infill's render pixels change: the
context (generated pixels) and the red border are sent untouched. Noise is a pure function of the *world* pixel
and a seed, so the same ground pixel gets the same noise in every template that shows it (overlapping windows
agree, reruns reproduce). A palette hint pulls render colours toward given colours.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from isonyc_dagster.generate.template import PNG_COMPRESS_LEVEL, Template, draw_red_border
from isonyc_dagster.geo.model_inputs import PreprocessConfig
from isonyc_dagster.images import png_bytes

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as the original
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-mixed uint64 of a uint64 (array arithmetic wraps, no warnings)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def world_normal(x0: int, y0: int, w: int, h: int, seed: int) -> np.ndarray:
    """(h, w, 3) standard normals for world pixels x0..x0+w-1 × y0..y0+h-1: a function of (pixel, channel, seed)."""
    xs = (np.arange(x0, x0 + w, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint64)
    ys = (np.arange(y0, y0 + h, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint64)
    key = (ys[:, None] << np.uint64(32)) | xs[None, :]
    base = _mix(key ^ _mix(np.full(1, seed, np.uint64)))
    out = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a = _mix(base + np.uint64(2 * c + 1))
        b = _mix(base + np.uint64(2 * c + 2))
        # 53-bit uniforms in (0, 1]; Box-Muller
        u1 = ((a >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53
        u2 = (b >> np.uint64(11)).astype(np.float64) / 2.0**53
        out[..., c] = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return out


def _palette(spec: PreprocessConfig) -> np.ndarray:
    return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in spec.palette], np.float32)


def _pull_to_palette(f: np.ndarray, pal: np.ndarray, strength: float, chunk: int = 1 << 16) -> np.ndarray:
    """Each pixel blended ``strength`` of the way to its nearest palette colour (in chunks: bounded memory)."""
    flat = f.reshape(-1, 3)
    out = np.empty_like(flat)
    for i in range(0, len(flat), chunk):
        part = flat[i : i + chunk]
        nearest = pal[np.argmin(((part[:, None, :] - pal[None, :, :]) ** 2).sum(axis=2), axis=1)]
        out[i : i + chunk] = (1.0 - strength) * part + strength * nearest
    return out.reshape(f.shape)


def preprocess_pixels(
    rgb: np.ndarray, spec: PreprocessConfig, *, origin: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """``rgb`` (H, W, 3 uint8, whose top-left is world pixel ``origin``) with ``spec`` applied; a new array."""
    f = rgb.astype(np.float32)
    if spec.desaturation:
        luma = (f @ _LUMA)[..., None]
        f = (1.0 - spec.desaturation) * f + spec.desaturation * luma
    if spec.noise:
        n = world_normal(origin[0], origin[1], f.shape[1], f.shape[0], spec.noise_seed)
        f = np.clip(f * (1.0 + 0.15 * spec.noise * n), 0.0, 255.0)
    if spec.gamma_shift:
        g = spec.gamma_shift
        f = 255.0 * np.power(f / 255.0, 1.0 + 0.8 * g)
        if g > 0.5:
            f *= 1.0 - (g - 0.5) * 0.6
    if spec.palette and spec.palette_strength:
        f = _pull_to_palette(f, _palette(spec), spec.palette_strength)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def preprocess_template(template: Template, spec: PreprocessConfig | None) -> Template:
    """The template as sent to the model: ``spec`` applied to the infill's render pixels (border redrawn).

    Returns ``template`` itself when ``spec`` is ``None`` or changes nothing (the offline path is untouched).
    """
    if spec is None or not spec.active:
        return template
    x0, y0, x1, y1 = template.infill_box
    rgb = template.rgb.copy()
    ox, oy = template.origin_px
    rgb[y0:y1, x0:x1] = preprocess_pixels(rgb[y0:y1, x0:x1], spec, origin=(ox + x0, oy + y0))
    draw_red_border(rgb, template.infill_box)
    rgb.setflags(write=False)
    png = png_bytes(rgb, compress_level=PNG_COMPRESS_LEVEL)
    return dataclasses.replace(template, rgb=rgb, png=png, sha256=hashlib.sha256(png).hexdigest())


def preprocess_provenance(spec: PreprocessConfig | None) -> dict[str, object] | None:
    """What provenance records of ``spec`` (``None`` when off)."""
    return spec.model_dump(mode="json") if spec is not None and spec.active else None
