"""The ``generation`` asset (per quadrant) with its QA checks: seams, red-border remnants, blank/sky output.

A quadrant's pixels are committed by the step that generated it; this asset publishes them per quadrant: the image
hash as data version, the step's provenance, a preview, and the automatic QA. It depends on exactly the one step
whose footprint holds the quadrant.
"""

from typing import Any

import dagster as dg

from isonyc_dagster.defs.assets._common import (
    PER_PARTITION_NOTE,
    THUMBNAILS_UP_TO,
    combined_version,
    observe,
    partition_pairs,
    thumbnail_md,
)
from isonyc_dagster.defs.assets.steps import GENERATION_LAYER, StepInputs
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.generate.qa import MAX_RED_PX, assess

CHECKS = [
    dg.AssetCheckSpec(
        "seams",
        asset="generation",
        description="seam score across every edge shared with a quadrant of another step",
    ),
    dg.AssetCheckSpec(
        "no_red_border",
        asset="generation",
        description=f"at most {MAX_RED_PX} pure-red template-border pixels left",
    ),
    dg.AssetCheckSpec("not_blank", asset="generation", description="not blank, not sky-coloured"),
]

_EDGES = (("left", -1, 0), ("right", 1, 0), ("top", 0, -1), ("bottom", 0, 1))


def build_generation_asset(
    partitions_def: dg.PartitionsDefinition, deps: list[dg.AssetDep], seam_threshold: float
) -> dg.AssetsDefinition:
    @dg.asset(
        name="generation",
        partitions_def=partitions_def,
        deps=deps,
        group_name="generation",
        compute_kind="qa",
        check_specs=CHECKS,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def generation(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Publish each quadrant's generated pixels with provenance, and run the per-tile QA."""
        from isonyc_dagster.generate.seams import seam_score

        p = project.get()
        store = p.store
        inputs = StepInputs(p)
        pairs = partition_pairs(context)
        shas: dict[str, str] = {}
        failing: dict[str, dict[str, list[Any]]] = {"seams": {}, "no_red_border": {}, "not_blank": {}}
        worst_seam = 0.0
        missing: list[str] = []
        last_meta: dict[str, Any] = {}
        for key, (x, y) in zip(context.partition_keys, pairs, strict=True):
            if (x, y) not in p.quadrants:
                observe(context, key, {"outside_bounds": True})
                continue
            version = store.active(GENERATION_LAYER, x, y)
            if version is None:
                missing.append(f"{x},{y}")
                continue
            rgb = inputs.generated_rgb(x, y)
            qa = assess(rgb)
            step = p.plan.step_for_quadrant(x, y)
            for name, dx, dy in _EDGES:
                nb = (x + dx, y + dy)
                if nb in step.quadrants or nb not in p.quadrants or inputs.generated_rgb(*nb) is None:
                    continue
                first, second = (nb, (x, y)) if name in ("left", "top") else ((x, y), nb)
                edge = "lr" if name in ("left", "right") else "tb"
                a, b = inputs.generated_rgb(*first), inputs.generated_rgb(*second)
                qa.seams[name] = float(seam_score(a, b, edge, mask=inputs.edge_mask(first, second)))
            if qa.seams:
                worst_seam = max(worst_seam, max(qa.seams.values()))
            if not qa.seams_ok(seam_threshold):
                failing["seams"][f"{x},{y}"] = [round(v, 3) for v in qa.seams.values()]
            if not qa.red_ok:
                failing["no_red_border"][f"{x},{y}"] = [qa.red_px]
            if not qa.blank_ok:
                failing["not_blank"][f"{x},{y}"] = [round(qa.std, 2), round(qa.sky_fraction, 4)]
            bad = any(f"{x},{y}" in f for f in failing.values())
            if bad != store.flags(x, y).flagged:
                store.set_flags(x, y, flagged=bad)
            shas[key] = version.sha256
            prov = version.provenance
            last_meta = {
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
                "qa_failed": bad,
            }
            if len(pairs) <= THUMBNAILS_UP_TO:
                last_meta["preview"] = thumbnail_md(
                    store.get_blob(version.sha256), title=f"generation {x},{y}"
                )
            if len(pairs) > 1:
                observe(context, key, last_meta)
        if missing:
            raise dg.Failure(
                description=f"no generated pixels for quadrant(s) {missing[:20]}: materialize their step first",
                allow_retries=True,
            )
        checks = [
            dg.AssetCheckResult(
                check_name=name,
                passed=not bad,
                severity=dg.AssetCheckSeverity.WARN if name == "seams" else dg.AssetCheckSeverity.ERROR,
                metadata={
                    "failing_quadrants": dg.MetadataValue.json(bad),
                    "checked": len(shas),
                    **(
                        {"worst_seam": round(worst_seam, 3), "threshold": seam_threshold}
                        if name == "seams"
                        else {}
                    ),
                },
            )
            for name, bad in failing.items()
        ]
        meta: dict[str, Any] = {
            "quadrants": len(shas),
            "worst_seam": round(worst_seam, 3),
            "qa_failed": sum(len(f) for f in failing.values()),
        }
        if len(pairs) == 1:
            meta.update(last_meta)
        else:
            meta["per_partition"] = PER_PARTITION_NOTE
        return dg.MaterializeResult(
            metadata=meta, check_results=checks, data_version=combined_version(shas) if shas else None
        )

    return generation
