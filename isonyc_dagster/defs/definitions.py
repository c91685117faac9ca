"""The Dagster code location: ``defs`` for the project of ``$ISONYC_CONFIG`` (default: the embedded offline demo).

``build_definitions(config)`` builds the same thing for any ``ProjectConfig`` (tests, other deployments).
"""

from __future__ import annotations

import warnings

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.actions import console_action_job
from isonyc_dagster.defs.assets.derived import build_derived_defs
from isonyc_dagster.defs.assets.generation import build_generation_asset
from isonyc_dagster.defs.assets.geodata import geodata
from isonyc_dagster.defs.assets.photoreal import build_photoreal_defs
from isonyc_dagster.defs.assets.publish import build_export_assets, build_publish_job
from isonyc_dagster.defs.assets.render import build_render_asset
from isonyc_dagster.defs.assets.restyle import build_restyle_assets
from isonyc_dagster.defs.assets.scene import build_scene_defs
from isonyc_dagster.defs.assets.steps import STEP_ASSET_NAMES, build_step_asset
from isonyc_dagster.defs.assets.style import style_pairs
from isonyc_dagster.defs.assets.training import build_training_defs
from isonyc_dagster.defs.assets.water import build_water_asset
from isonyc_dagster.defs.jobs import seam_pilot_job
from isonyc_dagster.defs.partitions import LatticeMappings
from isonyc_dagster.defs.resources import (
    GeneratorResource,
    ProjectResource,
    generator_resource,
    project_style,
)
from isonyc_dagster.defs.sensors import build_jobs, build_wave_backfill, build_wave_scheduler
from isonyc_dagster.generate.plan import StepKind
from isonyc_dagster.generate.seams import QA_THRESHOLD
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.project import Project


def build_definitions(config: ProjectConfig, *, generator: GeneratorResource | None = None) -> dg.Definitions:
    """All assets, checks, the wave scheduler and resources for one project."""
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    project = Project(config)
    maps = LatticeMappings(project.plan, project.order)
    qp = maps.quadrants

    render = build_render_asset(qp)
    # The photoreal layer exists only where the project's infill uses it (the default graph is unchanged).
    photoreal, photoreal_jobs, photoreal_resources = build_photoreal_defs(config, qp)
    steps = []
    for kind in StepKind:
        deps = [dg.AssetDep(layers.RENDER, partition_mapping=maps.quadrant_to_step(kind))]
        deps += [
            dg.AssetDep(layers.PHOTOREAL, partition_mapping=maps.quadrant_to_step(kind)) for _ in photoreal
        ]
        for up_kind in LatticeMappings.CONTEXT[kind]:
            deps.append(
                dg.AssetDep(STEP_ASSET_NAMES[up_kind], partition_mapping=maps.step_to_step(up_kind, kind))
            )
        steps.append(build_step_asset(kind, maps.cells[kind], deps))
    generation = build_generation_asset(
        qp,
        [dg.AssetDep(STEP_ASSET_NAMES[k], partition_mapping=maps.step_to_quadrant(k)) for k in StepKind],
        seam_threshold=QA_THRESHOLD,
    )
    water = build_water_asset(qp)
    exports = build_export_assets()
    restyled, restyle_jobs = [], []
    for name, prompt in config.restyle.items():
        assets, more_jobs = build_restyle_assets(name, prompt, maps)
        restyled, restyle_jobs = restyled + assets, restyle_jobs + more_jobs
    derived, derived_jobs = build_derived_defs(list(config.derived_layers), qp, restyled)
    derived, derived_jobs = derived + restyled, derived_jobs + restyle_jobs
    jobs = build_jobs()
    publish_job, publish_schedule = build_publish_job()
    backfill_jobs, backfill_schedules = build_wave_backfill(config.schedule_cron)
    training, training_jobs = build_training_defs(config)  # only with a [training] table
    scenes, scene_jobs, scene_sensors = build_scene_defs(config)  # only with a [lift] table
    extra_assets, extra_jobs = [style_pairs, *training, *scenes], [publish_job, *training_jobs, *scene_jobs]
    extra_jobs += backfill_jobs
    return dg.Definitions(
        assets=[geodata, render, *photoreal, *steps, generation, water, *exports, *derived, *extra_assets],
        jobs=[*jobs, seam_pilot_job, console_action_job, *derived_jobs, *extra_jobs, *photoreal_jobs],
        schedules=[publish_schedule, *backfill_schedules],
        sensors=[
            build_wave_scheduler([*jobs, *derived_jobs, *photoreal_jobs], enabled=config.scheduler_enabled),
            *scene_sensors,
        ],
        resources={
            "project": ProjectResource.for_config(config),
            "generator": generator or generator_resource(config.backend, style=project_style(config)),
            **photoreal_resources,
        },
        executor=dg.in_process_executor,
    )


defs = build_definitions(Project.from_env().config)
