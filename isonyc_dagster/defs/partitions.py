"""Dagster partitions and partition mappings for quadrants (x, y) and lattice cells (bx, by).

Both are 2-D ``MultiPartitionsDefinition``s, so the UI draws a quadrant asset's status as a map of progress.
Multi-partition keys are ``"<x>|<y>"`` (dimensions sorted by name), and a key *range* ``"x0|y0"…"x1|y1"`` selects
the rectangle x0..x1 × y0..y1 — the wave scheduler uses that to put a rectangle of ready steps into one run.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from isonyc_dagster.generate.plan import LatticePlan, StepKind
from isonyc_dagster.geo.bounds import QuadrantSet

Key2 = tuple[int, int]

QUADRANT_DIMS = ("x", "y")
CELL_DIMS = ("bx", "by")


def key2(a: int, b: int) -> str:
    """The multi-partition key of (x, y) or (bx, by)."""
    return f"{a}|{b}"


def parse_key2(key: str | dg.MultiPartitionKey) -> Key2:
    """(x, y) or (bx, by) from a multi-partition key."""
    if isinstance(key, dg.MultiPartitionKey):
        kd = key.keys_by_dimension
        dims = sorted(kd)
        return int(kd[dims[0]]), int(kd[dims[1]])
    a, b = str(key).split("|")
    return int(a), int(b)


def _axis(lo: int, hi: int) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([str(i) for i in range(lo, hi + 1)])


def quadrant_partitions(quadrants: QuadrantSet) -> dg.MultiPartitionsDefinition:
    """x × y over the bounds' bounding rectangle (quadrants outside the polygon materialize as no-ops)."""
    x0, y0, x1, y1 = quadrants.bbox
    return dg.MultiPartitionsDefinition({"x": _axis(x0, x1), "y": _axis(y0, y1)})


def cell_bbox(plan: LatticePlan) -> tuple[int, int, int, int]:
    cells = [s.cell for s in plan.steps]
    return (
        min(c[0] for c in cells),
        min(c[1] for c in cells),
        max(c[0] for c in cells),
        max(c[1] for c in cells),
    )


def cell_partitions(plan: LatticePlan) -> dg.MultiPartitionsDefinition:
    """bx × by over every lattice cell of the plan (shared by the four step assets)."""
    bx0, by0, bx1, by1 = cell_bbox(plan)
    return dg.MultiPartitionsDefinition({"bx": _axis(bx0, bx1), "by": _axis(by0, by1)})


def _static(pairs: Iterable[tuple[int, int]], up: range, down: range) -> dg.StaticPartitionMapping:
    """StaticPartitionMapping upstream key → downstream keys, keeping only keys that exist on both sides."""
    out: dict[str, set[str]] = {}
    for u, d in pairs:
        if u in up and d in down:
            out.setdefault(str(u), set()).add(str(d))
    for u in up:  # every upstream key must be mapped, possibly to nothing
        out.setdefault(str(u), set())
    return dg.StaticPartitionMapping(out)


def _multi(
    first: tuple[str, dg.PartitionMapping], second: tuple[str, dg.PartitionMapping], up_dims: tuple[str, str]
) -> dg.MultiPartitionMapping:
    return dg.MultiPartitionMapping(
        {
            up_dims[0]: dg.DimensionPartitionMapping(first[0], first[1]),
            up_dims[1]: dg.DimensionPartitionMapping(second[0], second[1]),
        }
    )


class LatticeMappings:
    """The partition mappings that encode which neighbours each step needs (docs/ARCHITECTURE.md §4)."""

    def __init__(self, plan: LatticePlan, quadrants: QuadrantSet) -> None:
        self.plan = plan
        self.ox, self.oy = plan.origin
        bx0, by0, bx1, by1 = cell_bbox(plan)
        self.bxs, self.bys = range(bx0, bx1 + 1), range(by0, by1 + 1)
        x0, y0, x1, y1 = quadrants.bbox
        self.xs, self.ys = range(x0, x1 + 1), range(y0, y1 + 1)

    def step_to_step(self, dx: tuple[int, ...], dy: tuple[int, ...]) -> dg.MultiPartitionMapping:
        """Upstream cell (bx, by) feeds downstream cells (bx + i, by + j) for i in dx, j in dy."""
        return _multi(
            ("bx", _static(((b, b + i) for b in self.bxs for i in dx), self.bxs, self.bxs)),
            ("by", _static(((b, b + j) for b in self.bys for j in dy), self.bys, self.bys)),
            CELL_DIMS,
        )

    def step_to_quadrant(self, kind: StepKind) -> dg.MultiPartitionMapping:
        """Step cell (bx, by) → the quadrants of its footprint."""
        (offx, offy), (w, h) = kind.offset, kind.shape
        xs = ((b, self.ox + 3 * b + offx + i) for b in self.bxs for i in range(w))
        ys = ((b, self.oy + 3 * b + offy + j) for b in self.bys for j in range(h))
        return _multi(("x", _static(xs, self.bxs, self.xs)), ("y", _static(ys, self.bys, self.ys)), CELL_DIMS)

    def quadrant_to_step(self, kind: StepKind) -> dg.MultiPartitionMapping:
        """Quadrant (x, y) → the cell of the ``kind`` step whose footprint holds it (render → step)."""
        (offx, offy), (w, h) = kind.offset, kind.shape
        xs = ((self.ox + 3 * b + offx + i, b) for b in self.bxs for i in range(w))
        ys = ((self.oy + 3 * b + offy + j, b) for b in self.bys for j in range(h))
        return _multi(
            ("bx", _static(xs, self.xs, self.bxs)), ("by", _static(ys, self.ys, self.bys)), QUADRANT_DIMS
        )

    #: Context of each later step kind, as (upstream kind, dx, dy) offsets from upstream cell to downstream cells.
    CONTEXT: dict[StepKind, tuple[tuple[StepKind, tuple[int, ...], tuple[int, ...]], ...]] = {
        StepKind.BLOCK: (),
        # bridges_v[bx, by] ← blocks[bx, by], blocks[bx+1, by]
        StepKind.BRIDGE_V: ((StepKind.BLOCK, (0, -1), (0,)),),
        # bridges_h[bx, by] ← blocks[bx, by], blocks[bx, by+1]
        StepKind.BRIDGE_H: ((StepKind.BLOCK, (0,), (0, -1)),),
        # corners[bx, by] ← blocks[{bx, bx+1} × {by, by+1}], bridges_v[bx, {by, by+1}], bridges_h[{bx, bx+1}, by]
        StepKind.CORNER: (
            (StepKind.BLOCK, (0, -1), (0, -1)),
            (StepKind.BRIDGE_V, (0,), (0, -1)),
            (StepKind.BRIDGE_H, (0, -1), (0,)),
        ),
    }
