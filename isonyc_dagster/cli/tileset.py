"""``isonyc import`` / ``isonyc export``: tile sets on disk ↔ the store (``isonyc_dagster.tileset``).

``import`` prints one line per file (imported, unchanged, skipped with the reason) and a summary per directory;
it exits 0 when every file was imported or unchanged, 1 when some were skipped (the others are imported), and 2
with one error line when nothing could be done (a missing or empty directory, another camera).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from isonyc_dagster import layers
from isonyc_dagster.tileset import LAYOUTS, CameraMismatchError, export_tiles, import_tiles


def add_parser(sub: Any) -> None:
    """Register ``isonyc import`` and ``isonyc export`` on the main parser's sub-command set."""
    s = sub.add_parser(
        "import",
        help="import quadrants generated elsewhere (isometric-nyc's dataset or <x>_<y>.png files) as new versions",
    )
    s.add_argument(
        "dirs", nargs="+", metavar="DIR", help="directory of tiles (several: each is checked alone)"
    )
    _common(s)
    s.add_argument("--dry-run", action="store_true", help="check every file and report; write nothing")
    s.add_argument(
        "--ignore-camera",
        action="store_true",
        help="import even when generation_config.json describes another camera (recorded in provenance)",
    )
    s.add_argument("--json", action="store_true", help="print the report as JSON instead of lines")
    s.set_defaults(func=cmd_import)

    e = sub.add_parser(
        "export",
        help="write the active tiles as a tile set (isometric-nyc's dataset layout or plain) + manifest",
    )
    e.add_argument("dir", metavar="DIR", help="output directory (an earlier export there is updated)")
    _common(e)
    e.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="original",
        help="original: generations/XXXX_YYYY_HASH.png + generation_config.json; plain: <layer>/<x>/<y>.png",
    )
    e.set_defaults(func=cmd_export)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", default=layers.GENERATION, help="store layer (default: generation)")
    p.add_argument(
        "--store", default=None, help="store directory or gs://bucket/prefix (default: the config's store)"
    )


def cmd_import(args: argparse.Namespace) -> int:
    from isonyc_dagster.cli.main import _project_config  # the one config lookup every command uses
    from isonyc_dagster.store import open_store

    config = _project_config(args)
    location = args.store or config.store
    # A dry run writes nothing, not even a new store: a store that does not exist yet is an empty one.
    fresh = args.dry_run and "://" not in location and not Path(location).exists()
    store = None if fresh else open_store(location, read_only=args.dry_run)
    skipped = 0
    reports: list[dict[str, Any]] = []
    try:
        for d in args.dirs:
            try:
                report = import_tiles(
                    store,
                    Path(d),
                    config.map,
                    layer=args.layer,
                    dry_run=args.dry_run,
                    ignore_camera=args.ignore_camera,
                )
            except CameraMismatchError as e:
                if len(args.dirs) == 1:
                    raise
                skipped += 1  # with several directories, one of another camera does not stop the others
                reports.append({"directory": d, "refused": str(e)})
                if not args.json:
                    print(f"skipped {d}: {e}")
                continue
            skipped += report.skipped
            reports.append(report.to_dict())
            if not args.json:
                print(report.text())
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps(reports, indent=2))
    return 1 if skipped else 0


def cmd_export(args: argparse.Namespace) -> int:
    from isonyc_dagster.cli.main import _project_config
    from isonyc_dagster.store import open_store

    config = _project_config(args)
    store = open_store(args.store or config.store, read_only=True)
    try:
        report = export_tiles(store, Path(args.dir), config.map, layout=args.layout, layer=args.layer)
    finally:
        store.close()
    print(report.summary())
    for name in report.removed:
        print(f"removed {name}: no longer an active tile")
    return 0
