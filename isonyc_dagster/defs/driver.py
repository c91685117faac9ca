"""Run the wave scheduler to completion in this process (the demo and the tests use it).

It evaluates exactly the sensor's logic (``sensors.plan_waves``) against a real Dagster instance and executes
each requested run in process with the code location's own job, so every run, materialization, check and lineage
edge lands in the instance that ``dagster dev`` shows afterwards.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from isonyc_dagster.defs.runs import (
    STOP,
    UNFINISHED,
    mark_canceling,
    one_planned_event_per_run,
    process_tags,
    return_freed_memory,
)
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
    stopped: bool = False  # a stop was requested (``STOP``): the runs in flight finished or were canceled
    summary: str = ""

    def record(self, run_id: str | None, label: str, tags: dict[str, str], ok: bool, seconds: float) -> None:
        """One finished run: counted, logged in execution order, and named if it failed."""
        self.failed += 0 if ok else 1
        if not ok:
            self.failed_labels.append(label)
        self.log.append(
            {
                "run_id": run_id,
                "label": label,
                "tags": tags,
                "success": ok,
                "seconds": seconds,
                "finished": time.time(),
            }
        )


def _label(req: dg.RunRequest) -> str:
    tags = req.tags or {}
    if RANGE_START in tags:
        return f"{tags.get(ASSET_TAG)}[{tags[RANGE_START]}…{tags[RANGE_END]}]"
    if req.partition_key:
        return f"{tags.get(ASSET_TAG)}[{req.partition_key}]"
    return str(req.job_name)


#: After a stop request, how long the run in flight gets to reach its next partition boundary (where it cancels
#: itself, through Dagster) before the driver marks it canceled and abandons its worker thread.
STOP_GRACE_S = 6.0
#: Name of the thread a run executes in (``isonyc demo`` exits without waiting for one it abandoned).
RUN_THREAD = "isonyc-run"


@contextmanager
def stop_on_signals() -> Iterator[dict[str, int]]:
    """While inside: SIGINT/SIGTERM set ``STOP`` (the driver stops cleanly, see ``drive``); a second one exits at
    once (the next start marks the run of this process failed and requests its work again). Yields a dict whose
    ``signal`` is the first signal's number (0 when none came)."""
    got = {"signal": 0}
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signo: int, _frame: Any) -> None:
        if got["signal"]:
            os._exit(128 + signo)  # at once: not even the run worker's thread pool is waited for
        got["signal"] = signo
        STOP.set()
        # os.write, not print: a handler that prints while the main thread prints raises "reentrant call".
        name = signal.Signals(signo).name
        os.write(2, f"\n  {name}: stopping after the partition in hand (again to quit at once)\n".encode())

    STOP.clear()
    for s in previous:
        signal.signal(s, handler)
    try:
        yield got
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        STOP.clear()


def _own_unfinished(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(statuses=UNFINISHED, tags=process_tags())))


def _execute(job: dg.JobDefinition, req: dg.RunRequest, instance: dg.DagsterInstance) -> Any:
    """Execute one run in a worker thread; on ``STOP`` the run cancels itself at its next partition, or is marked
    canceled after ``STOP_GRACE_S``. Returns the ExecuteInProcessResult, or None when the run was abandoned.

    A worker thread, so that this process's signal handlers stay ours (Dagster swaps its own in around a run on
    the main thread and turns a signal into a failed run). Not an asynchronous exception into the worker: one
    could land inside Dagster's own event writes; a model call in hand is left to the exiting process instead."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = job.execute_in_process(
                instance=instance,
                partition_key=req.partition_key,
                # The process executing the run: if it dies, the next evaluation marks the run failed.
                tags=dict(req.tags or {}) | process_tags(),
                raise_on_error=False,
                # Dagster's per-event DEBUG lines would drown the progress lines; failures still print.
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=work, name=RUN_THREAD, daemon=True)
    worker.start()
    stop_at = None
    while worker.is_alive():
        worker.join(0.1)
        if not STOP.is_set() or not worker.is_alive():
            continue
        stop_at = stop_at or time.monotonic()
        if time.monotonic() - stop_at > STOP_GRACE_S:
            for run in _own_unfinished(instance):
                mark_canceling(instance, run.run_id)
                instance.report_run_canceled(
                    run, message="stop requested: the partition in hand did not finish in time; it is redone"
                )
            return None
    if "error" in box:
        raise box["error"]
    return box["result"]


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
    one_planned_event_per_run()
    return_freed_memory()
    report = DriveReport()
    t0 = time.perf_counter()
    idle_rounds = 0
    for _ in range(max_rounds):
        if STOP.is_set():
            report.stopped = True
            break
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
            STOP.wait(wait_s)
            continue
        idle_rounds = 0
        for i, req in enumerate(requests):
            if STOP.is_set():
                break
            label = _label(req)
            t = time.perf_counter()
            result = _execute(defs.resolve_job_def(req.job_name), req, instance)
            dt = time.perf_counter() - t
            report.runs += 1
            if result is None or STOP.is_set():
                report.stopped = True
                status = "stopped" if result is None or not result.success else "ok "
                if echo:
                    echo(f"  {status} {label:<44} {dt:6.1f}s   (stop requested)")
                break
            ok = result.success
            report.record(result.run_id, label, dict(req.tags or {}), ok, dt)
            if echo:
                echo(f"  {'ok ' if ok else 'FAILED'} {label:<44} {dt:6.1f}s   ({summary})")
            # Runs execute one at a time here: after a step run, plan again before a run that calls no model
            # (water masks, publishing), so the next wave's steps go first and the model endpoints do not wait.
            if _feeds_model(req) and i + 1 < len(requests) and not _feeds_model(requests[i + 1]):
                break
    report.seconds = time.perf_counter() - t0
    return report
