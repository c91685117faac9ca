"""The local store's commit journal: every committed change as JSON lines next to the blobs.

``<root>/journal.jsonl`` lets the index be rebuilt from the store directory alone (``isonyc store
rebuild-index``). Line 1 is a header, ``{"journal": "isonyc-tile-store", "format": 1, "id": ..., ...}``; every
later line is one operation of one committed transaction, with the ops of the GCS store's log (one replay,
``SqliteIndex.apply_op``, serves both)::

    {"txn": 7, "i": 0, "n": 2, "at": 1733.2, "op": "put", "layer": "generation", "x": 3, "y": 4,
     "version": 2, "sha256": "…", "provenance": {…}}
    {"txn": 8, "i": 0, "n": 1, "at": …, "op": "activate", "layer": …, "x": …, "y": …, "version": 1}
    {"txn": 9, "i": 0, "n": 1, "at": …, "op": "deactivate", "layer": …, "x": …, "y": …}
    {"txn": 10, "i": 0, "n": 1, "at": …, "op": "flags", "x": …, "y": …, "water": 2, "starred": false, …}

A transaction is complete when all ``n`` of its lines are there.

Write order, inside the index's ``BEGIN IMMEDIATE`` transaction (so writers append in commit order): the blobs
are already durable; the index rows are inserted; the transaction's lines are appended and fsynced; the
journal position (``journal.txn``, ``journal.bytes`` in the index's ``meta``) is updated; the index commits.
A crash between the append and the commit leaves the journal one transaction ahead, never behind.

Checked on every read-write open and, under the write lock, before every write:

- a torn tail (a partial line, or fewer than ``n`` lines of a transaction) was never committed: truncated;
- exactly one complete transaction beyond the index's position is an interrupted commit (or the last commit
  of an index that lost it): rolled forward into the index;
- more than one: the index lost commits (an old copy, a deleted ``-wal``): ``StoreError`` naming
  ``isonyc store rebuild-index``;
- a journal missing or shorter than the index's position: moved aside (if present) and rewritten from the
  index, which holds everything it had;
- the journal of another store (header id differs): ``StoreError``.

A store from before journals (an index without a journal position) gets its journal written from its index
on the first read-write open.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from isonyc_dagster.fileio import atomic_output, fsync_dir
from isonyc_dagster.store.base import StoreError
from isonyc_dagster.store.index import SqliteIndex

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"
JOURNAL_FORMAT = 1
_KIND = "isonyc-tile-store"
META_ID, META_TXN, META_BYTES = "journal.id", "journal.txn", "journal.bytes"


@dataclass(frozen=True, slots=True)
class Txn:
    """One complete transaction of the journal."""

    txn: int
    ops: list[dict[str, Any]]  # each with "at" (unix seconds)
    end: int  # byte offset just after its last line


@dataclass(frozen=True, slots=True)
class Position:
    """Where the index says the journal ends: header id, last transaction, byte size."""

    id: str | None
    txn: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Scan:
    """Complete transactions from an offset on; ``end`` is the offset after the last of them."""

    txns: list[Txn]
    end: int
    size: int
    damage: str | None  # a bad line followed by later transactions: the journal itself is damaged


def position(index: SqliteIndex, c: sqlite3.Connection | None = None) -> Position:
    jid = index.meta_get(META_ID, c)
    return Position(jid, int(index.meta_get(META_TXN, c) or 0), int(index.meta_get(META_BYTES, c) or 0))


def set_position(index: SqliteIndex, c: sqlite3.Connection, pos: Position) -> None:
    assert pos.id is not None
    index.meta_set(c, META_ID, pos.id)
    index.meta_set(c, META_TXN, str(pos.txn))
    index.meta_set(c, META_BYTES, str(pos.bytes))


def _line(rec: dict[str, Any]) -> bytes:
    return (
        json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        + b"\n"
    )


def _record(raw: bytes) -> dict[str, Any] | None:
    """A journal line's record, or ``None`` if it is not one (garbage, a torn write)."""
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    ok = (
        isinstance(rec, dict)
        and all(type(rec.get(k)) is int for k in ("txn", "i", "n"))
        and isinstance(rec.get("at"), int | float)
        and isinstance(rec.get("op"), str)
    )
    return rec if ok else None


