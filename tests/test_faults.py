"""Crash and resume: kill -9 at any moment, and the next `isonyc demo` finishes the same map by itself.

Every test runs the real command as a subprocess against a real Dagster instance and tile store, and compares
the resulting map with a clean run's, decoded tile by tile. See also ``benchmarks/chaos.py`` (the same with
20 kills, and figures).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import dagster as dg
import pytest

from benchmarks.chaos import chain, clean_run, demo_env, map_hashes, run_demo
from isonyc_dagster.defs.runs import DEAD_TAG, process_alive, process_tags, reap_dead_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, dict[str, str]]:
    """One clean demo: its directory (copied by tests that change it), wall time and map hashes."""
    work = tmp_path_factory.mktemp("clean")
    seconds, hashes = clean_run(work)
    assert len(hashes) == 36
    return work, seconds, hashes


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("demo.log"))
    return dst


def _demo(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "isonyc_dagster.cli", "demo", *args],
        cwd=work,
        env=demo_env(work),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_random_kills_resume_unattended_to_the_clean_map(clean, tmp_path: Path) -> None:
    _, seconds, reference = clean
    r = chain(tmp_path / "chaos", kills=10, seed=11, clean_s=seconds, reference=reference)
    logs = "".join(p.read_text()[-1500:] for p in sorted((tmp_path / "chaos").glob("*/demo.log")))
    assert r.kills == 10 and any(not a.killed for a in r.attempts)
    assert r.resumed_without_help, logs
    assert r.tiles_lost == 0
    assert r.tiles_differing == 0


def test_a_kill_between_run_creation_and_launch_is_reaped(clean, tmp_path: Path) -> None:
    """The run the killed process had just created stays NOT_STARTED: the next start marks it failed."""
    work = _copy(clean[0], tmp_path / "w")
    shutil.rmtree(work / "data" / "map")
    child = textwrap.dedent(
        """
        import os, signal
        import dagster as dg
        from isonyc_dagster.defs.definitions import build_definitions
        from isonyc_dagster.defs.runs import process_tags
        from isonyc_dagster.defs.sensors import ASSET_TAG, SCHEDULER_TAG
        from isonyc_dagster.geo.config import ProjectConfig

        job = build_definitions(ProjectConfig()).resolve_job_def("export_job")
        with dg.DagsterInstance.get() as instance:
            tags = {SCHEDULER_TAG: "wave", ASSET_TAG: "export"} | process_tags()
            instance.create_run_for_job(job, tags=tags, status=dg.DagsterRunStatus.NOT_STARTED)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    killed = subprocess.run([sys.executable, "-c", child], cwd=work, env=demo_env(work), timeout=300)
    assert killed.returncode == -9
    out = _demo(work)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "marked failed (process gone)" in out.stdout
    assert map_hashes(work / "data" / "map") == clean[2]
    with dg.DagsterInstance.from_config(str(work / "data" / "dagster_home")) as instance:
        dead = [r for r in instance.get_run_records() if DEAD_TAG in r.dagster_run.tags]
        assert [r.dagster_run.status for r in dead] == [dg.DagsterRunStatus.FAILURE]


@pytest.mark.parametrize("damage", ["deleted map", "export crashed", "viewer file lost"])
def test_a_broken_map_is_rebuilt_never_reported_done(clean, tmp_path: Path, damage: str) -> None:
    work = _copy(clean[0], tmp_path / "w")
    map_dir = work / "data" / "map"
    if damage == "deleted map":
        shutil.rmtree(map_dir)
    elif damage == "export crashed":  # what a kill during the pyramid build leaves: no .dzi, some tiles
        (map_dir / "nyc.dzi").unlink()
        for tile in sorted((map_dir / "nyc_files").rglob("*.png"))[::3]:
            tile.unlink()
    else:
        (map_dir / "viewer.js").unlink()
    out = _demo(work)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "refreshing the map" in out.stdout and "map up to date" in out.stdout
    assert (map_dir / "nyc.dzi").is_file() and (map_dir / "index.html").is_file()
    assert (map_dir / "viewer.js").is_file()
    assert map_hashes(map_dir) == clean[2]


def test_a_new_out_dir_and_a_water_repair_reach_the_map(clean, tmp_path: Path) -> None:
    work = _copy(clean[0], tmp_path / "w")
    repaired = subprocess.run(
        [sys.executable, "-m", "isonyc_dagster.cli", "water", "fill", "-26", "22"],
        cwd=work,
        env=demo_env(work),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert repaired.returncode == 0, repaired.stderr
    out = _demo(work)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    changed = {k for k, h in map_hashes(work / "data" / "map").items() if clean[2][k] != h}
    assert changed == {"nyc/1_4"}, changed  # quadrant (-26, 22) is column 1, row 4 of the grid
    out = _demo(work, "--out", str(tmp_path / "elsewhere"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (tmp_path / "elsewhere" / "index.html").is_file()
    assert map_hashes(tmp_path / "elsewhere") == map_hashes(work / "data" / "map")


def test_only_runs_of_dead_processes_are_reaped(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    alive = {"isonyc/pid": str(sleeper.pid)} | {k: v for k, v in process_tags().items() if k != "isonyc/pid"}
    alive["isonyc/pid_start"] = ""
    assert process_alive(process_tags()) is True
    assert process_alive(alive) is True
    sleeper.kill()
    sleeper.wait()
    assert process_alive(alive) is False
    assert process_alive({"isonyc/pid": "1", "isonyc/host": "another-host"}) is None
    with dg.DagsterInstance.ephemeral() as instance:
        for tags in (alive, process_tags()):
            instance.add_run(
                dg.DagsterRun(
                    job_name="j", run_id=str(uuid.uuid4()), tags=tags, status=dg.DagsterRunStatus.STARTED
                )
            )
        assert len(reap_dead_runs(instance)) == 1
        statuses = sorted(r.dagster_run.status.value for r in instance.get_run_records())
        assert statuses == ["FAILURE", "STARTED"]


def test_run_demo_helper_reports_kills(tmp_path: Path) -> None:
    attempt = run_demo(tmp_path / "w", kill_after=2.0)
    assert attempt.killed and attempt.returncode is None, (tmp_path / "w" / "demo.log").read_text()
