"""The ``isonyc`` command line.

Every project error (``IsonycError``: config, bounds, geometry, store, ...) and every OSError ends a command with one
line, ``isonyc <command>: error: <what and how to fix it>``, and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from isonyc_dagster.cli import codeserver as codeserver_cli
from isonyc_dagster.cli import lift as lift_cli
from isonyc_dagster.cli import operate as operate_cli
from isonyc_dagster.cli import publish as publish_cli
from isonyc_dagster.cli import reference as reference_cli
from isonyc_dagster.cli import region as region_cli
from isonyc_dagster.cli import store as store_cli
from isonyc_dagster.cli import style as style_cli
from isonyc_dagster.cli import tileset as tileset_cli
from isonyc_dagster.cli import training as training_cli
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.config import ProjectConfig, load_project_config
from isonyc_dagster.publish.serve import DEFAULT_IDLE_TIMEOUT_S


def _project_config(args: argparse.Namespace) -> ProjectConfig:
    import os

    from isonyc_dagster.project import CONFIG_ENV

    config = load_project_config(args.config or os.environ.get(CONFIG_ENV) or None)
    if getattr(args, "force", False):
        config = config.model_copy(update={"force_bounds": True})
    return config


def _print_json(obj: object) -> None:
    # allow_nan=False: a NaN or Infinity would print as a token no JSON parser accepts; fail loudly instead.
    print(json.dumps(obj, indent=2, allow_nan=False))


def layer_names(text: str) -> list[str]:
    """argparse type: comma-separated derived layer names (night, snow, dark)."""
    from isonyc_dagster.derive.transforms import DeriveError, parse_layer_names

    try:
        return parse_layer_names(text)
    except DeriveError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1–65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number; give 1-65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range; give 1-65535")
    return port


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return v


def cmd_locate(args: argparse.Namespace) -> int:
    from isonyc_dagster.geo.geometry import MapGeometry

    _print_json(MapGeometry(_project_config(args).map).locate(args.lat, args.lng, args.height))
    return 0


def cmd_quadrant(args: argparse.Namespace) -> int:
    from isonyc_dagster.geo.geometry import MapGeometry

    _print_json(MapGeometry(_project_config(args).map).quadrant_info(args.x, args.y))
    return 0


def cmd_bounds(args: argparse.Namespace) -> int:
    from isonyc_dagster.project import Project

    project = Project(_project_config(args))
    qs = project.quadrants
    x0, y0, x1, y1 = qs.bbox
    out = {
        "bounds": project.config.bounds,
        "quadrants": len(qs),
        "bbox": {"x0": x0, "y0": y0, "x1": x1, "y1": y1},
        "pixels": {"width": (x1 - x0 + 1) * project.geometry.q, "height": (y1 - y0 + 1) * project.geometry.q},
        "generation_steps": len(project.plan.steps),
    }
    if args.keys:
        out["keys"] = [list(k) for k in qs.keys]
    _print_json(out)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from PIL import Image

    from isonyc_dagster.geo.geometry import MapGeometry
    from isonyc_dagster.geodata.load import load_city
    from isonyc_dagster.project import ground_window
    from isonyc_dagster.render import Renderer

    cfg = _project_config(args)
    geometry = MapGeometry(cfg.map)
    n = 2 if args.tile else 1
    geometry.check_quadrant(args.x, args.y)
    geometry.check_quadrant(args.x + n - 1, args.y + n - 1)
    if args.layer == "photoreal":
        return _render_photoreal(args, cfg)
    bbox = (args.x, args.y, args.x + n - 1, args.y + n - 1)
    sources = args.geodata if args.geodata is not None else cfg.geodata
    city = load_city(geometry, sources, window=ground_window(geometry, bbox))
    renderer = Renderer(city, geometry)
    result = renderer.render_tile(args.x, args.y) if args.tile else renderer.render_quadrant(args.x, args.y)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.rgb).save(out, format="PNG")
    if args.aux:
        Path(args.aux).write_bytes(result.to_npz())
    _print_json(
        {
            "output": str(out),
            "size": list(result.rgb.shape[1::-1]),
            "synthetic": city.synthetic,
            **{k: v for k, v in result.stats.items() if isinstance(v, (int, float, str, list))},
        }
    )
    return 0


def _render_photoreal(args: argparse.Namespace, cfg: ProjectConfig) -> int:
    """``isonyc render --layer photoreal``: the 3D tileset through the whitebox camera (key from the env)."""
    import os

    from isonyc_dagster.images import png_bytes
    from isonyc_dagster.photoreal import GOOGLE_KEY_ENV
    from isonyc_dagster.project import Project

    project = Project(cfg)
    with project.photoreal_renderer(api_key=os.environ.get(GOOGLE_KEY_ENV), tileset=args.tileset) as r:
        res = r.render_tile(args.x, args.y) if args.tile else r.render_quadrant(args.x, args.y)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png_bytes(res.rgb))
    p = res.provenance
    keep = ("source", "attribution", "error_target_px", "attempts", "timings_ms", "tiles")
    _print_json({"output": str(out), "size": list(res.rgb.shape[1::-1]), **{k: p[k] for k in keep}})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from isonyc_dagster.cli.demo import run_demo

    return run_demo(
        out_dir=Path(args.out) if args.out else None,
        config_path=args.config,
        port=args.port,
        force_bounds=args.force,
        derived_layers=args.layers,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from isonyc_dagster.publish.serve import serve

    config = _project_config(args)
    directory = Path(args.directory or config.output_dir)
    dagster_url = args.dagster_url or config.dagster_url
    api, banner = None, ""
    if not args.no_console:
        from isonyc_dagster.cli.console import Console, ConsoleError, new_token

        if not dagster_url.startswith(("http://", "https://")):
            raise ConsoleError(f"--dagster-url {dagster_url!r} must start with http:// or https://")

        token = new_token()
        api = Console(config, dagster_url=dagster_url, token=token, map_dir=directory)
        banner = f"Console token (paste it in the map's panel to act): {token}\nDagster: {dagster_url}"
    serve(
        directory,
        host=args.host,
        port=args.port,
        idle_timeout_s=args.idle_timeout,
        api=api,
        dagster_url=dagster_url,
        banner=banner,
    )
    return 0


def cmd_pilot(args: argparse.Namespace) -> int:
    from isonyc_dagster.cli.pilot import run_pilot_cli
    from isonyc_dagster.geo.geometry import MapGeometry

    config = _project_config(args)
    geometry = MapGeometry(config.map)
    geometry.check_quadrant(args.x0, args.y0)
    geometry.check_quadrant(args.x0 + max(args.w, 1) - 1, args.y0 + max(args.h, 1) - 1)
    return run_pilot_cli(args, config)


def cmd_water(args: argparse.Namespace) -> int:
    from isonyc_dagster.cli.water import run_water_cli

    return run_water_cli(args, _project_config(args))


def _add_force(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--force",
        action="store_true",
        help="accept bounds that do not overlap the map's city (config: force_bounds = true)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="isonyc", description="Isometric pixel-art NYC, orchestrated by Dagster."
    )
    p.add_argument("--config", help="project config (TOML/JSON); default $ISONYC_CONFIG or the embedded demo")
    p.add_argument("--debug", action="store_true", help="on an error, show the traceback instead of one line")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("locate", help="which quadrant and pixel show a ground point (JSON)")
    s.add_argument("lat", type=float)
    s.add_argument("lng", type=float)
    s.add_argument("--height", type=float, default=0.0, help="height above ground in metres")
    s.set_defaults(func=cmd_locate)

    s = sub.add_parser("quadrant", help="ground corners and centre of a quadrant in lat/lng (JSON)")
    s.add_argument("x", type=int)
    s.add_argument("y", type=int)
    s.set_defaults(func=cmd_quadrant)

    s = sub.add_parser("bounds", help="the quadrants of the configured bounds (JSON)")
    s.add_argument("--keys", action="store_true", help="list every quadrant key")
    _add_force(s)
    s.set_defaults(func=cmd_bounds)

    s = sub.add_parser(
        "render", help="render one quadrant (or a 2×2 tile) of the whitebox or photoreal layer to PNG"
    )
    s.add_argument("x", type=int)
    s.add_argument("y", type=int)
    s.add_argument("-o", "--output", required=True, help="output PNG")
    s.add_argument(
        "--geodata", nargs="*", default=None, help="vector/OSM files (default: config, else synthetic)"
    )
    s.add_argument("--aux", help="also write the surface/building/height buffers as .npz")
    s.add_argument(
        "--tile", action="store_true", help="render the 2×2 tile whose top-left quadrant is (X, Y)"
    )
    s.add_argument(
        "--layer", choices=("whitebox", "photoreal"), default="whitebox", help="which render layer"
    )
    s.add_argument("--tileset", help="photoreal: 'google' or a 3D Tiles tileset.json URL (default: config)")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("demo", help="run the whole pipeline on the configured area through Dagster, offline")
    s.add_argument(
        "--out", default=None, help="where the map (DZI + viewer) goes (default: the config's output_dir)"
    )
    s.add_argument("--port", type=port_number, default=8000, help="port suggested for `isonyc serve`")
    s.add_argument(
        "--layers",
        type=layer_names,
        default=None,
        help="derived layers to build offline after the map, comma-separated: night,snow,dark "
        "(default: the config's derived_layers)",
    )
    _add_force(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("serve", help="serve a built map directory and its console on 127.0.0.1")
    s.add_argument(
        "directory", nargs="?", default=None, help="map directory (default: the config's output_dir)"
    )
    s.add_argument(
        "--dagster-url",
        default=None,
        help="Dagster UI for the map's links and actions (default: config dagster_url)",
    )
    s.add_argument("--no-console", action="store_true", help="serve the map alone: no /api/, no token")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=port_number, default=8000, help="TCP port, 1-65535 (default 8000)")
    s.add_argument(
        "--idle-timeout",
        type=positive_seconds,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="SECONDS",
        help=f"close connections idle this long (default {DEFAULT_IDLE_TIMEOUT_S:g})",
    )
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("pilot", help="seam pilot: K candidates per tile, scored against accepted neighbours")
    s.add_argument("--x0", type=int, required=True)
    s.add_argument("--y0", type=int, required=True)
    s.add_argument("--w", type=int, required=True)
    s.add_argument("--h", type=int, required=True)
    s.add_argument("--k", type=int, default=3)
    s.add_argument("--overlap-px", type=int, default=8)
    s.add_argument("--out", required=True)
    s.add_argument(
        "--backend", default="local", choices=["local", "pixelart", "modal", "oxen", "gemini", "vertex"]
    )
    s.add_argument("--geodata", nargs="*", default=None)
    s.set_defaults(func=cmd_pilot)

    s = sub.add_parser("water", help="water repair tools on stored generations")
    wsub = s.add_subparsers(dest="water_command", required=True)
    w = wsub.add_parser("fill", help="fill a quadrant (or a rectangle of quadrants) with water colour")
    w.add_argument("x", type=int)
    w.add_argument("y", type=int)
    w.add_argument("--to", nargs=2, type=int, metavar=("X1", "Y1"), help="fill the rectangle (x,y)…(X1,Y1)")
    w.add_argument("--color", default="#4A6372")
    w.add_argument("--mask-only", action="store_true", help="only where the geometry says water")
    w.set_defaults(func=cmd_water)
    w = wsub.add_parser("replace-color", help="softly replace a colour by the water colour in a quadrant")
    w.add_argument("x", type=int)
    w.add_argument("y", type=int)
    w.add_argument("--target", required=True, help="colour to replace, e.g. #4B6A7C")
    w.add_argument("--color", default="#4A6372")
    w.add_argument("--softness", type=float, default=30.0)
    w.set_defaults(func=cmd_water)
    store_cli.add_parser(sub)
    operate_cli.add_parser(sub)
    tileset_cli.add_parser(sub)
    reference_cli.add_parser(sub)
    region_cli.add_parser(sub)
    publish_cli.add_parser(sub)
    style_cli.add_parser(sub)
    training_cli.add_parser(sub)
    lift_cli.add_parser(sub)
    codeserver_cli.add_parser(sub)
    return p


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return "; ".join(lines) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    # Project errors and the OS's (missing files, permissions, ports) are the user's to fix: one line. ValueError
    # stays for the standard library's own refusals of bad values. Anything else is a bug and keeps its traceback.
    except (IsonycError, OSError, ValueError) as e:
        sub = getattr(args, f"{args.command}_command", None)
        prog = f"isonyc {args.command}" + (f" {sub}" if isinstance(sub, str) else "")
        if args.debug:
            traceback.print_exc()
        else:
            print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
