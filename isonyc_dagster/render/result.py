"""The render result (class, building, height buffers + flat-colour RGB) and its PNG/aux/NPZ encodings."""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from isonyc_dagster.geo.surfaces import PALETTE, Surface
from isonyc_dagster.images import png_bytes as _png_bytes
from isonyc_dagster.render import _auxcodec

AUX_BLOB_EXT = "aux"  # store extension of ``to_blob`` bytes (older stores hold ``.npz`` ones)
_NPZ_FORMAT = 1
_ARRAYS = ("rgb", "surface", "building", "height")


@dataclass
class RenderResult:
    """One rendered window of the map.

    ``rgb`` is exactly ``PALETTE[surface]`` (flat class colours, no shading: later stages recover the
    classes from the colours); ``height`` carries the rest (metres above ground of the visible point).
    """

    rgb: np.ndarray  # (H, W, 3) uint8
    surface: np.ndarray  # (H, W) uint8 Surface classes
    building: np.ndarray  # (H, W) int32: 0 = none, else stable_building_id(building.id)
    height: np.ndarray  # (H, W) float32 metres
    origin_px: tuple[int, int]  # world pixel of the top-left pixel
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.surface.shape[1]), int(self.surface.shape[0])

    # --- encodings ------------------------------------------------------------------------------
    def to_npz(self) -> bytes:
        """All buffers, origin and stats as an .npz (deflate level 1: ~10× smaller, a few ms).

        Deterministic bytes for equal content (zip entries carry the fixed 1980 timestamp), so the
        blob hash can serve as a data version.
        """
        buf = io.BytesIO()
        meta = {"format": _NPZ_FORMAT, "origin_px": list(self.origin_px), "stats": self.stats}
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, arr in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
        return buf.getvalue()

    def to_blob(self) -> bytes:
        """The compact lossless encoding the store keeps (``AUX_BLOB_EXT``; ~10× smaller than ``to_npz``).

        Deterministic bytes for equal content, so the blob hash can serve as a data version.
        """
        self.validate()
        return _auxcodec.encode(
            self.rgb, self.surface, self.building, self.height, self.origin_px, self.stats
        )

    @classmethod
    def from_blob(cls, data: bytes) -> RenderResult:
        """Inverse of ``to_blob``; also reads the npz blobs stores written before it (``to_npz``)."""
        if isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[: len(_auxcodec.MAGIC)]) == (
            _auxcodec.MAGIC
        ):
            fields = _auxcodec.decode(data)
            res = cls(**fields)
            res.validate()
            return res
        return cls.from_npz(data)

    @classmethod
    def from_npz(cls, data: bytes) -> RenderResult:
        """Inverse of ``to_npz``. Raises ValueError naming what is wrong with a bad blob."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or bytes(data[:4]) != b"PK\x03\x04":
            raise ValueError("render npz is corrupt or not an npz (no zip header); re-render the quadrant")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                missing = [n for n in (*_ARRAYS, "meta") if n not in z.files]
                if missing:
                    raise ValueError(
                        f"render npz is missing arrays {missing} (has {sorted(z.files)}); "
                        "it was not written by RenderResult.to_npz — re-render the quadrant"
                    )
                arrays = {n: z[n] for n in _ARRAYS}
                meta = json.loads(z["meta"].tobytes().decode())
        except (zipfile.BadZipFile, OSError, EOFError, json.JSONDecodeError) as e:
            raise ValueError(f"render npz is corrupt or not an npz ({e}); re-render the quadrant") from e
        if meta.get("format") != _NPZ_FORMAT:
            raise ValueError(
                f"render npz format {meta.get('format')!r} is not supported (expected {_NPZ_FORMAT})"
            )
        res = cls(
            origin_px=(int(meta["origin_px"][0]), int(meta["origin_px"][1])), stats=meta["stats"], **arrays
        )
        res.validate()
        return res

    def validate(self) -> None:
        """Check shapes and dtypes agree; raise ValueError naming the offending buffer."""
        h, w = self.surface.shape[:2]
        expect = {
            "rgb": ((h, w, 3), np.uint8),
            "surface": ((h, w), np.uint8),
            "building": ((h, w), np.int32),
            "height": ((h, w), np.float32),
        }
        for name, (shape, dtype) in expect.items():
            a = getattr(self, name)
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(
                    f"RenderResult.{name} has shape {a.shape} dtype {a.dtype}; expected {shape} {dtype.__name__}"
                )

    # --- windows --------------------------------------------------------------------------------
    def aux(self) -> dict[str, np.ndarray]:
        """The per-pixel buffers as ``GenerationRequest.aux`` expects them (surface, building, height)."""
        return {"surface": self.surface, "building": self.building, "height": self.height}

    def crop(self, x0: int, y0: int, w: int, h: int) -> RenderResult:
        """Sub-window at local offset (x0, y0) of size w×h (e.g. one quadrant of a tile render)."""
        H, W = self.surface.shape
        if w <= 0 or h <= 0 or x0 < 0 or y0 < 0 or x0 + w > W or y0 + h > H:
            raise ValueError(f"crop ({x0}, {y0}, {w}, {h}) is not inside the {W}×{H} render")
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        surface = self.surface[sl].copy()
        building = self.building[sl].copy()
        return RenderResult(
            rgb=self.rgb[sl].copy(),
            surface=surface,
            building=building,
            height=self.height[sl].copy(),
            origin_px=(self.origin_px[0] + x0, self.origin_px[1] + y0),
            stats=summarize(surface, building),
        )


def stable_building_id(building_id: str) -> int:
    """The positive int32 a building is drawn with in ``RenderResult.building``: CRC-32 of its source id.

    It depends on the building alone — not on which city, window or source order it was loaded with — so later
    stages that key materials and outlines on it agree across runs and re-prepared cities.
    """
    return (zlib.crc32(str(building_id).encode()) & 0x7FFFFFFF) or 1


def summarize(surface: np.ndarray, building: np.ndarray) -> dict[str, Any]:
    """Stats every result carries: which classes cover how many pixels, how many buildings show."""
    counts = np.bincount(surface.ravel(), minlength=len(Surface))
    classes = {Surface(i).name.lower(): int(c) for i, c in enumerate(counts) if c}
    return {
        "buildings_drawn": int(np.unique(building[building > 0]).size),
        "classes_present": sorted(classes),
        "class_pixels": classes,
    }


def png_bytes(rgb: np.ndarray) -> bytes:
    """Lossless PNG of a render: an (H, W, 3) or (H, W, 4) uint8 image, or an (H, W) uint8 grey image.

    ``images.png_bytes`` at zlib level 1 (flat-colour renders compress nearly as well as at level 9 at a
    fraction of the time; the level also fixes the stored render tiles' bytes), and a ValueError naming the
    array for anything a PNG cannot hold losslessly (PIL would fail later with a vaguer error).
    """
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(
            f"png_bytes needs an (H, W, 3|4) or (H, W) uint8 array, got shape {a.shape} dtype {a.dtype}"
        )
    return _png_bytes(a, compress_level=1)


def render_png_preview(result: RenderResult | np.ndarray, max_px: int = 256) -> bytes:
    """Small PNG thumbnail (longest side ≤ max_px) of a render, for Dagster metadata previews."""
    if max_px < 1:
        raise ValueError(f"max_px must be ≥ 1, got {max_px}")
    rgb = result.rgb if isinstance(result, RenderResult) else np.asarray(result)
    if rgb.ndim == 2:  # a class buffer: colour it
        rgb = PALETTE[rgb]
    img = Image.fromarray(np.ascontiguousarray(rgb))
    # Box filter: averages whole blocks, so thin walls and streets stay visible when shrunk.
    img.thumbnail((max_px, max_px), resample=Image.Resampling.BOX)
    return _png_bytes(np.asarray(img))
