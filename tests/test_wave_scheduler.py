"""The wave scheduler fills a 12×12-quadrant area in a seam-free order through the real Dagster machinery.

Runs are requested by the scheduler's own logic (``sensors.wave_run_requests``, what the sensor returns each tick)
and executed with the code location's jobs against a persistent SQLite instance. The order is then proved from
Dagster's event log, the store's provenance, and staleness after regenerating one step.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.defs.driver import drive
from isonyc_dagster.defs.partitions import key2, parse_key2
from isonyc_dagster.defs.resources import GeneratorResource
from isonyc_dagster.defs.sensors import STEP_ASSETS, wave_run_requests
from isonyc_dagster.generate.plan import StepKind
from isonyc_dagster.project import Project
from tests.dagster_helpers import home_instance, project_config

pytestmark = pytest.mark.slow


def _materializations(instance: dg.DagsterInstance, asset: str) -> dict[tuple[int, int], list]:
    out: dict[tuple[int, int], list] = {}
    for rec in instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records:
        out.setdefault(parse_key2(rec.partition_key), []).append(rec)
    return out


def test_scheduler_fills_12x12_in_seam_free_order_and_survives_restart(tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 11, 11)
    defs = build_definitions(cfg)
    project = Project(cfg)
    assert len(project.quadrants) == 144 and len(project.plan.steps) == 64
    home = tmp_path / "dagster_home"

    # First "daemon": a few ticks only, then it dies.
    with home_instance(home) as instance:
        first = drive(defs, project, instance, max_rounds=3)
        assert not first.complete and first.runs > 0

    # A new process, a new instance object and a fresh project: the scheduler keeps no state, so it resumes.
    project2 = Project(cfg)
    with home_instance(home) as instance:
        second = drive(defs, project2, instance)
        assert second.complete, second.summary
        assert second.failed == 0 and first.failed == 0

        run_start = {
            r.dagster_run.run_id: r.start_time
            for r in instance.get_run_records(dg.RunsFilter(), limit=10_000)
        }
        mats = {name: _materializations(instance, name) for name in STEP_ASSETS.values()}
        violations = []
        for step in project2.plan.steps:
            # One run per step; a range run logs the step's own materialization after the run step's.
            recs = mats[STEP_ASSETS[step.kind]][step.cell]
            assert len({r.run_id for r in recs}) == 1, step.key
            started = run_start[recs[0].run_id]
            for dep in project2.plan.dependencies(step):
                dep_rec = min(mats[STEP_ASSETS[dep.kind]][dep.cell], key=lambda r: r.timestamp)
                if not dep_rec.timestamp < started:
                    violations.append(f"{step.key} started before {dep.key} was materialized")
        assert violations == []

        # Every step saw exactly its planned context, as generated pixels (no edge generated blind).
        store = project2.store
        for step in project2.plan.steps:
            prov = store.active("generation", *step.quadrants[0]).provenance
            assert sorted(map(tuple, prov["context"])) == sorted(step.context), step.key
            # Named as Dagster names them: the step's asset and partition key, its context's partition keys.
            assert prov["step"] == f"{STEP_ASSETS[step.kind]}[{key2(*step.cell)}]" and prov["template_sha256"]
            for c in step.context:
                assert prov["context_sha256"][key2(*c)] == store.active("generation", *c).sha256

        # Batched: far fewer runs than partitions (144 renders + 64 steps + 144 generations + 144 masks + export):
        # one run per asset (9 with geodata and the map), plus at most a few where the restart cut a wave.
        total_runs = first.runs + second.runs
        assert total_runs <= 12, total_runs
        assert wave_run_requests(project2, instance)[0] == []  # nothing left to do

        # The map was exported.
        assert (Path(cfg.output_dir) / "nyc.dzi").exists()
        assert (Path(cfg.output_dir) / "nyc.pmtiles").exists()


def test_regenerating_a_block_marks_exactly_its_dependants_stale(tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 8, 8)
    defs = build_definitions(cfg)
    project = Project(cfg)
    with home_instance(tmp_path / "dagster_home") as instance:
        assert drive(defs, project, instance).complete
        assets = list(defs.assets)
        resolver = get_stale_status_resolver(instance, assets)
        stale_before = {
            (name, cell)
            for name in STEP_ASSETS.values()
            for cell in project.plan.cells(next(k for k, v in STEP_ASSETS.items() if v == name))
            if resolver.get_status(dg.AssetKey(name), key2(*cell)) == StaleStatus.STALE
        }
        assert stale_before == set()

        block = project.plan.step(StepKind.BLOCK, (1, 1))
        old = {q: project.store.active("generation", *q).sha256 for q in block.quadrants}
        # Another texture seed of the offline backend: a genuinely different image for this block.
        regen = build_definitions(cfg, generator=GeneratorResource(settings_json='{"params": {"seed": 7}}'))
        assert (
            regen.resolve_job_def("blocks_job")
            .execute_in_process(instance=instance, partition_key="1|1")
            .success
        )
        new = {q: project.store.active("generation", *q) for q in block.quadrants}
        assert all(new[q].sha256 != old[q] and new[q].version == 2 for q in block.quadrants)

        resolver = get_stale_status_resolver(instance, assets)
        stale_steps = {
            s.key
            for s in project.plan.steps
            if resolver.get_status(dg.AssetKey(STEP_ASSETS[s.kind]), key2(*s.cell)) == StaleStatus.STALE
        }
        assert stale_steps == {s.key for s in project.plan.dependants(block)}
        stale_quadrants = {
            q
            for q in project.quadrants.keys
            if resolver.get_status(dg.AssetKey("generation"), key2(*q)) == StaleStatus.STALE
        }
        assert stale_quadrants == set(block.quadrants)
