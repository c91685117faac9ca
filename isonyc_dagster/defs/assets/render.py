"""The ``render`` asset: the whitebox isometric render of each quadrant, with its per-pixel buffers."""

from collections.abc import Iterator

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import PartitionRun, blob_link, thumbnail_md
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.geo.surfaces import PALETTE_VERSION, Surface


def build_render_asset(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=layers.RENDER,
        partitions_def=partitions_def,
        deps=[layers.GEODATA],
        group_name="inputs",
        compute_kind="numpy",
        code_version=f"whitebox-palette{PALETTE_VERSION}-stable-ids",
        # Renders have no ordering constraints: a backfill may put many quadrants in one run.
        backfill_policy=dg.BackfillPolicy.single_run(),
        # A range run logs each partition's materialization as soon as it is stored (``PartitionRun.emit``), and
        # none for the whole range, which may hold partitions a fill run skips.
        output_required=False,
    )
    def render(
        context: dg.AssetExecutionContext, project: ProjectResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        """Render each quadrant of the run from the prepared city; store RGB (PNG) and aux buffers (npz)."""
        p = project.get()
        run = PartitionRun(context)
        drawn_total, skipped = 0, 0
        for key, (x, y) in run:
            if (x, y) not in p.quadrants:
                skipped += 1
                run.skip(key, {"outside_bounds": True})
                continue
            version, res = p.store_render(x, y)
            drawn = int(version.provenance["buildings_drawn"])
            drawn_total += drawn
            meta = {
                "quadrant": key,
                "sha256": version.sha256,
                "version": version.version,
                "buildings_drawn": drawn,
                "classes_present": dg.MetadataValue.json(
                    sorted(Surface(c).name.lower() for c in set(res.surface.ravel().tolist()))
                ),
                "synthetic_city": bool(version.provenance["synthetic"]),
            }
            if run.thumbnails:
                meta["preview"] = thumbnail_md(
                    p.store.get_blob(version.sha256),
                    title=f"render {key}",
                    link=blob_link(p.config.console_url, version.sha256),
                )
            run.record(key, version.sha256, meta)
            yield from run.emit(key)
        yield from run.outputs(
            {"quadrants_rendered": len(run.shas), "outside_bounds": skipped, "buildings_drawn": drawn_total},
            streamed=True,
        )

    return render
