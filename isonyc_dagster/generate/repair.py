"""Fixing a bad tile by hand, and which versions a person made.

- ``repair``: a quadrant generated again in place as a 1×1 infill whose template shows every already-generated
  neighbour (all 8) as context, so the seams around it are consistent and no neighbour changes. A new version with
  provenance ``kind: repair`` and its ``context``; the old version stays in the store.
- ``revert``: an older version becomes the content again, as a new version (the same blob, no bytes copied) with
  provenance ``kind: revert``, so that the store records that a person chose it.
- ``regenerate``: a whole lattice step again with another seed or prompt (``kind: regenerate``); the steps that used
  it as context become stale (``stale_steps``).

The wave scheduler never overwrites a version a person made active (``person_made``) unless told to.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any, cast

from isonyc_dagster import layers
from isonyc_dagster.backends.base import ImageBackend
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.generate.plan import (
    LatticePlan,
    Quadrant,
    Step,
    StepKind,
    parse_step_ref,
    quadrants_overlapping,
    step_ref,
)
from isonyc_dagster.generate.references import StyleRefs
from isonyc_dagster.generate.step import StepInputs, StepResult, StepSettings, run_step
from isonyc_dagster.geo.boxes import PixelBox
from isonyc_dagster.store.base import TileStore, TileVersion, TileWrite

#: Provenance ``kind`` of versions a person asked for.
MANUAL_KINDS = frozenset({"repair", "revert", "regenerate"})


class OperateError(IsonycError, ValueError):
    """A repair, revert or regenerate that cannot be done as asked (the message says why and what to do)."""


def person_made(version: TileVersion | None) -> bool:
    """Whether a person made this version: a repair, revert or hand regeneration, an imported tile (``source:
    imported``) or a colour repair (``isonyc water``: provenance ``repair``)."""
    if version is None:
        return False
    prov = version.provenance
    return prov.get("kind") in MANUAL_KINDS or prov.get("source") == "imported" or "repair" in prov


def manual_quadrants(store: TileStore, quadrants: Iterable[Quadrant]) -> list[Quadrant]:
    """The quadrants among ``quadrants`` whose active generation a person made."""
    active = store.active_map(layers.GENERATION, quadrants)
    return [q for q, v in sorted(active.items()) if person_made(v)]


def kept_sha(store: TileStore, step: Step) -> str:
    """One hash of a step's active quadrants (its output as kept, when a person made some of it)."""
    active = store.active_map(layers.GENERATION, step.quadrants)
    h = hashlib.sha256()
    for q in sorted(active):
        h.update(f"{q}={active[q].sha256};".encode())
    return h.hexdigest()


