"""Photoreal render layer (core, no Dagster): a 3D tileset rendered in headless Chromium with three.js and
3d-tiles-renderer, through an orthographic camera that draws every point where the whitebox draws it.

Public API::

    source = resolve_source("https://host/tileset.json")     # or "google" with api_key=...
    with PhotorealRenderer(geometry, source, RenderSettings(), cache=TileCache(path, max_bytes)) as r:
        res = r.render_quadrant(x, y)      # PhotorealResult: rgb (H×W×3 uint8), origin_px, provenance
"""

from isonyc_dagster.photoreal.browser import (
    PhotorealError,
    PhotorealRenderer,
    PhotorealRenderError,
    PhotorealResult,
    RenderSettings,
    find_node_modules,
)
from isonyc_dagster.photoreal.cache import TileCache
from isonyc_dagster.photoreal.camera import Camera, CameraError, camera_for_window
from isonyc_dagster.photoreal.sources import (
    GOOGLE_KEY_ENV,
    PhotorealSourceError,
    TileSource,
    resolve_source,
    source_attribution,
    strip_secrets,
)

__all__ = [
    "GOOGLE_KEY_ENV",
    "Camera",
    "CameraError",
    "PhotorealError",
    "PhotorealRenderError",
    "PhotorealRenderer",
    "PhotorealResult",
    "PhotorealSourceError",
    "RenderSettings",
    "TileCache",
    "TileSource",
    "camera_for_window",
    "find_node_modules",
    "resolve_source",
    "source_attribution",
    "strip_secrets",
]
