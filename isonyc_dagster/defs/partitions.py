"""Dagster partitions and partition mappings for quadrants (x, y) and lattice cells (bx, by).

Every partition can be materialized: a quadrant asset has one partition per quadrant inside the bounds, a step
asset one per lattice cell that has a step of its kind. Keys are ``"<x>|<y>"`` / ``"<bx>|<by>"``, listed along the
Hilbert curve of ``generate.waves.LatticeOrder``, so a key range (``dagster/asset_partition_range_start`` …
``_end``) is a compact region of the map: the wave scheduler puts a whole wave of ready keys into one or two runs.
Why static lists and not the x × y ``MultiPartitionsDefinition`` of before: its bounding box holds partitions
outside the bounds (78 % of Manhattan's, 59 % of NYC's) that stay "missing" forever, and its ranges are rectangles,
which a diagonal island fills badly (docs/ARCHITECTURE.md §4 has the measurements).
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from isonyc_dagster.generate.plan import LatticePlan, StepKind
from isonyc_dagster.generate.waves import KeyOrder, LatticeOrder

Key2 = tuple[int, int]


def key2(a: int, b: int) -> str:
    """The partition key of (x, y) or (bx, by)."""
    return f"{a}|{b}"


def parse_key2(key: str | dg.MultiPartitionKey) -> Key2:
    """(x, y) or (bx, by) from a partition key (also a ``MultiPartitionKey`` of instances made before)."""
    if isinstance(key, dg.MultiPartitionKey):
        kd = key.keys_by_dimension
        dims = sorted(kd)
        return int(kd[dims[0]]), int(kd[dims[1]])
    a, b = str(key).split("|")
    return int(a), int(b)


def static_partitions(order: KeyOrder) -> dg.StaticPartitionsDefinition:
    """The partitions of one asset, in the order's sequence (so its key ranges are compact regions)."""
    return dg.StaticPartitionsDefinition([key2(*k) for k in order.keys])


def _mapping(pairs: Iterable[tuple[Key2, Key2]], upstream: KeyOrder) -> dg.StaticPartitionMapping:
    """StaticPartitionMapping upstream key → downstream keys; every upstream key is listed, maybe mapped to none."""
    out: dict[str, set[str]] = {key2(*u): set() for u in upstream.keys}
    for u, d in pairs:
        out[key2(*u)].add(key2(*d))
    return dg.StaticPartitionMapping(out)


class LatticeMappings:
    """The partitions of the quadrant and step assets, and the mappings that encode which neighbours each step
    needs (docs/ARCHITECTURE.md §4). All are built-in, serializable Dagster types, so the UI and daemon see them."""

    def __init__(self, plan: LatticePlan, order: LatticeOrder) -> None:
        self.plan = plan
        self.order = order
        self.quadrants = static_partitions(order.quadrants)
        self.cells = {kind: static_partitions(order.steps[kind]) for kind in StepKind}

    def quadrant_to_step(self, kind: StepKind) -> dg.StaticPartitionMapping:
        """Quadrant (x, y) → the cell of the ``kind`` step whose footprint holds it (render → step)."""
        pairs = ((q, s.cell) for s in self.plan.steps if s.kind is kind for q in s.quadrants)
        return _mapping(pairs, self.order.quadrants)

    def step_to_step(self, up: StepKind, down: StepKind) -> dg.StaticPartitionMapping:
        """Cell of an ``up`` step → the cells of the ``down`` steps that use its pixels as context."""
        pairs = (
            (d.cell, s.cell)
            for s in self.plan.steps
            if s.kind is down
            for d in self.plan.dependencies(s)
            if d.kind is up
        )
        return _mapping(pairs, self.order.steps[up])

    def step_to_quadrant(self, kind: StepKind) -> dg.StaticPartitionMapping:
        """Step cell (bx, by) → the quadrants of its footprint inside the bounds."""
        pairs = ((s.cell, q) for s in self.plan.steps if s.kind is kind for q in s.quadrants)
        return _mapping(pairs, self.order.steps[kind])

    #: The step kinds whose pixels each step kind uses as context (the lattice's waves).
    CONTEXT: dict[StepKind, tuple[StepKind, ...]] = {
        StepKind.BLOCK: (),
        StepKind.BRIDGE_V: (StepKind.BLOCK,),
        StepKind.BRIDGE_H: (StepKind.BLOCK,),
        StepKind.CORNER: (StepKind.BLOCK, StepKind.BRIDGE_V, StepKind.BRIDGE_H),
    }
