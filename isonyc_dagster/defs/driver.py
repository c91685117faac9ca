"""Run the wave scheduler to completion in this process (the demo and the tests use it).

It evaluates exactly the sensor's logic (``sensors.plan_waves``) against a real Dagster instance and executes
each requested run in process with the code location's own job, so every run, materialization, check and lineage
edge lands in the instance that ``dagster dev`` shows afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from isonyc_dagster.defs.runs import process_tags
from isonyc_dagster.defs.sensors import ASSET_TAG, RANGE_END, RANGE_START, STEP_ASSETS, plan_waves
from isonyc_dagster.project import Project


@dataclass
class DriveReport:
    runs: int = 0
    failed: int = 0
    seconds: float = 0.0
    log: list[dict] = field(default_factory=list)  # one entry per run, in execution order
    failed_labels: list[str] = field(default_factory=list)
    complete: bool = False
    summary: str = ""


def _label(req: dg.RunRequest) -> str:
    tags = req.tags or {}
    if RANGE_START in tags:
        return f"{tags.get(ASSET_TAG)}[{tags[RANGE_START]}…{tags[RANGE_END]}]"
    if req.partition_key:
        return f"{tags.get(ASSET_TAG)}[{req.partition_key}]"
    return str(req.job_name)


def _feeds_model(req: dg.RunRequest) -> bool:
    return (req.tags or {}).get(ASSET_TAG) in STEP_ASSETS.values()


def drive(
    defs: dg.Definitions,
    project: Project,
    instance: dg.DagsterInstance,
    *,
    echo: Callable[[str], None] | None = None,
    max_rounds: int = 10_000,
    wait_s: float = 2.0,
) -> DriveReport:
    """Request and execute runs until the scheduler has nothing left to do."""
    report = DriveReport()
    t0 = time.perf_counter()
    idle_rounds = 0
    for _ in range(max_rounds):
        plan = plan_waves(project, instance)
        requests, summary = plan.requests, plan.summary
        report.summary = summary
        if not requests:
            # Nothing ready: finished, given up, or waiting on failed keys' cool-down or other processes' runs.
            if plan.gave_up or idle_rounds * wait_s > 300:
                break
            if plan.finished:
                report.complete = True
                break
            if echo and idle_rounds % 15 == 0:
                echo(f"  waiting: {summary}")
            idle_rounds += 1
            time.sleep(wait_s)
            continue
        idle_rounds = 0
        for i, req in enumerate(requests):
            label = _label(req)
            t = time.perf_counter()
            job = defs.resolve_job_def(req.job_name)
            result = job.execute_in_process(
                instance=instance,
                partition_key=req.partition_key,
                # The process executing the run: if it dies, the next evaluation marks the run failed.
                tags=dict(req.tags or {}) | process_tags(),
                raise_on_error=False,
                # Dagster's per-event DEBUG lines would drown the progress lines; failures still print.
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            dt = time.perf_counter() - t
            report.runs += 1
            ok = result.success
            report.failed += 0 if ok else 1
            if not ok:
                report.failed_labels.append(label)
            report.log.append(
                {
                    "run_id": result.run_id,
                    "label": label,
                    "tags": dict(req.tags or {}),
                    "success": ok,
                    "seconds": dt,
                    "finished": time.time(),
                }
            )
            if echo:
                echo(f"  {'ok ' if ok else 'FAILED'} {label:<44} {dt:6.1f}s   ({summary})")
            # Runs execute one at a time here: after a step run, plan again before a run that calls no model
            # (water masks, publishing), so the next wave's steps go first and the model endpoints do not wait.
            if _feeds_model(req) and i + 1 < len(requests) and not _feeds_model(requests[i + 1]):
                break
    report.seconds = time.perf_counter() - t0
    return report
