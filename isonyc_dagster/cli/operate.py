"""``isonyc repair|revert|regenerate``: fix a bad tile by hand (``generate.repair``).

- ``repair X Y [X Y ...]``: each quadrant generated again in place as a 1×1 infill with all its generated
  neighbours as context; a new version (``kind: repair``), the old one stays.
- ``revert X Y --version N``: version N becomes the content again (a new version ``kind: revert``).
- ``regenerate STEP --seed N [--prompt-file F]``: a whole lattice step with another seed or prompt; the steps that
  used it as context become stale (the scheduler regenerates them when ``on_stale = "regenerate"``).

Each prints one JSON summary. The wave scheduler publishes the changed quadrants in Dagster and refreshes the map;
it never overwrites these versions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from isonyc_dagster import layers
from isonyc_dagster.generate.plan import Step
from isonyc_dagster.generate.repair import OperateError, parse_step_key, regenerate, repair, revert
from isonyc_dagster.generate.step import StepResult, step_seed
from isonyc_dagster.project import Project


def add_parser(sub: Any) -> None:
    """Register ``isonyc repair``, ``revert`` and ``regenerate`` on the main parser's sub-command set."""
    r = sub.add_parser(
        "repair",
        help="generate quadrants again in place (1×1 infill, all generated neighbours as context); JSON",
    )
    r.add_argument("xy", nargs="+", type=int, metavar="X Y", help="quadrant coordinates, in pairs")
    r.add_argument("--seed", type=int, default=None, help="model seed (default: the step's own seed + 1)")
    r.set_defaults(func=cmd_repair)

    v = sub.add_parser(
        "revert", help="make an older version of a tile the content again (a new version); JSON"
    )
    v.add_argument("x", type=int)
    v.add_argument("y", type=int)
    v.add_argument("--version", type=int, required=True, help="the version to bring back (see its versions)")
    v.add_argument("--layer", default=layers.GENERATION, help=f"store layer (default {layers.GENERATION})")
    v.set_defaults(func=cmd_revert)

    g = sub.add_parser(
        "regenerate", help="generate a whole lattice step again with another seed or prompt; JSON"
    )
    g.add_argument("step", help="step key: KIND:BX,BY (block:0,0) or ASSET:BX|BY (blocks:0|0)")
    g.add_argument("--seed", type=int, required=True, help="model seed")
    g.add_argument("--prompt-file", default=None, help="read the prompt from this UTF-8 file")
    g.set_defaults(func=cmd_regenerate)


def _project(args: argparse.Namespace) -> Project:
    from isonyc_dagster.cli.main import _project_config  # the one config lookup every command uses

    return Project(_project_config(args))


def _backend_for(p: Project) -> Any:
    """``step → (backend, settings, style refs)`` the way the step assets resolve them (rules, profiles, refs)."""
    from isonyc_dagster.defs.actions import backend_for
    from isonyc_dagster.defs.resources import generator_resource

    return backend_for(p, generator_resource(p.config.backend, resolve_env=True))


def _summary(res: StepResult) -> dict[str, Any]:
    prov = res.versions[0].provenance if res.versions else res.provenance  # as committed (with its kind)
    return {
        "step": prov.get("step"),
        "kind": prov.get("kind"),
        "context": [f"{x}|{y}" for x, y in prov.get("context") or []],
        "versions": [
            {"partition": f"{v.x}|{v.y}", "version": v.version, "sha256": v.sha256} for v in res.versions
        ],
    }


def cmd_repair(args: argparse.Namespace) -> int:
    if len(args.xy) % 2:
        raise OperateError(f"repair takes quadrants as X Y pairs; got {len(args.xy)} numbers")
    keys = [(args.xy[i], args.xy[i + 1]) for i in range(0, len(args.xy), 2)]
    p = _project(args)
    plan = p.plan

    def seed(step: Step) -> int:
        return args.seed if args.seed is not None else step_seed(p.config.map.name, step, 1)

    results = []
    for x, y in keys:
        # one quadrant at a time, so a later repair sees the earlier ones as context
        own = plan.step_for_quadrant(x, y) if (x, y) in p.quadrants else None
        results += repair(
            p.store,
            p.step_inputs,
            p.quadrants,
            [(x, y)],
            backend_for=_backend_for(p),
            seed=seed(own) if own is not None else args.seed,
            quadrant_px=p.geometry.q,
        )
    print(json.dumps({"repaired": [_summary(r) for r in results]}, indent=2))
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    p = _project(args)
    v = revert(p.store, args.x, args.y, args.version, args.layer)
    print(
        json.dumps(
            {
                "reverted": {
                    "layer": args.layer,
                    "partition": f"{v.x}|{v.y}",
                    "to_version": args.version,
                    "new_version": v.version,
                    "sha256": v.sha256,
                }
            },
            indent=2,
        )
    )
    return 0


def cmd_regenerate(args: argparse.Namespace) -> int:
    p = _project(args)
    step = parse_step_key(p.plan, args.step)
    prompt = None
    if args.prompt_file:
        path = Path(args.prompt_file)
        try:
            prompt = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise OperateError(f"prompt file {path} cannot be read ({e}); give a UTF-8 text file") from None
        if not prompt:
            raise OperateError(f"prompt file {path} is empty; write the prompt in it")
    backend, settings, refs = _backend_for(p)(step)
    res = regenerate(
        p.store, p.step_inputs(), step, backend, settings, seed=args.seed, prompt=prompt, style_refs=refs
    )
    print(json.dumps({"regenerated": _summary(res)}, indent=2))
    return 0
