"""Publish-time look of the map: polygon-clipped edges and placeholders for quadrants not generated yet.

Clipping keeps a pixel when its *ground point* lies inside the clip polygon. A pixel showing a surface at height
h metres is drawn ``lift·h`` px above its ground point (``MapGeometry.height_px_per_m``, ≈ 2.41; the lift is
straight up the screen because the camera is orthographic), so with the render's height buffer the test is
exact: a tower inside the polygon keeps its roof even where it rises above the polygon's edge on screen, and a
tower outside never pokes in. Pixel centres decide, so the edge is crisp and pixel-aligned, and the same rule
applied to any window gives the same pixels (stitched quadrants equal the whole-map clip).

Everything here happens when the pyramid is built: stored generations stay whole.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from isonyc_dagster import layers
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.bounds import BoundsError, bounds_to_pixels, load_bounds
from isonyc_dagster.geo.config import PublishConfig
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.render.result import RenderResult
from isonyc_dagster.store.base import CorruptBlobError, TileStore, TileVersion

__all__ = [
    "MAX_HEIGHT_M",
    "PLACEHOLDER_BASE",
    "BaseTile",
    "Clip",
    "PublishError",
    "PublishSpec",
    "publish_spec",
]

#: Heights above this are treated as this (metres). Taller than any building in NYC (One WTC's spire: 541 m); it
#: bounds how far below a quadrant a ground point can lie, which is what lets whole quadrants skip the pixel test.
MAX_HEIGHT_M = 900.0
#: Placeholders blend towards the viewer's background (#232d3b), so a missing generation reads as "not yet".
PLACEHOLDER_BASE = (35, 45, 59)

Where = Literal["inside", "outside", "edge"]


class PublishError(IsonycError, ValueError):
    """The publish settings cannot be used (bad clip polygon, bad destination, nothing built to publish)."""


def _h(*parts: object) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Clip:
    """A clip polygon in world pixels at ground level, and what clipped-away pixels become."""

    polygon: BaseGeometry
    lift_px_per_m: float
    quadrant_px: int
    background: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self) -> None:
        if self.polygon.is_empty or self.polygon.area <= 0:
            raise PublishError("the publish clip polygon is empty or has no area; set publish.clip")
        shapely.prepare(self.polygon)

    @cached_property
    def identity(self) -> str:
        """Changes exactly when the clipped pixels can change: polygon, camera lift, height cap, background."""
        wkb = shapely.to_wkb(shapely.set_precision(self.polygon, 1e-6), output_dimension=2)
        return _h(hashlib.sha256(wkb).hexdigest(), repr(self.lift_px_per_m), MAX_HEIGHT_M, self.background)

    @property
    def reach_px(self) -> float:
        """How far below a pixel its ground point can lie (screen px)."""
        return self.lift_px_per_m * MAX_HEIGHT_M

    def where(self, x: int, y: int) -> Where:
        """Whether every pixel of quadrant (x, y) is kept, none is, or it needs the per-pixel test."""
        q = self.quadrant_px
        reach = shapely.box(x * q, y * q, (x + 1) * q, (y + 1) * q + self.reach_px)
        if self.polygon.contains(reach):
            return "inside"
        if not self.polygon.intersects(reach):
            return "outside"
        return "edge"

    def keep_mask(self, px0: int, py0: int, height: np.ndarray | None) -> np.ndarray:
        """Which pixels of the window at world pixel (px0, py0) are kept (``height``: metres per pixel, or
        ``None`` for ground level everywhere)."""
        if height is None:
            raise PublishError("keep_mask needs the window's height buffer (pass zeros for flat ground)")
        h, w = height.shape
        lift = np.clip(np.nan_to_num(height.astype(np.float64), nan=0.0), 0.0, MAX_HEIGHT_M)
        cols = px0 + 0.5 + np.arange(w, dtype=np.float64)
        rows = py0 + 0.5 + np.arange(h, dtype=np.float64)
        gx = np.broadcast_to(cols[None, :], (h, w))
        gy = rows[:, None] + lift * self.lift_px_per_m
        # The part of the polygon this window's ground points can reach: far fewer vertices to test against.
        box = shapely.box(px0, py0, px0 + w, py0 + h + self.reach_px + 1)
        local = shapely.intersection(self.polygon, box)
        if local.is_empty:
            return np.zeros((h, w), bool)
        shapely.prepare(local)
        return shapely.contains_xy(local, gx.ravel(), gy.ravel()).reshape(h, w)

    def apply(self, rgba: np.ndarray, px0: int, py0: int, height: np.ndarray) -> np.ndarray:
        """``rgba`` (H×W×4) with the clipped-away pixels set to the background (a new array)."""
        keep = self.keep_mask(px0, py0, height)
        out = np.array(rgba, copy=True)
        out[~keep] = self.background
        return out


@dataclass(frozen=True)
class PublishSpec:
    """How base tiles are made from the store: clip, placeholders. ``PublishSpec()`` publishes the generations
    as stored (the pyramid of earlier versions)."""

    clip: Clip | None = None
    placeholders: bool = False
    placeholder_dim: float = 0.55
    placeholder_layer: str = layers.RENDER

    def to_json(self) -> dict[str, object]:
        """What ``update_pyramid`` needs to make the same tiles again (written beside the manifest)."""
        c = self.clip
        return {
            "clip": None
            if c is None
            else {
                "wkb": shapely.to_wkb(c.polygon, hex=True),
                "lift_px_per_m": c.lift_px_per_m,
                "quadrant_px": c.quadrant_px,
                "background": list(c.background),
            },
            "placeholders": self.placeholders,
            "placeholder_dim": self.placeholder_dim,
            "placeholder_layer": self.placeholder_layer,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PublishSpec:
        c = data.get("clip")
        clip = None
        if c:
            bg = tuple(int(v) for v in c["background"])
            clip = Clip(shapely.from_wkb(c["wkb"]), float(c["lift_px_per_m"]), int(c["quadrant_px"]), bg)  # type: ignore[arg-type]
        return cls(
            clip, bool(data["placeholders"]), float(data["placeholder_dim"]), str(data["placeholder_layer"])
        )

    @property
    def plain(self) -> bool:
        return self.clip is None and not self.placeholders

    @cached_property
    def identity(self) -> str:
        return _h(
            self.clip.identity if self.clip else "-",
            self.placeholders,
            self.placeholder_dim,
            self.placeholder_layer,
        )


def _colour(spec: str | None) -> tuple[int, int, int, int]:
    if not spec:
        return (0, 0, 0, 0)
    v = spec.lstrip("#")
    return (int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16), 255)


def clip_polygon_px(geometry: MapGeometry, spec: str, bounds: BaseGeometry) -> BaseGeometry:
    """The clip polygon in world pixels for ``publish.clip`` (``bounds`` = the project's bounds polygon)."""
    try:
        lnglat = bounds if spec == "bounds" else load_bounds(spec)
    except BoundsError as e:
        raise PublishError(f"publish.clip: {e}") from None
    return bounds_to_pixels(geometry, lnglat)


def publish_spec(geometry: MapGeometry, cfg: PublishConfig, bounds_lnglat: BaseGeometry) -> PublishSpec:
    """The ``PublishSpec`` of a project's ``[publish]`` settings."""
    clip = None
    if cfg.clip != "none":
        poly = clip_polygon_px(geometry, cfg.clip, bounds_lnglat)
        clip = Clip(poly, geometry.height_px_per_m, geometry.q, _colour(cfg.background))
    return PublishSpec(clip, cfg.placeholders, cfg.placeholder_dim)


# --------------------------------------------------------------------------------------------------
# base tiles


@dataclass(frozen=True)
class BaseTile:
    """What one full-resolution tile is made from, and its input hash parts."""

    x: int
    y: int
    kind: Literal["missing", "generation", "placeholder", "outside"]
    sha: str | None  # generation or placeholder (render) blob
    where: Where = "inside"
    aux_sha: str | None = None  # render buffers (heights) of an edge tile
    key: tuple[str, ...] = field(default=())


class BaseTiles:
    """Decides and draws the published base tiles of one build (``spec``, the store, per-quadrant renders)."""

    def __init__(
        self, store: TileStore, spec: PublishSpec, render_of: Callable[[int, int], TileVersion | None]
    ) -> None:
        self.store, self.spec = store, spec
        self._render_of = render_of  # (x, y) -> TileVersion | None of the render layer

    def plan(self, x: int, y: int, gen_sha: str | None) -> BaseTile:
        """The tile's sources and hash key. Inside tiles of a generation hash as in an unclipped pyramid, so
        turning clipping on rewrites only the edge."""
        spec = self.spec
        where: Where = spec.clip.where(x, y) if spec.clip else "inside"
        if where == "outside":
            # Its pixels are the background alone: moving the polygon elsewhere does not rewrite it.
            bg = spec.clip.background if spec.clip else ()
            return BaseTile(x, y, "outside", None, where, None, ("out", str(bg)))
        render = None
        if gen_sha is None and spec.placeholders:
            render = self._render_of(x, y)
        if gen_sha is None and render is None:
            return BaseTile(x, y, "missing", None, where, None, ("-",))
        kind: Literal["generation", "placeholder"] = "generation" if gen_sha else "placeholder"
        sha = gen_sha or (render.sha256 if render is not None else "-")
        key: tuple[str, ...] = (
            (sha,) if kind == "generation" else ("ph", sha, repr(spec.placeholder_dim), str(PLACEHOLDER_BASE))
        )
        aux = None
        if where == "edge":
            render = render or self._render_of(x, y)
            aux = render.provenance.get("aux_sha256") if render is not None else None
            key = (*key, "clip", spec.clip.identity if spec.clip else "-", aux or "-")
        return BaseTile(x, y, kind, sha, where, aux, key)

    def pixels(
        self, tile: BaseTile, data: bytes | None, decode: Callable[[bytes], np.ndarray]
    ) -> np.ndarray | None:
        """The tile's RGBA pixels, or ``None`` when the stored bytes are published unchanged."""
        q = self.spec.clip.quadrant_px if self.spec.clip else None
        if tile.kind == "outside":
            assert self.spec.clip is not None and q is not None
            return np.broadcast_to(np.array(self.spec.clip.background, np.uint8), (q, q, 4)).copy()
        assert data is not None
        arr: np.ndarray | None = None
        if tile.kind == "placeholder":
            arr = dim(decode(data), self.spec.placeholder_dim)
        if tile.where == "edge" and self.spec.clip is not None:
            rgba = arr if arr is not None else decode(data)
            height = self._height(tile, rgba.shape[:2])
            keep = self.spec.clip.keep_mask(tile.x * rgba.shape[1], tile.y * rgba.shape[0], height)
            if keep.all() and arr is None:
                return None  # nothing clipped: the stored bytes are the tile
            arr = np.array(rgba, copy=True)
            arr[~keep] = self.spec.clip.background
        return arr

    def _height(self, tile: BaseTile, shape: tuple[int, ...]) -> np.ndarray:
        """The render's height buffer of the tile's quadrant; flat ground when the render has none (then only a
        re-render, which changes the hash, lifts the towers back)."""
        if tile.aux_sha:
            with contextlib.suppress(CorruptBlobError, ValueError, FileNotFoundError):
                res = RenderResult.from_blob(self.store.get_blob(tile.aux_sha))
                if res.height.shape == tuple(shape):
                    return res.height
        return np.zeros(shape[:2], np.float32)


def dim(rgba: np.ndarray, factor: float) -> np.ndarray:
    """A placeholder: the render blended towards ``PLACEHOLDER_BASE`` (alpha kept)."""
    out = np.array(rgba, copy=True)
    base = np.array(PLACEHOLDER_BASE, np.float32)
    out[..., :3] = np.rint(rgba[..., :3].astype(np.float32) * factor + base * (1.0 - factor)).astype(np.uint8)
    return out


def placeholder_keys(
    spec: PublishSpec, generated: set[tuple[int, int]], rendered: set[tuple[int, int]]
) -> list[list[int]]:
    """The quadrants the published map shows as placeholders (rendered, not generated, not clipped away)."""
    if not spec.placeholders:
        return []
    keys = sorted(rendered - generated, key=lambda k: (k[1], k[0]))
    return [[x, y] for x, y in keys if spec.clip is None or spec.clip.where(x, y) != "outside"]
