"""Derived layers in the tile store: one quadrant's transform from its source tile and render buffers, stored with
provenance as the layer's next version (``layers.DERIVED_LAYERS``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from isonyc_dagster import layers
from isonyc_dagster.derive.transforms import DeriveError, Source, get_transform
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.store.base import TileStore, TileVersion

#: zlib level of stored derived tiles (lossless; the same as generated tiles).
TILE_PNG_LEVEL = 3

#: The render buffers of quadrant (x, y): ``surface``, ``building`` and ``height`` (``StepInputs.render_aux``).
AuxFn = Callable[[int, int], dict[str, np.ndarray]]


@dataclass(frozen=True)
class DerivedTile:
    name: str
    x: int
    y: int
    version: TileVersion
    #: The stored tile already came from this source tile and transform version: nothing was recomputed.
    reused: bool


def layer_of(name: str) -> str:
    """The store layer (and asset) of derived layer ``name``."""
    get_transform(name)
    return layers.DERIVED_LAYERS[name]


def source_of(
    store: TileStore, x: int, y: int, aux: AuxFn, *, source_layer: str
) -> tuple[Source, TileVersion]:
    """Quadrant (x, y)'s source pixels and render buffers, with the source tile's active version."""
    version = store.active(source_layer, x, y)
    if version is None:
        raise DeriveError(
            f"quadrant ({x}, {y}) has no {source_layer!r} tile to derive from; materialize {source_layer} first"
        )
    rgb = decode_rgb(store.get_blob(version.sha256))
    buffers = aux(x, y)
    h, w = rgb.shape[:2]
    src = Source(rgb, buffers["surface"], buffers["building"], buffers["height"], (x * w, y * h))
    src.validate()
    return src, version


def derive_quadrant(
    store: TileStore, name: str, x: int, y: int, aux: AuxFn, *, source_layer: str = layers.GENERATION
) -> DerivedTile:
    """Transform quadrant (x, y) of ``source_layer`` into derived layer ``name`` and store it.

    A quadrant whose stored derived tile was made from the same source tile by the same transform version is not
    recomputed (transforms are deterministic), so re-running a layer after a crash or for new quadrants is cheap.
    """
    transform = get_transform(name)
    layer = layer_of(name)
    current = store.active(layer, x, y)
    source = store.active(source_layer, x, y)
    if (
        current is not None
        and source is not None
        and current.provenance.get("source_sha256") == source.sha256
        and current.provenance.get("transform_version") == transform.version
    ):
        return DerivedTile(name, x, y, current, reused=True)
    src, source = source_of(store, x, y, aux, source_layer=source_layer)
    render = store.active(layers.RENDER, x, y)
    provenance = {
        "transform": name,
        "transform_version": transform.version,
        "source_layer": source_layer,
        "source_sha256": source.sha256,
        "source_version": source.version,
        "render_aux_sha256": None if render is None else render.provenance.get("aux_sha256"),
        "origin_px": list(src.origin_px),
    }
    png = png_bytes(transform.fn(src), compress_level=TILE_PNG_LEVEL)
    return DerivedTile(name, x, y, store.put_tile(layer, x, y, png, provenance), reused=False)
