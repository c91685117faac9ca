"""The 12×12 wave-scheduler test of ``test_wave_scheduler.py`` on a PostgreSQL instance, with several runs in flight.

Runs come from the scheduler's own planning (``sensors.plan_waves``) and execute in forked worker processes
(``defs.parallel.drive_parallel``), each with its own connection to the same PostgreSQL instance and the same store,
several at once. The assertions are about behaviour, not the run shape: every step is generated once, after its
context and from it; the whole area is generated and exported; and the runs stay few.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from isonyc_dagster import layers
from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.defs.parallel import drive_parallel
from isonyc_dagster.defs.partitions import key2, parse_key2
from isonyc_dagster.generate.plan import Step
from isonyc_dagster.project import Project
from tests.dagster_helpers import project_config
from tests.pg_helpers import instance_home

pytestmark = pytest.mark.slow

#: Runs the scheduler may use for the whole 12×12 map (144 renders, 64 steps, 144 generations, 144 water masks and
#: the map): a few per asset and wave, not one per partition (497 partitions). Measured: 17 (2026-12-02).
MAX_RUNS = 40
#: Step runs in flight at once (each in its own process).
RUNS_IN_FLIGHT = 4


def _step_asset(step: Step) -> str:
    return layers.STEP_ASSETS[step.kind.value]


def _first_materializations(instance: dg.DagsterInstance, asset: str) -> dict[tuple[int, int], list]:
    out: dict[tuple[int, int], list] = {}
    for rec in instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records:
        out.setdefault(parse_key2(str(rec.partition_key)), []).append(rec)
    return out


def _order_violations(project: Project, mats: dict[str, dict[tuple[int, int], list]]) -> list[str]:
    """Steps materialized before (or without) one of the steps they take context from."""
    out = []
    for step in project.plan.steps:
        mine = min(r.timestamp for r in mats[_step_asset(step)][step.cell])
        for dep in project.plan.dependencies(step):
            theirs = mats[_step_asset(dep)].get(dep.cell)
            if not theirs or not min(r.timestamp for r in theirs) < mine:
                out.append(f"{step.key} was materialized before {dep.key}")
    return out


def test_scheduler_fills_12x12_in_order_with_concurrent_runs_on_postgres(pg_cluster, tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 11, 11)
    project = Project(cfg)
    assert len(project.quadrants) == 144 and len(project.plan.steps) == 64
    home = instance_home(pg_cluster, tmp_path / "dagster_home", "sched12")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        report = drive_parallel(
            build_definitions(cfg), project, instance, runs_in_flight=RUNS_IN_FLIGHT, wait_s=0.2
        )
        assert report.complete and report.failed == 0, (report.summary, report.failed_labels)

        records = instance.get_run_records(dg.RunsFilter(), limit=10_000)
        assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}
        assert len(records) <= MAX_RUNS, len(records)

        # Several runs were in progress at once on the instance (what SQLite's single writer cannot take).
        spans = sorted((r.start_time, r.end_time) for r in records if r.start_time and r.end_time)
        assert any(b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :]), "no two runs overlapped"

        # Each step generated exactly once, after every step it takes context from.
        mats = {name: _first_materializations(instance, name) for name in layers.STEP_ASSETS.values()}
        for step in project.plan.steps:
            assert len({r.run_id for r in mats[_step_asset(step)][step.cell]}) == 1, step.key
        assert _order_violations(project, mats) == []

        # The whole area is generated and its water masked.
        for asset in (layers.GENERATION, layers.WATER_MASK):
            assert len(instance.get_materialized_partitions(dg.AssetKey(asset))) == 144, asset

    # Every step used exactly its planned context, as the pixels that were generated there.
    store = project.store
    for step in project.plan.steps:
        tile = store.active("generation", *step.quadrants[0])
        assert tile is not None, step.key
        assert sorted(map(tuple, tile.provenance["context"])) == sorted(step.context), step.key
        for c in step.context:
            ctx = store.active("generation", *c)
            assert ctx is not None, (step.key, c)
            assert tile.provenance["context_sha256"][key2(*c)] == ctx.sha256, (step.key, c)
    assert (Path(cfg.output_dir) / "nyc.dzi").exists()
