"""Wave scheduling (pure): which renders, steps and quadrants can run now, and the key order that makes runs few.

Dagster cannot express "a step waits for its neighbours" for static or multi partitions, and its backfills launch
dependants before their context exists (docs/ARCHITECTURE.md), so the project orders generation itself: a step is *ready*
when its renders and every step it uses as context are materialized and it is neither done nor in flight.

Partition keys are listed along a Hilbert curve over the lattice cells (``LatticeOrder``), so a key *range* is a
compact region of the map and a whole wave of ready keys is one or two ranges: one run each (``KeyOrder.spans``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from isonyc_dagster.generate.plan import LatticePlan, StepKind, kind_at

Key2 = tuple[int, int]


def hilbert_index(side: int, x: int, y: int) -> int:
    """Position of (x, y) on the Hilbert curve filling a ``side`` × ``side`` square (``side`` a power of two).

    Written here (a dozen lines, Wikipedia's ``xy2d``) rather than taken from a package: it is the only curve we
    need, and consecutive positions are always neighbours, which keeps every key range compact."""
    d, s = 0, side // 2
    while s > 0:
        rx, ry = int(x & s > 0), int(y & s > 0)
        d += s * s * ((3 * rx) ^ ry)
        if ry == 0:
            if rx == 1:
                x, y = side - 1 - x, side - 1 - y
            x, y = y, x
        s //= 2
    return d


class KeyOrder:
    """The partition keys of one asset in Dagster's order; a key range is the keys between two positions."""

    def __init__(self, keys: Sequence[Key2]) -> None:
        self.keys: list[Key2] = list(keys)
        self.index: dict[Key2, int] = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def between(self, first: Key2, last: Key2) -> list[Key2]:
        """The keys of the range ``first``…``last`` (both included); empty when either is not a key."""
        i, j = self.index.get(first), self.index.get(last)
        if i is None or j is None:
            return []
        return self.keys[min(i, j) : max(i, j) + 1]

    def spans(
        self,
        wanted: set[Key2],
        *,
        max_wanted: int,
        passable: Callable[[Key2], bool] | None = None,
        max_len: int | None = None,
    ) -> list[tuple[Key2, Key2]]:
        """Key ranges that hold every ``wanted`` key, at most ``max_wanted`` of them each, in order.

        A range may pass over keys that are not wanted where ``passable`` allows it (done, or not ready yet: the run
        skips them), never over others (in flight, cooling down), and holds at most ``max_len`` keys in all. Without
        ``passable`` a range is a run of consecutive wanted keys."""
        if max_wanted < 1:
            raise ValueError("max_wanted must be ≥ 1")
        max_len = max_len or 4 * max_wanted
        out: list[tuple[Key2, Key2]] = []
        start = last = -1
        n = 0
        for i, k in enumerate(self.keys):
            if k in wanted:
                if start >= 0 and (n >= max_wanted or i - start + 1 > max_len):
                    out.append((self.keys[start], self.keys[last]))
                    start = -1
                if start < 0:
                    start, n = i, 0
                last, n = i, n + 1
            elif start >= 0 and (passable is None or not passable(k)):
                out.append((self.keys[start], self.keys[last]))
                start = -1
        if start >= 0:
            out.append((self.keys[start], self.keys[last]))
        return out


class LatticeOrder:
    """Key orders of the quadrant assets and of each step kind, all following one Hilbert curve over the lattice
    cells: a range of quadrants and the range of steps over the same cells cover the same compact region."""

    def __init__(self, plan: LatticePlan, quadrants: Iterable[Key2]) -> None:
        qs = list(quadrants)
        cells = [kind_at(x, y, plan.origin)[1] for x, y in qs] + [s.cell for s in plan.steps]
        bxs = [c[0] for c in cells] or [0]
        bys = [c[1] for c in cells] or [0]
        self._b0 = (min(bxs), min(bys))
        side = 1
        while side < max(max(bxs) - self._b0[0], max(bys) - self._b0[1]) + 1:
            side *= 2
        self._side = side

        rank = {c: self.cell_rank(c) for c in set(cells)}
        # Within a cell, row-major: the quadrants of one lattice cell are always neighbours in the order.
        self.quadrants = KeyOrder(
            sorted(qs, key=lambda q: (rank[kind_at(q[0], q[1], plan.origin)[1]], q[1], q[0]))
        )
        self.steps: dict[StepKind, KeyOrder] = {
            kind: KeyOrder(sorted((s.cell for s in plan.steps if s.kind is kind), key=rank.__getitem__))
            for kind in StepKind
        }

    def cell_rank(self, cell: Key2) -> int:
        """The cell's position on the curve."""
        return hilbert_index(self._side, cell[0] - self._b0[0], cell[1] - self._b0[1])


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
    # ranges (one run), where publishing step by step would cut the lattice pattern into many small runs.
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
