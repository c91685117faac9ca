"""``scene_3d`` and ``scene_scheduler`` on a real Dagster instance over a small generated 2×2 map, and the region
registry (``lift/regions.py``) and ``isonyc region`` CLI.

The Dagster test: a region added through the CLI's function is a ``regions`` partition; the sensor waits while its
quadrants are not generated, then requests it; ``scene_3d`` writes a .ply with the expected splat count, the Rerun
recording and the video under ``<output_dir>/scenes/<region>/`` and lists it for the viewer; nothing is requested
again while the inputs are unchanged; a new ``generation`` version of one quadrant requests exactly the region that
holds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from isonyc_dagster import layers
from isonyc_dagster.cli.main import main
from isonyc_dagster.cli.region import add_region, remove_region
from isonyc_dagster.defs.assets.scene import REGIONS, lift_settings, plan_scenes
from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.geo.config import ConfigError, LiftConfig, ProjectConfig
from isonyc_dagster.images import png_bytes
from isonyc_dagster.lift.regions import (
    MAX_QUADRANTS,
    RegionError,
    RegionRegistry,
    check_name,
    project_registry,
)
from isonyc_dagster.project import Project
from tests.dagster_helpers import home_instance, project_config

RANGE_2x2 = {"dagster/asset_partition_range_start": "0|0", "dagster/asset_partition_range_end": "1|1"}
#: Small enough for CI on CPU: a 64 px working image, 3 iterations, a 2-frame video.
SMALL = {"init_iters": 3, "iters_per_frame": 3, "max_resolution": 64, "video_frames": 2, "device": "cpu"}
QUADS = [(0, 0), (1, 0), (0, 1), (1, 1)]


def _lift_config(tmp: Path, **settings) -> ProjectConfig:
    lift = LiftConfig(regions_file=str(tmp / "regions.json"), settings={**SMALL, **settings}, auto=True)
    return project_config(tmp, 0, 0, 1, 1, lift=lift)


# --- the registry -------------------------------------------------------------------------------------------------


def test_registry_adds_lists_removes_and_persists(tmp_path: Path) -> None:
    reg = RegionRegistry(tmp_path / "d" / "regions.json", QUADS)
    assert reg.list() == []
    a = reg.add("b-block", 0, 0, 2, 2)
    reg.add("a_corner", 1, 1, 1, 1)
    assert reg.add("b-block", 0, 0, 2, 2) == a  # the same rectangle again: a no-op
    again = RegionRegistry(tmp_path / "d" / "regions.json", QUADS)  # read back from the file
    assert [r.name for r in again.list()] == ["a_corner", "b-block"]
    assert again.get("b-block").rect == (0, 0, 1, 1)
    assert json.loads((tmp_path / "d" / "regions.json").read_text())["regions"][1] == {
        "name": "b-block",
        "x0": 0,
        "y0": 0,
        "w": 2,
        "h": 2,
    }
    assert again.remove("a_corner").name == "a_corner"
    assert [r.name for r in reg.list()] == ["b-block"]
    assert not list((tmp_path / "d").glob(".*.tmp"))  # atomic writes leave no temp files


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "a b", "a/b", "a...b", "é", "x" * 65, "a|b"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(RegionError, match="invalid region name"):
        check_name(name)


def test_bad_rectangles_and_unknown_names_are_clear_errors(tmp_path: Path) -> None:
    reg = RegionRegistry(tmp_path / "regions.json", QUADS)
    with pytest.raises(
        RegionError, match=r"quadrants \(2, 0\), \(2, 1\) are outside the map's quadrants \(x 0..1, y 0..1\)"
    ):
        reg.add("wide", 0, 0, 3, 2)
    with pytest.raises(RegionError, match="at least 1 quadrant"):
        reg.add("empty", 0, 0, 0, 1)
    with pytest.raises(RegionError, match=f"more than {MAX_QUADRANTS}"):
        RegionRegistry(tmp_path / "r2.json", [(x, y) for x in range(9) for y in range(9)]).add(
            "big", 0, 0, 9, 9
        )
    reg.add("one", 0, 0, 1, 1)
    with pytest.raises(RegionError, match=r"already exists as x0=0 y0=0 w=1 h=1; remove it first"):
        reg.add("one", 1, 1, 1, 1)
    with pytest.raises(
        RegionError, match=r"unknown region 'two' \(known: one\); add it with `isonyc region add two"
    ):
        reg.get("two")
    with pytest.raises(RegionError, match="unknown region"):
        reg.remove("two")
    (tmp_path / "regions.json").write_text("{not json")
    with pytest.raises(RegionError, match="is damaged"):
        reg.list()


def test_lift_settings_from_config_are_checked(tmp_path: Path) -> None:
    assert lift_settings(_lift_config(tmp_path)).max_resolution == 64
    with pytest.raises(ConfigError, match=r"invalid \[lift\] settings: no_such_knob"):
        lift_settings(_lift_config(tmp_path, no_such_knob=3))
    # No [lift] table: no scene asset, sensor or job (the default graph is unchanged).
    defs = build_definitions(project_config(tmp_path, 0, 0, 1, 1))
    assert not defs.resolve_asset_graph().has(dg.AssetKey("scene_3d"))


def test_region_cli_add_list_rm_and_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    cfg = _lift_config(tmp_path)
    path = tmp_path / "project.json"
    path.write_text(cfg.model_dump_json())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    base = ["--config", str(path)]
    assert main([*base, "region", "add", "corner", "--x0", "1", "--y0", "1", "--w", "1", "--h", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == {
        "name": "corner",
        "x0": 1,
        "y0": 1,
        "w": 1,
        "h": 1,
    }
    with dg.DagsterInstance.get() as inst:
        assert inst.get_dynamic_partitions(REGIONS.name) == ["corner"]
    assert main([*base, "region", "list"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)["regions"]] == ["corner"]
    assert main([*base, "region", "add", "far", "--x0", "5", "--y0", "0", "--w", "1", "--h", "1"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("isonyc region add: error: region 'far': quadrants (5, 0) are outside")
        and err.count("\n") == 1
    )
    assert main([*base, "region", "rm", "corner"]) == 0
    with dg.DagsterInstance.get() as inst:
        assert inst.get_dynamic_partitions(REGIONS.name) == []


# --- Dagster ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_scene_3d_lifts_a_region_and_the_sensor_requests_it_again_when_a_quadrant_changes(
    tmp_path: Path,
) -> None:
    from plyfile import PlyData

    cfg = _lift_config(tmp_path)
    defs = build_definitions(cfg)
    project = Project(cfg)
    settings = lift_settings(cfg)
    with home_instance(tmp_path / "home") as instance:
        region = add_region(project, "corner", 0, 0, 1, 1, instance=instance)
        assert instance.get_dynamic_partitions(REGIONS.name) == ["corner"]
        # Registered in the file only (as when no instance was reachable): the sensor adds the partition.
        project_registry(project).add("across", 1, 0, 1, 2)

        result = plan_scenes(project, instance, settings)
        assert result.run_requests == []
        assert "waiting for generation: across, corner" in (result.skip_reason.skip_message or "")
        assert [r.partition_keys for r in result.dynamic_partitions_requests] == [["across"]]
        instance.add_dynamic_partitions(REGIONS.name, ["across"])
        # Lifting before the quadrants are generated fails at once with the reason, and leaves no files behind.
        early = defs.resolve_job_def("scene_3d_job").execute_in_process(
            instance=instance, partition_key="corner", raise_on_error=False
        )
        assert not early.success
        failure = next(e for e in early.all_events if e.is_step_failure).step_failure_data.user_failure_data
        assert failure.description.startswith("region 'corner': ") and "generation" in failure.description
        assert list((Path(cfg.output_dir) / "scenes").iterdir()) == []

        for job, kw in (
            ("geodata_job", {}),
            ("render_job", {"tags": RANGE_2x2}),
            ("blocks_job", {"partition_key": "0|0"}),
            ("generation_job", {"tags": RANGE_2x2}),
        ):
            assert defs.resolve_job_def(job).execute_in_process(instance=instance, **kw).success, job

        # Both regions are generated now and were never lifted: both are requested, each once per inputs.
        first = plan_scenes(project, instance, settings)
        assert sorted(r.partition_key for r in first.run_requests) == ["across", "corner"]

        assert (
            defs.resolve_job_def("scene_3d_job")
            .execute_in_process(instance=instance, partition_key="corner")
            .success
        )
        scene_dir = Path(cfg.output_dir) / "scenes" / "corner"
        ply = PlyData.read(str(scene_dir / "gf.ply"))
        names = [p.name for p in ply["vertex"].properties]
        assert names[:3] == ["x", "y", "z"] and {"f_dc_0", "opacity", "scale_2", "rot_3"} <= set(names)
        md = (
            instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("scene_3d"), asset_partitions=["corner"]), limit=1
            )
            .records[0]
            .asset_materialization.metadata
        )
        count = ply["vertex"].count
        assert md["splats"].value == count
        assert 0 < count <= 64 * 64  # at most one splat per pixel of the 64 px working image
        assert md["psnr_input_db"].value > 15
        assert {"total"} <= set(md["stage_seconds"].value)
        assert Path(md["rrd"].value).is_file() and Path(md["video"].value).is_file()
        assert md["viewer_page"].value.startswith("splat.html?scene=corner")
        assert (Path(cfg.output_dir) / "splat.html").is_file()
        assert (Path(cfg.output_dir) / "lib" / "spark" / "spark.module.js").is_file()
        index = json.loads((Path(cfg.output_dir) / "scenes" / "index.json").read_text())
        assert [(s["name"], s["splats"], s["x0"], s["w"]) for s in index["scenes"]] == [
            ("corner", count, 0, 1)
        ]
        assert not [
            p for p in (Path(cfg.output_dir) / "scenes").iterdir() if p.name.endswith((".tmp", ".old"))
        ]

        # Corner is up to date: only the never-lifted region is requested.
        assert [r.partition_key for r in plan_scenes(project, instance, settings).run_requests] == ["across"]

        def new_version(x: int, y: int) -> None:
            tile = png_bytes(np.full((512, 512, 3), 120, np.uint8))
            project.store.put_tile(layers.GENERATION, x, y, tile, {"step": "test-edit"})

        # A new generation version of (1, 1), outside corner: corner stays current.
        new_version(1, 1)
        assert [r.partition_key for r in plan_scenes(project, instance, settings).run_requests] == ["across"]
        # A new generation version of (0, 0): corner is requested again, under a new run key.
        new_version(0, 0)
        again = plan_scenes(project, instance, settings)
        assert sorted(r.partition_key for r in again.run_requests) == ["across", region.name]
        old_key = next(r.run_key for r in first.run_requests if r.partition_key == "corner")
        assert next(r.run_key for r in again.run_requests if r.partition_key == "corner") != old_key
        # The same through the sensor as Dagster evaluates it (resources bound from the definitions).
        sensor = defs.resolve_sensor_def("scene_scheduler")
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        with dg.build_sensor_context(
            instance=instance, resources={"project": defs.resources["project"]}
        ) as ctx:
            res = sensor(ctx)
        assert sorted(r.partition_key for r in res.run_requests) == ["across", "corner"]

        # Removing the region removes it from the registry and its partition; its scene files stay.
        remove_region(project, "corner", instance=instance)
        assert instance.get_dynamic_partitions(REGIONS.name) == ["across"]
        assert [r.name for r in project_registry(project).list()] == ["across"]
        assert (scene_dir / "gf.ply").is_file()
