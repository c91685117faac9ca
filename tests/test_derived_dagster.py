"""Derived layers through a real Dagster instance: assets per quadrant, checks, pyramids, and staleness that follows
exactly the changed source quadrant."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from isonyc_dagster import layers
from isonyc_dagster.defs.assets.derived import materialize_derived
from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.defs.partitions import key2
from isonyc_dagster.derive.transforms import night
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.project import Project
from tests.dagster_helpers import home_instance, project_config

pytestmark = pytest.mark.slow


def _base_map(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """The 2×2 base map (one block step) through the code location's own jobs; the export is not needed."""
    rng = {"dagster/asset_partition_range_start": "0|0", "dagster/asset_partition_range_end": "1|1"}
    for job, kw in (
        ("geodata_job", {}),
        ("render_job", {"tags": rng}),
        ("water_mask_job", {"tags": rng}),
        ("blocks_job", {"partition_key": "0|0"}),
        ("generation_job", {"tags": rng}),
    ):
        assert defs.resolve_job_def(job).execute_in_process(instance=instance, **kw).success, job


def test_derived_layers_materialize_check_publish_and_go_stale_per_quadrant(tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 1, 1).model_copy(update={"derived_layers": ["night", "snow"]})
    defs = build_definitions(cfg)
    project = Project(cfg)
    graph = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"layer_night", "layer_snow", "layer_pyramids"} <= graph and "layer_dark" not in graph
    with home_instance(tmp_path / "dagster_home") as instance:
        _base_map(defs, instance)
        log = materialize_derived(defs, project, instance, ["night", "snow"])
        assert log and all(ok for _, ok in log), log
        store = project.store
        for q in project.quadrants.keys:
            for layer in ("layer_night", "layer_snow"):
                v = store.active(layer, *q)
                assert (
                    v is not None and v.provenance["source_sha256"] == store.active("generation", *q).sha256
                )
        # Checks ran and passed for both layers.
        for asset in ("layer_night", "layer_snow"):
            for check in ("seams", "not_blank"):
                rec = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                    [dg.AssetCheckKey(dg.AssetKey(asset), check)]
                )[dg.AssetCheckKey(dg.AssetKey(asset), check)]
                assert rec.status.value == "SUCCEEDED", (asset, check, rec.status)
        # Pyramids next to the base map: night, snow, and the render and water mask for the viewer.
        out = Path(cfg.output_dir)
        for name in ("nyc_night", "nyc_snow", "nyc_render", "nyc_water"):
            assert (out / f"{name}.dzi").is_file(), name
        side = json.loads((out / "nyc_night.json").read_text())
        assert side["layer"] == "layer_night"

        assets = list(defs.assets)
        resolver = get_stale_status_resolver(instance, assets)
        keys = [key2(*q) for q in project.quadrants.keys]
        assert all(resolver.get_status(dg.AssetKey("layer_night"), k) != StaleStatus.STALE for k in keys)

        # A new version of one generated quadrant (a repaint), published by the generation asset.
        x, y = 1, 0
        old = store.active("generation", x, y)
        rgb = decode_rgb(store.get_blob(old.sha256))
        store.put_tile("generation", x, y, png_bytes(np.ascontiguousarray(rgb[:, ::-1])), {"step": "repaint"})
        gen_job = defs.resolve_job_def(f"{layers.GENERATION}_job")
        assert gen_job.execute_in_process(instance=instance, partition_key=key2(x, y)).success

        resolver = get_stale_status_resolver(instance, assets)
        for asset in ("layer_night", "layer_snow"):
            stale = {k for k in keys if resolver.get_status(dg.AssetKey(asset), k) == StaleStatus.STALE}
            assert stale == {key2(x, y)}, (asset, stale)

        # Re-deriving that quadrant alone brings it up to date with the new pixels; the others are reused.
        night_job = defs.resolve_job_def("layer_night_job")
        assert night_job.execute_in_process(instance=instance, partition_key=key2(x, y)).success
        v = store.active("layer_night", x, y)
        assert v.version == 2 and v.provenance["source_sha256"] != old.sha256
        src = project.step_inputs().render_aux(x, y)
        from isonyc_dagster.derive import Source

        expect = night(
            Source(
                decode_rgb(store.get_tile("generation", x, y)),
                src["surface"],
                src["building"],
                src["height"],
                (x * 512, y * 512),
            )
        )
        assert np.array_equal(decode_rgb(store.get_blob(v.sha256)), expect)
        resolver = get_stale_status_resolver(instance, assets)
        assert all(resolver.get_status(dg.AssetKey("layer_night"), k) != StaleStatus.STALE for k in keys)
        assert store.active("layer_night", 0, 0).version == 1  # untouched quadrants keep their version


@pytest.mark.slow
def test_the_wave_scheduler_builds_derived_layers_and_their_pyramids(tmp_path: Path) -> None:
    """The scheduler alone (as `dagster dev` runs it) derives every configured layer after generation and keeps
    the layer pyramids up to date; it only reports the map finished when they are."""
    from isonyc_dagster.defs.assets.derived import layer_pyramids_staleness
    from isonyc_dagster.defs.driver import drive

    cfg = project_config(tmp_path, 0, 0, 1, 1).model_copy(update={"derived_layers": ["night"]})
    defs = build_definitions(cfg)
    project = Project(cfg)
    with home_instance(tmp_path / "dagster_home") as instance:
        report = drive(defs, project, instance, wait_s=0.2)
        assert report.complete and not report.failed, report.summary
        assert any(e["tags"].get("isonyc/asset") == "layer_night" for e in report.log)
        assert any(e["tags"].get("isonyc/asset") == "layer_pyramids" for e in report.log)
        for q in project.quadrants.keys:
            assert project.store.active("layer_night", *q) is not None, q
        assert layer_pyramids_staleness(project) is None
        assert (Path(cfg.output_dir) / "nyc_night.dzi").is_file()
