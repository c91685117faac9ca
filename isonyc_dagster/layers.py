"""The names of the map's layers: tile-store layers and the Dagster assets that materialize them.

A per-quadrant asset and the store layer it writes share one name, so lineage in the UI, rows in the store and
the viewer's layers line up. Every module takes these names from here.
"""

from __future__ import annotations

from typing import Final

GEODATA: Final = "geodata"
RENDER: Final = "render"
#: The photoreal render (3D tiles through the whitebox camera); an asset only when ``render_layer`` asks for it.
PHOTOREAL: Final = "photoreal"
GENERATION: Final = "generation"
WATER_MASK: Final = "water_mask"
DZI_PYRAMID: Final = "dzi_pyramid"
PMTILES_ARCHIVE: Final = "pmtiles_archive"

#: The four generation-step assets of the lattice, by step kind (``generate.plan.StepKind`` values).
STEP_ASSETS: Final[dict[str, str]] = {
    "block": "blocks",
    "bridge_v": "bridges_v",
    "bridge_h": "bridges_h",
    "corner": "corners",
}

#: Per-quadrant layers (partitioned by x × y).
QUADRANT_LAYERS: Final = (RENDER, GENERATION, WATER_MASK)

#: Derived layers (``derive.transforms``): the store layer and asset of each transform, derived from ``generation``.
DERIVED_LAYERS: Final[dict[str, str]] = {"night": "layer_night", "snow": "layer_snow", "dark": "layer_dark"}
#: The asset that publishes a pyramid per derived layer (``<map>_<layer>.dzi``).
LAYER_PYRAMIDS: Final = "layer_pyramids"
#: The map's learned colour palette (``generate.postprocess``): tile (0, 0), one row of colours.
PALETTE: Final = "palette"
#: Store layers of model-restyled maps (``generate.restyle``) are ``restyle_<name>``.
RESTYLE_PREFIX: Final = "restyle_"
