"""The training assets (only in projects with a ``[training]`` table): ``training_pairs`` and ``omni_dataset``.

Both are unpartitioned and in group ``training``. ``training_pairs`` writes the store's pairs (the 2×2 tiles of the
starred and reference quadrants, plus every quadrant passing QA with ``include_passed``) as a pair-set version;
``omni_dataset`` builds the next omni dataset version from the newest pair sets (``training.omni``). Each records
counts, the version directory and a preview grid; the data version is the content's fingerprint, so a rebuild of
the same inputs is not a change. (No ``from __future__ import annotations``: Dagster reads the config class from
the real annotation.)
"""

from pathlib import Path
from typing import Any, Optional

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import thumbnail_md
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.generate.plan import Quadrant
from isonyc_dagster.generate.qa_state import QACache, assess_map
from isonyc_dagster.generate.seams import QA_THRESHOLD
from isonyc_dagster.geo.config import ProjectConfig, TrainingConfig
from isonyc_dagster.project import Project

TRAINING_PAIRS = "training_pairs"
OMNI_DATASET = "omni_dataset"
GROUP = "training"


def passed_quadrants(project: Project) -> list[Quadrant]:
    """Generated quadrants of the bounds whose QA checks all pass (the same figures as the ``generation`` checks)."""
    from isonyc_dagster.training.pairs import passing_quadrants

    cache = QACache(Path(project.config.cache_dir) / "qa.sqlite")
    try:
        state = assess_map(
            project.store,
            project.step_inputs(),
            project.plan,
            project.quadrants,
            cache,
            project.order.quadrants.keys,
        )
    finally:
        cache.close()
    return passing_quadrants(state, QA_THRESHOLD)


def _settings(project: Project) -> TrainingConfig:
    return project.config.training or TrainingConfig()


@dg.asset(
    name=TRAINING_PAIRS,
    deps=[layers.GENERATION],
    group_name=GROUP,
    compute_kind="numpy",
    description="Render/generation pairs (2×2 tiles) of the starred and reference quadrants, with provenance.",
)
def training_pairs(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
    from isonyc_dagster.training.pairs import PREVIEW_NAME, build_pairs

    p = project.get()
    t = _settings(p)
    passed = passed_quadrants(p) if t.include_passed else []
    written, report = build_pairs(p.store, t.dir, passed=passed)
    for s in report.skipped:
        context.log.info(f"skipped {s['quadrant']} {s['render_layer'] or ''}: {s['reason']}")
    layers_used: dict[str, int] = {}
    for pair in report.pairs:
        layers_used[pair.render_layer] = layers_used.get(pair.render_layer, 0) + 1
    preview = written.path / PREVIEW_NAME
    return dg.MaterializeResult(
        metadata={
            "pairs": written.pairs,
            "skipped": len(report.skipped),
            "skipped_reasons": dg.MetadataValue.json(report.skipped[:100]),
            "render_layers": dg.MetadataValue.json(layers_used),
            "version": written.version,
            "reused": written.reused,
            "dir": dg.MetadataValue.path(str(written.path)),
            "preview_grid": dg.MetadataValue.path(str(preview)),
            "preview": thumbnail_md(preview.read_bytes(), max_px=480, title="pairs"),
        },
        data_version=dg.DataVersion(written.fingerprint),
    )


class OmniDatasetConfig(dg.Config):
    #: Overrides ``[training] seed`` for this materialization.
    seed: Optional[int] = None  # noqa: UP045 - Dagster's config reader needs the typing form


@dg.asset(
    name=OMNI_DATASET,
    deps=[TRAINING_PAIRS],
    group_name=GROUP,
    compute_kind="pyarrow",
    description="The omni infill dataset (six kinds, split by area): Parquet index + Hugging Face image folder.",
)
def omni_dataset(
    context: dg.AssetExecutionContext, config: OmniDatasetConfig, project: ProjectResource
) -> dg.MaterializeResult:
    from isonyc_dagster.training.omni import PREVIEW_NAME, build_omni

    p = project.get()
    t = _settings(p)
    result = build_omni(
        t.dir,
        prompt=p.config.prompt,
        seed=t.seed if config.seed is None else config.seed,
        variants_per_pair=t.variants_per_pair,
        validation_fraction=t.validation_fraction,
        split_block=t.split_block,
        preprocess=t.preprocess,
    )
    preview = Path(result.path) / PREVIEW_NAME
    meta: dict[str, Any] = {
        "examples": result.rows,
        "counts": dg.MetadataValue.json(result.counts),
        "proportions": dg.MetadataValue.json(result.proportions),
        "dropped_pairs": len(result.dropped),
        "version": result.version,
        "reused": result.reused,
        "dir": dg.MetadataValue.path(result.path),
        "preview_grid": dg.MetadataValue.path(str(preview)),
        "preview": thumbnail_md(preview.read_bytes(), max_px=480, title="omni examples"),
    }
    for split, per_kind in result.counts.items():
        meta[f"{split}_examples"] = sum(per_kind.values())
    if t.upload_to:
        from isonyc_dagster.publish.deploy import open_target
        from isonyc_dagster.training.dataset import upload_dataset

        sent = upload_dataset(result.path, open_target(t.upload_to), prefix=f"omni/v{result.version}")
        meta["uploaded_files"] = sent
        context.log.info(f"uploaded {sent} files to {t.upload_to}")
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(result.fingerprint))


def build_training_defs(config: ProjectConfig) -> tuple[list[dg.AssetsDefinition], list[Any]]:
    """The training assets and their job, only when the project has a ``[training]`` table."""
    if config.training is None:
        return [], []
    job = dg.define_asset_job("training_job", selection=[TRAINING_PAIRS, OMNI_DATASET])
    return [training_pairs, omni_dataset], [job]
