"""Seam-free generation plan: the period-3 lattice of docs/ARCHITECTURE.md, 'The lattice' over any set of quadrants.

Lattice cell (bx, by) owns the 3×3 quadrants ``x ∈ ox+3bx .. ox+3bx+2``, ``y ∈ oy+3by .. oy+3by+2``::

    B B V        B = 2×2 block      wave 1, no context (blocks never touch each other)
    B B V        V = 1×2 bridge     wave 2, context = the blocks left and right
    H H C        H = 2×1 bridge     wave 2, context = the blocks above and below
                 C = 1×1 corner     wave 3, context = all 8 neighbours

One model call per step: 4 calls per 9 quadrants, and a DAG only 3 waves deep.

Every step has a fixed *footprint* (its full lattice shape) and keeps only the quadrants that are inside
the bounds; footprint quadrants outside the bounds are *padding*: rendered inside the infill like the
original's auto-padding and discarded after generation. The template window (2×2 quadrants) is placed by
the original's rule, per axis where the footprint is one quadrant wide: generated context on both sides
→ centred (half a quadrant, 256 px, of context on each side); on one side only → pushed to the other
side (a full quadrant of context, the infill touches the window edge where nothing is generated);
neither → centred. ``check_step_legal`` states the rules every step obeys; ``LatticePlan.validate``
applies them to a whole plan.

Pure Python, no Dagster: the Dagster layer maps cells to partitions and steps to runs.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any, cast

from isonyc_dagster import layers
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.boxes import PixelBox

Quadrant = tuple[int, int]


class PlanError(IsonycError, ValueError):
    """Bad input to the planner, or a plan/step that breaks the seam-free rules."""


class StepKind(StrEnum):
    """The four step shapes of the lattice. Values are stable names (asset / partition friendly)."""

    BLOCK = "block"  # 2×2
    BRIDGE_V = "bridge_v"  # 1×2 (one wide, two tall)
    BRIDGE_H = "bridge_h"  # 2×1 (two wide, one tall)
    CORNER = "corner"  # 1×1

    @property
    def wave(self) -> int:
        """1 for blocks, 2 for bridges, 3 for corners: a step only depends on lower waves."""
        return _WAVE[self]

    @property
    def offset(self) -> Quadrant:
        """Top-left of the footprint inside its 3×3 lattice cell."""
        return _OFFSET[self]

    @property
    def shape(self) -> tuple[int, int]:
        """Footprint (width, height) in quadrants."""
        return _SHAPE[self]


_WAVE = {StepKind.BLOCK: 1, StepKind.BRIDGE_V: 2, StepKind.BRIDGE_H: 2, StepKind.CORNER: 3}
_OFFSET = {
    StepKind.BLOCK: (0, 0),
    StepKind.BRIDGE_V: (2, 0),
    StepKind.BRIDGE_H: (0, 2),
    StepKind.CORNER: (2, 2),
}
_SHAPE = {
    StepKind.BLOCK: (2, 2),
    StepKind.BRIDGE_V: (1, 2),
    StepKind.BRIDGE_H: (2, 1),
    StepKind.CORNER: (1, 1),
}
_DIRS = ((-1, 0), (1, 0), (0, -1), (0, 1))
_SIDE = {(-1, 0): "left", (1, 0): "right", (0, -1): "top", (0, 1): "bottom"}


def kind_at(x: int, y: int, origin: Quadrant) -> tuple[StepKind, Quadrant]:
    """The step kind and lattice cell that own quadrant (x, y) for a lattice with this origin."""
    bx, rx = divmod(x - origin[0], 3)
    by, ry = divmod(y - origin[1], 3)
    if rx < 2:
        kind = StepKind.BLOCK if ry < 2 else StepKind.BRIDGE_H
    else:
        kind = StepKind.BRIDGE_V if ry < 2 else StepKind.CORNER
    return kind, (bx, by)


@dataclass(frozen=True)
class Step:
    """One model call: generate ``quadrants`` in a 2×2-quadrant template window.

    ``window`` is the world pixel of the window's top-left; ``infill`` is the footprint rectangle in
    window pixels (x0, y0, x1, y1), the red border goes inside it. ``context`` lists the quadrants of
    earlier steps whose generated pixels lie in the window; ``padding`` the footprint quadrants outside
    the bounds (rendered in the infill, discarded).
    """

    kind: StepKind
    cell: Quadrant
    quadrants: tuple[Quadrant, ...]
    context: tuple[Quadrant, ...]
    window: tuple[int, int]
    infill: PixelBox
    footprint: tuple[Quadrant, ...]
    quadrant_px: int = 512

    @property
    def wave(self) -> int:
        return self.kind.wave

    @property
    def key(self) -> str:
        """Stable internal id, e.g. ``bridge_v:3,-1`` (per-step seeds derive from it: never change it). People see
        ``ref``."""
        return f"{self.kind.value}:{self.cell[0]},{self.cell[1]}"

    @property
    def asset(self) -> str:
        """The Dagster asset of this step's kind, e.g. ``bridges_v``."""
        return layers.STEP_ASSETS[self.kind.value]

    @property
    def partition_key(self) -> str:
        """The Dagster partition key of its lattice cell, e.g. ``3|-1``."""
        return f"{self.cell[0]}|{self.cell[1]}"

    @property
    def ref(self) -> str:
        """The step as Dagster names it, ``asset[partition key]`` (e.g. ``bridges_v[3|-1]``): what provenance,
        metadata and messages say."""
        return f"{self.asset}[{self.partition_key}]"

    @property
    def window_px(self) -> int:
        """Side of the square template window (2 quadrants)."""
        return 2 * self.quadrant_px

    @property
    def window_box(self) -> PixelBox:
        """The template window in world pixels."""
        x0, y0 = self.window
        return PixelBox(x0, y0, x0 + self.window_px, y0 + self.window_px)

    @property
    def infill_world(self) -> PixelBox:
        """The infill rectangle in world pixels."""
        x0, y0 = self.window
        a, b, c, d = self.infill
        return PixelBox(x0 + a, y0 + b, x0 + c, y0 + d)

    @property
    def padding(self) -> tuple[Quadrant, ...]:
        """Footprint quadrants outside the bounds: rendered inside the infill, never kept."""
        own = set(self.quadrants)
        return tuple(q for q in self.footprint if q not in own)

    def window_quadrants(self) -> list[Quadrant]:
        """Every quadrant with pixels inside the template window (row-major)."""
        return quadrants_overlapping(self.window_box, self.quadrant_px)


