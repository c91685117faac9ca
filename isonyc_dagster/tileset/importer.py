"""Import quadrants generated elsewhere (isometric-nyc's dataset, a plain tile tree) into the store as versions.

Every file is checked on its own (name, hash in the name, manifest hash, PNG, size, transparency, blank) and
either imported, found unchanged, or skipped with a reason; one bad file never stops the others. The directory's
camera (``generation_config.json``) must be this map's, or nothing is imported (unless the caller overrides it):
quadrant keys mean nothing under another camera.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from isonyc_dagster import layers
from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.geo.geometry import GeometryError, MapGeometry
from isonyc_dagster.store.base import StoreError, TileStore, TileWrite
from isonyc_dagster.store.validate import sha256_hex, validate_png
from isonyc_dagster.tileset.layout import (
    CONFIG_NAME,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    ORIGINAL_DIR,
    SIDECARS,
    CameraMismatchError,
    TilesetError,
    camera_mismatches,
    original_hash,
    parse_name,
    read_generation_config,
)

#: Tiles committed per store transaction (each batch is all or nothing).
BATCH = 64
#: Uniform colours that mean "nothing was generated here" (a uniform water or park colour is a real tile).
BLANK_RGB = frozenset(
    {(0, 0, 0), (255, 255, 255), (135, 206, 235)}
)  # black, white, the original's render sky


@dataclass(frozen=True)
class Entry:
    """One line of the report: a file and what became of it."""

    file: str
    status: str  # imported | would import | unchanged | skipped | note
    detail: str = ""
    x: int | None = None
    y: int | None = None
    version: int | None = None

    def line(self) -> str:
        key = "" if self.x is None else f" ({self.x},{self.y})"
        return f"{self.status} {self.file}{key}" + (f": {self.detail}" if self.detail else "")


@dataclass
class ImportReport:
    directory: str
    layer: str
    dry_run: bool
    entries: list[Entry] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(e.status == status for e in self.entries)

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    def summary(self) -> str:
        verb = "would import" if self.dry_run else "imported"
        n = self.count("would import") if self.dry_run else self.count("imported")
        return (
            f"{self.directory}: {verb} {n}, unchanged {self.count('unchanged')}, skipped {self.skipped} "
            f"(layer {self.layer})"
        )

    def text(self) -> str:
        """One line per file, then the summary."""
        return "\n".join([*(e.line() for e in self.entries), self.summary()])

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "layer": self.layer,
            "dry_run": self.dry_run,
            "entries": [e.__dict__ for e in self.entries],
        }


@dataclass(frozen=True)
class _Candidate:
    name: str  # relative to the directory, as reported
    path: Path
    x: int
    y: int
    name_hash: str | None


def _scan_flat(folder: Path, root: Path, out: list[_Candidate], skipped: list[Entry]) -> None:
    for p in sorted(folder.iterdir()):
        rel = p.relative_to(root).as_posix()
        if p.name in SIDECARS or p.name.startswith("."):
            continue
        if p.is_dir():
            if folder == root:  # the layout folders are scanned on their own
                continue
            skipped.append(Entry(rel, "skipped", "a directory, not a tile"))
            continue
        parsed = parse_name(p.name)
        if parsed is None:
            skipped.append(
                Entry(rel, "skipped", "unparsable filename: expected <x>_<y>_<hash>.png or <x>_<y>.png")
            )
            continue
        out.append(_Candidate(rel, p, parsed[0], parsed[1], parsed[2]))


def _scan_tree(folder: Path, root: Path, out: list[_Candidate], skipped: list[Entry]) -> None:
    """The plain layout: ``<layer>/<x>/<y>.png``."""
    for xdir in sorted(folder.iterdir()):
        rel = xdir.relative_to(root).as_posix()
        try:
            x = int(xdir.name)
        except ValueError:
            skipped.append(Entry(rel, "skipped", "unparsable name: expected <layer>/<x>/<y>.png"))
            continue
        if not xdir.is_dir():
            skipped.append(Entry(rel, "skipped", "unparsable name: expected <layer>/<x>/<y>.png"))
            continue
        for p in sorted(xdir.iterdir()):
            prel = p.relative_to(root).as_posix()
            try:
                y = int(p.name.removesuffix(".png")) if p.name.endswith(".png") else None
            except ValueError:
                y = None
            if y is None or not p.is_file():
                skipped.append(Entry(prel, "skipped", "unparsable name: expected <layer>/<x>/<y>.png"))
                continue
            out.append(_Candidate(prel, p, x, y, None))


def scan(root: Path, layer: str) -> tuple[list[_Candidate], list[Entry]]:
    """The tile files of a directory in any supported layout, and the entries it cannot use."""
    if not root.exists():
        raise TilesetError(f"{root} does not exist; give a directory of exported tiles")
    if not root.is_dir():
        raise TilesetError(f"{root} is not a directory; give the directory that holds the tiles")
    found: list[_Candidate] = []
    skipped: list[Entry] = []
    if (root / ORIGINAL_DIR).is_dir():
        _scan_flat(root / ORIGINAL_DIR, root, found, skipped)
    if (root / layer).is_dir() and layer != ORIGINAL_DIR:
        _scan_tree(root / layer, root, found, skipped)
    _scan_flat(root, root, found, skipped)
    if not found and not skipped:
        raise TilesetError(
            f"{root} holds no tiles: expected generations/<x>_<y>_<hash>.png (isometric-nyc's dataset), "
            f"{layer}/<x>/<y>.png or <x>_<y>.png files"
        )
    return found, skipped


def _manifest_shas(root: Path) -> dict[str, str]:
    """file → sha256 from this project's manifest.json, if the directory has one."""
    path = root / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != MANIFEST_FORMAT:
            return {}
        return {str(t["file"]): str(t["sha256"]) for t in data["tiles"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise TilesetError(f"{path} is not a readable tile-set manifest ({e}); fix or remove it") from None


def _pixels_problem(png: bytes, layer: str) -> str | None:
    """Why these (already decodable, right-size) pixels are not a usable tile of ``layer``, or None."""
    with Image.open(io.BytesIO(png)) as im:
        mode = im.mode
        has_alpha = mode in ("RGBA", "LA", "PA") or "transparency" in im.info
        rgba = np.asarray(im.convert("RGBA"))
    if layer != layers.GENERATION:
        return None
    if mode not in ("RGB", "RGBA", "P", "PA"):
        return f"PNG mode {mode} is not a colour image; a generation must be RGB or RGBA"
    if has_alpha:
        alpha = rgba[..., 3]
        if not alpha.any():
            return "blank: every pixel is fully transparent"
        clear = int(np.count_nonzero(alpha < 255))
        if clear:
            return f"{clear} pixel(s) are transparent; a generation must be opaque (flatten it onto its background)"
    rgb = rgba[..., :3].reshape(-1, 3)
    first = tuple(int(v) for v in rgb[0])
    if first in BLANK_RGB and bool((rgb == rgb[0]).all()):
        return "blank: every pixel is #{:02x}{:02x}{:02x}".format(*first)
    return None


def _check(
    c: _Candidate, png: bytes, manifest: dict[str, str], size: tuple[int, int], layer: str
) -> str | None:
    """Why file ``c`` cannot be imported, or None."""
    if c.name_hash is not None and original_hash(png) != c.name_hash[:8]:
        return (
            f"content does not match the hash in its name (md5 {original_hash(png)} ≠ {c.name_hash}): "
            "the file was changed or renamed after export"
        )
    want = manifest.get(c.name)
    if want is not None and want != sha256_hex(png):
        return "content does not match manifest.json's sha256: the file was changed after export"
    try:
        info = validate_png(png, expect_size=None, what="file")
    except StoreError as e:
        return str(e).removeprefix("file: ")
    if (info.width, info.height) != size:
        return f"image is {info.width}x{info.height} px; a quadrant of this map is {size[0]}x{size[1]} px"
    return _pixels_problem(png, layer)


def _duplicates(found: list[_Candidate]) -> tuple[list[_Candidate], list[Entry]]:
    by_key: dict[tuple[int, int], list[_Candidate]] = defaultdict(list)
    for c in found:
        by_key[(c.x, c.y)].append(c)
    keep, skipped = [], []
    for c in found:
        others = [o.name for o in by_key[(c.x, c.y)] if o is not c]
        if others:
            skipped.append(
                Entry(
                    c.name,
                    "skipped",
                    f"quadrant also in {', '.join(others)}; keep one file per quadrant",
                    c.x,
                    c.y,
                )
            )
        else:
            keep.append(c)
    return keep, skipped


def _camera(root: Path, cfg: MapConfig, ignore_camera: bool) -> tuple[dict[str, Any] | None, list[str]]:
    """The directory's generation_config.json (None if absent) and its camera mismatches."""
    path = root / CONFIG_NAME
    if not path.exists():
        return None, []
    data = read_generation_config(path)
    wrong = camera_mismatches(data, cfg)
    if wrong and not ignore_camera:
        raise CameraMismatchError(
            f"{path} describes another camera than this map's: {'; '.join(wrong)}. Import into a map with that "
            'camera (for the original\'s tiles: its seed and camera, projection = "legacy-flat"), or pass '
            "--ignore-camera to place the tiles under this map's keys anyway"
        )
    return data, wrong


def import_tiles(
    store: TileStore | None,
    directory: str | Path,
    map_config: MapConfig,
    *,
    layer: str = layers.GENERATION,
    dry_run: bool = False,
    ignore_camera: bool = False,
    now: datetime | None = None,
) -> ImportReport:
    """Import the tiles of ``directory`` into ``layer`` as new versions (never overwriting; same bytes: no-op).

    Raises ``TilesetError`` when the directory is missing, holds no tiles, or its camera is not this map's
    (``CameraMismatchError``; ``ignore_camera`` imports anyway and records the mismatch in provenance).
    ``store=None`` (dry runs only) stands for a store that does not exist yet.
    """
    if store is None and not dry_run:
        raise TilesetError("import_tiles needs a store to write to (None is only for dry runs)")
    root = Path(directory)
    found, entries = scan(root, layer)
    data, wrong = _camera(root, map_config, ignore_camera)
    report = ImportReport(str(root), layer, dry_run)
    if data is None:
        report.entries.append(Entry(CONFIG_NAME, "note", "absent: the tiles' camera was not checked"))
    elif wrong:
        report.entries.append(Entry(CONFIG_NAME, "note", "camera mismatch ignored: " + "; ".join(wrong)))
    manifest = _manifest_shas(root)
    found, dups = _duplicates(found)
    entries += dups
    geometry = MapGeometry(map_config)
    size = (map_config.quadrant_px, map_config.quadrant_px)
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    base = {
        "source": "imported",
        "seed": None,  # the model's seed: the original never recorded it
        "map_seed": data["seed"] if data else None,
        "projection": map_config.projection,
        "imported_at": stamp,
        **({"camera_mismatch": wrong} if wrong else {}),
    }
    writes: list[tuple[Entry, TileWrite]] = []
    for c in found:
        entry, write = _prepare(store, geometry, c, manifest, size, layer, base)
        if write is not None:
            writes.append((entry, write))
        if write is None or dry_run:
            entries.append(entry)
    if store is not None and not dry_run:
        entries += _commit(store, writes, size)
    report.entries += sorted(entries, key=lambda e: e.file)
    return report


def _prepare(
    store: TileStore | None,
    geometry: MapGeometry,
    c: _Candidate,
    manifest: dict[str, str],
    size: tuple[int, int],
    layer: str,
    base: dict[str, Any],
) -> tuple[Entry, TileWrite | None]:
    """The report entry for file ``c`` and, when it is to be written, its tile write."""
    try:
        geometry.check_quadrant(c.x, c.y)
    except GeometryError as e:
        return Entry(c.name, "skipped", str(e), c.x, c.y), None
    try:
        png = c.path.read_bytes()
    except OSError as e:
        return Entry(c.name, "skipped", f"cannot be read ({e.strerror or e})", c.x, c.y), None
    problem = _check(c, png, manifest, size, layer)
    if problem is not None:
        return Entry(c.name, "skipped", problem, c.x, c.y), None
    sha = sha256_hex(png)
    active = None if store is None else store.active(layer, c.x, c.y)
    if active is not None and active.sha256 == sha:
        return Entry(c.name, "unchanged", f"already the active version {active.version}", c.x, c.y), None
    detail = f"replaces active version {active.version}" if active is not None else "new quadrant"
    prov = {**base, "file": c.name, "sha256": sha}
    return Entry(c.name, "would import", detail, c.x, c.y), TileWrite(layer, c.x, c.y, png, prov)


def _batches(items: list[tuple[Entry, TileWrite]]) -> Iterator[list[tuple[Entry, TileWrite]]]:
    for i in range(0, len(items), BATCH):
        yield items[i : i + BATCH]


def _commit(store: TileStore, writes: list[tuple[Entry, TileWrite]], size: tuple[int, int]) -> list[Entry]:
    out: list[Entry] = []
    for batch in _batches(writes):
        versions = store.put_tiles([w for _, w in batch], expect_size=size)
        for (e, _), v in zip(batch, versions, strict=True):
            detail = f"version {v.version} ({e.detail})"
            out.append(Entry(e.file, "imported", detail, e.x, e.y, v.version))
    return out
