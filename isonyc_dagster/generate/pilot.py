"""The seam pilot: generate a small w×h patch tile by tile and measure every seam.

Raster order with neighbour mode ``left+top``: tile (x, y) is generated after its left and top
neighbours were accepted. Its template is a 2×2-tile window whose bottom-right tile is the infill
(the render with a 2 px #FF0000 border drawn inside it) and whose other three tiles are the accepted
neighbours (top-left, top, left), or their renders where nothing was accepted yet (first row/column:
padding the model sees but that is never kept — the original's 1×1-with-context case). K candidates
per tile (different seeds) are scored against the accepted left and top neighbours over an
``overlap_px`` band; the best is accepted.

Output directory::

    tiles/<x>_<y>.png                    accepted tile per position
    candidates/<x>_<y>/template.png      what the model saw
    candidates/<x>_<y>/cand<i>_seed<s>.png  every candidate's tile
    mosaic.png                           the accepted patch
    seam_heatmap.png                     the patch dimmed, each scored edge coloured by its score
    report.json                          per tile: chosen candidate, all scores, attempts, model, fallbacks

``report.json`` is rewritten (atomically) after every tile, so an interrupted pilot leaves a
readable partial report. Rendering is injected (``render_tile(x, y) -> (T, T, 3) uint8``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from isonyc_dagster.backends.base import BackendError, GenerationRequest, ImageBackend
from isonyc_dagster.generate.candidates import generate_candidates
from isonyc_dagster.generate.seams import DEFAULT_THRESHOLD
from isonyc_dagster.images import decode_rgb, png_bytes

RED = (255, 0, 0)
BORDER_PX = 2
REPORT_VERSION = 1


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def draw_red_border(img: np.ndarray, box: tuple[int, int, int, int], width: int = BORDER_PX) -> None:
    """The template contract's outline: ``width`` px of pure #FF0000 *inside* ``box`` (in place)."""
    x0, y0, x1, y1 = box
    img[y0 : y0 + width, x0:x1] = RED
    img[y1 - width : y1, x0:x1] = RED
    img[y0:y1, x0 : x0 + width] = RED
    img[y0:y1, x1 - width : x1] = RED


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
    style_refs: tuple[bytes, ...] = (),
    base_seed: int | None = 0,
    threshold: float = DEFAULT_THRESHOLD,
    parallel: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the seam pilot over tiles x0..x0+w-1 × y0..y0+h-1; write the outputs; return the report.

    ``render_aux(x, y)`` (optional) gives a tile's render buffers ("surface", "building", "height"); they are
    assembled for the template window and sent as ``GenerationRequest.aux`` (remote models ignore them).

    ``base_seed`` makes candidate seeds reproducible (tile n of the raster uses seeds
    ``base_seed + n·k + i``); ``None`` draws random seeds (recorded in the report). Raises
    :class:`BackendError` (after writing a partial report with ``status: "failed"``) when every
    candidate of a tile fails, since later tiles would lose their context.
    """
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
    out = Path(out_dir)
    if (out / "report.json").exists() and not overwrite:
        raise FileExistsError(
            f"{out} already holds a pilot (report.json); choose a new out_dir or pass overwrite=True"
        )
    out.mkdir(parents=True, exist_ok=True)

    renders: dict[tuple[int, int], np.ndarray] = {}
    tile_px: int | None = None

    def render(x: int, y: int) -> np.ndarray:
        nonlocal tile_px
        if (x, y) not in renders:
            arr = np.asarray(render_tile(x, y))
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or arr.shape[0] != arr.shape[1]:
                raise ValueError(
                    f"render_tile({x}, {y}) must return a square (T, T, 3) uint8 array, got "
                    f"{arr.shape} {arr.dtype}"
                )
            if tile_px is None:
                tile_px = arr.shape[0]
            elif arr.shape[0] != tile_px:
                raise ValueError(f"render_tile({x}, {y}) is {arr.shape[0]} px, other tiles are {tile_px} px")
            renders[(x, y)] = arr
        return renders[(x, y)]

    T = render(x0, y0).shape[0]
    if overlap_px > T // 2:
        raise ValueError(f"overlap_px ({overlap_px}) must be at most half the tile ({T // 2})")

    accepted: dict[tuple[int, int], np.ndarray] = {}
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

    def save_report() -> None:
        _write_atomic(out / "report.json", json.dumps(report, indent=2).encode())

    for n, (y, x) in enumerate((yy, xx) for yy in range(y0, y0 + h) for xx in range(x0, x0 + w)):
        window = np.zeros((2 * T, 2 * T, 3), np.uint8)
        for dx, dy in ((0, 0), (1, 0), (0, 1)):
            nb = (x - 1 + dx, y - 1 + dy)
            window[dy * T : (dy + 1) * T, dx * T : (dx + 1) * T] = accepted.get(nb, render(*nb))
        window[T:, T:] = render(x, y)
        draw_red_border(window, (T, T, 2 * T, 2 * T))
        template = png_bytes(window)
        cand_dir = out / "candidates" / f"{x}_{y}"
        _write_atomic(cand_dir / "template.png", template)

        aux: dict[str, np.ndarray] = {}
        if render_aux is not None:  # the window's per-pixel render buffers, for backends that use them
            parts = {(dx, dy): render_aux(x - 1 + dx, y - 1 + dy) for dx in (0, 1) for dy in (0, 1)}
            aux = {
                name: np.block(
                    [[parts[(0, 0)][name], parts[(1, 0)][name]], [parts[(0, 1)][name], parts[(1, 1)][name]]]
                )
                for name in parts[(0, 0)]
            }
        context = {xy: accepted[xy] for xy in ((x - 1, y), (x, y - 1)) if xy in accepted}
        request = GenerationRequest(
            template_png=template,
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=None if base_seed is None else base_seed + n * k,
            style_refs=style_refs,
            infill_box=(T, T, 2 * T, 2 * T),
            origin_px=((x - 1) * T, (y - 1) * T),
            aux=aux,
        )

        def split(png: bytes, x: int = x, y: int = y) -> dict[tuple[int, int], np.ndarray]:
            img = decode_rgb(png)
            if img.shape[:2] != (2 * T, 2 * T):
                raise ValueError(f"output is {img.shape[1]}×{img.shape[0]}, expected {2 * T}×{2 * T}")
            return {(x, y): img[T:, T:].copy()}

        try:
            cset = generate_candidates(
                backend, request, k, split=split, context=context, overlap_px=overlap_px, parallel=parallel
            )
        except BackendError as e:
            report["tiles"].append({"x": x, "y": y, "error": str(e)})
            report["status"] = "failed"
            report["error"] = f"tile ({x}, {y}): {e}"
            save_report()
            raise

        def named(
            edge_key: tuple[tuple[int, int], tuple[int, int]], left: tuple[int, int] = (x - 1, y)
        ) -> str:
            return "left" if edge_key[0] == left else "top"

        cands = []
        for c in cset.candidates:
            entry = c.summary()
            entry["scores"] = {named(key): round(s, 4) for key, s in c.scores.items()}
            if c.ok:
                fname = f"cand{c.index}_seed{c.seed}.png"
                _write_atomic(cand_dir / fname, png_bytes(c.quadrants[(x, y)]))
                entry["file"] = f"candidates/{x}_{y}/{fname}"
            cands.append(entry)
        best = cset.best
        tile = best.quadrants[(x, y)]
        accepted[(x, y)] = tile
        _write_atomic(out / "tiles" / f"{x}_{y}.png", png_bytes(tile))
        best_scores = cands[best.index]["scores"]
        report["tiles"].append(
            {
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
        )
        save_report()

    mosaic = np.zeros((h * T, w * T, 3), np.uint8)
    for (x, y), tile in accepted.items():
        mosaic[(y - y0) * T : (y - y0 + 1) * T, (x - x0) * T : (x - x0 + 1) * T] = tile
    _write_atomic(out / "mosaic.png", png_bytes(mosaic))
    edges = []
    for t in report["tiles"]:
        col, row = t["x"] - x0, t["y"] - y0
        if "left" in t["scores"]:
            edges.append(("lr", col, row, t["scores"]["left"]))
        if "top" in t["scores"]:
            edges.append(("tb", col, row, t["scores"]["top"]))
    _write_atomic(out / "seam_heatmap.png", png_bytes(seam_heatmap(mosaic, edges, T, overlap_px, threshold)))

    seam_values = [s for _, _, _, s in edges]
    all_cands = [c for t in report["tiles"] for c in t["candidates"]]
    report["status"] = "done"
    report["summary"] = {
        "tiles": len(report["tiles"]),
        "edges": len(seam_values),
        "mean_seam": round(float(np.mean(seam_values)), 4) if seam_values else None,
        "max_seam": round(float(np.max(seam_values)), 4) if seam_values else None,
        "edges_over_threshold": sum(s > threshold for s in seam_values),
        "model_calls": len(all_cands),
        "failed_candidates": sum(c["error"] is not None for c in all_cands),
        "attempts": sum(c["attempts"] or 0 for c in all_cands),
        "fallbacks": sum(len(c["fallbacks"]) for c in all_cands),
        "wall_s": round(time.monotonic() - started, 3),
    }
    save_report()
    return report