def parse_step_ref(text: str) -> tuple[StepKind, Quadrant] | None:
    """Kind and cell of a step id in any form provenance has used: ``bridges_v[3|-1]`` (``Step.ref``), the older
    ``bridge_v:3,-1`` (``Step.key``, in stores written before), or ``bridges_v:3|-1``. ``None`` when ``text`` names
    no lattice step (``repair[1|1]``, a test's label)."""
    kinds = {k.value: k for k in StepKind} | {layers.STEP_ASSETS[k.value]: k for k in StepKind}
    text = text.strip()
    if text.endswith("]") and "[" in text:
        name, _, cell = text[:-1].partition("[")
    else:
        name, _, cell = text.partition(":")
    parts = cell.replace("|", ",").split(",")
    if name not in kinds or len(parts) != 2:
        return None
    try:
        return kinds[name], (int(parts[0]), int(parts[1]))
    except ValueError:
        return None


def step_ref(text: str) -> str:
    """A step id as provenance stored it, in ``Step.ref`` form (``bridge_v:0,0`` → ``bridges_v[0|0]``); text that
    names no lattice step is returned as it is."""
    parsed = parse_step_ref(text)
    if parsed is None:
        return text
    kind, (a, b) = parsed
    return f"{layers.STEP_ASSETS[kind.value]}[{a}|{b}]"


