"""City scale: runs, orchestration overhead, throughput, CPU, storage and memory of a whole area through Dagster.

The area is generated end to end (render → steps → generation → water → map) by the wave scheduler's own driver
(``defs.driver.drive``: ``plan_waves``, the code location's jobs, a real instance, the real store) with the offline
``pixelart`` backend, on SQLite or on a throwaway PostgreSQL cluster (``deploy/local_postgres.py``). Printed per
instance, next to the figures issue 12 measured before (lower Manhattan, SQLite, same machine class):

- runs, and runs per 1,000 quadrants;
- overhead share: 1 − (time inside asset steps, from Dagster's step stats) / wall time;
- quadrants/s end to end, CPU-s per quadrant (this process and its children);
- storage per quadrant: the store, and the instance (SQLite files, or ``pg_database_size``);
- peak RSS of the run (this process; the sequential driver executes every run in it).

The instance is the one ``isonyc demo`` writes for a new home (SQLite with consolidated event storage), and runs
log one planned event each (``defs.runs.one_planned_event_per_run``, as the drivers set it).

    .venv/bin/python benchmarks/bench_city.py --rect 0 0 3 3                 # 16 quadrants, SQLite
    .venv/bin/python benchmarks/bench_city.py --bounds lower-manhattan --postgres   # 364 quadrants, both
    .venv/bin/python benchmarks/bench_city.py --bounds manhattan             # the preset, 2,199 quadrants
    .venv/bin/python benchmarks/bench_city.py --simulate                     # run counts only, up to NYC
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isonyc_dagster.cli.demo import dagster_yaml  # noqa: E402
from isonyc_dagster.defs.definitions import build_definitions  # noqa: E402
from isonyc_dagster.defs.driver import drive  # noqa: E402
from isonyc_dagster.geo.config import ProjectConfig  # noqa: E402
from isonyc_dagster.project import Project  # noqa: E402
from tests.dagster_helpers import project_config  # noqa: E402
from tests.pg_helpers import local_postgres  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: Issue 12's measurements before this work (lower Manhattan, 357 quadrants, SQLite, offline backend).
BEFORE = {
    "runs_per_1000_quadrants": 145 / 357 * 1000,
    "overhead_share": 0.30,
    "quadrants_per_s": 0.92,
    "cpu_s_per_quadrant": 1.0,
    "store_kb_per_quadrant": 690.0,
    "instance_kb_per_quadrant": 280.0,
    "peak_rss_mb": 1200.0,
}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _step_seconds(instance: dg.DagsterInstance) -> tuple[int, float]:
    """Runs, and the seconds spent inside their asset steps (the work; the rest of the wall time is overhead)."""
    runs = instance.get_runs()
    inside = 0.0
    for run in runs:
        for s in instance.get_run_step_stats(run.run_id):
            if s.start_time is not None and s.end_time is not None:
                inside += s.end_time - s.start_time
    return len(runs), inside


def _reset_peak_rss() -> None:
    """Start this process's peak RSS afresh (Linux: ``VmHWM``), so each instance's figure is its own run's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    """Peak RSS since ``_reset_peak_rss`` (``VmHWM``), or of the whole process where Linux cannot tell."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(cfg: ProjectConfig, home: Path, pg: Any | None) -> dict[str, float]:
    home.mkdir(parents=True, exist_ok=True)
    _reset_peak_rss()
    if pg is not None:
        db = f"bench_{int(time.time())}"
        pg.psql(f"CREATE DATABASE {db}")
        yaml = local_postgres().dagster_yaml(pg).replace("db_name: dagster", f"db_name: {db}")
    else:
        yaml = dagster_yaml(home)  # what `isonyc demo` writes for a new instance
    (home / "dagster.yaml").write_text(yaml)
    project = Project(cfg)
    n = len(project.quadrants)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        report = drive(build_definitions(cfg), project, instance, wait_s=0.5)
        wall = time.perf_counter() - t0
        cpu = _cpu_s() - cpu0
        runs, inside = _step_seconds(instance)
    if not report.complete:
        raise SystemExit(f"bench_city: the area did not complete: {report.summary}")
    # PostgreSQL: what the runs added over an empty database (its catalog alone is ~7.5 MB).
    instance_bytes = (
        _dir_bytes(home)
        if pg is None
        else int(pg.psql(f"SELECT pg_database_size('{db}') - pg_database_size('template1')"))
    )
    return {
        "quadrants": n,
        "runs": runs,
        "runs_per_1000_quadrants": runs / n * 1000,
        "overhead_share": max(0.0, 1 - inside / wall),
        "quadrants_per_s": n / wall,
        "cpu_s_per_quadrant": cpu / n,
        "store_kb_per_quadrant": _dir_bytes(Path(cfg.store)) / n / 1000,
        "instance_kb_per_quadrant": instance_bytes / n / 1000,
        "peak_rss_mb": _peak_rss_mb(),
        "wall_s": wall,
    }


