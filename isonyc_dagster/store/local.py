"""Tile store on local disk: content-addressed blob files plus a SQLite index.

Layout under ``root``::

    blobs/ab/cd/<sha256>.<ext>   immutable bytes, written temp-file + fsync + rename (+ directory fsync)
    index.sqlite                 versions, active pointers, quadrant flags, schema migrations (WAL)

Order of a tile write: validate every PNG, write the blobs, then insert the versions and flip the active
pointers in one ``BEGIN IMMEDIATE`` transaction. A blob without an index row is invisible (and harmless),
so a crash at any point leaves either the old state or the new one, never half of it.

Concurrency: one SQLite connection per thread (and per process after a fork); processes serialise their
writes through SQLite's lock (``busy_timeout`` 30 s). The index logic lives in :class:`SqliteIndex` so the
GCS store reuses it for its local replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from isonyc_dagster.store._png import (
    PreparedWrite,
    check_ext,
    check_key,
    check_keys,
    check_layer,
    check_sha,
    check_xy,
    prepare_writes,
    sha256_hex,
    validate_png,
)
from isonyc_dagster.store.base import QuadrantFlags, StoreError, TileStore, TileVersion, TileWrite, Water

BUSY_TIMEOUT_S = 30.0

#: Ordered schema migrations: (version, description, statements). Never edit a released entry; append.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "tile versions and active pointers",
        (
            """CREATE TABLE tile_versions (
                layer TEXT NOT NULL,
                x INTEGER NOT NULL,
                y INTEGER NOT NULL,
                version INTEGER NOT NULL CHECK (version >= 1),
                sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
                created_at REAL NOT NULL,
                provenance TEXT NOT NULL CHECK (json_valid(provenance)),
                PRIMARY KEY (layer, x, y, version)
            ) WITHOUT ROWID""",
            # Keyed by (layer, x, y): at most one active version per tile by construction, and the key is
            # the index that bbox queries (layer = ?, x BETWEEN, y BETWEEN) range-scan.
            """CREATE TABLE active_tiles (
                layer TEXT NOT NULL,
                x INTEGER NOT NULL,
                y INTEGER NOT NULL,
                version INTEGER NOT NULL,
                PRIMARY KEY (layer, x, y),
                FOREIGN KEY (layer, x, y, version) REFERENCES tile_versions (layer, x, y, version)
            ) WITHOUT ROWID""",
        ),
    ),
    (
        2,
        "quadrant flags",
        (
            # At most one row per quadrant (~50k for all NYC): filtered list_flags scans are sub-millisecond
            # to a few ms, so no secondary indexes to maintain.
            """CREATE TABLE quadrant_flags (
                x INTEGER NOT NULL,
                y INTEGER NOT NULL,
                water INTEGER NOT NULL DEFAULT -1 CHECK (water IN (-1, 0, 1, 2)),
                starred INTEGER NOT NULL DEFAULT 0 CHECK (starred IN (0, 1)),
                flagged INTEGER NOT NULL DEFAULT 0 CHECK (flagged IN (0, 1)),
                reference INTEGER NOT NULL DEFAULT 0 CHECK (reference IN (0, 1)),
                updated_at REAL NOT NULL,
                PRIMARY KEY (x, y)
            ) WITHOUT ROWID""",
        ),
    ),
    (
        3,
        "replica bookkeeping (GCS store: applied transaction-log entries, key/value metadata)",
        (
            """CREATE TABLE replica_log (
                seq INTEGER PRIMARY KEY,
                txn TEXT NOT NULL UNIQUE,
                applied_at REAL NOT NULL
            )""",
            """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_VERSION_COLS = "v.layer, v.x, v.y, v.version, v.sha256, v.created_at, v.provenance"
# SQLite's default limit is 32766 bound variables; 2 per key + the layer keeps well under it.
_IN_CHUNK = 4000


def _row_to_version(row: Sequence[Any], active: bool) -> TileVersion:
    layer, x, y, version, sha, created_at, prov = row[:7]
    return TileVersion(layer, x, y, version, sha, created_at, json.loads(prov), active)


