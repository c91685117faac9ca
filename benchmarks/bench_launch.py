"""Launch overhead: what one run costs when it is launched the way the daemon launches it.

On a throwaway ``DAGSTER_HOME`` holding the ``dagster.yaml`` that ``isonyc demo`` writes, the project's code location
is started as a long-lived code server (``dagster api grpc -m isonyc_dagster.defs.definitions``, what
``workspace.yaml`` names), and small runs (``render_job``, one quadrant partition of a tiny rectangle) are created
as a sensor creates them (``get_execution_plan`` + ``create_run`` from the remote job) and launched through the
instance's run launcher (``DefaultRunLauncher`` → the code server's ``StartRun`` → a run worker process). Per run:

- wall: from ``launch_run`` to the run's ``SUCCESS`` as seen by polling the instance;
- worker CPU-s: the run worker and its children (``/proc`` sampled while they live, and the code server's
  ``cutime + cstime`` once it has reaped them: the larger of the two);
- code-server CPU-s and launcher-side CPU-s (``create_run`` + ``launch_run`` in this process);
- step: the step's own duration from Dagster's step stats; overhead = worker CPU-s − step wall (an upper bound
  on the work: the step is single-threaded).

Printed next to issue 12's figures (15–17 CPU-s and 16–28 s wall per daemon-launched run) and the goal (≤ 2 CPU-s).

    .venv/bin/python benchmarks/bench_launch.py              # 3 runs
    .venv/bin/python benchmarks/bench_launch.py --runs 5 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.dagster_helpers import project_config  # noqa: E402
from tests.launch_helpers import (  # noqa: E402
    SERVERS,
    create_run,
    free_port,
    remote_location,
    start_code_server,
    stop_code_server,
)

REPO = Path(__file__).resolve().parents[1]
MODULE = "isonyc_dagster.defs.definitions"
#: Issue 12's figures for one daemon-launched run, before this work; and the goal.
BEFORE_CPU_S = (15.0, 17.0)
BEFORE_WALL_S = (16.0, 28.0)
GOAL_CPU_S = 2.0
TICK = os.sysconf("SC_CLK_TCK")
NOOP_COMPUTE_LOGS = """compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
"""


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces: fields start after its closing parenthesis (field 3 = state).
    return raw[raw.rindex(")") + 2 :].split()


def _cpu(pid: int, *, children: bool = False) -> float:
    """utime + stime of ``pid`` (or cutime + cstime: its reaped children), in seconds."""
    f = _stat(pid)
    if f is None:
        return 0.0
    i = 13 if children else 11  # fields 14/15 (utime/stime) and 16/17 (cutime/cstime), 1-based from field 3
    return (int(f[i]) + int(f[i + 1])) / TICK


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (f := _stat(int(d.name))) is not None:
            kids.setdefault(int(f[1]), []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


@dataclass
class Sample:
    run: int
    key: str
    wall_s: float = 0.0
    worker_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    launcher_cpu_s: float = 0.0
    step_s: float = 0.0
    step_cpu_s: float = 0.0
    status: str = ""
    pids: set[int] = field(default_factory=set)

    @property
    def overhead_cpu_s(self) -> float:
        return max(0.0, self.worker_cpu_s - self.step_cpu_s)


def _total(pid: int) -> float:
    return _cpu(pid) + _cpu(pid, children=True)


def _watch(
    instance, run_id: str, server_pid: int, s: Sample, t0: float, timeout: float, base: set[int]
) -> None:
    """Poll the run to a terminal status, sampling the CPU of the code server's new descendants (the run worker)
    meanwhile, and their CPU when the step starts and ends."""
    from dagster import DagsterEventType, DagsterRunStatus

    done = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    step_end = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
    seen: dict[int, float] = {}
    cursor, step_cpu0 = None, None
    while True:
        for pid in _descendants(server_pid) - base:
            seen[pid] = max(seen.get(pid, 0.0), _total(pid))
        conn = instance.get_records_for_run(run_id, cursor=cursor)
        cursor = conn.cursor
        for rec in conn.records:
            ev = rec.event_log_entry.dagster_event
            if ev is not None and ev.event_type == DagsterEventType.STEP_START:
                step_cpu0 = sum(seen.values())
            elif ev is not None and ev.event_type in step_end and step_cpu0 is not None:
                s.step_cpu_s += sum(seen.values()) - step_cpu0
        run = instance.get_run_by_id(run_id)
        if run.status in done:
            s.wall_s = time.perf_counter() - t0
            s.status = run.status.value
            break
        if time.perf_counter() - t0 > timeout:
            s.status = f"TIMEOUT ({run.status.value})"
            s.wall_s = timeout
            break
        time.sleep(0.02)
    s.pids = set(seen)
    s.worker_cpu_s = sum(seen.values())


def _measure_run(instance, ws, location, server_pid: int, s: Sample, timeout: float) -> None:
    base = _descendants(server_pid) | {server_pid}
    own0 = {pid: _cpu(pid) for pid in base}
    reaped0 = {pid: _cpu(pid, children=True) for pid in base}
    c0 = time.process_time()
    run = create_run(instance, location, "render_job", {"dagster/partition": s.key})
    t0 = time.perf_counter()
    instance.launch_run(run.run_id, ws)
    s.launcher_cpu_s = time.process_time() - c0
    _watch(instance, run.run_id, server_pid, s, t0, timeout, base)
    # The worker is reaped shortly after the end (by the code server, or by the forkserver): then the reaper's
    # cutime holds all of the worker's CPU, including what the last sample missed.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_descendants(server_pid) & s.pids):
        time.sleep(0.05)
    reaped = sum(_cpu(pid, children=True) - reaped0[pid] for pid in base)
    s.worker_cpu_s = max(s.worker_cpu_s, reaped)
    s.server_cpu_s = sum(_cpu(pid) - own0[pid] for pid in base)
    s.step_s = sum(
        (st.end_time or 0) - (st.start_time or 0) for st in instance.get_run_step_stats(run.run_id)
    )


def measure(
    kind: str, home: Path, env: dict[str, str], runs: int, timeout: float, log: Path
) -> tuple[list[Sample], float]:
    from dagster import DagsterInstance

    port = free_port()
    t_srv = time.perf_counter()
    server = start_code_server(kind, MODULE, env, port, log)
    startup_s = time.perf_counter() - t_srv
    samples: list[Sample] = []
    keys = ["0|0", "1|0", "0|1", "1|1"]
    try:
        with (
            DagsterInstance.from_config(str(home)) as instance,
            remote_location(instance, port) as (ws, location),
        ):
            for i in range(runs):
                s = Sample(run=i + 1, key=keys[i % len(keys)])
                _measure_run(instance, ws, location, server.pid, s, timeout)
                samples.append(s)
                print(
                    f"  run {s.run} [{s.key}] {s.status}: wall {s.wall_s:.1f}s, worker {s.worker_cpu_s:.2f} CPU-s "
                    f"(step {s.step_s:.2f}s, {s.step_cpu_s:.2f} CPU-s; overhead {s.overhead_cpu_s:.2f} CPU-s); "
                    f"code server {s.server_cpu_s:.2f} CPU-s, launcher {s.launcher_cpu_s:.2f} CPU-s",
                    flush=True,
                )
        rss = {pid: _rss_mb(pid) for pid in _descendants(server.pid) | {server.pid}}
        print(
            f"  resident memory of the code server and its helpers: {sorted(rss.values(), reverse=True)} MB"
        )
    finally:
        stop_code_server(server)
    return samples, startup_s


def _rss_mb(pid: int) -> int:
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1]) // 1024


def _med(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def _summary(samples: list[Sample]) -> dict[str, float]:
    """Medians over the steady state: the first run also prepares the project's caches (city, bounds, numba)."""
    ok = [s for s in samples if s.status == "SUCCESS"]
    steady = ok[1:] or ok
    return {
        "wall_s": _med([s.wall_s for s in steady]),
        "wall_overhead_s": _med([s.wall_s - s.step_s for s in steady]),
        "worker_cpu_s": _med([s.worker_cpu_s for s in steady]),
        "step_cpu_s": _med([s.step_cpu_s for s in steady]),
        "overhead_cpu_s": _med([s.overhead_cpu_s for s in steady]),
        "server_cpu_s": _med([s.server_cpu_s for s in steady]),
    }