def simulate_runs(project: Project) -> dict[str, int]:
    """Runs the scheduler would start over the whole area, by kind, without doing the work: each round executes
    every run ``plan_waves`` would request (its readiness, key ranges, caps and batching rules, ``sensors``), and
    marks their keys done. For areas too large to generate here (the nyc preset)."""
    from isonyc_dagster.defs import sensors
    from isonyc_dagster.generate.plan import StepKind
    from isonyc_dagster.generate.waves import Progress, complete, ready

    order, done, counts = project.order, Progress(), {"geodata": 1, "export": 1}
    qs = project.quadrants.keys
    while not complete(project.plan, qs, done):
        req = ready(project.plan, qs, done, Progress())
        ranges: list[tuple[str, list]] = []
        for kind in StepKind:
            name = sensors.STEP_ASSETS[kind]
            for a, b in order.steps[kind].spans(
                req.steps[kind], max_wanted=sensors.MAX_PER_RUN["steps"], passable=lambda k: True
            ):
                ranges.append((name, order.steps[kind].between(a, b)))
        for asset in ("generation", "water_mask", "render"):
            for a, b in order.quadrants.spans(
                getattr(req, asset), max_wanted=sensors.MAX_PER_RUN[asset], passable=lambda k: True
            ):
                ranges.append((asset, order.quadrants.between(a, b)))
        if not ranges:
            raise SystemExit("bench_city: the simulated scheduler is stuck")
        for asset, keys in ranges:
            counts[asset] = counts.get(asset, 0) + 1
            kind = next((k for k, n in sensors.STEP_ASSETS.items() if n == asset), None)
            target = done.steps[kind] if kind is not None else getattr(done, asset)
            if kind is None:  # a fill run does the keys of its range that are ready
                target |= set(keys) & getattr(req, asset)
            else:
                target |= set(keys) & req.steps[kind]
    counts["total"] = sum(counts.values())
    return counts


#: Named areas besides the presets: lower Manhattan is the Manhattan preset south of Houston St (the extent of the
#: shared OSM extract, lng/lat), 364 quadrants.
AREAS = {"lower-manhattan": (-74.031, 40.695, -73.968, 40.730)}


def bounds_file(name: str, tmp: Path) -> str:
    """A preset or GeoJSON path as given, or a named area (``AREAS``) written as GeoJSON under ``tmp``."""
    if name not in AREAS:
        return name
    from shapely.geometry import box, mapping

    from isonyc_dagster.geo.bounds import preset_polygon

    area = preset_polygon("manhattan").intersection(box(*AREAS[name]))
    path = tmp / f"{name}.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(area)}))
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    area = ap.add_mutually_exclusive_group()
    area.add_argument(
        "--rect", type=int, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="a rectangle of quadrants"
    )
    area.add_argument(
        "--bounds",
        help="a preset (demo, manhattan, nyc), lower-manhattan (364 quadrants) or a GeoJSON polygon",
    )
    ap.add_argument(
        "--geodata", action="append", default=[], help="vector files (default: the synthetic city)"
    )
    ap.add_argument("--postgres", action="store_true", help="also on a throwaway local PostgreSQL cluster")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument(
        "--simulate",
        nargs="*",
        metavar="BOUNDS",
        help="only count the runs the scheduler would start over these bounds (default: lower-manhattan manhattan nyc)",
    )
    args = ap.parse_args(argv)
    if args.simulate is not None:
        for bounds in args.simulate or ["lower-manhattan", "manhattan", "nyc"]:
            tmp = Path(tempfile.mkdtemp(prefix="bench-city-sim-"))
            cfg = ProjectConfig(
                bounds=bounds_file(bounds, tmp),
                store=str(tmp / "s"),
                cache_dir=str(tmp / "c"),
                force_bounds=True,
            )
            project = Project(cfg)
            counts = simulate_runs(project)
            n = len(project.quadrants)
            print(
                f"{bounds}: {n} quadrants, {counts['total']} runs ({counts['total'] / n * 1000:.1f} per 1,000 "
                f"quadrants): " + ", ".join(f"{k} {v}" for k, v in counts.items() if k != "total")
            )
        return 0

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-city-") as tmp_s:
        tmp = Path(tmp_s)
        tmp.chmod(0o711)  # the postgres OS user (tests as root) enters its cluster directory below
        pg = None
        if args.postgres:
            pg = local_postgres().open_cluster(tmp / "pg")
            pg.start()
        try:
            for name in ["sqlite"] + (["postgres"] if pg is not None else []):
                work = tmp / name
                work.mkdir()
                if args.bounds:
                    cfg = ProjectConfig(
                        bounds=bounds_file(args.bounds, tmp),
                        geodata=args.geodata,
                        store=str(work / "store"),
                        cache_dir=str(work / "cache"),
                        output_dir=str(work / "map"),
                        force_bounds=True,
                    )
                else:
                    x0, y0, x1, y1 = args.rect or (0, 0, 3, 3)
                    cfg = project_config(work, x0, y0, x1, y1, geodata=args.geodata)
                results[name] = measure(cfg, work / "dagster_home", pg if name == "postgres" else None)
        finally:
            if pg is not None:
                pg.stop()

    keys = list(BEFORE)
    print(f"{'figure':<28}{'before (issue 12)':>20}" + "".join(f"{k:>14}" for k in results))
    for k in ["quadrants", "runs", *keys, "wall_s"]:
        before = f"{BEFORE[k]:.2f}" if k in BEFORE else ""
        row = "".join(f"{r[k]:>14.2f}" for r in results.values())
        ratio = (
            "   ×" + " ×".join(f"{r[k] / BEFORE[k]:.2f}" for r in results.values())
            if k in BEFORE and BEFORE[k]
            else ""
        )
        print(f"{k:<28}{before:>20}{row}{ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
