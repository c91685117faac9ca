"""Pixel-art post-processing of model outputs (the original's ``pixel_art_postprocess``, palette quantise, "unfake").

Image models draw "almost" pixel art: colours drift off the map's palette, edges carry anti-aliasing halos (blends of
the two colours they separate), and art pixels drift off their grid. Three steps put an output back on the map's
terms, in this order, each optional:

1. **re-grid** (``pixel_size`` > 1): each ``pixel_size``² block aligned to the *world* pixel grid becomes its most
   frequent colour, so art pixels sit where the map's do in every step;
2. **quantise**: every pixel snaps to the nearest colour of the map's palette. The palette is learned by k-means over
   accepted generations (``learn_palette``) and stored with the map as the ``palette`` layer's tile (one row of
   colours, versioned like every tile);
3. **de-halo**: a pixel whose 3×3 neighbourhood holds a colour on both of its sides that it lies between (a blend)
   takes the colour of the closer side.

Every output colour is a palette colour, and quantising is idempotent. Off by default; turned on per backend with
``[backends.<name>.postprocess]``. The step keeps the raw output as a blob and records both in its provenance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.cluster.vq import kmeans2

from isonyc_dagster import layers
from isonyc_dagster.backends.base import GenerationRequest, GenerationResult, ImageBackend
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.model_inputs import PostprocessConfig
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.store.base import TileStore

#: Pixels sampled per quadrant when learning a palette (enough for 32 clusters, a few ms of k-means).
SAMPLES_PER_QUADRANT = 4096
#: Quadrants a palette is learned from at most (starred and reference first, then the rest in key order).
MAX_QUADRANTS = 64


class PaletteError(IsonycError, ValueError):
    """A palette cannot be learned or used; the message says what is missing and what to do."""


# --- palette ------------------------------------------------------------------------------------------------


def learn_palette(images: Iterable[np.ndarray], k: int = 32, *, seed: int = 0) -> np.ndarray:
    """A (≤k, 3) uint8 palette: k-means centres over pixels sampled from ``images`` (deterministic for a seed).

    Duplicate centres are merged, so the palette's colours are distinct and quantising is idempotent.
    """
    if k < 2:
        raise PaletteError(f"a palette needs at least 2 colours, got k={k}")
    rng = np.random.default_rng(seed)
    samples = []
    for img in images:
        px = np.asarray(img)[..., :3].reshape(-1, 3)
        take = rng.choice(len(px), size=min(SAMPLES_PER_QUADRANT, len(px)), replace=False)
        samples.append(px[np.sort(take)])
    if not samples:
        raise PaletteError(
            "no accepted generations to learn a palette from; generate (and accept) quadrants first"
        )
    data = np.concatenate(samples).astype(np.float64)
    distinct = np.unique(data, axis=0)
    if len(distinct) <= k:
        return distinct.astype(np.uint8)
    centres, _ = kmeans2(data, k, minit="++", seed=seed)
    return np.unique(np.clip(np.rint(centres), 0, 255).astype(np.uint8), axis=0)


def accepted_quadrants(store: TileStore, limit: int = MAX_QUADRANTS) -> list[tuple[int, int]]:
    """Generated quadrants that count as accepted: starred or reference ones if any, else every unflagged one."""
    keys = sorted(((v.x, v.y) for v in store.list_active(layers.GENERATION)), key=lambda k: (k[1], k[0]))
    flags = {k: store.flags(*k) for k in keys}
    keys = [k for k in keys if not flags[k].flagged]
    chosen = [k for k in keys if flags[k].starred or flags[k].reference]
    return (chosen or keys)[:limit]


def store_palette(store: TileStore, palette: np.ndarray, provenance: dict[str, Any]) -> str:
    """Keep ``palette`` with the map: the ``palette`` layer's tile (0, 0), one row of colours. Returns its sha256."""
    row = np.ascontiguousarray(palette.reshape(1, -1, 3).astype(np.uint8))
    v = store.put_tile(layers.PALETTE, 0, 0, png_bytes(row), provenance, expect_size=(row.shape[1], 1))
    return v.sha256


