"""The scheduler as people operate it, through a real Dagster instance: names that match Dagster's keys, expected
failures that say what to run first, a nightly backfill schedule and a sensor that is on by default, the "regenerate
by hand, then let the scheduler run" scenario ticked through the real sensor, and steps that start as soon as their
own context is done (not when their whole wave is), against a fake GPU endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from isonyc_dagster import layers
from isonyc_dagster.backends.pixelart import PixelArtBackend, StyleParams
from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.defs.parallel import drive_parallel
from isonyc_dagster.defs.partitions import parse_key2
from isonyc_dagster.defs.resources import GeneratorResource, ProjectResource
from isonyc_dagster.defs.sensors import ASSET_TAG, BACKFILL_JOB, BACKFILL_SCHEDULE, SCHEDULER_TAG, plan_waves
from isonyc_dagster.generate.plan import StepKind, parse_step_ref, step_ref
from isonyc_dagster.generate.repair import parse_step_key, regenerate, stale_steps
from isonyc_dagster.generate.rules import step_settings
from isonyc_dagster.generate.step import step_seed
from isonyc_dagster.images import decode_rgb
from isonyc_dagster.project import Project
from tests.dagster_helpers import home_instance, project_config
from tests.fake_apis import Recorded, Reply
from tests.fake_gpu import FakeGpuEndpoint

pytestmark = pytest.mark.slow
RANGE = {"dagster/asset_partition_range_start": "0|0", "dagster/asset_partition_range_end": "2|1"}


def _latest_md(instance: dg.DagsterInstance, asset: str, key: str) -> dict:
    rec = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
    ).records[0]
    return rec.asset_materialization.metadata


def test_provenance_says_asset_and_partition_keys_and_missing_context_says_what_to_run_first(
    tmp_path: Path,
) -> None:
    cfg = project_config(tmp_path, 0, 0, 2, 1)  # blocks[0|0] (x 0-1) and bridges_v[0|0] (x 2)
    defs = build_definitions(cfg)
    project = Project(cfg)
    store = project.store
    with home_instance(tmp_path / "home") as instance:
        for job, kw in (("geodata_job", {}), ("render_job", {"tags": RANGE})):
            assert defs.resolve_job_def(job).execute_in_process(instance=instance, **kw).success

        # The bridge before its block: an expected failure, one line naming the partitions to run first, no trace.
        tags = {SCHEDULER_TAG: "wave", ASSET_TAG: "bridges_v"}  # as the scheduler would have launched it
        res = defs.resolve_job_def("bridges_v_job").execute_in_process(
            instance=instance, partition_key="0|0", raise_on_error=False, tags=tags
        )
        assert not res.success
        (ev,) = res.get_step_failure_events()
        data = ev.step_failure_data
        assert data.user_failure_data is not None
        assert data.user_failure_data.metadata["run_first"].value == ["blocks[0|0]"]
        assert data.user_failure_data.description.endswith("Run first: blocks[0|0]")
        assert "Traceback" not in data.user_failure_data.description
        assert data.error is None or "Traceback" not in data.error.to_string()
        assert store.active(layers.GENERATION, 2, 0) is None  # nothing was generated
        # The scheduler's tick counts the failed work (and retries it after a cooldown).
        summary = plan_waves(project, instance).summary
        assert "1 failed partition(s) wait for their retry: bridges_v[0|0]" in summary, summary

        for job in ("blocks_job", "bridges_v_job"):
            assert (
                defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key="0|0").success
            )
        assert (
            defs.resolve_job_def("generation_job").execute_in_process(instance=instance, tags=RANGE).success
        )

        # Stored provenance, the step's and the quadrant's metadata: Dagster's asset and partition keys.
        prov = store.active(layers.GENERATION, 2, 0).provenance
        assert prov["step"] == "bridges_v[0|0]"
        assert set(prov["context_sha256"]) == {"1|0", "1|1"}
        step_md = _latest_md(instance, "bridges_v", "0|0")
        assert step_md["step"].value == "bridges_v[0|0]"
        assert step_md["quadrants"].value == ["2|0", "2|1"]
        assert sorted(step_md["context"].value) == ["1|0", "1|1"]
        md = _latest_md(instance, "generation", "2|0")
        assert md["step"].value == "bridges_v[0|0]" and "context_partitions" not in md  # "context" says it
        assert md["context"].value == ["1|0", "1|1"]
        assert _latest_md(instance, "generation", "0|0")["step"].value == "blocks[0|0]"

        # Stores written before name steps the old way (``bridge_v:0,0``, context keys ``x,y``): still read.
        old = {
            **prov,
            "step": "bridge_v:0,0",
            "context_sha256": {k.replace("|", ","): v for k, v in prov["context_sha256"].items()},
        }
        for x, y in ((2, 0), (2, 1)):
            store.put_tile(layers.GENERATION, x, y, store.get_tile(layers.GENERATION, x, y), old)
        assert stale_steps(store, project.plan) == []  # the old context keys still match the block's pixels
        assert (
            defs.resolve_job_def("generation_job").execute_in_process(instance=instance, tags=RANGE).success
        )
        assert _latest_md(instance, "generation", "2|0")["step"].value == "bridges_v[0|0]"
        block = project.plan.step(StepKind.BLOCK, (0, 0))
        store.put_tile(
            layers.GENERATION, 1, 0, store.get_tile(layers.GENERATION, 0, 0), {"step": "blocks[0|0]"}
        )
        assert [s.ref for s in stale_steps(store, project.plan)] == [
            "bridges_v[0|0]"
        ]  # old keys, real change
        for text in ("bridges_v[0|0]", "bridge_v:0,0", "bridges_v:0|0"):
            assert parse_step_key(project.plan, text).ref == "bridges_v[0|0]"
        assert step_ref("bridge_v:0,0") == "bridges_v[0|0]" and step_ref("repair[1|1]") == "repair[1|1]"
        assert parse_step_ref("block:-3,4") == (StepKind.BLOCK, (-3, 4)) and block.ref == "blocks[0|0]"


def _tick(defs: dg.Definitions, cfg, instance: dg.DagsterInstance) -> tuple[list[str], str]:
    """One evaluation of the real ``wave_scheduler`` sensor, then its runs executed; (run labels, summary)."""
    sensor = defs.get_sensor_def("wave_scheduler")
    resources = {"project": ProjectResource.for_config(cfg)}
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        result = sensor(ctx)
    labels = []
    for req in result.run_requests or []:
        job = defs.resolve_job_def(req.job_name)
        assert job.execute_in_process(
            instance=instance, partition_key=req.partition_key, tags=req.tags, raise_on_error=False
        ).success, req
        labels.append(f"{req.tags.get(ASSET_TAG)}[{req.partition_key or 'range'}]")
    skip = result.skip_reason.skip_message if result.skip_reason else ""
    return labels, skip or ""


def test_the_nightly_schedule_fills_the_bounds_and_the_sensor_regenerates_exactly_the_stale_steps(
    tmp_path: Path,
) -> None:
    cfg = project_config(tmp_path, 0, 0, 2, 2)  # one lattice cell: a block, two bridges, a corner
    defs = build_definitions(cfg)
    project = Project(cfg)
    store = project.store
    sensor = defs.get_sensor_def("wave_scheduler")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING  # on by default in `dagster dev`
    off = build_definitions(cfg.model_copy(update={"scheduler_enabled": False}))
    assert off.get_sensor_def("wave_scheduler").default_status == dg.DefaultSensorStatus.STOPPED
    schedule = defs.get_schedule_def(BACKFILL_SCHEDULE)
    assert schedule.cron_schedule == cfg.schedule_cron == "0 2 * * *"
    with pytest.raises(Exception, match="wave_backfill_schedule"):
        build_definitions(cfg.model_copy(update={"schedule_cron": ""})).get_schedule_def(BACKFILL_SCHEDULE)

    with home_instance(tmp_path / "home") as instance:
        # The schedule's tick plans like the sensor; its run drives the plan over the bounds to the end.
        def tick() -> dg.RunRequest | dg.SkipReason:
            resources = {"project": ProjectResource.for_config(cfg)}
            with dg.build_schedule_context(instance=instance, resources=resources) as ctx:
                return schedule(ctx)

        req = tick()
        assert isinstance(req, dg.RunRequest) and "geodata not prepared" in req.tags["isonyc/plan"]
        run = defs.resolve_job_def(BACKFILL_JOB).execute_in_process(instance=instance, tags=req.tags)
        assert run.success
        assert all(store.active(layers.GENERATION, *q) is not None for q in project.quadrants.keys)
        steps = instance.get_runs(dg.RunsFilter(tags={ASSET_TAG: "corners"}))
        assert steps and all(r.status == dg.DagsterRunStatus.SUCCESS for r in steps)
        assert isinstance(tick(), dg.SkipReason)  # finished: the next tick has nothing to do

        # A person regenerates the block with another look.
        block = project.plan.step(StepKind.BLOCK, (0, 0))
        backend = PixelArtBackend(cfg.map, params=StyleParams.parse({"seed": 7}, source="test"))
        mi = project.step_rules.resolve(block).with_backend_default(backend)
        by_hand = regenerate(
            store, project.step_inputs(), block, backend, step_settings(mi, generator_key="hand"), seed=7
        )
        manual = {(v.x, v.y): v.sha256 for v in by_hand.versions}
        before = {q: store.active(layers.GENERATION, *q).sha256 for q in project.quadrants.keys}

        # on_stale = flag: the tick counts the stale steps, regenerates none, publishes the changed block again.
        summary = plan_waves(project, instance).summary  # what the sensor's tick logs
        assert "3 stale step(s) flagged (on_stale = flag, nothing regenerated)" in summary, summary
        assert "publishing 4 changed quadrant(s) again" in summary
        assert _tick(defs, cfg, instance)[0] == ["generation[range]"]
        assert {q: store.active(layers.GENERATION, *q).sha256 for q in before} == before

        # on_stale = regenerate: bridges (wave 2), then the corner (wave 3); the person's block is never touched.
        cfg2 = cfg.model_copy(update={"on_stale": "regenerate"})
        defs2 = build_definitions(cfg2)
        summary = plan_waves(Project(cfg2), instance).summary
        assert "3 stale step(s), regenerating wave 2: bridges_h[0|0], bridges_v[0|0], corners[0|0]" in summary
        ticks = []
        for _ in range(10):
            labels, skipped = _tick(defs2, cfg2, instance)
            ticks.append(labels)
            if not labels:
                break
        assert "map up to date" in skipped, skipped
        steps = [sorted(lb for lb in t if lb.split("[")[0] in layers.STEP_ASSETS.values()) for t in ticks]
        assert [t for t in steps if t] == [["bridges_h[0|0]", "bridges_v[0|0]"], ["corners[0|0]"]], ticks
        assert "generation[range]" in ticks[1] and ticks[2] == ["export[range]"], (
            ticks
        )  # republished, refreshed
        assert {q: store.active(layers.GENERATION, *q).sha256 for q in manual} == manual
        assert stale_steps(store, project.plan) == []
        # Every other quadrant was generated again from the person's block as context.
        for q in project.quadrants.keys - manual.keys():
            used = store.active(layers.GENERATION, *q).provenance["context_sha256"]
            assert (
                {k: v for k, v in used.items() if parse_key2(k) in manual}
                == {f"{x}|{y}": sha for (x, y), sha in manual.items() if f"{x}|{y}" in used}
                != {}
            ), q
        # Republished: generation's data version of every quadrant is its active pixels.
        for q in project.quadrants.keys:
            md = _latest_md(instance, "generation", f"{q[0]}|{q[1]}")
            assert md["sha256"].value == store.active(layers.GENERATION, *q).sha256, q
        # The map shows the new pixels: the full-resolution tile of the regenerated corner quadrant (2, 2).
        files = Path(cfg.output_dir) / f"{cfg.map.name}_files"
        top = max((d for d in files.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
        shown = decode_rgb((top / "0_0.png").read_bytes())[128:384, 128:384]
        assert np.array_equal(shown, decode_rgb(store.get_blob(manual[(0, 0)]))[128:384, 128:384])


class HoldingEndpoint(FakeGpuEndpoint):
    """A fake GPU that holds the request with seed ``held`` until a request with seed ``awaited`` arrives (or
    ``hold_s`` pass), and logs when each seed arrived and was answered."""

    def __init__(self, held: int, awaited: int, hold_s: float = 120.0, **kw) -> None:
        super().__init__(**kw)
        self.held, self.awaited, self.hold_s = held, awaited, hold_s
        self.arrived: dict[int, float] = {}
        self.answered: dict[int, float] = {}
        self._go = threading.Event()

    def dispatch(self, rec: Recorded) -> Reply:
        seed = int(rec.json()["seed"])
        self.arrived.setdefault(seed, time.monotonic())
        if seed == self.awaited:
            self._go.set()
        if seed == self.held:
            self._go.wait(self.hold_s)
        reply = super().dispatch(rec)
        self.answered[seed] = time.monotonic()
        return reply


def test_a_step_starts_as_soon_as_its_own_context_is_done_not_when_its_wave_is(tmp_path: Path) -> None:
    # blocks[0|0] (x 0-1) and blocks[1|0] (x 3-4); bridges_v[1|0] (x 5) has only blocks[1|0] as context.
    cfg = project_config(tmp_path, 0, 0, 5, 1, backend="modal")
    project = Project(cfg)
    block0 = project.plan.step(StepKind.BLOCK, (0, 0))
    bridge1 = project.plan.step(StepKind.BRIDGE_V, (1, 0))
    assert [d.ref for d in project.plan.dependencies(bridge1)] == ["blocks[1|0]"]
    name = cfg.map.name
    with HoldingEndpoint(
        held=step_seed(name, block0, 0),
        awaited=step_seed(name, bridge1, 0),
        latency_s=0.05,
        jitter_s=0.0,
        capacity=8,
    ) as gpu:
        settings = {"url": f"{gpu.url}/edit_b64", "endpoint_concurrency": 4, "timeout_s": 60}
        defs = build_definitions(
            cfg, generator=GeneratorResource(backend="modal", settings_json=json.dumps(settings))
        )
        with home_instance(tmp_path / "home") as instance:
            report = drive_parallel(defs, project, instance, runs_in_flight=4, wait_s=0.2)
        assert report.complete and report.failed == 0, report.summary
        b0, b1 = gpu.held, gpu.awaited
        # The bridge was sent to the model while block 0, of the wave before it, was still generating.
        assert gpu.arrived[b1] < gpu.answered[b0], "the bridge waited for the whole block wave"
        assert gpu.answered[b0] - gpu.arrived[b0] < gpu.hold_s  # released by the bridge, not by the timeout
