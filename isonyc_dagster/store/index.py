"""The versioned tile index in SQLite, and the store reads both backends answer from it.

The local store keeps its index here directly (with a commit journal next to it, ``journal.py``); the GCS
store keeps a replica of its transaction log here. Both replay their history through ``SqliteIndex.apply_op``.
Schema: ``tile_versions`` (every version), ``active_tiles`` (one active version per tile),
``quadrant_flags``, ``meta`` (the GCS replica's log position, the local journal's position), the GCS
replica's ``replica_log``, and ``schema_migrations``.

Concurrency: one SQLite connection per thread (and per process after a fork); processes serialise their
writes through SQLite's lock (``busy_timeout`` 30 s).

Read-only: ``SqliteIndex(path, read_only=True)`` opens SQLite with ``mode=ro``. In a directory nobody can write,
SQLite cannot create the ``-shm`` file a WAL reader needs; if no ``-wal`` file holds un-checkpointed commits
the index is then opened ``immutable`` (no writer can exist there, so nothing can change under the reader).
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from isonyc_dagster.fileio import fsync_dir
from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.store.base import (
    CorruptBlobError,
    FlagUpdate,
    QuadrantFlags,
    ReadOnlyStoreError,
    StoreError,
    TileStore,
    TileVersion,
    TileWrite,
    Water,
)
from isonyc_dagster.store.validate import (
    PreparedWrite,
    canonical_json,
    check_bbox,
    check_flag_args,
    check_key,
    check_keys,
    check_layer,
    check_sha,
    check_size,
    check_xy,
    prepare_blob,
    prepare_writes,
    sha256_hex,
)

log = logging.getLogger(__name__)

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
#: Tables holding the index's state, in insert order (foreign keys); deleted in reverse.
STATE_TABLES = ("tile_versions", "active_tiles", "quadrant_flags", "replica_log")

_VERSION_COLS = "v.layer, v.x, v.y, v.version, v.sha256, v.created_at, v.provenance"
_FLAG_COLS = "x, y, water, starred, flagged, reference"
_ACTIVE_SQL = (
    f"SELECT {_VERSION_COLS} FROM active_tiles a JOIN tile_versions v USING (layer, x, y, version) "
    "WHERE a.layer = ? AND a.x = ? AND a.y = ?"
)
# SQLite's default limit is 32766 bound variables; 2 per key + the layer keeps well under it.
_IN_CHUNK = 4000


def _row_to_version(row: Sequence[Any], active: bool) -> TileVersion:
    layer, x, y, version, sha, created_at, prov = row[:7]
    return TileVersion(layer, x, y, version, sha, created_at, json.loads(prov), active)


def _row_to_flags(row: Sequence[Any]) -> QuadrantFlags:
    x, y, water, starred, flagged, reference = row
    return QuadrantFlags(x, y, Water(water), bool(starred), bool(flagged), bool(reference))


def ensure_dir(path: Path) -> None:
    """mkdir -p that makes each newly created directory entry durable."""
    if path.is_dir():
        return
    ensure_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise StoreError(
                f"{path} exists and is not a directory; remove it or pick another store root"
            ) from None
        return
    fsync_dir(path.parent)


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


class SqliteIndex:
    """The versioned tile index in one SQLite file (thread- and process-safe)."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            ensure_dir(self.path.parent)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._epoch = 0  # bumped by close(): thread-local connections from before are dropped
        if read_only:
            self._check_schema()
        else:
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
            if self.read_only:
                c = self._connect_read_only()
            else:
                c = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
                )
                c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                _enable_wal(c)
                c.execute("PRAGMA synchronous = NORMAL")
            c.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open tile index {self.path}: {exc}; is it a SQLite file? If it was damaged, move it "
                f"aside and run `isonyc store rebuild-index --store {self.path.parent}`"
            ) from exc
        with self._lock:
            self._conns.append(c)
        return c

    def _connect_read_only(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        c = sqlite3.connect(
            f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        try:
            c.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the first read opens the WAL
            return c
        except sqlite3.OperationalError:
            c.close()
            if os.access(self.path.parent, os.W_OK):
                raise
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(
                f"cannot read tile index {self.path} read-only: {wal.name} holds commits that were never "
                f"checkpointed into it and {self.path.parent} is not writable (SQLite needs to create "
                f"{self.path.name}-shm to read them); have its owner run `isonyc store checkpoint --store "
                f"{self.path.parent}` (or open it read-write once) to fold them into the index"
            )
        # No writer can exist in a directory nobody can write (a WAL writer must create -wal), so the file
        # cannot change under us: immutable skips the locking that needs -shm.
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None, check_same_thread=False)

    def checkpoint(self, *, timeout_s: float = 5.0) -> dict[str, int]:
        """Copy the WAL into the index file and truncate the WAL; returns SQLite's counts.

        Uses its own short-lived connection (safe from any thread). Waits up to ``timeout_s`` for readers to
        finish; if some keep reading, what could be copied is copied and ``busy`` is 1. No-op when read-only.
        """
        if self.read_only or not self.path.exists():
            return {"busy": 0, "wal_frames": 0, "checkpointed": 0}
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)) as c:
                c.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
                busy, frames, done = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot checkpoint tile index {self.path}: {exc}") from exc
        return {"busy": int(busy), "wal_frames": int(frames), "checkpointed": int(done)}

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

    def _check_schema(self) -> None:
        """Read-only open: the index must already have this code's schema (migrating is a write)."""
        try:
            current = self.schema_version()
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"tile index {self.path} has no schema ({exc}); it was never written by isonyc-dagster"
            ) from exc
        if current != SCHEMA_VERSION:
            raise StoreError(
                f"tile index {self.path} has schema version {current}, this code uses {SCHEMA_VERSION}; "
                + (
                    "upgrade isonyc-dagster"
                    if current > SCHEMA_VERSION
                    else "open the store once read-write to migrate it"
                )
            )

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
        row = (c or self.conn()).execute(_ACTIVE_SQL, (layer, x, y)).fetchone()
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

    def list_active(self, layer: str, bbox: QuadRect | None = None) -> list[TileVersion]:
        sql = f"SELECT {_VERSION_COLS} FROM active_tiles a JOIN tile_versions v USING (layer, x, y, version) WHERE a.layer = ?"
        args: list[Any] = [layer]
        if bbox is not None:
            sql += " AND a.x BETWEEN ? AND ? AND a.y BETWEEN ? AND ?"
            args += [bbox.x0, bbox.x1, bbox.y0, bbox.y1]
        rows = self.conn().execute(sql + " ORDER BY a.x, a.y", args).fetchall()
        return [_row_to_version(r, True) for r in rows]

    def active_map(self, layer: str, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], TileVersion]:
        wanted = set(keys)
        if not wanted:
            return {}
        xs = [k[0] for k in wanted]
        ys = [k[1] for k in wanted]
        bbox = QuadRect(min(xs), min(ys), max(xs), max(ys))
        if bbox.area <= 4 * len(wanted):
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
        row = c.execute(_ACTIVE_SQL, (w.layer, w.x, w.y)).fetchone()
        # Stored provenance is canonical JSON (prepare_writes), so text equality is dict equality.
        if row is not None and row[4] == w.sha256 and row[6] == w.provenance_json:
            return _row_to_version(row, True)
        return self.latest_version(c, w.layer, w.x, w.y) + 1

    def latest_version(self, c: sqlite3.Connection, layer: str, x: int, y: int) -> int:
        """The highest version number of a tile, 0 if it has none."""
        row = c.execute(
            "SELECT max(version) FROM tile_versions WHERE layer = ? AND x = ? AND y = ?", (layer, x, y)
        ).fetchone()
        return row[0] or 0

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

    def get_version(self, c: sqlite3.Connection, layer: str, x: int, y: int, version: int) -> TileVersion:
        """One version of a tile; ``StoreError`` (as ``check_version``) if it does not exist."""
        self.check_version(c, layer, x, y, version)
        row = c.execute(
            f"SELECT {_VERSION_COLS}, a.version IS NOT NULL FROM tile_versions v "
            "LEFT JOIN active_tiles a USING (layer, x, y, version) "
            "WHERE v.layer = ? AND v.x = ? AND v.y = ? AND v.version = ?",
            (layer, x, y, version),
        ).fetchone()
        return _row_to_version(row, bool(row[7]))

    def clear_active(self, c: sqlite3.Connection, layer: str, x: int, y: int) -> None:
        """Remove a tile's active pointer (its versions stay): the tile reads as missing."""
        c.execute("DELETE FROM active_tiles WHERE layer = ? AND x = ? AND y = ?", (layer, x, y))

    def apply_op(self, c: sqlite3.Connection, op: dict[str, Any], created_at: float, *, where: str) -> None:
        """Replay one recorded operation (a GCS log op or a local journal line); ``where`` names its record.

        Ops: ``put`` (a new version, which becomes active), ``activate``, ``deactivate``, ``flags``.
        """
        kind = op.get("op")
        if kind == "put":
            latest = self.latest_version(c, op["layer"], op["x"], op["y"])
            if latest + 1 != op["version"]:
                raise StoreError(
                    f"{where} adds version {op['version']} of {op['layer']} ({op['x']},{op['y']}) but the index "
                    f"has {latest}; the history is damaged"
                )
            prov = canonical_json(op["provenance"], what=where)
            self.insert_version(
                c, op["layer"], op["x"], op["y"], op["version"], op["sha256"], created_at, prov
            )
        elif kind == "activate":
            self.check_version(c, op["layer"], op["x"], op["y"], op["version"])
            self.set_active(c, op["layer"], op["x"], op["y"], op["version"])
        elif kind == "deactivate":
            self.clear_active(c, op["layer"], op["x"], op["y"])
        elif kind == "flags":
            water = None if op.get("water") is None else Water(op["water"])
            update = FlagUpdate(water, op.get("starred"), op.get("flagged"), op.get("reference"))
            self.merge_flags(c, op["x"], op["y"], update)
        else:
            raise StoreError(f"{where} has unknown op {kind!r}; upgrade isonyc-dagster")

    def reset(self, c: sqlite3.Connection) -> None:
        """Delete every version, pointer, flag and replica entry (before replaying a history from scratch)."""
        for table in reversed(STATE_TABLES):
            c.execute(f"DELETE FROM {table}")

    def has_data(self, c: sqlite3.Connection | None = None) -> bool:
        """Whether the index holds any tile version or quadrant flags."""
        row = (
            (c or self.conn())
            .execute("SELECT EXISTS (SELECT 1 FROM tile_versions) OR EXISTS (SELECT 1 FROM quadrant_flags)")
            .fetchone()
        )
        return bool(row[0])

    def layers(self) -> list[str]:
        """Every layer that has a version."""
        return [r[0] for r in self.conn().execute("SELECT DISTINCT layer FROM tile_versions ORDER BY layer")]

    def all_versions(self, layer: str, *, active_only: bool) -> list[TileVersion]:
        """Every version (or only the active ones) of a layer, by x, y, version."""
        join = "JOIN" if active_only else "LEFT JOIN"
        rows = (
            self.conn()
            .execute(
                f"SELECT {_VERSION_COLS}, a.version IS NOT NULL FROM tile_versions v "
                f"{join} active_tiles a USING (layer, x, y, version) WHERE v.layer = ? "
                "ORDER BY v.x, v.y, v.version",
                (layer,),
            )
            .fetchall()
        )
        return [_row_to_version(r, bool(r[7])) for r in rows]

    def versions_of_blob(self, sha256: str, limit: int = 5) -> tuple[list[TileVersion], int]:
        """Up to ``limit`` tile versions stored as blob ``sha256`` (active ones first) and how many there are.

        A full scan (no index on sha256): only error paths call it.
        """
        c = self.conn()
        total = c.execute("SELECT count(*) FROM tile_versions WHERE sha256 = ?", (sha256,)).fetchone()[0]
        rows = c.execute(
            f"SELECT {_VERSION_COLS}, a.version IS NOT NULL AS act FROM tile_versions v "
            "LEFT JOIN active_tiles a USING (layer, x, y, version) WHERE v.sha256 = ? "
            "ORDER BY act DESC, v.layer, v.x, v.y, v.version LIMIT ?",
            (sha256, limit),
        ).fetchall()
        return [_row_to_version(r, bool(r[7])) for r in rows], int(total)

    # --- flags --------------------------------------------------------------------------------------
    def flags(self, x: int, y: int, c: sqlite3.Connection | None = None) -> QuadrantFlags:
        row = (
            (c or self.conn())
            .execute(f"SELECT {_FLAG_COLS} FROM quadrant_flags WHERE x = ? AND y = ?", (x, y))
            .fetchone()
        )
        return QuadrantFlags(x, y) if row is None else _row_to_flags(row)

    def has_flags_row(self, c: sqlite3.Connection, x: int, y: int) -> bool:
        """Whether quadrant (x, y) has a stored flags row (defaults are not stored until first set)."""
        return c.execute("SELECT 1 FROM quadrant_flags WHERE x = ? AND y = ?", (x, y)).fetchone() is not None

    def merge_flags(self, c: sqlite3.Connection, x: int, y: int, update: FlagUpdate) -> QuadrantFlags:
        new = update.apply(self.flags(x, y, c))
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
        sql = f"SELECT {_FLAG_COLS} FROM quadrant_flags WHERE 1"
        args: list[Any] = []
        for col, val in (("reference", reference), ("starred", starred), ("flagged", flagged)):
            if val is not None:
                sql += f" AND {col} = ?"
                args.append(int(bool(val)))
        rows = self.conn().execute(sql + " ORDER BY x, y", args).fetchall()
        return [_row_to_flags(r) for r in rows]

    # --- metadata -----------------------------------------------------------------------------------
    def meta_get(self, key: str, c: sqlite3.Connection | None = None) -> str | None:
        row = (c or self.conn()).execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def meta_set(self, c: sqlite3.Connection, key: str, value: str) -> None:
        c.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


