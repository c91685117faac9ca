"""What a built pyramid records about itself: the tile manifest and the JSON sidecar.

    <out>/<name>.json                         sidecar: grid origin, map config, attribution, Dagster links
    <out>/.<name>.manifest.sqlite             input hash of every tile (for resume and incremental updates)

The sidecar is what the viewer, the PMTiles export and ``update_pyramid`` read to find the pyramid's grid,
format and layer again; the manifest is what lets a build skip the tiles whose inputs did not change.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.publish.layout import Format, PyramidError, PyramidLayout, tiles_dirname

__all__ = [
    "DEFAULT_ATTRIBUTION",
    "SIDECAR_VERSION",
    "PyramidMeta",
    "TileManifest",
    "TileRecord",
    "find_pyramid",
    "layout_from_sidecar",
    "make_sidecar",
    "parse_meta",
    "read_sidecar",
    "write_sidecar",
]

SIDECAR_VERSION = 1

DEFAULT_ATTRIBUTION = (
    "Building footprints: NYC OTI (NYC Open Data). Borough boundaries: NYC DCP. Parks: NYC Parks. "
    "Roads and lower-Manhattan buildings: © OpenStreetMap contributors (ODbL)."
)


# --------------------------------------------------------------------------------------------------
# the manifest of written tiles

TileRecord = tuple[str, int, int, int]  # input hash, and the file's mtime_ns, size and inode when written
TileRow = tuple[int, int, int, str, int, int, int]  # (level, col, row) + TileRecord


class TileManifest:
    """SQLite table of the input hash each tile file was written from, and that file's identity.

    The file identity (mtime_ns, size, inode: os.replace gives every write a new inode) makes a row
    prove what is on disk: a tile rewritten by a build that died before recording it no longer matches
    its row, so it is rebuilt instead of trusted. A hash alone could not tell."""

    _SCHEMA = 2

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if self._db.execute("PRAGMA user_version").fetchone()[0] != self._SCHEMA:
            self._db.execute("DROP TABLE IF EXISTS tiles")  # older layout: forget it, tiles get rebuilt
            self._db.execute(f"PRAGMA user_version={self._SCHEMA}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tiles (level INTEGER, col INTEGER, row INTEGER, hash TEXT NOT NULL,"
            " mtime_ns INTEGER, size INTEGER, inode INTEGER, PRIMARY KEY (level, col, row)) WITHOUT ROWID"
        )
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int, int], TileRecord | None] = {}
        self._complete = False

    @classmethod
    def of(cls, out_dir: Path, name: str) -> TileManifest:
        """The manifest of pyramid ``name`` in ``out_dir`` (created when missing)."""
        return cls(out_dir / f".{name}.manifest.sqlite")

    def preload(self) -> None:
        """Read every row now (a full build asks for all of them)."""
        with self._lock:
            self._cache = {
                (lv, c, r): (h, m, sz, ino)
                for lv, c, r, h, m, sz, ino in self._db.execute("SELECT * FROM tiles")
            }
            self._complete = True

    def get(self, key: tuple[int, int, int]) -> TileRecord | None:
        with self._lock:
            if key in self._cache or self._complete:
                return self._cache.get(key)
            row = self._db.execute(
                "SELECT hash, mtime_ns, size, inode FROM tiles WHERE level=? AND col=? AND row=?", key
            ).fetchone()
            rec: TileRecord | None = tuple(row) if row else None
            self._cache[key] = rec
            return rec

    def put_many(self, rows: list[TileRow]) -> None:
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
            for lv, c, r, h, m, sz, ino in rows:
                self._cache[(lv, c, r)] = (h, m, sz, ino)

    def all_keys(self) -> list[tuple[int, int, int]]:
        with self._lock:
            return list(self._db.execute("SELECT level, col, row FROM tiles"))

    def delete_many(self, keys: list[tuple[int, int, int]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM tiles WHERE level=? AND col=? AND row=?", keys)
            self._db.execute("COMMIT")
            for k in keys:
                self._cache.pop(k, None)

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------------------------------
# the sidecar


class PyramidMeta(BaseModel):
    """What the sidecar tells the viewer besides the grid. Passed to ``build_pyramid(meta=...)`` as a dict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    map: MapConfig = MapConfig()
    title: str | None = Field(default=None, description="page title; default: the map name")
    attribution: str = DEFAULT_ATTRIBUTION
    dagster_url: str | None = Field(
        default=None, description="Dagster UI base URL, e.g. http://127.0.0.1:3000"
    )
    dagster_asset: str | None = Field(
        default=None, description="asset key path for lineage links; default: the layer"
    )
    partition_key_template: str = Field(
        default="{x}|{y}", description="quadrant partition key, {x} and {y} filled in"
    )

    @field_validator("dagster_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("dagster_url must start with http:// or https:// (the Dagster UI base URL)")
        return v

    @field_validator("partition_key_template")
    @classmethod
    def _has_xy(cls, v: str) -> str:
        if "{x}" not in v or "{y}" not in v:
            raise ValueError("partition_key_template must contain both {x} and {y}, e.g. '{x}|{y}'")
        return v


def parse_meta(meta: dict[str, Any] | PyramidMeta | None) -> PyramidMeta:
    """``meta`` validated, or ``PyramidError`` naming every bad field."""
    if isinstance(meta, PyramidMeta):
        return meta
    try:
        return PyramidMeta.model_validate(meta or {})
    except ValidationError as e:
        msgs = "; ".join(f"meta.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise PyramidError(f"invalid pyramid meta: {msgs}") from None


def make_sidecar(
    name: str,
    layout: PyramidLayout,
    fmt: Format,
    layer: str,
    meta: PyramidMeta,
    built_at: str,
    updated_at: str,
) -> dict[str, Any]:
    """The sidecar of pyramid ``name`` as a JSON-ready dict."""
    return {
        "version": SIDECAR_VERSION,
        "name": name,
        "title": meta.title or meta.map.name,
        "dzi": f"{name}.dzi",
        "tiles": tiles_dirname(name),
        "format": fmt,
        "tile_size": layout.tile,
        "overlap": 0,
        "quadrant_px": layout.tile,
        "layer": layer,
        "grid": {
            "x0": layout.x0,
            "y0": layout.y0,
            "x1": layout.x1,
            "y1": layout.y1,
            "width": layout.grid.width,
            "height": layout.grid.height,
        },
        "image": {"width": layout.width, "height": layout.height},
        "max_level": layout.max_level,
        "levels": [
            {
                "level": li.level,
                "width": li.width,
                "height": li.height,
                "cols": li.cols,
                "rows": li.rows,
                "tiles": li.tiles,
            }
            for li in layout.levels()
        ],
        "map": meta.map.model_dump(mode="json"),
        "attribution": meta.attribution,
        "dagster": {
            "url": meta.dagster_url,
            "asset": meta.dagster_asset or layer,
            "partition_key_template": meta.partition_key_template,
        },
        "built_at": built_at,
        "updated_at": updated_at,
    }


def write_sidecar(out_dir: Path, side: dict[str, Any]) -> Path:
    """Write ``side`` as ``<name>.json`` in ``out_dir`` (durably: it is the last step of a build)."""
    path = out_dir / f"{side['name']}.json"
    atomic_write(path, json.dumps(side, indent=2).encode(), fsync=True)
    return path


def find_pyramid(out_dir: str | os.PathLike[str], name: str | None = None) -> str:
    """The pyramid name in ``out_dir`` (the one ``<name>.dzi`` with a sidecar), or ``PyramidError``."""
    out = Path(out_dir)
    if name is not None:
        if not (out / f"{name}.json").exists():
            raise PyramidError(f"no pyramid {name!r} in {out} ({name}.json missing); run build_pyramid first")
        return name
    names = sorted(p.stem for p in out.glob("*.dzi") if (out / f"{p.stem}.json").exists())
    if not names:
        raise PyramidError(
            f"{out} holds no DZI pyramid (no <name>.dzi + <name>.json); run build_pyramid first"
        )
    if len(names) > 1:
        raise PyramidError(f"{out} holds several pyramids {names}; pass name=")
    return names[0]


def read_sidecar(out_dir: str | os.PathLike[str], name: str | None = None) -> dict[str, Any]:
    """The JSON sidecar of a built pyramid."""
    name = find_pyramid(out_dir, name)
    path = Path(out_dir) / f"{name}.json"
    try:
        side: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PyramidError(f"sidecar {path} is not valid JSON ({e}); rebuild the pyramid") from e
    if side.get("version") != SIDECAR_VERSION:
        raise PyramidError(
            f"sidecar {path} has version {side.get('version')!r}, expected {SIDECAR_VERSION}; rebuild"
        )
    return side


def layout_from_sidecar(side: dict[str, Any]) -> PyramidLayout:
    """The layout a sidecar describes."""
    g = side["grid"]
    return PyramidLayout(g["x0"], g["y0"], g["x1"], g["y1"], tile=side["tile_size"])
