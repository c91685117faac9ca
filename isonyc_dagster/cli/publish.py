"""``isonyc publish --to DEST [--dry-run]``: bring the map up to date and deploy it (only what changed).

DEST is a directory, ``gs://bucket/prefix`` or ``s3://bucket/prefix`` (default: the config's ``publish.to``). The
map in the config's ``output_dir`` is first brought up to date with the store (clipped edges and placeholders as
``[publish]`` says; skip with ``--no-build``), then its changed tiles, the PMTiles archive and the viewer go up.
Prints one JSON summary. Credentials come from the environment only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from isonyc_dagster.publish.deploy import DeployError, deploy


def add_parser(sub: Any) -> None:
    """Register ``isonyc publish`` on the main parser's sub-command set."""
    p = sub.add_parser(
        "publish", help="deploy the map (changed tiles, PMTiles, viewer) to a directory, gs:// or s3://"
    )
    p.add_argument(
        "--to", dest="dest", default=None, help="directory, gs://bucket/prefix or s3://bucket/prefix"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be uploaded and deleted; change nothing"
    )
    p.add_argument("--no-build", action="store_true", help="publish the map directory as it is")
    p.add_argument(
        "--list", action="store_true", help="with --dry-run: print every key that would be uploaded"
    )
    p.set_defaults(func=cmd_publish)


def build_map(config: Any) -> Path:
    """Bring the Deep Zoom map of the project up to date (as the Dagster export job does) and its viewer; a map
    that already matches the store is left alone (a rebuild would restamp the sidecar and so the archive)."""
    from isonyc_dagster.project import Project
    from isonyc_dagster.publish.build import build_pyramid, pyramid_staleness
    from isonyc_dagster.publish.viewer import viewer_missing, write_viewer

    p = Project(config)
    out = Path(config.output_dir)
    grid, name = p.quadrants.bbox, config.map.name
    if not pyramid_staleness(
        p.store, out, grid=grid, name=name, publish=p.publish_spec
    ) and not viewer_missing(out):
        return out
    info = build_pyramid(
        p.store,
        out,
        grid=grid,
        meta={"map": config.map.model_dump(mode="json"), "dagster_url": config.dagster_url},
        publish=p.publish_spec,
    )
    write_viewer(out, info.name)
    return out


def cmd_publish(args: argparse.Namespace) -> int:
    from isonyc_dagster.cli.main import _project_config  # the one config lookup every command uses

    config = _project_config(args)
    pub = config.publish
    dest = args.dest or pub.to
    if not dest:
        raise DeployError("no destination: pass --to DEST or set publish.to in the config")
    out = Path(config.output_dir) if args.no_build or args.dry_run else build_map(config)
    plan, stats = deploy(
        out,
        dest,
        name=config.map.name,
        dry_run=args.dry_run,
        dagster_url=pub.dagster_url,
        max_age_s=pub.max_age_s,
        tile_max_age_s=pub.tile_max_age_s,
        s3_endpoint_url=pub.s3_endpoint_url,
    )
    summary: dict[str, Any] = {
        "destination": plan.target,
        "dry_run": bool(args.dry_run),
        "summary": plan.summary(),
        "upload": len(plan.uploads),
        "tiles_per_level": {str(k): v for k, v in plan.tiles_per_level().items()},
        "unchanged": plan.skipped,
        "delete": len(plan.deletes),
    }
    if args.dry_run and args.list:
        summary["keys"] = [it.key for it in plan.uploads]
        summary["deletes"] = plan.deletes
    if stats is not None:
        summary["bytes"] = stats.bytes
        summary["seconds"] = round(stats.seconds, 2)
    print(json.dumps(summary, indent=2))
    return 0
