"""``isonyc reference add|remove|list``: mark accepted quadrants as style references for Gemini/Vertex steps.

A reference is a quadrant flagged ``reference`` in the store that has an active generation; steps send the
nearest ones (``generate.references``). ``add`` refuses a quadrant with no generation (nothing to show a model).
Each command prints JSON; errors are one line and exit code 2, like every command.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from isonyc_dagster import layers
from isonyc_dagster.errors import IsonycError


class ReferenceArgsError(IsonycError, ValueError):
    """Bad quadrant arguments to ``isonyc reference``."""


def add_parser(sub: Any) -> None:
    """Register ``isonyc reference …`` on the main parser's sub-command set."""
    r = sub.add_parser("reference", help="mark quadrants as style references for models that take them")
    rsub = r.add_subparsers(dest="reference_command", required=True)
    for name, text in (
        ("add", "mark quadrants (X Y pairs) as references; each needs an active generation"),
        ("remove", "unmark quadrants (X Y pairs)"),
    ):
        p = rsub.add_parser(name, help=text)
        p.add_argument("coords", nargs="+", type=int, metavar="X Y", help="quadrant x y, repeated")
        _store_arg(p)
        p.set_defaults(func=cmd_reference)
    p = rsub.add_parser("list", help="the marked references, with their active generation")
    _store_arg(p)
    p.set_defaults(func=cmd_reference)


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store", default=None, help="store directory or gs://bucket/prefix (default: the config's)"
    )


def _pairs(coords: list[int]) -> list[tuple[int, int]]:
    if len(coords) % 2:
        raise ReferenceArgsError(
            f"got {len(coords)} numbers; give quadrants as X Y pairs, e.g. `isonyc reference add 3 4 5 4`"
        )
    return list(zip(coords[::2], coords[1::2], strict=True))


def cmd_reference(args: argparse.Namespace) -> int:
    from isonyc_dagster.store import open_store

    if args.store:
        location = args.store
    else:
        from isonyc_dagster.cli.main import _project_config  # the one config lookup every command uses

        location = _project_config(args).store
    cmd = args.reference_command
    pairs = _pairs(args.coords) if cmd != "list" else []
    store = open_store(location, read_only=cmd == "list")
    try:
        if cmd == "add":
            active = store.active_map(layers.GENERATION, pairs)
            missing = [list(q) for q in pairs if q not in active]
            if missing:
                raise ReferenceArgsError(
                    f"quadrant(s) {missing} have no generation; a reference must be an accepted tile "
                    "(generate it first, or pick generated quadrants)"
                )
        for x, y in pairs:
            store.set_flags(x, y, reference=cmd == "add")
        refs = store.list_flags(reference=True)
        active = store.active_map(layers.GENERATION, [(f.x, f.y) for f in refs])
        listing = [
            {
                "x": f.x,
                "y": f.y,
                "generation_version": v.version if v else None,
                "sha256": v.sha256 if v else None,
            }
            for f in refs
            for v in [active.get((f.x, f.y))]
        ]
    finally:
        store.close()
    out: dict[str, Any] = {"store": location, "references": listing}
    if cmd != "list":
        out[{"add": "added", "remove": "removed"}[cmd]] = [list(q) for q in pairs]
    print(json.dumps(out, indent=2))
    return 0
