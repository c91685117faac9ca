"""``scene_3d``: a Gaussian-splat scene per named region (``lift/``), and ``scene_scheduler``, the sensor that keeps
the scenes current.

Partitions are the dynamic partitions ``regions`` (added by ``isonyc region add`` and by the sensor from the
registry). The asset declares ``generation`` and ``render`` as dependencies for lineage, through
``AllPartitionMapping``: Dagster has no built-in mapping from an (x, y) multi-partition to a dynamic key, and a
custom mapping is dropped from the snapshot. Dagster's stale flag over such an edge is not exact (measured on 1.13:
with ≤ 100 upstream partitions every region goes stale when any quadrant changes; above that the resolver skips the
dependency and nothing ever goes stale), so the sensor decides: it fingerprints each region's inputs (the active
``generation`` and ``render`` sha256s of its quadrants and the lift settings), compares with the fingerprint the
partition's last materialization recorded, and requests exactly the regions that differ. See ARCHITECTURE.md.
"""

import hashlib
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import ValidationError

from isonyc_dagster import layers
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.geo.config import ConfigError, ProjectConfig
from isonyc_dagster.lift.regions import (
    Region,
    RegionError,
    inputs_fingerprint,
    project_registry,
    region_inputs,
)
from isonyc_dagster.project import Project

SCENE_3D = "scene_3d"
SCENE_JOB = "scene_3d_job"
REGIONS_NAME = "regions"
REGIONS = dg.DynamicPartitionsDefinition(name=REGIONS_NAME)
FINGERPRINT = "inputs_fingerprint"


def lift_settings(config: ProjectConfig) -> Any:
    """The ``LiftSettings`` of ``[lift] settings``; a wrong key or value is a ``ConfigError`` naming it."""
    from isonyc_dagster.lift.pipeline import LiftSettings

    overrides = dict(config.lift.settings) if config.lift is not None else {}
    try:
        return LiftSettings.model_validate(overrides)
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(
            f"invalid [lift] settings: {bad} (see LiftSettings in isonyc_dagster/lift/pipeline.py)"
        ) from None


def region_fingerprint(project: Project, region: Region, settings: Any) -> tuple[str, dict[str, Any]]:
    """(fingerprint, inputs) of a region now: equal fingerprints mean the same scene would be lifted."""
    inputs = region_inputs(project.store, region)
    return inputs_fingerprint(inputs, settings.model_dump(mode="json")), inputs


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _metadata(p: Project, region: Region, res: Any, fingerprint: str, final: Path) -> dict[str, Any]:
    return {
        "region": dg.MetadataValue.json(region.to_json()),
        "splats": res.splat_count,
        "psnr_input_db": round(float(res.psnr_input), 3),
        "stage_seconds": dg.MetadataValue.json({k: round(v, 3) for k, v in res.stage_seconds.items()}),
        "frames": res.frames,
        "rasterizer": res.rasterizer,
        "viewer": dg.MetadataValue.path(str(Path(p.config.output_dir) / "splat.html")),
        "viewer_page": f"splat.html?scene={region.name} (`isonyc serve {p.config.output_dir}`, then open it)",
        "ply": dg.MetadataValue.path(str(final / "gf.ply")),
        "rrd": dg.MetadataValue.path(str(final / res.rrd_path.name)),
        "video": dg.MetadataValue.path(str(final / res.video_path.name)),
        FINGERPRINT: fingerprint,
    }