def _print_table(results: dict[str, dict[str, float]]) -> None:
    kinds = list(results)
    print(f"\nMedians of runs 2..n (steady state)  {''.join(f'{k:>10}' for k in kinds)}   issue 12 / goal")
    rows = [
        ("wall launch→success, s", "wall_s", f"{BEFORE_WALL_S[0]:.0f}–{BEFORE_WALL_S[1]:.0f}"),
        ("wall − step, s", "wall_overhead_s", ""),
        ("run worker, CPU-s", "worker_cpu_s", f"{BEFORE_CPU_S[0]:.0f}–{BEFORE_CPU_S[1]:.0f}"),
        ("  in the step, CPU-s", "step_cpu_s", "< 0.5"),
        ("  overhead, CPU-s", "overhead_cpu_s", f"goal ≤ {GOAL_CPU_S:.0f}"),
        ("code server (+forkserver), CPU-s", "server_cpu_s", ""),
    ]
    for label, key, ref in rows:
        print(f"  {label:<34}{''.join(f'{results[k][key]:10.2f}' for k in kinds)}   {ref}")
    for k in kinds:
        over = results[k]["overhead_cpu_s"]
        verdict = "met" if over <= GOAL_CPU_S else "NOT met"
        print(
            f"  {k}: overhead {over:.2f} CPU-s per run, goal ≤ {GOAL_CPU_S:.0f} {verdict}; "
            f"{BEFORE_CPU_S[0] / max(over, 1e-3):.1f}× below issue 12's {BEFORE_CPU_S[0]:.0f} CPU-s"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per code server (the first one is a warm-up)")
    ap.add_argument("--server", choices=[*SERVERS, "both"], default="both")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--compute-logs",
        choices=["default", "noop"],
        default="default",
        help="noop: add Dagster's NoOpComputeLogManager to the dagster.yaml (no stdout/stderr capture, no tailers)",
    )
    ap.add_argument(
        "--pycache",
        type=Path,
        help="let the code servers and run workers cache bytecode here (PYTHONPYCACHEPREFIX), as an installed "
        "venv with compiled bytecode would; without it, PYTHONDONTWRITEBYTECODE in the environment is kept",
    )
    args = ap.parse_args(argv)

    from isonyc_dagster.cli.demo import ensure_dagster_home

    tmp = Path(tempfile.mkdtemp(prefix="bench_launch_"))
    home = tmp / "home"
    os.environ["DAGSTER_HOME"] = str(home)
    ensure_dagster_home(home)
    if args.compute_logs == "noop":
        with (home / "dagster.yaml").open("a") as f:
            f.write(NOOP_COMPUTE_LOGS)
    cfg = project_config(tmp, 0, 0, 1, 1)
    cfg_path = tmp / "isonyc.json"
    cfg_path.write_text(cfg.model_dump_json())
    os.environ["ISONYC_CONFIG"] = str(cfg_path)
    env = dict(os.environ)
    if args.pycache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(args.pycache.resolve())
    kinds = list(SERVERS) if args.server == "both" else [args.server]
    print(
        f"bench_launch: {args.runs} render_job runs of one quadrant each per code server, DAGSTER_HOME={home}"
    )
    print("  dagster.yaml:", " ".join((home / "dagster.yaml").read_text().split()))
    if env.get("PYTHONDONTWRITEBYTECODE"):
        print(
            "  note: PYTHONDONTWRITEBYTECODE is set: modules without a .pyc are compiled again in every process"
        )
    results, raw, failed = {}, {}, 0
    for kind in kinds:
        print(f"\n{kind} code server:")
        samples, startup_s = measure(
            kind, home, env, args.runs, args.timeout, tmp / f"code_server_{kind}.log"
        )
        print(f"  code server up in {startup_s:.1f}s wall")
        results[kind] = _summary(samples)
        raw[kind] = {
            "runs": [{k: v for k, v in vars(s).items() if k != "pids"} for s in samples],
            "up_s": startup_s,
        }
        failed += sum(s.status != "SUCCESS" for s in samples)
    _print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"median": results, "raw": raw}, indent=2))
    if args.keep:
        print(f"  kept {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
