"""Tile store on Google Cloud Storage: content-addressed blobs + a transaction log as the index.

Layout under ``gs://bucket/prefix/``::

    blobs/ab/cd/<sha256>.<ext>           immutable bytes, created with ifGenerationMatch=0
    log/000000000001.json                one object per committed transaction (create-only, never changed)
    checkpoints/000000001000.sqlite.gz   snapshot of the index after that log entry (a cold-start shortcut)

Log entries up to the newest checkpoint may be deleted (e.g. by a bucket lifecycle rule) to bound the
log; readers that need them start from the checkpoint instead.

Why a log. The index needs multi-tile all-or-nothing commits, contiguous version numbers under
concurrent writers, exactly one active version per tile, and fast bbox / many-key queries over ~50k
quadrants. GCS has atomic single-object writes and preconditions but no multi-object transactions, and
listing 50k small pointer objects per map read would be slow. So the index is an append-only log, the
same design Delta Lake uses on object stores: each ``put_tiles`` / ``activate`` / ``set_flags`` is ONE
JSON object at the next sequence number, created with ``ifGenerationMatch=0`` (create-if-absent). Of
several concurrent writers exactly one wins a sequence number; the others get HTTP 412, catch up and
retry on top of the winner. One object = one transaction, so a commit is all-or-nothing, and a crash
before the log object exists leaves only unreferenced blobs (invisible).

Reads are answered from a local SQLite replica of the log (a :class:`~isonyc_dagster.store.index.SqliteIndex`,
the same schema and queries as the local store's index), brought up to date before each read by listing
log objects after the last applied one (one request when nothing is new; ``max_staleness_s`` trades
freshness for fewer requests). Version numbers are decided by the writer against a replica that is
exactly at the previous sequence number, so replaying the log in order reproduces them; replay checks
this. The replica lives in a cache directory and may be shared by processes on one host (SQLite locking;
an entry is applied once). Every ``checkpoint_every`` commits the writer uploads a gzip'd snapshot so a
new machine downloads one file and replays at most that many log entries instead of the whole history.

Integrity: reads check every blob against its sha256 (``CorruptBlobError`` names the tile versions it
holds); writing a blob whose object exists compares GCS's md5 of it and replaces an object with other bytes
(``ifGenerationMatch`` on the bad generation). ``rebuild_index()`` (``isonyc store rebuild-index``) drops the
local replica and replays it from the bucket, which holds the whole history (log + checkpoints); a replica
that is not a SQLite file is moved aside and rebuilt the same way, since it is only a cache.

Credentials come from the environment (Application Default Credentials); ``STORAGE_EMULATOR_HOST``
points the client at an emulator with anonymous credentials; or pass ``client=``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import storage

from isonyc_dagster.store.base import FlagUpdate, QuadrantFlags, StoreError, TileVersion
from isonyc_dagster.store.index import (
    SCHEMA_VERSION,
    STATE_TABLES,
    IndexedTileStore,
    SqliteIndex,
    move_index_aside,
    put_op,
)
from isonyc_dagster.store.validate import PreparedWrite, check_sha, check_size

log = logging.getLogger(__name__)

LOG_FORMAT = 1
_SEQ_DIGITS = 12
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{1,220}[a-z0-9]$")
_CONTENT_TYPES = {"png": "image/png", "json": "application/json", "npz": "application/octet-stream"}
T = TypeVar("T")


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "isonyc-dagster" / "gcs-index"


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/some/prefix`` → ``("bucket", "some/prefix")``; ``StoreError`` on anything else."""
    if not isinstance(uri, str) or not uri.startswith("gs://"):
        raise StoreError(f"not a GCS URI: {uri!r}; expected gs://bucket/prefix")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix


