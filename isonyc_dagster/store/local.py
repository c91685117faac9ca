"""Tile store on local disk: content-addressed blob files plus a SQLite index.

Layout under ``root``::

    blobs/ab/cd/<sha256>.<ext>   immutable bytes, written temp-file + fsync + rename (+ directory fsync)
    index.sqlite                 versions, active pointers, quadrant flags, schema migrations (WAL)

Order of a tile write: validate every PNG, write the blobs, then insert the versions and flip the active
pointers in one ``BEGIN IMMEDIATE`` transaction. A blob without an index row is invisible (and harmless),
so a crash at any point leaves either the old state or the new one, never half of it.

Concurrency: the index is a :class:`~isonyc_dagster.store.index.SqliteIndex` (one connection per thread and
process, writers serialised by SQLite's lock); blob writes are atomic renames of content-addressed files.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.store.base import FlagUpdate, QuadrantFlags, StoreError, TileVersion
from isonyc_dagster.store.index import IndexedTileStore, SqliteIndex, ensure_dir
from isonyc_dagster.store.validate import PreparedWrite, check_sha, prepare_blob


class LocalTileStore(IndexedTileStore):
    """Tile store in a local directory (see the module docstring for the layout and guarantees)."""

    def __init__(self, root: str | Path, *, tile_size: tuple[int, int] | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"tile store root {self.root} is a file; pass a directory path")
        self.blob_dir = self.root / "blobs"
        ensure_dir(self.blob_dir)
        super().__init__(self.root / "index.sqlite", tile_size=tile_size)

    def __repr__(self) -> str:
        return f"LocalTileStore({str(self.root)!r})"

    # --- blobs ------------------------------------------------------------------------------------
    def _blob_path(self, sha256: str, ext: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256[2:4] / f"{sha256}.{ext}"

    def _find_blob(self, sha256: str) -> Path | None:
        check_sha(sha256)
        p = self._blob_path(sha256, "png")
        if p.is_file():
            return p
        # Non-PNG blobs (.npz buffers, ...): the directory holds a handful of files, so a scan is cheap
        # and saves a blob table in the index.
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(p.parent):
                if entry.name.startswith(sha256 + ".") and not entry.name.endswith(".tmp"):
                    return Path(entry.path)
        return None

    def _write_blob(self, sha256: str, ext: str, data: bytes) -> None:
        p = self._blob_path(sha256, ext)
        if p.is_file():  # content-addressed: an existing file already holds exactly these bytes
            return
        ensure_dir(p.parent)  # before atomic_write: each new directory entry must be durable too
        atomic_write(p, data)

    def put_blob(self, data: bytes, *, ext: str = "png") -> str:
        data, sha = prepare_blob(data, ext)
        self._write_blob(sha, ext, data)
        return sha

    def get_blob(self, sha256: str) -> bytes:
        return self.path_for_blob(sha256).read_bytes()

    def path_for_blob(self, sha: str) -> Path:
        """File path of a blob (for viewers/exporters that want paths); ``StoreError`` if unknown."""
        p = self._find_blob(sha)
        if p is None:
            raise StoreError(f"blob {sha} not found in {self.blob_dir}; was it written to another store?")
        return p

    # --- tiles ------------------------------------------------------------------------------------
    def _fresh_index(self) -> SqliteIndex:
        return self._index  # every write commits to this very index

    def _put_prepared(self, prepared: list[PreparedWrite]) -> list[TileVersion]:
        for p in prepared:
            self._write_blob(p.sha256, "png", p.png)
        now = time.time()
        out: list[TileVersion] = []
        with self._index.transaction() as c:
            for p in prepared:
                plan = self._index.plan_put(c, p)
                if isinstance(plan, TileVersion):
                    out.append(plan)
                    continue
                self._index.insert_version(c, p.layer, p.x, p.y, plan, p.sha256, now, p.provenance_json)
                out.append(TileVersion(p.layer, p.x, p.y, plan, p.sha256, now, p.provenance, True))
        return out

    def _activate(self, layer: str, x: int, y: int, version: int) -> TileVersion:
        with self._index.transaction() as c:
            self._index.check_version(c, layer, x, y, version)
            self._index.set_active(c, layer, x, y, version)
            v = self._index.active(layer, x, y, c)
        assert v is not None
        return v

    # --- flags ------------------------------------------------------------------------------------
    def _commit_flags(self, x: int, y: int, update: FlagUpdate) -> QuadrantFlags:
        with self._index.transaction() as c:
            return self._index.merge_flags(c, x, y, update)

    # --- housekeeping -----------------------------------------------------------------------------
    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files left by writers that crashed mid-blob-write; returns how many were removed.

        Temp names (``.<name>.<random>.tmp``) never match a blob lookup, so they are invisible, only wasted
        space. Files younger than ``older_than_s`` may belong to a live writer and are kept.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for dirpath, _dirs, files in os.walk(self.blob_dir):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    p = Path(dirpath) / name
                    with contextlib.suppress(FileNotFoundError):
                        if p.stat().st_mtime < cutoff:
                            p.unlink()
                            removed += 1
        return removed
