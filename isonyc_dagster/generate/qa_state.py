"""The current QA state of every generated quadrant of the map, read from the store.

A Dagster check evaluated in one run must not report only that run's quadrants: a later run of other quadrants would
then hide a failure that is still there. ``assess_map`` judges every active ``generation`` quadrant of the bounds.
A quadrant's QA figures (``generate.qa.assess_quadrant``) depend only on its own pixels, its neighbours' pixels and
the renders on both sides of each edge, so they are cached in SQLite under a key made of those active sha256s: an
evaluation recomputes only quadrants whose inputs changed (the run's quadrants and their neighbours).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from isonyc_dagster import layers
from isonyc_dagster.generate.plan import LatticePlan, Quadrant
from isonyc_dagster.generate.qa import CHECKS, QuadrantQA, assess_quadrant
from isonyc_dagster.generate.step import StepInputs
from isonyc_dagster.geo.bounds import QuadrantSet
from isonyc_dagster.store.base import TileStore
from isonyc_dagster.workers import in_flight, local_workers

#: Bump when ``assess_quadrant`` or the seam score changes what it computes: cached figures are then recomputed.
QA_VERSION = "qa-3"

_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


@dataclass
class MapQA:
    """QA of the whole map: figures per generated quadrant, and the in-bounds quadrants not generated yet."""

    quadrants: dict[Quadrant, QuadrantQA] = field(default_factory=dict)
    not_generated: list[Quadrant] = field(default_factory=list)
    recomputed: int = 0

    def failing(self, check: str, seam_threshold: float) -> dict[Quadrant, list[float | int]]:
        """Quadrants failing ``check`` (one of ``qa.CHECKS``) with the figures that failed them, sorted (y, x)."""
        if check not in CHECKS:
            raise ValueError(f"unknown QA check {check!r}; one of {', '.join(CHECKS)}")
        out: dict[Quadrant, list[float | int]] = {}
        for q in sorted(self.quadrants, key=lambda k: (k[1], k[0])):
            figures = self.quadrants[q].failures(seam_threshold).get(check)
            if figures is not None:
                out[q] = figures
        return out

    def worst_seam(self) -> float:
        return max((v for qa in self.quadrants.values() for v in qa.seams.values()), default=0.0)


class QACache:
    """Content-keyed QA figures (SQLite). Safe to delete: it only saves recomputation."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS qa (key TEXT PRIMARY KEY, figures TEXT NOT NULL)")

    def get_many(self, keys: Iterable[str]) -> dict[str, QuadrantQA]:
        wanted = list(keys)
        out: dict[str, QuadrantQA] = {}
        for i in range(0, len(wanted), 500):  # SQLite's variable limit
            chunk = wanted[i : i + 500]
            rows = self._db.execute(
                f"SELECT key, figures FROM qa WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            for k, figures in rows:
                out[k] = QuadrantQA(**json.loads(figures))
        return out

    def put_many(self, items: dict[str, QuadrantQA]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO qa (key, figures) VALUES (?, ?)",
                [(k, json.dumps(asdict(v))) for k, v in items.items()],
            )

    def close(self) -> None:
        self._db.close()


def _input_key(
    q: Quadrant, gen: dict[Quadrant, str], ren: dict[Quadrant, str], plan: LatticePlan, bounds: QuadrantSet
) -> str:
    """Hash of everything quadrant ``q``'s QA figures depend on: its pixels, its other-step neighbours' pixels,
    and the renders on both sides (their buffers decide where an edge is judged)."""
    own = set(plan.step_for_quadrant(*q).quadrants)
    parts = [QA_VERSION, f"{q}", gen[q], ren.get(q, "-")]
    for dx, dy in _NEIGHBOURS:
        nb = (q[0] + dx, q[1] + dy)
        if nb in own or nb not in bounds:
            continue
        parts.append(f"{dx},{dy}:{gen.get(nb, '-')}:{ren.get(nb, '-')}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def assess_map(
    store: TileStore,
    inputs: StepInputs,
    plan: LatticePlan,
    bounds: QuadrantSet,
    cache: QACache,
    order: Sequence[Quadrant] | None = None,
) -> MapQA:
    """QA figures of every generated quadrant inside ``bounds``, recomputing only those whose inputs changed, on the
    run's CPU threads in ``order`` (a Hilbert order keeps each quadrant's neighbours in ``inputs``' caches; the
    default, row by row, does not on a wide map)."""
    gen = {q: v.sha256 for q, v in store.active_map(layers.GENERATION, bounds.keys).items()}
    ren = {q: v.sha256 for q, v in store.active_map(layers.RENDER, bounds.keys).items()}
    keys = {q: _input_key(q, gen, ren, plan, bounds) for q in gen}
    cached = cache.get_many(keys.values())
    out = MapQA(not_generated=[q for q in bounds.keys if q not in gen])
    todo = [q for q in (order if order is not None else bounds.keys) if q in keys and keys[q] not in cached]
    fresh: dict[str, QuadrantQA] = {}
    for q, qa in in_flight(
        lambda q: assess_quadrant(inputs, plan, bounds, *q), todo, local_workers(), name="qa"
    ):
        fresh[keys[q]] = qa
    for q, k in keys.items():
        out.quadrants[q] = cached[k] if k in cached else fresh[k]
    if fresh:
        cache.put_many(fresh)
    out.recomputed = len(fresh)
    return out
