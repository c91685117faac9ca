"""Tile sets on disk: import quadrants generated elsewhere (isometric-nyc's dataset layout, plain trees) and
export the store's active tiles in the same layouts, round-trip exact."""

from __future__ import annotations

from isonyc_dagster.tileset.exporter import LAYOUTS, ExportReport, export_tiles
from isonyc_dagster.tileset.importer import ImportReport, import_tiles
from isonyc_dagster.tileset.layout import CameraMismatchError, TilesetError

__all__ = [
    "LAYOUTS",
    "CameraMismatchError",
    "ExportReport",
    "ImportReport",
    "TilesetError",
    "export_tiles",
    "import_tiles",
]
