"""``isonyc/backend`` run tags and the run queue's limits in ``deploy/``: tagged runs are held at the limit by
Dagster's own queue, and the Helm values say what ``deploy/dagster.yaml`` says."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from isonyc_dagster import layers
from isonyc_dagster.defs.run_tags import BACKEND_TAG, backend_tags, model_assets
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.project import Project

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "dagster.yaml"
VALUES = REPO / "deploy" / "helm" / "values.yaml"
ASSET_TAG = "isonyc/asset"


def _project(**cfg: Any) -> Project:
    return Project(ProjectConfig.model_validate({"map": {"name": "t"}, **cfg}))


def _queue_config() -> dict[str, Any]:
    return yaml.safe_load(DEPLOY.read_text())["run_coordinator"]["config"]


def test_step_runs_name_the_project_backend_and_others_none() -> None:
    p = _project(backend="modal", restyle={"ink": "ink drawing"})
    for asset in layers.STEP_ASSETS.values():
        assert backend_tags(p, asset) == {BACKEND_TAG: "modal"}
    assert backend_tags(p, "restyle_ink_corners") == {BACKEND_TAG: "modal"}
    for asset in (layers.RENDER, layers.GENERATION, layers.WATER_MASK, layers.DZI_PYRAMID, "export"):
        assert backend_tags(p, asset) == {}
    assert backend_tags(_project(), "blocks") == {BACKEND_TAG: "pixelart"}  # the default, offline backend
    assert "restyle_ink_blocks" not in model_assets(_project())  # only restyles the project configures


def test_deploy_limits_cover_every_tag_the_runs_carry() -> None:
    limits = _queue_config()["tag_concurrency_limits"]
    per_asset = {lim["value"] for lim in limits if lim["key"] == ASSET_TAG}
    assert set(layers.STEP_ASSETS.values()) <= per_asset
    (backend,) = [lim for lim in limits if lim["key"] == BACKEND_TAG]
    assert backend["value"] == {"applyLimitPerUniqueValue": True}
    # The per-backend limit can bind: it is below what the step assets' own limits allow together.
    assert backend["limit"] < sum(
        lim["limit"] for lim in limits if lim["value"] in layers.STEP_ASSETS.values()
    )


def test_queue_holds_tagged_runs_at_the_backend_limit(tmp_path: Path) -> None:
    """Dagster's own dequeue step, with the queue config of ``deploy/dagster.yaml``, on real queued runs: runs of
    one backend profile are released up to the limit; another profile has its own allowance."""
    cfg = _queue_config()
    limit = next(lim["limit"] for lim in cfg["tag_concurrency_limits"] if lim["key"] == BACKEND_TAG)
    overrides = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": cfg,
        }
    }
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=overrides) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        repo = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("isonyc"), "__repository__")
        for backend, asset in [("modal", "blocks"), ("modal", "corners"), ("oxen", "bridges_h")]:
            tags = backend_tags(_project(backend=backend), asset)
            for _ in range(3):
                instance.add_run(
                    dg.DagsterRun(
                        job_name=f"{asset}_job",
                        run_id=str(uuid.uuid4()),
                        status=dg.DagsterRunStatus.QUEUED,
                        tags={ASSET_TAG: asset, **tags},
                        remote_job_origin=RemoteJobOrigin(repo, f"{asset}_job"),
                    )
                )
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        released = daemon._get_runs_to_dequeue(
            instance, instance.get_concurrency_config(), fixed_iteration_time=None
        )
        by_backend = Counter(r.tags[BACKEND_TAG] for r in released)
    assert by_backend == {"modal": limit, "oxen": limit}


def test_queue_blocks_runs_whose_pool_is_full() -> None:
    queue = QueuedRunCoordinator.from_config_value(None, _queue_config())  # type: ignore[arg-type]
    rq = queue.get_run_queue_config()
    assert rq.should_block_op_concurrency_limited_runs and rq.explicitly_enabled_concurrency_run_blocking
    assert rq.op_concurrency_slot_buffer == 0


def test_helm_values_mirror_the_queue_blocking_and_retention() -> None:
    values = yaml.safe_load(VALUES.read_text())
    cfg = yaml.safe_load(DEPLOY.read_text())
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    blocking = cfg["run_coordinator"]["config"]["block_op_concurrency_limited_runs"]
    assert queued["blockOpConcurrencyLimitedRuns"] == {
        "enabled": blocking["enabled"],
        "opConcurrencySlotBuffer": blocking["op_concurrency_slot_buffer"],
    }
    retention = values["retention"]
    assert retention["enabled"] is True
    assert retention["schedule"]["purgeAfterDays"] == cfg["retention"]["schedule"]["purge_after_days"]
    sensor = retention["sensor"]["purgeAfterDays"]
    assert {k: sensor[k] for k in cfg["retention"]["sensor"]["purge_after_days"]} == cfg["retention"][
        "sensor"
    ]["purge_after_days"]


@pytest.mark.parametrize("asset", sorted(layers.STEP_ASSETS.values()))
def test_step_assets_are_in_the_generation_backend_pool(asset: str) -> None:
    """The pool the docs tell operators to size is the one the step assets claim."""
    from isonyc_dagster.defs.assets.steps import STEP_ASSET_NAMES, build_step_asset

    kind = next(k for k, name in STEP_ASSET_NAMES.items() if name == asset)
    a = build_step_asset(kind, dg.StaticPartitionsDefinition(["0|0"]), [])
    assert a.op.pool == "generation_backend"
