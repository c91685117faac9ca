"""A bounded, least-recently-used disk cache of fetched tiles (content and the headers that matter).

Re-rendering a quadrant's neighbours asks for the same tiles again; the cache answers those without a request
(which for Google's API also means without a billed tile). One SQLite file holds the entries: a write is one
transaction, so a crash never leaves half an entry, and several processes may share the file (WAL, busy
timeout). Keys are URLs with credentials removed by the source (``TileSource.cache_key``), so no key is ever
written to disk. When the stored bytes pass ``max_bytes`` the least recently used entries go first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: Response headers worth keeping (bodies are stored decoded, so no content-encoding).
KEPT_HEADERS = ("content-type",)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored_bytes: int = 0
    evicted: int = 0

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0

    def as_dict(self) -> dict:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hit_rate, 4),
            "evicted": self.evicted,
            "stored_bytes": self.stored_bytes,
        }


class TileCache:
    """LRU cache of (status 200) tile responses, at most ``max_bytes`` of content on disk."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tiles (key TEXT PRIMARY KEY, headers TEXT NOT NULL, body BLOB NOT NULL, "
            "size INTEGER NOT NULL, used REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS tiles_used ON tiles (used)")
        self.stats.stored_bytes = self._total()

    def _total(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM tiles").fetchone()[0])

    def get(self, key: str) -> tuple[dict[str, str], bytes] | None:
        """(headers, body) of a cached response, marking it used; None (a miss) if absent."""
        with self._lock:
            row = self._db.execute("SELECT headers, body FROM tiles WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.stats.misses += 1
                return None
            self._db.execute("UPDATE tiles SET used = ? WHERE key = ?", (time.time(), key))
            self.stats.hits += 1
            return json.loads(row[0]), bytes(row[1])

    def put(self, key: str, headers: dict[str, str], body: bytes) -> None:
        """Store a response (a body larger than the whole cache is not stored), then evict down to the bound."""
        if len(body) > self.max_bytes:
            return
        kept = {k: v for k, v in ((k.lower(), v) for k, v in headers.items()) if k in KEPT_HEADERS}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO tiles (key, headers, body, size, used) VALUES (?, ?, ?, ?, ?)",
                    (key, json.dumps(kept), body, len(body), time.time()),
                )
                total = self._total()
                while total > self.max_bytes:
                    k, size = self._db.execute("SELECT key, size FROM tiles ORDER BY used LIMIT 1").fetchone()
                    self._db.execute("DELETE FROM tiles WHERE key = ?", (k,))
                    total -= int(size)
                    self.stats.evicted += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.stats.stored_bytes = total

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM tiles").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
