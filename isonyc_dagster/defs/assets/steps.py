"""The generation step assets: ``blocks``, ``bridges_v``, ``bridges_h`` and ``corners``, partitioned by lattice cell.

Each partition is one step of the lattice plan, executed by ``generate.step.run_step``. Context dependencies
between step assets are partition mappings (``defs.partitions.LatticeMappings``), so the UI shows which steps a
step used and what goes stale on regeneration.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.backends.base import BackendError, ImageBackend
from isonyc_dagster.defs.assets._common import PartitionRun, key2s, thumbnail_md
from isonyc_dagster.defs.links import step_links
from isonyc_dagster.defs.resources import GeneratorResource, ProjectResource
from isonyc_dagster.generate.plan import Step, StepKind
from isonyc_dagster.generate.references import ReferenceMissing, ReferenceSelector, StyleRefs
from isonyc_dagster.generate.repair import kept_sha, manual_quadrants
from isonyc_dagster.generate.rules import BackendPool, ModelInputs, step_settings
from isonyc_dagster.generate.step import (
    STEP_CACHE_QUADRANTS,
    StepInputs,
    StepResult,
    StepSettings,
    run_step,
    step_seed,
)
from isonyc_dagster.generate.template import ContextMissing, OutputRejected, RenderMissing
from isonyc_dagster.project import Project
from isonyc_dagster.workers import in_flight

#: Run tag that lets a step run overwrite versions a person made (``"true"``); without it they are kept.
OVERRIDE_MANUAL_TAG = "isonyc/override_manual"

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
        # Range runs log each step's materialization as soon as it is committed (``PartitionRun.emit``): the
        # scheduler starts its dependants while the rest of the run still works, and no range-wide one follows.
        output_required=False,
    )
    def _step_asset(
        context: dg.AssetExecutionContext, project: ProjectResource, generator: GeneratorResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        p = project.get()
        inputs = p.step_inputs(cache_quadrants=STEP_CACHE_QUADRANTS)
        run = PartitionRun(context, map_quadrants=len(p.quadrants))
        planned = _plan_run(run, p, kind, inputs)
        pool = BackendPool(
            lambda name, model: generator.build_for(p.config.map, name, model, _profile_settings(p, name))
        )
        selector = p.reference_selector()
        try:
            resolved = _resolve_inputs(p, planned, pool, selector)
            calls: list[_StepCall] = []
            for (key, step), (backend, mi) in zip(planned, resolved, strict=True):
                seed = step_seed(p.config.map.name, step, generator.seed_offset)
                settings = step_settings(
                    mi,
                    generator_key=generator.identity_for(
                        mi.backend, mi.model, mi.prompt or "", _profile_settings(p, mi.backend)
                    ),
                    candidates=generator.candidates,
                )
                try:
                    refs = selector.select(step, backend)
                except (BackendError, OutputRejected) as e:
                    raise dg.Failure(description=f"step {step.key}: {e}", allow_retries=True) from e
                calls.append(_StepCall(key, step, backend, settings, seed, refs))

            def call(c: _StepCall) -> StepResult:
                try:
                    return run_step(
                        p.store,
                        c.backend,
                        c.step,
                        inputs,
                        inputs.template(c.step),  # built here, not kept for the whole run (~3.5 MB each)
                        c.settings,
                        seed=c.seed,
                        style_refs=c.refs,
                    )
                except (BackendError, OutputRejected) as e:
                    raise dg.Failure(description=f"step {c.step.key}: {e}", allow_retries=True) from e

            # N endpoints × their concurrency keeps every GPU fed; a local backend takes the run's CPU threads.
            width = min(len(calls), sum({id(c.backend): c.backend.max_in_flight for c in calls}.values()))
            for c, out in in_flight(call, calls, width, name="step"):
                key, step = c.key, c.step
                meta = _step_metadata(out, thumbnails=run.thumbnails, store=p.store)
                meta |= step_links(p.plan, p.config.dagster_url, step, out.provenance["context"])
                run.record(key, out.output_sha, meta)
                yield from run.emit(key)
                context.log.info(
                    "%s %s (%d quadrants, context %d) with %s",
                    "reused already committed" if out.reused else "generated",
                    step.key,
                    len(step.quadrants),
                    len(out.provenance["context"]),
                    out.provenance.get("backend"),
                )
        finally:
            pool.close()
        yield from run.outputs({"steps_generated": len(run.shas)}, streamed=True)

    return _step_asset


@dataclass(frozen=True)
class _StepCall:
    key: str
    step: Step
    backend: ImageBackend
    settings: StepSettings
    seed: int
    refs: StyleRefs | None


def _profile_settings(p: Project, backend: str) -> dict[str, Any]:
    profile = p.config.backends.get(backend)
    return dict(profile.settings) if profile is not None else {}


def _resolve_inputs(
    p: Project, planned: list[tuple[str, Step]], pool: BackendPool, selector: ReferenceSelector
) -> list[tuple[ImageBackend, ModelInputs]]:
    """Each planned step's backend and inputs; a backend that needs a style reference and can get none fails the
    run here, before any model call (retrying cannot help: the user must add a reference or anchors)."""
    out: list[tuple[ImageBackend, ModelInputs]] = []
    for _key, step in planned:
        mi = p.step_rules.resolve(step)
        backend = pool.get(mi.backend, mi.model)
        try:
            selector.check(backend)
        except ReferenceMissing as e:
            raise dg.Failure(description=str(e), allow_retries=False) from None
        out.append((backend, mi.with_backend_default(backend)))
    return out


def _plan_run(run: PartitionRun, p: Project, kind: StepKind, inputs: StepInputs) -> list[tuple[str, Step]]:
    """Every step of the run whose inputs are in the store (each call builds its own template); fails fast, before
    any model call, if one lacks them (a fill run skips it instead)."""
    planned: list[tuple[str, Step]] = []
    missing: list[str] = []
    first: set[str] = set()
    for key, cell in run:
        step = p.plan.step_at(kind, cell)
        manual = manual_quadrants(p.store, step.quadrants)
        if manual and run.context.run.tags.get(OVERRIDE_MANUAL_TAG) != "true":
            # A person made these pixels (repair, revert, regenerate, import): keep them, never overwrite.
            run.record(key, kept_sha(p.store, step), {"step": step.ref, "kept_person_made": key2s(manual)})
            continue
        try:
            inputs.check_ready(step)
            planned.append((key, step))
        except (ContextMissing, RenderMissing) as e:
            if run.fill:  # the scheduler's range passes over steps whose context comes later
                run.wait(key, str(e))
                continue
            missing.append(str(e))
            first.update(_run_first(p, e))
    if missing:
        raise dg.Failure(
            description="context not ready, nothing was generated: "
            + "; ".join(missing[:10])
            + f". Run first: {', '.join(sorted(first)[:20])}",
            metadata={
                "missing": dg.MetadataValue.json(missing[:50]),
                "run_first": dg.MetadataValue.json(sorted(first)),
            },
            # Retrying inside this run cannot help: the wave scheduler requests the step again once its
            # context is materialized (and a manual launch should fail at once, with this message).
            allow_retries=False,
        )
    return planned


def _run_first(p: Project, e: ContextMissing | RenderMissing) -> set[str]:
    """The partitions to materialize before a step whose inputs are missing, as ``asset[partition key]``."""
    if isinstance(e, RenderMissing):
        return {f"{layers.RENDER}[{x}|{y}]" for x, y in e.quadrants}
    steps = [p.plan.step_for_quadrant(x, y) for x, y in e.quadrants if (x, y) in p.quadrants]
    return {f"{STEP_ASSET_NAMES[s.kind]}[{s.cell[0]}|{s.cell[1]}]" for s in steps}


def _step_metadata(out: StepResult, *, thumbnails: bool, store: Any = None) -> dict[str, Any]:
    prov, step = out.provenance, out.step
    meta: dict[str, Any] = {
        "step": step.ref,
        # Partition keys, as Dagster writes them, so a person can paste them into the partition filter.
        "quadrants": key2s(step.quadrants),
        "context": key2s((int(cx), int(cy)) for cx, cy in prov["context"]),
        "backend": str(prov.get("backend")),
        "model_id": str(prov.get("model_id")),
        "seed": prov.get("seed"),
        "prompt_sha256": str(prov.get("prompt_sha256")),
        "rule": str(prov.get("rule") or "(none)"),
        "style_refs": dg.MetadataValue.json(prov.get("style_refs") or []),
        "preprocess": dg.MetadataValue.json(prov.get("preprocess") or {}),
        "template_sha256": out.template_sha,
        "output_sha256": prov["output_sha256"],
        "latency_s": float(prov.get("latency_s") or 0.0),
    }
    if thumbnails:
        # What the model received: the template after preprocessing (if any).
        meta["template"] = thumbnail_md(out.model_input_png, max_px=256, title=f"template {step.key}")
        meta["output"] = thumbnail_md(out.output_png, max_px=256, title=f"output {step.key}")
    if post := prov.get("postprocess"):  # pixel-art post-processing: the raw model output beside the result
        meta["postprocess"] = dg.MetadataValue.json(post)
        if thumbnails and store is not None and store.has_blob(post["raw_sha256"]):
            raw = store.get_blob(post["raw_sha256"])
            meta["before_postprocess"] = thumbnail_md(raw, max_px=256, title=f"raw output {step.key}")
    return meta
