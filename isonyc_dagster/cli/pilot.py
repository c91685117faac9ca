"""The seam pilot on real renders: ``isonyc pilot`` and the ``seam_pilot_job`` Dagster job share this."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from isonyc_dagster.backends.base import ImageBackend
from isonyc_dagster.generate.pilot import run_pilot
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geodata.load import load_city
from isonyc_dagster.project import ground_window
from isonyc_dagster.render import Renderer, RenderResult


def run_project_pilot(
    config: ProjectConfig,
    backend: ImageBackend,
    *,
    x0: int,
    y0: int,
    w: int,
    h: int,
    k: int,
    overlap_px: int,
    out_dir: str | Path,
    geodata: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Render the patch (and its left/top padding) from the project's geodata and run the pilot on it."""
    geometry = MapGeometry(config.map)
    sources = list(geodata) if geodata is not None else config.geodata
    bbox = (x0 - 1, y0 - 1, x0 + w - 1, y0 + h - 1)
    renderer = Renderer(load_city(geometry, sources, window=ground_window(geometry, bbox)), geometry)
    renders: dict[tuple[int, int], RenderResult] = {}

    def render(x: int, y: int) -> RenderResult:
        if (x, y) not in renders:
            renders[(x, y)] = renderer.render_quadrant(x, y)
        return renders[(x, y)]

    return run_pilot(
        x0,
        y0,
        w,
        h,
        k,
        overlap_px,
        out_dir,
        backend,
        lambda x, y: render(x, y).rgb,
        render_aux=lambda x, y: render(x, y).aux(),
        prompt=config.prompt,
        overwrite=overwrite,
    )


def run_pilot_cli(args: argparse.Namespace, config: ProjectConfig) -> int:
    from isonyc_dagster.defs.resources import generator_resource

    name = "pixelart" if args.backend == "local" else args.backend
    backend = generator_resource(name, resolve_env=True).build(config.map)
    try:
        report = run_project_pilot(
            config,
            backend,
            x0=args.x0,
            y0=args.y0,
            w=args.w,
            h=args.h,
            k=args.k,
            overlap_px=args.overlap_px,
            out_dir=args.out,
            geodata=args.geodata,
        )
    finally:
        backend.close()
    print(json.dumps({k: v for k, v in report.items() if k != "tiles"}, indent=2, default=str))
    return 0
