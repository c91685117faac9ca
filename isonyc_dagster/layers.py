"""The names of the map's layers: tile-store layers and the Dagster assets that materialize them.

A per-quadrant asset and the store layer it writes share one name, so lineage in the UI, rows in the store and
the viewer's layers line up. Every module takes these names from here.
"""

from __future__ import annotations

from typing import Final

GEODATA: Final = "geodata"
RENDER: Final = "render"
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
