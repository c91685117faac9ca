"""``isonyc pilot``: the seam pilot on the project's renders, with any backend (``local`` = offline pixel art)."""

from __future__ import annotations

import argparse
import json
import os

from .config import ProjectConfig
from .geodata.load import load_city
from .geometry import MapGeometry
from .pilot import run_pilot
from .project import ground_window
from .render import Renderer, RenderResult


def pilot_backend(name: str):
    """``local``/``pixelart`` → the offline backend; remote ones read their settings from the environment."""
    from .backends.registry import make_backend
    from .definitions import generator_resource

    if name in ("local", "pixelart"):
        return make_backend("pixelart")
    res = generator_resource(ProjectConfig(backend=name))
    settings = json.loads(res.settings_json)
    for field in ("api_key", "auth_secret"):
        value = getattr(res, field)
        env = getattr(value, "env_var_name", None)
        if env and os.environ.get(env):
            settings[field] = os.environ[env]
    return make_backend(name, **settings)


def run_pilot_cli(args: argparse.Namespace, config: ProjectConfig) -> int:
    geometry = MapGeometry(config.map)
    sources = args.geodata if args.geodata is not None else config.geodata
    # The left/top padding row and column are rendered too.
    bbox = (args.x0 - 1, args.y0 - 1, args.x0 + args.w - 1, args.y0 + args.h - 1)
    renderer = Renderer(load_city(geometry, sources, window=ground_window(geometry, bbox)), geometry)
    backend = pilot_backend(args.backend)
    renders: dict[tuple[int, int], RenderResult] = {}

    def render(x: int, y: int) -> RenderResult:
        if (x, y) not in renders:
            renders[(x, y)] = renderer.render_quadrant(x, y)
        return renders[(x, y)]

    try:
        report = run_pilot(
            args.x0,
            args.y0,
            args.w,
            args.h,
            args.k,
            args.overlap_px,
            args.out,
            backend,
            lambda x, y: render(x, y).rgb,
            render_aux=lambda x, y: render(x, y).aux(),
            prompt=config.prompt,
        )
    finally:
        backend.close()
    summary = {k: v for k, v in report.items() if k != "tiles"}
    print(json.dumps(summary, indent=2, default=str))
    return 0
