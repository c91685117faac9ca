"""Step inputs: render buffers come from the store when intact and are drawn again when their blob is damaged."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from isonyc_dagster import layers
from isonyc_dagster.generate.step import StepInputs
from isonyc_dagster.geo.surfaces import PALETTE
from isonyc_dagster.images import png_bytes
from isonyc_dagster.render import RenderResult
from isonyc_dagster.store.local import LocalTileStore

Q = 16


def _render(x: int, y: int) -> RenderResult:
    rng = np.random.default_rng(1000 * x + y)
    surface = rng.integers(1, 6, (Q, Q), dtype=np.uint8)
    building = rng.integers(0, 3, (Q, Q), dtype=np.int32)
    height = rng.random((Q, Q), dtype=np.float32)
    rgb = PALETTE[surface]
    return RenderResult(rgb=rgb, surface=surface, building=building, height=height, origin_px=(x * Q, y * Q))


def test_a_damaged_render_buffer_blob_is_rendered_again(tmp_path: Path) -> None:
    store = LocalTileStore(tmp_path / "store", tile_size=(Q, Q))
    res = _render(3, 4)
    aux_sha = store.put_blob(res.to_npz(), ext="npz")
    store.put_tile(layers.RENDER, 3, 4, png_bytes(res.rgb), {"aux_sha256": aux_sha})
    drawn: list[tuple[int, int]] = []

    def render(x: int, y: int) -> RenderResult:
        drawn.append((x, y))
        return _render(x, y)

    assert np.array_equal(
        StepInputs(store, stored={(3, 4)}, render=render).render_aux(3, 4)["surface"], res.surface
    )
    assert drawn == []  # intact: read from the store
    blob = next((tmp_path / "store" / "blobs").rglob(f"{aux_sha}.npz"))
    blob.write_bytes(blob.read_bytes()[:-100] + b"\0" * 100)
    aux = StepInputs(store, stored={(3, 4)}, render=render).render_aux(3, 4)
    assert drawn == [(3, 4)] and np.array_equal(aux["surface"], res.surface)
