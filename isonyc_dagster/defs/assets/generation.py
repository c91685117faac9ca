"""The ``generation`` asset (per quadrant) with its QA checks: seams, red-border remnants, blank/sky output.

A quadrant's pixels are committed by the step that generated it; this asset publishes them per quadrant: the image
hash as data version, the step's provenance, a preview, and the automatic QA (``generate.qa``). It depends on
exactly the one step whose footprint holds the quadrant.
"""

from typing import Any

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import PartitionRun, thumbnail_md
from isonyc_dagster.defs.checks import GENERATION_CHECKS, generation_check_results
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.generate.qa import CHECKS, QuadrantQA, assess_quadrant
from isonyc_dagster.store.base import TileVersion


def build_generation_asset(
    partitions_def: dg.PartitionsDefinition, deps: list[dg.AssetDep], seam_threshold: float
) -> dg.AssetsDefinition:
    @dg.asset(
        name=layers.GENERATION,
        partitions_def=partitions_def,
        deps=deps,
        group_name="generation",
        compute_kind="qa",
        check_specs=GENERATION_CHECKS,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def generation(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Publish each quadrant's generated pixels with provenance, and run the per-tile QA."""
        p = project.get()
        store = p.store
        inputs = p.step_inputs()
        run = PartitionRun(context)
        failing: dict[str, dict[str, list[Any]]] = {name: {} for name in CHECKS}
        worst_seam = 0.0
        missing: list[str] = []
        for key, (x, y) in run:
            if (x, y) not in p.quadrants:
                run.skip(key, {"outside_bounds": True})
                continue
            version = store.active(layers.GENERATION, x, y)
            if version is None:
                missing.append(f"{x},{y}")
                continue
            qa = assess_quadrant(inputs, p.plan, p.quadrants, x, y)
            worst_seam = max(worst_seam, *qa.seams.values()) if qa.seams else worst_seam
            failed = qa.failures(seam_threshold)
            for name, figures in failed.items():
                failing[name][f"{x},{y}"] = figures
            if bool(failed) != store.flags(x, y).flagged:
                store.set_flags(x, y, flagged=bool(failed))
            meta = _quadrant_metadata(x, y, version, qa, bool(failed))
            if run.thumbnails:
                meta["preview"] = thumbnail_md(store.get_blob(version.sha256), title=f"generation {x},{y}")
            run.record(key, version.sha256, meta)
        if missing:
            raise dg.Failure(
                description=f"no generated pixels for quadrant(s) {missing[:20]}: materialize their step first",
                allow_retries=True,
            )
        return run.result(
            {
                "quadrants": len(run.shas),
                "worst_seam": round(worst_seam, 3),
                "qa_failed": sum(len(f) for f in failing.values()),
            },
            check_results=generation_check_results(failing, len(run.shas), worst_seam, seam_threshold),
        )

    return generation


def _quadrant_metadata(x: int, y: int, version: TileVersion, qa: QuadrantQA, failed: bool) -> dict[str, Any]:
    prov = version.provenance
    return {
        "quadrant": f"{x},{y}",
        "sha256": version.sha256,
        "version": version.version,
        "step": str(prov.get("step")),
        "backend": str(prov.get("backend")),
        "model_id": str(prov.get("model_id")),
        "seed": prov.get("seed"),
        "template_sha256": str(prov.get("template_sha256")),
        "context": dg.MetadataValue.json(prov.get("context") or []),
        "seam_scores": dg.MetadataValue.json({k: round(v, 3) for k, v in qa.seams.items()}),
        "red_px": qa.red_px,
        "qa_failed": failed,
    }
