"""The 3D lift on a 2×2-quadrant region (the Battery, real OSM buildings): seconds per stage, splat count and
PSNR at the input view, on CPU (and CUDA when available).

Baseline measured in the same run: one full-frame forward render of the trained scene at the working resolution;
every stage is also printed as a multiple of it (comparable across machines).

    .venv/bin/python benchmarks/bench_lift.py                 # no-outpaint at the defaults, then a short coarse
    .venv/bin/python benchmarks/bench_lift.py --stage no-outpaint --max-resolution 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isonyc_dagster.geo.config import ProjectConfig  # noqa: E402
from isonyc_dagster.lift.pipeline import LiftSettings, input_from_map, run_lift  # noqa: E402
from isonyc_dagster.lift.run import input_frame  # noqa: E402
from isonyc_dagster.lift.scene import GaussianScene  # noqa: E402
from isonyc_dagster.project import Project  # noqa: E402
from tests.dagster_helpers import generate_block_offline  # noqa: E402

GEODATA = REPO.parent / "shared" / "geodata"
X0, Y0 = -25, 19


def build_project(root: Path) -> Project:
    """Stored renders of the block and its ring, the block generated offline (as the demo would)."""
    f = GEODATA / "lower_manhattan_buildings_osm.geojson"
    if not f.exists():
        sys.exit(f"missing {f}: this benchmark reads the shared NYC geodata")
    project = Project(
        ProjectConfig(store=str(root / "store"), cache_dir=str(root / "cache"), geodata=[str(f)])
    )
    generate_block_offline(project, X0, Y0, step="bench")
    return project


def baseline_render_s(inp, settings: LiftSettings, device: str) -> float:
    """Seconds of one full forward render of a freshly seeded input frame (the fastest of 3)."""
    frame = input_frame(inp, settings)
    scene = GaussianScene(torch.device(device))
    scene.add_frame(frame, settings.splat_stride)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        scene.render(frame.camera)
        times.append(time.perf_counter() - t0)
    return min(times)


def run(project: Project, settings: LiftSettings, device: str, out: Path) -> dict:
    inp = input_from_map(project, X0, Y0, 2, 2)
    base = baseline_render_s(inp, settings, device)
    t0 = time.perf_counter()
    res = run_lift(inp, settings.model_copy(update={"device": device}), out, log=lambda s: None)
    total = time.perf_counter() - t0
    print(f"\n== {device}: stage {settings.stage}, {settings.max_resolution} px, {res.rasterizer} ==")
    print(f"baseline: one full render of the input view {base:.3f} s")
    for k, v in res.stage_seconds.items():
        print(f"  {k:14s} {v:8.2f} s  ({v / base:7.1f} × baseline)")
    print(
        f"  splats {res.splat_count}, frames {res.frames}, video frames {res.video_frame_count}, "
        f"PSNR at the input view {res.psnr_input:.2f} dB, wall {total:.1f} s"
    )
    if res.coarse:
        print(
            f"  coarse frames: {[(c.dense_pose_index, round(c.inpaint_ratio, 3), c.added_splats) for c in res.coarse]}"
        )
    return {"device": device, "baseline_render_s": base, **res.summary()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("no-outpaint", "outpaint", "coarse", "all"), default="all")
    ap.add_argument("--max-resolution", type=int, default=512)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--out", type=Path, help="keep the lift outputs (ply, rrd, mp4) under this directory")
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-lift-") as tmp_dir:
        tmp = str(args.out) if args.out else tmp_dir
        t0 = time.perf_counter()
        project = build_project(Path(tmp))
        print(f"fixture (16 renders + a 2×2 pixel-art generation): {time.perf_counter() - t0:.1f} s")
        for device in devices:
            if args.stage in ("no-outpaint", "all"):
                s = LiftSettings(max_resolution=args.max_resolution)
                runs.append(run(project, s, device, Path(tmp) / f"np-{device}"))
            if args.stage in ("outpaint", "coarse", "all"):
                # Coarse at the defaults is 8 × 500 iterations: on a CPU this run is shortened (and says so).
                short = device == "cpu"
                s = LiftSettings(
                    stage="coarse" if args.stage != "outpaint" else "outpaint",
                    max_resolution=args.max_resolution // 2 if short else args.max_resolution,
                    n_frames=4 if short else 10,
                    coarse_dense_multiplier=5 if short else 10,
                    iters_per_frame=100 if short else 500,
                    video_frames=50 if short else None,
                )
                if short:
                    print(
                        "\n(CPU coarse: max_resolution/2, n_frames 4, dense ×5, 100 iterations per frame, 50 video frames)"
                    )
                runs.append(run(project, s, device, Path(tmp) / f"coarse-{device}"))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, default=float))
    print("\nGPU:", "measured" if "cuda" in devices else "not available on this machine (CPU only)")


if __name__ == "__main__":
    main()
