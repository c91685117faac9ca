"""``isonyc demo`` stops cleanly on SIGTERM / SIGINT and the next ``isonyc demo`` resumes.

A real subprocess on a small area: the signal comes while it generates; it must exit within 10 s, leave no run
unfinished in the Dagster instance (the run in flight ends CANCELED, never FAILURE), keep the store intact
(``isonyc store verify``), and a second ``isonyc demo`` must finish the map.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from isonyc_dagster.defs.runs import UNFINISHED
from tests.dagster_helpers import project_config

pytestmark = pytest.mark.slow

#: A line the demo prints once a generation step run has started (the lattice's first wave).
GENERATING = "ok  render["


def _demo(tmp: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "isonyc_dagster.cli", "--config", str(tmp / "isonyc.json"), "demo"],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], marker: str, out: list[str], timeout: float) -> None:
    """Collect stdout lines into ``out`` in a thread; return once ``marker`` was printed (or fail)."""
    seen = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if marker in line:
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    assert seen.wait(timeout), "".join(out)[-3000:]


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_stops_within_10s_and_resumes(tmp_path: Path, signo: signal.Signals) -> None:
    cfg = project_config(tmp_path, 0, 0, 2, 2)
    (tmp_path / "isonyc.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    home = tmp_path / "dagster_home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "1"}
    env.pop("ISONYC_CONFIG", None)

    proc = _demo(tmp_path, env)
    out: list[str] = []
    try:
        _read_until(proc, GENERATING, out, timeout=300)
        time.sleep(1.0)  # into the next run (the first generation wave)
        t0 = time.monotonic()
        proc.send_signal(signo)
        rc = proc.wait(timeout=30)
        stopped_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(out)
    print(f"{signo.name}: exited {rc} after {stopped_s:.1f}s")
    assert stopped_s <= 10.0, log[-3000:]
    assert rc == 128 + signo, log[-3000:]
    assert "stopped on request" in log, log[-3000:]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        statuses = {r.status for r in runs}
        assert not statuses & set(UNFINISHED), statuses
        assert dg.DagsterRunStatus.FAILURE not in statuses, statuses
        assert dg.DagsterRunStatus.SUCCESS in statuses

    verify = subprocess.run(
        [sys.executable, "-m", "isonyc_dagster.cli", "store", "verify", "--store", cfg.store],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert verify.returncode == 0 and json.loads(verify.stdout)["clean"], verify.stdout + verify.stderr

    if signo != signal.SIGTERM:
        return  # resuming is the same after either signal: once is enough for the suite's time
    again = subprocess.run(
        [sys.executable, "-m", "isonyc_dagster.cli", "--config", str(tmp_path / "isonyc.json"), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "generated 9/9" in again.stdout
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert len(instance.get_materialized_partitions(dg.AssetKey("generation"))) == 9
        assert not {r.status for r in instance.get_runs()} & set(UNFINISHED)