class IndexedTileStore(TileStore):
    """A tile store whose index is a :class:`SqliteIndex`: argument checks and reads, shared by the backends.

    Every public tile and flag method checks its arguments here; a backend adds the blobs, ``_fresh_index``
    (the index, up to date for a read) and the commits of already-checked writes.

    Every blob read is checked against its name (sha256): corrupt bytes are never returned, and the error
    names the tile versions stored in that blob. A read-only store refuses every write with one
    :class:`ReadOnlyStoreError`.
    """

    #: Where the store lives (a directory or a ``gs://`` URI), for messages and reports.
    location: str = ""

    def __init__(
        self,
        index_path: Path,
        *,
        tile_size: tuple[int, int] | None,
        read_only: bool = False,
        read_only_reason: str = "opened with read_only=True",
        index_read_only: bool | None = None,
    ) -> None:
        if tile_size is not None:
            self.tile_size = check_size(tile_size, what="tile_size")
        self.read_only = bool(read_only)
        self._read_only_reason = read_only_reason
        self._index = SqliteIndex(
            index_path, read_only=self.read_only if index_read_only is None else index_read_only
        )

    # --- backend hooks ------------------------------------------------------------------------------
    @abc.abstractmethod
    def _fresh_index(self) -> SqliteIndex:
        """The index, brought up to date as far as the backend promises before a read."""

    @abc.abstractmethod
    def _put_prepared(self, prepared: list[PreparedWrite]) -> list[TileVersion]:
        """``put_tiles`` of a validated batch: store the blobs, then commit the versions all or nothing."""

    @abc.abstractmethod
    def _activate(self, layer: str, x: int, y: int, version: int) -> TileVersion:
        """``activate`` with a checked key; ``version`` is checked against the index inside the commit."""

    @abc.abstractmethod
    def _deactivate(self, layer: str, x: int, y: int) -> TileVersion | None:
        """``deactivate`` with a checked key."""

    @abc.abstractmethod
    def _commit_flags(self, x: int, y: int, update: FlagUpdate) -> QuadrantFlags:
        """``set_flags`` with checked arguments."""

    @abc.abstractmethod
    def _read_blob_raw(self, sha256: str) -> tuple[str, bytes] | None:
        """(where, bytes) of blob ``sha256`` as stored, unchecked; ``None`` if there is none."""

    @abc.abstractmethod
    def _write_blob(self, sha256: str, ext: str, data: bytes) -> None:
        """Store ``data`` (whose sha256 is ``sha256``); an existing copy that holds other bytes is replaced."""

    @abc.abstractmethod
    def _drop_blob(self, where: str) -> None:
        """Delete the stored copy ``where`` (as ``_read_blob_raw`` named it); used to remove corrupt copies."""

    @abc.abstractmethod
    def _blobs_where(self) -> str:
        """Where the blobs live, for messages."""

    # --- read-only ----------------------------------------------------------------------------------
    def _require_writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(
                f"the tile store at {self.location} is open read-only ({self._read_only_reason}); cannot "
                f"{what}: open it with read_only=False, as a user who can write there"
            )

    # --- blobs --------------------------------------------------------------------------------------
    def put_blob(self, data: bytes, *, ext: str = "png") -> str:
        self._require_writable("store a blob")
        data, sha = prepare_blob(data, ext)
        self._write_blob(sha, ext, data)
        return sha

    def get_blob(self, sha256: str) -> bytes:
        """Bytes of a blob, checked against its sha256; ``StoreError`` if missing, ``CorruptBlobError`` if not."""
        check_sha(sha256)
        found = self._read_blob_raw(sha256)
        if found is None:
            raise StoreError(
                f"blob {sha256} not found in {self._blobs_where()}; was it written to another store?"
            )
        where, data = found
        actual = sha256_hex(data)
        if actual != sha256:
            versions, total = self._index.versions_of_blob(sha256)
            raise CorruptBlobError(
                f"blob {sha256} is corrupt: {where} holds {len(data)} bytes whose sha256 is {actual}; "
                f"{_describe_users(versions, total)}. {_repair_hint(self.location)}",
                sha256=sha256,
                found_sha256=actual,
                where=where,
            )
        return data

    # --- checked entry points -----------------------------------------------------------------------
    def put_tiles(
        self, writes: Sequence[TileWrite], *, expect_size: tuple[int, int] | None = None
    ) -> list[TileVersion]:
        self._require_writable("write tiles")
        return self._put_prepared(prepare_writes(writes, expect_size=expect_size or self.tile_size))

    def activate(self, layer: str, x: int, y: int, version: int) -> TileVersion:
        self._require_writable("activate a version")
        return self._activate(*check_key(layer, x, y), version)

    def deactivate(self, layer: str, x: int, y: int) -> TileVersion | None:
        """Clear a tile's active pointer, so it reads as missing; returns the version that was active.

        Every version is kept: ``activate`` makes one active again. ``verify_store(repair=True)`` uses this
        when no intact version of a tile is left, so the quadrant is generated again.
        """
        self._require_writable("deactivate a tile")
        return self._deactivate(*check_key(layer, x, y))

    def _set_flags(self, x: int, y: int, update: FlagUpdate) -> QuadrantFlags:
        self._require_writable("set flags")
        return self._commit_flags(*check_xy(x, y), check_flag_args(update))

    def active(self, layer: str, x: int, y: int) -> TileVersion | None:
        layer, x, y = check_key(layer, x, y)
        return self._fresh_index().active(layer, x, y)

    def get_tile(self, layer: str, x: int, y: int) -> bytes | None:
        """PNG bytes of the active version, checked; the error of a missing or corrupt blob names the tile."""
        v = self.active(layer, x, y)
        return None if v is None else self.read_version(v)

    def read_version(self, v: TileVersion) -> bytes:
        """The bytes of tile version ``v``, checked against its sha256; errors name the tile and version."""
        what = f"tile {v.layer} ({v.x},{v.y}) version {v.version}{' (active)' if v.active else ''}"
        found = self._read_blob_raw(check_sha(v.sha256))
        if found is None:
            raise StoreError(
                f"{what}: its blob {v.sha256} is not found in {self._blobs_where()}. {_repair_hint(self.location)}"
            )
        where, data = found
        actual = sha256_hex(data)
        if actual != v.sha256:
            raise CorruptBlobError(
                f"{what} is corrupt: its blob {where} holds {len(data)} bytes whose sha256 is {actual}, not "
                f"{v.sha256}. {_repair_hint(self.location)}",
                sha256=v.sha256,
                found_sha256=actual,
                where=where,
            )
        return data

    def versions(self, layer: str, x: int, y: int) -> list[TileVersion]:
        layer, x, y = check_key(layer, x, y)
        return self._fresh_index().versions(layer, x, y)

    def list_active(self, layer: str, *, bbox: tuple[int, int, int, int] | None = None) -> list[TileVersion]:
        check_layer(layer)
        rect = check_bbox(bbox)
        return self._fresh_index().list_active(layer, rect)

    def active_map(self, layer: str, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], TileVersion]:
        check_layer(layer)
        wanted = check_keys(keys)
        return self._fresh_index().active_map(layer, wanted)

    def flags(self, x: int, y: int) -> QuadrantFlags:
        x, y = check_xy(x, y)
        return self._fresh_index().flags(x, y)

    def list_flags(
        self, *, reference: bool | None = None, starred: bool | None = None, flagged: bool | None = None
    ) -> list[QuadrantFlags]:
        check_flag_args(FlagUpdate(starred=starred, flagged=flagged, reference=reference))
        return self._fresh_index().list_flags(reference=reference, starred=starred, flagged=flagged)

    # --- housekeeping -------------------------------------------------------------------------------
    def _check_history(self) -> str:
        """Whether the history the index can be rebuilt from is intact: "ok" or the problem (``verify``)."""
        return "ok"

    def checkpoint(self) -> dict[str, int]:
        """Fold the index's write-ahead log into the index file and truncate it.

        Call at the end of each pipeline run (and ``close()`` does it): the index file then holds every
        commit by itself, which is what backups copy and what read-only readers of a directory they cannot
        write can see. Returns SQLite's counts (``busy`` 1 when readers kept part of the log alive).
        """
        return self._index.checkpoint()

    def close(self) -> None:
        if not self._index.read_only:
            try:
                self._index.checkpoint(timeout_s=1.0)
            except StoreError as exc:  # closing must not fail: the WAL is folded in by the next checkpoint
                log.warning("%s", exc)
        self._index.close()


