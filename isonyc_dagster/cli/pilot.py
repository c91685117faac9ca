"""``isonyc pilot``: the seam pilot on real renders (``project.run_project_pilot``) from the command line."""

from __future__ import annotations

import argparse
import json

from isonyc_dagster.generate.pilot import PilotPatch
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.project import run_project_pilot


def run_pilot_cli(args: argparse.Namespace, config: ProjectConfig) -> int:
    from isonyc_dagster.defs.resources import generator_resource, project_style

    name = "pixelart" if args.backend == "local" else args.backend
    backend = generator_resource(name, resolve_env=True, style=project_style(config)).build(config.map)
    try:
        patch = PilotPatch(args.x0, args.y0, args.w, args.h, args.k, args.overlap_px)
        report = run_project_pilot(config, backend, patch, args.out, geodata=args.geodata)
    finally:
        backend.close()
    print(json.dumps({k: v for k, v in report.items() if k != "tiles"}, indent=2, default=str))
    return 0
