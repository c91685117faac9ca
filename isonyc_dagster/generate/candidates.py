"""K candidates per generation step: generate with different seeds, keep the one with the best seams.

A model sample is random; its seams against the accepted context vary from seed to seed. Asking for
K samples and keeping the one whose *worst* seam is smallest buys seam quality with model calls (K×
the cost), and every candidate is returned with its scores so the caller can store them all (the
lead stores them in the tile store) and a human can pick another one later.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from isonyc_dagster.backends.base import BackendError, GenerationRequest, GenerationResult, ImageBackend
from isonyc_dagster.generate.seams import EdgeKey, aggregate, score_step_seams

log = logging.getLogger(__name__)

#: Turns one model output (PNG bytes) into the step's new quadrants {(x, y): (H, W, 3) uint8}.
Splitter = Callable[[bytes], Mapping[tuple[int, int], np.ndarray]]


@dataclass
class Candidate:
    index: int
    seed: int
    result: GenerationResult | None  # None when this sample failed
    quadrants: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    scores: dict[EdgeKey, float] = field(default_factory=dict)
    score: float | None = None  # worst seam (0 = perfect); None when failed
    error: str | None = None
    retryable: bool = False  # the failure (if any) may go away on a later try

    @property
    def ok(self) -> bool:
        return self.result is not None and self.error is None

    def summary(self) -> dict[str, Any]:
        """JSON-able description (scores keyed "x0,y0|x1,y1")."""
        prov = self.result.provenance if self.result else {}
        return {
            "index": self.index,
            "seed": self.seed,
            "score": self.score,
            "scores": {f"{a[0]},{a[1]}|{b[0]},{b[1]}": round(s, 4) for (a, b), s in self.scores.items()},
            "error": self.error,
            "attempts": prov.get("attempts"),
            "model_id": prov.get("model_id"),
            "fallbacks": prov.get("fallbacks", []),
            "latency_s": prov.get("latency_s"),
        }


@dataclass
class CandidateSet:
    candidates: list[Candidate]
    best_index: int

    @property
    def best(self) -> Candidate:
        return self.candidates[self.best_index]


def candidate_seeds(k: int, base_seed: int | None) -> list[int]:
    """K distinct seeds: ``base_seed + i`` (reproducible) or random ones when no base is given."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if base_seed is None:
        seeds: list[int] = []
        while len(seeds) < k:
            s = secrets.randbelow(2**31 - 1)
            if s not in seeds:
                seeds.append(s)
        return seeds
    return [(base_seed + i) % (2**31 - 1) for i in range(k)]


def generate_candidates(
    backend: ImageBackend,
    request: GenerationRequest,
    k: int,
    *,
    split: Splitter,
    context: Mapping[tuple[int, int], np.ndarray],
    overlap_px: int = 8,
    masks: Mapping[EdgeKey, np.ndarray] | None = None,
    seeds: Sequence[int] | None = None,
    parallel: int = 1,
) -> CandidateSet:
    """Generate ``k`` candidates (seeds ``seeds`` or ``request.seed + i``), score, pick the best.

    Each candidate's new quadrants (``split(png)``) are scored against ``context`` (accepted
    neighbour quadrants) with :func:`~isonyc_dagster.generate.seams.score_step_seams`; the best is the lowest
    worst-seam score (ties: lowest mean, then lowest index). A candidate whose generation or split
    fails is kept with its error; if all fail, the last :class:`BackendError` is raised (retryable
    if any failure was). With no context edges every candidate scores 0 and the first one wins.
    """
    seed_list = list(seeds) if seeds is not None else candidate_seeds(k, request.seed)
    if len(seed_list) != k:
        raise ValueError(f"got {len(seed_list)} seeds for k={k}")
    if len(set(seed_list)) != k:
        raise ValueError(f"candidate seeds must be distinct, got {seed_list}")

    def one(i: int) -> Candidate:
        seed = seed_list[i]
        try:
            result = backend.generate(dataclasses.replace(request, seed=seed))
        except BackendError as e:
            log.warning("candidate %d (seed %d) failed: %s", i, seed, e)
            return Candidate(i, seed, None, error=str(e), retryable=e.retryable)
        try:
            quads = {xy: np.asarray(img) for xy, img in split(result.image_png).items()}
        except Exception as e:  # an output the template code cannot use is a failed candidate
            return Candidate(i, seed, result, error=f"could not split the output: {type(e).__name__}: {e}")
        scores = score_step_seams(quads, context, overlap_px, masks)
        return Candidate(i, seed, result, quads, scores, aggregate(scores))

    if parallel > 1 and k > 1:
        with ThreadPoolExecutor(max_workers=min(parallel, k), thread_name_prefix="candidate") as pool:
            cands = list(pool.map(one, range(k)))
    else:
        cands = [one(i) for i in range(k)]

    ok = [c for c in cands if c.ok]
    if not ok:
        retryable = any(c.retryable for c in cands)
        raise BackendError(f"all {k} candidates failed; last error: {cands[-1].error}", retryable=retryable)
    best = min(
        ok, key=lambda c: (c.score, float(np.mean(list(c.scores.values()))) if c.scores else 0.0, c.index)
    )
    return CandidateSet(cands, best.index)
