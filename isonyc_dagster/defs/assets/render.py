"""The ``render`` asset: the whitebox isometric render of each quadrant, with its per-pixel buffers."""

from collections.abc import Iterator

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import PartitionRun, blob_link, thumbnail_md
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.geo.surfaces import PALETTE_VERSION
from isonyc_dagster.workers import in_flight, local_workers


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
        """Render each quadrant of the run from the prepared city; store RGB (PNG) and the buffers (a compact aux blob)."""
        p = project.get()
        run = PartitionRun(context, map_quadrants=len(p.quadrants))
        drawn_total = 0
        # Renders are drawn and stored on the run's CPU threads; events are logged here, as each finishes.
        for (key, _xy), (version, res) in in_flight(
            lambda item: p.store_render(*item[1]), run, local_workers(), name="render"
        ):
            drawn = int(version.provenance["buildings_drawn"])
            drawn_total += drawn
            meta = {
                "quadrant": key,
                "sha256": version.sha256,
                "version": version.version,
                "buildings_drawn": drawn,
                "classes_present": dg.MetadataValue.json(sorted(res.stats["classes_present"])),
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
            {"quadrants_rendered": len(run.shas), "buildings_drawn": drawn_total},
            streamed=True,
        )

    return render
