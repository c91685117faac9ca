"""The generation step assets: ``blocks``, ``bridges_v``, ``bridges_h`` and ``corners``, partitioned by lattice cell.

Each step builds its template (render pixels in the infill, outlined in red, already generated context around it),
calls the generation backend, validates the output and commits the step's quadrants to the ``generation`` layer of
the tile store in one transaction. Context dependencies between step assets are encoded as partition mappings
(see ``partitions.LatticeMappings``), so the UI shows which steps a step used and what goes stale on regeneration.
"""

import hashlib
from typing import Any

import dagster as dg
import numpy as np

from isonyc_dagster.backends.base import BackendError, GenerationRequest
from isonyc_dagster.defs.assets._common import (
    PER_PARTITION_NOTE,
    THUMBNAILS_UP_TO,
    TILE_PNG_LEVEL,
    combined_version,
    observe,
    partition_pairs,
    thumbnail_md,
)
from isonyc_dagster.defs.assets.render import RENDER_LAYER
from isonyc_dagster.defs.resources import GeneratorResource, ProjectResource
from isonyc_dagster.generate.candidates import generate_candidates
from isonyc_dagster.generate.plan import Step, StepKind
from isonyc_dagster.generate.seams import continuity_mask
from isonyc_dagster.generate.template import (
    ContextMissing,
    OutputRejected,
    RenderMissing,
    Template,
    build_template,
    extract_quadrants,
)
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.project import Project
from isonyc_dagster.render import RenderResult
from isonyc_dagster.store.base import TileWrite

GENERATION_LAYER = "generation"

STEP_ASSET_NAMES: dict[StepKind, str] = {
    StepKind.BLOCK: "blocks",
    StepKind.BRIDGE_V: "bridges_v",
    StepKind.BRIDGE_H: "bridges_h",
    StepKind.CORNER: "corners",
}


