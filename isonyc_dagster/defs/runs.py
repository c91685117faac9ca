"""Run liveness: a run whose process is gone (kill -9, OOM, a power cut) is marked failed, never waited on.

Dagster's run monitoring catches runs that never start, but the default run launcher cannot tell whether a
started run's process still lives, and runs executed in process (``isonyc demo``) have no launcher at all. So every
run records the process that executes it (host, pid and the pid's start time, which survives pid reuse): the
driver passes these tags when it creates a run, and the project resource adds them when a run worker starts.
``reap_dead_runs`` marks a queued or running run failed when its process on this host is gone, and tags it so
the scheduler requests its work again at once instead of cooling down as after a real failure.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError

HOST_TAG = "isonyc/host"
PID_TAG = "isonyc/pid"
PROC_START_TAG = "isonyc/pid_start"
#: Set on a run that was marked failed because its process died (the work itself did not fail).
DEAD_TAG = "isonyc/process_died"

#: Statuses of a run that has not finished.
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


#: Set when this process was asked to stop (``isonyc demo`` on SIGINT/SIGTERM): the run executing here stops after
#: the partition in hand (``raise_if_stopping``), so it ends CANCELED with every stored tile intact.
STOP = threading.Event()


def raise_if_stopping(instance: dg.DagsterInstance, run_id: str) -> None:
    """Between partitions: once this process was asked to stop, mark the run CANCELING and end it as interrupted
    (Dagster then records it CANCELED, not failed; its partitions are requested again at the next start)."""
    if not STOP.is_set():
        return
    mark_canceling(instance, run_id)
    raise DagsterExecutionInterruptedError(
        "stop requested (SIGINT/SIGTERM): the remaining partitions are left"
    )


def mark_canceling(instance: dg.DagsterInstance, run_id: str) -> None:
    """Report an unfinished run CANCELING (a no-op for a run already canceling or finished)."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status in UNFINISHED and run.status != dg.DagsterRunStatus.CANCELING:
        instance.report_run_canceling(
            run, message="stop requested (SIGINT/SIGTERM) in the process running it"
        )


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields after it follow the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def process_tags() -> dict[str, str]:
    """Tags that identify this process (host, pid, the pid's start time)."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PROC_START_TAG: _proc_start(pid) or ""}


def process_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process a run recorded still lives; None when unknown (no tags, or another host)."""
    if PID_TAG not in tags or tags.get(HOST_TAG) != socket.gethostname():
        return None
    try:
        pid = int(tags[PID_TAG])
    except ValueError:
        return None
    started = _proc_start(pid)
    return started is not None and started == (tags.get(PROC_START_TAG) or started)


def mark_run_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Record on ``run`` the process executing it (once; a run worker started by a launcher calls this)."""
    tags = process_tags()
    if any(run.tags.get(k) != v for k, v in tags.items()):
        instance.add_run_tags(run.run_id, tags)


def reap_dead_runs(instance: dg.DagsterInstance, tags: dict[str, str] | None = None) -> list[str]:
    """Mark failed every unfinished run (with ``tags``) whose process on this host is gone; their labels."""
    reaped = []
    for rec in instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED, tags=tags or {})):
        run = rec.dagster_run
        if process_alive(run.tags) is not False:
            continue
        instance.add_run_tags(run.run_id, {DEAD_TAG: "1"})
        instance.report_run_failed(
            run,
            f"the process that ran this run (pid {run.tags.get(PID_TAG)} on {run.tags.get(HOST_TAG)}) is gone: "
            "killed or crashed; its partitions are requested again",
        )
        reaped.append(f"{run.job_name} {run.run_id[:8]}")
    return reaped


#: Dagster's switch (read where a run is created) for one ``ASSET_MATERIALIZATION_PLANNED`` event per asset of a
#: run, carrying the run's partition subset, instead of one event per partition: a 1,000-key range run then writes
#: one planned event, not 1,000. The cost: a failed run's partitions show as missing, not failed, in the UI (the
#: run itself shows failed, and the scheduler counts failures from runs, not from partition status).
PLANNED_EVENTS_ENV = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"


def one_planned_event_per_run() -> None:
    """Make runs created by this process log one planned event per asset (unless the environment says otherwise)."""
    os.environ.setdefault(PLANNED_EVENTS_ENV, "1")


#: glibc ``mallopt`` parameter (malloc.h): at most this many arenas serve the threads.
_M_ARENA_MAX = -8
_ARENA_MAX = 2


def return_freed_memory() -> None:
    """Keep freed arrays of a run's threads reusable (Linux, glibc; a no-op elsewhere).

    A run decodes thousands of 1–3 MB buffers, in worker threads, and glibc gives each thread its own arena, so
    memory freed in one was not reused by another. Two arenas only. (A fixed 1 MiB mmap threshold also returned every
    large array to the system, 0.82 instead of 1.06 GB peak on lower Manhattan's blocks run, but cost 20 % more CPU
    in page faults: not worth it.)"""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): its allocator has no per-thread arenas to bound
        return
    libc.mallopt(_M_ARENA_MAX, _ARENA_MAX)
