"""The Dagster code location: loads and validates, partition mappings encode the plan, context is enforced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.defs.partitions import key2, parse_key2
from isonyc_dagster.defs.sensors import STEP_ASSETS
from isonyc_dagster.generate.plan import StepKind
from isonyc_dagster.project import Project
from tests.dagster_helpers import ASSET_NAMES, full_range_tags, project_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def instance(tmp_path: Path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as inst:
        yield inst


def test_code_location_validates(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "DAGSTER_DISABLE_TELEMETRY": "1"}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All code locations passed validation" in out.stdout + out.stderr


def test_assets_partitions_and_jobs(tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 8, 5)
    defs = build_definitions(cfg)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == ASSET_NAMES
    qp = graph.get(dg.AssetKey("render")).partitions_def
    assert isinstance(qp, dg.StaticPartitionsDefinition)
    assert len(qp.get_partition_keys()) == 9 * 6
    cp = graph.get(dg.AssetKey("blocks")).partitions_def
    assert {parse_key2(k) for k in cp.get_partition_keys()} == {
        (bx, by) for bx in range(3) for by in range(2)
    }
    for name in ("render_job", "blocks_job", "corners_job", "generation_job", "export_job"):
        assert defs.resolve_job_def(name) is not None


def _upstream(graph, child: str, parent: str, key: str) -> set[tuple[int, int]]:
    node = graph.get(dg.AssetKey(child))
    mapping = node.partition_mappings.get(dg.AssetKey(parent))
    up_def = graph.get(dg.AssetKey(parent)).partitions_def
    subset = node.partitions_def.subset_with_partition_keys([key])
    res = mapping.get_upstream_mapped_partitions_result_for_partitions(subset, node.partitions_def, up_def)
    return {parse_key2(k) for k in res.partitions_subset.get_partition_keys()}


def test_partition_mappings_match_the_plan(tmp_path: Path) -> None:
    """Every step asset's upstream partitions are exactly the steps the plan says it uses as context."""
    cfg = project_config(tmp_path, 0, 0, 11, 8)
    defs = build_definitions(cfg)
    graph = defs.resolve_asset_graph()
    plan = Project(cfg).plan
    for step in plan.steps:
        child = STEP_ASSETS[step.kind]
        want: dict[str, set[tuple[int, int]]] = {}
        for dep in plan.dependencies(step):
            want.setdefault(STEP_ASSETS[dep.kind], set()).add(dep.cell)
        for kind in StepKind:
            parent = STEP_ASSETS[kind]
            if dg.AssetKey(parent) not in graph.get(dg.AssetKey(child)).parent_keys:
                assert parent not in want
                continue
            got = _upstream(graph, child, parent, key2(*step.cell))
            assert got == want.get(parent, set()), (step.key, parent)
        # generation[x, y] depends on exactly the one step that produced it
        for x, y in step.quadrants:
            producers = {
                name: _upstream(graph, "generation", name, key2(x, y)) for name in STEP_ASSETS.values()
            }
            assert {n: c for n, c in producers.items() if c} == {child: {step.cell}}