class StepInputs:
    """Reads a step's inputs (renders, aux buffers, context) from the store; renders what is not stored."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.store = project.store
        self._aux: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        # Generated pixels do not change during a run: a run holds steps of one kind, never each other's context.
        self._generated: dict[tuple[int, int], np.ndarray | None] = {}

    def render_rgb(self, x: int, y: int) -> np.ndarray | None:
        png = self.store.get_tile(RENDER_LAYER, x, y)
        if png is not None:
            return decode_rgb(png)
        if (x, y) in self.project.quadrants:
            return None  # an in-bounds quadrant must be materialized by the render asset first
        # Padding outside the bounds: render on the fly (deterministic, identical to a stored render).
        return self.project.renderer_at(x, y).render_quadrant(x, y).rgb

    def render_aux(self, x: int, y: int) -> dict[str, np.ndarray] | None:
        if (x, y) not in self._aux:
            res: RenderResult | None = None
            v = self.store.active(RENDER_LAYER, x, y)
            aux_sha = v.provenance.get("aux_sha256") if v is not None else None
            if aux_sha and self.store.has_blob(aux_sha):
                res = RenderResult.from_npz(self.store.get_blob(aux_sha))
            else:
                res = self.project.renderer_at(x, y).render_quadrant(x, y)
            self._aux[(x, y)] = res.aux()
        return self._aux[(x, y)]

    def generated_rgb(self, x: int, y: int) -> np.ndarray | None:
        if (x, y) not in self._generated:
            png = self.store.get_tile(GENERATION_LAYER, x, y)
            self._generated[(x, y)] = None if png is None else decode_rgb(png)
        return self._generated[(x, y)]

    def edge_mask(self, first: tuple[int, int], second: tuple[int, int]) -> np.ndarray:
        """Where the render continues across the edge between ``first`` (left/top) and ``second`` (right/bottom):
        only there is a colour jump a seam; a wall or roof line lying on the quadrant line is scenery."""
        a, b = self.render_aux(*first), self.render_aux(*second)
        edge = "lr" if second[0] != first[0] else "tb"
        return continuity_mask(a["surface"], a["building"], b["surface"], b["building"], edge)

    def continuity_masks(self, step: Step, context: dict[tuple[int, int], np.ndarray]) -> dict:
        """``edge_mask`` of every edge between the step and its context, keyed like ``seams.score_step_seams``."""
        masks = {}
        for x, y in step.quadrants:
            for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                nb = (x + dx, y + dy)
                if nb in context:
                    first, second = (nb, (x, y)) if dx + dy < 0 else ((x, y), nb)
                    masks[(first, second)] = self.edge_mask(first, second)
        return masks

    def template(self, step: Step) -> Template:
        return build_template(
            step, render_rgb=self.render_rgb, generated_rgb=self.generated_rgb, render_aux=self.render_aux
        )


def step_seed(project: Project, step: Step, offset: int) -> int:
    """A stable per-step seed: reruns reproduce the same image; ``seed_offset`` gives new ones."""
    h = hashlib.sha256(f"{project.config.map.name}:{step.key}".encode()).digest()
    return (int.from_bytes(h[:4], "big") + offset) % (2**31 - 1)


def run_step(
    project: Project,
    generator: GeneratorResource,
    backend: Any,
    step: Step,
    inputs: StepInputs,
    template: Template,
) -> dict[str, Any]:
    """Generate one step (K candidates scored on their seams when configured), validate, commit atomically."""
    store = project.store
    template_sha = store.put_blob(template.png)
    gen_key = generator.identity(project.config.prompt)
    reused = _committed(store, step, template_sha, gen_key)
    if reused is not None:
        return reused | {"template": template, "template_sha": template_sha}
    request = GenerationRequest(
        template_png=template.png,
        prompt=project.config.prompt,
        seed=step_seed(project, step, generator.seed_offset),
        infill_box=template.infill_box,
        origin_px=template.origin_px,
        aux=template.aux,
    )
    context = {q: img for q in step.context if (img := inputs.generated_rgb(*q)) is not None}
    k = max(1, generator.candidates)
    cands = generate_candidates(
        backend,
        request,
        k,
        split=lambda png: extract_quadrants(step, template, png),
        context=context,
        masks=inputs.continuity_masks(step, context) if k > 1 else None,
    )
    best = cands.best
    summaries = []
    for c in cands.candidates:  # every candidate is kept for review, the chosen one becomes active
        summary = c.summary()
        if c.result is not None:
            summary["output_sha256"] = store.put_blob(c.result.image_png)
        summaries.append(summary)
    output_sha = summaries[cands.best_index]["output_sha256"]
    provenance = {
        "step": step.key,
        "kind": step.kind.value,
        "cell": list(step.cell),
        "template_sha256": template_sha,
        "output_sha256": output_sha,
        "context": [list(c) for c in template.context_used],
        "context_sha256": {
            f"{x},{y}": v.sha256
            for (x, y), v in store.active_map(GENERATION_LAYER, template.context_used).items()
        },
        "padding": [list(c) for c in template.padding],
        **best.result.provenance,
        "seam_score": best.score,
        "candidates": summaries if len(summaries) > 1 else None,
        "generator_key": gen_key,
    }
    writes = [
        TileWrite(GENERATION_LAYER, x, y, png_bytes(rgb, compress_level=TILE_PNG_LEVEL), provenance)
        for (x, y), rgb in sorted(best.quadrants.items())
    ]
    versions = store.put_tiles(writes)
    return {
        "template": template,
        "template_sha": template_sha,
        "output_png": best.result.image_png,
        "provenance": provenance,
        "versions": versions,
    }


def _committed(store: Any, step: Step, template_sha: str, gen_key: str) -> dict[str, Any] | None:
    """The step's output if it was already committed from this very template by this very generator.

    A range run that fails halfway (a crash, a model outage) has committed its first steps to the store but
    materialized nothing in Dagster; when the run is retried, those steps are reused instead of paying for the
    model again. Any change of template (context, render) or generator settings generates anew.
    """
    versions = store.active_map(GENERATION_LAYER, step.quadrants)
    if len(versions) != len(step.quadrants):
        return None
    provs = [v.provenance for v in versions.values()]
    if any(p.get("template_sha256") != template_sha or p.get("generator_key") != gen_key for p in provs):
        return None
    prov = provs[0]
    return {
        "output_png": store.get_blob(prov["output_sha256"]),
        "provenance": prov | {"reused": True},
        "versions": list(versions.values()),
    }


def build_step_asset(
    kind: StepKind, partitions_def: dg.PartitionsDefinition, deps: list[dg.AssetDep]
) -> dg.AssetsDefinition:
    name = STEP_ASSET_NAMES[kind]

    @dg.asset(
        name=name,
        partitions_def=partitions_def,
        deps=deps,
        group_name="generation",
        compute_kind="generation",
        description=f"Wave-{kind.wave} {kind.value} steps of the seam-free lattice (DESIGN.md §3): template → "
        "model → validated quadrants, committed atomically.",
        retry_policy=dg.RetryPolicy(
            max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
        ),
        pool="generation_backend",
    )
    def _step_asset(
        context: dg.AssetExecutionContext, project: ProjectResource, generator: GeneratorResource
    ) -> dg.MaterializeResult:
        p = project.get()
        inputs = StepInputs(p)
        keys = list(context.partition_keys)
        cells = partition_pairs(context)
        # Fail fast, before any model call: every step of the run must have its renders and context.
        planned: list[tuple[str, Step, Template]] = []
        missing: list[str] = []
        for key, cell in zip(keys, cells, strict=True):
            step = p.plan.get(kind, cell)
            if step is None:
                observe(
                    context, key, {"empty": True, "reason": "no quadrant of this step is inside the bounds"}
                )
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
        backend = generator.build(p.config.map)
        shas: dict[str, str] = {}
        last_meta: dict[str, Any] = {}
        try:
            for key, step, template in planned:
                try:
                    out = run_step(p, generator, backend, step, inputs, template)
                except (BackendError, OutputRejected) as e:
                    raise dg.Failure(description=f"step {step.key}: {e}", allow_retries=True) from e
                prov = out["provenance"]
                shas[key] = hashlib.sha256(out["output_png"]).hexdigest()
                last_meta = {
                    "step": step.key,
                    "quadrants": dg.MetadataValue.json([list(q) for q in step.quadrants]),
                    "context": dg.MetadataValue.json(prov["context"]),
                    "backend": str(prov.get("backend")),
                    "model_id": str(prov.get("model_id")),
                    "seed": prov.get("seed"),
                    "prompt_sha256": str(prov.get("prompt_sha256")),
                    "template_sha256": out["template_sha"],
                    "output_sha256": prov["output_sha256"],
                    "latency_s": float(prov.get("latency_s") or 0.0),
                }
                if len(planned) <= THUMBNAILS_UP_TO:
                    last_meta["template"] = thumbnail_md(
                        out["template"].png, max_px=256, title=f"template {step.key}"
                    )
                    last_meta["output"] = thumbnail_md(
                        out["output_png"], max_px=256, title=f"output {step.key}"
                    )
                if len(keys) > 1:
                    observe(context, key, last_meta)
                context.log.info(
                    "%s %s (%d quadrants, context %d) with %s",
                    "reused already committed" if prov.get("reused") else "generated",
                    step.key,
                    len(step.quadrants),
                    len(prov["context"]),
                    prov.get("backend"),
                )
        finally:
            backend.close()
        meta: dict[str, Any] = {"steps_generated": len(shas)}
        if len(keys) == 1:
            meta.update(last_meta)
        else:
            meta["per_partition"] = PER_PARTITION_NOTE
        return dg.MaterializeResult(metadata=meta, data_version=combined_version(shas) if shas else None)

    return _step_asset
