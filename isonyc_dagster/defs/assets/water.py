"""The ``water_mask`` asset: per-quadrant water class and soft mask, from geometry (never from colours)."""

import dagster as dg
import numpy as np

from isonyc_dagster.defs.assets._common import (
    PER_PARTITION_NOTE,
    THUMBNAILS_UP_TO,
    TILE_PNG_LEVEL,
    combined_version,
    observe,
    partition_pairs,
    thumbnail_md,
)
from isonyc_dagster.defs.assets.render import RENDER_LAYER
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.generate.water import classify_water, seamless_margin, surface_with_margin, water_mask
from isonyc_dagster.images import png_bytes
from isonyc_dagster.render import RenderResult

WATER_LAYER = "water_mask"
FALLOFF_PX = 8.0


def build_water_asset(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="water_mask",
        partitions_def=partitions_def,
        deps=["render"],
        group_name="map",
        compute_kind="numpy",
        code_version=f"edt-falloff{FALLOFF_PX:g}",
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def water_mask_asset(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Water projected with the renderer's camera: ALL_WATER / ALL_LAND / WATER_EDGE flag + a soft mask."""
        p = project.get()
        store = p.store
        cache: dict[tuple[int, int], np.ndarray] = {}

        def surface(x: int, y: int) -> np.ndarray:
            if (x, y) not in cache:
                v = store.active(RENDER_LAYER, x, y)
                sha = v.provenance.get("aux_sha256") if v else None
                if sha and store.has_blob(sha):
                    cache[(x, y)] = RenderResult.from_npz(store.get_blob(sha)).surface
                else:  # beyond the bounds (or not stored): the renderer is deterministic
                    cache[(x, y)] = p.renderer_at(x, y).render_quadrant(x, y).surface
            return cache[(x, y)]

        margin = seamless_margin(FALLOFF_PX)
        pairs = partition_pairs(context)
        shas: dict[str, str] = {}
        counts = {"ALL_WATER": 0, "ALL_LAND": 0, "WATER_EDGE": 0}
        last_meta: dict = {}
        for key, (x, y) in zip(context.partition_keys, pairs, strict=True):
            if (x, y) not in p.quadrants:
                observe(context, key, {"outside_bounds": True})
                continue
            kind = classify_water(surface(x, y))
            mask = water_mask(
                surface_with_margin(surface, x, y, margin, quadrant_px=p.geometry.q),
                FALLOFF_PX,
                margin_px=margin,
            )
            png = png_bytes(mask, compress_level=TILE_PNG_LEVEL)
            v = store.put_tile(
                WATER_LAYER, x, y, png, {"source": "render surface buffer", "falloff_px": FALLOFF_PX}
            )
            store.set_flags(x, y, water=kind)
            counts[kind.name] += 1
            shas[key] = v.sha256
            last_meta = {
                "quadrant": f"{x},{y}",
                "water": kind.name,
                "water_fraction": round(float(np.count_nonzero(mask)) / mask.size, 4),
                "sha256": v.sha256,
            }
            if len(pairs) <= THUMBNAILS_UP_TO:
                last_meta["mask"] = thumbnail_md(png, max_px=128, title=f"water {x},{y}")
            if len(pairs) > 1:
                observe(context, key, last_meta)
        meta: dict = {k.lower(): v for k, v in counts.items()}
        if len(pairs) == 1:
            meta.update(last_meta)
        else:
            meta["per_partition"] = PER_PARTITION_NOTE
        return dg.MaterializeResult(metadata=meta, data_version=combined_version(shas) if shas else None)

    return water_mask_asset
