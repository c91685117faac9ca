"""Tile store: content-addressed PNG blobs + a versioned index per (layer, x, y)."""

from .base import QuadrantFlags, StoreError, TileStore, TileVersion, Water

__all__ = ["QuadrantFlags", "StoreError", "TileStore", "TileVersion", "Water", "open_store"]


def open_store(uri: str) -> TileStore:
    """Open a store from a local directory path or a ``gs://bucket/prefix`` URI."""
    if uri.startswith("gs://"):
        from .gcs import GCSTileStore

        return GCSTileStore.from_uri(uri)
    from .local import LocalTileStore

    return LocalTileStore(uri)
