"""Launch runs the way the daemon does: a code server process, a run created from its remote job as a sensor creates
one, and ``instance.launch_run`` (the instance's ``DefaultRunLauncher`` → the server's ``StartRun``).

Used by ``tests/test_codeserver.py`` and ``benchmarks/bench_launch.py``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]

#: Code servers: Dagster's own (spawned run workers) and ours (run workers forked from a warm process).
SERVERS = {
    "dagster": [str(Path(sys.executable).parent / "dagster"), "api", "grpc"],
    "forking": [sys.executable, "-m", "isonyc_dagster.defs.codeserver"],
}
LOCATION = "isonyc"
TERMINAL = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_code_server(kind: str, module: str, env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """Start a code server for ``module`` on 127.0.0.1:``port`` and wait until it answers."""
    from dagster._grpc.client import DagsterGrpcClient

    cmd = [
        *SERVERS[kind],
        "-m",
        module,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--working-directory",
        str(REPO),
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the code server exited: {log.read_text()[-2000:]}")
        try:
            client.ping("x")
            return proc
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the code server did not answer within 300 s: {log.read_text()[-2000:]}")


def stop_code_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def remote_location(instance: dg.DagsterInstance, port: int) -> Iterator[tuple[object, object]]:
    """(workspace request context, code location) of the code server on ``port``."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import GrpcServerTarget

    target = GrpcServerTarget(host="127.0.0.1", port=port, socket=None, location_name=LOCATION)
    with WorkspaceProcessContext(instance, target) as wpc:
        ws = wpc.create_request_context()
        yield ws, ws.get_code_location(LOCATION)


@contextmanager
def forking_server(
    module: str, env: dict[str, str], home: Path, log: Path
) -> Iterator[tuple[subprocess.Popen, dg.DagsterInstance, object, object]]:
    """``isonyc code-server`` for ``module`` on a free port, the instance of ``home``, and its workspace and code
    location; the server is stopped on exit."""
    port = free_port()
    proc = start_code_server("forking", module, env, port, log)
    try:
        with (
            dg.DagsterInstance.from_config(str(home)) as instance,
            remote_location(instance, port) as (ws, loc),
        ):
            yield proc, instance, ws, loc
    finally:
        stop_code_server(proc)


def create_run(instance: dg.DagsterInstance, location, job_name: str, tags: dict[str, str] | None = None):
    """A NOT_STARTED run of ``job_name``, made from the remote job as the sensor daemon makes one."""
    (repo,) = location.get_repositories().values()
    remote_job = repo.get_full_job(job_name)
    plan = location.get_execution_plan(
        remote_job, {}, step_keys_to_execute=None, known_state=None, instance=instance
    )
    return instance.create_run(
        job_name=remote_job.name,
        run_id=None,
        run_config={},
        resolved_op_selection=None,
        op_selection=None,
        step_keys_to_execute=None,
        status=dg.DagsterRunStatus.NOT_STARTED,
        tags={**(remote_job.run_tags or {}), **(tags or {})},
        root_run_id=None,
        parent_run_id=None,
        job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=None,
        asset_check_selection=None,
        asset_graph=repo.asset_graph,
    )


def wait_run(instance: dg.DagsterInstance, run_id: str, timeout: float = 120.0) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status in TERMINAL:
            return run
        time.sleep(0.05)
    raise TimeoutError(f"run {run_id} not finished after {timeout:.0f}s: {instance.get_run_by_id(run_id)}")
