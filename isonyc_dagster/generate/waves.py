"""Wave scheduling (pure): which renders, steps and quadrants can run now, grouped into rectangles.

Dagster cannot express "a step waits for its neighbours" for static or multi partitions, and its backfills launch
dependants before their context exists (docs/ARCHITECTURE.md), so the project orders generation itself: a step is *ready*
when its renders and every step it uses as context are materialized and it is neither done nor in flight. Ready keys
are packed into rectangles because a multi-partition key range is a rectangle: one run per rectangle, few runs per
wave.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from isonyc_dagster.generate.plan import LatticePlan, StepKind, kind_at
from isonyc_dagster.geo.boxes import QuadRect

Key2 = tuple[int, int]


def rectangles(keys: Iterable[Key2], max_area: int = 64) -> list[QuadRect]:
    """Cover ``keys`` exactly with disjoint rectangles of at most ``max_area`` keys (greedy, row-major)."""
    if max_area < 1:
        raise ValueError("max_area must be ≥ 1")
    remaining = set(keys)
    out: list[QuadRect] = []
    for a, b in sorted(remaining, key=lambda k: (k[1], k[0])):
        if (a, b) not in remaining:
            continue
        a1 = a
        while (a1 + 1, b) in remaining and (a1 + 2 - a) <= max_area:
            a1 += 1
        width = a1 - a + 1
        b1 = b
        while (b1 + 2 - b) * width <= max_area and all((i, b1 + 1) in remaining for i in range(a, a1 + 1)):
            b1 += 1
        for j in range(b, b1 + 1):
            for i in range(a, a1 + 1):
                remaining.discard((i, j))
        out.append(QuadRect(a, b, a1, b1))
    return out


def rect_keys(rect: QuadRect | tuple[int, int, int, int]) -> set[Key2]:
    return set(QuadRect(*rect).keys())


@dataclass
class AssetKeys:
    """Keys per asset: quadrant keys per quadrant asset, cells per step kind."""

    render: set[Key2] = field(default_factory=set)
    steps: dict[StepKind, set[Key2]] = field(default_factory=lambda: {k: set() for k in StepKind})
    generation: set[Key2] = field(default_factory=set)
    water_mask: set[Key2] = field(default_factory=set)
    #: The project's other per-quadrant assets (photoreal, derived layers), by asset name.
    other: dict[str, set[Key2]] = field(default_factory=dict)


class Progress(AssetKeys):
    """What is materialized (or in flight)."""


class WaveRequests(AssetKeys):
    """Keys to run now, per asset."""

    def empty(self) -> bool:
        return not (
            self.render
            or self.generation
            or self.water_mask
            or any(self.steps.values())
            or any(self.other.values())
        )


def ready(plan: LatticePlan, quadrants: Iterable[Key2], done: Progress, busy: Progress) -> WaveRequests:
    """Everything that may start now without breaking the seam-free order."""
    qs = set(quadrants)
    req = WaveRequests()
    req.render = qs - done.render - busy.render
    req.water_mask = (qs & done.render) - done.water_mask - busy.water_mask
    for step in plan.steps:
        cell = step.cell
        if cell in done.steps[step.kind] or cell in busy.steps[step.kind]:
            continue
        if not all(q in done.render for q in step.quadrants):
            continue
        if all(dep.cell in done.steps[dep.kind] for dep in plan.dependencies(step)):
            req.steps[step.kind].add(cell)
    # Publish a quadrant once every step of its lattice cell is done: the finished cells then form large
    # rectangles (one run), where publishing step by step would cut the lattice pattern into many small runs.
    cell_done: dict[Key2, bool] = {}
    for q in qs - done.generation - busy.generation:
        cell = kind_at(q[0], q[1], plan.origin)[1]
        if cell not in cell_done:
            cell_done[cell] = all(
                (s := plan.get(kind, cell)) is None or s.cell in done.steps[kind] for kind in StepKind
            )
        if cell_done[cell]:
            req.generation.add(q)
    return req


def complete(plan: LatticePlan, quadrants: Iterable[Key2], done: Progress) -> bool:
    """True when every quadrant is rendered, generated and masked."""
    qs = set(quadrants)
    return (
        qs <= done.render
        and qs <= done.generation
        and qs <= done.water_mask
        and all(s.cell in done.steps[s.kind] for s in plan.steps)
    )
