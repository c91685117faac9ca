"""The map outputs: ``dzi_pyramid`` (Deep Zoom + the OpenSeadragon viewer), ``pmtiles_archive`` and
``published_map`` (the deployment of both to ``publish.to``: a directory, gs:// or s3://)."""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.publish.build import build_pyramid
from isonyc_dagster.publish.pmtiles import export_pmtiles


def build_export_assets() -> list[dg.AssetsDefinition]:
    @dg.asset(name=layers.DZI_PYRAMID, deps=[layers.GENERATION], group_name="map", compute_kind="pyvips")
    def dzi_pyramid(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Bring the Deep Zoom pyramid up to date: only tiles above changed quadrants are rewritten."""
        from isonyc_dagster.publish.viewer import ViewerError, write_viewer

        p = project.get()
        out = Path(p.config.output_dir)
        meta = {
            "map": p.config.map.model_dump(mode="json"),
            "attribution": p.attribution(),
            "dagster_url": p.config.dagster_url,
            "dagster_asset": layers.GENERATION,
            "partition_key_template": "{x}|{y}",
        }
        info = build_pyramid(
            p.store,
            out,
            grid=p.quadrants.bbox,
            layer=layers.GENERATION,
            meta={k: v for k, v in meta.items() if v is not None},
            publish=p.publish_spec,
        )
        viewer = None
        try:
            viewer = write_viewer(out, info.name)
        except ViewerError as e:
            context.log.warning("pyramid built, viewer not written: %s", e)
        s = info.stats
        return dg.MaterializeResult(
            metadata={
                "dzi": dg.MetadataValue.path(str(info.dzi_path)),
                "viewer": dg.MetadataValue.path(str(viewer)) if viewer else "not written (run `npm ci`)",
                "levels": len(info.levels),
                "size_px": f"{info.layout.width}×{info.layout.height}",
                "tiles_written": s.tiles_written,
                "tiles_skipped": s.tiles_skipped,
                "seconds": round(s.seconds, 3),
                "clipped": p.publish_spec.clip is not None,
                "placeholders": p.publish_spec.placeholders,
            }
        )

    @dg.asset(
        name=layers.PMTILES_ARCHIVE, deps=[layers.DZI_PYRAMID], group_name="map", compute_kind="pmtiles"
    )
    def pmtiles_archive(project: ProjectResource) -> dg.MaterializeResult:
        """The same lossless tiles as one PMTiles file, for single-file hosting."""
        p = project.get()
        out = Path(p.config.output_dir)
        info = export_pmtiles(out, out / f"{p.config.map.name}.pmtiles", name=p.config.map.name)
        return dg.MaterializeResult(
            metadata={"path": dg.MetadataValue.path(str(info.path)), "tiles": info.tiles, "bytes": info.bytes}
        )

    return [dzi_pyramid, pmtiles_archive, build_published_map()]


PUBLISHED_MAP = "published_map"


def build_published_map() -> dg.AssetsDefinition:
    @dg.asset(
        name=PUBLISHED_MAP,
        deps=[layers.DZI_PYRAMID],
        group_name="map",
        compute_kind="publish",
        output_required=False,
    )
    def published_map(context: dg.AssetExecutionContext, project: ProjectResource):  # type: ignore[no-untyped-def]
        """Deploy the map to ``publish.to``: changed tiles (by the pyramid manifest's hashes), the PMTiles archive
        and the viewer. Not materialized when no destination is configured."""
        from isonyc_dagster.publish.deploy import deploy

        p = project.get()
        pub = p.config.publish
        if not pub.to:
            context.log.info("published_map: no publish.to configured; nothing deployed")
            return
        plan, stats = deploy(
            Path(p.config.output_dir),
            pub.to,
            name=p.config.map.name,
            dagster_url=pub.dagster_url,
            max_age_s=pub.max_age_s,
            tile_max_age_s=pub.tile_max_age_s,
            s3_endpoint_url=pub.s3_endpoint_url,
        )
        assert stats is not None
        yield dg.MaterializeResult(
            metadata={
                "destination": plan.target,
                "uploaded": stats.uploaded,
                "uploaded_tiles_per_level": json.dumps(stats.uploaded_tiles_per_level),
                "unchanged": stats.skipped,
                "deleted": stats.deleted,
                "bytes": stats.bytes,
                "seconds": round(stats.seconds, 2),
            },
            data_version=dg.DataVersion(plan.publish_id),
        )

    return published_map


def build_publish_job() -> tuple[Any, dg.ScheduleDefinition]:
    """``publish_job`` and an hourly ``publish_schedule`` (off until turned on) that republishes the map."""
    job = dg.define_asset_job("publish_job", selection=[PUBLISHED_MAP])
    return job, dg.ScheduleDefinition(
        name="publish_schedule",
        job=job,
        cron_schedule="0 * * * *",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
