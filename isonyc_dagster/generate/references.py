"""Style references for models that take them (Gemini, Vertex): which images a step sends, and why.

A quadrant is a *reference* when it is flagged ``reference`` in the store (``isonyc reference add X Y``) and has
an active generation (an accepted tile). A step gets the K nearest references (K = ``reference_count``, capped by
the backend's ``max_style_refs``): distance is from the reference quadrant to the nearest quadrant the step
generates, in quadrants; ties go to the most recently generated reference, then to the smaller (y, x). A step
never gets a quadrant it is about to regenerate.

Each reference is sent as a style image: the 2×2 tile of active generations holding it (the original's "2×2 tile
whose top-left is the reference"; if that block is incomplete, the first complete 2×2 block holding the reference,
else the reference quadrant alone). While no reference exists (a fresh map), the images of ``anchors_dir`` (3–6
style images, seed-002 ``--anchors_dir``) are sent instead, first ones by file name. With neither, a backend that
requires a reference is refused before any model call with how to add one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from isonyc_dagster import layers
from isonyc_dagster.backends.base import ImageBackend
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.generate.plan import Quadrant, Step
from isonyc_dagster.geo.model_inputs import anchor_files
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.store.base import TileStore

#: Top-left corners (relative to the reference) of the 2×2 blocks tried, in order: reference at TL first.
_BLOCK_OFFSETS: tuple[Quadrant, ...] = ((0, 0), (-1, 0), (0, -1), (-1, -1))


class ReferenceMissing(IsonycError, ValueError):
    """A backend needs a style reference and the project has none (no marked quadrant, no anchors)."""


@dataclass(frozen=True)
class StyleRef:
    """One style image sent to a model."""

    source: str  # "reference" (a marked quadrant) or "anchor" (a file of anchors_dir)
    key: str  # "x,y" of the reference quadrant, or the anchor's file name
    png: bytes
    tile: tuple[Quadrant, ...] = ()  # the quadrants the image shows (references)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.png).hexdigest()

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "key": self.key, "sha256": self.sha256}
        if self.tile:
            out["tile"] = [list(q) for q in self.tile]
        return out


@dataclass(frozen=True)
class StyleRefs:
    """The style images of one step (possibly none)."""

    refs: tuple[StyleRef, ...] = ()

    @property
    def pngs(self) -> tuple[bytes, ...]:
        return tuple(r.png for r in self.refs)

    def provenance(self) -> list[dict[str, Any]]:
        return [r.provenance() for r in self.refs]

    def __bool__(self) -> bool:
        return bool(self.refs)


def how_to_add(backend_name: str) -> str:
    return (
        f"backend {backend_name!r} needs a style reference and this map has none: mark an accepted quadrant with "
        "`isonyc reference add X Y`, or set anchors_dir in the project config to a directory of 3-6 style images"
    )


class ReferenceSelector:
    """Chooses the style references of steps from one store (its reference list is read once per selector)."""

    def __init__(self, store: TileStore, *, count: int = 2, anchors_dir: str | Path | None = None) -> None:
        self.store = store
        self.count = count
        self.anchors_dir = anchors_dir
        self._refs: list[tuple[Quadrant, float]] | None = None
        self._anchors: list[StyleRef] | None = None
        self._tiles: dict[Quadrant, StyleRef] = {}

    def references(self) -> list[tuple[Quadrant, float]]:
        """Accepted references: flagged ``reference`` with an active generation; with its creation time."""
        if self._refs is None:
            keys = [(f.x, f.y) for f in self.store.list_flags(reference=True)]
            active = self.store.active_map(layers.GENERATION, keys)
            self._refs = [(k, v.created_at) for k, v in sorted(active.items())]
        return self._refs

    def anchors(self) -> list[StyleRef]:
        """The anchors directory's images as PNG (lossless re-encoding of JPEG/WebP), in file-name order."""
        if self._anchors is None:
            self._anchors = []
            if self.anchors_dir is not None:
                for path in anchor_files(self.anchors_dir):
                    try:
                        rgb = decode_rgb(path.read_bytes())
                    except (OSError, ValueError) as e:
                        raise ReferenceMissing(f"anchor image {path} cannot be decoded: {e}") from None
                    self._anchors.append(StyleRef("anchor", path.name, png_bytes(rgb)))
        return self._anchors

    def check(self, backend: ImageBackend) -> None:
        """Refuse, before any model call, a backend that requires a reference when none can be given."""
        if not (backend.uses_style_refs and backend.requires_style_ref):
            return
        if self.count < 1 or backend.max_style_refs < 1:
            raise ReferenceMissing(
                f"backend {backend.name!r} requires a style reference but reference_count is {self.count} "
                f"(max_style_refs {backend.max_style_refs}); set reference_count >= 1"
            )
        if not self.references() and not self.anchors():
            raise ReferenceMissing(how_to_add(backend.name))

    def nearest(self, quadrants: Sequence[Quadrant], k: int) -> list[Quadrant]:
        """The ``k`` references nearest to ``quadrants`` (distance, then newest, then y, x), none of them."""
        own = set(quadrants)

        def rank(item: tuple[Quadrant, float]) -> tuple[int, float, int, int]:
            (x, y), created = item
            d2 = min((x - qx) ** 2 + (y - qy) ** 2 for qx, qy in quadrants)
            return (d2, -created, y, x)

        return [q for q, _ in sorted((r for r in self.references() if r[0] not in own), key=rank)[:k]]

    def select(self, step: Step, backend: ImageBackend) -> StyleRefs:
        """The style images ``backend`` gets for ``step`` (none for backends that take none)."""
        if not backend.uses_style_refs:
            return StyleRefs()
        self.check(backend)
        k = min(self.count, backend.max_style_refs)
        if k < 1:
            return StyleRefs()
        chosen = self.nearest(step.quadrants, k)
        if chosen:
            return StyleRefs(tuple(self.reference_image(q) for q in chosen))
        return StyleRefs(tuple(self.anchors()[:k]))

    def reference_image(self, ref: Quadrant) -> StyleRef:
        """The style image of reference quadrant ``ref``: its 2×2 tile of active generations."""
        if ref not in self._tiles:
            x, y = ref
            tile: tuple[Quadrant, ...] = (ref,)
            for dx, dy in _BLOCK_OFFSETS:
                block = block_2x2(x + dx, y + dy)
                if len(self.store.active_map(layers.GENERATION, block)) == 4:
                    tile = block
                    break
            self._tiles[ref] = StyleRef("reference", f"{x},{y}", png_bytes(self._stitch(tile)), tile)
        return self._tiles[ref]

    def _stitch(self, tile: tuple[Quadrant, ...]) -> np.ndarray:
        imgs = {
            q: decode_rgb(self.store.get_blob(v.sha256))
            for q, v in self.store.active_map(layers.GENERATION, tile).items()
        }
        return stitch(imgs, tile)


def block_2x2(x: int, y: int) -> tuple[Quadrant, ...]:
    """The 2×2 tile whose top-left quadrant is (x, y): TL, TR, BL, BR (the original's tile of a quadrant)."""
    return ((x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1))


def stitch(imgs: dict[Quadrant, np.ndarray], tile: tuple[Quadrant, ...]) -> np.ndarray:
    """One image of ``tile`` (one quadrant, or a 2×2 block from ``block_2x2``) from its q×q×3 quadrant images."""
    if len(tile) == 1:
        return imgs[tile[0]]
    x0, y0 = tile[0]
    q = imgs[tile[0]].shape[0]
    out = np.empty((2 * q, 2 * q, 3), np.uint8)
    for x, y in tile:
        out[(y - y0) * q : (y - y0 + 1) * q, (x - x0) * q : (x - x0 + 1) * q] = imgs[(x, y)]
    return out
