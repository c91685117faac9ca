"""Tile store: content-addressed PNG blobs + a versioned index per (layer, x, y)."""

from __future__ import annotations

from typing import Any

from isonyc_dagster.store.base import (
    CorruptBlobError,
    QuadrantFlags,
    ReadOnlyStoreError,
    StoreError,
    TileStore,
    TileVersion,
    Water,
)

__all__ = [
    "CorruptBlobError",
    "QuadrantFlags",
    "ReadOnlyStoreError",
    "StoreError",
    "TileStore",
    "TileVersion",
    "Water",
    "open_store",
    "rebuild_index",
]


def open_store(uri: str, *, read_only: bool = False, tile_size: tuple[int, int] | None = None) -> TileStore:
    """Open a store from a local directory path or a ``gs://bucket/prefix`` URI.

    ``read_only``: open without write access (every write raises ``ReadOnlyStoreError``). A local store in
    a directory this user cannot write is opened read-only automatically. ``tile_size``: the size every tile must
    have (the map's quadrant; default 512 × 512).
    """
    if uri.startswith("gs://"):
        from isonyc_dagster.store.gcs import GCSTileStore

        return GCSTileStore.from_uri(uri, read_only=read_only, tile_size=tile_size)
    from isonyc_dagster.store.local import LocalTileStore

    return LocalTileStore(uri, read_only=read_only, tile_size=tile_size)


def rebuild_index(uri: str) -> dict[str, Any]:
    """Rebuild a store's index from the history kept next to its blobs; returns a summary.

    Local: the commit journal (``journal.jsonl``) is replayed into a new ``index.sqlite``; the old index
    file, if any, is moved aside, never deleted. GCS: the local replica is dropped and replayed from the
    bucket's log (and checkpoints). Stop every writer of the store first.
    """
    if uri.startswith("gs://"):
        from isonyc_dagster.store.gcs import GCSTileStore

        store = GCSTileStore.from_uri(uri)
        try:
            return store.rebuild_index()
        finally:
            store.close()
    from isonyc_dagster.store.local import rebuild_local_index

    return rebuild_local_index(uri)
