"""Tile store on local disk: content-addressed blob files, a SQLite index and a commit journal.

Layout under ``root``::

    blobs/ab/cd/<sha256>.<ext>   immutable bytes, written temp-file + fsync + rename (+ directory fsync)
    index.sqlite                 versions, active pointers, quadrant flags, schema migrations (WAL)
    journal.jsonl                every committed version (with provenance), activation and flag change
                                 (``journal.py``): the index can be rebuilt from the directory alone

Order of a tile write: validate every PNG, write the blobs, then, in one ``BEGIN IMMEDIATE`` transaction,
insert the versions and flip the active pointers, append the transaction to the journal (fsynced), commit.
A blob without an index row is invisible (and harmless), so a crash at any point leaves either the old state
or the new one, never half of it; the journal is never behind the index.

Integrity: every read checks the blob against its sha256 (a corrupt file is an error naming the tile, never
returned); writing a blob whose file exists but holds other bytes replaces the file. Opening a store whose
index is missing, empty or behind the journal while blobs are present is an error that names
``isonyc store rebuild-index``; it never silently starts an empty index. ``close()`` and ``checkpoint()`` fold
the WAL into ``index.sqlite``. Temp files of killed writers are swept on open (at most hourly, only files an
hour old, so a live writer's file is never touched).

Read-only: ``LocalTileStore(root, read_only=True)``, or automatically when this user cannot write ``root``:
SQLite is opened read-only and every write raises ``ReadOnlyStoreError``.

Concurrency: the index is a :class:`~isonyc_dagster.store.index.SqliteIndex` (one connection per thread and
process, writers serialised by SQLite's lock, which also orders the journal's appends); blob writes are atomic
renames of content-addressed files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from isonyc_dagster.fileio import atomic_write, fsync_dir
from isonyc_dagster.store.base import FlagUpdate, QuadrantFlags, StoreError, TileVersion
from isonyc_dagster.store.index import IndexedTileStore, SqliteIndex, ensure_dir, move_index_aside, put_op
from isonyc_dagster.store.journal import JOURNAL_NAME, Journal, Position, lost_index_error, set_position
from isonyc_dagster.store.validate import PreparedWrite, check_sha

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"
#: Temp files younger than this may belong to a live writer and are never swept.
TEMP_MAX_AGE_S = 3600.0
#: Sweep on open at most this often: walking a city's blob tree costs seconds.
SWEEP_EVERY_S = 3600.0
_SWEEP_MARKER = ".temp-sweep"


class LocalTileStore(IndexedTileStore):
    """Tile store in a local directory (see the module docstring for the layout and guarantees)."""

    def __init__(
        self, root: str | Path, *, tile_size: tuple[int, int] | None = None, read_only: bool = False
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.location = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"tile store root {self.root} is a file; pass a directory path")
        self.blob_dir = self.root / "blobs"
        self.journal = Journal(self.root / JOURNAL_NAME)
        index_path = self.root / INDEX_NAME
        reason = "opened with read_only=True"
        if not read_only and not _writable(self.root):
            read_only, reason = True, f"{self.root} is not writable by this user"
        self._check_index_present(index_path, read_only)
        if not read_only:
            ensure_dir(self.blob_dir)
        super().__init__(index_path, tile_size=tile_size, read_only=read_only, read_only_reason=reason)
        if read_only:
            self.journal.check_read_only(self._index)
        else:
            self.journal.attach(self._index)
            self._sweep_if_due()

    def __repr__(self) -> str:
        return f"LocalTileStore({str(self.root)!r})"

    def _check_index_present(self, index_path: Path, read_only: bool) -> None:
        """Refuse to start an empty index over a store that has history (the index was lost)."""
        if _file_size(index_path):
            return
        if self.journal.has_commits() or _has_blobs(self.blob_dir):
            size = _file_size(index_path)  # again: another process may have been creating a new store
            if not size:
                what = "is missing" if size is None else "is empty (0 bytes)"
                raise lost_index_error(self.root, what, self.journal)
        elif read_only:
            raise StoreError(
                f"no tile store at {self.root}: it has no {INDEX_NAME} (nothing was ever written there); "
                "open it read-write to create one"
            )

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

    def _blobs_where(self) -> str:
        return str(self.blob_dir)

    def _write_blob(self, sha256: str, ext: str, data: bytes) -> None:
        p = self._blob_path(sha256, ext)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            size = None
        if size == len(data):
            # Content-addressed, but a file can be damaged after it was written: compare, never trust.
            with contextlib.suppress(FileNotFoundError):
                if p.read_bytes() == data:
                    return
        if size is not None:
            log.warning(
                "tile store %s: blob file %s was damaged (%d bytes that are not its content); wrote it again",
                self.root,
                p,
                size,
            )
        ensure_dir(p.parent)  # before atomic_write: each new directory entry must be durable too
        atomic_write(p, data)

    def _read_blob_raw(self, sha256: str) -> tuple[str, bytes] | None:
        p = self._find_blob(sha256)
        if p is None:
            return None
        try:
            return str(p), p.read_bytes()
        except FileNotFoundError:  # removed between the lookup and the read (a repair)
            return None
        except OSError as exc:
            raise StoreError(f"cannot read blob file {p}: {exc}") from exc

    def _drop_blob(self, where: str) -> None:
        p = Path(where)
        p.unlink(missing_ok=True)
        fsync_dir(p.parent)

    def path_for_blob(self, sha: str) -> Path:
        """File path of a blob (for viewers/exporters that want paths); ``StoreError`` if unknown.

        The file is not checked here: read it through ``get_blob`` to have its content verified.
        """
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
        ops: list[dict[str, Any]] = []
        with self._index.transaction() as c:
            self.journal.catch_up(self._index, c)
            for p in prepared:
                plan = self._index.plan_put(c, p)
                if isinstance(plan, TileVersion):
                    out.append(plan)
                    continue
                self._index.insert_version(c, p.layer, p.x, p.y, plan, p.sha256, now, p.provenance_json)
                ops.append(put_op(p, plan))
                out.append(TileVersion(p.layer, p.x, p.y, plan, p.sha256, now, p.provenance, True))
            if ops:
                self.journal.append(self._index, c, ops, now)
        return out

    def _activate(self, layer: str, x: int, y: int, version: int) -> TileVersion:
        with self._index.transaction() as c:
            self.journal.catch_up(self._index, c)
            target = self._index.get_version(c, layer, x, y, version)
            if not target.active:
                self._index.set_active(c, layer, x, y, version)
                op = {"op": "activate", "layer": layer, "x": x, "y": y, "version": version}
                self.journal.append(self._index, c, [op], time.time())
        return dataclasses.replace(target, active=True)

    def _deactivate(self, layer: str, x: int, y: int) -> TileVersion | None:
        with self._index.transaction() as c:
            self.journal.catch_up(self._index, c)
            current = self._index.active(layer, x, y, c)
            if current is not None:
                self._index.clear_active(c, layer, x, y)
                op = {"op": "deactivate", "layer": layer, "x": x, "y": y}
                self.journal.append(self._index, c, [op], time.time())
        return current

    # --- flags ------------------------------------------------------------------------------------
    def _commit_flags(self, x: int, y: int, update: FlagUpdate) -> QuadrantFlags:
        with self._index.transaction() as c:
            self.journal.catch_up(self._index, c)
            cur = self._index.flags(x, y, c)
            had_row = self._index.has_flags_row(c, x, y)
            new = self._index.merge_flags(c, x, y, update)
            if new != cur or not had_row:
                op = {
                    "op": "flags",
                    "x": x,
                    "y": y,
                    "water": int(new.water),
                    "starred": new.starred,
                    "flagged": new.flagged,
                    "reference": new.reference,
                }
                self.journal.append(self._index, c, [op], time.time())
            return new

    # --- housekeeping -----------------------------------------------------------------------------
    def remove_stale_temp_files(self, older_than_s: float = TEMP_MAX_AGE_S) -> int:
        """Delete temp files left by writers that crashed mid-blob-write; returns how many were removed.

        Temp names (``.<name>.<random>.tmp``) never match a blob lookup, so they are invisible, only wasted
        space. Files younger than ``older_than_s`` may belong to a live writer and are kept. Temp files in the
        store root (an interrupted journal rewrite or index rebuild) are swept too.
        """
        self._require_writable("remove temp files")
        cutoff = time.time() - older_than_s
        # The blob tree, and the root's own temp files (a journal rewrite, an index rebuild and its -wal).
        found = [(Path(d), names) for d, _dirs, names in os.walk(self.blob_dir)]
        found.append((self.root, [n for n in os.listdir(self.root) if ".tmp-" in n or n.endswith(".tmp")]))
        removed = 0
        for dirpath, names in found:
            for name in names:
                if name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name):
                    p = dirpath / name
                    with contextlib.suppress(FileNotFoundError):
                        if p.stat().st_mtime < cutoff:
                            p.unlink()
                            removed += 1
        return removed

    def _check_history(self) -> str:
        return self.journal.check_against(self._index)

    def _sweep_if_due(self) -> None:
        """``remove_stale_temp_files`` on open, at most every ``SWEEP_EVERY_S`` per store (a marker file)."""
        marker = self.root / _SWEEP_MARKER
        with contextlib.suppress(FileNotFoundError):
            if time.time() - marker.stat().st_mtime < SWEEP_EVERY_S:
                return
        marker.touch()  # first: concurrent openers skip the walk
        removed = self.remove_stale_temp_files(TEMP_MAX_AGE_S)
        if removed:
            log.warning("tile store %s: removed %d temp files of killed writers", self.root, removed)

    def close(self) -> None:
        super().close()
        self.journal.close()


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _has_blobs(blob_dir: Path) -> bool:
    try:
        with os.scandir(blob_dir) as it:
            return any(not e.name.startswith(".") for e in it)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _writable(root: Path) -> bool:
    """Whether this user can create and change the store's files under ``root``."""
    p = root
    while not p.exists() and p != p.parent:
        p = p.parent
    if not os.access(p, os.W_OK | os.X_OK):
        return False
    return all(not f.exists() or os.access(f, os.W_OK) for f in (root / INDEX_NAME, root / "blobs"))


