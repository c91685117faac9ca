"""Model-restyled layers as assets: per restyle ``name`` (``ProjectConfig.restyle``), one asset per lattice step kind
(``restyle_<name>_blocks`` … ``_corners``) over the same cells and mappings as the base map's steps.

A restyle step depends on the ``generation`` quadrants of its footprint and on the restyle steps it takes as
context, exactly like the base map's steps depend on renders and context steps; it fails fast (no model call) when
its context is not restyled yet, and writes the store layer ``restyle_<name>``.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import PartitionRun, thumbnail_md
from isonyc_dagster.defs.partitions import LatticeMappings
from isonyc_dagster.defs.resources import GeneratorResource, ProjectResource
from isonyc_dagster.generate.plan import StepKind
from isonyc_dagster.generate.restyle import restyle_step
from isonyc_dagster.generate.step import step_seed
from isonyc_dagster.generate.template import ContextMissing


def restyle_asset(name: str, kind: StepKind) -> str:
    """The asset of restyle ``name``'s steps of ``kind``: ``restyle_<name>_blocks`` …"""
    return f"{layers.RESTYLE_PREFIX}{name}_{layers.STEP_ASSETS[kind.value]}"


def build_restyle_assets(
    name: str, prompt: str, maps: LatticeMappings
) -> tuple[list[dg.AssetsDefinition], list[Any]]:
    """The four step assets of restyle ``name`` (store layer ``restyle_<name>``) and a job per asset."""
    assets = [_step_asset(name, prompt, kind, maps) for kind in StepKind]
    jobs = [
        dg.define_asset_job(f"{restyle_asset(name, k)}_job", selection=[restyle_asset(name, k)])
        for k in StepKind
    ]
    return assets, jobs


def _step_asset(name: str, prompt: str, kind: StepKind, maps: LatticeMappings) -> dg.AssetsDefinition:
    layer = f"{layers.RESTYLE_PREFIX}{name}"
    deps = [dg.AssetDep(layers.GENERATION, partition_mapping=maps.quadrant_to_step(kind))]
    for up_kind in LatticeMappings.CONTEXT[kind]:
        deps.append(
            dg.AssetDep(restyle_asset(name, up_kind), partition_mapping=maps.step_to_step(up_kind, kind))
        )

    @dg.asset(
        name=restyle_asset(name, kind),
        partitions_def=maps.cells[kind],
        deps=deps,
        group_name="layers",
        compute_kind="generation",
        description=f"Restyle '{name}': wave-{kind.wave} {kind.value} steps over the base map, with the restyled "
        "neighbours as context.",
        pool="generation_backend",
    )
    def _restyle(
        context: dg.AssetExecutionContext, project: ProjectResource, generator: GeneratorResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        p = project.get()
        inputs = p.step_inputs()
        run = PartitionRun(context, map_quadrants=len(p.quadrants))
        backend = generator.build(p.config.map)
        try:
            for key, cell in run:
                step = p.plan.step_at(kind, cell)
                seed = step_seed(f"{p.config.map.name}:{layer}", step, generator.seed_offset)
                try:
                    versions = restyle_step(
                        p.store, backend, step, inputs.render_aux, layer=layer, prompt=prompt, seed=seed
                    )
                except ContextMissing as e:
                    raise dg.Failure(
                        description=f"restyle {name} step {step.key}: {e}", allow_retries=False
                    ) from e
                meta = {
                    "step": step.key,
                    "quadrants": dg.MetadataValue.json([list(q) for q in step.quadrants]),
                }
                if run.thumbnails:
                    meta["output"] = thumbnail_md(p.store.get_blob(versions[0].provenance["output_sha256"]))
                run.record(key, str(versions[0].provenance["output_sha256"]), meta)
        finally:
            backend.close()
        yield from run.outputs({"steps": len(run.shas), "layer": layer})

    return _restyle
