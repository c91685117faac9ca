"""The training assets through a real Dagster instance: present only with ``[training]``, metadata with counts,
proportions and a preview grid, a rebuild of the same inputs keeps its data version, QA-passing quadrants."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.training.omni import KINDS
from tests.dagster_helpers import home_instance, project_config
from tests.test_training_data import REFERENCES, STARRED, make_map

pytestmark = pytest.mark.slow


def _latest(instance: dg.DagsterInstance, name: str) -> dg.AssetMaterialization:
    event = instance.get_latest_materialization_event(dg.AssetKey(name))
    assert event is not None and event.asset_materialization is not None, name
    return event.asset_materialization


def test_training_assets_only_with_a_training_table(tmp_path: Path) -> None:
    plain = build_definitions(project_config(tmp_path, 0, 0, 1, 1))
    keys = {k.to_user_string() for k in plain.resolve_asset_graph().get_all_asset_keys()}
    assert "training_pairs" not in keys and "omni_dataset" not in keys


def test_training_pairs_and_omni_dataset_materialize(tmp_path: Path) -> None:
    project = make_map(tmp_path)
    for x, y in STARRED:
        project.store.set_flags(x, y, starred=True)
    for x, y in REFERENCES:
        project.store.set_flags(x, y, reference=True)
    defs = build_definitions(project.config)
    graph = defs.resolve_asset_graph()
    for name in ("training_pairs", "omni_dataset"):
        assert graph.get(dg.AssetKey(name)).group_name == "training"
    assert dg.AssetKey("training_pairs") in graph.get(dg.AssetKey("omni_dataset")).parent_keys
    with home_instance(tmp_path / "dagster_home") as instance:
        assert defs.resolve_job_def("training_job").execute_in_process(instance=instance).success
        pairs = _latest(instance, "training_pairs")
        assert pairs.metadata["pairs"].value == 5 and pairs.metadata["skipped"].value == 1
        assert Path(pairs.metadata["preview_grid"].value).is_file()
        omni = _latest(instance, "omni_dataset")
        counts = omni.metadata["counts"].value
        assert set(counts) == {"train", "validation"} and all(set(c) == set(KINDS) for c in counts.values())
        assert sum(omni.metadata["proportions"].value.values()) == pytest.approx(1.0, abs=1e-3)
        assert Path(omni.metadata["preview_grid"].value).is_file()
        assert Path(omni.metadata["dir"].value, "index.parquet").is_file()
        first = omni.tags["dagster/data_version"]

        # The same inputs again: the same dataset version and data version (nothing is stale downstream).
        assert defs.resolve_job_def("training_job").execute_in_process(instance=instance).success
        again = _latest(instance, "omni_dataset")
        assert again.metadata["reused"].value is True and again.tags["dagster/data_version"] == first

    # include_passed: with no marked quadrant, every quadrant whose QA checks pass is paired.
    for x, y in STARRED + REFERENCES:
        project.store.set_flags(x, y, starred=False, reference=False)
    cfg = project.config.model_copy(
        update={"training": project.config.training.model_copy(update={"include_passed": True})}
    )
    defs = build_definitions(cfg)
    with home_instance(tmp_path / "dagster_home2") as instance:
        result = defs.resolve_job_def("training_job").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("training_pairs")]
        )
        assert result.success
        pairs = _latest(instance, "training_pairs")
        assert pairs.metadata["pairs"].value == 5, pairs.metadata["skipped_reasons"].value
