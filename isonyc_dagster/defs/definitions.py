"""The Dagster code location: ``defs`` for the project of ``$ISONYC_CONFIG`` (default: the embedded offline demo).

``build_definitions(config)`` builds the same thing for any ``ProjectConfig`` (tests, other deployments).
"""

from __future__ import annotations

import warnings

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.assets.generation import build_generation_asset
from isonyc_dagster.defs.assets.geodata import geodata
from isonyc_dagster.defs.assets.publish import build_export_assets
from isonyc_dagster.defs.assets.render import build_render_asset
from isonyc_dagster.defs.assets.steps import STEP_ASSET_NAMES, build_step_asset
from isonyc_dagster.defs.assets.water import build_water_asset
from isonyc_dagster.defs.jobs import seam_pilot_job
from isonyc_dagster.defs.partitions import LatticeMappings, cell_partitions, quadrant_partitions
from isonyc_dagster.defs.resources import GeneratorResource, ProjectResource, generator_resource
from isonyc_dagster.defs.sensors import build_jobs, build_wave_scheduler
from isonyc_dagster.generate.plan import StepKind
from isonyc_dagster.generate.seams import DEFAULT_THRESHOLD
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.project import Project


def build_definitions(config: ProjectConfig, *, generator: GeneratorResource | None = None) -> dg.Definitions:
    """All assets, checks, the wave scheduler and resources for one project."""
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    project = Project(config)
    qp = quadrant_partitions(project.quadrants)
    cp = cell_partitions(project.plan)
    maps = LatticeMappings(project.plan, project.quadrants)

    render = build_render_asset(qp)
    steps = []
    for kind in StepKind:
        deps = [dg.AssetDep(layers.RENDER, partition_mapping=maps.quadrant_to_step(kind))]
        for up_kind, dx, dy in LatticeMappings.CONTEXT[kind]:
            deps.append(dg.AssetDep(STEP_ASSET_NAMES[up_kind], partition_mapping=maps.step_to_step(dx, dy)))
        steps.append(build_step_asset(kind, cp, deps))
    generation = build_generation_asset(
        qp,
        [dg.AssetDep(STEP_ASSET_NAMES[k], partition_mapping=maps.step_to_quadrant(k)) for k in StepKind],
        seam_threshold=DEFAULT_THRESHOLD,
    )
    water = build_water_asset(qp)
    exports = build_export_assets()
    jobs = build_jobs()
    return dg.Definitions(
        assets=[geodata, render, *steps, generation, water, *exports],
        jobs=[*jobs, seam_pilot_job],
        sensors=[build_wave_scheduler(jobs)],
        resources={
            "project": ProjectResource.for_config(config),
            "generator": generator or generator_resource(config.backend),
        },
        executor=dg.in_process_executor,
    )


defs = build_definitions(Project.from_env().config)