class _Stamped:
    """The store, adding ``extra`` to the provenance of every tile written: run_step commits as usual, and the
    versions say who asked for them."""

    def __init__(self, store: TileStore, extra: dict[str, Any]) -> None:
        self._store = store
        self._extra = extra

    def put_tiles(self, writes: Sequence[TileWrite], **kw: Any) -> list[TileVersion]:
        stamped = [dataclasses.replace(w, provenance={**w.provenance, **self._extra}) for w in writes]
        return self._store.put_tiles(stamped, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def repair_step(x: int, y: int, quadrant_px: int, generated: Container[Quadrant]) -> Step:
    """The 1×1 infill of quadrant (x, y), centred in its 2×2-quadrant window, with every generated neighbour in
    the window as context (256 px of all 8 neighbours)."""
    q = quadrant_px
    window = (x * q - q // 2, y * q - q // 2)
    box = PixelBox(window[0], window[1], window[0] + 2 * q, window[1] + 2 * q)
    context = tuple(qd for qd in quadrants_overlapping(box, q) if qd != (x, y) and qd in generated)
    return Step(
        StepKind.CORNER,
        (x, y),
        ((x, y),),
        context,
        window,
        PixelBox(q // 2, q // 2, q // 2 + q, q // 2 + q),
        ((x, y),),
        q,
    )


def repair(
    store: TileStore,
    inputs_for: Callable[[], StepInputs],
    bounds: Container[Quadrant],
    keys: Sequence[Quadrant],
    *,
    backend_for: Callable[[Step], tuple[ImageBackend, StepSettings, StyleRefs | None]],
    seed: int | None,
    quadrant_px: int,
) -> list[StepResult]:
    """Repair each quadrant of ``keys`` in turn (a later one sees the earlier ones' new pixels as context)."""
    for x, y in keys:
        if (x, y) not in bounds:
            raise OperateError(f"quadrant ({x}, {y}) is outside the bounds; give a quadrant of the map")
        if store.active(layers.GENERATION, x, y) is None:
            raise OperateError(
                f"quadrant ({x}, {y}) has no generated pixels to repair; generate its step first"
            )
    out = []
    for x, y in keys:
        inputs = inputs_for()  # fresh: StepInputs caches pixels, and an earlier repair changed some
        old = store.active(layers.GENERATION, x, y)
        assert old is not None
        around = [(x + dx, y + dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0)]
        generated = set(store.active_map(layers.GENERATION, around))
        step = repair_step(x, y, quadrant_px, generated)
        template = inputs.template(step)
        backend, settings, refs = backend_for(step)
        extra = {
            "kind": "repair",
            "step": f"repair[{x}|{y}]",  # the quadrant's partition key, like every step id in provenance
            "step_kind": "repair",
            "repaired_step": step_ref(str(old.provenance["step"])) if old.provenance.get("step") else None,
            "from_version": old.version,
        }
        res = run_step(
            cast(TileStore, _Stamped(store, extra)),
            backend,
            step,
            inputs,
            template,
            dataclasses.replace(settings, reuse_committed=False),
            seed=seed,
            style_refs=refs,
        )
        out.append(res)
    return out


def revert(store: TileStore, x: int, y: int, version: int, layer: str = layers.GENERATION) -> TileVersion:
    """Make ``version`` of a tile the content again, as a new version of the same blob marked ``kind: revert``."""
    versions = store.versions(layer, x, y)
    if not versions:
        raise OperateError(f"{layer} ({x}, {y}) has no versions; nothing to revert")
    by_number = {v.version: v for v in versions}
    if version not in by_number:
        raise OperateError(
            f"{layer} ({x}, {y}) has no version {version}; it has versions "
            f"{', '.join(str(v) for v in sorted(by_number))}"
        )
    target = by_number[version]
    prov = {
        **{k: v for k, v in target.provenance.items() if k != "kind"},
        "kind": "revert",
        "step_kind": target.provenance.get("step_kind", target.provenance.get("kind")),
        "reverted_to": version,
        "from_version": next(v.version for v in versions if v.active)
        if any(v.active for v in versions)
        else None,
    }
    return store.put_tile(layer, x, y, store.get_blob(target.sha256), prov)


def regenerate(
    store: TileStore,
    inputs: StepInputs,
    step: Step,
    backend: ImageBackend,
    settings: StepSettings,
    *,
    seed: int,
    prompt: str | None = None,
    style_refs: StyleRefs | None = None,
) -> StepResult:
    """Generate ``step`` again with ``seed`` (and ``prompt``); its quadrants get versions marked ``kind:
    regenerate``. Fails (nothing generated) when a context quadrant is missing."""
    template = inputs.template(step)
    settings = dataclasses.replace(settings, reuse_committed=False, prompt=prompt or settings.prompt)
    extra = {"kind": "regenerate", "step_kind": step.kind.value, "seed_override": seed}
    return run_step(
        cast(TileStore, _Stamped(store, extra)),
        backend,
        step,
        inputs,
        template,
        settings,
        seed=seed,
        style_refs=style_refs,
    )


def parse_step_key(plan: LatticePlan, text: str) -> Step:
    """A step from its key as Dagster names it (``blocks[0|0]``, as provenance writes it, or ``blocks:0|0``) or in
    the older provenance form (``block:0,0``)."""
    parsed = parse_step_ref(text)
    if parsed is None:
        kinds = sorted({*(k.value for k in StepKind), *layers.STEP_ASSETS.values()})
        raise OperateError(
            f"step {text!r} is not KIND:BX,BY nor ASSET[BX|BY] (e.g. block:0,0 or blocks[0|0]); "
            f"kinds: {', '.join(kinds)}"
        )
    step = plan.get(*parsed)
    if step is None:
        raise OperateError(f"step {text!r} is not in the plan (no quadrant of it inside the bounds)")
    return step


def _quadrant(key: str) -> Quadrant:
    """A quadrant from a ``context_sha256`` key: its partition key ``x|y`` (or ``x,y`` in older provenance)."""
    x, y = key.replace("|", ",").split(",")
    return int(x), int(y)


def stale_steps(store: TileStore, plan: LatticePlan) -> list[Step]:
    """Steps generated from context that has changed since: a context quadrant's active pixels are neither those
    the step used nor a repair or revert (those are made to fit their neighbours). Steps whose own pixels a
    person made are never stale: they are not regenerated behind the person's back. Ordered by wave."""
    out = []
    for step in sorted(plan.steps, key=lambda s: (s.wave, s.cell)):
        own = store.active_map(layers.GENERATION, step.quadrants)
        if not own or any(person_made(v) for v in own.values()):
            continue
        used: dict[str, str] = {}
        for v in own.values():
            used.update(v.provenance.get("context_sha256") or {})
        if not used:
            continue
        keys = {k: _quadrant(k) for k in used}
        ctx = store.active_map(layers.GENERATION, keys.values())
        for k, sha in used.items():
            cur = ctx.get(keys[k])
            if (
                cur is not None
                and cur.sha256 != sha
                and cur.provenance.get("kind") not in ("repair", "revert")
            ):
                out.append(step)
                break
    return out
