"""Phase 5: judged exploration with a closed loop through the inverse model and a seed pool.

CMA-ES runs over the group-prefixed continuous vector; each generation also mutates the discrete knobs of some
candidates (one categorical or boolean redrawn) so the exploration covers them. Every candidate is rendered and
scored 0–10 by the judge. Any candidate scoring ≥ ``threshold`` closes the loop: it is pooled, and the inverse
CNN inverts its raster and the inverted parameters (what the model believes produced that look) are pooled too,
with the score of their own re-render. Later runs start from the best entry of the pool; a first run starts from the best of the
default and ``seeds`` (the CLI passes the CNN's inversions of the references).

``unguided`` is the baseline: independent stratified random styles, judged the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from isonyc_dagster.backends.pixelart.params import StyleParams
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.stylesearch.fit import sensitivity_stds
from isonyc_dagster.stylesearch.judge import Judge
from isonyc_dagster.stylesearch.scene import Scene
from isonyc_dagster.stylesearch.space import SPACE, StyleSearchError, stratified_params, to_style_params_flat

if TYPE_CHECKING:
    from isonyc_dagster.stylesearch.model import InverseModel

__all__ = ["ExploreResult", "SeedPool", "explore", "unguided"]


class SeedPool:
    """A JSON list of ``{"params": flat, "score": x, "judge": name, "inverted": bool}``, best first."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: list[dict[str, Any]] = []
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(data, list):
                    raise ValueError("not a list")
                for e in data:
                    to_style_params_flat(e["params"], source=f"seed pool {self.path}")
                    float(e["score"])
            except (ValueError, KeyError, TypeError) as e:
                raise StyleSearchError(f"seed pool {self.path} is invalid ({e}); fix or delete it") from None
            self.entries = data

    def best(self) -> StyleParams | None:
        if not self.entries:
            return None
        top = max(self.entries, key=lambda e: float(e["score"]))
        return to_style_params_flat(top["params"])

    def add(self, params: StyleParams, score: float, judge: str, inverted: bool) -> None:
        self.entries.append(
            {
                "params": params.as_dict(),
                "score": round(float(score), 4),
                "judge": judge,
                "inverted": inverted,
            }
        )
        self.entries.sort(key=lambda e: -float(e["score"]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self.entries, indent=1).encode())


@dataclass
class ExploreResult:
    best: StyleParams
    best_score: float
    evaluations: int
    first_hit: int | None  # evaluations until the first candidate ≥ threshold (None: never)
    hits: int
    pooled: int
    seconds: float
    started_from_pool: bool
    scores: list[float] = field(default_factory=list)


def _mutate(p: StyleParams, rng: np.random.Generator) -> StyleParams:
    names = SPACE.cats + SPACE.bools
    name = names[int(rng.integers(len(names)))]
    values: list[Any] = SPACE.choices.get(name, [False, True])
    return p.model_copy(update={name: values[int(rng.integers(len(values)))]})


def explore(
    scene: Scene,
    judge: Judge,
    pool: SeedPool,
    *,
    generations: int = 10,
    popsize: int = 8,
    sigma0: float = 0.25,
    threshold: float = 9.0,
    mutate_p: float = 0.3,
    probe_steps: bool = True,
    inverse: InverseModel | None = None,
    seeds: Sequence[StyleParams] = (),
    stop_at_first_hit: bool = False,
    rng_seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ExploreResult:
    """Maximise the judge's score from the pool's best style (else the default); pool every ≥ threshold hit."""
    try:
        import cma
    except ImportError:
        raise StyleSearchError("exploration needs the cma package: install the ml extra") from None
    t0 = time.perf_counter()
    rng = np.random.default_rng(rng_seed)
    start = pool.best()
    from_pool = start is not None
    # Without a pool: the best of the default and the given seeds (the CNN's inversions of the references).
    starts = [start] if start is not None else [StyleParams(), *seeds]
    scores = [judge.score(scene.render(p)).score for p in starts]
    k = int(np.argmax(scores))
    start, best, best_score = starts[k], starts[k], scores[k]
    first_hit = next((i + 1 for i, s in enumerate(scores) if s >= threshold), None)
    hits = pooled = 0
    x0 = np.clip(SPACE.encode(start).cont.astype(np.float64), 0.0, 1.0)

    def probe(x: np.ndarray) -> float:
        s = judge.score(scene.render(SPACE.with_cont(start, x))).score
        scores.append(s)
        return -s

    # Per-knob steps from the judge's sensitivity (see fit.sensitivity_stds): 2 judged renders per knob.
    stds = sensitivity_stds(probe, x0) if probe_steps else None
    es = cma.CMAEvolutionStrategy(
        x0,
        sigma0,
        {"bounds": [0.0, 1.0], "popsize": popsize, "seed": rng_seed + 1, "verbose": -9, "CMA_stds": stds},
    )
    for gen in range(generations):
        xs = es.ask()
        cands = [SPACE.with_cont(best, x) for x in xs]
        cands = [_mutate(c, rng) if rng.random() < mutate_p else c for c in cands]
        fitness = []
        for c in cands:
            img = scene.render(c)
            s = judge.score(img).score
            scores.append(s)
            fitness.append(-s)
            if s > best_score:
                best, best_score = c, s
            if s >= threshold:
                hits += 1
                first_hit = first_hit or len(scores)
                pooled += _close_loop(scene, judge, pool, c, img, s, inverse)
        es.tell(xs, fitness)
        if progress:
            progress(
                f"  generation {gen + 1}/{generations}: best score {best_score:.2f}, hits ≥ {threshold:g}: {hits}"
            )
        if stop_at_first_hit and first_hit is not None:
            break
    return ExploreResult(
        best, best_score, len(scores), first_hit, hits, pooled, time.perf_counter() - t0, from_pool, scores
    )


def _close_loop(
    scene: Scene,
    judge: Judge,
    pool: SeedPool,
    cand: StyleParams,
    img: np.ndarray,
    score: float,
    inverse: InverseModel | None,
) -> int:
    """Pool a hit and its CNN inversion (scored on its own re-render: what the model can reproduce of that look)."""
    pool.add(cand, score, judge.name, inverted=False)
    if inverse is not None:
        inv = inverse.predict(img[None], base=cand)[0]
        pool.add(inv, judge.score(scene.render(inv)).score, judge.name, inverted=True)
    return 1


def unguided(
    scene: Scene, judge: Judge, *, budget: int, threshold: float = 9.0, rng_seed: int = 0
) -> ExploreResult:
    """Baseline: ``budget`` independent random (stratified) styles; evaluations until the first hit."""
    t0 = time.perf_counter()
    best, best_score = StyleParams(), -1.0
    scores: list[float] = []
    first_hit = None
    for p in stratified_params(budget, seed=rng_seed):
        s = judge.score(scene.render(p)).score
        scores.append(s)
        if s > best_score:
            best, best_score = p, s
        if s >= threshold and first_hit is None:
            first_hit = len(scores)
    hits = sum(s >= threshold for s in scores)
    return ExploreResult(
        best, best_score, len(scores), first_hit, hits, 0, time.perf_counter() - t0, False, scores
    )