def _fsync_dir(path: Path) -> None:
    # The rename is only durable once the directory entry is; without this a power cut after the index
    # commit could leave an index row pointing at a blob name that never reached the disk.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: Path) -> None:
    """mkdir -p that makes each newly created directory entry durable."""
    if path.is_dir():
        return
    _ensure_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise StoreError(
                f"{path} exists and is not a directory; remove it or pick another store root"
            ) from None
        return
    _fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same dir, fsync, rename, fsync the dir."""
    _ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; tile servers and exporters run as other users
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class SqliteIndex:
    """The versioned tile index in one SQLite file (thread- and process-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _ensure_dir(self.path.parent)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._epoch = 0  # bumped by close(): thread-local connections from before are dropped
        self._migrate()

    # --- connections ------------------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (a new one after fork: SQLite connections must not cross processes)."""
        key = (os.getpid(), self._epoch)
        if getattr(self._local, "key", None) != key:
            self._local.conn = self._connect()
            self._local.key = key
        return self._local.conn

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves; check_same_thread=False only so that
            # close() can close other threads' connections — each one is still used by its own thread.
            c = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            _enable_wal(c)
            c.execute("PRAGMA synchronous = NORMAL")
            c.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open tile index {self.path}: {exc}; is it a SQLite file?") from exc
        with self._lock:
            self._conns.append(c)
        return c

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            self._epoch += 1
        for c in conns:
            with contextlib.suppress(sqlite3.Error):
                c.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception)."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    # --- schema -----------------------------------------------------------------------------------
    def schema_version(self, c: sqlite3.Connection | None = None) -> int:
        c = c or self.conn()
        row = c.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return row[0] or 0

    def _migrate(self) -> None:
        c = self.conn()
        c.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        if self.schema_version(c) == SCHEMA_VERSION:
            return
        with self.transaction() as t:  # re-read under the write lock: another process may be migrating
            current = self.schema_version(t)
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"tile index {self.path} has schema version {current}, newer than this code understands "
                    f"({SCHEMA_VERSION}); upgrade isonyc-dagster"
                )
            for version, description, statements in MIGRATIONS:
                if version <= current:
                    continue
                for sql in statements:
                    t.execute(sql)
                t.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                    (version, description, time.time()),
                )

    # --- tile reads -------------------------------------------------------------------------------
    def active(self, layer: str, x: int, y: int, c: sqlite3.Connection | None = None) -> TileVersion | None:
        row = (
            (c or self.conn())
            .execute(
                f"SELECT {_VERSION_COLS} FROM active_tiles a JOIN tile_versions v USING (layer, x, y, version) "
                "WHERE a.layer = ? AND a.x = ? AND a.y = ?",
                (layer, x, y),
            )
            .fetchone()
        )
        return None if row is None else _row_to_version(row, True)

    def versions(self, layer: str, x: int, y: int) -> list[TileVersion]:
        rows = (
            self.conn()
            .execute(
                f"SELECT {_VERSION_COLS}, a.version IS NOT NULL FROM tile_versions v "
                "LEFT JOIN active_tiles a USING (layer, x, y, version) "
                "WHERE v.layer = ? AND v.x = ? AND v.y = ? ORDER BY v.version",
                (layer, x, y),
            )
            .fetchall()
        )
        return [_row_to_version(r, bool(r[7])) for r in rows]

    def list_active(self, layer: str, bbox: tuple[int, int, int, int] | None = None) -> list[TileVersion]:
        sql = f"SELECT {_VERSION_COLS} FROM active_tiles a JOIN tile_versions v USING (layer, x, y, version) WHERE a.layer = ?"
        args: list[Any] = [layer]
        if bbox is not None:
            x0, y0, x1, y1 = bbox
            sql += " AND a.x BETWEEN ? AND ? AND a.y BETWEEN ? AND ?"
            args += [x0, x1, y0, y1]
        rows = self.conn().execute(sql + " ORDER BY a.x, a.y", args).fetchall()
        return [_row_to_version(r, True) for r in rows]

    def active_map(self, layer: str, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], TileVersion]:
        wanted = set(keys)
        if not wanted:
            return {}
        xs = [k[0] for k in wanted]
        ys = [k[1] for k in wanted]
        bbox = (min(xs), min(ys), max(xs), max(ys))
        area = (bbox[2] - bbox[0] + 1) * (bbox[3] - bbox[1] + 1)
        if area <= 4 * len(wanted):
            # Dense request (the usual case: a map region): one indexed range scan, filtered here.
            return {(v.x, v.y): v for v in self.list_active(layer, bbox) if (v.x, v.y) in wanted}
        out: dict[tuple[int, int], TileVersion] = {}
        ordered = sorted(wanted)
        c = self.conn()
        for i in range(0, len(ordered), _IN_CHUNK):
            chunk = ordered[i : i + _IN_CHUNK]
            values = ",".join("(?, ?)" for _ in chunk)
            args: list[Any] = [v for k in chunk for v in k]
            rows = c.execute(
                f"WITH k(x, y) AS (VALUES {values}) SELECT {_VERSION_COLS} FROM k "
                "JOIN active_tiles a ON a.layer = ? AND a.x = k.x AND a.y = k.y "
                "JOIN tile_versions v ON v.layer = a.layer AND v.x = a.x AND v.y = a.y AND v.version = a.version",
                [*args, layer],
            ).fetchall()
            for r in rows:
                out[(r[1], r[2])] = _row_to_version(r, True)
        return out

    # --- tile writes (inside transaction()) ---------------------------------------------------------
    def plan_put(self, c: sqlite3.Connection, w: PreparedWrite) -> TileVersion | int:
        """The active version if ``w`` is a no-op rewrite of it, else the version number ``w`` will get."""
        row = c.execute(
            f"SELECT {_VERSION_COLS} FROM active_tiles a JOIN tile_versions v USING (layer, x, y, version) "
            "WHERE a.layer = ? AND a.x = ? AND a.y = ?",
            (w.layer, w.x, w.y),
        ).fetchone()
        # Stored provenance is canonical JSON (prepare_writes), so text equality is dict equality.
        if row is not None and row[4] == w.sha256 and row[6] == w.provenance_json:
            return _row_to_version(row, True)
        row = c.execute(
            "SELECT max(version) FROM tile_versions WHERE layer = ? AND x = ? AND y = ?", (w.layer, w.x, w.y)
        ).fetchone()
        return (row[0] or 0) + 1

    def insert_version(
        self,
        c: sqlite3.Connection,
        layer: str,
        x: int,
        y: int,
        version: int,
        sha256: str,
        created_at: float,
        provenance_json: str,
    ) -> None:
        """Add a version and make it active."""
        c.execute(
            "INSERT INTO tile_versions (layer, x, y, version, sha256, created_at, provenance) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (layer, x, y, version, sha256, created_at, provenance_json),
        )
        self.set_active(c, layer, x, y, version)

    def set_active(self, c: sqlite3.Connection, layer: str, x: int, y: int, version: int) -> None:
        c.execute(
            "INSERT INTO active_tiles (layer, x, y, version) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (layer, x, y) DO UPDATE SET version = excluded.version",
            (layer, x, y, version),
        )

    def check_version(self, c: sqlite3.Connection, layer: str, x: int, y: int, version: int) -> None:
        """``StoreError`` (naming the versions that do exist) unless ``version`` exists."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise StoreError(f"version must be an int, got {type(version).__name__} {version!r}")
        row = c.execute(
            "SELECT count(*), max(version), "
            "sum(version = ?) FROM tile_versions WHERE layer = ? AND x = ? AND y = ?",
            (version, layer, x, y),
        ).fetchone()
        if not row[2]:
            have = "it has no versions" if not row[0] else f"it has versions 1..{row[1]}"
            raise StoreError(f"tile {layer} ({x},{y}) has no version {version}; {have}")

    # --- flags --------------------------------------------------------------------------------------
    def flags(self, x: int, y: int, c: sqlite3.Connection | None = None) -> QuadrantFlags:
        row = (
            (c or self.conn())
            .execute(
                "SELECT water, starred, flagged, reference FROM quadrant_flags WHERE x = ? AND y = ?", (x, y)
            )
            .fetchone()
        )
        if row is None:
            return QuadrantFlags(x, y)
        return QuadrantFlags(x, y, Water(row[0]), bool(row[1]), bool(row[2]), bool(row[3]))

    def merge_flags(
        self,
        c: sqlite3.Connection,
        x: int,
        y: int,
        *,
        water: Water | None,
        starred: bool | None,
        flagged: bool | None,
        reference: bool | None,
    ) -> QuadrantFlags:
        cur = self.flags(x, y, c)
        new = QuadrantFlags(
            x,
            y,
            cur.water if water is None else Water(water),
            cur.starred if starred is None else starred,
            cur.flagged if flagged is None else flagged,
            cur.reference if reference is None else reference,
        )
        c.execute(
            "INSERT INTO quadrant_flags (x, y, water, starred, flagged, reference, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (x, y) DO UPDATE SET water = excluded.water, "
            "starred = excluded.starred, flagged = excluded.flagged, reference = excluded.reference, "
            "updated_at = excluded.updated_at",
            (x, y, int(new.water), int(new.starred), int(new.flagged), int(new.reference), time.time()),
        )
        return new

    def list_flags(
        self, *, reference: bool | None = None, starred: bool | None = None, flagged: bool | None = None
    ) -> list[QuadrantFlags]:
        sql = "SELECT x, y, water, starred, flagged, reference FROM quadrant_flags WHERE 1"
        args: list[Any] = []
        for col, val in (("reference", reference), ("starred", starred), ("flagged", flagged)):
            if val is not None:
                sql += f" AND {col} = ?"
                args.append(int(bool(val)))
        rows = self.conn().execute(sql + " ORDER BY x, y", args).fetchall()
        return [QuadrantFlags(r[0], r[1], Water(r[2]), bool(r[3]), bool(r[4]), bool(r[5])) for r in rows]

    # --- metadata -----------------------------------------------------------------------------------
    def meta_get(self, key: str, c: sqlite3.Connection | None = None) -> str | None:
        row = (c or self.conn()).execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def meta_set(self, c: sqlite3.Connection, key: str, value: str) -> None:
        c.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def check_flag_args(
    water: Water | None, starred: bool | None, flagged: bool | None, reference: bool | None
) -> Water | None:
    """Validate ``set_flags`` arguments; returns ``water`` as a ``Water`` (or ``None``)."""
    for name, val in (("starred", starred), ("flagged", flagged), ("reference", reference)):
        if val is not None and not isinstance(val, bool):
            raise StoreError(f"{name} must be True, False or None, got {val!r}")
    if water is None:
        return None
    if isinstance(water, bool):
        raise StoreError(f"water must be a Water value, got {water!r}")
    try:
        return Water(water)
    except ValueError:
        raise StoreError(
            f"water must be one of {[f'{w.name}={w.value}' for w in Water]}, got {water!r}"
        ) from None


def check_bbox(bbox: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    if bbox is None:
        return None
    try:
        x0, y0, x1, y1 = bbox
        (x0, y0), (x1, y1) = check_xy(x0, y0), check_xy(x1, y1)
    except (TypeError, ValueError, StoreError) as exc:
        raise StoreError(f"bbox must be (x0, y0, x1, y1) ints, got {bbox!r}") from exc
    if x0 > x1 or y0 > y1:
        raise StoreError(f"bbox {bbox} is empty: need x0 <= x1 and y0 <= y1 (inclusive bounds)")
    return x0, y0, x1, y1


class LocalTileStore(TileStore):
    """Tile store in a local directory (see the module docstring for the layout and guarantees)."""

    def __init__(self, root: str | Path, *, tile_size: tuple[int, int] | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"tile store root {self.root} is a file; pass a directory path")
        if tile_size is not None:
            self.tile_size = tuple(tile_size)  # type: ignore[assignment]
        self.blob_dir = self.root / "blobs"
        _ensure_dir(self.blob_dir)
        self._index = SqliteIndex(self.root / "index.sqlite")

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
        atomic_write(p, data)

    def put_blob(self, data: bytes, *, ext: str = "png") -> str:
        check_ext(ext)
        data = bytes(data)
        if ext == "png":
            validate_png(data, expect_size=None, what="blob")
        sha = sha256_hex(data)
        self._write_blob(sha, ext, data)
        return sha

    def get_blob(self, sha256: str) -> bytes:
        return self.path_for_blob(sha256).read_bytes()

    def has_blob(self, sha256: str) -> bool:
        return self._find_blob(sha256) is not None

    def path_for_blob(self, sha: str) -> Path:
        """File path of a blob (for viewers/exporters that want paths); ``StoreError`` if unknown."""
        p = self._find_blob(sha)
        if p is None:
            raise StoreError(f"blob {sha} not found in {self.blob_dir}; was it written to another store?")
        return p

    # --- tiles ------------------------------------------------------------------------------------
    def put_tiles(
        self, writes: Sequence[TileWrite], *, expect_size: tuple[int, int] | None = None
    ) -> list[TileVersion]:
        prepared = prepare_writes(writes, expect_size=expect_size or self.tile_size)
        for p in prepared:
            self._write_blob(p.sha256, "png", p.png)
        return self._commit(prepared)

    def _commit(self, prepared: list[PreparedWrite]) -> list[TileVersion]:
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

    def active(self, layer: str, x: int, y: int) -> TileVersion | None:
        layer, x, y = check_key(layer, x, y)
        return self._index.active(layer, x, y)

    def versions(self, layer: str, x: int, y: int) -> list[TileVersion]:
        layer, x, y = check_key(layer, x, y)
        return self._index.versions(layer, x, y)

    def activate(self, layer: str, x: int, y: int, version: int) -> TileVersion:
        layer, x, y = check_key(layer, x, y)
        with self._index.transaction() as c:
            self._index.check_version(c, layer, x, y, version)
            self._index.set_active(c, layer, x, y, version)
            v = self._index.active(layer, x, y, c)
        assert v is not None
        return v

    def list_active(self, layer: str, *, bbox: tuple[int, int, int, int] | None = None) -> list[TileVersion]:
        check_layer(layer)
        return self._index.list_active(layer, check_bbox(bbox))

    def active_map(self, layer: str, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], TileVersion]:
        check_layer(layer)
        return self._index.active_map(layer, check_keys(keys))

    # --- flags ------------------------------------------------------------------------------------
    def flags(self, x: int, y: int) -> QuadrantFlags:
        x, y = check_xy(x, y)
        return self._index.flags(x, y)

    def set_flags(
        self,
        x: int,
        y: int,
        *,
        water: Water | None = None,
        starred: bool | None = None,
        flagged: bool | None = None,
        reference: bool | None = None,
    ) -> QuadrantFlags:
        x, y = check_xy(x, y)
        water = check_flag_args(water, starred, flagged, reference)
        with self._index.transaction() as c:
            return self._index.merge_flags(
                c, x, y, water=water, starred=starred, flagged=flagged, reference=reference
            )

    def list_flags(
        self, *, reference: bool | None = None, starred: bool | None = None, flagged: bool | None = None
    ) -> list[QuadrantFlags]:
        check_flag_args(None, starred, flagged, reference)
        return self._index.list_flags(reference=reference, starred=starred, flagged=flagged)

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

    def close(self) -> None:
        self._index.close()


def _enable_wal(c: sqlite3.Connection) -> None:
    """Switch a new index to WAL. WAL is persistent, so later connections only read the mode.

    Changing the journal mode needs an exclusive lock and SQLite returns "database is locked" at once, without its
    busy handler, when several processes open a fresh index together; so retry for up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            if c.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            c.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
