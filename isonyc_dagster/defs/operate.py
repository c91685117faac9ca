"""What the wave scheduler does about changes people make: steps gone stale, and quadrants to publish again.

- **Stale steps** (``generate.repair.stale_steps``): their context was regenerated since they were generated.
  ``on_stale = "flag"`` (default) counts them in the tick summary; ``"regenerate"`` requests them, one wave at a
  time (the lowest stale wave first, so a step is regenerated only after its context). A step whose pixels a person
  made is never stale and never regenerated (the step assets keep such pixels unless a run says otherwise).
- **Republish**: quadrants whose active pixels differ from what ``generation`` last published in Dagster (a
  regenerated step, a repair or revert made with the CLI), so Dagster's partitions, checks and the map follow.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from isonyc_dagster import layers
from isonyc_dagster.defs.partitions import key2
from isonyc_dagster.generate.plan import Quadrant, Step, StepKind
from isonyc_dagster.generate.repair import stale_steps
from isonyc_dagster.project import Project


def published_versions(instance: dg.DagsterInstance, keys: Iterable[str]) -> dict[str, str]:
    """The data version (content hash) of each partition's latest ``generation`` materialization."""
    asset = dg.AssetKey(layers.GENERATION)
    ids = instance.get_latest_storage_id_by_partition(
        asset, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(keys)
    )
    out: dict[str, str] = {}
    storage_ids = list(ids.values())
    for i in range(0, len(storage_ids), 500):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, storage_ids=storage_ids[i : i + 500]), limit=500
        ).records
        for rec in records:
            mat = rec.asset_materialization
            if mat is not None and mat.partition is not None and DATA_VERSION_TAG in (mat.tags or {}):
                out[mat.partition] = mat.tags[DATA_VERSION_TAG]
    return out


def to_republish(project: Project, instance: dg.DagsterInstance, done: set[Quadrant]) -> set[Quadrant]:
    """Published quadrants whose active pixels are not the ones ``generation`` published last."""
    active = project.store.active_map(layers.GENERATION, done)
    published = published_versions(instance, [key2(*q) for q in active])
    return {q for q, v in active.items() if published.get(key2(*q)) not in (None, v.sha256)}


def stale_by_kind(project: Project) -> tuple[dict[StepKind, set[Quadrant]], list[Step]]:
    """Stale steps of the lowest stale wave, by kind (what may be regenerated now), and every stale step."""
    stale = stale_steps(project.store, project.plan)
    if not stale:
        return {}, []
    wave = min(s.wave for s in stale)
    out: dict[StepKind, set[Quadrant]] = {}
    for s in stale:
        if s.wave == wave:
            out.setdefault(s.kind, set()).add(s.cell)
    return out, stale


def people_work(
    project: Project,
    instance: dg.DagsterInstance,
    published: set[Quadrant],
    blocked: dict[str, set[Quadrant]],
) -> tuple[dict[str, set[Quadrant]], str]:
    """Partitions to run now per asset (stale steps under ``on_stale = "regenerate"``, quadrants to publish again),
    and a note for the tick summary that counts stale and flagged work. ``blocked``: keys cooling down, per asset."""
    work: dict[str, set[Quadrant]] = {}
    notes: list[str] = []
    now, stale = stale_by_kind(project)
    if stale:
        keys = ", ".join(s.ref for s in stale[:8])
        if project.config.on_stale == "regenerate":
            for kind, cells in now.items():
                asset = layers.STEP_ASSETS[kind.value]
                if todo := cells - blocked.get(asset, set()):
                    work[asset] = todo
            notes.append(
                f"{len(stale)} stale step(s), regenerating wave {min(s.wave for s in stale)}: {keys}"
            )
        else:
            notes.append(f"{len(stale)} stale step(s) flagged (on_stale = flag, nothing regenerated): {keys}")
    republish = to_republish(project, instance, published) - blocked.get(layers.GENERATION, set())
    if republish:
        work[layers.GENERATION] = republish
        notes.append(f"publishing {len(republish)} changed quadrant(s) again")
    flagged = [f for f in project.store.list_flags(flagged=True) if (f.x, f.y) in project.quadrants]
    if flagged:
        notes.append(f"{len(flagged)} quadrant(s) flagged by QA or a person")
    return work, "; ".join(notes)
