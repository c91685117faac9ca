"""The pure wave-scheduling logic: readiness, the key order and its ranges."""

from __future__ import annotations

import random

from isonyc_dagster.generate.plan import LatticePlan, StepKind
from isonyc_dagster.generate.waves import KeyOrder, LatticeOrder, Progress, complete, hilbert_index, ready


def test_hilbert_order_visits_every_cell_once_and_steps_to_a_neighbour() -> None:
    for side in (1, 2, 8, 32):
        pos = {hilbert_index(side, x, y): (x, y) for x in range(side) for y in range(side)}
        assert sorted(pos) == list(range(side * side))
        for d in range(1, side * side):
            (ax, ay), (bx, by) = pos[d - 1], pos[d]
            assert abs(ax - bx) + abs(ay - by) == 1


def _widest(keys: list[tuple[int, int]], n: int = 64) -> int:
    """The longest side of the window holding any ``n`` consecutive keys."""
    out = 0
    for i in range(0, len(keys) - n, 8):
        xs, ys = [x for x, _ in keys[i : i + n]], [y for _, y in keys[i : i + n]]
        out = max(out, max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)
    return out


def test_key_ranges_are_compact_regions_of_in_bounds_keys() -> None:
    """Any 64 consecutive quadrants of a round island lie in a window at most 24 wide (row-major order: 60)."""
    quadrants = {(x, y) for x in range(-30, 31) for y in range(-30, 31) if x * x + y * y <= 900}
    order = LatticeOrder(LatticePlan.from_quadrants(quadrants), quadrants)
    keys = order.quadrants.keys
    assert sorted(keys) == sorted(quadrants)  # every key is in bounds, each once
    assert _widest(keys) <= 24 and _widest(sorted(quadrants, key=lambda k: (k[1], k[0]))) == 60
    # The quadrants of one lattice cell are neighbours in the order, and cells follow the steps' order.
    blocks = order.steps[StepKind.BLOCK].keys
    assert [order.cell_rank(c) for c in blocks] == sorted(order.cell_rank(c) for c in blocks)


def test_spans_hold_every_wanted_key_pass_over_only_passable_ones_and_respect_the_caps() -> None:
    rng = random.Random(1)
    for _ in range(300):
        order = KeyOrder([(i, 0) for i in range(rng.randint(1, 200))])
        wanted = {k for k in order.keys if rng.random() < 0.4}
        blocked = {k for k in order.keys if k not in wanted and rng.random() < 0.2}
        cap = rng.choice([1, 3, 16, 64])
        spans = order.spans(wanted, max_wanted=cap, passable=lambda k, b=blocked: k not in b)
        covered = [k for a, b in spans for k in order.between(a, b)]
        assert len(covered) == len(set(covered))  # disjoint
        assert wanted <= set(covered) and not blocked & set(covered)
        for a, b in spans:
            keys = order.between(a, b)
            assert a in wanted and b in wanted  # a range starts and ends on wanted keys
            assert len(wanted & set(keys)) <= cap and len(keys) <= 4 * cap
        exact = order.spans(wanted, max_wanted=cap)
        assert all(set(order.between(a, b)) <= wanted for a, b in exact)
    order = KeyOrder([(i, 0) for i in range(10)])
    wanted = {(0, 0), (1, 0), (5, 0), (9, 0)}
    assert order.spans(wanted, max_wanted=8, passable=lambda k: True) == [((0, 0), (9, 0))]
    assert order.spans(wanted, max_wanted=8, passable=lambda k: k != (7, 0)) == [
        ((0, 0), (5, 0)),
        ((9, 0), (9, 0)),
    ]
    assert order.spans(wanted, max_wanted=8) == [((0, 0), (1, 0)), ((5, 0), (5, 0)), ((9, 0), (9, 0))]


def _simulate(plan: LatticePlan, quadrants: set) -> list[set[str]]:
    """Run everything ready each round; return the step keys run per round."""
    done = Progress()
    rounds = []
    while not complete(plan, quadrants, done):
        req = ready(plan, quadrants, done, Progress())
        assert not req.empty(), "stuck"
        done.render |= req.render
        done.water_mask |= req.water_mask
        done.generation |= req.generation
        ran = set()
        for kind in StepKind:
            for cell in req.steps[kind]:
                step = plan.step(kind, cell)
                assert all(d.cell in done.steps[d.kind] for d in plan.dependencies(step))
                ran.add(step.key)
            done.steps[kind] |= req.steps[kind]
        rounds.append(ran)
    return rounds


def test_steps_become_ready_wave_by_wave_on_irregular_bounds() -> None:
    rng = random.Random(7)
    for _ in range(30):
        qs = {(x, y) for x in range(15) for y in range(12) if rng.random() < 0.8}
        plan = LatticePlan.from_quadrants(qs)
        rounds = _simulate(plan, qs)
        waves_per_round = [{plan.step(*_parse(k)).wave for k in r} for r in rounds if r]
        assert waves_per_round == sorted(waves_per_round, key=min)
        assert len(rounds) <= 6  # render, blocks, bridges, corners, then publication


def test_in_flight_work_is_not_requested_again() -> None:
    qs = {(x, y) for x in range(6) for y in range(6)}
    plan = LatticePlan.from_quadrants(qs)
    done = Progress(render=set(qs))
    busy = Progress()
    busy.steps[StepKind.BLOCK] = {(0, 0)}
    req = ready(plan, qs, done, busy)
    assert (0, 0) not in req.steps[StepKind.BLOCK] and (1, 1) in req.steps[StepKind.BLOCK]
    assert req.steps[StepKind.CORNER] == set() and req.generation == set()


def _parse(key: str) -> tuple[StepKind, tuple[int, int]]:
    kind, cell = key.split(":")
    a, b = cell.split(",")
    return StepKind(kind), (int(a), int(b))