def put_op(p: PreparedWrite, version: int) -> dict[str, Any]:
    """The recorded op (GCS log, local journal) that adds ``p`` as ``version`` of its tile."""
    return {
        "op": "put",
        "layer": p.layer,
        "x": p.x,
        "y": p.y,
        "version": version,
        "sha256": p.sha256,
        "provenance": p.provenance,
    }


def _describe_users(versions: list[TileVersion], total: int) -> str:
    """'it is tile L (x,y) version v (active)[, ...]' for the tile versions stored in one blob."""
    if not versions:
        return (
            "no tile version is stored in it (a template, model output or render buffer: storing that "
            "content again repairs it)"
        )
    names = [
        f"{v.layer} ({v.x},{v.y}) version {v.version}{' (active)' if v.active else ''}" for v in versions
    ]
    more = f" and {total - len(versions)} more" if total > len(versions) else ""
    return f"it is tile {', '.join(names)}{more}"


def _repair_hint(location: str) -> str:
    return (
        f"Run `isonyc store verify --repair --store {location}` to fall back to the newest intact version "
        "(or clear the tile so that it is generated again)"
    )


def move_index_aside(index_path: Path, why: str) -> Path | None:
    """Rename an SQLite index and its ``-wal``/``-shm`` out of the way (kept for inspection, never deleted);
    returns the index's new path, or None when there was none."""
    stamp = f"{why}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    dest = index_path.with_name(f"{index_path.name}.{stamp}")
    moved = None
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{index_path}{suffix}", f"{dest}{suffix}")
            moved = dest if suffix == "" else moved
    return moved
