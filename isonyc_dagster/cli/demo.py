"""``isonyc demo``: the whole pipeline on the configured area (default: the embedded demo), offline, through Dagster."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

DAGSTER_YAML = """\
# Written by `isonyc demo`: a local SQLite instance; telemetry off; runs that never start are failed.
telemetry:
  enabled: false
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
"""


#: Appended for a new instance: every run's events in one SQLite file. Dagster's default keeps one file per run and
#: copies each asset event into an index file too, which doubles the instance (43 → 21 kB per quadrant measured on
#: lower Manhattan, benchmarks/bench_city.py).
CONSOLIDATED_EVENTS = """\
event_log_storage:
  module: dagster._core.storage.event_log
  class: ConsolidatedSqliteEventLogStorage
  config:
    base_dir: {base_dir}
"""


def dagster_yaml(home: Path, current: str | None = None) -> str:
    """The dagster.yaml ``isonyc demo`` writes in ``home``: consolidated event storage, unless the instance already
    holds events in Dagster's default per-run layout (switching would hide their history from the UI)."""
    old_layout = (home / "history" / "runs" / "index.db").exists()
    if old_layout and "ConsolidatedSqliteEventLogStorage" not in (current or ""):
        return DAGSTER_YAML
    return DAGSTER_YAML + CONSOLIDATED_EVENTS.format(base_dir=home / "history" / "events")


def ensure_dagster_home(default: Path) -> Path:
    """Use $DAGSTER_HOME, or a project-local one, so `dagster dev` afterwards shows the same runs."""
    home = Path(os.environ.get("DAGSTER_HOME") or default).resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    # Ours (written by an older version) is brought up to date; a dagster.yaml written by a person is kept.
    current = cfg.read_text() if cfg.exists() else None
    if current is None or current.startswith("# Written by `isonyc demo`"):
        want = dagster_yaml(home, current)
        if current != want:
            cfg.write_text(want)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _exit_stopped(code: int) -> int:
    """After a stop (the instance closed, every run of ours finished or marked canceled): exit now, even while a
    worker thread the driver abandoned is still in a model call (Python would wait for it, and for its thread
    pool, at exit); the store commits atomically, so nothing is half-written."""
    sys.stdout.flush()
    sys.stderr.flush()
    if threading.active_count() > 1:
        os._exit(code)
    return code


def run_demo(
    out_dir: Path | None = None,
    config_path: str | None = None,
    port: int = 8000,
    *,
    force_bounds: bool = False,
    derived_layers: list[str] | None = None,
) -> int:
    import dagster as dg

    from isonyc_dagster.defs.definitions import build_definitions
    from isonyc_dagster.defs.driver import drive, stop_on_signals
    from isonyc_dagster.geo.config import load_project_config
    from isonyc_dagster.project import CONFIG_ENV, Project

    config_path = config_path or os.environ.get(CONFIG_ENV) or None
    config = load_project_config(config_path)
    if out_dir is not None:
        config = config.model_copy(update={"output_dir": str(out_dir)})
    if force_bounds:
        config = config.model_copy(update={"force_bounds": True})
    if derived_layers is not None:
        config = config.model_copy(update={"derived_layers": derived_layers})
    project = Project(config)
    home = ensure_dagster_home(Path("data/dagster_home"))
    echo = print
    echo(
        f"isonyc demo: bounds '{config.bounds}' → {len(project.quadrants)} quadrants, "
        f"{len(project.plan.steps)} generation steps (plan {project.plan.calls_per_quadrant:.2f} calls/quadrant), "
        f"backend '{config.backend}'"
    )
    echo(f"  Dagster instance: {home}")
    t0 = time.perf_counter()
    defs = build_definitions(config)
    with dg.DagsterInstance.get() as instance, stop_on_signals() as got:
        report = drive(defs, project, instance, echo=echo)
        if report.complete and config.derived_layers and not report.stopped:
            from isonyc_dagster.defs.assets.derived import materialize_derived

            for label, ok in materialize_derived(defs, project, instance, list(config.derived_layers)):
                echo(f"  {'ok ' if ok else 'FAILED'} {label}")
                report.complete &= ok
    dt = time.perf_counter() - t0
    if report.stopped:
        print(
            f"isonyc demo: stopped on request after {dt:.0f}s ({report.summary}); run `isonyc demo` again to resume",
            file=sys.stderr,
        )
        return _exit_stopped(128 + (got["signal"] or signal.SIGINT))
    if not report.complete:
        print(f"isonyc demo: stopped before the map was complete: {report.summary}", file=sys.stderr)
        return 1
    out = Path(config.output_dir).resolve()
    # Complete means every quadrant and the map are current, so the work of each failed run was done again.
    retried = (
        f", {report.failed} failed ({', '.join(report.failed_labels[:5])}) and their work was redone"
        if report.failed
        else ""
    )
    echo(f"\nDone in {dt:.0f}s: {report.runs} Dagster runs{retried}. {report.summary}.")
    bin_dir = Path(sys.executable).parent
    echo(f"  Map:        {bin_dir / 'isonyc'} serve {out} --port {port}   then open http://127.0.0.1:{port}/")
    env = f"DAGSTER_HOME={home}" + (f" {CONFIG_ENV}={Path(config_path).resolve()}" if config_path else "")
    echo(
        f"  Dagster UI: cd {Path.cwd()} && {env} {bin_dir / 'dagster'} dev -m isonyc_dagster.defs.definitions"
    )
    echo(f"              then open {config.dagster_url} (runs, lineage, previews and checks of this demo)")
    return 0
