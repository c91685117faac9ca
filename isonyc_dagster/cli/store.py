"""``isonyc store verify|rebuild-index|checkpoint``: check, repair and recover the tile store.

``verify`` prints one JSON summary and exits 0 when the store is clean, 1 when problems were found (with
``--repair``, 1 as well: the summary lists every change and whether the store is clean afterwards).
``rebuild-index`` prints what it rebuilt, ``checkpoint`` SQLite's counts. Errors are one line and exit code 2, like every command.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from isonyc_dagster.store import StoreError, open_store, rebuild_index
from isonyc_dagster.store.index import IndexedTileStore
from isonyc_dagster.store.verify import verify_store


def add_parser(sub: Any) -> None:
    """Register ``isonyc store …`` on the main parser's sub-command set."""
    s = sub.add_parser("store", help="check, repair and recover the tile store")
    ssub = s.add_subparsers(dest="store_command", required=True)

    v = ssub.add_parser(
        "verify",
        help="check every active tile blob (missing, corrupt, undecodable); JSON summary, exit 1 on problems",
    )
    _location(v)
    v.add_argument(
        "--repair",
        action="store_true",
        help="restore swapped blobs, delete corrupt ones, move each broken active tile back to its newest "
        "intact version (or clear it, so that it is generated again); lists every change",
    )
    v.add_argument(
        "--all-versions", action="store_true", help="check every version, not only the active ones"
    )
    v.add_argument(
        "--layer", action="append", dest="layers", metavar="L", help="only this layer (repeatable)"
    )
    v.set_defaults(func=cmd_store)

    r = ssub.add_parser(
        "rebuild-index",
        help="rebuild the index from the commit journal next to the blobs (GCS: the local replica from the "
        "bucket's log); stop every writer first",
    )
    _location(r)
    r.set_defaults(func=cmd_store)

    c = ssub.add_parser(
        "checkpoint", help="fold the index's write-ahead log into index.sqlite (as each run's end does)"
    )
    _location(c)
    c.set_defaults(func=cmd_store)


def _location(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store", default=None, help="store directory or gs://bucket/prefix (default: the config's store)"
    )


def cmd_store(args: argparse.Namespace) -> int:
    if args.store:
        location = args.store
    else:
        from isonyc_dagster.cli.main import _project_config  # the one config lookup every command uses

        location = _project_config(args).store
    if args.store_command == "rebuild-index":
        _print(rebuild_index(location))
        return 0
    if args.store_command == "checkpoint":
        store = open_store(location)
        try:
            _print({"store": location, **store.checkpoint()})
        finally:
            store.close()
        return 0
    store = open_store(location, read_only=not args.repair)
    try:
        if not isinstance(store, IndexedTileStore):
            raise StoreError(f"{type(store).__name__} at {location} cannot be verified")
        report = verify_store(store, repair=args.repair, all_versions=args.all_versions, layers=args.layers)
    finally:
        store.close()
    _print(report)
    return 0 if report["clean"] else 1


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2))
