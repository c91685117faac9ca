"""Fixing a bad tile: repair, revert and regenerate (core and CLI), and a scheduler that respects people.

The issue's scenario, replayed on a 3×3-quadrant map (one lattice cell: a block, two bridges, a corner) through a
real Dagster instance and the scheduler's own logic (``defs.driver.drive``, what the sensor does per tick).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from isonyc_dagster import layers
from isonyc_dagster.backends.pixelart import PixelArtBackend, StyleParams
from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.defs.driver import drive
from isonyc_dagster.defs.partitions import key2
from isonyc_dagster.defs.sensors import plan_waves
from isonyc_dagster.generate.plan import StepKind
from isonyc_dagster.generate.repair import (
    OperateError,
    parse_step_key,
    person_made,
    regenerate,
    revert,
    stale_steps,
)
from isonyc_dagster.generate.rules import step_settings
from isonyc_dagster.images import decode_rgb
from isonyc_dagster.project import Project
from tests.dagster_helpers import home_instance, project_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _cli(cfg_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "isonyc_dagster.cli", "--config", str(cfg_path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _write_config(tmp_path: Path, cfg) -> Path:
    path = tmp_path / "project.json"
    path.write_text(cfg.model_dump_json())
    return path


def test_repair_revert_and_the_scheduler_publishes_without_touching_neighbours(tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 2, 2)
    defs = build_definitions(cfg)
    project = Project(cfg)
    store = project.store
    with home_instance(tmp_path / "home") as instance:
        assert drive(defs, project, instance).complete
        before = {q: store.active(layers.GENERATION, *q) for q in project.quadrants.keys}

        # Repair (1, 1) through the CLI: a 1×1 infill with all 8 generated neighbours as context.
        cfg_path = _write_config(tmp_path, cfg)
        out = _cli(cfg_path, "repair", "1", "1", "--seed", "5")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)["repaired"][0]
        assert rep["step"] == "repair[1|1]"
        assert sorted(rep["context"]) == sorted(key2(*q) for q in project.quadrants.keys if q != (1, 1))
        v = store.active(layers.GENERATION, 1, 1)
        assert v.version == 2 and v.provenance["kind"] == "repair" and person_made(v)
        assert v.provenance["from_version"] == 1 and v.provenance["repaired_step"] == "blocks[0|0]"
        assert [x.version for x in store.versions(layers.GENERATION, 1, 1)] == [1, 2]  # the old version stays
        for q, old in before.items():
            if q != (1, 1):
                assert store.active(layers.GENERATION, *q).sha256 == old.sha256, q
        assert stale_steps(store, project.plan) == []  # a repair fits its neighbours: no step goes stale

        # The scheduler publishes exactly the repaired quadrant again and refreshes the map; nothing is stale.
        plan = plan_waves(project, instance)
        assert [(r.job_name, r.partition_key) for r in plan.requests] == [("generation_job", "1|1")]
        assert drive(defs, project, instance).complete
        resolver = get_stale_status_resolver(instance, list(defs.assets))
        for asset, keys in (
            ("generation", [key2(*q) for q in project.quadrants.keys]),
            ("bridges_v", ["0|0"]),
            ("bridges_h", ["0|0"]),
            ("corners", ["0|0"]),
        ):
            assert all(resolver.get_status(dg.AssetKey(asset), k) != StaleStatus.STALE for k in keys), asset

        # Revert: version 1 is the content again, as version 3 of the same blob, marked as a person's choice.
        out = _cli(cfg_path, "revert", "1", "1", "--version", "1")
        assert out.returncode == 0, out.stderr
        v3 = store.active(layers.GENERATION, 1, 1)
        assert (v3.version, v3.sha256, v3.provenance["kind"]) == (3, before[(1, 1)].sha256, "revert")
        bad = _cli(cfg_path, "revert", "1", "1", "--version", "9")
        assert bad.returncode == 2 and bad.stderr.strip() == (
            "isonyc revert: error: generation (1, 1) has no version 9; it has versions 1, 2, 3"
        )
        bad = _cli(cfg_path, "repair", "1")
        assert bad.returncode == 2 and "X Y pairs" in bad.stderr and "Traceback" not in bad.stderr


def test_regenerated_block_makes_exactly_its_dependants_stale_and_the_scheduler_never_overwrites_it(
    tmp_path: Path,
) -> None:
    cfg = project_config(tmp_path, 0, 0, 2, 2)
    defs = build_definitions(cfg)
    project = Project(cfg)
    store = project.store
    with home_instance(tmp_path / "home") as instance:
        assert drive(defs, project, instance).complete
        first = {q: store.active(layers.GENERATION, *q).sha256 for q in project.quadrants.keys}
        block = parse_step_key(project.plan, "blocks:0|0")
        assert block.kind == StepKind.BLOCK
        with pytest.raises(OperateError, match="not KIND:BX,BY"):
            parse_step_key(project.plan, "block")

        # A person regenerates the block with another look (the offline backend's seed is its style seed).
        backend = PixelArtBackend(cfg.map, params=StyleParams.parse({"seed": 7}, source="test"))
        mi = project.step_rules.resolve(block).with_backend_default(backend)
        res = regenerate(
            store, project.step_inputs(), block, backend, step_settings(mi, generator_key="by-hand"), seed=7
        )
        manual = {(v.x, v.y): v.sha256 for v in res.versions}
        assert all(v.provenance["kind"] == "regenerate" for v in res.versions)
        stale = stale_steps(store, project.plan)
        assert {s.key for s in stale} == {"bridge_v:0,0", "bridge_h:0,0", "corner:0,0"}

        # on_stale = flag (default): the tick says so and regenerates nothing; only the block is published again.
        plan = plan_waves(project, instance)
        assert "3 stale step(s) flagged" in plan.summary
        assert {r.job_name for r in plan.requests} == {"generation_job"}

        # A step run of the block (as after a wipe) keeps the person's pixels.
        assert (
            defs.resolve_job_def("blocks_job")
            .execute_in_process(instance=instance, partition_key="0|0")
            .success
        )
        assert {q: store.active(layers.GENERATION, *q).sha256 for q in manual} == manual

        # on_stale = regenerate: bridges first (wave 2), then the corner (wave 3); the block is never touched.
        cfg2 = cfg.model_copy(update={"on_stale": "regenerate"})
        project2, defs2 = Project(cfg2), build_definitions(cfg2)
        report = drive(defs2, project2, instance)
        assert report.complete, report.summary
        labels = [e["label"] for e in report.log]
        step_runs = [
            lb for lb in labels if lb.split("[")[0] in ("bridges_v", "bridges_h", "corners", "blocks")
        ]
        assert sorted(step_runs[:2]) == ["bridges_h[0|0]", "bridges_v[0|0]"] and step_runs[2:] == [
            "corners[0|0]"
        ]
        assert labels[-1] == "export_job"
        assert stale_steps(store, project2.plan) == []
        assert {q: store.active(layers.GENERATION, *q).sha256 for q in manual} == manual
        for q in project.quadrants.keys:
            if q not in manual:
                assert store.active(layers.GENERATION, *q).provenance["context_sha256"] is not None
        # The map shows the new pixels: its full-resolution tile of (0, 0) is the person's quadrant, byte for byte.
        assert plan_waves(project2, instance).finished
        files = Path(cfg.output_dir) / f"{cfg.map.name}_files"
        top = max((d for d in files.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
        shown = decode_rgb((top / "0_0.png").read_bytes())[
            128:384, 128:384
        ]  # inside the publish clip's margin
        assert np.array_equal(shown, decode_rgb(store.get_blob(manual[(0, 0)]))[128:384, 128:384])
        assert not np.array_equal(shown, decode_rgb(store.get_blob(first[(0, 0)]))[128:384, 128:384])


def test_revert_refuses_unknown_tiles(tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 1, 1)
    with pytest.raises(OperateError, match="has no versions"):
        revert(Project(cfg).store, 0, 0, 1)
