"""A code server whose run workers are forked from a warm process instead of spawned from scratch.

Dagster's code server (``dagster api grpc``) starts each run it is asked to launch (``StartRun``: what the
``DefaultRunLauncher`` of the daemon, the UI and ``isonyc demo`` ask it for) in a *spawned* Python process, which
imports Dagster, SQLAlchemy and the code location and builds the definitions again before it executes anything:
5–12 CPU-s per run for well under a second of work (``benchmarks/bench_launch.py``). This server is Dagster's own
with one difference: its run workers come from a ``forkserver`` that has imported the code location (and the
run-worker parts of Dagster) once, so each worker starts warm, in a few milliseconds. Everything else — the event
queue, cancellation, run-worker health, the ``dagster/grpc_info`` tag — is Dagster's ``StartRun`` unchanged.

The forkserver is started by this server (a fresh interpreter: no threads, no gRPC state inherited) and dies with
it; reloading the code location restarts both, so workers never run stale code. If the warm import fails, the
workers import the code location themselves, exactly as spawned ones do.

    python -m isonyc_dagster.defs.codeserver -m isonyc_dagster.defs.definitions --port 4000
    # takes every option of ``dagster api grpc``
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import sys
import threading
from multiprocessing.context import BaseContext
from typing import Any

import dagster._grpc.server as dagster_server

#: What the forkserver imports before forking workers, as JSON (module, working directory, the server's sys.path):
#: set by the server, read by ``isonyc_dagster.defs._forkwarm`` in the forkserver, which inherits the environment.
PRELOAD_ENV = "ISONYC_FORKSERVER_PRELOAD"

#: What a run worker imports besides the code location: the run-execution machinery and the SQLite/PostgreSQL
#: storages an instance is made of (a module that is not installed is skipped).
WORKER_MODULES = [
    "dagster._grpc.impl",
    "dagster._core.execution.api",
    "dagster._core.execution.plan.execute_plan",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.storage.noop_compute_log_manager",
    "dagster_postgres",
]


def forkserver_context(module_name: str | None, working_directory: str | None = None) -> BaseContext:
    """A ``forkserver`` context whose server has imported ``module_name`` and the run-worker modules; started now,
    in the background, so the first run does not wait for the imports."""
    spec = {"module": module_name, "working_directory": working_directory, "sys_path": sys.path}
    os.environ[PRELOAD_ENV] = json.dumps(spec)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["isonyc_dagster.defs._forkwarm"])
    threading.Thread(
        target=multiprocessing.forkserver.ensure_running, name="forkserver-start", daemon=True
    ).start()
    return ctx


class ForkingApiServer(dagster_server.DagsterApiServer):
    """Dagster's code server, with run workers forked from a warm forkserver instead of spawned."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        origin = kwargs.get("loadable_target_origin")
        module = (origin.module_name or origin.package_name) if origin is not None else None
        workdir = origin.working_directory if origin is not None else None
        # Only the context that StartRun uses to create run workers changes (Dagster hard-codes "spawn").
        self._mp_ctx = forkserver_context(module, workdir)  # type: ignore[assignment]  # typed as SpawnContext


def main(argv: list[str] | None = None) -> None:
    """``dagster api grpc`` with :class:`ForkingApiServer` (same options)."""
    from dagster._cli.api import grpc_command

    # grpc_command imports DagsterApiServer from this module when it runs: swap in ours for this process.
    dagster_server.DagsterApiServer = ForkingApiServer  # type: ignore[misc]
    grpc_command.main(args=argv, prog_name="isonyc-code-server")


if __name__ == "__main__":
    main()
