"""Lossless PNG encode/decode of numpy images, shared by every stage (core, no Dagster)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(rgb: np.ndarray, *, compress_level: int = 6) -> bytes:
    """Lossless, deterministic PNG of an (H, W, 3|4) or (H, W) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_rgb(png: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB array of an image file's bytes (a writable copy)."""
    with Image.open(io.BytesIO(png)) as im:
        return np.array(im.convert("RGB"))
