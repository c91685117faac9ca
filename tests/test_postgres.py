"""The Dagster instance on PostgreSQL (``dagster-postgres``), on a real cluster started like ``scripts/setup.sh
postgres`` starts one: the instance loads, and the wave scheduler completes a small map with several run workers
(separate processes, each executing runs) writing to the instance at once — what SQLite cannot take."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from tests.dagster_helpers import project_config
from tests.pg_helpers import fresh_database, instance_yaml, local_postgres


def _home(tmp: Path, cluster, db: str) -> Path:
    home = tmp / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(instance_yaml(cluster, db))
    return home


def test_setup_script_config_gives_a_postgres_instance(pg_cluster, tmp_path: Path) -> None:
    lp = local_postgres()
    cfg = lp.write_dagster_yaml(pg_cluster, tmp_path / "home")  # exactly what the setup script writes
    assert cfg.read_text().startswith(lp.MARKER)

    @dg.asset
    def one() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert dg.materialize([one], instance=instance).success
        assert instance.get_latest_materialization_event(dg.AssetKey("one")) is not None
    # Rewritten on a rerun; a dagster.yaml written by a person is refused, never overwritten.
    lp.write_dagster_yaml(pg_cluster, tmp_path / "home")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.raises(lp.PostgresError, match="written by hand"):
        lp.write_dagster_yaml(pg_cluster, tmp_path / "mine")
    # The setup script's start is idempotent: a second start finds the running cluster and its database.
    lp.open_cluster(pg_cluster.root).start()


WORKER = textwrap.dedent(
    """
    import json, sys
    import dagster as dg
    from isonyc_dagster.defs.definitions import build_definitions
    from isonyc_dagster.defs.driver import drive
    from isonyc_dagster.geo.config import load_project_config
    from isonyc_dagster.project import Project

    cfg = load_project_config(sys.argv[1])
    with dg.DagsterInstance.from_config(sys.argv[2]) as instance:
        report = drive(build_definitions(cfg), Project(cfg), instance, wait_s=0.5)
    print(json.dumps({"runs": report.runs, "failed": report.failed, "complete": report.complete,
                      "summary": report.summary}))
    """
)


@pytest.mark.slow
def test_scheduler_completes_with_concurrent_run_workers_on_postgres(pg_cluster, tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 2, 2)
    (tmp_path / "isonyc.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    home = _home(tmp_path, pg_cluster, fresh_database(pg_cluster))
    # Two processes at once, each requesting and executing runs against the same instance and store.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / "isonyc.json"), str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    reports = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["complete"] for r in reports), reports
    assert sum(r["runs"] for r in reports) > 0

    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(dg.RunsFilter(), limit=1000)
        assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}, reports
        assert len(instance.get_materialized_partitions(dg.AssetKey("generation"))) == 9
        # Concurrency happened: some runs of different workers overlapped in time.
        spans = sorted((r.start_time, r.end_time, r.dagster_run.tags.get("isonyc/pid")) for r in records)
        overlaps = sum(
            1
            for i, a in enumerate(spans)
            for b in spans[i + 1 :]
            if a[2] != b[2] and b[0] is not None and a[1] is not None and b[0] < a[1]
        )
        assert overlaps > 0, spans
    assert (Path(cfg.output_dir) / "nyc.dzi").exists()
