"""``isonyc lift``: a rectangle of the map (or an image with a depth map) → a Gaussian-splat scene.

Writes ``gf.ply``, ``lift.rrd``, ``flythrough.mp4`` and ``summary.json`` to ``--out`` and prints the summary as
JSON. Every knob of ``lift.pipeline.LiftSettings`` is a flag with the same name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: Flags of LiftSettings fields: (flag, field, type, help).
_KNOBS: tuple[tuple[str, str, Any, str], ...] = (
    (
        "--expansion-percent",
        "expansion_percent",
        float,
        "border added per side by outpaint (fraction, 0.3 = 30 %%)",
    ),
    ("--n-frames", "n_frames", int, "frames of the coarse scene, input and outpaint included"),
    ("--traj-forward-ratio", "traj_forward_ratio", float, "trajectory zoom-in (orthographic 'forward')"),
    ("--traj-backward-ratio", "traj_backward_ratio", float, "trajectory zoom-out ('backward')"),
    ("--traj-max-percentage", "traj_max_percentage", float, "orbit radius: yaw amplitude in %% of 60°"),
    ("--coarse-margin", "coarse_margin", int, "extra pixels of coarse candidate frames"),
    (
        "--coarse-min-inpaint-ratio",
        "coarse_min_inpaint_ratio",
        float,
        "smallest hole ratio a coarse pose may have",
    ),
    (
        "--coarse-max-inpaint-ratio",
        "coarse_max_inpaint_ratio",
        float,
        "largest hole ratio a coarse pose may have",
    ),
    (
        "--coarse-adjacent-exclusion",
        "coarse_adjacent_exclusion",
        int,
        "skip poses within ±N of selected ones",
    ),
    (
        "--coarse-dense-multiplier",
        "coarse_dense_multiplier",
        int,
        "candidate poses per frame of the trajectory",
    ),
    ("--init-iters", "init_iters", int, "training iterations after initialisation"),
    ("--iters-per-frame", "iters_per_frame", int, "training iterations per added coarse frame"),
    ("--max-resolution", "max_resolution", int, "longest working side in pixels (multiples of 32)"),
    ("--video-frames", "video_frames", int, "fly-through frames (default min(frames × 25, 150))"),
    ("--seed", "seed", int, "random seed"),
)


def add_parser(sub: Any) -> None:
    """Register ``isonyc lift`` on the main parser's sub-command set."""
    p = sub.add_parser(
        "lift",
        help="lift a map rectangle (or an image with a depth map) to a Gaussian-splat scene (.ply, .rrd, .mp4)",
    )
    src = p.add_argument_group("input (a map rectangle, or --image-path)")
    src.add_argument("--x0", type=int, help="left quadrant of the rectangle")
    src.add_argument("--y0", type=int, help="top quadrant of the rectangle")
    src.add_argument("--w", type=int, default=2, help="width in quadrants (default 2)")
    src.add_argument("--h", type=int, default=2, help="height in quadrants (default 2)")
    src.add_argument("--image-path", type=Path, help="lift this image instead of a map rectangle")
    src.add_argument("--depth-path", type=Path, help="its depth map (.npy metres or 16-bit PNG mm), required")
    p.add_argument("--stage", choices=("no-outpaint", "outpaint", "fine", "coarse"), default="no-outpaint")
    p.add_argument("--out", type=Path, default=None, help="output directory (default data/lift/<name>)")
    p.add_argument(
        "--export-gaussians-ply-path",
        type=Path,
        default=None,
        help="also write the splats here (a directory gets gf.ply inside)",
    )
    for flag, field, typ, hlp in _KNOBS:
        p.add_argument(flag, dest=field, type=typ, default=None, help=hlp)
    p.add_argument("--coarse-fallback-mode", choices=("none", "closest"), default=None)
    p.add_argument(
        "--coarse-print-summary",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print the [COARSE] summary (default on)",
    )
    p.add_argument(
        "--splat-stride", type=int, choices=(1, 2), default=None, help="a splat per pixel or per 2×2"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.set_defaults(func=cmd_lift)


def settings_from_args(args: argparse.Namespace) -> Any:
    """``LiftSettings`` from the flags that were given (the rest keep their defaults)."""
    from pydantic import ValidationError

    from isonyc_dagster.lift.pipeline import LiftError, LiftSettings

    fields = [f for _, f, _, _ in _KNOBS] + [
        "coarse_fallback_mode",
        "coarse_print_summary",
        "splat_stride",
        "device",
    ]
    given = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    given["stage"] = args.stage
    if args.export_gaussians_ply_path is not None:
        given["export_gaussians_ply_path"] = args.export_gaussians_ply_path
    try:
        return LiftSettings(**given)
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-")
        raise LiftError(f"{flag}: {err['msg']}") from None


def cmd_lift(args: argparse.Namespace) -> int:
    from isonyc_dagster.cli.main import _project_config
    from isonyc_dagster.lift.pipeline import LiftError, input_from_image, input_from_map, run_lift

    settings = settings_from_args(args)
    rect = args.x0 is not None or args.y0 is not None
    if args.image_path is not None and rect:
        raise LiftError("give a map rectangle (--x0 --y0 --w --h) or --image-path, not both")
    if args.image_path is not None:
        inp = input_from_image(args.image_path, args.depth_path)
    elif args.x0 is not None and args.y0 is not None:
        from isonyc_dagster.project import Project

        inp = input_from_map(Project(_project_config(args)), args.x0, args.y0, args.w, args.h)
    else:
        raise LiftError("nothing to lift: give a map rectangle (--x0 --y0 [--w --h]) or --image-path")
    out = args.out or Path("data/lift") / inp.name
    result = run_lift(inp, settings, out)
    print(json.dumps(result.summary(), indent=2, allow_nan=False))
    return 0
