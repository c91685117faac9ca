"""The seam pilot: generate a small w×h patch tile by tile and measure every seam.

Raster order with neighbour mode ``left+top`` (``plan.raster_steps``): tile (x, y) is generated after its
left and top neighbours were accepted. Its template (``template.build_template``) is a 2×2-tile window whose
bottom-right tile is the infill (the render with a 2 px #FF0000 border drawn inside it) and whose other three
tiles are the accepted neighbours (top-left, top, left), or their renders where nothing was accepted yet
(first row/column: padding the model sees but that is never kept — the original's 1×1-with-context case).
Each tile is one step run by ``step.run_step``, the code the Dagster step assets run: K candidates (different
seeds) scored against the accepted left and top neighbours over an ``overlap_px`` band (only where the render
continues across the edge, when render buffers are given); the best is accepted and committed to the pilot's
own tile store (``<out>/store``).

Output directory::

    tiles/<x>_<y>.png                    accepted tile per position
    candidates/<x>_<y>/template.png      what the model saw
    candidates/<x>_<y>/cand<i>_seed<s>.png  every candidate's tile
    mosaic.png                           the accepted patch
    seam_heatmap.png                     the patch dimmed, each scored edge coloured by its score
    report.json                          per tile: chosen candidate, all scores, attempts, model, fallbacks
    store/                               the pilot's tile store (accepted tiles, every candidate, templates)

``report.json`` is rewritten (atomically) after every tile, so an interrupted pilot leaves a
readable partial report. Rendering is injected (``render_tile(x, y) -> (T, T, 3) uint8``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from isonyc_dagster.backends.base import BackendError, ImageBackend
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.generate.plan import Step, raster_steps
from isonyc_dagster.generate.references import ReferenceSelector
from isonyc_dagster.generate.seams import DEFAULT_THRESHOLD, EdgeKey
from isonyc_dagster.generate.step import StepInputs, StepResult, StepSettings, run_step
from isonyc_dagster.geo.model_inputs import PreprocessConfig
from isonyc_dagster.images import png_bytes

REPORT_VERSION = 1


@dataclass(frozen=True)
class PilotPatch:
    """The pilot's patch: quadrants x0..x0+w-1 × y0..y0+h-1, K candidates per tile, the seam band width."""

    x0: int
    y0: int
    w: int = 3
    h: int = 3
    k: int = 3
    overlap_px: int = 8

    @property
    def name(self) -> str:
        """A directory name for the patch's outputs."""
        return f"pilot_{self.x0}_{self.y0}_{self.w}x{self.h}"


def _score_color(score: float, threshold: float) -> tuple[int, int, int]:
    """Green (0) → yellow (threshold) → red (≥ 2 × threshold)."""
    t = min(1.0, max(0.0, score / (2 * threshold))) if threshold > 0 else 1.0
    if t <= 0.5:
        return (int(510 * t), 200, 0)
    return (255, int(200 * (1 - (t - 0.5) * 2)), 0)


