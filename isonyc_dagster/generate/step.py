"""Executing one generation step: its inputs, the model call (K candidates), validation and the atomic commit.

The Dagster step assets and the seam pilot both run steps through ``run_step``; they differ only in the plan
(the seam-free lattice, or the pilot's raster order) and in where renders come from (``StepInputs``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from isonyc_dagster import layers
from isonyc_dagster.backends.base import GenerationRequest, ImageBackend
from isonyc_dagster.generate.candidates import CandidateSet, generate_candidates
from isonyc_dagster.generate.plan import Quadrant, Step
from isonyc_dagster.generate.seams import Edge, EdgeKey, continuity_mask
from isonyc_dagster.generate.template import Template, build_template, extract_quadrants
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.render import RenderResult
from isonyc_dagster.store.base import CorruptBlobError, TileStore, TileVersion, TileWrite

#: zlib level of tiles written to the store: ~2× faster than the default 6 for a few percent more bytes.
TILE_PNG_LEVEL = 3

#: Scoring band (px either side of an edge) of seam scores; continuity masks use the same depth.
OVERLAP_PX = 8


class Rendered(Protocol):
    """What a render gives a step: the RGB image and its per-pixel buffers (``render.RenderResult`` is one)."""

    @property
    def rgb(self) -> np.ndarray: ...

    def aux(self) -> dict[str, np.ndarray]: ...


#: Renders quadrant (x, y) on the fly (deterministically: identical to a stored render).
RenderFn = Callable[[int, int], Rendered]


class StepInputs:
    """A step's per-quadrant inputs: renders and their buffers, and generated context; one cache per run.

    Renders of ``stored`` quadrants (the bounds) are read from the store's render layer and must exist there;
    every other quadrant (padding beyond the bounds, or everything when ``stored`` is empty, as in the pilot)
    is rendered on the fly with ``render``. Render buffers of stored renders come from their ``aux`` blob.
    """

    def __init__(self, store: TileStore, *, stored: Container[Quadrant], render: RenderFn) -> None:
        self.store = store
        self.stored = stored
        self._render = render
        self._rendered: dict[Quadrant, Rendered] = {}
        self._aux: dict[Quadrant, dict[str, np.ndarray]] = {}
        self._generated: dict[Quadrant, np.ndarray] = {}

    def _render_once(self, x: int, y: int) -> Rendered:
        if (x, y) not in self._rendered:
            self._rendered[(x, y)] = self._render(x, y)
        return self._rendered[(x, y)]

    def render_rgb(self, x: int, y: int) -> np.ndarray | None:
        png = self.store.get_tile(layers.RENDER, x, y)
        if png is not None:
            return decode_rgb(png)
        if (x, y) in self.stored:
            return None  # an in-bounds quadrant must be materialized by the render asset first
        return self._render_once(x, y).rgb

    def render_aux(self, x: int, y: int) -> dict[str, np.ndarray]:
        if (x, y) not in self._aux:
            v = self.store.active(layers.RENDER, x, y)
            aux_sha = v.provenance.get("aux_sha256") if v is not None else None
            aux = None
            if aux_sha and self.store.has_blob(aux_sha):
                # Renders are deterministic: a damaged buffer blob is drawn again rather than failing the step.
                with contextlib.suppress(CorruptBlobError):
                    aux = RenderResult.from_npz(self.store.get_blob(aux_sha)).aux()
            self._aux[(x, y)] = aux if aux is not None else self._render_once(x, y).aux()
        return self._aux[(x, y)]

    def generated_rgb(self, x: int, y: int) -> np.ndarray | None:
        """The active generated pixels of (x, y); cached once found (a run never changes its own context)."""
        if (x, y) not in self._generated:
            png = self.store.get_tile(layers.GENERATION, x, y)
            if png is None:
                return None
            self._generated[(x, y)] = decode_rgb(png)
        return self._generated[(x, y)]

    def edge_mask(self, first: Quadrant, second: Quadrant, depth: int = OVERLAP_PX) -> np.ndarray | None:
        """Where the render continues across the edge between ``first`` (left/top) and ``second``: only there
        is a colour jump a seam; a wall or roof line lying on the quadrant line is scenery. ``None`` when the
        renders carry no buffers (then the whole edge counts)."""
        a, b = self.render_aux(*first), self.render_aux(*second)
        if not all(k in d for d in (a, b) for k in ("surface", "building")):
            return None
        edge: Edge = "lr" if second[0] != first[0] else "tb"
        return continuity_mask(a["surface"], a["building"], b["surface"], b["building"], edge, depth)

    def continuity_masks(
        self, step: Step, context: Container[Quadrant], depth: int = OVERLAP_PX
    ) -> dict[EdgeKey, np.ndarray]:
        """``edge_mask`` of every edge between the step and its context, keyed like ``seams.score_step_seams``."""
        masks: dict[EdgeKey, np.ndarray] = {}
        for x, y in step.quadrants:
            for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                nb = (x + dx, y + dy)
                if nb in context:
                    first, second = (nb, (x, y)) if dx + dy < 0 else ((x, y), nb)
                    mask = self.edge_mask(first, second, depth)
                    if mask is not None:
                        masks[(first, second)] = mask
        return masks

    def template(self, step: Step) -> Template:
        return build_template(
            step, render_rgb=self.render_rgb, generated_rgb=self.generated_rgb, render_aux=self.render_aux
        )


@dataclass(frozen=True)
class StepSettings:
    """What decides a step's output besides its template."""

    prompt: str
    #: Identifies backend, settings, K, seeds and prompt (no secrets): a committed step is reused only if equal.
    generator_key: str
    candidates: int = 1
    overlap_px: int = OVERLAP_PX
    #: Score candidates only where the render continues across each edge (needs render buffers).
    continuity_masks: bool = True
    #: Reuse a step already committed from the same template by the same generator (a retried range run).
    reuse_committed: bool = True
    parallel: int = 1


