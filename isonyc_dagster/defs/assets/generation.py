"""The ``generation`` asset (per quadrant) with its QA checks: seams, red-border remnants, blank/sky output.

A quadrant's pixels are committed by the step that generated it; this asset publishes them per quadrant: the image
hash as data version, the step's provenance, a preview, and the automatic QA (``generate.qa``). It depends on
exactly the one step whose footprint holds the quadrant.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import PartitionRun, blob_link, thumbnail_md
from isonyc_dagster.defs.checks import GENERATION_CHECKS, generation_check_results, partition_url
from isonyc_dagster.defs.partitions import key2
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.generate.plan import LatticePlan, Step, step_ref
from isonyc_dagster.generate.qa import QuadrantQA
from isonyc_dagster.generate.qa_state import QACache, assess_map
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
        output_required=False,  # range runs: one materialization per partition (``PartitionRun.outputs``)
    )
    def generation(
        context: dg.AssetExecutionContext, project: ProjectResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        """Publish each quadrant's generated pixels with provenance; the checks judge every quadrant of the map."""
        p = project.get()
        store = p.store
        inputs = p.step_inputs()
        run = PartitionRun(context, map_quadrants=len(p.quadrants))
        todo: list[tuple[str, int, int, TileVersion]] = []
        missing: list[str] = []
        for key, (x, y) in run:
            version = store.active(layers.GENERATION, x, y)
            if version is None and run.fill:
                run.wait(key, "its step has not generated it yet")
                continue
            if version is None:
                missing.append(key2(x, y))
                continue
            todo.append((key, x, y, version))
        if missing:
            raise dg.Failure(
                description=f"no generated pixels for partition(s) {', '.join(missing[:20])}: "
                "materialize their step first",
                metadata={"run_first": dg.MetadataValue.json(missing[:200])},
                allow_retries=True,
            )
        cache = QACache(Path(p.config.cache_dir) / "qa.sqlite")
        try:
            state = assess_map(store, inputs, p.plan, p.quadrants, cache, p.order.quadrants.keys)
        finally:
            cache.close()
        failed_keys: list[str] = []
        for key, x, y, version in todo:
            qa = state.quadrants[(x, y)]
            failed = qa.failures(seam_threshold)
            if failed:
                failed_keys.append(key)
            if bool(failed) != store.flags(x, y).flagged:
                store.set_flags(x, y, flagged=bool(failed))
            meta = _quadrant_metadata(x, y, version, qa, bool(failed))
            meta.update(lineage_links(p.plan, p.config.dagster_url, x, y, version))
            if run.thumbnails:
                meta["preview"] = thumbnail_md(
                    store.get_blob(version.sha256),
                    title=f"generation {key}",
                    link=blob_link(p.config.console_url, version.sha256),
                )
            run.record(key, version.sha256, meta)
        yield from run.outputs(
            {
                "quadrants": len(run.shas),
                "worst_seam": round(
                    max((v for t in todo for v in state.quadrants[t[1:3]].seams.values()), default=0.0), 3
                ),
                "qa_failed": len(failed_keys),
                "qa_recomputed": state.recomputed,
            },
            check_results=generation_check_results(
                state, seam_threshold=seam_threshold, dagster_url=p.config.dagster_url, run_keys=run.keys
            ),
            streamed=True,
        )

    return generation


def _step_partition(step: Step) -> tuple[str, str]:
    return layers.STEP_ASSETS[step.kind.value], key2(*step.cell)


def lineage_links(
    plan: LatticePlan, dagster_url: str, x: int, y: int, version: TileVersion
) -> dict[str, Any]:
    """Links a person follows from a quadrant: the step partition that produced it, each context step's partition,
    the render partition (names exactly as Dagster's asset and partition keys; the step and context partitions
    themselves are the ``step`` and ``context`` entries)."""
    out: dict[str, Any] = {}
    producer = _step_partition(plan.step_for_quadrant(x, y))
    out["producing_step_link"] = dg.MetadataValue.url(partition_url(dagster_url, *producer))
    context_steps = sorted(
        {
            _step_partition(plan.step_for_quadrant(int(cx), int(cy)))
            for cx, cy in version.provenance.get("context") or []
        }
        - {producer}
    )
    out["context_steps"] = dg.MetadataValue.md(
        "\n".join(f"- [{a}[{k}]]({partition_url(dagster_url, a, k)})" for a, k in context_steps) or "(none)"
    )
    out["render_link"] = dg.MetadataValue.url(partition_url(dagster_url, layers.RENDER, key2(x, y)))
    return out


def _quadrant_metadata(x: int, y: int, version: TileVersion, qa: QuadrantQA, failed: bool) -> dict[str, Any]:
    prov = version.provenance
    return {
        "quadrant": key2(x, y),
        "sha256": version.sha256,
        "version": version.version,
        # As Dagster names it, also from older provenance (``bridge_v:0,0`` → ``bridges_v[0|0]``).
        "step": step_ref(str(prov.get("step"))),
        "backend": str(prov.get("backend")),
        "model_id": str(prov.get("model_id")),
        "seed": prov.get("seed"),
        "template_sha256": str(prov.get("template_sha256")),
        "context": dg.MetadataValue.json([key2(int(cx), int(cy)) for cx, cy in prov.get("context") or []]),
        "seam_scores": dg.MetadataValue.json({k: round(v, 3) for k, v in qa.seams.items()}),
        "red_px": qa.red_px,
        "qa_failed": failed,
    }