def test_step_without_context_fails_fast_and_generates_nothing(tmp_path: Path, instance) -> None:
    cfg = project_config(tmp_path, 0, 0, 5, 5)
    defs = build_definitions(cfg)
    project = Project(cfg)
    render = defs.resolve_job_def("render_job").execute_in_process(
        instance=instance, tags=full_range_tags(project.order.quadrants)
    )
    assert render.success
    # What a user opens in the UI for one quadrant of that range run: its own preview and provenance, on the
    # partition's latest materialization (which also carries its own content hash as data version).
    mat = (
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("render"), asset_partitions=["2|3"]), limit=1
        )
        .records[0]
        .asset_materialization
    )
    md = mat.metadata
    assert md["preview"].value.startswith("![render 2|3](data:image/png;base64,")
    assert md["quadrant"].value == "2|3" and len(md["sha256"].value) == 64
    assert mat.tags["dagster/data_version"] == md["sha256"].value
    result = defs.resolve_job_def("bridges_v_job").execute_in_process(
        instance=instance, partition_key="0|0", raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = str(failure.step_failure_data.error)
    assert "context not ready, nothing was generated" in text and "(1, 0)" in text
    assert "Run first: blocks[0|0], blocks[1|0]" in text  # the partitions to run first, as Dagster keys
    step = project.plan.step(StepKind.BRIDGE_V, (0, 0))
    assert all(project.store.active("generation", x, y) is None for x, y in step.quadrants)
    assert project.store.list_active("generation") == []


def test_scheduler_caps_runs_in_flight(tmp_path: Path, instance, monkeypatch: pytest.MonkeyPatch) -> None:
    from isonyc_dagster.defs.sensors import MAX_PER_RUN, wave_run_requests

    cfg = project_config(tmp_path, 0, 0, 20, 11)  # 252 quadrants: 2 render runs of at most 128
    defs = build_definitions(cfg)
    project = Project(cfg)
    first, summary = wave_run_requests(project, instance)
    assert [r.job_name for r in first] == ["geodata_job"] and "geodata" in summary
    assert defs.resolve_job_def("geodata_job").execute_in_process(instance=instance).success
    monkeypatch.setitem(MAX_PER_RUN, "render", 128)
    monkeypatch.setenv("ISONYC_MAX_RUNS_IN_FLIGHT", "1")
    requests, summary = wave_run_requests(project, instance)
    assert [r.job_name for r in requests] == ["render_job"]
    assert "1 more run(s) wait for a free slot" in summary
    monkeypatch.setenv("ISONYC_MAX_RUNS_IN_FLIGHT", "4")
    requests, _ = wave_run_requests(project, instance)
    assert [r.job_name for r in requests] == ["render_job", "render_job"]
    # Two ranges of the key order: disjoint, together every quadrant, at most MAX_PER_RUN each.
    order = project.order.quadrants
    ranges = [
        order.between(
            parse_key2(r.tags["dagster/asset_partition_range_start"]),
            parse_key2(r.tags["dagster/asset_partition_range_end"]),
        )
        for r in requests
    ]
    assert [len(r) for r in ranges] == [128, 252 - 128]
    assert set(ranges[0]) | set(ranges[1]) == set(project.quadrants.keys)


def test_partitions_are_exactly_what_can_be_materialized(tmp_path: Path) -> None:
    """A diagonal island: no partition outside the bounds, no step partition without a step (issue 12)."""
    from isonyc_dagster.geo.config import MapConfig
    from isonyc_dagster.geo.geometry import MapGeometry

    g = MapGeometry(MapConfig())
    px = [0.5 * g.q, 12.5 * g.q, 12.5 * g.q]
    py = [0.5 * g.q, 0.5 * g.q, 10.5 * g.q]
    lng, lat = g.pixel_to_lnglat(px, py)
    ring = [[float(a), float(b)] for a, b in zip(lng, lat, strict=True)]
    (tmp_path / "tri.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [[*ring, ring[0]]]}))
    cfg = project_config(tmp_path, 0, 0, 1, 1).model_copy(update={"bounds": str(tmp_path / "tri.geojson")})
    project = Project(cfg)
    x0, y0, x1, y1 = project.quadrants.bbox
    assert len(project.quadrants) < 0.7 * (x1 - x0 + 1) * (y1 - y0 + 1)  # the bounding box is mostly outside
    graph = build_definitions(cfg).resolve_asset_graph()
    for name in ("render", "generation", "water_mask"):
        keys = graph.get(dg.AssetKey(name)).partitions_def.get_partition_keys()
        assert sorted(parse_key2(k) for k in keys) == sorted(project.quadrants.keys)
    for kind, name in STEP_ASSETS.items():
        keys = graph.get(dg.AssetKey(name)).partitions_def.get_partition_keys()
        assert sorted(parse_key2(k) for k in keys) == sorted(
            s.cell for s in project.plan.steps if s.kind is kind
        )


def test_a_fill_run_does_what_is_ready_skips_the_rest_and_fails_when_nothing_is(
    tmp_path: Path, instance
) -> None:
    from isonyc_dagster.defs.assets._common import FILL_TAG

    cfg = project_config(tmp_path, 0, 0, 5, 5)
    defs = build_definitions(cfg)
    project = Project(cfg)
    order = project.order
    assert defs.resolve_job_def("geodata_job").execute_in_process(instance=instance).success
    first_cell = order.quadrants.keys[:9]  # the quadrants of the first lattice cell in the order
    tags = {"dagster/asset_partition_range_start": key2(*first_cell[0])}
    tags["dagster/asset_partition_range_end"] = key2(*first_cell[-1])
    assert defs.resolve_job_def("render_job").execute_in_process(instance=instance, tags=tags).success

    def blocks() -> list:
        return list(instance.fetch_materializations(dg.AssetKey("blocks"), limit=100).records)

    fill = full_range_tags(order.steps[StepKind.BLOCK]) | {FILL_TAG: "missing"}
    run = defs.resolve_job_def("blocks_job").execute_in_process(instance=instance, tags=fill)
    assert run.success
    ready = [
        s.cell for s in project.plan.steps if s.kind is StepKind.BLOCK and set(s.quadrants) <= set(first_cell)
    ]
    assert len(ready) == 1 and len(order.steps[StepKind.BLOCK]) == 4
    # One materialization per block done (none for the range as a whole), none for the three without renders.
    assert [parse_key2(r.partition_key) for r in blocks()] == ready
    versions = len(
        project.store.versions("generation", *project.plan.get(StepKind.BLOCK, ready[0]).quadrants[0])
    )
    again = defs.resolve_job_def("blocks_job").execute_in_process(
        instance=instance, tags=fill, raise_on_error=False
    )
    assert not again.success  # the done block is skipped, the others are still not ready: nothing to do
    text = str(
        next(e for e in again.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error
    )
    assert "nothing in this range was ready" in text and "render" in text
    assert len(blocks()) == 1
    assert (
        len(project.store.versions("generation", *project.plan.get(StepKind.BLOCK, ready[0]).quadrants[0]))
        == versions
    )