@dataclass(frozen=True)
class StepResult:
    """One executed (or reused) step."""

    step: Step
    template: Template
    template_sha: str
    output_png: bytes
    provenance: dict[str, Any]
    versions: list[TileVersion]
    #: Every candidate with its scores; ``None`` when the step was reused from the store.
    candidates: CandidateSet | None = None

    @property
    def reused(self) -> bool:
        return self.candidates is None

    @property
    def output_sha(self) -> str:
        return str(self.provenance["output_sha256"])


def step_seed(map_name: str, step: Step, offset: int) -> int:
    """A stable per-step seed: reruns reproduce the same image; ``offset`` gives new ones."""
    h = hashlib.sha256(f"{map_name}:{step.key}".encode()).digest()
    return (int.from_bytes(h[:4], "big") + offset) % (2**31 - 1)


def run_step(
    store: TileStore,
    backend: ImageBackend,
    step: Step,
    inputs: StepInputs,
    template: Template,
    settings: StepSettings,
    *,
    seed: int | None,
) -> StepResult:
    """Generate one step (K candidates scored on their seams), validate, commit its quadrants atomically.

    Every candidate's output is kept as a blob for review; the best one's quadrants become the active
    ``generation`` tiles, with the step's provenance. Raises ``BackendError`` when every candidate failed.
    """
    template_sha = store.put_blob(template.png)
    if settings.reuse_committed:
        reused = _committed(store, step, template, template_sha, settings.generator_key)
        if reused is not None:
            return reused
    request = GenerationRequest(
        template_png=template.png,
        prompt=settings.prompt,
        seed=seed,
        infill_box=template.infill_box,
        origin_px=template.origin_px,
        aux=template.aux,
    )
    context = {q: img for q in step.context if (img := inputs.generated_rgb(*q)) is not None}
    k = max(1, settings.candidates)
    masks = (
        inputs.continuity_masks(step, context, settings.overlap_px)
        if k > 1 and settings.continuity_masks
        else None
    )
    cands = generate_candidates(
        backend,
        request,
        k,
        split=lambda png: extract_quadrants(step, template, png),
        context=context,
        overlap_px=settings.overlap_px,
        masks=masks,
        parallel=settings.parallel,
    )
    best = cands.best
    assert best.result is not None  # the best candidate is always one that succeeded
    summaries = []
    for c in cands.candidates:
        summary = c.summary()
        if c.result is not None:
            summary["output_sha256"] = store.put_blob(c.result.image_png)
        summaries.append(summary)
    provenance = {
        "step": step.key,
        "kind": step.kind.value,
        "cell": list(step.cell),
        "template_sha256": template_sha,
        "output_sha256": summaries[cands.best_index]["output_sha256"],
        "context": [list(c) for c in template.context_used],
        "context_sha256": {
            f"{x},{y}": v.sha256
            for (x, y), v in store.active_map(layers.GENERATION, template.context_used).items()
        },
        "padding": [list(c) for c in template.padding],
        **best.result.provenance,
        "seam_score": best.score,
        "candidates": summaries if len(summaries) > 1 else None,
        "generator_key": settings.generator_key,
    }
    writes = [
        TileWrite(layers.GENERATION, x, y, png_bytes(rgb, compress_level=TILE_PNG_LEVEL), provenance)
        for (x, y), rgb in sorted(best.quadrants.items())
    ]
    versions = store.put_tiles(writes)
    return StepResult(step, template, template_sha, best.result.image_png, provenance, versions, cands)


def _committed(
    store: TileStore, step: Step, template: Template, template_sha: str, generator_key: str
) -> StepResult | None:
    """The step's output if it was already committed from this very template by this very generator.

    A range run that fails halfway (a crash, a model outage) has committed its first steps to the store but
    materialized nothing in Dagster; when the run is retried, those steps are reused instead of paying for the
    model again. Any change of template (context, render) or generator settings generates anew.
    """
    versions = store.active_map(layers.GENERATION, step.quadrants)
    if len(versions) != len(step.quadrants):
        return None
    provs = [v.provenance for v in versions.values()]
    if any(
        p.get("template_sha256") != template_sha or p.get("generator_key") != generator_key for p in provs
    ):
        return None
    prov = provs[0]
    return StepResult(
        step,
        template,
        template_sha,
        store.get_blob(prov["output_sha256"]),
        prov | {"reused": True},
        list(versions.values()),
    )