class GCSTileStore(IndexedTileStore):
    """Tile store in a GCS bucket (see the module docstring for the design and guarantees)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: storage.Client | None = None,
        cache_dir: str | Path | None = None,
        tile_size: tuple[int, int] | None = None,
        max_staleness_s: float = 0.0,
        checkpoint_every: int = 1000,
        keep_checkpoints: int = 2,
        workers: int = 8,
        max_commit_attempts: int = 200,
        read_only: bool = False,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise StoreError(
                f"invalid GCS bucket name {bucket!r}: 3-222 characters from lowercase letters, digits, '-', '_', '.'"
            )
        prefix = (prefix or "").strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise StoreError(f"invalid object prefix {prefix!r}: no empty, '.' or '..' path segments")
        self.bucket_name = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.uri = f"gs://{bucket}/{prefix}".rstrip("/")
        self.location = self.uri
        self.max_staleness_s = float(max_staleness_s)
        self.checkpoint_every = int(checkpoint_every)
        self.keep_checkpoints = max(1, int(keep_checkpoints))
        self.workers = max(1, int(workers))
        self.max_commit_attempts = int(max_commit_attempts)

        self._given_client = client
        self._client: storage.Client | None = client
        self._client_pid = os.getpid()

        key = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir() / key
        # The replica is a cache on this machine, writable even when the store is opened read-only.
        kw: dict[str, Any] = {"tile_size": tile_size, "read_only": read_only, "index_read_only": False}
        if tile_size is not None:
            check_size(tile_size, what="tile_size")  # before the replica: a bad argument is no bad replica
        replica = self.cache_dir / "index.sqlite"
        try:
            super().__init__(replica, **kw)
        except StoreError:
            if not replica.exists():
                raise
            aside = move_index_aside(replica, "damaged")
            log.warning("index replica %s is unreadable; moved it to %s and rebuilding it", replica, aside)
            super().__init__(replica, **kw)
        with self._index.transaction() as c:
            where = self._index.meta_get("gcs.location", c)
            if where is None:
                self._index.meta_set(c, "gcs.location", self.uri)
            elif where != self.uri:
                raise StoreError(
                    f"cache dir {self.cache_dir} holds the index replica of {where}, not {self.uri}; "
                    "use a separate cache_dir per store"
                )

        self._sync_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._synced_at = -float("inf")
        self._verified = False

    @classmethod
    def from_uri(cls, uri: str, **kwargs: Any) -> GCSTileStore:
        """Open ``gs://bucket/prefix``; keyword arguments as for the constructor."""
        bucket, prefix = parse_gs_uri(uri)
        return cls(bucket, prefix, **kwargs)

    def __repr__(self) -> str:
        return f"GCSTileStore({self.uri!r})"

    # --- GCS plumbing ------------------------------------------------------------------------------
    @property
    def client(self) -> storage.Client:
        # Google's guidance: create clients after fork. A client we built ourselves is rebuilt in a child.
        if self._client is None or (self._given_client is None and self._client_pid != os.getpid()):
            try:
                self._client = storage.Client()
            except Exception as exc:  # google.auth raises several unrelated types for "no credentials"
                raise StoreError(
                    f"cannot create a GCS client for {self.uri}: {type(exc).__name__}: {exc}. Configure "
                    "Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS or gcloud auth), or set "
                    "STORAGE_EMULATOR_HOST for an emulator"
                ) from exc
            self._client_pid = os.getpid()
        return self._client

    @property
    def _bucket(self) -> storage.Bucket:
        return self.client.bucket(self.bucket_name)

    @contextlib.contextmanager
    def _gcs(self, what: str, *, missing_ok: bool = False) -> Iterator[None]:
        """Turn GCS API failures (after the client's own retries) into ``StoreError``s naming the object.

        ``missing_ok``: let ``NotFound`` through, for callers to whom a missing object is an answer.
        """
        try:
            yield
        except (gexc.PreconditionFailed, StoreError):
            raise
        except gexc.NotFound as exc:
            if missing_ok:
                raise
            raise StoreError(
                f"{what}: not found in gs://{self.bucket_name} ({exc.message}); does the bucket exist?"
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise StoreError(f"{what} failed on {self.uri}: HTTP {exc.code} {exc.message}") from exc
        except (OSError, gexc.RetryError) as exc:
            raise StoreError(f"{what} failed on {self.uri}: {type(exc).__name__}: {exc}") from exc

    def _create(self, name: str, data: bytes, content_type: str) -> bool:
        """Create object ``name`` unless it exists; True if this call created it.

        ifGenerationMatch=0 also makes the upload safe for the client to retry on transient errors.
        """
        try:
            with self._gcs(f"upload of {name}"):
                self._bucket.blob(name).upload_from_string(
                    data, content_type=content_type, if_generation_match=0
                )
        except gexc.PreconditionFailed:
            return False
        return True

    def _download(self, name: str) -> bytes | None:
        """The object's bytes, or ``None`` if it does not exist."""
        try:
            with self._gcs(f"download of {name}", missing_ok=True):
                return self._bucket.blob(name).download_as_bytes()
        except gexc.NotFound:
            return None

    def _list(self, prefix: str, start_offset: str | None = None) -> list[str]:
        with self._gcs(f"listing of {prefix}"):
            blobs = self.client.list_blobs(
                self.bucket_name, prefix=prefix, start_offset=start_offset, fields="items(name),nextPageToken"
            )
            return [b.name for b in blobs]

    def _parallel(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        if len(items) <= 1 or self.workers == 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(min(self.workers, len(items))) as pool:
            return list(pool.map(fn, items))

    # --- blobs -------------------------------------------------------------------------------------
    def _blob_name(self, sha256: str, ext: str) -> str:
        return f"{self.prefix}blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"

    def _find_blob(self, sha256: str) -> str | None:
        check_sha(sha256)
        name = self._blob_name(sha256, "png")
        with self._gcs(f"lookup of {name}"):
            if self._bucket.blob(name).exists():
                return name
        others = self._list(self._blob_name(sha256, ""))
        return others[0] if others else None

    def _blobs_where(self) -> str:
        return f"{self.uri}/blobs"

    def _write_blob(self, sha256: str, ext: str, data: bytes, *, likely_exists: bool = False) -> None:
        """Create the blob object, or check an existing one and replace it if it holds other bytes.

        ``likely_exists`` (a rerun re-putting active tiles): check first, which costs one metadata request
        instead of an upload that GCS refuses.
        """
        name = self._blob_name(sha256, ext)
        content_type = _CONTENT_TYPES.get(ext, "application/octet-stream")
        meta = self._blob_meta(name) if likely_exists else None
        for _ in range(5):
            if meta is None:
                if self._create(name, data, content_type):
                    return
                meta = self._blob_meta(name)
                if meta is None:
                    continue  # deleted in between: create it again
            # Content-addressed, but an object can be overwritten after it was written: compare the md5 GCS
            # keeps for every object instead of trusting the name.
            same = (
                meta.md5_hash == base64.b64encode(hashlib.md5(data).digest()).decode()
                if meta.md5_hash
                else self._download(name) == data  # composite objects have no md5
            )
            if same and meta.size == len(data):
                return
            log.warning("blob object %s on %s holds other bytes; writing it again", name, self.uri)
            try:
                with self._gcs(f"repair of {name}"):
                    self._bucket.blob(name).upload_from_string(
                        data, content_type=content_type, if_generation_match=meta.generation
                    )
                return
            except gexc.PreconditionFailed:
                meta = self._blob_meta(name)  # replaced by someone else meanwhile: check again
        raise StoreError(f"could not store blob {name} on {self.uri}: the object kept changing while written")

    def _blob_meta(self, name: str) -> storage.Blob | None:
        with self._gcs(f"lookup of {name}"):
            return self._bucket.get_blob(name)

    def _read_blob_raw(self, sha256: str) -> tuple[str, bytes] | None:
        name = self._blob_name(sha256, "png")
        data = self._download(name)
        if data is None:  # a non-PNG blob (.npz, ...): one listing finds its extension
            other = self._find_blob(sha256)
            if other is None:
                return None
            name, data = other, self._download(other)
        return None if data is None else (f"gs://{self.bucket_name}/{name}", data)

    def _drop_blob(self, where: str) -> None:
        name = where.removeprefix(f"gs://{self.bucket_name}/")
        with contextlib.suppress(gexc.NotFound), self._gcs(f"deletion of {name}", missing_ok=True):
            self._bucket.blob(name).delete()

    def uri_for_blob(self, sha256: str) -> str:
        """``gs://`` URI of a blob (for exporters that copy objects server-side); ``StoreError`` if unknown."""
        name = self._find_blob(sha256)
        if name is None:
            raise StoreError(f"blob {sha256} not found under {self.uri}/blobs")
        return f"gs://{self.bucket_name}/{name}"

    # --- the log -----------------------------------------------------------------------------------
    def _log_name(self, seq: int) -> str:
        return f"{self.prefix}log/{seq:0{_SEQ_DIGITS}d}.json"

    def _checkpoint_name(self, seq: int) -> str:
        return f"{self.prefix}checkpoints/{seq:0{_SEQ_DIGITS}d}.sqlite.gz"

    def _seq_of(self, name: str, kind: str) -> int | None:
        stem = name[len(f"{self.prefix}{kind}/") :].split(".", 1)[0]
        return int(stem) if stem.isdigit() else None

    def _applied(self, c: sqlite3.Connection | None = None) -> int:
        return int(self._index.meta_get("gcs.seq", c) or 0)

    def _fetch_record(self, seq: int) -> dict[str, Any] | None:
        data = self._download(self._log_name(seq))
        if data is None:
            return None
        try:
            rec = json.loads(data)
        except ValueError as exc:
            raise StoreError(
                f"log entry {self._log_name(seq)} is not JSON ({exc}); the index log is damaged"
            ) from exc
        if not isinstance(rec, dict) or rec.get("seq") != seq or not isinstance(rec.get("ops"), list):
            raise StoreError(f"log entry {self._log_name(seq)} is malformed; the index log is damaged")
        if rec.get("format") != LOG_FORMAT:
            raise StoreError(
                f"log entry {self._log_name(seq)} has format {rec.get('format')!r}; this code reads format "
                f"{LOG_FORMAT}: upgrade isonyc-dagster"
            )
        return rec

    def _apply_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Apply log records in order to the replica, in one transaction; already-applied ones are skipped."""
        with self._index.transaction() as c:
            applied = self._applied(c)
            for rec in records:
                seq = rec["seq"]
                if seq <= applied:
                    continue
                if seq != applied + 1:
                    raise StoreError(
                        f"index log gap on {self.uri}: replica at {applied}, next entry is {seq}"
                    )
                for op in rec["ops"]:
                    self._apply_op(c, op, rec)
                c.execute(
                    "INSERT INTO replica_log (seq, txn, applied_at) VALUES (?, ?, ?)",
                    (seq, rec["txn"], time.time()),
                )
                applied = seq
            self._index.meta_set(c, "gcs.seq", str(applied))

    def _apply_op(self, c: sqlite3.Connection, op: dict[str, Any], rec: dict[str, Any]) -> None:
        self._index.apply_op(c, op, rec["created_at"], where=f"index log entry {rec['seq']} on {self.uri}")

    def refresh(self) -> int:
        """Bring the local replica up to date with the log now; returns the applied sequence number."""
        self._sync(force=True)
        return self._applied()

    def _sync(self, *, force: bool = False) -> None:
        requested = time.monotonic()
        if not force and requested - self._synced_at < self.max_staleness_s:
            return
        with self._sync_lock:
            # A sync that started after this request (and finished) covers every commit made before it.
            if self._synced_at >= requested:
                return
            started = time.monotonic()
            if not self._verified:
                self._verify_replica()
                self._verified = True
            self._catch_up()
            self._synced_at = started

    def _catch_up(self) -> None:
        applied = self._applied()
        seqs = sorted(
            s
            for s in (
                self._seq_of(n, "log") for n in self._list(f"{self.prefix}log/", self._log_name(applied + 1))
            )
            if s is not None and s > applied
        )
        if not seqs:
            return
        # Far behind (a new machine) or the entries we need were compacted away: start from a snapshot.
        far_behind = len(seqs) > self.checkpoint_every > 0
        if (far_behind or seqs[0] != applied + 1) and self._load_checkpoint():
            applied = self._applied()
            seqs = [s for s in seqs if s > applied]
        # A writer only takes n+1 after n exists, so a gap means entries were deleted with no snapshot
        # covering them.
        if seqs and seqs[0] != applied + 1:
            raise StoreError(
                f"index log on {self.uri} is missing entries {applied + 1}..{seqs[0] - 1} and no checkpoint "
                "covers them; log entries may only be deleted up to the newest checkpoint"
            )
        for i in range(0, len(seqs), 1000):
            chunk = seqs[i : i + 1000]
            records = self._parallel(self._fetch_record, chunk)
            if any(r is None for r in records):
                raise StoreError(
                    f"index log entry vanished on {self.uri} while reading; log objects must not be deleted"
                )
            self._apply_records(records)  # type: ignore[arg-type]

    def _verify_replica(self) -> None:
        """Drop a cached replica that does not match the bucket (bucket wiped or recreated)."""
        applied = self._applied()
        if applied == 0:
            return
        row = self._index.conn().execute("SELECT txn FROM replica_log WHERE seq = ?", (applied,)).fetchone()
        rec = self._fetch_record(applied)
        if row is not None and rec is not None and rec.get("txn") == row[0]:
            return
        log.warning(
            "index replica %s does not match %s; rebuilding it from the bucket", self.cache_dir, self.uri
        )
        with self._index.transaction() as c:
            self._index.reset(c)
            self._index.meta_set(c, "gcs.seq", "0")

    def rebuild_index(self) -> dict[str, Any]:
        """Drop the local replica and replay it from the bucket (newest checkpoint + log); returns a summary.

        The bucket holds the whole history, so this is all ``isonyc store rebuild-index`` needs on GCS.
        """
        with self._sync_lock:
            with self._index.transaction() as c:
                self._index.reset(c)
                self._index.meta_set(c, "gcs.seq", "0")
            self._verified = True
            self._synced_at = -float("inf")
        seq = self.refresh()
        c = self._index.conn()
        count = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in STATE_TABLES}
        return {
            "store": self.uri,
            "replica": str(self._index.path),
            "log_seq": seq,
            "versions": count["tile_versions"],
            "active_tiles": count["active_tiles"],
            "flagged_quadrants": count["quadrant_flags"],
        }

    # --- checkpoints -------------------------------------------------------------------------------
    def upload_checkpoint(self) -> int:
        """Upload a snapshot of the index at the current head; returns its sequence number.

        (``checkpoint()``, as on every store, only folds the local replica's WAL into its file.)
        """
        self._require_writable("upload a checkpoint")
        self._sync(force=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as td:
            snap = Path(td) / "snapshot.sqlite"
            self._index.conn().execute("VACUUM INTO ?", (str(snap),))
            with contextlib.closing(sqlite3.connect(snap)) as s:
                seq = int(s.execute("SELECT value FROM meta WHERE key = 'gcs.seq'").fetchone()[0])
            if seq > 0:
                self._create(
                    self._checkpoint_name(seq), gzip.compress(snap.read_bytes(), 6), "application/gzip"
                )
        names = sorted(n for n in self._list(f"{self.prefix}checkpoints/") if self._seq_of(n, "checkpoints"))
        for name in names[: -self.keep_checkpoints]:
            with contextlib.suppress(gexc.NotFound):
                self._bucket.blob(name).delete()
        return seq

    def _load_checkpoint(self) -> bool:
        """Replace the replica with the newest checkpoint if it is ahead; False if there is none usable."""
        names = sorted(n for n in self._list(f"{self.prefix}checkpoints/") if self._seq_of(n, "checkpoints"))
        if not names:
            return False
        seq = self._seq_of(names[-1], "checkpoints") or 0
        if seq <= self._applied():
            return False
        data = self._download(names[-1])
        if data is None:  # pruned between list and download: replaying the log still works
            return False
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as td:
            path = Path(td) / "checkpoint.sqlite"
            path.write_bytes(gzip.decompress(data))
            try:
                with contextlib.closing(sqlite3.connect(path)) as s:
                    schema = s.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
                    meta = dict(s.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.DatabaseError as exc:
                log.warning("ignoring unreadable checkpoint %s: %s", names[-1], exc)
                return False
            if (
                schema != SCHEMA_VERSION
                or meta.get("gcs.location") != self.uri
                or meta.get("gcs.seq") != str(seq)
            ):
                log.warning(
                    "ignoring checkpoint %s (schema %s, %s)", names[-1], schema, meta.get("gcs.location")
                )
                return False
            c = self._index.conn()
            c.execute("ATTACH DATABASE ? AS ckpt", (str(path),))
            try:
                with self._index.transaction() as t:
                    if self._applied(t) >= seq:
                        return True
                    for table in reversed(STATE_TABLES):
                        t.execute(f"DELETE FROM main.{table}")
                    for table in STATE_TABLES:
                        t.execute(f"INSERT INTO main.{table} SELECT * FROM ckpt.{table}")
                    self._index.meta_set(t, "gcs.seq", str(seq))
            finally:
                c.execute("DETACH DATABASE ckpt")
        return True

    # --- commits -----------------------------------------------------------------------------------
    def _commit(self, build: Callable[[sqlite3.Connection, float], tuple[list[dict[str, Any]], T]]) -> T:
        """Append one log entry built by ``build(conn, now)`` against the replica at the head.

        ``build`` returns (ops, result); no ops means nothing to write. On a lost race (412) we catch up
        and rebuild on top of the winner.
        """
        txn = uuid.uuid4().hex
        pending: T | None = None
        with self._write_lock:  # threads of one process queue here instead of racing each other on GCS
            for attempt in range(self.max_commit_attempts):
                self._sync(force=True)
                c = self._index.conn()
                c.execute("BEGIN")  # one snapshot: applied seq and the state the ops are computed against
                try:
                    applied = self._applied(c)
                    # A 412 can also be our own upload: the first try landed, its response was lost and
                    # the client's retry hit the precondition. Then the entry is in the log with our txn.
                    if c.execute("SELECT 1 FROM replica_log WHERE txn = ?", (txn,)).fetchone():
                        return pending  # type: ignore[return-value]
                    now = time.time()
                    ops, result = build(c, now)
                finally:
                    c.execute("COMMIT")
                if not ops:
                    return result
                seq = applied + 1
                record = {"format": LOG_FORMAT, "seq": seq, "txn": txn, "created_at": now, "ops": ops}
                body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
                if self._create(self._log_name(seq), body, "application/json"):
                    self._apply_records([record])
                    if self.checkpoint_every > 0 and seq % self.checkpoint_every == 0:
                        try:
                            self.upload_checkpoint()
                        except StoreError as exc:  # only a cold-start shortcut: the log stays authoritative
                            log.warning("checkpoint at %s failed: %s", seq, exc)
                    return result
                pending = result
                time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** min(attempt, 6))))
        raise StoreError(
            f"could not commit to {self.uri} after {self.max_commit_attempts} attempts: other writers kept "
            "taking the next log entry; retry later or reduce concurrent writers"
        )

    # --- tiles -------------------------------------------------------------------------------------
    def _fresh_index(self) -> SqliteIndex:
        self._sync()
        return self._index

    def _put_prepared(self, prepared: list[PreparedWrite]) -> list[TileVersion]:
        if not prepared:
            return []
        # A rerun of a step re-puts tiles that are already active: their blobs exist, so check them (one
        # metadata request) rather than upload them again.
        self._sync()
        known = {
            (p.layer, p.x, p.y): a.sha256 for p in prepared if (a := self._index.active(p.layer, p.x, p.y))
        }
        self._parallel(
            lambda p: self._write_blob(
                p.sha256, "png", p.png, likely_exists=known.get((p.layer, p.x, p.y)) == p.sha256
            ),
            prepared,
        )

        def build(c: sqlite3.Connection, now: float) -> tuple[list[dict[str, Any]], list[TileVersion]]:
            ops: list[dict[str, Any]] = []
            out: list[TileVersion] = []
            for p in prepared:
                plan = self._index.plan_put(c, p)
                if isinstance(plan, TileVersion):
                    out.append(plan)
                    continue
                ops.append(put_op(p, plan))
                out.append(TileVersion(p.layer, p.x, p.y, plan, p.sha256, now, p.provenance, True))
            return ops, out

        return self._commit(build)

    def _activate(self, layer: str, x: int, y: int, version: int) -> TileVersion:
        def build(c: sqlite3.Connection, now: float) -> tuple[list[dict[str, Any]], TileVersion]:
            target = self._index.get_version(c, layer, x, y, version)
            if target.active:
                return [], target
            op = {"op": "activate", "layer": layer, "x": x, "y": y, "version": version}
            return [op], dataclasses.replace(target, active=True)

        return self._commit(build)

    def _deactivate(self, layer: str, x: int, y: int) -> TileVersion | None:
        def build(c: sqlite3.Connection, now: float) -> tuple[list[dict[str, Any]], TileVersion | None]:
            current = self._index.active(layer, x, y, c)
            if current is None:
                return [], None
            return [{"op": "deactivate", "layer": layer, "x": x, "y": y}], current

        return self._commit(build)

    # --- flags -------------------------------------------------------------------------------------
    def _commit_flags(self, x: int, y: int, update: FlagUpdate) -> QuadrantFlags:
        def build(c: sqlite3.Connection, now: float) -> tuple[list[dict[str, Any]], QuadrantFlags]:
            cur = self._index.flags(x, y, c)
            new = update.apply(cur)
            if new == cur and self._index.has_flags_row(c, x, y):
                return [], cur
            op = {
                "op": "flags",
                "x": x,
                "y": y,
                "water": None if update.water is None else int(update.water),
                "starred": update.starred,
                "flagged": update.flagged,
                "reference": update.reference,
            }
            return [op], new

        return self._commit(build)

    def close(self) -> None:
        super().close()
        if self._given_client is None and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