def rebuild_local_index(root: str | Path) -> dict[str, Any]:
    """Rebuild ``<root>/index.sqlite`` from ``<root>/journal.jsonl``; returns a summary.

    The new index is built in a temp file and renamed into place; an existing index (with its ``-wal`` and
    ``-shm``) is moved aside as ``index.sqlite.replaced-<time>``, never deleted. A torn tail of the journal (an
    append that never committed) is dropped. Stop every writer of the store first.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise StoreError(f"no tile store at {root}: not a directory")
    if not _writable(root):
        raise StoreError(f"cannot rebuild the index of {root}: this user cannot write there")
    journal = Journal(root / JOURNAL_NAME)
    if journal.size() is None:
        raise StoreError(
            f"{root} has no commit journal ({JOURNAL_NAME}): nothing to rebuild the index from. It was "
            f"written before journals existed; restore {INDEX_NAME} from a backup"
        )
    jid, scan = journal.read_all()
    index_path = root / INDEX_NAME
    tmp = root / f".{INDEX_NAME}.rebuild-{uuid.uuid4().hex[:8]}.tmp"
    try:
        idx = SqliteIndex(tmp)
        try:
            with idx.transaction() as c:
                for t in scan.txns:
                    where = f"commit journal {journal.path} transaction {t.txn}"
                    for op in t.ops:
                        idx.apply_op(c, op, op["at"], where=where)
                set_position(idx, c, Position(jid, scan.txns[-1].txn if scan.txns else 0, scan.end))
                counts = {
                    name: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    for name, table in (
                        ("versions", "tile_versions"),
                        ("active_tiles", "active_tiles"),
                        ("flagged_quadrants", "quadrant_flags"),
                    )
                }
            idx.checkpoint()
        finally:
            idx.close()
        previous = move_index_aside(index_path, "replaced")
        os.replace(tmp, index_path)
        fsync_dir(root)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    if scan.end < scan.size:
        os.truncate(journal.path, scan.end)
    log.info("tile store %s: rebuilt %s from %s", root, INDEX_NAME, JOURNAL_NAME)
    return {
        "store": str(root),
        "journal": str(journal.path),
        "transactions": len(scan.txns),
        **counts,
        "torn_tail_bytes_dropped": scan.size - scan.end,
        "previous_index": None if previous is None else str(previous),
    }
