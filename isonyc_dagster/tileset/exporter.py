"""Export a layer's active tiles as a tile set: isometric-nyc's dataset layout or a plain tree, with a manifest.

The stored PNG bytes are written unchanged (no re-encoding), so an export imported again reproduces the store's
active tiles byte for byte. Every file is written atomically; ``manifest.json`` last, so a directory with a
manifest was exported completely. Exporting again into the same directory rewrites only changed tiles and removes
the files of the previous export that no longer hold an active tile.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from isonyc_dagster import layers
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.store.base import TileStore, TileVersion
from isonyc_dagster.tileset.layout import (
    CONFIG_NAME,
    CSV_NAME,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    ORIGINAL_DIR,
    TilesetError,
    generation_config,
    original_hash,
    original_name,
    parse_name,
)

Layout = Literal["original", "plain"]
LAYOUTS: tuple[str, ...] = ("original", "plain")


@dataclass
class ExportReport:
    directory: str
    layout: str
    layer: str
    tiles: int = 0
    written: int = 0
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"exported {self.tiles} {self.layer} tile(s) to {self.directory} ({self.layout} layout): "
            f"{self.written} written, {self.unchanged} unchanged, {len(self.removed)} stale file(s) removed"
        )


def tile_path(layout: str, layer: str, x: int, y: int, png: bytes) -> str:
    """Where tile (x, y) goes, relative to the export directory."""
    if layout == "original":
        return f"{ORIGINAL_DIR}/{original_name(x, y, png)}"
    return f"{layer}/{x}/{y}.png"


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly it; True when written."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write(path, data, fsync=False)  # bulk output: the manifest, written last and fsynced, seals it
    return True


def _key(layout: str, p: Path) -> tuple[int, int] | None:
    if layout == "original":
        parsed = parse_name(p.name)
        return None if parsed is None else parsed[:2]
    try:
        return int(p.parent.name), int(p.name.removesuffix(".png"))
    except ValueError:
        return None


def _stale(root: Path, layout: str, layer: str, keep: set[str], bbox: QuadRect | None) -> list[Path]:
    """Tile files of an earlier export into ``root`` (within ``bbox``) that this export did not write."""
    folder = root / (ORIGINAL_DIR if layout == "original" else layer)
    if not folder.is_dir():
        return []
    out = []
    for p in folder.glob("*.png" if layout == "original" else "*/*.png"):
        key = _key(layout, p)
        if key is None or (bbox is not None and key not in bbox):
            continue
        if p.relative_to(root).as_posix() not in keep:
            out.append(p)
    return sorted(out)


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["x", "y", "quadrant", "hash_quadrant"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def export_tiles(
    store: TileStore,
    directory: str | Path,
    map_config: MapConfig,
    *,
    layout: str = "original",
    layer: str = layers.GENERATION,
    bbox: QuadRect | None = None,
    now: datetime | None = None,
) -> ExportReport:
    """Write the active tiles of ``layer`` (within ``bbox``) to ``directory``; see the module docstring."""
    if layout not in LAYOUTS:
        raise TilesetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    bbox = None if bbox is None else QuadRect(*bbox)
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise TilesetError(f"{root} is a file; give a directory to export into")
    versions: list[TileVersion] = store.list_active(layer, bbox=bbox)
    if not versions:
        where = "" if bbox is None else f" within {tuple(bbox)}"
        raise TilesetError(f"the store has no active {layer} tiles{where}: nothing to export")
    report = ExportReport(str(root), layout, layer, tiles=len(versions))
    tiles: list[dict[str, Any]] = []
    for v in versions:
        png = store.get_blob(v.sha256)  # checked against its sha256: corrupt bytes are never exported
        rel = tile_path(layout, layer, v.x, v.y, png)
        if _write_if_changed(root / rel, png):
            report.written += 1
        else:
            report.unchanged += 1
        tiles.append(
            {
                "x": v.x,
                "y": v.y,
                "file": rel,
                "sha256": v.sha256,
                "md5_8": original_hash(png),
                "version": v.version,
                "source": v.provenance.get("source") or v.provenance.get("backend"),
            }
        )
    for p in _stale(root, layout, layer, {t["file"] for t in tiles}, bbox):
        p.unlink()
        report.removed.append(p.relative_to(root).as_posix())
    xs, ys = [t["x"] for t in tiles], [t["y"] for t in tiles]
    config = generation_config(map_config, (max(xs) - min(xs), max(ys) - min(ys)))
    atomic_write(root / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    if layout == "original":
        rows = [{"x": t["x"], "y": t["y"], "quadrant": t["file"], "hash_quadrant": t["md5_8"]} for t in tiles]
        atomic_write(root / CSV_NAME, _csv(rows))
    manifest = {
        "format": MANIFEST_FORMAT,
        "layout": layout,
        "layer": layer,
        "exported_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "map": map_config.model_dump(mode="json"),
        "generation_config": config,
        "count": len(tiles),
        "tiles": tiles,
    }
    atomic_write(root / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())
    return report
