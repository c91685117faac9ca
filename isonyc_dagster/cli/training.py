"""``isonyc dataset star|unstar|pairs|build``: training pairs and the omni infill dataset (``training/``).

``star`` marks accepted quadrants for training (each pair is the 2×2 tile with the quadrant at top-left);
``pairs`` writes the store's pairs, or with ``--from-model`` sends chosen renders to Gemini/Vertex with the style
references for fresh pairs; ``build`` writes the next dataset version (Parquet index + Hugging Face image folder),
optionally uploading it. Settings come from the config's ``[training]`` table (defaults when absent). Each command
prints JSON; errors are one line and exit code 2, like every command.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from isonyc_dagster import layers
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.config import ProjectConfig, TrainingConfig


class DatasetArgsError(IsonycError, ValueError):
    """Bad arguments to ``isonyc dataset``."""


def add_parser(sub: Any) -> None:
    """Register ``isonyc dataset …`` on the main parser's sub-command set."""
    d = sub.add_parser("dataset", help="training pairs and the omni infill dataset for fine-tuning")
    dsub = d.add_subparsers(dest="dataset_command", required=True)
    for name, text in (
        ("star", "mark quadrants (X Y pairs) for training; each needs an active generation"),
        ("unstar", "unmark quadrants (X Y pairs)"),
    ):
        p = dsub.add_parser(name, help=text)
        p.add_argument("coords", nargs="+", type=int, metavar="X Y", help="quadrant x y, repeated")
        p.set_defaults(func=cmd_dataset)
    p = dsub.add_parser("pairs", help="write render/generation pairs of the starred and reference quadrants")
    p.add_argument(
        "--from-model",
        metavar="BACKEND",
        choices=("gemini", "vertex"),
        help="instead, send the renders of --quadrants to this model with the style references (fresh pairs)",
    )
    p.add_argument(
        "--quadrants", nargs="+", type=int, metavar="X Y", help="with --from-model: quadrant x y, repeated"
    )
    p.add_argument(
        "--include-passed", action="store_true", help="also pair every quadrant whose QA checks pass"
    )
    p.add_argument("--seed", type=int, default=0, help="with --from-model: the first request's seed")
    p.set_defaults(func=cmd_dataset)
    p = dsub.add_parser("build", help="build the next omni dataset version from the newest pairs")
    p.add_argument("--seed", type=int, default=None, help="the dataset's seed (default: [training] seed)")
    p.add_argument("--upload", metavar="URI", help="also upload it (gs://, s3:// or a directory)")
    p.set_defaults(func=cmd_dataset)


def _quadrants(coords: list[int] | None, cmd: str) -> list[tuple[int, int]]:
    if not coords or len(coords) % 2:
        raise DatasetArgsError(
            f"give quadrants as X Y pairs, e.g. `isonyc dataset {cmd} 3 4 5 4` (got {len(coords or [])} numbers)"
        )
    return list(zip(coords[::2], coords[1::2], strict=True))


def _training(config: ProjectConfig) -> TrainingConfig:
    return config.training or TrainingConfig()


def cmd_dataset(args: argparse.Namespace) -> int:
    from isonyc_dagster.cli.main import _project_config  # the one config lookup every command uses

    config = _project_config(args)
    cmd = args.dataset_command
    if cmd in ("star", "unstar"):
        out = _star(config, _quadrants(args.coords, cmd), cmd == "star")
    elif cmd == "pairs":
        out = _pairs(config, args)
    else:
        out = _build(config, args)
    print(json.dumps(out, indent=2))
    return 0


def _star(config: ProjectConfig, quadrants: list[tuple[int, int]], on: bool) -> dict[str, Any]:
    from isonyc_dagster.store import open_store

    store = open_store(config.store)
    try:
        if on:
            active = store.active_map(layers.GENERATION, quadrants)
            missing = [list(q) for q in quadrants if q not in active]
            if missing:
                raise DatasetArgsError(
                    f"quadrant(s) {missing} have no generation; only accepted (generated) tiles can be starred"
                )
        for x, y in quadrants:
            store.set_flags(x, y, starred=on)
        starred = [[f.x, f.y] for f in store.list_flags(starred=True)]
    finally:
        store.close()
    return {"store": config.store, "starred": starred}


def _pairs(config: ProjectConfig, args: argparse.Namespace) -> dict[str, Any]:
    from isonyc_dagster.project import Project
    from isonyc_dagster.training.pairs import build_pairs, fresh_pairs, write_pairs

    t = _training(config)
    project = Project(config)
    if args.from_model:
        from isonyc_dagster.defs.resources import generator_resource

        quadrants = _quadrants(args.quadrants, "pairs --from-model gemini --quadrants")
        profile = config.backends.get(args.from_model)
        backend = generator_resource(args.from_model, resolve_env=True).build_for(
            config.map, args.from_model, profile_settings=profile.settings if profile else None
        )
        prompt = (profile.prompt if profile else None) or None
        report = fresh_pairs(
            project.store, backend, quadrants, project.reference_selector(), prompt=prompt, seed=args.seed
        )
        written = write_pairs(t.dir, f"model-{args.from_model}", report)
    else:
        if args.quadrants:
            raise DatasetArgsError(
                "--quadrants goes with --from-model; to pair store tiles, star them instead"
            )
        passed: list[tuple[int, int]] = []
        if args.include_passed or t.include_passed:
            from isonyc_dagster.defs.assets.training import passed_quadrants

            passed = passed_quadrants(project)
        written, report = build_pairs(project.store, t.dir, passed=passed)
    return {
        "pairs": str(written.path),
        "version": written.version,
        "reused": written.reused,
        "count": written.pairs,
        "skipped": report.skipped,
    }


def _build(config: ProjectConfig, args: argparse.Namespace) -> dict[str, Any]:
    from isonyc_dagster.training.omni import build_omni

    t = _training(config)
    result = build_omni(
        t.dir,
        prompt=config.prompt,
        seed=t.seed if args.seed is None else args.seed,
        variants_per_pair=t.variants_per_pair,
        validation_fraction=t.validation_fraction,
        split_block=t.split_block,
        preprocess=t.preprocess,
    )
    out = result.summary()
    target = args.upload or t.upload_to
    if target:
        from isonyc_dagster.publish.deploy import open_target
        from isonyc_dagster.training.dataset import upload_dataset

        out["uploaded"] = {
            "to": target,
            "files": upload_dataset(result.path, open_target(target), prefix=f"omni/v{result.version}"),
        }
    return out