def seam_heatmap(
    mosaic: np.ndarray,
    edges: Sequence[tuple[str, int, int, float]],
    tile: int,
    overlap_px: int,
    threshold: float,
) -> np.ndarray:
    """The mosaic at half brightness with each scored edge drawn as a band coloured by its score.

    ``edges``: ("lr" | "tb", column, row, score) in patch tile coordinates of the right/bottom tile.
    """
    base = (mosaic.astype(np.float32) * 0.45 + 40).astype(np.uint8)
    im = Image.fromarray(base)
    draw = ImageDraw.Draw(im)
    half = max(2, overlap_px // 2)
    for kind, col, row, score in edges:
        color = _score_color(score, threshold)
        if kind == "lr":
            x = col * tile
            draw.rectangle([x - half, row * tile, x + half - 1, (row + 1) * tile - 1], fill=color)
            draw.text((x + half + 3, row * tile + tile // 2 - 6), f"{score:.1f}", fill=color)
        else:
            y = row * tile
            draw.rectangle([col * tile, y - half, (col + 1) * tile - 1, y + half - 1], fill=color)
            draw.text((col * tile + tile // 2 - 8, y + half + 3), f"{score:.1f}", fill=color)
    return np.array(im)


@dataclass
class _Render:
    """An injected render: the RGB tile and, when given, its buffers (``step.Rendered``)."""

    rgb: np.ndarray
    buffers: dict[str, np.ndarray]

    def aux(self) -> dict[str, np.ndarray]:
        return self.buffers


class _Renders:
    """Checks and caches the injected renders: square (T, T, 3) uint8, one size for the whole patch."""

    def __init__(
        self,
        render_tile: Callable[[int, int], np.ndarray],
        render_aux: Callable[[int, int], dict[str, np.ndarray]] | None,
    ) -> None:
        self._rgb = render_tile
        self._aux = render_aux
        self.tile_px: int | None = None

    def __call__(self, x: int, y: int) -> _Render:
        arr = np.asarray(self._rgb(x, y))
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or arr.shape[0] != arr.shape[1]:
            raise ValueError(
                f"render_tile({x}, {y}) must return a square (T, T, 3) uint8 array, got {arr.shape} {arr.dtype}"
            )
        if self.tile_px is None:
            self.tile_px = arr.shape[0]
        elif arr.shape[0] != self.tile_px:
            raise ValueError(f"render_tile({x}, {y}) is {arr.shape[0]} px, other tiles are {self.tile_px} px")
        return _Render(arr, self._aux(x, y) if self._aux is not None else {})


def _check_args(
    neighbour_mode: str, w: int, h: int, k: int, overlap_px: int, out: Path, overwrite: bool
) -> None:
    if neighbour_mode != "left+top":
        raise ValueError(
            f"neighbour_mode {neighbour_mode!r} is not supported; the pilot runs 'left+top' (raster order)"
        )
    if w < 1 or h < 1:
        raise ValueError(f"patch size must be at least 1×1, got {w}×{h}")
    if k < 1:
        raise ValueError(f"k (candidates per tile) must be >= 1, got {k}")
    if overlap_px < 2:
        raise ValueError(f"overlap_px must be >= 2, got {overlap_px}")
    if (out / "report.json").exists() and not overwrite:
        raise FileExistsError(
            f"{out} already holds a pilot (report.json); choose a new out_dir or pass overwrite=True"
        )


def _tile_entry(out: Path, step: Step, result: StepResult, threshold: float) -> dict[str, Any]:
    """Write the step's candidate and accepted tiles; its report entry with every candidate's scores."""
    (x, y) = step.quadrants[0]
    cset = result.candidates
    assert cset is not None  # the pilot never reuses committed steps

    def named(edge: EdgeKey) -> str:
        return "left" if edge[0] == (x - 1, y) else "top"

    cands = []
    for c in cset.candidates:
        entry = c.summary()
        entry["scores"] = {named(key): round(s, 4) for key, s in c.scores.items()}
        if c.ok:
            fname = f"cand{c.index}_seed{c.seed}.png"
            atomic_write(out / "candidates" / f"{x}_{y}" / fname, png_bytes(c.quadrants[(x, y)]), fsync=False)
            entry["file"] = f"candidates/{x}_{y}/{fname}"
        cands.append(entry)
    best = cset.best
    atomic_write(out / "tiles" / f"{x}_{y}.png", png_bytes(best.quadrants[(x, y)]), fsync=False)
    best_scores = cands[best.index]["scores"]
    return {
        "x": x,
        "y": y,
        "chosen": best.index,
        "chosen_seed": best.seed,
        "score": round(best.score or 0.0, 4),
        "scores": best_scores,
        "over_threshold": any(s > threshold for s in best_scores.values()),
        "model_id": cands[best.index]["model_id"],
        "fallbacks": cands[best.index]["fallbacks"],
        "candidates": cands,
    }


def _finish(
    out: Path, report: dict[str, Any], accepted: dict[tuple[int, int], np.ndarray], started: float
) -> None:
    """The mosaic, the seam heatmap and the summary of a completed pilot."""
    x0, y0, w, h, T = report["x0"], report["y0"], report["w"], report["h"], report["tile_px"]
    mosaic = np.zeros((h * T, w * T, 3), np.uint8)
    for (x, y), tile in accepted.items():
        mosaic[(y - y0) * T : (y - y0 + 1) * T, (x - x0) * T : (x - x0 + 1) * T] = tile
    atomic_write(out / "mosaic.png", png_bytes(mosaic))
    edges = []
    for t in report["tiles"]:
        col, row = t["x"] - x0, t["y"] - y0
        for name, kind in (("left", "lr"), ("top", "tb")):
            if name in t["scores"]:
                edges.append((kind, col, row, t["scores"][name]))
    heatmap = seam_heatmap(mosaic, edges, T, report["overlap_px"], report["threshold"])
    atomic_write(out / "seam_heatmap.png", png_bytes(heatmap))
    seams = [s for _, _, _, s in edges]
    cands = [c for t in report["tiles"] for c in t["candidates"]]
    report["status"] = "done"
    report["summary"] = {
        "tiles": len(report["tiles"]),
        "edges": len(seams),
        "mean_seam": round(float(np.mean(seams)), 4) if seams else None,
        "max_seam": round(float(np.max(seams)), 4) if seams else None,
        "edges_over_threshold": sum(s > report["threshold"] for s in seams),
        "model_calls": len(cands),
        "failed_candidates": sum(c["error"] is not None for c in cands),
        "attempts": sum(c["attempts"] or 0 for c in cands),
        "fallbacks": sum(len(c["fallbacks"]) for c in cands),
        "wall_s": round(time.monotonic() - started, 3),
    }


def run_pilot(
    x0: int,
    y0: int,
    w: int,
    h: int,
    k: int,
    overlap_px: int,
    out_dir: str | Path,
    backend: ImageBackend,
    render_tile: Callable[[int, int], np.ndarray],
    *,
    render_aux: Callable[[int, int], dict[str, np.ndarray]] | None = None,
    neighbour_mode: str = "left+top",
    prompt: str = "",
    negative_prompt: str = "",
    preprocess: PreprocessConfig | None = None,
    references: ReferenceSelector | None = None,
    base_seed: int | None = 0,
    threshold: float = DEFAULT_THRESHOLD,
    parallel: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the seam pilot over tiles x0..x0+w-1 × y0..y0+h-1; write the outputs; return the report.

    ``render_aux(x, y)`` (optional) gives a tile's render buffers ("surface", "building", "height"); they are
    assembled for the template window and sent as ``GenerationRequest.aux`` (remote models ignore them), and
    candidates are then scored only where the render continues across an edge.

    ``base_seed`` makes candidate seeds reproducible (tile n of the raster uses seeds
    ``base_seed + n·k + i``); ``None`` draws random seeds (recorded in the report). Raises
    :class:`BackendError` (after writing a partial report with ``status: "failed"``) when every
    candidate of a tile fails, since later tiles would lose their context. ``references`` picks each tile's style
    images for backends that take them (checked before the first call); ``preprocess`` degrades the infill's
    render pixels before they are sent.
    """
    from isonyc_dagster.store.local import LocalTileStore

    out = Path(out_dir)
    _check_args(neighbour_mode, w, h, k, overlap_px, out, overwrite)
    renders = _Renders(render_tile, render_aux)
    T = renders(x0, y0).rgb.shape[0]
    if overlap_px > T // 2:
        raise ValueError(f"overlap_px ({overlap_px}) must be at most half the tile ({T // 2})")
    out.mkdir(parents=True, exist_ok=True)
    store = LocalTileStore(out / "store", tile_size=(T, T))
    inputs = StepInputs(store, stored=(), render=renders)
    settings = StepSettings(
        prompt=prompt,
        generator_key=f"pilot:{backend.name}:{backend.model_id}",
        candidates=k,
        overlap_px=overlap_px,
        reuse_committed=False,  # every pilot run samples anew: the report is about the candidates
        parallel=parallel,
        negative_prompt=negative_prompt,
        preprocess=preprocess,
    )
    if references is not None:
        references.check(backend)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "status": "running",
        "x0": x0,
        "y0": y0,
        "w": w,
        "h": h,
        "k": k,
        "overlap_px": overlap_px,
        "neighbour_mode": neighbour_mode,
        "threshold": threshold,
        "tile_px": T,
        "backend": backend.name,
        "model_id": backend.model_id,
        "tiles": [],
    }
    started = time.monotonic()
    accepted: dict[tuple[int, int], np.ndarray] = {}

    def save_report() -> None:
        atomic_write(out / "report.json", json.dumps(report, indent=2).encode())

    for n, step in enumerate(raster_steps(x0, y0, w, h, quadrant_px=T)):
        (x, y) = step.quadrants[0]
        template = inputs.template(step)
        atomic_write(out / "candidates" / f"{x}_{y}" / "template.png", template.png, fsync=False)
        seed = None if base_seed is None else base_seed + n * k
        try:
            refs = references.select(step, backend) if references is not None else None
            result = run_step(store, backend, step, inputs, template, settings, seed=seed, style_refs=refs)
        except BackendError as e:
            report["tiles"].append({"x": x, "y": y, "error": str(e)})
            report["status"] = "failed"
            report["error"] = f"tile ({x}, {y}): {e}"
            save_report()
            raise
        report["tiles"].append(_tile_entry(out, step, result, threshold))
        assert result.candidates is not None
        accepted[(x, y)] = result.candidates.best.quadrants[(x, y)]
        save_report()
    _finish(out, report, accepted, started)
    save_report()
    return report