def load_palette(store: TileStore) -> tuple[np.ndarray, str] | None:
    """The map's stored palette and its sha256, or ``None`` when none was learned yet."""
    v = store.active(layers.PALETTE, 0, 0)
    if v is None:
        return None
    return decode_rgb(store.get_blob(v.sha256)).reshape(-1, 3), v.sha256


def learn_map_palette(store: TileStore, k: int = 32) -> tuple[np.ndarray, str]:
    """Learn the palette from the map's accepted generations and store it; returns it with its sha256."""
    keys = accepted_quadrants(store)
    images = [decode_rgb(png) for k_ in keys if (png := store.get_tile(layers.GENERATION, *k_)) is not None]
    palette = learn_palette(images, k)
    sha = store_palette(store, palette, {"k": k, "quadrants": [list(q) for q in keys], "method": "kmeans++"})
    return palette, sha


# --- the three steps ----------------------------------------------------------------------------------------


def nearest_index(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) index of the nearest palette colour of every pixel (squared RGB distance; ties: lowest index)."""
    px = rgb[..., :3].reshape(-1, 3).astype(np.int32)
    pal = palette.astype(np.int32)
    out = np.empty(len(px), np.int64)
    for i in range(0, len(px), 65536):  # bounded memory: 64k pixels × palette at a time
        d = ((px[i : i + 65536, None, :] - pal[None, :, :]) ** 2).sum(-1)
        out[i : i + 65536] = d.argmin(1)
    return out.reshape(rgb.shape[:2])


def quantize(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Every pixel snapped to its nearest palette colour: no other colour can appear, and it is idempotent."""
    return palette[nearest_index(rgb, palette)]


