"""Run shape at city scale (issue 12): the instance the demo writes, map refreshes during a long fill, run tags."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from isonyc_dagster.cli.demo import ensure_dagster_home
from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.defs.run_tags import BACKEND_TAG
from isonyc_dagster.defs.sensors import ASSET_TAG, MAP_REFRESH_S, SCHEDULER_TAG, _map_refresh_due, plan_waves
from isonyc_dagster.project import Project
from tests.dagster_helpers import full_range_tags, project_config


@dg.op
def _noop() -> None:
    pass


@dg.job
def _tagged_job() -> None:
    _noop()


def _run(instance: dg.DagsterInstance, tags: dict[str, str]) -> None:
    assert _tagged_job.execute_in_process(instance=instance, tags=tags).success


def test_a_new_demo_instance_keeps_events_in_one_file_and_an_old_one_keeps_its_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    new = ensure_dagster_home(tmp_path / "new")
    with dg.DagsterInstance.from_config(str(new)) as instance:
        assert type(instance.event_log_storage).__name__ == "ConsolidatedSqliteEventLogStorage"
        for _ in range(3):
            _run(instance, {})
        assert len(instance.get_runs()) == 3
    assert [p.name for p in (new / "history").rglob("*.db") if p.parent.name == "runs"] == []

    # An instance made before keeps Dagster's per-run files (switching would hide their history), also on rewrite.
    old = tmp_path / "old"
    old.mkdir()
    (old / "dagster.yaml").write_text(
        "# Written by `isonyc demo`: an older version\ntelemetry:\n  enabled: false\n"
    )
    with dg.DagsterInstance.from_config(str(old)) as instance:
        _run(instance, {})
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    ensure_dagster_home(old)
    assert "ConsolidatedSqliteEventLogStorage" not in (old / "dagster.yaml").read_text()
    with dg.DagsterInstance.from_config(str(old)) as instance:
        assert len(instance.get_runs()) == 1 and instance.get_runs()[0].is_success
    # A hand-written dagster.yaml is never touched.
    (old / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    ensure_dagster_home(old)
    assert (old / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_the_map_is_refreshed_every_map_refresh_s_during_a_long_fill(tmp_path: Path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert not _map_refresh_due(instance, now=time.time() + 10 * MAP_REFRESH_S)  # no fill yet
        _run(instance, {SCHEDULER_TAG: "wave", ASSET_TAG: "render"})
        assert not _map_refresh_due(instance)  # a fill shorter than MAP_REFRESH_S exports once, at the end
        assert _map_refresh_due(instance, now=time.time() + MAP_REFRESH_S + 1)
        time.sleep(1.1)
        _run(instance, {SCHEDULER_TAG: "wave", ASSET_TAG: "export"})
        exported = instance.get_run_records(dg.RunsFilter(tags={ASSET_TAG: "export"}))[0].create_timestamp
        # The fill is old enough, but the map was refreshed less than MAP_REFRESH_S ago; then it is due again.
        assert not _map_refresh_due(instance, now=exported.timestamp() + MAP_REFRESH_S - 0.5)
        assert _map_refresh_due(instance, now=exported.timestamp() + MAP_REFRESH_S + 0.5)


def test_water_masks_go_first_and_step_runs_name_their_backend(tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 1, 1)
    defs, project = build_definitions(cfg), Project(cfg)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert defs.resolve_job_def("geodata_job").execute_in_process(instance=instance).success
        tags = full_range_tags(project.order.quadrants)
        assert defs.resolve_job_def("render_job").execute_in_process(instance=instance, tags=tags).success
        requests = plan_waves(project, instance).requests
    # Water masks go first: a driver executing one run at a time plans again after each step run, and what was
    # queued behind the steps waited until none was ready (the Manhattan preset had 0 masks after 46 min).
    assert [(r.tags or {})[ASSET_TAG] for r in requests] == ["water_mask", "blocks"]
    by_asset = {(r.tags or {})[ASSET_TAG]: r.tags or {} for r in requests}
    assert by_asset["blocks"][BACKEND_TAG] == cfg.backend == "pixelart"
    assert BACKEND_TAG not in by_asset["water_mask"]  # no model call, no backend limit
