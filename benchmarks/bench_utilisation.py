"""Throughput against real latency: do the wave scheduler and the Modal backend keep N GPU endpoints busy?

A 12×12-quadrant area (64 lattice steps) is generated through the real scheduling path (``defs.driver.drive``:
the wave scheduler's own ``plan_waves``, the code location's jobs, a real Dagster instance, the real store)
with the ``modal`` backend pointed at N fake GPU endpoints on 127.0.0.1 (``tests/fake_gpu.py``): one
generation at a time per GPU taking ``latency ± jitter`` seconds, at most ``capacity`` requests accepted
per endpoint (HTTP 429 + Retry-After beyond), and a fraction ``p429`` of spontaneous 429s.

Times are multiplied by ``--time-scale`` so a run takes minutes; the pipeline's own overhead (templates,
PNG checks, store commits, Dagster runs) is *not* scaled, so the figures are a lower bound on what real
latency gives. Utilisation per endpoint = GPU busy time / wall time, from the fake server's own log, over
the generation span (first model request to last answer). Baseline in the same run: the ideal, every GPU
busy all the time (``3600 / latency`` calls per hour per endpoint = the original's 200 generations/hour on
one H100 at 18 s).

    .venv/bin/python benchmarks/bench_utilisation.py --endpoints 4 --time-scale 0.05
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isonyc_dagster.defs.definitions import build_definitions  # noqa: E402
from isonyc_dagster.defs.driver import drive  # noqa: E402
from isonyc_dagster.defs.parallel import drive_parallel  # noqa: E402
from isonyc_dagster.defs.resources import GeneratorResource  # noqa: E402
from isonyc_dagster.project import Project  # noqa: E402
from tests.dagster_helpers import project_config  # noqa: E402
from tests.fake_gpu import FakeGpuEndpoint  # noqa: E402

#: The original isometric.nyc's throughput on one H100 (Qwen-Image-Edit + LoRA, ~18 s per generation).
ORIGINAL_PER_GPU_HOUR = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoints", type=int, default=4, help="N fake GPU endpoints")
    ap.add_argument("--latency", type=float, default=18.0, help="seconds per generation (real)")
    ap.add_argument("--jitter", type=float, default=4.0, help="± seconds, uniform (real)")
    ap.add_argument("--capacity", type=int, default=2, help="requests accepted per endpoint (one on the GPU)")
    ap.add_argument(
        "--client-concurrency", type=int, help="the client's endpoint_concurrency (default: --capacity)"
    )
    ap.add_argument("--p429", type=float, default=0.03, help="fraction of spontaneous 429s")
    ap.add_argument("--retry-after", type=float, default=5.0, help="Retry-After of a 429, seconds (real)")
    ap.add_argument("--time-scale", type=float, default=0.05, help="multiplies every simulated time")
    ap.add_argument("--size", type=int, default=12, help="area side in quadrants")
    ap.add_argument(
        "--driver",
        choices=("parallel", "sequential"),
        default="sequential",
        help="parallel: runs in flight together, each in its own process, steps start when their own context is "
        "done (defs.parallel, as the Dagster daemon runs the sensor's requests); sequential: one run at a time "
        "(defs.driver, isonyc demo)",
    )
    ap.add_argument(
        "--runs-in-flight", type=int, help="parallel driver: runs at once (default: endpoints × capacity + 2)"
    )
    ap.add_argument(
        "--slots",
        choices=("host", "process"),
        default="host",
        help="host: every run process shares each endpoint's slots (GeneratorResource.slot_dir, as Definitions "
        "does); process: each run process limits only its own requests (the behaviour before)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    return ap.parse_args(argv)


def _instance(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(home))


def run(args: argparse.Namespace) -> dict:
    s = args.time_scale
    per = args.client_concurrency or args.capacity
    runs = args.runs_in_flight or args.endpoints * args.capacity + 2
    with tempfile.TemporaryDirectory(prefix="isonyc-util-") as tmp, contextlib.ExitStack() as stack:
        endpoints = [
            stack.enter_context(
                FakeGpuEndpoint(
                    latency_s=args.latency * s,
                    jitter_s=args.jitter * s,
                    capacity=args.capacity,
                    p429=args.p429,
                    retry_after_s=args.retry_after * s,
                    seed=i,
                )
            )
            for i in range(args.endpoints)
        ]
        settings = {
            "url": [f"{e.url}/edit_b64" for e in endpoints],
            "endpoint_concurrency": per,
            "max_concurrency": per * args.endpoints,
            "timeout_s": 60 * (args.latency + args.jitter) * s + 30,
            "max_attempts": 20,
            "backoff_base_s": 1.0 * s,
            "breaker_threshold": 1000,
        }
        cfg = project_config(Path(tmp), 0, 0, args.size - 1, args.size - 1, backend="modal")
        project = Project(cfg)
        defs = build_definitions(
            cfg,
            generator=GeneratorResource(
                backend="modal",
                settings_json=json.dumps(settings),
                slot_dir=str(Path(tmp) / "endpoint_slots") if args.slots == "host" else "",
            ),
        )
        with _instance(Path(tmp) / "dagster_home") as instance:
            t0, wall0 = time.monotonic(), time.time()
            if args.driver == "parallel":
                report = drive_parallel(defs, project, instance, runs_in_flight=runs, wait_s=1.0)
            else:
                report = drive(defs, project, instance, wait_s=0.05)
            t_end = time.monotonic()
        if not report.complete:
            raise SystemExit(f"bench_utilisation: the area did not complete: {report.summary}")
        starts = [a for e in endpoints for a, _ in e.busy]
        ends = [b for e in endpoints for _, b in e.busy]
        g0, g1 = min(starts), max(ends)
        span = g1 - g0
        calls = len(starts)
        return {
            "endpoints": args.endpoints,
            "latency_s": args.latency,
            "jitter_s": args.jitter,
            "capacity": args.capacity,
            "client_concurrency": per,
            "p429": args.p429,
            "time_scale": s,
            "driver": args.driver,
            "slots": args.slots,
            "runs_in_flight": runs if args.driver == "parallel" else 1,
            "quadrants": len(project.quadrants),
            "steps": len(project.plan.steps),
            "model_calls": calls,
            "http_429": sum(e.rejected for e in endpoints),
            "runs": report.runs,
            "drive_wall_s": round(t_end - t0, 2),
            "generation_span_s": round(span, 2),
            "utilisation": [round(e.busy_seconds(g0, g1) / span, 3) for e in endpoints],
            "max_in_flight": [e.max_in_flight for e in endpoints],
            "calls_per_hour_per_endpoint": round(calls / (span / s / 3600) / args.endpoints, 1),
            "quadrants_per_hour_per_endpoint": round(
                len(project.quadrants) / (span / s / 3600) / args.endpoints, 1
            ),
            "ideal_calls_per_hour_per_endpoint": round(3600 / args.latency, 1),
            "original_generations_per_hour_per_gpu": ORIGINAL_PER_GPU_HOUR,
            "run_log": [f"{e['label']} {e['seconds']:.2f}s" for e in report.log],
            # Each run's (label, start, end) in seconds from the first model request (negative: before it).
            "run_timeline": [
                (e["label"], round(a, 2), round(a + e["seconds"], 2))
                for e in report.log
                for a in [e["finished"] - e["seconds"] - wall0 - (g0 - t0)]
            ],
            # Each endpoint's GPU intervals from the first model request on (scaled seconds): where the gaps are.
            "busy": [[(round(a - g0, 2), round(b - g0, 2)) for a, b in e.busy] for e in endpoints],
            "first_call_after_s": round(g0 - t0, 2),
        }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    r = run(args)
    util = r["utilisation"]
    print(
        f"{r['endpoints']} endpoint(s), {r['latency_s']:g} ± {r['jitter_s']:g} s per call, capacity {r['capacity']} "
        f"(client sends {r['client_concurrency']}), "
        f"p429 {r['p429']:g}, time scale {r['time_scale']:g}, {r['driver']} driver, {r['slots']} slots "
        f"({r['runs_in_flight']} run(s) in flight): {r['quadrants']} quadrants, {r['steps']} steps, "
        f"{r['model_calls']} calls, {r['http_429']} × 429, {r['runs']} Dagster runs"
    )
    print(
        f"  generation span {r['generation_span_s']:.1f} s (scaled), drive {r['drive_wall_s']:.1f} s; "
        f"max in flight per endpoint {r['max_in_flight']}"
    )
    print(
        f"  utilisation per endpoint: {', '.join(f'{u:.0%}' for u in util)} "
        f"(mean {sum(util) / len(util):.0%}, min {min(util):.0%}; goal ≥ 90%)"
    )
    print(
        f"  per endpoint at real latency: {r['calls_per_hour_per_endpoint']:.0f} calls/h "
        f"(ideal {r['ideal_calls_per_hour_per_endpoint']:.0f}, ratio "
        f"{r['calls_per_hour_per_endpoint'] / r['ideal_calls_per_hour_per_endpoint']:.2f}), "
        f"{r['quadrants_per_hour_per_endpoint']:.0f} quadrants/h vs the original's "
        f"{r['original_generations_per_hour_per_gpu']} generations/h per H100"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
