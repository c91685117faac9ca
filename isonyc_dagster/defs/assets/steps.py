"""The generation step assets: ``blocks``, ``bridges_v``, ``bridges_h`` and ``corners``, partitioned by lattice cell.

Each partition is one step of the lattice plan, executed by ``generate.step.run_step``. Context dependencies
between step assets are partition mappings (``defs.partitions.LatticeMappings``), so the UI shows which steps a
step used and what goes stale on regeneration.
"""

from typing import Any

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.backends.base import BackendError
from isonyc_dagster.defs.assets._common import PartitionRun, thumbnail_md
from isonyc_dagster.defs.resources import GeneratorResource, ProjectResource
from isonyc_dagster.generate.plan import Step, StepKind
from isonyc_dagster.generate.step import StepInputs, StepResult, StepSettings, run_step, step_seed
from isonyc_dagster.generate.template import ContextMissing, OutputRejected, RenderMissing, Template
from isonyc_dagster.project import Project

#: Dagster asset name of each step kind.
STEP_ASSET_NAMES: dict[StepKind, str] = {kind: layers.STEP_ASSETS[kind.value] for kind in StepKind}


def build_step_asset(
    kind: StepKind, partitions_def: dg.PartitionsDefinition, deps: list[dg.AssetDep]
) -> dg.AssetsDefinition:
    @dg.asset(
        name=STEP_ASSET_NAMES[kind],
        partitions_def=partitions_def,
        deps=deps,
        group_name="generation",
        compute_kind="generation",
        description=f"Wave-{kind.wave} {kind.value} steps of the seam-free lattice (docs/ARCHITECTURE.md): "
        "template → model → validated quadrants, committed atomically.",
        retry_policy=dg.RetryPolicy(
            max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
        ),
        pool="generation_backend",
    )
    def _step_asset(
        context: dg.AssetExecutionContext, project: ProjectResource, generator: GeneratorResource
    ) -> dg.MaterializeResult:
        p = project.get()
        inputs = p.step_inputs()
        run = PartitionRun(context)
        planned = _plan_run(run, p, kind, inputs)
        settings = StepSettings(
            prompt=p.config.prompt,
            generator_key=generator.identity(p.config.prompt),
            candidates=generator.candidates,
        )
        backend = generator.build(p.config.map)
        try:
            for key, step, template in planned:
                seed = step_seed(p.config.map.name, step, generator.seed_offset)
                try:
                    out = run_step(p.store, backend, step, inputs, template, settings, seed=seed)
                except (BackendError, OutputRejected) as e:
                    raise dg.Failure(description=f"step {step.key}: {e}", allow_retries=True) from e
                run.record(key, out.output_sha, _step_metadata(out, thumbnails=run.thumbnails))
                context.log.info(
                    "%s %s (%d quadrants, context %d) with %s",
                    "reused already committed" if out.reused else "generated",
                    step.key,
                    len(step.quadrants),
                    len(out.provenance["context"]),
                    out.provenance.get("backend"),
                )
        finally:
            backend.close()
        return run.result({"steps_generated": len(run.shas)})

    return _step_asset


def _plan_run(
    run: PartitionRun, p: Project, kind: StepKind, inputs: StepInputs
) -> list[tuple[str, Step, Template]]:
    """Every step of the run with its template; fails fast, before any model call, if one lacks its inputs."""
    planned: list[tuple[str, Step, Template]] = []
    missing: list[str] = []
    for key, cell in run:
        step = p.plan.get(kind, cell)
        if step is None:
            run.skip(key, {"empty": True, "reason": "no quadrant of this step is inside the bounds"})
            continue
        try:
            planned.append((key, step, inputs.template(step)))
        except (ContextMissing, RenderMissing) as e:
            missing.append(str(e))
    if missing:
        raise dg.Failure(
            description="context not ready, nothing was generated: " + "; ".join(missing[:10]),
            metadata={"missing": dg.MetadataValue.json(missing[:50])},
            # Retrying inside this run cannot help: the wave scheduler requests the step again once its
            # context is materialized (and a manual launch should fail at once, with this message).
            allow_retries=False,
        )
    return planned


def _step_metadata(out: StepResult, *, thumbnails: bool) -> dict[str, Any]:
    prov, step = out.provenance, out.step
    meta: dict[str, Any] = {
        "step": step.key,
        "quadrants": dg.MetadataValue.json([list(q) for q in step.quadrants]),
        "context": dg.MetadataValue.json(prov["context"]),
        "backend": str(prov.get("backend")),
        "model_id": str(prov.get("model_id")),
        "seed": prov.get("seed"),
        "prompt_sha256": str(prov.get("prompt_sha256")),
        "template_sha256": out.template_sha,
        "output_sha256": prov["output_sha256"],
        "latency_s": float(prov.get("latency_s") or 0.0),
    }
    if thumbnails:
        meta["template"] = thumbnail_md(out.template.png, max_px=256, title=f"template {step.key}")
        meta["output"] = thumbnail_md(out.output_png, max_px=256, title=f"output {step.key}")
    return meta
