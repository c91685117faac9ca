"""The wave scheduler keeps several model endpoints busy: steps of a run are in flight together, up to the
backend's concurrency, and the driver plans the next wave before running anything that calls no model.

Real Dagster runs (``defs.driver.drive``) on a 6×6-quadrant area, the ``modal`` backend over two fake GPU
endpoints on 127.0.0.1 (``tests/fake_gpu.py``). Nothing here is timed: concurrency is read from the
endpoints' own counts, the order from the driver's run log. ``benchmarks/bench_utilisation.py`` measures.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.defs.driver import drive
from isonyc_dagster.defs.resources import GeneratorResource
from isonyc_dagster.defs.sensors import STEP_ASSETS
from isonyc_dagster.project import Project
from tests.dagster_helpers import project_config
from tests.fake_gpu import FakeGpuEndpoint

pytestmark = pytest.mark.slow


def test_steps_keep_every_endpoint_fed_and_waves_follow_each_other(tmp_path: Path) -> None:
    cfg = project_config(tmp_path, 0, 0, 5, 5, backend="modal")
    project = Project(cfg)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with (
        FakeGpuEndpoint(latency_s=0.4, jitter_s=0.1, capacity=2, seed=1) as e1,
        FakeGpuEndpoint(latency_s=0.4, jitter_s=0.1, capacity=2, seed=2) as e2,
    ):
        settings = {
            "url": [f"{e1.url}/edit_b64", f"{e2.url}/edit_b64"],
            "endpoint_concurrency": 2,
            "max_concurrency": 4,
            "timeout_s": 30,
        }
        defs = build_definitions(
            cfg, generator=GeneratorResource(backend="modal", settings_json=json.dumps(settings))
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            report = drive(defs, project, instance, wait_s=0.05)
    assert report.complete and report.failed == 0, report.summary
    steps = len(project.plan.steps)
    assert len(e1.busy) + len(e2.busy) == steps  # one model call per step, no retry
    # Both endpoints served, each with its second request queued behind the first at some point: the
    # 4 steps of a wave were in flight together (one at a time before, whatever the endpoints).
    assert e1.max_in_flight == 2 and e2.max_in_flight == 2
    assert e1.rejected == e2.rejected == 0  # never more than endpoint_concurrency per endpoint

    # Step runs follow each other: no water-mask or publishing run between the first and the last one.
    labels = [entry["label"] for entry in report.log]
    is_step = [label.split("[")[0] in STEP_ASSETS.values() for label in labels]
    first, last = is_step.index(True), len(is_step) - 1 - is_step[::-1].index(True)
    assert all(is_step[first : last + 1]), labels