def regrid(rgb: np.ndarray, pixel_size: int, origin_px: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Each ``pixel_size``² block aligned to the world grid becomes its most frequent colour (ties: first seen)."""
    if pixel_size <= 1:
        return rgb
    h, w = rgb.shape[:2]
    out = rgb.copy()
    ox, oy = (-origin_px[0]) % pixel_size, (-origin_px[1]) % pixel_size
    ys = [0, *range(oy or pixel_size, h, pixel_size)] if oy else list(range(0, h, pixel_size))
    xs = [0, *range(ox or pixel_size, w, pixel_size)] if ox else list(range(0, w, pixel_size))
    for y0, y1 in zip(ys, [*ys[1:], h], strict=True):
        for x0, x1 in zip(xs, [*xs[1:], w], strict=True):
            block = rgb[y0:y1, x0:x1].reshape(-1, 3)
            colours, first, counts = np.unique(block, axis=0, return_index=True, return_counts=True)
            best = np.lexsort((first, -counts))[0]
            out[y0:y1, x0:x1] = colours[best]
    return out


def dehalo(idx: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Replace blend pixels by the closer of the two colours they separate (on palette indices, one pass).

    A pixel is a halo when the pixels on two opposite sides (left/right or up/down) have two different colours
    and its own colour lies between them (closer to their midpoint than they are to each other, and not equal
    to either). Only palette indices are moved, so the result stays in the palette.
    """
    pal = palette.astype(np.float64)
    out = idx.copy()
    h, w = idx.shape
    for axis in (0, 1):
        a = np.roll(idx, 1, axis=axis)
        b = np.roll(idx, -1, axis=axis)
        ca, cb, cc = pal[a], pal[b], pal[idx]
        ab = np.linalg.norm(ca - cb, axis=-1)
        da, db = np.linalg.norm(cc - ca, axis=-1), np.linalg.norm(cc - cb, axis=-1)
        halo = (a != b) & (idx != a) & (idx != b) & (da + db <= ab * 1.15) & (ab > 24)
        border = np.zeros_like(halo)  # np.roll wraps: never judge the window's outermost pixels
        if axis == 0:
            border[[0, h - 1], :] = True
        else:
            border[:, [0, w - 1]] = True
        halo &= ~border & (out == idx)
        out = np.where(halo, np.where(da <= db, a, b), out)
    return out


@dataclass(frozen=True)
class Postprocessed:
    rgb: np.ndarray
    changed_px: int
    colours_before: int
    colours_after: int


def postprocess(
    rgb: np.ndarray,
    config: PostprocessConfig,
    palette: np.ndarray | None,
    origin_px: tuple[int, int] = (0, 0),
) -> Postprocessed:
    """Re-grid, quantise to ``palette`` and de-halo an (H, W, 3) image as ``config`` says."""
    rgb = np.ascontiguousarray(np.asarray(rgb)[..., :3])
    out = regrid(rgb, config.pixel_size, origin_px)
    if palette is not None:
        idx = nearest_index(out, palette)
        if config.dehalo:
            idx = dehalo(idx, palette)
        out = palette[idx]
    return Postprocessed(
        out,
        int(np.any(out != rgb, axis=-1).sum()),
        int(len(np.unique(rgb.reshape(-1, 3), axis=0))),
        int(len(np.unique(out.reshape(-1, 3), axis=0))),
    )


# --- in a step ----------------------------------------------------------------------------------------------


class PostprocessingBackend(ImageBackend):
    """Wraps a backend: every output is post-processed before the step validates and commits it. The raw output
    is kept through ``keep`` (a blob) and named in the result's provenance (``postprocess.raw_sha256``)."""

    def __init__(
        self,
        inner: ImageBackend,
        config: PostprocessConfig,
        palette: np.ndarray | None,
        *,
        palette_sha256: str | None = None,
        keep: Callable[[bytes], str] | None = None,
    ) -> None:
        self.inner = inner
        self.config = config
        self.palette = palette
        self.palette_sha256 = palette_sha256
        self.keep = keep
        self.name = inner.name
        self.model_id = inner.model_id

    @property
    def requires_style_ref(self) -> bool:
        return self.inner.requires_style_ref

    @property
    def max_style_refs(self) -> int:
        return self.inner.max_style_refs

    @property
    def max_in_flight(self) -> int:
        return self.inner.max_in_flight

    def generate(self, request: GenerationRequest) -> GenerationResult:
        raw = self.inner.generate(request)
        rgb = decode_rgb(raw.image_png)
        done = postprocess(rgb, self.config, self.palette, request.origin_px)
        png = png_bytes(done.rgb)
        info = {
            **(provenance(self.config, self.palette_sha256) or {}),
            "raw_sha256": self.keep(raw.image_png)
            if self.keep
            else hashlib.sha256(raw.image_png).hexdigest(),
            "changed_px": done.changed_px,
            "colours_before": done.colours_before,
            "colours_after": done.colours_after,
        }
        return replace(raw, image_png=png, provenance={**raw.provenance, "postprocess": info})

    def close(self) -> None:
        self.inner.close()


def provenance(config: PostprocessConfig | None, palette_sha256: str | None) -> dict[str, Any] | None:
    """What decides the post-processing (part of a step's key): the settings and the palette's hash."""
    if config is None or not config.enabled:
        return None
    return {**config.model_dump(mode="json"), "palette_sha256": palette_sha256}


def settings_key(config: PostprocessConfig | None, palette_sha256: str | None) -> str | None:
    p = provenance(config, palette_sha256)
    return None if p is None else hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]


def wrap(backend: ImageBackend, store: TileStore, config: PostprocessConfig | None) -> ImageBackend:
    """``backend`` itself when post-processing is off; else wrapped with the map's palette (learned and stored
    on first use from the accepted generations; with none accepted yet, quantising waits and only re-grids)."""
    if config is None or not config.enabled:
        return backend
    palette, sha = None, None
    if config.quantize:
        found = load_palette(store)
        if found is None and accepted_quadrants(store, 1):
            found = learn_map_palette(store, config.palette_size)
        if found is not None:
            palette, sha = found
    return PostprocessingBackend(
        backend, config, palette, palette_sha256=sha, keep=lambda png: store.put_blob(png)
    )


def palette_of(images: Sequence[np.ndarray]) -> set[tuple[int, int, int]]:
    """The set of colours in ``images`` (for checks and tests)."""
    out: set[tuple[int, int, int]] = set()
    for img in images:
        out |= {(int(r), int(g), int(b)) for r, g, b in np.unique(img.reshape(-1, 3), axis=0)}
    return out
