"""``console_action_job``: a person's repair, revert or regenerate as a Dagster run.

The map console (``isonyc serve``) launches this job through the webserver's GraphQL API, so every action a person
takes in the map is a run in the Runs page, tagged ``isonyc/action`` and ``isonyc/quadrant``. The op does what the
CLI's ``isonyc repair|revert|regenerate`` do (``generate.repair``), then redraws the changed quadrants of the map
(``publish.build.update_pyramid``) so the viewer shows the new pixels; the wave scheduler publishes ``generation``.
"""

from pathlib import Path
from typing import Any

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.backends.base import ImageBackend
from isonyc_dagster.defs.checks import partition_url
from isonyc_dagster.defs.partitions import key2
from isonyc_dagster.defs.resources import GeneratorResource, ProjectResource
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.generate.plan import Quadrant, Step
from isonyc_dagster.generate.references import StyleRefs
from isonyc_dagster.generate.repair import OperateError, parse_step_key, regenerate, repair, revert
from isonyc_dagster.generate.rules import step_settings
from isonyc_dagster.generate.step import StepSettings, step_seed
from isonyc_dagster.project import Project
from isonyc_dagster.publish.build import update_pyramid
from isonyc_dagster.publish.layout import PyramidError

#: The actions the job runs (the console's buttons).
ACTIONS = ("repair", "revert", "regenerate")
ACTION_JOB = "console_action_job"


def backend_for(p: Project, gen: GeneratorResource) -> Any:
    """``step → (backend, settings, style refs)`` the way the step assets resolve them (rules, profiles, refs)."""
    selector = p.reference_selector()

    def resolve(step: Step) -> tuple[ImageBackend, StepSettings, StyleRefs | None]:
        mi = p.step_rules.resolve(step)
        profile = p.config.backends.get(mi.backend)
        prof = dict(profile.settings) if profile is not None else {}
        backend = gen.build_for(p.config.map, mi.backend, mi.model, prof)
        selector.check(backend)
        mi = mi.with_backend_default(backend)
        settings = step_settings(
            mi,
            generator_key=gen.identity_for(mi.backend, mi.model, mi.prompt or "", prof),
            candidates=gen.candidates,
        )
        return backend, settings, selector.select(step, backend)

    return resolve


class ActionConfig(dg.Config):
    """What to do: ``repair`` (``quadrants``, optional ``seed``), ``revert`` (one quadrant, ``version``) or
    ``regenerate`` (``step`` key such as ``blocks:0|0``, ``seed``, optional ``prompt``)."""

    action: str
    quadrants: list[str] = []
    seed: int | None = None
    version: int = 0
    step: str = ""
    prompt: str = ""


def _keys(texts: list[str]) -> list[Quadrant]:
    out = []
    for t in texts:
        a, _, b = t.partition("|")
        try:
            out.append((int(a), int(b)))
        except ValueError:
            raise OperateError(f"quadrant {t!r} is not a partition key X|Y (e.g. 1|0)") from None
    return out


def run_action(p: Project, gen: GeneratorResource, config: ActionConfig) -> tuple[list[Quadrant], list[str]]:
    """Do the action in the store; returns the changed quadrants and one line per new version."""
    keys = _keys(config.quadrants)
    lines: list[str] = []
    if config.action == "repair":
        if not keys:
            raise OperateError("repair needs at least one quadrant (partition key X|Y)")
        changed: list[Quadrant] = []
        for x, y in keys:
            own = p.plan.step_for_quadrant(x, y) if (x, y) in p.quadrants else None
            seed = config.seed
            if seed is None and own is not None:
                seed = step_seed(p.config.map.name, own, 1)
            for res in repair(
                p.store,
                p.step_inputs,
                p.quadrants,
                [(x, y)],
                backend_for=backend_for(p, gen),
                seed=seed,
                quadrant_px=p.geometry.q,
            ):
                for v in res.versions:
                    changed.append((v.x, v.y))
                    lines.append(f"generation {key2(v.x, v.y)}: version {v.version} (repair)")
        return changed, lines
    if config.action == "revert":
        if len(keys) != 1:
            raise OperateError("revert takes exactly one quadrant (partition key X|Y)")
        v = revert(p.store, *keys[0], config.version)
        return [keys[0]], [f"generation {key2(v.x, v.y)}: version {v.version} (revert to {config.version})"]
    if config.action == "regenerate":
        if config.seed is None:
            raise OperateError("regenerate needs a seed")
        step = parse_step_key(p.plan, config.step)
        backend, settings, refs = backend_for(p, gen)(step)
        res = regenerate(
            p.store,
            p.step_inputs(),
            step,
            backend,
            settings,
            seed=config.seed,
            prompt=config.prompt.strip() or None,
            style_refs=refs,
        )
        return [(v.x, v.y) for v in res.versions], [
            f"generation {key2(v.x, v.y)}: version {v.version} (regenerate)" for v in res.versions
        ]
    raise OperateError(f"unknown action {config.action!r}; one of {', '.join(ACTIONS)}")


@dg.op(
    description="A person's repair, revert or regenerate (from the map console), then the map redrawn there."
)
def console_action(
    context: dg.OpExecutionContext,
    config: ActionConfig,
    project: ProjectResource,
    generator: GeneratorResource,
) -> dg.Output[list[str]]:
    p = project.get()
    try:
        changed, lines = run_action(p, generator, config)
    except IsonycError as e:
        # The person asked for something impossible: one line in the run, no retry.
        raise dg.Failure(description=str(e), allow_retries=False) from None
    for line in lines:
        context.log.info(line)
    redrawn = 0
    out = Path(p.config.output_dir)
    try:
        redrawn = update_pyramid(p.store, out, changed, name=p.config.map.name).tiles_written
    except PyramidError as e:
        context.log.info(f"map at {out} not redrawn ({e}); export it to see the change")
    url = p.config.dagster_url
    return dg.Output(
        [key2(*q) for q in changed],
        metadata={
            "action": config.action,
            "changed": dg.MetadataValue.md(
                "\n".join(
                    f"- [{layers.GENERATION}[{key2(*q)}]]({partition_url(url, layers.GENERATION, key2(*q))})"
                    for q in changed
                )
                or "(none)"
            ),
            "versions": dg.MetadataValue.md("\n".join(f"- {line}" for line in lines) or "(none)"),
            "map_tiles_redrawn": redrawn,
        },
    )


@dg.job(
    name=ACTION_JOB,
    description="A person's action from the map console: repair, revert or regenerate (config: action, ...).",
    tags={"isonyc/kind": "console"},
)
def console_action_job() -> None:
    console_action()
