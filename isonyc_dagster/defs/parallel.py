"""Run the wave scheduler with several runs in flight, each in its own process, as a Dagster daemon does.

``defs.driver.drive`` executes one run at a time, so each wave's run ends with idle model endpoints while its last
calls finish. Here every step run that ``sensors.plan_waves`` requests starts at once in a forked worker process
(up to ``runs_in_flight``; runs that call no model execute in this process meanwhile), and the scheduler plans again
every ``wait_s`` while they work: step runs log each step as it
is committed (``PartitionRun.emit``), so a step starts as soon as *its own* context is done, not when its whole wave
is, and the endpoints stay fed across waves. Processes, not threads: Dagster's SQLite storage deadlocks when one
process executes runs from several threads.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

import dagster as dg

from isonyc_dagster.defs.driver import DriveReport, _feeds_model, _label
from isonyc_dagster.defs.runs import STOP, one_planned_event_per_run, process_tags, return_freed_memory
from isonyc_dagster.defs.sensors import plan_waves
from isonyc_dagster.project import Project

#: Tag of a run started by ``drive_parallel`` (the driver waits for the run to exist before it plans again).
REQUEST_TAG = "isonyc/driver_request"
#: How long a new worker may take to create its run before the driver plans again regardless.
CREATE_TIMEOUT_S = 30.0


@dataclass
class _Worker:
    proc: BaseProcess
    req: dg.RunRequest
    label: str
    token: str
    started: float
    run_id: str | None = None


Jobs = dg.Definitions | dg.RepositoryDefinition


def _job(defs: Jobs, name: str) -> dg.JobDefinition:
    """A job of the code location (``Definitions``, or the repository a run's op sees)."""
    if isinstance(defs, dg.RepositoryDefinition):
        return defs.get_job(name)
    return defs.resolve_job_def(name)


def _work(defs: Jobs, req: dg.RunRequest, ref: object, tags: dict[str, str]) -> None:
    """The worker process: its own instance (a fresh connection), the run, exit 0 on success."""
    try:
        with dg.DagsterInstance.from_ref(ref) as instance:  # type: ignore[arg-type]
            result = _job(defs, str(req.job_name)).execute_in_process(
                instance=instance,
                partition_key=req.partition_key,
                tags=tags
                | process_tags(),  # this worker's pid: if it dies, the next plan marks the run failed
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
        os._exit(0 if result.success else 1)
    except BaseException:  # noqa: BLE001 - a worker must exit, never return into the parent's code
        traceback.print_exc()
        os._exit(2)


def _wait_created(instance: dg.DagsterInstance, w: _Worker) -> str | None:
    """The run id of the worker's run once it exists (so the next plan counts it in flight)."""
    deadline = time.monotonic() + CREATE_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = instance.get_runs(dg.RunsFilter(tags={REQUEST_TAG: w.token}), limit=1)
        if runs:
            return runs[0].run_id
        if not w.proc.is_alive():
            return None
        time.sleep(0.1)
    return None


def drive_parallel(
    defs: Jobs,
    project: Project,
    instance: dg.DagsterInstance,
    *,
    runs_in_flight: int = 8,
    echo: Callable[[str], None] | None = None,
    wait_s: float = 0.25,
    max_idle_s: float = 300.0,
) -> DriveReport:
    """Request and execute runs, ``runs_in_flight`` at a time, until the scheduler has nothing left to do.

    Needs a persistent instance (``DagsterInstance.from_config``): the workers open it again from its ref.
    """
    one_planned_event_per_run()
    return_freed_memory()
    ref = instance.get_ref()
    ctx = mp.get_context("fork")
    report = DriveReport()
    workers: list[_Worker] = []
    t0 = time.perf_counter()
    idle_since: float | None = None
    try:
        while True:
            _reap(workers, report, echo)
            if STOP.is_set():
                report.stopped = True
                break
            plan = plan_waves(project, instance, max_in_flight=runs_in_flight)
            report.summary = plan.summary
            started = []
            for req in plan.requests[: max(0, runs_in_flight - len(workers))]:
                if not _feeds_model(req):
                    _run_here(defs, req, instance, report, echo)
                    continue
                token = uuid.uuid4().hex
                tags = dict(req.tags or {}) | {REQUEST_TAG: token}
                proc = ctx.Process(target=_work, args=(defs, req, ref, tags), daemon=True)
                proc.start()
                started.append(_Worker(proc, req, _label(req), token, time.perf_counter()))
            for w in started:  # before the next plan: it must count them in flight, never request them twice
                w.run_id = _wait_created(instance, w)
            workers += started
            report.runs += len(started)
            if workers or plan.requests:
                idle_since = None
            else:
                if plan.finished:
                    report.complete = True
                    break
                idle_since = idle_since or time.monotonic()
                if plan.gave_up or time.monotonic() - idle_since > max_idle_s:
                    break
            time.sleep(wait_s)
    finally:
        for w in workers:  # stopped or failed: let the runs in flight finish (their GPU work is kept)
            w.proc.join()
        _reap(workers, report, echo)
    report.seconds = time.perf_counter() - t0
    return report


def _run_here(
    defs: Jobs,
    req: dg.RunRequest,
    instance: dg.DagsterInstance,
    report: DriveReport,
    echo: Callable[[str], None] | None,
) -> None:
    """A run that calls no model (renders, water masks, publishing, the map), executed in this process while the
    step workers go on: it is short, and the map's pyramid build (libvips and a thread pool) is not safe in a
    forked child of a process whose libvips may already hold locks."""
    t = time.perf_counter()
    result = _job(defs, str(req.job_name)).execute_in_process(
        instance=instance,
        partition_key=req.partition_key,
        tags=dict(req.tags or {}) | process_tags(),
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    ok, dt, label = result.success, time.perf_counter() - t, _label(req)
    report.runs += 1
    report.record(result.run_id, label, dict(req.tags or {}), ok, dt)
    if echo:
        echo(f"  {'ok ' if ok else 'FAILED'} {label:<44} {dt:6.1f}s")


def _reap(workers: list[_Worker], report: DriveReport, echo: Callable[[str], None] | None) -> None:
    """Record the workers that ended (in place)."""
    for w in [w for w in workers if not w.proc.is_alive()]:
        w.proc.join()
        workers.remove(w)
        ok = w.proc.exitcode == 0
        dt = time.perf_counter() - w.started
        report.record(w.run_id, w.label, dict(w.req.tags or {}), ok, dt)
        if echo:
            echo(f"  {'ok ' if ok else 'FAILED'} {w.label:<44} {dt:6.1f}s")