def _scan(f: IO[bytes], start: int, next_txn: int, size: int, *, keep_ops: bool = True) -> Scan:
    """Read complete transactions from ``f``, positioned at file offset ``start`` (the first is ``next_txn``)."""
    txns: list[Txn] = []
    group: list[dict[str, Any]] = []
    n = 0
    pos = end = start
    stop: str | None = None
    for raw in iter(f.readline, b""):
        line_at, pos = pos, pos + len(raw)
        rec = _record(raw) if raw.endswith(b"\n") else None
        if rec is not None and not group:
            n = rec["n"]
        if rec is None or rec["txn"] != next_txn or rec["i"] != len(group) or rec["n"] != n or n < 1:
            stop = f"byte {line_at}"
            break
        group.append({k: v for k, v in rec.items() if k not in ("txn", "i", "n")} if keep_ops else {})
        if len(group) == n:
            txns.append(Txn(next_txn, group, pos))
            next_txn, group, end = next_txn + 1, [], pos
    # Nothing after a torn append was written by a committed transaction; a complete record there means a
    # line in the middle was damaged.
    damaged = stop is not None and any(_record(r) is not None for r in iter(f.readline, b""))
    return Scan(txns, end, size, stop if damaged else None)


class Journal:
    """The commit journal of one local store (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._fd_key: tuple[int, int, int] | None = None

    # --- reading ------------------------------------------------------------------------------------
    def size(self) -> int | None:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return None

    def header(self) -> tuple[str, int] | None:
        """(id, byte size of the header line), or ``None`` if the journal is missing or has no valid header."""
        try:
            with open(self.path, "rb") as f:
                raw = f.readline(65536)
        except FileNotFoundError:
            return None
        try:
            rec = json.loads(raw) if raw.endswith(b"\n") else None
        except ValueError:
            return None
        if not isinstance(rec, dict) or rec.get("journal") != _KIND or not isinstance(rec.get("id"), str):
            return None
        if rec.get("format") != JOURNAL_FORMAT:
            raise StoreError(
                f"commit journal {self.path} has format {rec.get('format')!r}; this code reads format "
                f"{JOURNAL_FORMAT}: upgrade isonyc-dagster"
            )
        return rec["id"], len(raw)

    def has_commits(self) -> bool:
        """Whether the journal exists and holds anything after its header."""
        size, head = self.size(), self.header()
        if not size:
            return False
        return head is None or size > head[1]

    def scan(self, start: int, next_txn: int, *, limit: int | None = None) -> Scan:
        """Complete transactions from byte ``start`` on (``next_txn`` the first's number), up to ``limit``."""
        with open(self.path, "rb") as f:
            f.seek(start)
            if limit is None:
                return _scan(f, start, next_txn, os.fstat(f.fileno()).st_size)
            return _scan(io.BytesIO(f.read(max(0, limit - start))), start, next_txn, limit)

    def read_all(self, *, keep_ops: bool = True) -> tuple[str, Scan]:
        """(header id, every complete transaction); ``StoreError`` if the journal is missing or damaged.

        ``keep_ops=False`` only checks the lines (the transactions come back without their ops).
        """
        head = self.header()
        if head is None:
            raise StoreError(
                f"commit journal {self.path} is missing or has no valid header line; nothing to rebuild the "
                "index from (restore journal.jsonl or index.sqlite from a backup)"
            )
        with open(self.path, "rb") as f:
            f.seek(head[1])
            scan = _scan(f, head[1], 1, os.fstat(f.fileno()).st_size, keep_ops=keep_ops)
        if scan.damage:
            raise self._damaged(scan)
        return head[0], scan

    def check_against(self, index: SqliteIndex) -> str:
        """Read the whole journal and compare it with the index: "ok", or what is wrong (for ``verify``)."""
        pos = position(index)
        if pos.id is None:
            return "ok" if self.size() is None else "the index records no journal position"
        try:
            jid, scan = self.read_all(keep_ops=False)
        except StoreError as exc:
            return str(exc)
        if jid != pos.id:
            return str(self._foreign(pos, jid))
        last = scan.txns[-1].txn if scan.txns else 0
        if last < pos.txn:
            return f"the journal ends at transaction {last}, the index at {pos.txn}: the journal lost commits"
        if last > pos.txn + 1:
            return f"the journal ends at transaction {last}, the index at {pos.txn}: the index lost commits"
        return "ok"

    # --- checks and recovery (inside the index's write transaction) -----------------------------------
    def attach(self, index: SqliteIndex) -> None:
        """Read-write open: repair what can be repaired (see the module docstring), raise on the rest."""
        size = self.size()  # before the index position: the journal only ever runs ahead of the index
        pos = position(index)
        head = self.header()
        if pos.id is not None and head is not None and head[0] == pos.id and size == pos.bytes:
            return  # the usual case, without taking the write lock
        with index.transaction() as c:
            self.catch_up(index, c, check_header=True)

    def catch_up(self, index: SqliteIndex, c: sqlite3.Connection, *, check_header: bool = False) -> None:
        """Bring journal and index into line; the caller holds the write lock (``BEGIN IMMEDIATE``).

        Before each write only the size is compared (a stat); on open (``check_header``) the header's id too.
        """
        pos = position(index, c)
        size = self.size()
        if pos.id is not None and size == pos.bytes and not check_header:
            return  # every write passes here: a stat and three meta reads
        head = self.header()
        if pos.id is None:
            self._start(index, c, head)
            return
        if head is None:
            self._rewrite(index, c, "missing or without a header")
            return
        if head[0] != pos.id:
            raise self._foreign(pos, head[0])
        size = size or 0
        if size == pos.bytes:
            return
        if size < pos.bytes:
            self._rewrite(index, c, f"shorter ({size} bytes) than the index records ({pos.bytes} bytes)")
            return
        scan = self.scan(pos.bytes, pos.txn + 1)
        self._check_scan(scan, pos)
        if scan.txns:
            t = scan.txns[0]
            for op in t.ops:
                index.apply_op(c, op, op["at"], where=f"commit journal {self.path} transaction {t.txn}")
            set_position(index, c, Position(pos.id, t.txn, t.end))
            log.warning(
                "tile store %s: rolled forward transaction %d of %s, which was appended but not committed to "
                "the index (a writer was killed in between)",
                self.path.parent,
                t.txn,
                self.path.name,
            )
        if scan.end < size:
            os.truncate(self.path, scan.end)
            log.warning(
                "tile store %s: removed %d bytes of an interrupted append from %s (never committed)",
                self.path.parent,
                size - scan.end,
                self.path.name,
            )

    def check_read_only(self, index: SqliteIndex) -> None:
        """Read-only open: raise where the index is known to lack commits; nothing is changed."""
        size = self.size()
        pos = position(index)
        head = self.header()
        if pos.id is None:
            if self.has_commits() and not index.has_data():
                raise lost_index_error(self.path.parent, "holds none of the journal's commits", self)
            return
        if head is None or size is None or size <= pos.bytes:
            return
        if head[0] != pos.id:
            raise self._foreign(pos, head[0])
        # Only up to the size read before the position: a writer may have committed and appended since, and
        # before that size at most one transaction can be uncommitted.
        self._check_scan(self.scan(pos.bytes, pos.txn + 1, limit=size), pos)

    def _check_scan(self, scan: Scan, pos: Position) -> None:
        if scan.damage:
            raise self._damaged(scan)
        if len(scan.txns) > 1:
            raise StoreError(
                f"the tile index {self.path.parent / 'index.sqlite'} is behind the commit journal "
                f"{self.path}: the index ends at transaction {pos.txn}, the journal at "
                f"{scan.txns[-1].txn}, so the index lost {len(scan.txns)} commits (an old copy of it was "
                "restored, or its -wal file was deleted). Stop every writer of this store, then run "
                f"`isonyc store rebuild-index --store {self.path.parent}` to rebuild it from the journal"
            )

    def _damaged(self, scan: Scan) -> StoreError:
        return StoreError(
            f"commit journal {self.path} is damaged at {scan.damage}: a line there is not a journal record "
            "but later lines are; restore the journal from a backup (the index, if intact, still holds "
            "everything: move the damaged journal aside and the store writes a new one from the index)"
        )

    def _foreign(self, pos: Position, found: str) -> StoreError:
        return StoreError(
            f"commit journal {self.path} (id {found}) is not the journal of the index next to it (which "
            f"records journal {pos.id}); if the index is right, move the journal aside (the store then writes a "
            "new one from the index); if the journal is right, run "
            f"`isonyc store rebuild-index --store {self.path.parent}`"
        )

    def _start(self, index: SqliteIndex, c: sqlite3.Connection, head: tuple[str, int] | None) -> None:
        """An index without a journal position: a new store, or one from before journals."""
        if self.has_commits():
            if not index.has_data(c):
                raise lost_index_error(self.path.parent, "holds none of the journal's commits", self)
            moved = self._move_aside("orphaned")
            log.warning(
                "tile store %s: the index has no journal position but %s exists; moved it to %s and wrote "
                "a new journal from the index",
                self.path.parent,
                self.path.name,
                moved,
            )
        elif index.has_data(c):
            log.warning("tile store %s: writing the commit journal from the existing index", self.path.parent)
        self._write_from_index(index, c)

    def _rewrite(self, index: SqliteIndex, c: sqlite3.Connection, why: str) -> None:
        moved = self._move_aside("replaced") if self.path.exists() else None
        log.warning(
            "tile store %s: commit journal %s was %s; wrote a new one from the index%s",
            self.path.parent,
            self.path.name,
            why,
            f" (the old one is {moved})" if moved else "",
        )
        self._write_from_index(index, c)

    def _move_aside(self, why: str) -> Path:
        dest = self.path.with_name(f"{self.path.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.replace(self.path, dest)
        fsync_dir(self.path.parent)
        return dest

    def _write_from_index(self, index: SqliteIndex, c: sqlite3.Connection) -> None:
        """A new journal holding the index's whole state, one op per transaction (streamed: a city's index
        does not fit comfortably in memory as dicts)."""
        jid = uuid.uuid4().hex
        header = {"journal": _KIND, "format": JOURNAL_FORMAT, "id": jid, "created_at": time.time()}
        txn = 0
        with atomic_output(self.path) as tmp, open(tmp, "wb") as f:
            f.write(_line(header))
            for txn, op in enumerate(_dump(c), 1):
                f.write(_line({"txn": txn, "i": 0, "n": 1, **op}))
            size = f.tell()
        set_position(index, c, Position(jid, txn, size))

    # --- appending ----------------------------------------------------------------------------------
    def append(self, index: SqliteIndex, c: sqlite3.Connection, ops: list[dict[str, Any]], at: float) -> int:
        """Append one transaction's ops and fsync them (inside the index transaction, before its commit)."""
        pos = position(index, c)
        txn = pos.txn + 1
        body = b"".join(
            _line({"txn": txn, "i": i, "n": len(ops), "at": at, **op}) for i, op in enumerate(ops)
        )
        fd = self._writer()
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):  # the index rolls back: take the lines back too
                os.truncate(self.path, pos.bytes)
            raise
        set_position(index, c, Position(pos.id, txn, pos.bytes + len(body)))
        return txn

    def _writer(self) -> int:
        """An O_APPEND descriptor of the journal file as it is now (reopened after a rewrite or a fork)."""
        st = os.stat(self.path)
        key = (os.getpid(), st.st_dev, st.st_ino)
        with self._lock:
            if self._fd is None or self._fd_key != key:
                if self._fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(self._fd)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
                self._fd_key = key
            return self._fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._fd_key is not None and self._fd_key[0] == os.getpid():
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd = self._fd_key = None


def _dump(c: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """The index's whole state as journal ops (versions in order, then pointers and flags)."""
    for layer, x, y, version, sha, created_at, prov in c.execute(
        "SELECT layer, x, y, version, sha256, created_at, provenance FROM tile_versions "
        "ORDER BY version, layer, x, y"
    ):
        yield {
            "op": "put",
            "at": created_at,
            "layer": layer,
            "x": x,
            "y": y,
            "version": version,
            "sha256": sha,
            "provenance": json.loads(prov),
        }
    now = time.time()
    for layer, x, y, latest, act in c.execute(
        "SELECT v.layer, v.x, v.y, max(v.version), a.version FROM tile_versions v "
        "LEFT JOIN active_tiles a USING (layer, x, y) GROUP BY v.layer, v.x, v.y ORDER BY v.layer, v.x, v.y"
    ):
        if act is None:
            yield {"op": "deactivate", "at": now, "layer": layer, "x": x, "y": y}
        elif act != latest:
            yield {"op": "activate", "at": now, "layer": layer, "x": x, "y": y, "version": act}
    for x, y, water, starred, flagged, reference, updated_at in c.execute(
        "SELECT x, y, water, starred, flagged, reference, updated_at FROM quadrant_flags ORDER BY x, y"
    ):
        yield {
            "op": "flags",
            "at": updated_at,
            "x": x,
            "y": y,
            "water": water,
            "starred": bool(starred),
            "flagged": bool(flagged),
            "reference": bool(reference),
        }


def lost_index_error(root: Path, what: str, journal: Journal) -> StoreError:
    """The error for an index that lost the store's history (``what`` says how it looks)."""
    has_journal = journal.has_commits()
    source = (
        f"the commit journal {journal.path} ({journal.size()} bytes)"
        if has_journal
        else "blobs but no commit journal"
    )
    how = (
        f"Stop every writer of this store, then run `isonyc store rebuild-index --store {root}` to rebuild it "
        "from the journal"
        if has_journal
        else "Restore index.sqlite from a backup; `isonyc store rebuild-index` can only start an empty index "
        "here (the blobs are kept)"
    )
    return StoreError(
        f"the tile index {root / 'index.sqlite'} {what}, but {root} holds {source}: the index was lost. {how}"
    )