def build_scene_defs(
    config: ProjectConfig,
) -> tuple[list[dg.AssetsDefinition], list[Any], list[dg.SensorDefinition]]:
    """``([scene_3d], [scene_3d_job], [scene_scheduler])`` when the project has ``[lift]``; else empty lists."""
    if config.lift is None:
        return [], [], []
    settings = lift_settings(config)  # a bad [lift] settings table fails when the definitions load

    @dg.asset(
        name=SCENE_3D,
        partitions_def=REGIONS,
        deps=[
            dg.AssetDep(layers.GENERATION, partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(layers.RENDER, partition_mapping=dg.AllPartitionMapping()),
        ],
        group_name="lift",
        compute_kind="gaussian-splats",
    )
    def scene_3d(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Lift the region's quadrants (generation pixels + exact render depth) into a Gaussian-splat scene, written to
        ``<output_dir>/scenes/<region>/`` (gf.ply, Rerun .rrd, fly-through .mp4) and listed for the map viewer."""
        from isonyc_dagster.lift.pipeline import LiftError, input_from_map, run_lift
        from isonyc_dagster.publish.scenes import (
            SceneError,
            install_scene,
            scene_staging_dir,
            write_splat_viewer,
        )

        p = project.get()
        try:
            region = project_registry(p).get(context.partition_key)
        except RegionError as e:
            raise dg.Failure(description=str(e), allow_retries=False) from None
        fingerprint, inputs = region_fingerprint(p, region, settings)
        out = Path(p.config.output_dir)
        staged = scene_staging_dir(out, region.name)
        try:
            inp = input_from_map(p, region.x0, region.y0, region.w, region.h)
            res = run_lift(inp, settings, staged, log=context.log.info)
        except BaseException as e:  # a failed or interrupted lift leaves no hidden directory behind
            shutil.rmtree(staged, ignore_errors=True)
            if isinstance(e, LiftError):
                raise dg.Failure(description=f"region {region.name!r}: {e}", allow_retries=False) from None
            raise
        entry = {
            **region.to_json(),
            "splats": res.splat_count,
            "psnr_input_db": round(float(res.psnr_input), 2),
            "rrd": res.rrd_path.name,
            "video": res.video_path.name,
            "azimuth_deg": p.config.map.azimuth_deg,
            "elevation_deg": p.config.map.elevation_deg,
            FINGERPRINT: fingerprint,
        }
        final = install_scene(out, region.name, staged, entry)
        try:
            write_splat_viewer(out)
        except SceneError as e:  # the scene is complete; only the page to view it is missing
            context.log.warning("scene %s written, splat viewer not installed: %s", region.name, e)
        context.log.info(
            "scene %s: %d splats, PSNR %.2f dB, %s",
            region.name,
            res.splat_count,
            res.psnr_input,
            res.stage_seconds,
        )
        return dg.MaterializeResult(
            metadata={**_metadata(p, region, res, fingerprint, final), "quadrants": len(inputs["tiles"])},
            data_version=dg.DataVersion(_sha256_file(final / "gf.ply")[:16]),
        )

    job = dg.define_asset_job(SCENE_JOB, selection=[SCENE_3D], partitions_def=REGIONS)
    auto = config.lift is not None and config.lift.auto
    return [scene_3d], [job], [build_scene_scheduler(job, auto=auto, settings=settings)]


def last_fingerprints(instance: dg.DagsterInstance, names: list[str]) -> dict[str, str | None]:
    """Per region, the inputs fingerprint its latest ``scene_3d`` materialization recorded (None: never built)."""
    out: dict[str, str | None] = {}
    for name in names:
        recs = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(SCENE_3D), asset_partitions=[name]), limit=1
        ).records
        md = recs[0].asset_materialization.metadata if recs and recs[0].asset_materialization else {}
        value = md.get(FINGERPRINT)
        out[name] = str(value.value) if value is not None else None
    return out


def plan_scenes(project: Project, instance: dg.DagsterInstance, settings: Any) -> dg.SensorResult:
    """One tick of ``scene_scheduler``: add the registry's regions missing from the ``regions`` partitions, and
    request every region whose quadrants are all generated and whose inputs fingerprint differs from its last build.

    Partitions are never deleted here (``isonyc region rm`` does that): one left behind fails with a clear error."""
    regions = project_registry(project).list()
    names = [r.name for r in regions]
    have = set(instance.get_dynamic_partitions(REGIONS_NAME))
    add = [n for n in names if n not in have]
    last = last_fingerprints(instance, names)
    requests, waiting = [], []
    for region in regions:
        fp, inputs = region_fingerprint(project, region, settings)
        if inputs["missing"]:
            waiting.append(region.name)
        elif fp != last[region.name]:
            # run_key: a request for the same inputs is made once (a failed lift is retried when its inputs change
            # or from the UI), so a region is never queued twice while its run is in flight.
            requests.append(dg.RunRequest(partition_key=region.name, run_key=f"{region.name}:{fp}"))
    partition_requests: list[Any] = [REGIONS.build_add_request(add)] if add else []
    skip = None
    if not requests:
        skip = f"{len(regions)} regions up to date" + (
            f"; waiting for generation: {', '.join(waiting)}" if waiting else ""
        )
    return dg.SensorResult(
        run_requests=requests, dynamic_partitions_requests=partition_requests, skip_reason=skip
    )


def build_scene_scheduler(job: Any, *, auto: bool, settings: Any) -> dg.SensorDefinition:
    @dg.sensor(
        name="scene_scheduler",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING if auto else dg.DefaultSensorStatus.STOPPED,
    )
    def scene_scheduler(context: dg.SensorEvaluationContext, project: ProjectResource) -> dg.SensorResult:
        """Lift new regions and re-lift a region when its quadrants' generation or render changed."""
        return plan_scenes(project.get(), context.instance, settings)

    return scene_scheduler
