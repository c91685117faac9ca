"""The period-3 lattice plan: exact shapes, windows, waves and seam-freedom over many random bounds.

The property checks here are written independently of ``check_step_legal`` (they look at edges and
windows directly), so a bug in the validator cannot hide a bug in the planner.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from isonyc_dagster.generate.plan import LatticePlan, PlanError, Step, StepKind, check_step_legal

Q = 512
DIRS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def rect(x0: int, y0: int, w: int, h: int) -> set[tuple[int, int]]:
    return {(x, y) for x in range(x0, x0 + w) for y in range(y0, y0 + h)}


def inside(inner, outer) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def edge_band(own, nb, depth=Q // 2):
    """World-pixel box of the ``depth`` px of quadrant ``nb`` that touch its edge with ``own``."""
    x0, y0, x1, y1 = nb[0] * Q, nb[1] * Q, (nb[0] + 1) * Q, (nb[1] + 1) * Q
    dx, dy = nb[0] - own[0], nb[1] - own[1]
    return {
        (-1, 0): (x1 - depth, y0, x1, y1),
        (1, 0): (x0, y0, x0 + depth, y1),
        (0, -1): (x0, y1 - depth, x1, y1),
        (0, 1): (x0, y0, x1, y0 + depth),
    }[(dx, dy)]


# --- random bounds ----------------------------------------------------------------------------------
def random_bounds(rng: random.Random) -> set[tuple[int, int]]:
    """Blobs, holes, 1-quadrant strips, noise, negative coordinates: the shapes real polygons produce."""
    style = rng.choice(["blob", "blob", "strips", "noise", "ring", "rect"])
    w, h = rng.randint(1, 22), rng.randint(1, 22)
    ox, oy = rng.randint(-40, 40), rng.randint(-40, 40)
    cells: set[tuple[int, int]] = set()
    if style == "rect":
        cells = rect(ox, oy, w, h)
    elif style == "blob":
        for _ in range(rng.randint(1, 6)):
            cx, cy, r = rng.randint(0, w), rng.randint(0, h), rng.uniform(0.5, 7)
            cells |= {
                (ox + x, oy + y)
                for x in range(int(cx - r) - 1, int(cx + r) + 2)
                for y in range(int(cy - r) - 1, int(cy + r) + 2)
                if (x - cx) ** 2 + (y - cy) ** 2 <= r * r
            }
        for _ in range(rng.randint(0, 4)):  # holes
            cells -= rect(
                ox + rng.randint(0, w), oy + rng.randint(0, h), rng.randint(1, 3), rng.randint(1, 3)
            )
    elif style == "strips":
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.5:
                cells |= rect(ox + rng.randint(0, w), oy + rng.randint(0, h), rng.randint(1, 20), 1)
            else:
                cells |= rect(ox + rng.randint(0, w), oy + rng.randint(0, h), 1, rng.randint(1, 20))
    elif style == "noise":
        p = rng.uniform(0.2, 0.9)
        cells = {(x, y) for x, y in rect(ox, oy, w, h) if rng.random() < p}
    else:  # ring: a rectangle with its middle removed
        cells = rect(ox, oy, w + 3, h + 3) - rect(
            ox + 1 + rng.randint(0, 2), oy + 1 + rng.randint(0, 2), w, h
        )
    return cells or {(ox, oy)}


def assert_seam_free(plan: LatticePlan, bounds: set[tuple[int, int]]) -> None:
    owner: dict[tuple[int, int], Step] = {}
    for s in plan.steps:
        assert s.quadrants, s
        for qd in s.quadrants:
            assert qd not in owner, f"{qd} generated twice"
            owner[qd] = s
    assert set(owner) == bounds, "every quadrant is in exactly one step"

    for s in plan.steps:
        deps = plan.dependencies(s)
        assert all(d.wave < s.wave for d in deps), f"{s.key} depends on the same or a later wave"
        if s.kind is StepKind.BLOCK:
            assert not deps and not s.context
        # the template window is exactly 2×2 quadrants and holds the infill
        x0, y0 = s.window
        win = (x0, y0, x0 + 2 * Q, y0 + 2 * Q)
        assert inside(s.infill_world, win)
        # the window never shows an unfinished in-bounds quadrant of another step
        for qd in s.window_quadrants():
            if qd in owner and owner[qd].key != s.key:
                assert owner[qd].wave < s.wave, f"{s.key} window holds unfinished {qd}"
                assert qd in s.context

    for a in bounds:
        for dx, dy in DIRS:
            b = (a[0] + dx, a[1] + dy)
            if b not in bounds or owner[a].key == owner[b].key:
                continue
            sa, sb = owner[a], owner[b]
            assert sa.wave != sb.wave, f"same-wave steps {sa.key} and {sb.key} share the edge {a}-{b}"
            early_q, late_q, late = (a, b, sb) if sa.wave < sb.wave else (b, a, sa)
            x0, y0 = late.window
            band = edge_band(late_q, early_q)
            assert inside(band, (x0, y0, x0 + 2 * Q, y0 + 2 * Q)), (
                f"edge {early_q}-{late_q}: {late.key}'s window {late.window} does not show "
                f"{Q // 2} px of {early_q}'s pixels along the edge"
            )
            assert early_q in late.context
            assert owner[early_q] in plan.dependencies(late)


# --- exact lattice shape ----------------------------------------------------------------------------
def test_lattice_kinds_windows_and_context_on_a_rectangle():
    plan = LatticePlan.from_quadrants(rect(0, 0, 6, 6))
    grid = {
        qd: plan.step_for_quadrant(*qd).kind.value[0] + plan.step_for_quadrant(*qd).kind.value[-1]
        for qd in rect(0, 0, 6, 6)
    }
    rows = [" ".join(grid[(x, y)] for x in range(6)) for y in range(6)]
    # b=block, bv=V bridge, bh=H bridge, cr=corner
    assert rows[0] == rows[1] == rows[3] == rows[4] == "bk bk bv bk bk bv"
    assert rows[2] == rows[5] == "bh bh cr bh bh cr"

    block = plan.step(StepKind.BLOCK, (0, 0))
    assert block.quadrants == ((0, 0), (1, 0), (0, 1), (1, 1))
    assert block.window == (0, 0) and block.infill == (0, 0, 1024, 1024) and block.context == ()

    v = plan.step(StepKind.BRIDGE_V, (0, 0))  # both side blocks present: middle band, 256 px each side
    assert v.quadrants == ((2, 0), (2, 1))
    assert v.window == (2 * Q - 256, 0) and v.infill == (256, 0, 768, 1024)
    assert set(v.context) == {(1, 0), (1, 1), (3, 0), (3, 1)}

    h = plan.step(StepKind.BRIDGE_H, (0, 0))
    assert h.quadrants == ((0, 2), (1, 2))
    assert h.window == (0, 2 * Q - 256) and h.infill == (0, 256, 1024, 768)
    assert set(h.context) == {(0, 1), (1, 1), (0, 3), (1, 3)}

    c = plan.step(StepKind.CORNER, (0, 0))
    assert c.quadrants == ((2, 2),)
    assert c.window == (2 * Q - 256, 2 * Q - 256) and c.infill == (256, 256, 768, 768)
    assert set(c.context) == {(x, y) for x in (1, 2, 3) for y in (1, 2, 3)} - {(2, 2)}
    assert {d.key for d in plan.dependencies(c)} == {
        "block:0,0", "block:1,0", "block:0,1", "block:1,1", "bridge_v:0,0", "bridge_v:0,1", "bridge_h:0,0", "bridge_h:1,0",
    }  # fmt: skip

    # right edge of the bounds: the V bridge in column 5 has a block only on its left → pushed right
    v_edge = plan.step(StepKind.BRIDGE_V, (1, 0))
    assert v_edge.window == (4 * Q, 0) and v_edge.infill == (512, 0, 1024, 1024)
    assert set(v_edge.context) == {(4, 0), (4, 1)}
    c_edge = plan.step(StepKind.CORNER, (1, 1))  # bottom-right corner of the bounds
    assert c_edge.window == (4 * Q, 4 * Q) and c_edge.infill == (512, 512, 1024, 1024)

    assert plan.cells(StepKind.BLOCK) == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert plan.cells("corner") == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [len(plan.waves()[w]) for w in (1, 2, 3)] == [4, 8, 4]
    assert plan.violations() == []


def test_origin_and_negative_coordinates():
    bounds = rect(-7, -4, 5, 5)
    plan = LatticePlan.from_quadrants(bounds)
    assert plan.origin == (-7, -4)
    assert plan.step_for_quadrant(-7, -4).kind is StepKind.BLOCK
    assert plan.step_for_quadrant(-5, -4).kind is StepKind.BRIDGE_V
    shifted = LatticePlan.from_quadrants(bounds, origin=(-8, -4))  # lattice shifted one column left
    assert shifted.step_for_quadrant(-7, -4).kind is StepKind.BLOCK
    assert shifted.step_for_quadrant(-6, -4).kind is StepKind.BRIDGE_V
    assert shifted.step(StepKind.BLOCK, (0, 0)).quadrants == ((-7, -4), (-7, -3))  # clipped to the bounds
    assert shifted.violations() == []


def test_clipped_steps_keep_only_in_bounds_quadrants_and_see_one_sided_context():
    # An L-shaped block remnant and a bridge whose right-hand block lies outside the bounds.
    bounds = rect(0, 0, 3, 2) - {(1, 1)}
    plan = LatticePlan.from_quadrants(bounds)
    block = plan.step(StepKind.BLOCK, (0, 0))
    assert block.quadrants == ((0, 0), (1, 0), (0, 1))
    assert block.padding == ((1, 1),) and block.infill == (0, 0, 1024, 1024)
    v = plan.step(StepKind.BRIDGE_V, (0, 0))
    assert v.window == (Q, 0) and v.infill == (512, 0, 1024, 1024)  # a full quadrant of left context
    assert v.context == ((1, 0),)  # (1, 1) is outside the bounds: rendered padding, not context
    assert plan.violations() == []

    # Only the right-hand block exists: the infill is pushed left and touches the left edge, where
    # nothing is generated.
    plan2 = LatticePlan.from_quadrants({(2, 0), (3, 0)}, origin=(0, 0))
    v2 = plan2.step(StepKind.BRIDGE_V, (0, 0))
    assert v2.quadrants == ((2, 0),) and v2.padding == ((2, 1),)
    assert v2.window == (2 * Q, 0) and v2.infill == (0, 0, 512, 1024)
    assert v2.context == ((3, 0),)
    assert plan2.violations() == []


def test_one_quadrant_wide_strips_are_planned():
    # The original's rectangle planner cannot plan empty 1-wide strips at all.
    for bounds in (rect(0, 0, 1, 17), rect(0, 0, 17, 1), {(5, 5)}):
        plan = LatticePlan.from_quadrants(bounds)
        assert plan.violations() == []
        assert_seam_free(plan, bounds)


def test_calls_per_quadrant_is_four_ninths_on_large_rectangles():
    plan = LatticePlan.from_quadrants(rect(0, 0, 90, 90))
    assert len(plan) == 4 * 30 * 30
    assert plan.calls_per_quadrant == pytest.approx(4 / 9)
    plan = LatticePlan.from_quadrants(rect(3, -2, 100, 77))  # not a multiple of 3: edges add a little
    assert plan.calls_per_quadrant == pytest.approx(4 / 9, rel=0.03)


@pytest.mark.parametrize("seed", range(300))
def test_random_bounds_are_seam_free(seed):
    rng = random.Random(seed)
    bounds = random_bounds(rng)
    origin = None
    if rng.random() < 0.3:  # a lattice origin not at the bounds' corner
        origin = (
            min(x for x, _ in bounds) - rng.randint(0, 2),
            min(y for _, y in bounds) - rng.randint(0, 2),
        )
    plan = LatticePlan.from_quadrants(bounds, origin)
    assert_seam_free(plan, bounds)
    assert plan.violations() == []
    plan.validate()


def test_dependants_are_the_inverse_of_dependencies():
    plan = LatticePlan.from_quadrants(rect(0, 0, 8, 8))
    block = plan.step(StepKind.BLOCK, (1, 1))
    users = {s.key for s in plan.dependants(block)}
    # the two V bridges beside it, the two H bridges above and below it, the four corners around it
    assert users == {
        "bridge_v:0,1", "bridge_v:1,1", "bridge_h:1,0", "bridge_h:1,1",
        "corner:0,0", "corner:1,0", "corner:0,1", "corner:1,1",
    }  # fmt: skip
    for s in plan.steps:
        for d in plan.dependencies(s):
            assert s in plan.dependants(d)


# --- the validator catches broken steps ---------------------------------------------------------------
@pytest.fixture
def plan9() -> LatticePlan:
    return LatticePlan.from_quadrants(rect(0, 0, 9, 9))


def test_validator_rejects_infill_touching_an_edge_with_generated_pixels_beyond(plan9):
    v = plan9.step(StepKind.BRIDGE_V, (1, 1))  # footprint x=5, y=3..4; blocks on both sides
    bad = dataclasses.replace(v, window=(5 * Q, 3 * Q), infill=(0, 0, 512, 1024), context=((6, 3), (6, 4)))
    problems = check_step_legal(plan9, bad)
    assert any("touches the template's left edge" in p and "(4, 3)" in p for p in problems), problems


def test_validator_rejects_thin_context_and_wrong_context(plan9):
    c = plan9.step(StepKind.CORNER, (1, 1))  # (5, 5)
    # shift the window a quarter quadrant: only 128 px of the left neighbour remain
    bad = dataclasses.replace(c, window=(c.window[0] + 128, c.window[1]), infill=(128, 256, 640, 768))
    problems = check_step_legal(plan9, bad)
    assert any("half-quadrant grid" in p for p in problems)
    assert any("less than 256 px" in p and "(4, 5)" in p for p in problems), problems
    dropped = dataclasses.replace(c, context=c.context[1:])
    assert any("context is wrong" in p for p in check_step_legal(plan9, dropped))


def test_validator_rejects_a_block_beside_generated_pixels_and_same_wave_edges(plan9):
    # Pretend a block sits where the V bridge is (the original's pass-2 packing, W2a): it would touch
    # the blocks on both sides, which are of the same wave.
    fake = Step(
        StepKind.BLOCK,
        (0, 0),
        ((2, 0), (3, 0)),
        (),
        (2 * Q, 0),
        (0, 0, 1024, 1024),
        ((2, 0), (3, 0), (2, 1), (3, 1)),
    )
    problems = check_step_legal(plan9, fake)
    assert any("footprint" in p for p in problems)
    assert any("belongs to" in p for p in problems)
    # A wave-1 step whose window shows another wave-1 step's quadrant.
    assert any("not finished before" in p for p in problems), problems
    # A corner that also generates the bridge next to it would swallow a finished quadrant (W2c).
    c = plan9.step(StepKind.CORNER, (0, 0))
    greedy = dataclasses.replace(c, quadrants=((2, 1), (2, 2)))
    assert any("outside its footprint" in p for p in check_step_legal(plan9, greedy))


def test_validate_raises_with_the_problems(plan9):
    broken = LatticePlan(plan9.quadrants, plan9.origin, Q, plan9.steps[1:])  # drop a block
    with pytest.raises(PlanError, match="no step generates it"):
        broken.validate()


def test_bad_input_is_named():
    with pytest.raises(PlanError, match="empty"):
        LatticePlan.from_quadrants([])
    with pytest.raises(PlanError, match=r"pair of integers.*\(1\.5, 2\)"):
        LatticePlan.from_quadrants([(1.5, 2)])
    with pytest.raises(PlanError, match="even integer"):
        LatticePlan.from_quadrants([(0, 0)], quadrant_px=511)
    plan = LatticePlan.from_quadrants([(0, 0)])
    with pytest.raises(PlanError, match=r"\(7, 7\) is outside the planned bounds"):
        plan.step_for_quadrant(7, 7)
    with pytest.raises(PlanError, match="no corner step at cell"):
        plan.step(StepKind.CORNER, (0, 0))
    with pytest.raises(PlanError, match="unknown step kind 'tower'"):
        plan.cells("tower")
    import numpy as np

    assert (1, 2) in LatticePlan.from_quadrants([(np.int64(1), np.int32(2))])
