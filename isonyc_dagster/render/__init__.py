"""Whitebox isometric renderer (core, no Dagster): City → surface classes, building ids, heights, RGB.

Public API::

    r = Renderer(city, geometry)
    res = r.render_quadrant(x, y)      # 512×512 RenderResult; render_tile(x, y) → 1024×1024
    png = png_bytes(res.rgb)           # lossless PNG
    thumb = render_png_preview(res)    # ≤ 256 px thumbnail for metadata
    blob = res.to_blob(); RenderResult.from_blob(blob)   # compact lossless aux buffers (reads old npz too)
"""

from isonyc_dagster.render.renderer import MAX_WINDOW_PX, Renderer
from isonyc_dagster.render.result import (
    AUX_BLOB_EXT,
    RenderResult,
    png_bytes,
    render_png_preview,
    stable_building_id,
)

__all__ = [
    "AUX_BLOB_EXT",
    "MAX_WINDOW_PX",
    "RenderResult",
    "Renderer",
    "png_bytes",
    "render_png_preview",
    "stable_building_id",
]
