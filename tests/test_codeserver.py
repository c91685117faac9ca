"""The forking code server (``isonyc_dagster.defs.codeserver``): runs launched as the daemon launches them start in a
worker forked from a warm process, and Dagster's run lifecycle (success, crash → failed, cancel) is unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import GRPC_INFO_TAG

from isonyc_dagster.cli.demo import DAGSTER_YAML
from tests.dagster_helpers import project_config
from tests.launch_helpers import create_run, forking_server, wait_run


def _home(tmp: Path) -> Path:
    home = tmp / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A forking code server for ``tests.codeserver_defs`` and an instance on the demo's dagster.yaml."""
    tmp = tmp_path_factory.mktemp("codeserver")
    home, out = _home(tmp), tmp / "out"
    out.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "CODESERVER_TEST_OUT": str(out)}
    with forking_server("tests.codeserver_defs", env, home, tmp / "server.log") as (_proc, instance, ws, loc):
        yield instance, ws, loc, out


def _report(out: Path, name: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(out.glob(f"{name}-*.json"))
        if found:
            time.sleep(0.05)  # written in one small write; let it land
            return json.loads(found[-1].read_text())
        time.sleep(0.05)
    raise TimeoutError(f"no report from {name}")


def test_run_worker_is_forked_from_the_warm_process(server) -> None:
    instance, ws, loc, out = server
    run = create_run(instance, loc, "where_job")
    instance.launch_run(run.run_id, ws)
    assert wait_run(instance, run.run_id).status == dg.DagsterRunStatus.SUCCESS
    report = _report(out, "where")
    # A spawned worker imports the code location itself; a forked one inherits it from the forkserver.
    assert report["imported_in"] != report["pid"]
    # Launched through the code server, as the daemon launches: cancel and monitoring find it by this tag.
    assert json.loads(instance.get_run_by_id(run.run_id).tags[GRPC_INFO_TAG])["host"] == "127.0.0.1"


def _launch_linger(server):  # type: ignore[no-untyped-def]
    """A run of ``linger_job`` launched through the server, and the pid of the worker running it."""
    instance, ws, loc, out = server
    for stale in out.glob("linger-*.json"):
        stale.unlink()
    run = create_run(instance, loc, "linger_job")
    instance.launch_run(run.run_id, ws)
    return instance, run, _report(out, "linger")["pid"]


def test_killed_run_worker_marks_the_run_failed(server) -> None:
    instance, run, pid = _launch_linger(server)
    os.kill(pid, signal.SIGKILL)
    assert wait_run(instance, run.run_id).status == dg.DagsterRunStatus.FAILURE
    messages = [r.event_log_entry.message or "" for r in instance.get_records_for_run(run.run_id).records]
    assert any("unexpectedly" in m or "exit code" in m or "signal" in m for m in messages), messages[-5:]


def test_cancel_stops_a_forked_run(server) -> None:
    instance, run, pid = _launch_linger(server)
    assert instance.run_launcher.terminate(run.run_id)
    assert wait_run(instance, run.run_id, timeout=60).status == dg.DagsterRunStatus.CANCELED
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the canceled worker is still alive"


def _forkserver_pid(server_pid: int) -> int:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == server_pid and "forkserver" in cmd:
            return int(d.name)
    raise LookupError("no forkserver under the code server")


@pytest.mark.slow
def test_project_render_run_through_the_forking_server(tmp_path: Path) -> None:
    """The project's own code location: a render run succeeds in a forked worker, and the forkserver it was forked
    from holds no connection to the instance or the tile store (every worker opens its own)."""
    home = _home(tmp_path)
    cfg_path = tmp_path / "isonyc.json"
    cfg_path.write_text(project_config(tmp_path, 0, 0, 1, 1).model_dump_json())
    env = {**os.environ, "DAGSTER_HOME": str(home), "ISONYC_CONFIG": str(cfg_path)}
    module = "isonyc_dagster.defs.definitions"
    with forking_server(module, env, home, tmp_path / "server.log") as (proc, instance, ws, loc):
        run = create_run(instance, loc, "render_job", {"dagster/partition": "1|0"})
        instance.launch_run(run.run_id, ws)
        assert wait_run(instance, run.run_id, timeout=300).status == dg.DagsterRunStatus.SUCCESS
        fds = Path(f"/proc/{_forkserver_pid(proc.pid)}/fd")
        held = {os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()}
        roots = [str(home), str(tmp_path / "store"), str(tmp_path / "cache")]
        assert not {h for h in held if h.startswith(tuple(roots))}, held


def test_cli_passes_its_options_to_the_server() -> None:
    import argparse

    from isonyc_dagster.cli.codeserver import add_parser, server_argv

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["code-server", "--port", "4300", "--working-directory", "/srv/app"])
    argv = server_argv(args)
    assert argv == [
        "-m",
        "isonyc_dagster.defs.definitions",
        "--host",
        "127.0.0.1",
        "--port",
        "4300",
        "--working-directory",
        "/srv/app",
    ]
    # The server takes exactly Dagster's `api grpc` options.
    from dagster._cli.api import grpc_command

    assert grpc_command.make_context("x", list(argv)).params["port"] == 4300


#: Modules the code location must not import when it loads (each costs seconds and hundreds of MB per process);
#: the steps that need them import them when they run.
HEAVY = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "playwright",
    "modal",
    "google.genai",
    "open3d",
    "rerun",
)


def test_code_location_import_stays_light(tmp_path: Path) -> None:
    code = (
        "import sys, isonyc_dagster.defs.definitions as d; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    env = {**os.environ, "DAGSTER_HOME": str(_home(tmp_path))}
    env.pop("ISONYC_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
