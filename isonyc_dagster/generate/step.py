"""Executing one generation step: its inputs, the model call (K candidates), validation and the atomic commit.

The Dagster step assets and the seam pilot both run steps through ``run_step``; they differ only in the plan
(the seam-free lattice, or the pilot's raster order) and in where renders come from (``StepInputs``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from isonyc_dagster import layers
from isonyc_dagster.backends.base import GenerationRequest, ImageBackend
from isonyc_dagster.generate import postprocess
from isonyc_dagster.generate.candidates import CandidateSet, generate_candidates
from isonyc_dagster.generate.plan import Quadrant, Step
from isonyc_dagster.generate.preprocess import preprocess_provenance, preprocess_template
from isonyc_dagster.generate.references import StyleRefs
from isonyc_dagster.generate.seams import Edge, EdgeKey, continuity_mask
from isonyc_dagster.generate.template import (
    ContextMissing,
    RenderMissing,
    Template,
    build_template,
    extract_quadrants,
)
from isonyc_dagster.geo.model_inputs import PostprocessConfig, PreprocessConfig
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.render import RenderResult
from isonyc_dagster.store.base import CorruptBlobError, TileStore, TileVersion, TileWrite

#: zlib level of generated tiles (palette PNGs): 17 % fewer bytes than level 3, for ~4 ms more a quadrant.
TILE_PNG_LEVEL = 6

#: Scoring band (px either side of an edge) of seam scores; continuity masks use the same depth.
OVERLAP_PX = 8


class Rendered(Protocol):
    """What a render gives a step: the RGB image and its per-pixel buffers (``render.RenderResult`` is one)."""

    @property
    def rgb(self) -> np.ndarray: ...

    def aux(self) -> dict[str, np.ndarray]: ...


#: Renders quadrant (x, y) on the fly (deterministically: identical to a stored render).
RenderFn = Callable[[int, int], Rendered]


#: Quadrants whose decoded buffers and pixels a run keeps (each; ~2.3 MB of buffers, 0.8 MB of pixels, ~3 MB more for a
#: padding quadrant drawn on the fly). A run's keys are a compact region walked along a Hilbert curve, so the most
#: recent few hold the neighbours still needed, and a 1,000-quadrant run's caches stay near 50 MB instead of 3 GB.
#: Water masks and QA read 3×3 neighbourhoods: 16 (8 doubled their time, re-decoding). A step reads only its window
#: (≤ 4 quadrants, two steps at once on two cores): 8, which took lower Manhattan's blocks run from 0.99 to 0.89 GB
#: peak RSS at the same speed (a buffer is decoded again in ~10 ms).
CACHE_QUADRANTS = 16
STEP_CACHE_QUADRANTS = 8

_V = TypeVar("_V")


class _Recent(Generic[_V]):
    """The ``size`` most recently used entries (an LRU map); safe for a step run's calls in threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Quadrant, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Quadrant) -> _V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def __setitem__(self, key: Quadrant, value: _V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class StepInputs:
    """A step's per-quadrant inputs: renders and their buffers, and generated context; one cache per run.

    Renders of ``stored`` quadrants (the bounds) are read from the store's render layer and must exist there;
    every other quadrant (padding beyond the bounds, or everything when ``stored`` is empty, as in the pilot)
    is rendered on the fly with ``render``. Render buffers of stored renders come from their ``aux`` blob.
    """

    def __init__(
        self,
        store: TileStore,
        *,
        stored: Container[Quadrant],
        render: RenderFn,
        rgb_layer: str = layers.RENDER,
        render_rgb_fn: Callable[[int, int], np.ndarray] | None = None,
        color_layer: str | None = None,
        cache_quadrants: int | None = None,
    ) -> None:
        self.store = store
        self.stored = stored
        self._render = render
        # The layer the infill shows (render or photoreal); buffers and edge masks always come from the whitebox.
        self.rgb_layer = rgb_layer
        self._render_rgb_fn = render_rgb_fn
        #: A layer sent whole as the request's colour reference (the photoreal layer, ``render_layer = "both"``).
        self.color_layer = color_layer
        size = cache_quadrants or CACHE_QUADRANTS
        self._rendered: _Recent[Rendered] = _Recent(size)
        self._aux: _Recent[dict[str, np.ndarray]] = _Recent(size)
        self._generated: _Recent[np.ndarray] = _Recent(size)

    def _render_once(self, x: int, y: int) -> Rendered:
        found = self._rendered.get((x, y))
        if found is None:
            found = self._rendered[(x, y)] = self._render(x, y)
        return found

    def render_rgb(self, x: int, y: int) -> np.ndarray | None:
        png = self.store.get_tile(self.rgb_layer, x, y)
        if png is not None:
            return decode_rgb(png)
        if not self._drawn_on_the_fly(x, y):
            # In bounds: the layer's asset must have stored it (the step fails fast, like missing context).
            return None
        if self.rgb_layer != layers.RENDER:
            assert self._render_rgb_fn is not None  # _drawn_on_the_fly says so
            return self._render_rgb_fn(x, y)
        return self._render_once(x, y).rgb

    def _drawn_on_the_fly(self, x: int, y: int) -> bool:
        """Whether ``render_rgb`` draws (x, y) when the layer has no tile: padding outside the stored quadrants, where
        there is a way to draw it."""
        return (x, y) not in self.stored and (
            self.rgb_layer == layers.RENDER or self._render_rgb_fn is not None
        )

    def color_reference(self, step: Step) -> bytes | None:
        """The step's window drawn from ``color_layer`` (framed like the template); None without a colour layer.
        Raises ``RenderMissing`` when a quadrant the step generates lacks that layer (fail fast)."""
        if self.color_layer is None:
            return None
        layer = self.color_layer

        def rgb(x: int, y: int) -> np.ndarray | None:
            png = self.store.get_tile(layer, x, y)
            return decode_rgb(png) if png is not None else None

        return build_template(step, render_rgb=rgb, generated_rgb=rgb, allow_missing_context=True).png

    def render_aux(self, x: int, y: int) -> dict[str, np.ndarray]:
        found = self._aux.get((x, y))
        if found is None:
            v = self.store.active(layers.RENDER, x, y)
            aux_sha = v.provenance.get("aux_sha256") if v is not None else None
            aux = None
            if aux_sha and self.store.has_blob(aux_sha):
                # Renders are deterministic: a damaged buffer blob is drawn again rather than failing the step.
                with contextlib.suppress(CorruptBlobError):
                    aux = RenderResult.from_blob(self.store.get_blob(aux_sha)).aux()
            found = self._aux[(x, y)] = aux if aux is not None else self._render_once(x, y).aux()
        return found

    def generated_rgb(self, x: int, y: int) -> np.ndarray | None:
        """The active generated pixels of (x, y); cached once found (a run never changes its own context)."""
        found = self._generated.get((x, y))
        if found is None:
            png = self.store.get_tile(layers.GENERATION, x, y)
            if png is None:
                return None
            found = self._generated[(x, y)] = decode_rgb(png)
        return found

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

    def check_ready(self, step: Step) -> None:
        """Raise what ``template`` would raise for missing inputs (``RenderMissing`` first, then
        ``ContextMissing``), from the store's index alone: a run checks every step before its first model call,
        and building each template twice (pixels and buffers decoded, PNG encoded) cost a step run a third of its
        time."""
        context = set(step.context)
        no_render: list[Quadrant] = []
        missing: list[Quadrant] = []
        for qd in step.window_quadrants():
            if qd in context:
                if self.store.active(layers.GENERATION, *qd) is None:
                    missing.append(qd)
            elif qd in step.quadrants and not (
                self.store.active(self.rgb_layer, *qd) is not None or self._drawn_on_the_fly(*qd)
            ):
                no_render.append(qd)
        if no_render:
            raise RenderMissing(step.key, no_render)
        if missing:
            raise ContextMissing(step.key, missing)

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
    negative_prompt: str = ""
    #: Render preprocessing of the infill before the template is sent (``generate.preprocess``); None = off.
    preprocess: PreprocessConfig | None = None
    #: The area rule that chose these settings (``generate.rules``), recorded in provenance.
    rule: str | None = None
    #: Pixel-art post-processing of model outputs before validation (``generate.postprocess``); None = off.
    postprocess: PostprocessConfig | None = None

    def key(self, style_refs: StyleRefs | None = None) -> str:
        """``generator_key`` plus whatever else changes the output (negative prompt, preprocessing, style images).

        Equal to ``generator_key`` when none is set, so existing steps keep their key.
        """
        extras: dict[str, Any] = {}
        if self.negative_prompt:
            extras["negative_prompt"] = hashlib.sha256(self.negative_prompt.encode()).hexdigest()
        if (pre := preprocess_provenance(self.preprocess)) is not None:
            extras["preprocess"] = pre
        if style_refs:
            extras["style_refs"] = [r.sha256 for r in style_refs.refs]
        if self.postprocess is not None and self.postprocess.enabled:
            extras["postprocess"] = self.postprocess.model_dump(mode="json")
        if not extras:
            return self.generator_key
        blob = json.dumps([self.generator_key, extras], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


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
    #: The template as sent to the model when preprocessing changed it (else the template's own PNG was sent).
    sent_png: bytes | None = None

    @property
    def model_input_png(self) -> bytes:
        """The PNG the model received (the preprocessed template, or the template)."""
        return self.sent_png if self.sent_png is not None else self.template.png

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
    style_refs: StyleRefs | None = None,
) -> StepResult:
    """Generate one step (K candidates scored on their seams), validate, commit its quadrants atomically.

    Every candidate's output is kept as a blob for review; the best one's quadrants become the active
    ``generation`` tiles, with the step's provenance. Raises ``BackendError`` when every candidate failed.
    ``style_refs`` are sent as the request's style images (``generate.references``); the template goes through
    ``settings.preprocess`` first (render pixels of the infill only).
    """
    template_sha = store.put_blob(template.png)
    refs = style_refs or StyleRefs()
    settings_key = settings.key(refs)
    if settings.reuse_committed:
        reused = _committed(store, step, template, template_sha, settings_key)
        if reused is not None:
            return reused
    sent = preprocess_template(template, settings.preprocess)
    sent_sha = store.put_blob(sent.png) if sent is not template else None
    request = GenerationRequest(
        template_png=sent.png,
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        style_refs=refs.pngs,
        color_ref=inputs.color_reference(step),
        seed=seed,
        infill_box=template.infill_box,
        origin_px=template.origin_px,
        aux=template.aux,
    )
    context = {q: img for q in step.context if (img := inputs.generated_rgb(*q)) is not None}
    backend = postprocess.wrap(backend, store, settings.postprocess)  # itself when post-processing is off
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
        # The step and its context by their Dagster asset and partition keys (``bridges_v[0|0]``, ``x|y``).
        "step": step.ref,
        "kind": step.kind.value,
        "cell": list(step.cell),
        "template_sha256": template_sha,
        "output_sha256": summaries[cands.best_index]["output_sha256"],
        "context": [list(c) for c in template.context_used],
        "context_sha256": {
            f"{x}|{y}": v.sha256
            for (x, y), v in store.active_map(layers.GENERATION, template.context_used).items()
        },
        "padding": [list(c) for c in template.padding],
        **best.result.provenance,
        "seam_score": best.score,
        "candidates": summaries if len(summaries) > 1 else None,
        "generator_key": settings_key,
    }
    # Only what is set: a step sent as before keeps exactly its former provenance (and store version).
    extra = {
        "rule": settings.rule,
        "negative_prompt_sha256": hashlib.sha256(settings.negative_prompt.encode()).hexdigest()
        if settings.negative_prompt
        else None,
        "preprocess": preprocess_provenance(settings.preprocess),
        "template_sent_sha256": sent_sha,
        "style_refs": refs.provenance() or None,
    }
    provenance |= {k: v for k, v in extra.items() if v is not None}
    provenance["template_sha256"] = template_sha  # the backend hashed what it got: the preprocessed template
    writes = [
        TileWrite(
            layers.GENERATION, x, y, png_bytes(rgb, compress_level=TILE_PNG_LEVEL, palette=True), provenance
        )
        for (x, y), rgb in sorted(best.quadrants.items())
    ]
    versions = store.put_tiles(writes)
    sent_png = sent.png if sent_sha else None
    return StepResult(
        step, template, template_sha, best.result.image_png, provenance, versions, cands, sent_png
    )


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
    sent_sha = prov.get("template_sent_sha256")
    return StepResult(
        step,
        template,
        template_sha,
        store.get_blob(prov["output_sha256"]),
        prov | {"reused": True},
        list(versions.values()),
        sent_png=store.get_blob(sent_sha) if sent_sha else None,
    )
