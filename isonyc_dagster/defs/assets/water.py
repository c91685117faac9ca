"""The ``water_mask`` asset: per-quadrant water class and soft mask, from geometry (never from colours)."""

from collections.abc import Iterator

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import PartitionRun, blob_link, thumbnail_md
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.generate.water import FALLOFF_PX, StoredMask, store_water_mask
from isonyc_dagster.workers import in_flight, local_workers


def build_water_asset(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=layers.WATER_MASK,
        partitions_def=partitions_def,
        deps=[layers.RENDER],
        group_name="inputs",
        compute_kind="numpy",
        code_version=f"edt-falloff{FALLOFF_PX:g}",
        backfill_policy=dg.BackfillPolicy.single_run(),
        output_required=False,  # range runs: one materialization per partition (``PartitionRun.emit``)
    )
    def water_mask_asset(
        context: dg.AssetExecutionContext, project: ProjectResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        """Water projected with the renderer's camera: ALL_WATER / ALL_LAND / WATER_EDGE flag + a soft mask."""
        p = project.get()
        inputs = p.step_inputs()
        run = PartitionRun(context, map_quadrants=len(p.quadrants))
        counts = {"ALL_WATER": 0, "ALL_LAND": 0, "WATER_EDGE": 0}
        todo: list[tuple[str, tuple[int, int]]] = []
        for key, (x, y) in run:
            if run.fill and p.store.active(layers.RENDER, x, y) is None:
                run.wait(key, "not rendered yet")
                continue
            todo.append((key, (x, y)))

        def mask(item: tuple[str, tuple[int, int]]) -> StoredMask:
            return store_water_mask(p.store, inputs.render_aux, *item[1], quadrant_px=p.geometry.q)

        for (key, _xy), out in in_flight(mask, todo, local_workers(), name="water"):
            counts[out.kind.name] += 1
            meta = {
                "quadrant": key,
                "water": out.kind.name,
                "water_fraction": out.water_fraction,
                "sha256": out.version.sha256,
            }
            if run.thumbnails:
                meta["mask"] = thumbnail_md(
                    out.png,
                    max_px=128,
                    title=f"water {key}",
                    link=blob_link(p.config.console_url, out.version.sha256),
                )
            run.record(key, out.version.sha256, meta)
            yield from run.emit(key)
        yield from run.outputs({k.lower(): v for k, v in counts.items()}, streamed=True)

    return water_mask_asset
