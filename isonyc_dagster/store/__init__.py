"""Tile store: content-addressed PNG blobs + a versioned index per (layer, x, y)."""

from isonyc_dagster.store.base import QuadrantFlags, StoreError, TileStore, TileVersion, Water

__all__ = ["QuadrantFlags", "StoreError", "TileStore", "TileVersion", "Water", "open_store"]


def open_store(uri: str) -> TileStore:
    """Open a store from a local directory path or a ``gs://bucket/prefix`` URI."""
    if uri.startswith("gs://"):
        from isonyc_dagster.store.gcs import GCSTileStore

        return GCSTileStore.from_uri(uri)
    from isonyc_dagster.store.local import LocalTileStore

    return LocalTileStore(uri)
