"""The ``render`` asset: the whitebox isometric render of each quadrant, with its per-pixel buffers."""

import dagster as dg

from isonyc_dagster.defs.assets._common import (
    PER_PARTITION_NOTE,
    THUMBNAILS_UP_TO,
    combined_version,
    observe,
    partition_pairs,
    thumbnail_md,
)
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.geo.surfaces import PALETTE_VERSION, Surface
from isonyc_dagster.render import png_bytes

RENDER_LAYER = "render"


def build_render_asset(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="render",
        partitions_def=partitions_def,
        deps=["geodata"],
        group_name="map",
        compute_kind="numpy",
        code_version=f"whitebox-palette{PALETTE_VERSION}-stable-ids",
        # Renders have no ordering constraints: a backfill may put many quadrants in one run.
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def render(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Render each quadrant of the run from the prepared city; store RGB (PNG) and aux buffers (npz)."""
        p = project.get()
        store = p.store
        shas: dict[str, str] = {}
        drawn_total, skipped = 0, 0
        pairs = partition_pairs(context)
        last_meta: dict = {}
        for key, (x, y) in zip(context.partition_keys, pairs, strict=True):
            if (x, y) not in p.quadrants:
                skipped += 1
                observe(context, key, {"outside_bounds": True})
                continue
            renderer = p.renderer_at(x, y)
            res = renderer.render_quadrant(x, y)
            png = png_bytes(res.rgb)
            aux_sha = store.put_blob(res.to_npz(), ext="npz")
            classes = sorted(Surface(c).name.lower() for c in set(res.surface.ravel().tolist()))
            drawn = int(res.stats.get("buildings_drawn", 0))
            drawn_total += drawn
            version = store.put_tile(
                RENDER_LAYER,
                x,
                y,
                png,
                {
                    "renderer": "whitebox",
                    "palette_version": PALETTE_VERSION,
                    "aux_sha256": aux_sha,
                    "geodata": p.geodata_key,
                    "synthetic": renderer.city.synthetic,
                    "buildings_drawn": drawn,
                },
            )
            shas[key] = version.sha256
            last_meta = {
                "quadrant": f"{x},{y}",
                "sha256": version.sha256,
                "version": version.version,
                "buildings_drawn": drawn,
                "classes_present": dg.MetadataValue.json(classes),
                "synthetic_city": renderer.city.synthetic,
            }
            if len(pairs) <= THUMBNAILS_UP_TO:
                last_meta["preview"] = thumbnail_md(png, title=f"render {x},{y}")
            if len(pairs) > 1:
                observe(context, key, last_meta)
        meta = {"quadrants_rendered": len(shas), "outside_bounds": skipped, "buildings_drawn": drawn_total}
        if len(pairs) == 1:
            meta.update(last_meta)
        else:
            meta["per_partition"] = PER_PARTITION_NOTE
        return dg.MaterializeResult(metadata=meta, data_version=combined_version(shas) if shas else None)

    return render
