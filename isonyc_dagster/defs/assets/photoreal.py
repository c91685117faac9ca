"""The ``photoreal`` asset: each quadrant drawn from a 3D tileset through the whitebox camera (only in projects
whose ``render_layer`` is photoreal or both). The Google key comes from ``PhotorealResource.google_maps_api_key``,
bound to ``dg.EnvVar`` in ``Definitions``: never logged, never in metadata or provenance."""

import os
from collections.abc import Iterator
from typing import Any

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import PartitionRun, thumbnail_md
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.photoreal.sources import GOOGLE, GOOGLE_KEY_ENV


class PhotorealResource(dg.ConfigurableResource):
    """Secrets of the photoreal source (bind to dg.EnvVar)."""

    google_maps_api_key: str | None = None


def photoreal_resource(config: ProjectConfig) -> PhotorealResource:
    """The resource for ``config``: the key bound to $ISONYC_GOOGLE_MAPS_API_KEY only for the Google source."""
    # Bound only when set (like the generator's secrets): a missing key then fails the run with the core's
    # one-line error naming the variable, instead of a config error before the run.
    if config.photoreal.tileset.strip() == GOOGLE and os.environ.get(GOOGLE_KEY_ENV):
        return PhotorealResource(google_maps_api_key=dg.EnvVar(GOOGLE_KEY_ENV))
    return PhotorealResource()


def build_photoreal_job() -> Any:
    """``photoreal_job``: backfill the photoreal layer over any range of quadrants (one browser per run)."""
    return dg.define_asset_job(f"{layers.PHOTOREAL}_job", selection=[layers.PHOTOREAL])


def build_photoreal_asset(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=layers.PHOTOREAL,
        partitions_def=partitions_def,
        group_name="inputs",
        compute_kind="chromium",
        code_version="photoreal-3dtiles-v1",
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def photoreal(
        context: dg.AssetExecutionContext, project: ProjectResource, photoreal: PhotorealResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        """Render each quadrant of the run photoreal (complete at the target screen-space error, else the run
        fails and nothing is stored for that quadrant); store the PNG with its render provenance."""
        p = project.get()
        run = PartitionRun(context, map_quadrants=len(p.quadrants))
        wanted = list(run)
        retried = 0
        with p.photoreal_renderer(api_key=photoreal.google_maps_api_key) as renderer:
            stored = p.store_photoreal(renderer, [xy for _, xy in wanted])
            cache = renderer.cache.stats.as_dict() if renderer.cache is not None else {}
        for (key, (x, y)), (version, prov) in zip(wanted, stored, strict=True):
            retried += int(prov["attempts"]) - 1
            meta = {
                "quadrant": f"{x},{y}",
                "sha256": version.sha256,
                "version": version.version,
                "source": prov["source"]["url"],
                "attribution": prov["attribution"],
                "error_target_px": prov["error_target_px"],
                "attempts": prov["attempts"],
                "load_ms": prov["timings_ms"]["load"],
            }
            if run.thumbnails:
                meta["preview"] = thumbnail_md(p.store.get_blob(version.sha256), title=f"photoreal {x},{y}")
            run.record(key, version.sha256, meta)
        yield from run.outputs(
            {
                "quadrants_rendered": len(stored),
                "retried_attempts": retried,
                "tile_cache": dg.MetadataValue.json(cache),
            }
        )

    return photoreal


def build_photoreal_defs(
    config: ProjectConfig, partitions_def: dg.PartitionsDefinition
) -> tuple[list[dg.AssetsDefinition], list[Any], dict[str, PhotorealResource]]:
    """The photoreal asset, its job and resource, or nothing at all when the infill uses the whitebox only."""
    if config.render_layer == "whitebox":
        return [], [], {}
    return (
        [build_photoreal_asset(partitions_def)],
        [build_photoreal_job()],
        {"photoreal": photoreal_resource(config)},
    )
