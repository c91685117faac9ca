"""The map outputs: ``dzi_pyramid`` (Deep Zoom + the OpenSeadragon viewer) and ``pmtiles_archive``."""

from pathlib import Path

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.publish.build import build_pyramid
from isonyc_dagster.publish.pmtiles import export_pmtiles


def build_export_assets() -> list[dg.AssetsDefinition]:
    @dg.asset(name=layers.DZI_PYRAMID, deps=[layers.GENERATION], group_name="export", compute_kind="pyvips")
    def dzi_pyramid(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Bring the Deep Zoom pyramid up to date: only tiles above changed quadrants are rewritten."""
        from isonyc_dagster.publish.viewer import ViewerError, write_viewer

        p = project.get()
        out = Path(p.config.output_dir)
        meta = {
            "map": p.config.map.model_dump(mode="json"),
            "attribution": p.city().attribution or None,
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
            }
        )

    @dg.asset(
        name=layers.PMTILES_ARCHIVE, deps=[layers.DZI_PYRAMID], group_name="export", compute_kind="pmtiles"
    )
    def pmtiles_archive(project: ProjectResource) -> dg.MaterializeResult:
        """The same lossless tiles as one PMTiles file, for single-file hosting."""
        p = project.get()
        out = Path(p.config.output_dir)
        info = export_pmtiles(out, out / f"{p.config.map.name}.pmtiles", name=p.config.map.name)
        return dg.MaterializeResult(
            metadata={"path": dg.MetadataValue.path(str(info.path)), "tiles": info.tiles, "bytes": info.bytes}
        )

    return [dzi_pyramid, pmtiles_archive]
