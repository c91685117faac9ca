"""Model restyle of a whole layer (a dark, snow or painted version of the map) through any image backend, seam-free
the same way as the base map: the same lattice plan and step order, with the *restyled* neighbours as context.

A restyle step's template shows, inside the infill, the source layer's pixels (the base map; the whitebox render
where the source has none, e.g. padding beyond the bounds) with the red border; around it, only the step's declared
context quadrants, taken from the restyled layer itself. So every edge between two restyle steps is drawn by the
later step with the earlier step's restyled pixels in view, exactly as for the base map.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from isonyc_dagster import layers
from isonyc_dagster.backends.base import GenerationRequest, ImageBackend
from isonyc_dagster.generate.plan import Step
from isonyc_dagster.generate.template import build_template, extract_quadrants
from isonyc_dagster.geo.surfaces import PALETTE
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.store.base import TileStore, TileVersion, TileWrite

#: The render buffers of quadrant (x, y) (``StepInputs.render_aux``).
AuxFn = Callable[[int, int], dict[str, np.ndarray]]

#: zlib level of stored restyled tiles (lossless; the same as generated tiles).
TILE_PNG_LEVEL = 3


def restyle_step(
    store: TileStore,
    backend: ImageBackend,
    step: Step,
    aux: AuxFn,
    *,
    layer: str,
    prompt: str,
    seed: int | None = None,
    source_layer: str = layers.GENERATION,
) -> list[TileVersion]:
    """Restyle ``step``'s quadrants of ``source_layer`` into ``layer`` with one model call; commit atomically.

    Raises ``template.ContextMissing`` (before any model call) when a context quadrant of the step has not been
    restyled yet: run the plan's steps in wave order.
    """

    def tile(lay: str, x: int, y: int) -> np.ndarray | None:
        png = store.get_tile(lay, x, y)
        return None if png is None else decode_rgb(png)

    def source_rgb(x: int, y: int) -> np.ndarray:
        rgb = tile(source_layer, x, y)
        return rgb if rgb is not None else PALETTE[aux(x, y)["surface"]]

    template = build_template(
        step, render_rgb=source_rgb, generated_rgb=lambda x, y: tile(layer, x, y), render_aux=aux
    )
    result = backend.generate(
        GenerationRequest(
            template_png=template.png,
            prompt=prompt,
            seed=seed,
            infill_box=template.infill_box,
            origin_px=template.origin_px,
            aux=template.aux,
        )
    )
    quadrants = extract_quadrants(step, template, result.image_png)
    sources = store.active_map(source_layer, step.quadrants)
    context = store.active_map(layer, template.context_used)
    provenance = {
        **result.provenance,
        "restyle_of": source_layer,
        "step": step.key,
        "kind": step.kind.value,
        "template_sha256": store.put_blob(template.png),
        "output_sha256": store.put_blob(result.image_png),
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "source_sha256": {f"{x},{y}": v.sha256 for (x, y), v in sources.items()},
        "context": [list(c) for c in template.context_used],
        "context_sha256": {f"{x},{y}": v.sha256 for (x, y), v in context.items()},
    }
    return store.put_tiles(
        [
            TileWrite(layer, x, y, png_bytes(rgb, compress_level=TILE_PNG_LEVEL), provenance)
            for (x, y), rgb in sorted(quadrants.items())
        ]
    )
