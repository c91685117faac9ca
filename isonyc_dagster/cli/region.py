"""``isonyc region add|list|rm``: the named regions that 3D scenes are lifted from (``[lift]`` projects).

``add`` registers the rectangle and adds the region as a partition of ``scene_3d`` in the Dagster instance of
``$DAGSTER_HOME`` (default ``data/dagster_home``, as ``isonyc demo``), so it shows in the UI at once; the
``scene_scheduler`` sensor then lifts it once its quadrants are generated. ``rm`` forgets the region and removes the
partition; the scene's files stay in the map directory. Each prints JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isonyc_dagster.lift.regions import Region, RegionError, project_registry
from isonyc_dagster.project import Project
from isonyc_dagster.publish.serve import ApiResponse

if TYPE_CHECKING:
    import dagster as dg


def add_parser(sub: Any) -> None:
    """Register ``isonyc region …`` on the main parser's sub-command set."""
    s = sub.add_parser("region", help="named regions of the map for 3D scenes (add, list, rm); JSON")
    rsub = s.add_subparsers(dest="region_command", required=True)
    a = rsub.add_parser(
        "add", help="register a rectangle of quadrants under a name and add its scene partition"
    )
    a.add_argument("name", help="lower-case letters, digits, '-' and '_' (e.g. times-square)")
    for flag, what in (("--x0", "left quadrant x"), ("--y0", "top quadrant y")):
        a.add_argument(flag, type=int, required=True, help=what)
    a.add_argument("--w", type=int, required=True, help="width in quadrants")
    a.add_argument("--h", type=int, required=True, help="height in quadrants")
    a.set_defaults(func=cmd_region)
    rsub.add_parser("list", help="every region with its rectangle").set_defaults(func=cmd_region)
    r = rsub.add_parser("rm", help="forget a region and remove its scene partition (its files stay)")
    r.add_argument("name")
    r.set_defaults(func=cmd_region)


def _instance() -> dg.DagsterInstance:
    import dagster as dg

    from isonyc_dagster.cli.demo import ensure_dagster_home

    ensure_dagster_home(Path("data/dagster_home"))
    return dg.DagsterInstance.get()


def add_region(
    project: Project, name: str, x0: int, y0: int, w: int, h: int, instance: dg.DagsterInstance | None = None
) -> Region:
    """Register the region and add its ``regions`` partition (to ``instance``, else ``$DAGSTER_HOME``'s)."""
    from isonyc_dagster.defs.assets.scene import REGIONS_NAME

    region = project_registry(project).add(name, x0, y0, w, h)
    inst = instance or _instance()
    try:
        if not inst.has_dynamic_partition(REGIONS_NAME, region.name):
            inst.add_dynamic_partitions(REGIONS_NAME, [region.name])
    finally:
        if instance is None:
            inst.dispose()
    return region


def remove_region(project: Project, name: str, instance: dg.DagsterInstance | None = None) -> Region:
    """Forget the region and delete its ``regions`` partition (its materializations stay in the event log)."""
    from isonyc_dagster.defs.assets.scene import REGIONS_NAME

    region = project_registry(project).remove(name)
    inst = instance or _instance()
    try:
        if inst.has_dynamic_partition(REGIONS_NAME, region.name):
            inst.delete_dynamic_partition(REGIONS_NAME, region.name)
    finally:
        if instance is None:
            inst.dispose()
    return region


def cmd_region(args: argparse.Namespace) -> int:
    from isonyc_dagster.cli.main import _project_config  # the one config lookup every command uses

    project = Project(_project_config(args))
    if args.region_command == "add":
        region = add_region(project, args.name, args.x0, args.y0, args.w, args.h)
        out: Any = {"added": region.to_json(), "regions_file": str(project_registry(project).path)}
    elif args.region_command == "rm":
        out = {"removed": remove_region(project, args.name).to_json()}
    else:
        reg = project_registry(project)
        out = {"regions_file": str(reg.path), "regions": [r.to_json() for r in reg.list()]}
    print(json.dumps(out, indent=2))
    return 0


# --- the map console's endpoints (``cli.console`` mounts them at /api/regions and /api/region) ------------------


def _api_json(status: int, obj: Any) -> ApiResponse:
    return ApiResponse(status, json.dumps(obj).encode())


def api_regions(project: Project, map_dir: Path) -> ApiResponse:
    """``GET /api/regions``: every registered region, and whether its scene is in the map directory yet."""
    if project.config.lift is None:
        return _api_json(200, {"enabled": False, "regions": []})
    try:
        regions = project_registry(project).list()
    except RegionError as e:
        return _api_json(400, {"error": str(e)})
    out = [{**r.to_json(), "scene": (map_dir / "scenes" / r.name / "gf.ply").is_file()} for r in regions]
    return _api_json(200, {"enabled": True, "regions": out})


def api_add_region(project: Project, body: bytes, instance: dg.DagsterInstance | None = None) -> ApiResponse:
    """``POST /api/region`` ``{name, x0, y0, w, h}`` (the console token is checked by the console): registers the
    region and adds its partition; ``scene_scheduler`` lifts it once its quadrants are generated."""
    try:
        req = json.loads(body or b"{}")
        if not isinstance(req, dict):
            raise ValueError
    except ValueError:
        return _api_json(400, {"error": "the request body must be a JSON object {name, x0, y0, w, h}"})
    missing = [k for k in ("name", "x0", "y0", "w", "h") if k not in req]
    if missing:
        return _api_json(400, {"error": f"missing {', '.join(missing)}; send {{name, x0, y0, w, h}}"})
    try:
        region = add_region(project, req["name"], req["x0"], req["y0"], req["w"], req["h"], instance=instance)
    except RegionError as e:
        return _api_json(400, {"error": str(e)})
    return _api_json(200, {"added": region.to_json(), "viewer": f"splat.html?scene={region.name}"})
