"""Operating the map through a real Dagster instance: checks that report every quadrant's current state, and
per-partition data versions (identical output never marks anything stale; a change marks exactly its dependants)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG, StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from isonyc_dagster import layers
from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.defs.partitions import key2
from isonyc_dagster.defs.resources import GeneratorResource
from isonyc_dagster.images import png_bytes
from isonyc_dagster.project import Project
from tests.dagster_helpers import home_instance, project_config

pytestmark = pytest.mark.slow

RANGE_2x2 = {"dagster/asset_partition_range_start": "0|0", "dagster/asset_partition_range_end": "1|1"}


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, job: str, **kw) -> dg.ExecuteInProcessResult:
    res = defs.resolve_job_def(job).execute_in_process(instance=instance, **kw)
    assert res.success, job
    return res


def _check(instance: dg.DagsterInstance, name: str, asset: str = layers.GENERATION):
    key = dg.AssetCheckKey(dg.AssetKey(asset), name)
    rec = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    evaluation = rec.event.dagster_event.event_specific_data
    return rec.status.value, evaluation


def test_checks_report_every_quadrant_and_a_later_passing_run_never_hides_a_failure(tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 1, 1).model_copy(update={"dagster_url": "http://127.0.0.1:3999"})
    defs = build_definitions(cfg)
    store = Project(cfg).store
    with home_instance(tmp_path / "home") as instance:
        _run(defs, instance, "geodata_job")
        _run(defs, instance, "render_job", tags=RANGE_2x2)
        _run(defs, instance, "blocks_job", partition_key="0|0")
        _run(defs, instance, "generation_job", tags=RANGE_2x2)
        status, ev = _check(instance, "not_blank")
        assert status == "SUCCEEDED" and ev.metadata["checked"].value == 4

        # A blank tile lands on 0|0 and its partition is published: the check fails and names it as a partition key.
        store.put_tile(
            layers.GENERATION, 0, 0, png_bytes(np.full((512, 512, 3), 90, np.uint8)), {"step": "bad"}
        )
        _run(defs, instance, "generation_job", partition_key="0|0")
        status, ev = _check(instance, "not_blank")
        assert status == "FAILED"
        assert list(ev.metadata["failing_partitions"].value) == ["0|0"]
        assert ev.metadata["failing 0|0"].value == (
            "http://127.0.0.1:3999/assets/generation?view=partitions&partition=0%7C0"
        )
        assert "[0|0](http://127.0.0.1:3999/assets/generation" in ev.metadata["failing_links"].value
        assert ev.severity == dg.AssetCheckSeverity.ERROR

        # A later run of another, passing partition still reports the failure that is still there.
        _run(defs, instance, "generation_job", partition_key="1|1")
        status, ev = _check(instance, "not_blank")
        assert status == "FAILED", "a passing run of 1|1 hid the still-current failure of 0|0"
        assert list(ev.metadata["failing_partitions"].value) == ["0|0"]
        assert ev.metadata["failing_in_this_run"].value == []
        assert ev.metadata["passing"].value == 3 and ev.metadata["failing"].value == 1

        # Once the tile is fixed (the old version made active again), the next evaluation passes.
        store.activate(layers.GENERATION, 0, 0, 1)
        _run(defs, instance, "generation_job", partition_key="1|0")
        status, ev = _check(instance, "not_blank")
        assert status == "SUCCEEDED" and ev.metadata["failing"].value == 0


def _versions(instance: dg.DagsterInstance, asset: str, keys: list[str]) -> dict[str, str]:
    out = {}
    for k in keys:
        rec = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[k]), limit=1
        ).records[0]
        out[k] = rec.asset_materialization.tags[DATA_VERSION_TAG]
    return out


def test_range_runs_give_each_partition_its_content_hash_and_staleness_follows_the_lattice(
    tmp_path: Path,
) -> None:
    cfg = project_config(tmp_path, 0, 0, 2, 1)  # blocks[0|0] (x 0-1) and bridges_v[0|0] (x 2)
    defs = build_definitions(cfg)
    project = Project(cfg)
    store = project.store
    keys = [key2(*q) for q in project.quadrants.keys]
    rng = {"dagster/asset_partition_range_start": "0|0", "dagster/asset_partition_range_end": "2|1"}
    assets = list(defs.assets)

    def stale() -> dict[str, set[str]]:
        resolver = get_stale_status_resolver(instance, assets)
        out: dict[str, set[str]] = {}
        for asset, ks in (
            ("render", keys),
            ("blocks", ["0|0"]),
            ("bridges_v", ["0|0"]),
            ("generation", keys),
        ):
            out[asset] = {k for k in ks if resolver.get_status(dg.AssetKey(asset), k) == StaleStatus.STALE}
        return out

    with home_instance(tmp_path / "home") as instance:
        _run(defs, instance, "geodata_job")
        _run(defs, instance, "render_job", tags=rng)
        # Every partition of the range run carries its own content hash as data version.
        assert _versions(instance, "render", keys) == {
            key2(*q): store.active(layers.RENDER, *q).sha256 for q in project.quadrants.keys
        }
        _run(defs, instance, "blocks_job", partition_key="0|0")
        _run(defs, instance, "bridges_v_job", partition_key="0|0")
        _run(defs, instance, "generation_job", tags=rng)
        assert _versions(instance, "generation", keys) == {
            key2(*q): store.active(layers.GENERATION, *q).sha256 for q in project.quadrants.keys
        }
        assert stale() == {"render": set(), "blocks": set(), "bridges_v": set(), "generation": set()}
        # A partition's own materialization: its preview and links to the step that produced it, its context steps
        # and its render, named exactly as Dagster's asset and partition keys.
        md = (
            instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("generation"), asset_partitions=["2|1"]), limit=1
            )
            .records[0]
            .asset_materialization.metadata
        )
        ui = "http://127.0.0.1:3000/assets"
        assert md["preview"].value.startswith("![generation 2|1](data:image/png;base64,")
        assert md["step"].value == "bridges_v[0|0]" and "producing_step" not in md  # it was there twice
        assert md["producing_step_link"].value == f"{ui}/bridges_v?view=partitions&partition=0%7C0"
        assert md["context_steps"].value == f"- [blocks[0|0]]({ui}/blocks?view=partitions&partition=0%7C0)"
        assert md["render_link"].value == f"{ui}/render?view=partitions&partition=2%7C1"
        assert md["quadrant"].value == "2|1"
        step_md = (
            instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("bridges_v"), asset_partitions=["0|0"]), limit=1
            )
            .records[0]
            .asset_materialization.metadata
        )
        assert step_md["context_steps"].value == md["context_steps"].value
        assert (
            f"[generation[2|1]]({ui}/generation?view=partitions&partition=2%7C1)"
            in step_md["quadrant_links"].value
        )

        # Re-rendering one quadrant alone, and the whole range again, gives byte-identical output: nothing stale.
        _run(defs, instance, "render_job", partition_key="1|0")
        _run(defs, instance, "render_job", tags=rng)
        _run(defs, instance, "generation_job", partition_key="2|1")
        assert stale() == {"render": set(), "blocks": set(), "bridges_v": set(), "generation": set()}

        # A real change: the block step regenerated with another seed. Exactly its lattice dependants go stale:
        # the bridge that used it as context and the block's own generation quadrants.
        restyled = build_definitions(
            cfg, generator=GeneratorResource(backend="pixelart", style_json='{"seed": 7}')
        )
        _run(restyled, instance, "blocks_job", partition_key="0|0")
        changed = store.active(layers.GENERATION, 0, 0)
        assert changed.version == 2
        assert stale() == {
            "render": set(),
            "blocks": set(),
            "bridges_v": {"0|0"},
            "generation": {"0|0", "1|0", "0|1", "1|1"},
        }
