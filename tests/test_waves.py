"""The pure wave-scheduling logic: readiness and rectangle packing."""

from __future__ import annotations

import random

from isonyc_dagster.generate.plan import LatticePlan, StepKind
from isonyc_dagster.generate.waves import Progress, complete, ready, rect_keys, rectangles


def test_rectangles_cover_exactly_and_respect_the_cap() -> None:
    rng = random.Random(1)
    for _ in range(300):
        keys = {(rng.randint(-5, 12), rng.randint(-5, 12)) for _ in range(rng.randint(1, 150))}
        cap = rng.choice([1, 4, 16, 64])
        rects = rectangles(keys, max_area=cap)
        covered = [k for r in rects for k in rect_keys(r)]
        assert len(covered) == len(set(covered)) and set(covered) == keys
        assert all(len(rect_keys(r)) <= cap for r in rects)
    assert rectangles({(x, y) for x in range(10) for y in range(10)}, 64) == [(0, 0, 9, 5), (0, 6, 9, 9)]


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