def quadrants_overlapping(box: PixelBox, q: int) -> list[Quadrant]:
    """Quadrants whose pixels intersect a world-pixel box (row-major)."""
    x0, y0, x1, y1 = box
    return [(x, y) for y in range(y0 // q, (y1 - 1) // q + 1) for x in range(x0 // q, (x1 - 1) // q + 1)]


def _inside(inner: PixelBox, outer: PixelBox) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _overlaps(a: PixelBox, b: PixelBox) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _quadrant_box(x: int, y: int, q: int) -> PixelBox:
    return PixelBox(x * q, y * q, (x + 1) * q, (y + 1) * q)


def _edge_strip(own: Quadrant, nb: Quadrant, depth: int, q: int) -> PixelBox:
    """The pixels of neighbour ``nb`` within ``depth`` px of its shared edge with ``own``."""
    bx0, by0, bx1, by1 = _quadrant_box(*nb, q)
    dx, dy = nb[0] - own[0], nb[1] - own[1]
    if dx == -1:
        return PixelBox(bx1 - depth, by0, bx1, by1)
    if dx == 1:
        return PixelBox(bx0, by0, bx0 + depth, by1)
    if dy == -1:
        return PixelBox(bx0, by1 - depth, bx1, by1)
    return PixelBox(bx0, by0, bx1, by0 + depth)


class LatticePlan:
    """The period-3 lattice plan over a set of quadrants. Build with ``from_quadrants``."""

    def __init__(
        self, quadrants: frozenset[Quadrant], origin: Quadrant, quadrant_px: int, steps: tuple[Step, ...]
    ):
        self.quadrants = quadrants
        self.origin = origin
        self.quadrant_px = quadrant_px
        self.steps = steps
        self._by_quadrant: dict[Quadrant, Step] = {q: s for s in steps for q in s.quadrants}
        self._by_cell: dict[tuple[StepKind, Quadrant], Step] = {(s.kind, s.cell): s for s in steps}

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_quadrants(
        cls, quadrants: Iterable[Quadrant], origin: Quadrant | None = None, *, quadrant_px: int = 512
    ) -> LatticePlan:
        """Plan every quadrant of ``quadrants``; the lattice origin defaults to (min x, min y)."""
        qs = frozenset(_check_quadrant(q) for q in quadrants)
        if not qs:
            raise PlanError("cannot plan an empty set of quadrants: the bounds cover no quadrant")
        if (
            isinstance(quadrant_px, bool)
            or not isinstance(quadrant_px, int)
            or quadrant_px < 2
            or quadrant_px % 2
        ):
            raise PlanError(
                f"quadrant_px must be an even integer ≥ 2 (half-quadrant context bands), got {quadrant_px!r}"
            )
        if origin is None:
            origin = (min(x for x, _ in qs), min(y for _, y in qs))
        origin = _check_quadrant(origin, what="lattice origin")

        members: dict[tuple[StepKind, Quadrant], list[Quadrant]] = {}
        for x, y in qs:
            members.setdefault(kind_at(x, y, origin), []).append((x, y))

        def wave_of(qd: Quadrant) -> int | None:
            return kind_at(*qd, origin)[0].wave if qd in qs else None

        steps = [
            _place(kind, cell, tuple(sorted(own, key=_rowmajor)), origin, quadrant_px, qs, wave_of)
            for (kind, cell), own in members.items()
        ]
        steps.sort(key=lambda s: (s.wave, s.kind.value, s.cell[1], s.cell[0]))
        return cls(qs, origin, quadrant_px, tuple(steps))

    # --- queries --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __contains__(self, quadrant: object) -> bool:
        return quadrant in self._by_quadrant

    def step_for_quadrant(self, x: int, y: int) -> Step:
        """The step that generates quadrant (x, y)."""
        try:
            return self._by_quadrant[(x, y)]
        except KeyError:
            raise PlanError(
                f"quadrant ({x}, {y}) is outside the planned bounds; extend the bounds to plan it"
            ) from None

    def step(self, kind: StepKind | str, cell: Quadrant) -> Step:
        """The step of a kind at a lattice cell (e.g. a Dagster partition)."""
        kind = _kind(kind)
        try:
            return self._by_cell[(kind, (cell[0], cell[1]))]
        except KeyError:
            raise PlanError(
                f"no {kind.value} step at cell {tuple(cell)}: its footprint has no quadrant in bounds"
            ) from None

    def get(self, kind: StepKind | str, cell: Quadrant) -> Step | None:
        return self._by_cell.get((_kind(kind), (cell[0], cell[1])))

    def step_at(self, kind: StepKind | str, cell: Quadrant) -> Step:
        """The step of ``kind`` at ``cell``, which must have one (a partition key of the kind's step asset)."""
        step = self.get(kind, cell)
        if step is None:
            raise KeyError(f"the lattice has no {_kind(kind).value} step at cell {cell}")
        return step

    def cells(self, kind: StepKind | str) -> list[Quadrant]:
        """Lattice cells that have a step of this kind, sorted row-major (for Dagster partitions)."""
        kind = _kind(kind)
        return sorted((c for k, c in self._by_cell if k is kind), key=_rowmajor)

    def dependencies(self, step: Step) -> tuple[Step, ...]:
        """The steps whose generated quadrants are context of ``step`` (all from lower waves)."""
        seen: dict[str, Step] = {}
        for qd in step.context:
            dep = self._by_quadrant[qd]
            seen.setdefault(dep.key, dep)
        return tuple(sorted(seen.values(), key=lambda s: (s.wave, s.kind.value, s.cell[1], s.cell[0])))

    @cached_property
    def _dependants(self) -> dict[str, tuple[Step, ...]]:
        out: dict[str, list[Step]] = {}
        for s in self.steps:
            for d in self.dependencies(s):
                out.setdefault(d.key, []).append(s)
        return {k: tuple(v) for k, v in out.items()}

    def dependants(self, step: Step) -> tuple[Step, ...]:
        """Steps that use ``step``'s pixels as context (go stale when it is regenerated)."""
        return self._dependants.get(step.key, ())

    def waves(self) -> dict[int, tuple[Step, ...]]:
        """Steps grouped by wave: {1: blocks, 2: bridges, 3: corners} (every key present)."""
        out: dict[int, list[Step]] = {1: [], 2: [], 3: []}
        for s in self.steps:
            out[s.wave].append(s)
        return {w: tuple(v) for w, v in out.items()}

    @property
    def calls_per_quadrant(self) -> float:
        """Model calls per planned quadrant (→ 4/9 on large rectangles)."""
        return len(self.steps) / len(self.quadrants)

    # --- validation -----------------------------------------------------------------------------
    def violations(self) -> list[str]:
        """Every broken rule of every step (empty = the plan is seam-free)."""
        out: list[str] = []
        covered: dict[Quadrant, str] = {}
        for s in self.steps:
            for qd in s.quadrants:
                if qd in covered:
                    out.append(f"quadrant {qd} is generated twice, by {covered[qd]} and {s.key}")
                covered[qd] = s.key
            out.extend(check_step_legal(self, s))
        for qd in sorted(self.quadrants - covered.keys(), key=_rowmajor):
            out.append(f"quadrant {qd} is in the bounds but no step generates it")
        return out

    def validate(self) -> None:
        """Raise ``PlanError`` listing every broken rule."""
        v = self.violations()
        if v:
            raise PlanError(f"plan is not seam-free ({len(v)} problems): " + "; ".join(v[:20]))


def check_step_legal(plan: LatticePlan, step: Step) -> list[str]:
    """The seam-free rules for one step of a plan; returns the broken ones (empty list = legal).

    1. Shape: the step keeps a non-empty subset of its lattice footprint, every kept quadrant is in the
       bounds and owned by this step, and every in-bounds footprint quadrant is kept (the infill never
       swallows another step's quadrant — the original's W2c).
    2. Window: a 2×2-quadrant window on the half-quadrant grid that contains the infill, and the infill is
       exactly the footprint. A 2×2 block fills the whole window.
    3. Context: every other in-bounds quadrant with pixels in the window belongs to a *lower* wave and is
       listed in ``context``, and nothing else is (so the template uses only finished pixels and the
       step's dependencies are exact). A block therefore has no generated neighbours at all.
    4. Seams: across every edge between a kept quadrant and an in-bounds quadrant of another step, the
       two steps are in different waves; if the neighbour is earlier, a band of at least half a quadrant
       of its pixels along the whole edge lies inside the window — in particular the infill never touches
       the template edge where generated pixels lie beyond it. (Edges to later steps are checked from
       the later step; diagonal point contacts are not edges.)
    """
    problems = [
        *_check_shape(plan, step),
        *_check_window(plan, step),
        *_check_context(plan, step),
        *_check_seams(plan, step),
    ]
    return [f"{step.key}: {msg}" for msg in problems]


def _footprint(plan: LatticePlan, step: Step) -> tuple[int, int, int, int, list[Quadrant]]:
    """(fx, fy, w, h, quadrants) of the step's lattice footprint, from its kind and cell alone."""
    kind, (bx, by) = step.kind, step.cell
    ox, oy = plan.origin
    fx, fy = ox + 3 * bx + kind.offset[0], oy + 3 * by + kind.offset[1]
    w, h = kind.shape
    return fx, fy, w, h, [(fx + i, fy + j) for j in range(h) for i in range(w)]


def _check_shape(plan: LatticePlan, step: Step) -> Iterator[str]:
    """Rule 1."""
    q = plan.quadrant_px
    _, _, _, _, footprint = _footprint(plan, step)
    if list(step.footprint) != footprint:
        yield f"footprint {step.footprint} is not the lattice's {footprint}"
    if not step.quadrants:
        yield "keeps no quadrant"
    for qd in step.quadrants:
        if qd not in footprint:
            yield f"quadrant {qd} is outside its footprint"
        if qd not in plan.quadrants:
            yield f"quadrant {qd} is outside the bounds"
        elif (owner := plan._by_quadrant.get(qd)) is not None and owner.key != step.key:
            yield f"quadrant {qd} belongs to {owner.key}"
    for qd in footprint:
        if qd in plan.quadrants and qd not in step.quadrants:
            yield f"in-bounds footprint quadrant {qd} is not kept: the infill would overwrite it"
    if step.quadrant_px != q:
        yield f"quadrant_px {step.quadrant_px} differs from the plan's {q}"


def _check_window(plan: LatticePlan, step: Step) -> Iterator[str]:
    """Rule 2."""
    q = plan.quadrant_px
    fx, fy, w, h, _ = _footprint(plan, step)
    wx0, wy0 = step.window
    win = step.window_box
    if wx0 % (q // 2) or wy0 % (q // 2):
        yield f"window origin {step.window} is not on the half-quadrant grid"
    foot_box = (fx * q, fy * q, (fx + w) * q, (fy + h) * q)
    if step.infill_world != foot_box:
        yield f"infill {step.infill_world} (world px) is not the footprint {foot_box}"
    if not _inside(step.infill_world, win):
        yield f"infill {step.infill} leaves the {step.window_px}² window"
    if step.kind is StepKind.BLOCK and step.infill != (0, 0, 2 * q, 2 * q):
        yield f"a 2×2 block must fill the whole window, infill is {step.infill}"


def _check_context(plan: LatticePlan, step: Step) -> Iterator[str]:
    """Rule 3: context = exactly the earlier in-bounds quadrants in the window."""
    q = plan.quadrant_px
    win = step.window_box
    expected: list[Quadrant] = []
    for qd in quadrants_overlapping(win, q):
        if qd in step.quadrants or qd not in plan.quadrants:
            continue
        other = plan._by_quadrant.get(qd)
        if other is None:
            continue
        if other.wave >= step.wave:
            yield (
                f"window holds quadrant {qd} of {other.key} (wave {other.wave}), which is not finished before "
                f"this wave-{step.wave} step: the template would show its render, not its pixels"
            )
        else:
            expected.append(qd)
    if set(step.context) != set(expected):
        missing = sorted(set(expected) - set(step.context), key=_rowmajor)
        extra = sorted(set(step.context) - set(expected), key=_rowmajor)
        yield f"context is wrong: missing {missing}, not in window or not earlier {extra}"
    if step.kind is StepKind.BLOCK and step.context:
        yield f"a 2×2 block must have no generated neighbours, has context {list(step.context)}"


def _check_seams(plan: LatticePlan, step: Step) -> Iterator[str]:
    """Rule 4."""
    q = plan.quadrant_px
    win = step.window_box
    for own in step.quadrants:
        for d in _DIRS:
            nb = (own[0] + d[0], own[1] + d[1])
            other = plan._by_quadrant.get(nb)
            if other is None or other.key == step.key:
                continue
            if other.wave == step.wave:
                yield (
                    f"shares the {_SIDE[d]} edge of {own} with {other.key} of the same wave: neither sees the other"
                )
            elif other.wave < step.wave:
                strip = _edge_strip(own, nb, q // 2, q)
                if _inside(strip, win):
                    continue
                touching = {
                    (-1, 0): step.infill_world[0] == win[0],
                    (1, 0): step.infill_world[2] == win[2],
                    (0, -1): step.infill_world[1] == win[1],
                    (0, 1): step.infill_world[3] == win[3],
                }[d]
                if touching:
                    yield (
                        f"infill touches the template's {_SIDE[d]} edge at {own} while generated quadrant {nb} "
                        f"({other.key}) lies beyond it: that seam would be generated blind"
                    )
                else:
                    yield (
                        f"less than {q // 2} px of generated quadrant {nb} ({other.key}) along the {_SIDE[d]} edge of {own} is in the window"
                    )


def raster_steps(x0: int, y0: int, w: int, h: int, *, quadrant_px: int = 512) -> list[Step]:
    """The original's raster order over quadrants x0..x0+w-1 × y0..y0+h-1, as 1×1 steps (the seam pilot).

    Each quadrant is the bottom-right of its 2×2 window, with its left, top and top-left neighbours inside
    the patch as context (accepted earlier in raster order); neighbours outside the patch are padding, shown
    as render and never kept. Unlike the lattice, right and bottom edges are generated blind: this plan
    exists to measure seams, not to avoid them.
    """
    q = quadrant_px
    patch = {(x0 + i, y0 + j) for j in range(h) for i in range(w)}
    steps = []
    for y in range(y0, y0 + h):
        for x in range(x0, x0 + w):
            context = tuple(nb for nb in ((x - 1, y - 1), (x, y - 1), (x - 1, y)) if nb in patch)
            window = ((x - 1) * q, (y - 1) * q)
            steps.append(
                Step(
                    StepKind.CORNER,
                    (x, y),
                    ((x, y),),
                    context,
                    window,
                    PixelBox(q, q, 2 * q, 2 * q),
                    ((x, y),),
                    q,
                )
            )
    return steps


# --- internals ------------------------------------------------------------------------------------
def _kind(kind: StepKind | str) -> StepKind:
    try:
        return StepKind(kind)
    except ValueError:
        raise PlanError(f"unknown step kind {kind!r}; use one of {[k.value for k in StepKind]}") from None


def _rowmajor(qd: Quadrant) -> tuple[int, int]:
    return (qd[1], qd[0])


def _check_quadrant(qd: object, what: str = "quadrant") -> Quadrant:
    try:
        x, y = cast("tuple[Any, Any]", qd)  # any pair-like object; checked below
        if isinstance(x, bool) or isinstance(y, bool):
            raise TypeError
        # operator.index accepts Python and numpy integers and rejects floats and strings.
        return (operator.index(x), operator.index(y))
    except (TypeError, ValueError):
        raise PlanError(f"{what} must be a pair of integers (x, y), got {qd!r}") from None


def _axis_start(lo: int, length: int, before: bool, after: bool, q: int) -> int:
    """Window start (world px) along one axis for a footprint [lo, lo+length) in quadrants."""
    if length == 2:
        return lo * q
    if before and after:
        return lo * q - q // 2  # middle band: half a quadrant of context on both sides
    if before:
        return (lo - 1) * q  # a full quadrant of context before; nothing generated beyond the far edge
    if after:
        return lo * q
    return lo * q - q // 2  # no context on this axis: centred, the rest is discarded render padding


def _place(kind, cell, own, origin, q, qs, wave_of) -> Step:
    ox, oy = origin
    fx, fy = ox + 3 * cell[0] + kind.offset[0], oy + 3 * cell[1] + kind.offset[1]
    w, h = kind.shape
    footprint = tuple((fx + i, fy + j) for j in range(h) for i in range(w))

    def earlier(qd: Quadrant) -> bool:
        wv = wave_of(qd)
        return wv is not None and wv < kind.wave

    left = any(earlier((fx - 1, fy + j)) for j in range(h))
    right = any(earlier((fx + w, fy + j)) for j in range(h))
    top = any(earlier((fx + i, fy - 1)) for i in range(w))
    bottom = any(earlier((fx + i, fy + h)) for i in range(w))
    x0 = _axis_start(fx, w, left, right, q)
    y0 = _axis_start(fy, h, top, bottom, q)
    infill = PixelBox(fx * q - x0, fy * q - y0, (fx + w) * q - x0, (fy + h) * q - y0)
    win = PixelBox(x0, y0, x0 + 2 * q, y0 + 2 * q)
    context = tuple(qd for qd in quadrants_overlapping(win, q) if qd not in footprint and earlier(qd))
    return Step(kind, cell, own, context, (x0, y0), infill, footprint, q)
